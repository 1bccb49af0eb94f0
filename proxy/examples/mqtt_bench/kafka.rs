//! `mqtt_bench kafka`: Kafka alone, without MQTT. Records at a fixed rate through a
//! librdkafka producer set up as the proxy's (acks=all, idempotent, linger 0), each timed
//! from `send` to Kafka's acknowledgement. Run beside the proxy's QoS 1 figures it tells
//! which part of a PUBACK's delay is Kafka's own: the proxy cannot answer sooner than the
//! broker behind it.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{cpu_secs, micros_between, note_slice, now_ns, percentile_ms, slow_slices};

/// What to produce: `rate` records per second of `payload` bytes, all with one key (as
/// one MQTT topic's messages are), for `warmup` and then `seconds` measured seconds.
pub struct KafkaLoad<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub rate: u64,
    pub payload: usize,
    pub seconds: f64,
    pub warmup: f64,
}

pub async fn produce(load: KafkaLoad<'_>) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", load.bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .context("Kafka producer")?;
    let cpu0 = cpu_secs();
    let start_ns = now_ns();
    let warm_ns = start_ns + (load.warmup * 1e9) as u64;
    let end_ns = warm_ns + (load.seconds * 1e9) as u64;
    let payload = vec![b'x'; load.payload];
    let mut in_flight = FuturesUnordered::new();
    let mut ack_us: Vec<u32> = Vec::new();
    let mut slice_max_us: Vec<u32> = Vec::new();
    let mut errors = 0u64;
    let mut sent = 0u64;
    let mut record = |sent_ns: u64, result: Result<(), ()>, ack_us: &mut Vec<u32>, slices: &mut Vec<u32>| {
        if result.is_err() {
            errors += 1;
            return;
        }
        if !(warm_ns..end_ns).contains(&sent_ns) {
            return;
        }
        let us = micros_between(sent_ns, now_ns());
        ack_us.push(us);
        note_slice(slices, sent_ns - warm_ns, us);
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate.max(1) as f64));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = now_ns();
                if now >= end_ns {
                    break;
                }
                let delivery = producer
                    .send_result(FutureRecord::to(load.topic).key("bench/kafka").payload(&payload[..]))
                    .map_err(|(e, _)| e)
                    .context("enqueue")?;
                sent += u64::from((warm_ns..end_ns).contains(&now));
                in_flight.push(async move { (now, matches!(delivery.await, Ok(Ok(_)))) });
            }
            Some((sent_ns, ok)) = in_flight.next(), if !in_flight.is_empty() => {
                record(sent_ns, if ok { Ok(()) } else { Err(()) }, &mut ack_us, &mut slice_max_us);
            }
        }
    }
    while let Some((sent_ns, ok)) = in_flight.next().await {
        record(
            sent_ns,
            if ok { Ok(()) } else { Err(()) },
            &mut ack_us,
            &mut slice_max_us,
        );
    }
    let wall = (now_ns() - start_ns) as f64 / 1e9;
    let cpu = cpu_secs() - cpu0;
    ack_us.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "mode": "kafka", "payload": load.payload, "rate": load.rate, "seconds": load.seconds,
            "sent": sent, "acked": ack_us.len(), "errors": errors,
            "ack_p50_ms": percentile_ms(&ack_us, 50.0), "ack_p99_ms": percentile_ms(&ack_us, 99.0),
            "max_ms": percentile_ms(&ack_us, 100.0), "slow_slices": slow_slices(&slice_max_us),
            "cpu_secs": cpu, "wall_secs": wall, "cpu_pct": 100.0 * cpu / wall,
        })
    );
    Ok(())
}
