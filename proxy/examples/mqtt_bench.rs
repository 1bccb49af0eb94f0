//! Load generator for `e2e/bench/run.sh`: the same MQTT 5 load (rumqttc) against any
//! broker, printing throughput and publish-to-subscriber latency as one JSON line.
//!
//!     cargo run --release -p mqtt-kafka-proxy --example mqtt_bench -- 127.0.0.1 1883 throughput 1 20000
//!     cargo run --release -p mqtt-kafka-proxy --example mqtt_bench -- 127.0.0.1 1883 latency 1 1000 5

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;

fn client(host: &str, port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_outgoing_inflight_upper_limit(100);
    AsyncClient::new(options, 10_000)
}

/// Drives an event loop; sends the arrival time of every incoming PUBLISH (with its
/// payload) and a unit for every PUBACK / PUBCOMP.
fn drive(
    mut eventloop: EventLoop,
    publishes: mpsc::UnboundedSender<(Instant, bytes::Bytes)>,
    acks: mpsc::UnboundedSender<()>,
) {
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = publishes.send((Instant::now(), p.payload));
                }
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                    let _ = acks.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("connection error: {e}");
                    return;
                }
            }
        }
    });
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: mqtt_bench HOST PORT (throughput QOS COUNT | latency QOS RATE SECONDS)";
    let host = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?.clone();
    let port: u16 = args.get(2).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let mode = args.get(3).ok_or_else(|| anyhow::anyhow!(usage))?.clone();
    let q: u8 = args.get(4).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let run = std::process::id();
    let topic = format!("bench/{run}/t");

    let (sub, sub_loop) = client(&host, port, &format!("bench-sub-{run}"));
    let (pub_, pub_loop) = client(&host, port, &format!("bench-pub-{run}"));
    let (received_tx, mut received) = mpsc::unbounded_channel();
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let (unused_tx, _unused) = mpsc::unbounded_channel();
    let (unused_acks, _unused_acks) = mpsc::unbounded_channel();
    drive(sub_loop, received_tx, unused_acks);
    drive(pub_loop, unused_tx, acks_tx);
    sub.subscribe(&topic, qos(q)).await?;
    // Let the SUBSCRIBE land (and, for the proxy, its fan-out reach the end of the topic).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let start = Instant::now();

    match mode.as_str() {
        "throughput" => {
            let count: usize = args.get(5).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
            let payload = vec![b'x'; 64];
            for _ in 0..count {
                pub_.publish(&topic, qos(q), false, payload.clone()).await?;
            }
            let mut acked_at = None;
            if q > 0 {
                for _ in 0..count {
                    tokio::time::timeout(Duration::from_secs(120), acks.recv()).await?;
                }
                acked_at = Some(start.elapsed());
            }
            let mut got = 0;
            let mut last = start;
            while got < count {
                match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
                    Ok(Some((at, _))) => {
                        got += 1;
                        last = at;
                    }
                    _ => break,
                }
            }
            let delivered = last.duration_since(start).as_secs_f64();
            let publish_secs = acked_at.map(|d| d.as_secs_f64());
            println!(
                "{{\"mode\":\"throughput\",\"qos\":{q},\"sent\":{count},\"received\":{got},\
                 \"publish_msgs_per_sec\":{:.0},\"delivered_msgs_per_sec\":{:.0}}}",
                publish_secs.map_or(f64::NAN, |s| count as f64 / s),
                got as f64 / delivered
            );
        }
        "latency" => {
            let rate: u64 = args.get(5).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
            let seconds: u64 = args.get(6).ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
            let total = rate * seconds;
            let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
            let publisher = pub_.clone();
            let topic2 = topic.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                for _ in 0..total {
                    tick.tick().await;
                    let sent = start.elapsed().as_nanos() as u64;
                    let _ = publisher
                        .publish(&topic2, qos(q), false, sent.to_be_bytes().to_vec())
                        .await;
                }
            });
            let mut latencies = Vec::with_capacity(total as usize);
            while (latencies.len() as u64) < total {
                match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
                    Ok(Some((at, payload))) if payload.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&payload);
                        let sent = u64::from_be_bytes(b);
                        let arrived = at.duration_since(start).as_nanos() as u64;
                        latencies.push(arrived.saturating_sub(sent) as f64 / 1e6);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            latencies.sort_by(f64::total_cmp);
            println!(
                "{{\"mode\":\"latency\",\"qos\":{q},\"rate\":{rate},\"sent\":{total},\"received\":{},\
                 \"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
                latencies.len(),
                percentile(&latencies, 50.0),
                percentile(&latencies, 99.0),
                latencies.last().copied().unwrap_or(f64::NAN)
            );
        }
        _ => anyhow::bail!(usage),
    }
    let _ = pub_.disconnect().await;
    let _ = sub.disconnect().await;
    Ok(())
}
