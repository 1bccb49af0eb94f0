//! Several `mqtt-kafka-proxy` processes (the real binary) on topics of their own, and raw
//! MQTT 5 peers that follow redirects and reconnect: what the cluster tests drive.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_kafka_testenv::{kafka, unique_name};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::RawPeer;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One proxy process of a test cluster.
pub struct Proc {
    pub instance: String,
    pub port: u16,
    /// A second TCP listener (`alt`) with a server reference of its own; 0 when absent.
    pub alt: u16,
    pub admin: u16,
    pub child: Option<Child>,
}

impl Proc {
    pub fn reference(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin)).await else {
            return 0.0;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Resident memory of the process (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Starts the process again after a kill: same instance id, ports and config.
    pub async fn restart(&mut self, dir: &std::path::Path) {
        let file = dir.join(format!("{}.yaml", self.instance));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join(format!("{}.log", self.instance)))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-proxy"))
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("proxy restarts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self.admin).await {
            assert!(Instant::now() < deadline, "{} not ready after restart", self.instance);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&mut self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `within` for the process to exit; its exit status.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of proxy processes on topics of its own.
pub struct TestCluster {
    pub dir: PathBuf,
    pub bootstrap: String,
    pub prefix: String,
    pub procs: Vec<Proc>,
    pub redirect: bool,
    /// Each process also has the `alt` listener.
    pub alt_listener: bool,
    /// `cluster.redirect.maxPerSecond` (`None`: the default).
    pub redirects_per_second: Option<u32>,
}

impl TestCluster {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, true).await
    }

    /// `n` processes; with `redirect` off every process serves every client.
    pub async fn start_with(n: usize, redirect: bool) -> Self {
        Self::start_custom(n, redirect, false).await
    }

    /// `n` processes with redirects that move at most `per_second` clients a second.
    pub async fn start_with_redirect_rate(n: usize, per_second: u32) -> Self {
        Self::start_full(n, true, false, Some(per_second)).await
    }

    /// `n` processes; `alt_listener`: each also has the `alt` listener.
    pub async fn start_custom(n: usize, redirect: bool, alt_listener: bool) -> Self {
        Self::start_full(n, redirect, alt_listener, None).await
    }

    async fn start_full(n: usize, redirect: bool, alt_listener: bool, redirects_per_second: Option<u32>) -> Self {
        let bootstrap = kafka().await.unwrap_or_else(|e| panic!("{e}"));
        let prefix = unique_name("c");
        let dir = mqtt_kafka_testenv::repo_root()
            .join(".local")
            .join("test-clusters")
            .join(&prefix);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Self {
            dir,
            bootstrap,
            prefix,
            procs: Vec::new(),
            redirect,
            alt_listener,
            redirects_per_second,
        };
        for i in 0..n {
            cluster.add(i == 0).await;
        }
        cluster.wait_members(n).await;
        cluster
    }

    /// Starts one more process (`create` creates the topics) and waits until it is ready.
    pub async fn add(&mut self, create: bool) -> usize {
        let i = self.procs.len();
        let (port, admin) = (free_port(), free_port());
        let alt = if self.alt_listener { free_port() } else { 0 };
        let alt_listener = if self.alt_listener {
            format!(", {{name: alt, protocol: tcp, address: '127.0.0.1:{alt}', serverReference: '127.0.0.1:{alt}'}}")
        } else {
            String::new()
        };
        let instance = format!("proxy-{i}");
        let config = format!(
            "instanceId: {instance}\n\
             listeners: [{{name: mqtt, protocol: tcp, address: '127.0.0.1:{port}'}}{alt_listener}]\n\
             admin: {{address: '127.0.0.1:{admin}'}}\n\
             kafka: {{bootstrapServers: '{bootstrap}'}}\n\
             topics: {{messages: {p}-messages, retained: {p}-retained, sessions: {p}-sessions}}\n\
             cluster: {{serverReference: '127.0.0.1:{port}', redirect: {{enabled: {redirect}{rate}}}}}\n",
            bootstrap = self.bootstrap,
            p = self.prefix,
            redirect = self.redirect,
            rate = self
                .redirects_per_second
                .map(|r| format!(", maxPerSecond: {r}"))
                .unwrap_or_default()
        );
        let file = self.dir.join(format!("{instance}.yaml"));
        std::fs::write(&file, config).expect("config");
        let log = std::fs::File::create(self.dir.join(format!("{instance}.log"))).expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-proxy"));
        command.arg("--config").arg(&file).arg("--partitions").arg("6");
        if create {
            command.arg("--create-topics");
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("proxy starts");
        self.procs.push(Proc {
            instance,
            port,
            alt,
            admin,
            child: Some(child),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "proxy-{i} not ready; see {}",
                self.dir.display()
            );
            if ready(admin).await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running process owns some partitions and all together own all.
    pub async fn wait_members(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut total = 0.0;
            let mut each = Vec::new();
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                let owned = p.metric("mqtt_kafka_owned_session_partitions").await;
                total += owned;
                each.push(owned);
            }
            if each.len() == n && each.iter().all(|o| *o >= 1.0) && (total - 6.0).abs() < f64::EPSILON {
                return;
            }
            assert!(Instant::now() < deadline, "ownership did not settle: {each:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn by_port(&self, port: u16) -> usize {
        self.procs
            .iter()
            .position(|p| p.port == port)
            .expect("a process of the cluster")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn ready(admin: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200")
}

/// The reason code and Server Reference of a v5 CONNACK or DISCONNECT.
pub fn reason_and_reference(packet: &[u8]) -> (u8, Option<String>) {
    // Fixed header, remaining length (one byte here), [CONNACK: flags], reason, properties.
    let mut at = 2;
    if packet[0] == 0x20 {
        at += 1;
    }
    let reason = packet.get(at).copied().unwrap_or(0);
    let mut reference = None;
    if let Some(&len) = packet.get(at + 1) {
        let mut p = at + 2;
        let end = (at + 2 + usize::from(len)).min(packet.len());
        while p < end {
            let id = packet[p];
            p += 1;
            match id {
                // UTF-8 string properties.
                0x1C | 0x12 | 0x1A | 0x1F | 0x15 => {
                    let n = usize::from(u16::from_be_bytes([packet[p], packet[p + 1]]));
                    if id == 0x1C {
                        reference = Some(String::from_utf8_lossy(&packet[p + 2..p + 2 + n]).into_owned());
                    }
                    p += 2 + n;
                }
                0x11 | 0x27 => p += 4,
                0x21 | 0x22 | 0x13 => p += 2,
                0x24 | 0x25 | 0x28 | 0x29 | 0x2A => p += 1,
                0x26 => {
                    let n = usize::from(u16::from_be_bytes([packet[p], packet[p + 1]]));
                    let m = usize::from(u16::from_be_bytes([packet[p + 2 + n], packet[p + 3 + n]]));
                    p += 4 + n + m;
                }
                _ => break,
            }
        }
    }
    (reason, reference)
}

/// A v5 CONNECT: client id, clean start, session expiry, optional will (topic, delay).
pub fn connect_packet(id: &str, clean: bool, expiry: u32, will: Option<(&str, u32)>) -> Vec<u8> {
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04 | 0x08; // will, QoS 1
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 30];
    body.extend_from_slice(&[5, 0x11]);
    body.extend_from_slice(&expiry.to_be_bytes());
    body.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    if let Some((topic, delay)) = will {
        body.extend_from_slice(&[5, 0x18]);
        body.extend_from_slice(&delay.to_be_bytes());
        body.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(b"gone");
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short CONNECT")];
    packet.extend(body);
    packet
}

/// Connects as a client following redirects; returns the peer, the port it ended at, how
/// many redirects it followed and whether the session was present.
pub async fn connect_following(
    start: u16,
    id: &str,
    clean: bool,
    expiry: u32,
    will: Option<(&str, u32)>,
) -> (RawPeer, u16, usize, bool) {
    let mut port = start;
    let mut redirects = 0;
    loop {
        let mut peer = RawPeer {
            stream: TcpStream::connect(("127.0.0.1", port)).await.expect("connect"),
        };
        peer.send(&connect_packet(id, clean, expiry, will)).await;
        let connack = peer.read_packet().await.expect("CONNACK");
        match reason_and_reference(&connack) {
            (0, _) => return (peer, port, redirects, connack[2] & 1 == 1),
            (0x9C, Some(reference)) => {
                port = reference
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("host:port");
                redirects += 1;
                assert!(redirects < 3, "redirected in circles");
            }
            other => panic!("CONNACK {other:?}"),
        }
    }
}

/// A v5 SUBSCRIBE of `filter` at QoS 1, packet id 1; waits for the SUBACK.
pub async fn subscribe(peer: &mut RawPeer, filter: &str) {
    subscribe_qos(peer, filter, 1).await;
}

pub async fn subscribe_qos(peer: &mut RawPeer, filter: &str, qos: u8) {
    let mut body = vec![0, 1, 0];
    body.extend_from_slice(&u16::try_from(filter.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(qos);
    let mut packet = vec![0x82, u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    peer.send(&packet).await;
    let suback = peer.read_packet().await.expect("SUBACK");
    assert_eq!(suback[0], 0x90);
}

/// The next PUBLISH's topic and payload (PUBACKs it for QoS 1).
pub async fn next_publish(peer: &mut RawPeer) -> (String, String) {
    loop {
        let packet = peer.read_packet().await.expect("a PUBLISH");
        if packet[0] & 0xF0 != 0x30 {
            continue;
        }
        let qos = (packet[0] >> 1) & 3;
        let mut at = 1;
        while packet[at] & 0x80 != 0 {
            at += 1;
        }
        at += 1;
        let n = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
        let topic = String::from_utf8_lossy(&packet[at + 2..at + 2 + n]).into_owned();
        at += 2 + n;
        if qos > 0 {
            let id = [packet[at], packet[at + 1]];
            peer.send(&[0x40, 2, id[0], id[1]]).await;
            at += 2;
        }
        let props = usize::from(packet[at]);
        at += 1 + props;
        return (topic, String::from_utf8_lossy(&packet[at..]).into_owned());
    }
}

/// An MQTT 5 client that follows redirects and reconnects wherever it can (a session that
/// must survive processes dying), reading packets with a short timeout.
pub struct Resilient {
    pub id: String,
    pub ports: Vec<u16>,
    pub peer: Option<RawPeer>,
    pub buffer: Vec<u8>,
    /// Connections made (the first one included).
    pub connects: usize,
}

/// What the resilient client read.
pub enum Read {
    Packet(Vec<u8>),
    Nothing,
}

impl Resilient {
    pub fn new(id: &str, ports: Vec<u16>) -> Self {
        Self {
            id: id.to_owned(),
            ports,
            peer: None,
            buffer: Vec::new(),
            connects: 0,
        }
    }

    /// Connects (persistent session, expiry 300 s), starting at `first` if given, trying
    /// every process until one accepts, following redirects.
    pub async fn connect(&mut self, first: Option<u16>) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut candidates: Vec<u16> = first.into_iter().chain(self.ports.iter().copied()).collect();
        loop {
            assert!(Instant::now() < deadline, "{} could not connect anywhere", self.id);
            let port = candidates.remove(0);
            candidates.push(port);
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut peer = RawPeer { stream };
            peer.send(&connect_packet(&self.id, false, 300, None)).await;
            let Ok(Some(connack)) = tokio::time::timeout(Duration::from_secs(5), peer.read_packet()).await else {
                continue;
            };
            match reason_and_reference(&connack) {
                (0, _) => {
                    self.peer = Some(peer);
                    self.buffer.clear();
                    self.connects += 1;
                    return;
                }
                (0x9C | 0x9D, Some(reference)) => {
                    if let Some(port) = reference.rsplit(':').next().and_then(|p| p.parse().ok()) {
                        candidates.insert(0, port);
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The next whole packet within `wait`; reconnects when the server closed or sent a
    /// DISCONNECT (to its Server Reference, if any).
    pub async fn read(&mut self, wait: Duration) -> Read {
        use tokio::io::AsyncReadExt;
        if self.peer.is_none() {
            self.connect(None).await;
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(packet) = take_packet(&mut self.buffer) {
                if packet[0] == 0xE0 {
                    let (_, reference) = reason_and_reference(&packet);
                    let port = reference.and_then(|r| r.rsplit(':').next().and_then(|p| p.parse().ok()));
                    self.peer = None;
                    self.connect(port).await;
                    continue;
                }
                return Read::Packet(packet);
            }
            let Some(peer) = &mut self.peer else {
                return Read::Nothing;
            };
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, peer.stream.read(&mut chunk)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(_) => {
                    self.peer = None;
                    self.connect(None).await;
                }
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        if let Some(peer) = &mut self.peer {
            use tokio::io::AsyncWriteExt;
            if peer.stream.write_all(bytes).await.is_err() {
                self.peer = None;
            }
        }
    }
}

/// Takes one whole packet off the front of `buffer`.
pub fn take_packet(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
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

/// Topic, payload and packet id of a PUBLISH.
pub fn parse_publish(packet: &[u8]) -> (String, String, Option<[u8; 2]>) {
    let qos = (packet[0] >> 1) & 3;
    let mut at = 1;
    while packet[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let n = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
    let topic = String::from_utf8_lossy(&packet[at + 2..at + 2 + n]).into_owned();
    at += 2 + n;
    let id = (qos > 0).then(|| [packet[at], packet[at + 1]]);
    if qos > 0 {
        at += 2;
    }
    let props = usize::from(packet[at]);
    at += 1 + props;
    (topic, String::from_utf8_lossy(&packet[at..]).into_owned(), id)
}

/// A v5 QoS 1 PUBLISH.
pub fn publish_packet(topic: &str, id: u16, payload: &str, dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.push(0);
    body.extend_from_slice(payload.as_bytes());
    let mut packet = vec![if dup { 0x3A } else { 0x32 }, u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    packet
}

/// Payloads a subscriber received, with how often.
pub type Received = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// A persistent QoS 1 subscriber of `filter` that keeps reading (following redirects,
/// reconnecting) until `stop`; the task returns how often it connected.
pub async fn spawn_subscriber(
    id: &str,
    ports: Vec<u16>,
    filter: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<usize>, Received, u16) {
    let mut subscriber = Resilient::new(id, ports);
    subscriber.connect(None).await;
    let port = subscriber
        .peer
        .as_ref()
        .and_then(|p| p.stream.peer_addr().ok())
        .map(|a| a.port())
        .expect("port");
    if let Some(peer) = &mut subscriber.peer {
        subscribe(peer, filter).await;
    }
    let received = Received::default();
    let task = {
        let received = std::sync::Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                if *stop.borrow_and_update() {
                    return subscriber.connects;
                }
                if let Read::Packet(packet) = subscriber.read(Duration::from_millis(200)).await
                    && packet[0] & 0xF0 == 0x30
                {
                    let (_, payload, id) = parse_publish(&packet);
                    if let Some(id) = id {
                        subscriber.send(&[0x40, 2, id[0], id[1]]).await;
                    }
                    *received
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(payload)
                        .or_default() += 1;
                }
            }
        })
    };
    (task, received, port)
}

/// Publishes `count` QoS 1 messages `p<n>` on `scale/...` at one per `every`, resending
/// what was not acknowledged after a reconnect; `at` is called between messages with the
/// time since the start (to kill, start or stop processes). Returns what was acknowledged.
pub async fn publish_resiliently(
    cluster: &mut TestCluster,
    topic: &str,
    count: u16,
    every: Duration,
    mut at: impl AsyncFnMut(&mut TestCluster, Duration),
) -> std::collections::BTreeSet<String> {
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    let mut publisher = Resilient::new(&unique_name("publisher"), ports);
    publisher.connect(None).await;
    let mut acked = std::collections::BTreeSet::new();
    let mut unacked: std::collections::BTreeMap<u16, String> = std::collections::BTreeMap::new();
    let started = Instant::now();
    let mut next = 1u16;
    let mut connects_seen = publisher.connects;
    while next <= count || !unacked.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(180), "publishing took too long");
        at(cluster, started.elapsed()).await;
        if publisher.connects != connects_seen {
            connects_seen = publisher.connects;
            for (id, payload) in unacked.clone() {
                publisher.send(&publish_packet(topic, id, &payload, true)).await;
            }
        }
        let due = started.elapsed() >= every * u32::from(next);
        if next <= count && unacked.len() < 20 && due {
            let payload = format!("p{next}");
            publisher.send(&publish_packet(topic, next, &payload, false)).await;
            unacked.insert(next, payload);
            next += 1;
        }
        if let Read::Packet(packet) = publisher.read(Duration::from_millis(5)).await
            && packet[0] == 0x40
        {
            let id = u16::from_be_bytes([packet[2], packet[3]]);
            let reason = packet.get(4).copied().unwrap_or(0);
            if let Some(payload) = unacked.remove(&id) {
                if reason == 0 {
                    acked.insert(payload);
                } else {
                    unacked.insert(id, payload);
                }
            }
        }
    }
    acked
}

/// Waits until `received` holds every one of `acked`; panics naming what is missing.
pub async fn wait_all_received(who: &str, received: &Received, acked: &std::collections::BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = {
            let received = received.lock().unwrap_or_else(|e| e.into_inner());
            acked.iter().filter(|p| !received.contains_key(*p)).cloned().collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: {} of {} acknowledged messages never arrived, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
