//! Load generator for `e2e/bench/sessions.sh`: a reconnect storm of persistent sessions.
//!
//!     session_bench HOST PORT SESSIONS MESSAGES_PER_SESSION
//!
//! 1. SESSIONS MQTT 5 clients (session expiry 1 h) each subscribe to `storm/<run>/<i>` at
//!    QoS 1 and disconnect;
//! 2. one publisher sends MESSAGES_PER_SESSION QoS 1 messages to each of those topics and
//!    waits for every PUBACK;
//! 3. all SESSIONS clients reconnect at once; each reads (and acknowledges) until it has
//!    all its messages. Prints one JSON line: how long each phase took, how many messages
//!    arrived, the slowest session.
//!
//! Raw MQTT over TCP (no client library), so that 10 000 clients cost the load generator
//! little next to the broker it measures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT v5, clean start 0, session expiry 3600, keep-alive 300.
fn connect(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0, 1, 44, 5, 0x11, 0, 0, 0x0E, 0x10];
    string(id, &mut body);
    packet(0x10, &body)
}

fn subscribe(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1, 0];
    string(filter, &mut body);
    body.push(1);
    packet(0x82, &body)
}

fn publish(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    body.extend_from_slice(&id.to_be_bytes());
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// Reads packets off a stream.
struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Reader {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = take(&mut self.buffer) {
                return Some(p);
            }
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

fn take(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut remaining = 0usize;
    let mut at = 1;
    for shift in [0, 7, 14, 21] {
        let byte = *buffer.get(at)?;
        remaining |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if buffer.len() < at + remaining {
        return None;
    }
    Some(buffer.drain(..at + remaining).collect())
}

async fn open(addr: &str, id: &str) -> Reader {
    let mut stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = stream.set_nodelay(true);
    stream.write_all(&connect(id)).await.expect("CONNECT written");
    let mut reader = Reader {
        stream,
        buffer: Vec::new(),
    };
    let connack = reader.next().await.expect("CONNACK");
    assert_eq!(connack[3], 0, "CONNACK {connack:02x?}");
    reader
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (host, port) = (&args[1], &args[2]);
    let sessions: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per_session: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(100);
    let addr = format!("{host}:{port}");
    let run = std::process::id();
    let id = |i: usize| format!("storm-{run}-{i}");
    let topic = |i: usize| format!("storm/{run}/{i}");

    // 1. subscribe and go away, 200 at a time.
    let t = Instant::now();
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(200) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (addr, id, topic) = (addr.clone(), id(i), topic(i));
            tasks.push(tokio::spawn(async move {
                let mut r = open(&addr, &id).await;
                r.stream.write_all(&subscribe(&topic)).await.expect("SUBSCRIBE");
                let suback = r.next().await.expect("SUBACK");
                assert_eq!(suback[0], 0x90);
                r.stream.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
            }));
        }
        for task in tasks {
            task.await.expect("subscriber");
        }
    }
    let subscribed = t.elapsed();

    // 2. publish while they are away.
    let t = Instant::now();
    let mut publisher = open(&addr, &format!("storm-{run}-publisher")).await;
    let total = sessions * per_session;
    let (mut sent, mut acked, mut in_flight) = (0usize, 0usize, 0usize);
    let payload = [b'x'; 32];
    while acked < total {
        let mut batch = Vec::new();
        while sent < total && in_flight < 500 {
            let packet_id = u16::try_from(sent % 60_000 + 1).unwrap_or(1);
            batch.extend(publish(&topic(sent % sessions), packet_id, &payload));
            sent += 1;
            in_flight += 1;
        }
        if !batch.is_empty() {
            publisher.stream.write_all(&batch).await.expect("PUBLISH");
        }
        let ack = publisher.next().await.expect("PUBACK");
        if ack[0] == 0x40 {
            assert_eq!(ack.get(4).copied().unwrap_or(0), 0, "PUBACK reason");
            acked += 1;
            in_flight -= 1;
        }
    }
    let published = t.elapsed();

    // 3. everyone comes back at once.
    let t = Instant::now();
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let (addr, id, delivered) = (addr.clone(), id(i), Arc::clone(&delivered));
        tasks.push(tokio::spawn(async move {
            let mut r = open(&addr, &id).await;
            let mut got = 0;
            while got < per_session {
                let Some(p) = r.next().await else { break };
                if p[0] & 0xF0 == 0x30 {
                    let mut at = 1;
                    while p[at] & 0x80 != 0 {
                        at += 1;
                    }
                    at += 1;
                    let n = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
                    let pid = [p[at + 2 + n], p[at + 3 + n]];
                    r.stream.write_all(&[0x40, 2, pid[0], pid[1]]).await.ok();
                    got += 1;
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            let done = t.elapsed();
            let _ = r.stream.write_all(&[0xE0, 0]).await;
            done
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.unwrap_or_default());
    }
    let storm = t.elapsed();
    println!(
        "{{\"sessions\":{sessions},\"messages_per_session\":{per_session},\"subscribe_s\":{:.2},\"publish_s\":{:.2},\"publish_msg_per_s\":{:.0},\"storm_all_delivered_s\":{:.2},\"slowest_session_s\":{:.2},\"delivered\":{},\"expected\":{total}}}",
        subscribed.as_secs_f64(),
        published.as_secs_f64(),
        total as f64 / published.as_secs_f64(),
        storm.as_secs_f64(),
        slowest.as_secs_f64(),
        delivered.load(Ordering::Relaxed)
    );
}
