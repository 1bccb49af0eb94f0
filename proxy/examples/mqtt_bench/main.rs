//! Load generator for `e2e/bench/run.sh`: the same MQTT 3.1.1 load against any broker,
//! one JSON line per run. Raw MQTT over tokio TCP (`wire.rs`), so that thousands of
//! connections cost the generator little next to the broker it measures; every line
//! carries the generator's own CPU time, so a figure the generator limited shows as such.
//!
//!     mqtt_bench --broker 127.0.0.1:1883 idle 10000            # hold 10 000 idle connections
//!     mqtt_bench --broker 127.0.0.1:1883 latency --qos 1 --payload 1024 --rate 5000
//!     mqtt_bench --broker 127.0.0.1:1883 throughput --qos 0 --payload 16
//!     mqtt_bench --broker 127.0.0.1:1883 fanout --subscribers 1000 --rate 100
//!     mqtt_bench kafka --bootstrap 127.0.0.1:9092 --topic t --rate 5000   # Kafka alone
//!
//! `latency` and `throughput` run 100 publishers and 1 subscriber on one topic by
//! default (`throughput` publishes as fast as the broker takes it, `latency` at a fixed
//! total rate); `fanout` runs 1 publisher and many subscribers. Each PUBLISH carries its
//! send time (nanoseconds, the generator's clock) in its first 8 payload bytes; latency
//! is publish-to-subscriber, counted for messages sent after the warm-up only.

mod kafka;
mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(about = "MQTT 3.1.1 load generator for e2e/bench/run.sh (one JSON line per run)")]
struct Cli {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// First local source address: connection i binds `source + i % sources` (all of
    /// 127.0.0.0/8 is local), so that many connections do not run out of ephemeral ports.
    #[arg(long, default_value = "127.0.0.1")]
    source: Ipv4Addr,
    /// Source addresses to spread connections over; 0 = one per 5 000 connections. A bind
    /// to port 0 takes from half of the ephemeral range first and searches it linearly:
    /// past about 14 000 ports on one address each bind costs milliseconds (18 000
    /// connections took 47 s of the generator's CPU instead of 2).
    #[arg(long, default_value_t = 0)]
    sources: u32,
    /// Generator threads. 1 (a single-threaded runtime) keeps the generator on one core,
    /// so it takes at most half of a 2-core machine from the broker it measures.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep-alive asked for in CONNECT, seconds; long, so that no PINGREQ is needed.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N connections (CONNECT, CONNACK, nothing else), print a JSON line once all are
    /// up, then hold them until killed (or, with --stdin, until stdin closes).
    Idle {
        connections: usize,
        /// Connection attempts in flight at once (the broker's accept backlog is finite).
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        #[arg(long)]
        stdin: bool,
    },
    /// Publishers at a fixed total rate (default 5 000 msg/s); latency p50 / p99.
    Latency(Load),
    /// Publishers as fast as the broker takes them (default --rate 0).
    Throughput(Load),
    /// One publisher (default), many subscribers on its topic (default 1 000, 100 msg/s).
    Fanout(Load),
    /// No MQTT: records straight to Kafka at a fixed rate (acks=all), each timed to its
    /// acknowledgement; `--broker` is not used.
    Kafka {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 16)]
        payload: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
}

#[derive(Args, Clone)]
struct Load {
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 16)]
    payload: usize,
    #[arg(long)]
    publishers: Option<usize>,
    #[arg(long)]
    subscribers: Option<usize>,
    /// Total publish rate, msg/s across all publishers; 0 = as fast as allowed.
    #[arg(long)]
    rate: Option<u64>,
    /// Measured seconds of publishing (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of publishing before the measurement starts (connections, caches, Kafka
    /// batches settle); those messages are delivered but not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// QoS 1 PUBLISHes in flight per publisher (sent, PUBACK not yet back).
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// As fast as allowed (--rate 0): messages in flight end to end, across all publishers
    /// (sent, not yet at the first subscriber). Without it a broker that reads faster than
    /// it delivers queues without bound and the figure is its queue, not its throughput.
    #[arg(long, default_value_t = 10_000)]
    flight: usize,
    /// After publishing ends, seconds without progress before giving up on what is missing.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

/// Packet ids cycle through 1..=RING; acknowledgements arrive in order, so a window below
/// RING never reuses an id still in flight, and `sent_at[id]` is its send time.
const RING: usize = 1024;
/// PUBLISHes per write when publishing as fast as allowed.
const BATCH: usize = 32;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator started: the clock of the payload timestamps.
fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn at_ns(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns))
}

/// User + system CPU seconds of this process, all threads (/proc/self/stat: no unsafe
/// getrusage call, and the workspace denies unsafe code).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime (fields 14 and 15), in USER_HZ ticks, which is 100 on Linux.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn source(cli: &Cli, i: usize, count: usize) -> Ipv4Addr {
    let sources = if cli.sources == 0 {
        count.div_ceil(5_000).max(1) as u32
    } else {
        cli.sources
    };
    Ipv4Addr::from(u32::from(cli.source) + (i as u32 % sources))
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
}

/// What publishers and subscribers of one run share.
struct Run {
    topic: String,
    qos: u8,
    payload: usize,
    window: usize,
    /// Measurement window of send times, in `now_ns` nanoseconds.
    warm_ns: u64,
    end_ns: u64,
    drain_ns: u64,
    /// Every PUBLISH written, warm-up included: what each subscriber should receive.
    sent_all: AtomicU64,
    /// End-to-end flight permits (`--flight`), when publishing as fast as allowed: a
    /// publisher takes one per message, the first subscriber gives one back per message.
    flight: Option<Semaphore>,
    /// Publishers whose writing has ended.
    writers_done: AtomicUsize,
    publishers: usize,
}

impl Run {
    fn measured(&self, sent_ns: u64) -> bool {
        (self.warm_ns..self.end_ns).contains(&sent_ns)
    }
    fn publishing_done(&self) -> bool {
        self.writers_done.load(Ordering::Acquire) == self.publishers
    }
}

#[derive(Default)]
struct Stats {
    sent: u64,
    acked: u64,
    last_ack_ns: u64,
    ack_us: Vec<u32>,
    delivered: u64,
    last_delivery_ns: u64,
    latency_us: Vec<u32>,
    /// The worst latency of the messages sent in each `SLICE_NS` of the measured window:
    /// a stall (a broker pause, say) shows as slow slices in a row, uneven service as
    /// scattered ones.
    slice_max_us: Vec<u32>,
}

/// Width of a slice of `Stats::slice_max_us`.
const SLICE_NS: u64 = 100_000_000;

/// Keeps in `slices` the worst latency `us` of the slice `offset_ns` (from the start of
/// the measured window) falls in; slices past 6 500 s are not kept.
fn note_slice(slices: &mut Vec<u32>, offset_ns: u64, us: u32) {
    let slice = usize::try_from(offset_ns / SLICE_NS).unwrap_or(usize::MAX);
    if slice < 1 << 16 {
        if slices.len() <= slice {
            slices.resize(slice + 1, 0);
        }
        slices[slice] = slices[slice].max(us);
    }
}

impl Stats {
    fn record_latency(&mut self, run: &Run, sent_ns: u64, now_ns: u64) {
        let us = micros_between(sent_ns, now_ns);
        self.latency_us.push(us);
        note_slice(&mut self.slice_max_us, sent_ns - run.warm_ns, us);
    }

    fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.last_ack_ns = self.last_ack_ns.max(other.last_ack_ns);
        self.ack_us.extend(other.ack_us);
        self.delivered += other.delivered;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.latency_us.extend(other.latency_us);
        if self.slice_max_us.len() < other.slice_max_us.len() {
            self.slice_max_us.resize(other.slice_max_us.len(), 0);
        }
        for (mine, theirs) in self.slice_max_us.iter_mut().zip(other.slice_max_us) {
            *mine = (*mine).max(theirs);
        }
    }
}

fn micros_between(from_ns: u64, to_ns: u64) -> u32 {
    u32::try_from(to_ns.saturating_sub(from_ns) / 1000).unwrap_or(u32::MAX)
}

/// One publisher: writes at `rate` msg/s (0 = as fast as allowed) from `start_ns` on
/// until the run's end; with QoS 1, at most `window` unacknowledged.
async fn publisher(run: Arc<Run>, stream: TcpStream, rate: f64, start_ns: u64) -> anyhow::Result<Stats> {
    let (reader, mut writer) = stream.into_split();
    let window = Arc::new(Semaphore::new(run.window));
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=RING).map(|_| AtomicU64::new(0)).collect());
    let sent_here = Arc::new(AtomicU64::new(0));
    let acks = (run.qos > 0).then(|| {
        tokio::spawn(ack_reader(
            run.clone(),
            reader,
            window.clone(),
            sent_at.clone(),
            sent_here.clone(),
        ))
    });
    let mut stats = Stats::default();
    let mut seq: u64 = 0;
    let mut out = Vec::with_capacity(BATCH * (run.payload + run.topic.len() + 8));
    // Appends one PUBLISH stamped now; returns whether it is inside the measured window.
    let mut push = |out: &mut Vec<u8>| {
        let packet_id = (seq % RING as u64) as u16 + 1;
        seq += 1;
        let at = wire::publish(&run.topic, run.qos, packet_id, run.payload, out);
        let now = now_ns();
        out[at..at + 8].copy_from_slice(&now.to_be_bytes());
        sent_at[usize::from(packet_id)].store(now, Ordering::Relaxed);
        run.measured(now)
    };
    let result: anyhow::Result<()> = async {
        if rate > 0.0 {
            let mut tick = tokio::time::interval_at(at_ns(start_ns), Duration::from_secs_f64(1.0 / rate));
            loop {
                tick.tick().await;
                if now_ns() >= run.end_ns {
                    return Ok(());
                }
                if run.qos > 0 {
                    window.acquire().await.context("window")?.forget();
                }
                out.clear();
                stats.sent += u64::from(push(&mut out));
                sent_here.fetch_add(1, Ordering::Release);
                run.sent_all.fetch_add(1, Ordering::Release);
                writer.write_all(&out).await.context("write PUBLISH")?;
            }
        } else {
            tokio::time::sleep_until(at_ns(start_ns)).await;
            while now_ns() < run.end_ns {
                let mut n = BATCH;
                if run.qos > 0 {
                    window.acquire().await.context("window")?.forget();
                    n = 1;
                    while n < BATCH
                        && window.try_acquire().is_ok_and(|p| {
                            p.forget();
                            true
                        })
                    {
                        n += 1;
                    }
                }
                if let Some(flight) = &run.flight {
                    // A message the broker dropped never gives its permit back: after a
                    // while without any, send anyway rather than stall.
                    if let Ok(permits) =
                        tokio::time::timeout(Duration::from_secs(2), flight.acquire_many(n as u32)).await
                    {
                        permits.context("flight")?.forget();
                    }
                }
                out.clear();
                for _ in 0..n {
                    stats.sent += u64::from(push(&mut out));
                }
                sent_here.fetch_add(n as u64, Ordering::Release);
                run.sent_all.fetch_add(n as u64, Ordering::Release);
                writer.write_all(&out).await.context("write PUBLISH")?;
                // A socket that always takes more would keep this task from yielding.
                tokio::task::yield_now().await;
            }
            Ok(())
        }
    }
    .await;
    run.writers_done.fetch_add(1, Ordering::AcqRel);
    result?;
    if let Some(acks) = acks {
        let acked = acks.await.context("ack reader")??;
        stats.merge(acked);
    }
    drop(writer);
    Ok(stats)
}

/// Reads PUBACKs: frees the window, times each acknowledgement.
async fn ack_reader(
    run: Arc<Run>,
    mut reader: OwnedReadHalf,
    window: Arc<Semaphore>,
    sent_at: Arc<Vec<AtomicU64>>,
    sent_here: Arc<AtomicU64>,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut acked_all = 0u64;
    let mut progress_ns = now_ns();
    loop {
        if run.publishing_done() && acked_all >= sent_here.load(Ordering::Acquire) {
            return Ok(stats);
        }
        buf.reserve(4096);
        match tokio::time::timeout(Duration::from_millis(200), reader.read_buf(&mut buf)).await {
            Err(_) => {
                if run.publishing_done() && now_ns() - progress_ns > run.drain_ns {
                    return Ok(stats);
                }
            }
            Ok(Ok(0)) => bail!("connection closed by the broker"),
            Ok(Err(e)) => return Err(e).context("read PUBACK"),
            Ok(Ok(_)) => {
                let now = now_ns();
                progress_ns = now;
                while let Some((first, header, total)) = wire::frame(&buf)? {
                    if first & 0xf0 == wire::PUBACK && total >= header + 2 {
                        let id = usize::from(u16::from_be_bytes([buf[header], buf[header + 1]]));
                        let sent = sent_at.get(id).map_or(0, |s| s.load(Ordering::Relaxed));
                        acked_all += 1;
                        window.add_permits(1);
                        if run.measured(sent) {
                            stats.acked += 1;
                            stats.last_ack_ns = now;
                            stats.ack_us.push(micros_between(sent, now));
                        }
                    }
                    buf.advance(total);
                }
            }
        }
    }
}

/// One subscriber: reads every PUBLISH (acknowledging QoS 1 ones) until it has all that
/// were sent, or nothing came for the drain time after publishing ended.
async fn subscriber(run: Arc<Run>, mut stream: TcpStream, mut buf: BytesMut, first: bool) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    let mut received_all = 0u64;
    let mut progress_ns = now_ns();
    let mut acks = Vec::new();
    let mut given_back = 0u64;
    loop {
        if run.publishing_done() && received_all >= run.sent_all.load(Ordering::Acquire) {
            return Ok(stats);
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut buf)).await {
            Err(_) => {
                if run.publishing_done() && now_ns() - progress_ns > run.drain_ns {
                    return Ok(stats);
                }
            }
            Ok(Ok(0)) => bail!("connection closed by the broker"),
            Ok(Err(e)) => return Err(e).context("read PUBLISH"),
            Ok(Ok(_)) => {
                let now = now_ns();
                progress_ns = now;
                acks.clear();
                while let Some((first, header, total)) = wire::frame(&buf)? {
                    if first & 0xf0 == wire::PUBLISH {
                        let (packet_id, payload) = wire::publish_body(first, &buf[header..total])?;
                        if let Some(id) = packet_id {
                            wire::puback(id, &mut acks);
                        }
                        if let Some(stamp) = payload.get(..8) {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(stamp);
                            let sent = u64::from_be_bytes(b);
                            received_all += 1;
                            if run.measured(sent) {
                                stats.delivered += 1;
                                stats.last_delivery_ns = now;
                                stats.record_latency(&run, sent, now);
                            }
                        }
                    }
                    buf.advance(total);
                }
                if !acks.is_empty() {
                    stream.write_all(&acks).await.context("write PUBACK")?;
                }
                if let (true, Some(flight)) = (first, &run.flight) {
                    flight.add_permits(usize::try_from(received_all - given_back).unwrap_or(0));
                    given_back = received_all;
                }
            }
        }
    }
}

async fn idle(cli: &Cli, connections: usize, concurrency: usize, stdin: bool) -> anyhow::Result<()> {
    let run = std::process::id();
    let (start, cpu0) = (Instant::now(), cpu_secs());
    let results: Vec<anyhow::Result<TcpStream>> = futures::stream::iter(0..connections)
        .map(|i| {
            let src = source(cli, i, connections);
            let id = format!("idle-{run}-{i}");
            async move { wire::connect(cli.broker, Some(src), &id, cli.keep_alive).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let mut held = Vec::with_capacity(connections);
    let mut failed = 0usize;
    for result in results {
        match result {
            Ok(stream) => held.push(stream),
            Err(e) => {
                if failed == 0 {
                    eprintln!("mqtt_bench: connection failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "mode": "idle", "connections": connections, "connected": held.len(), "failed": failed,
            "cpu_secs": cpu, "wall_secs": wall, "cpu_pct": 100.0 * cpu / wall,
        })
    );
    if stdin {
        // Blocking read on its own thread: stdin has no async reader without another tokio feature.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .context("stdin")?
            .context("stdin")?;
    } else {
        std::future::pending::<()>().await;
    }
    drop(held);
    Ok(())
}

async fn load(cli: &Cli, mode: &str, l: &Load) -> anyhow::Result<()> {
    let (default_pubs, default_subs, default_rate) = match mode {
        "latency" => (100, 1, 5_000),
        "throughput" => (100, 1, 0),
        _ => (1, 1_000, 100),
    };
    let publishers = l.publishers.unwrap_or(default_pubs).max(1);
    let subscribers = l.subscribers.unwrap_or(default_subs).max(1);
    let rate = l.rate.unwrap_or(default_rate);
    if l.payload < 8 {
        bail!("--payload must be at least 8 bytes (the send timestamp)");
    }
    if l.qos > 1 {
        bail!("--qos 0 or 1");
    }
    let id = std::process::id();
    let topic = format!("bench/{id}/t");
    let total = publishers + subscribers;

    // Subscribers first, each with its SUBACK, so none misses the first messages.
    let subs: Vec<(TcpStream, BytesMut)> = futures::stream::iter(0..subscribers)
        .map(|i| {
            let (src, topic) = (source(cli, i, total), &topic);
            async move {
                let client = format!("bench-{id}-s{i}");
                let mut stream = wire::connect(cli.broker, Some(src), &client, cli.keep_alive).await?;
                let mut buf = BytesMut::with_capacity(64 * 1024);
                wire::subscribe(&mut stream, &mut buf, topic, l.qos).await?;
                anyhow::Ok((stream, buf))
            }
        })
        .buffer_unordered(200)
        .try_collect()
        .await?;
    let pubs: Vec<TcpStream> = futures::stream::iter(0..publishers)
        .map(|i| {
            let src = source(cli, subscribers + i, total);
            let client = format!("bench-{id}-p{i}");
            async move { wire::connect(cli.broker, Some(src), &client, cli.keep_alive).await }
        })
        .buffer_unordered(200)
        .try_collect()
        .await?;
    // A SUBACK says the subscription exists; the proxy's fan-out also has to reach the end
    // of the Kafka topic before it delivers. A pause, the same for every broker.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let start_ns = now_ns() + 10_000_000;
    let warm_ns = start_ns + (l.warmup * 1e9) as u64;
    let run = Arc::new(Run {
        topic,
        qos: l.qos,
        payload: l.payload,
        window: l.window.clamp(1, RING - 1),
        warm_ns,
        end_ns: warm_ns + (l.seconds * 1e9) as u64,
        drain_ns: (l.drain * 1e9) as u64,
        sent_all: AtomicU64::new(0),
        flight: (rate == 0).then(|| Semaphore::new(l.flight.max(BATCH))),
        writers_done: AtomicUsize::new(0),
        publishers,
    });
    let cpu0 = cpu_secs();
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, (stream, buf))| tokio::spawn(subscriber(run.clone(), stream, buf, i == 0)))
        .collect();
    let each = rate as f64 / publishers as f64;
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            // Publishers evenly out of phase: the total rate is smooth, not 100 at once.
            let phase = if each > 0.0 {
                (1e9 / each * i as f64 / publishers as f64) as u64
            } else {
                0
            };
            tokio::spawn(publisher(run.clone(), stream, each, start_ns + phase))
        })
        .collect();

    let mut stats = Stats::default();
    let mut errors = 0usize;
    for task in pub_tasks.into_iter().chain(sub_tasks) {
        match task.await.context("task")? {
            Ok(s) => stats.merge(s),
            Err(e) => {
                if errors == 0 {
                    eprintln!("mqtt_bench: {e:#}");
                }
                errors += 1;
            }
        }
    }
    let done_ns = now_ns();
    let cpu = cpu_secs() - cpu0;
    let wall = (done_ns - start_ns) as f64 / 1e9;
    stats.latency_us.sort_unstable();
    stats.ack_us.sort_unstable();
    // Rates over the measured window, or until the last of its messages arrived when the
    // broker fell behind: a broker that queues does not get the queued ones for free.
    let per_sec = |n: u64, last_ns: u64| n as f64 / ((last_ns.max(run.end_ns) - run.warm_ns) as f64 / 1e9);
    let expected = stats.sent * subscribers as u64;
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "qos": l.qos, "payload": l.payload, "publishers": publishers,
            "subscribers": subscribers, "rate": rate, "seconds": l.seconds,
            "sent": stats.sent, "sent_per_sec": stats.sent as f64 / l.seconds,
            "acked": stats.acked, "acked_per_sec": per_sec(stats.acked, stats.last_ack_ns),
            "ack_p50_ms": percentile_ms(&stats.ack_us, 50.0), "ack_p99_ms": percentile_ms(&stats.ack_us, 99.0),
            "expected": expected, "delivered": stats.delivered,
            "delivered_per_sec": per_sec(stats.delivered, stats.last_delivery_ns),
            "p50_ms": percentile_ms(&stats.latency_us, 50.0), "p99_ms": percentile_ms(&stats.latency_us, 99.0),
            "max_ms": percentile_ms(&stats.latency_us, 100.0),
            "slow_slices": slow_slices(&stats.slice_max_us),
            "errors": errors, "cpu_secs": cpu, "wall_secs": wall, "cpu_pct": 100.0 * cpu / wall,
        })
    );
    Ok(())
}

/// The slices of the measured window (seconds from its start) whose worst message took
/// over 10 ms, slowest first, at most 10: `[[1.3, 84.2], ...]`.
fn slow_slices(slice_max_us: &[u32]) -> serde_json::Value {
    let mut slow: Vec<(usize, u32)> = slice_max_us
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, us)| us > 10_000)
        .collect();
    slow.sort_unstable_by_key(|&(_, us)| std::cmp::Reverse(us));
    slow.truncate(10);
    let secs = |i: usize| (i as u64 * SLICE_NS) as f64 / 1e9;
    serde_json::json!(
        slow.iter()
            .map(|&(i, us)| [secs(i), f64::from(us) / 1000.0])
            .collect::<Vec<_>>()
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    now_ns();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .context("tokio runtime")?;
    runtime.block_on(async {
        match &cli.mode {
            Mode::Idle {
                connections,
                concurrency,
                stdin,
            } => idle(&cli, *connections, *concurrency, *stdin).await,
            Mode::Latency(l) => load(&cli, "latency", l).await,
            Mode::Throughput(l) => load(&cli, "throughput", l).await,
            Mode::Fanout(l) => load(&cli, "fanout", l).await,
            Mode::Kafka {
                bootstrap,
                topic,
                rate,
                payload,
                seconds,
                warmup,
            } => {
                kafka::produce(kafka::KafkaLoad {
                    bootstrap,
                    topic,
                    rate: *rate,
                    payload: *payload,
                    seconds: *seconds,
                    warmup: *warmup,
                })
                .await
            }
        }
    })
}
