//! Several `mqtt-kafka-proxy` processes (the real binary) as one broker: redirects to the
//! owner of a session, ownership moving when a process is killed or stops, wills and
//! expiry of sessions whose process died, clients handed over on SIGTERM.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_kafka_testenv::{kafka, unique_name};
use support::RawPeer;
use tokio::net::TcpStream;
use tokio::time::Instant;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One proxy process of a test cluster.
struct Proc {
    instance: String,
    port: u16,
    /// A second TCP listener (`alt`) with a server reference of its own; 0 when absent.
    alt: u16,
    admin: u16,
    child: Option<Child>,
}

impl Proc {
    fn reference(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn metric(&self, series: &str) -> f64 {
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

    /// Starts the process again after a kill: same instance id, ports and config.
    async fn restart(&mut self, dir: &std::path::Path) {
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

    fn signal(&mut self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `within` for the process to exit; its exit status.
    async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
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
struct TestCluster {
    dir: PathBuf,
    bootstrap: String,
    prefix: String,
    procs: Vec<Proc>,
    redirect: bool,
    /// Each process also has the `alt` listener.
    alt_listener: bool,
}

impl TestCluster {
    async fn start(n: usize) -> Self {
        Self::start_with(n, true).await
    }

    /// `n` processes; with `redirect` off every process serves every client.
    async fn start_with(n: usize, redirect: bool) -> Self {
        Self::start_custom(n, redirect, false).await
    }

    /// `n` processes; `alt_listener`: each also has the `alt` listener.
    async fn start_custom(n: usize, redirect: bool, alt_listener: bool) -> Self {
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
        };
        for i in 0..n {
            cluster.add(i == 0).await;
        }
        cluster.wait_members(n).await;
        cluster
    }

    /// Starts one more process (`create` creates the topics) and waits until it is ready.
    async fn add(&mut self, create: bool) -> usize {
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
             cluster: {{serverReference: '127.0.0.1:{port}', redirect: {{enabled: {redirect}}}}}\n",
            bootstrap = self.bootstrap,
            p = self.prefix,
            redirect = self.redirect
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
    async fn wait_members(&self, n: usize) {
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

    fn by_port(&self, port: u16) -> usize {
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

async fn ready(admin: u16) -> bool {
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
fn reason_and_reference(packet: &[u8]) -> (u8, Option<String>) {
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
fn connect_packet(id: &str, clean: bool, expiry: u32, will: Option<(&str, u32)>) -> Vec<u8> {
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
async fn connect_following(
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
async fn subscribe(peer: &mut RawPeer, filter: &str) {
    subscribe_qos(peer, filter, 1).await;
}

async fn subscribe_qos(peer: &mut RawPeer, filter: &str, qos: u8) {
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
async fn next_publish(peer: &mut RawPeer) -> (String, String) {
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

#[tokio::test]
async fn mqtt5_clients_are_redirected_to_the_owner_of_their_session() {
    let cluster = TestCluster::start(3).await;
    let mut redirected = 0;
    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..12 {
        let (_peer, port, redirects, _) =
            connect_following(cluster.procs[0].port, &format!("dev-{i}"), true, 0, None).await;
        redirected += redirects;
        served_by.insert(port);
        // The owner serves it without a redirect.
        let (_again, again_port, again_redirects, _) =
            connect_following(port, &format!("dev-{i}"), true, 0, None).await;
        assert_eq!((again_port, again_redirects), (port, 0), "dev-{i}");
    }
    assert!(redirected > 0, "some of 12 clients belong to another process");
    assert_eq!(served_by.len(), 3, "every process owns some of them: {served_by:?}");
}

/// The reason code and Server Reference of the CONNACK `id` gets on `port`.
async fn connack_on(port: u16, id: &str) -> (u8, Option<String>) {
    let mut peer = RawPeer {
        stream: TcpStream::connect(("127.0.0.1", port)).await.expect("connect"),
    };
    peer.send(&connect_packet(id, true, 0, None)).await;
    let connack = peer.read_packet().await.expect("CONNACK");
    reason_and_reference(&connack)
}

#[tokio::test]
async fn a_client_is_redirected_to_the_owners_listener_of_the_kind_it_connected_on() {
    let cluster = TestCluster::start_custom(2, true, true).await;
    let (first, second) = (&cluster.procs[0], &cluster.procs[1]);
    let mut redirected = 0;
    for i in 0..12 {
        let id = format!("kind-{i}");
        // On the listener with a reference of its own: the owner's same listener.
        match connack_on(first.alt, &id).await {
            (0, _) => continue,
            (0x9C, reference) => {
                assert_eq!(reference, Some(format!("127.0.0.1:{}", second.alt)), "{id}");
                redirected += 1;
            }
            other => panic!("{id}: CONNACK {other:?}"),
        }
        // On the listener without: the owner's single reference.
        assert_eq!(
            connack_on(first.port, &id).await,
            (0x9C, Some(second.reference())),
            "{id}"
        );
    }
    assert!(redirected > 0, "some of 12 clients belong to the other process");
}

#[tokio::test]
async fn a_killed_process_loses_its_partitions_and_its_clients_wills_fire_elsewhere() {
    let mut cluster = TestCluster::start(3).await;
    let (mut watcher, watch_port, _, _) = connect_following(cluster.procs[0].port, "watcher", true, 0, None).await;
    subscribe(&mut watcher, "wills/#").await;
    // A client with a will (delay 1 s) and an expiring session, on a process other than
    // the watcher's; the watcher may have to move if its own process is killed, so pick
    // a client that lives elsewhere.
    let mut victim = None;
    for i in 0..50 {
        let id = format!("doomed-{i}");
        let (peer, port, _, _) =
            connect_following(cluster.procs[0].port, &id, false, 3, Some(("wills/doomed", 1))).await;
        if port != watch_port {
            victim = Some((peer, port, id));
            break;
        }
    }
    let (_peer, port, id) = victim.expect("a client on another process");
    let dead = cluster.by_port(port);
    let killed = Instant::now();
    cluster.procs[dead].kill();

    // Ownership moves to the two survivors within 10 s.
    let deadline = killed + Duration::from_secs(10);
    loop {
        let mut total = 0.0;
        for p in cluster.procs.iter().filter(|p| p.child.is_some()) {
            total += p.metric("mqtt_kafka_owned_session_partitions").await;
        }
        if (total - 6.0).abs() < f64::EPSILON {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "survivors own {total} of 6 partitions 10 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved_after = killed.elapsed();

    // The will of the client of the dead process fires on a survivor.
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(15), next_publish(&mut watcher))
        .await
        .expect("the will within 15 s of the kill");
    assert_eq!((topic.as_str(), payload.as_str()), ("wills/doomed", "gone"));
    let will_after = killed.elapsed();

    // And its session (expiry 3 s) is deleted: it is not present any more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let survivor = cluster
        .procs
        .iter()
        .find(|p| p.child.is_some())
        .map(|p| p.port)
        .expect("survivor");
    let (_again, _, _, present) = connect_following(survivor, &id, false, 3, None).await;
    assert!(!present, "the session of the dead process's client expired");
    eprintln!("ownership moved {moved_after:?} after SIGKILL; will {will_after:?}");
}

#[tokio::test]
async fn sigterm_hands_mqtt5_clients_to_the_new_owner_and_exits() {
    let mut cluster = TestCluster::start(3).await;
    let (mut client, port, _, _) = connect_following(cluster.procs[0].port, "handed-over", false, 60, None).await;
    let leaving = cluster.by_port(port);
    let started = Instant::now();
    cluster.procs[leaving].signal("TERM");
    let disconnect = client.read_packet().await.expect("DISCONNECT before the close");
    assert_eq!(disconnect[0], 0xE0, "{disconnect:02x?}");
    let (reason, reference) = reason_and_reference(&disconnect);
    assert_eq!(reason, 0x9C, "use another server");
    let reference = reference.expect("Server Reference");
    let survivors: Vec<String> = cluster
        .procs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leaving)
        .map(|(_, p)| p.reference())
        .collect();
    assert!(
        survivors.contains(&reference),
        "{reference} is a survivor: {survivors:?}"
    );
    let status = cluster.procs[leaving]
        .exited(Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
    eprintln!("handed over and exited {:?} after SIGTERM", started.elapsed());
    // The new owner takes the client with its session.
    let port: u16 = reference.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let mut peer = RawPeer {
        stream: TcpStream::connect(("127.0.0.1", port)).await.expect("connect"),
    };
    peer.send(&connect_packet("handed-over", false, 60, None)).await;
    let connack = peer.read_packet().await.expect("CONNACK");
    assert_eq!(
        (connack[2], connack[3]),
        (1, 0),
        "session present, success: {connack:02x?}"
    );
}

/// An MQTT 5 client that follows redirects and reconnects wherever it can (a session that
/// must survive processes dying), reading packets with a short timeout.
struct Resilient {
    id: String,
    ports: Vec<u16>,
    peer: Option<RawPeer>,
    buffer: Vec<u8>,
    /// Connections made (the first one included).
    connects: usize,
}

/// What the resilient client read.
enum Read {
    Packet(Vec<u8>),
    Nothing,
}

impl Resilient {
    fn new(id: &str, ports: Vec<u16>) -> Self {
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
    async fn connect(&mut self, first: Option<u16>) {
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
    async fn read(&mut self, wait: Duration) -> Read {
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

    async fn send(&mut self, bytes: &[u8]) {
        if let Some(peer) = &mut self.peer {
            use tokio::io::AsyncWriteExt;
            if peer.stream.write_all(bytes).await.is_err() {
                self.peer = None;
            }
        }
    }
}

/// Takes one whole packet off the front of `buffer`.
fn take_packet(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
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
fn parse_publish(packet: &[u8]) -> (String, String, Option<[u8; 2]>) {
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
fn publish_packet(topic: &str, id: u16, payload: &str, dup: bool) -> Vec<u8> {
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
type Received = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// A persistent QoS 1 subscriber of `filter` that keeps reading (following redirects,
/// reconnecting) until `stop`; the task returns how often it connected.
async fn spawn_subscriber(
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
async fn publish_resiliently(
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
async fn wait_all_received(who: &str, received: &Received, acked: &std::collections::BTreeSet<String>) {
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

#[tokio::test]
async fn every_acknowledged_message_reaches_a_persistent_subscriber_while_processes_are_killed_and_restarted() {
    let mut cluster = TestCluster::start(3).await;
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (reader, received, sub_port) = spawn_subscriber("load-subscriber", ports, "load/#", stop).await;
    let victim = cluster.by_port(sub_port);
    let started = Instant::now();
    let (mut killed, mut restarted) = (false, false);
    let acked = publish_resiliently(
        &mut cluster,
        "load/x",
        3000,
        Duration::from_millis(5),
        async |cluster, t| {
            if !killed && t > Duration::from_secs(2) {
                cluster.procs[victim].kill();
                killed = true;
            }
            if killed && !restarted && t > Duration::from_secs(9) {
                let dir = cluster.dir.clone();
                cluster.procs[victim].restart(&dir).await;
                restarted = true;
            }
        },
    )
    .await;
    assert!(killed && restarted);
    wait_all_received("subscriber", &received, &acked).await;
    let _ = stop_tx.send(true);
    let sub_connects = reader.await.expect("reader");
    let received = received.lock().unwrap_or_else(|e| e.into_inner());
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "acknowledged {}, received {} distinct, {duplicates} duplicates; subscriber connected {sub_connects} times, in {:?}",
        acked.len(),
        received.len(),
        started.elapsed()
    );
    assert!(sub_connects >= 2, "the subscriber had to move");
}

#[tokio::test]
async fn scaling_3_to_4_to_2_processes_under_traffic_loses_nothing() {
    let mut cluster = TestCluster::start(3).await;
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut subscribers = Vec::new();
    for i in 0..12 {
        subscribers.push(spawn_subscriber(&format!("scale-sub-{i}"), ports.clone(), "scale/#", stop.clone()).await);
    }
    let started = Instant::now();
    let (mut grown, mut shrunk) = (false, false);
    let mut moved_on_growth = 0.0;
    let acked = publish_resiliently(
        &mut cluster,
        "scale/x",
        2000,
        Duration::from_millis(8),
        async |cluster, t| {
            if !grown && t > Duration::from_secs(3) {
                cluster.add(false).await;
                cluster.wait_members(4).await;
                grown = true;
            }
            if grown && !shrunk && t > Duration::from_secs(9) {
                for p in &cluster.procs {
                    moved_on_growth += p.metric("mqtt_kafka_redirects_total{when=\"moved\"}").await;
                }
                cluster.procs[0].signal("TERM");
                cluster.procs[1].signal("TERM");
                for i in [0, 1] {
                    let status = cluster.procs[i]
                        .exited(Duration::from_secs(30))
                        .await
                        .expect("exits on SIGTERM");
                    assert!(status.success(), "proxy-{i}: {status}");
                }
                shrunk = true;
            }
        },
    )
    .await;
    assert!(grown && shrunk);
    for (i, (_, received, _)) in subscribers.iter().enumerate() {
        wait_all_received(&format!("scale-sub-{i}"), received, &acked).await;
    }
    let _ = stop_tx.send(true);
    let mut connects = 0;
    for (task, _, _) in subscribers {
        connects += task.await.expect("subscriber");
    }
    let handed_over: f64 = {
        let mut total = 0.0;
        for p in cluster.procs.iter().filter(|p| p.child.is_some()) {
            total += p.metric("mqtt_kafka_connects_total{reason=\"success\"}").await;
        }
        total
    };
    eprintln!(
        "3 -> 4 -> 2 processes: {} messages acknowledged, each received by 12 subscribers; {moved_on_growth} clients moved on growth; {connects} subscriber connections in all ({handed_over} connects on the survivors); {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(moved_on_growth >= 1.0, "growth moved some clients to the new process");
    assert!(connects > 12, "clients moved");
}

#[tokio::test]
async fn qos2_end_to_end_delivers_each_message_once_while_the_subscribers_process_is_killed() {
    let mut cluster = TestCluster::start_with(2, false).await;
    let (p0, p1) = (cluster.procs[0].port, cluster.procs[1].port);
    // The subscriber starts on process 1 and moves to process 0 when 1 is killed.
    let mut subscriber = Resilient::new("qos2-subscriber", vec![p1, p0]);
    subscriber.connect(Some(p1)).await;
    if let Some(peer) = &mut subscriber.peer {
        subscribe_qos(peer, "q2/#", 2).await;
    }
    let counted = Received::default();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let reader = {
        let counted = std::sync::Arc::clone(&counted);
        tokio::spawn(async move {
            // Packet ids the client received and has not seen released: a PUBLISH with one
            // of them is the same message again (MQTT 5 §4.3.3, receiver side).
            let mut held = std::collections::HashSet::new();
            loop {
                if *stop.borrow_and_update() {
                    return subscriber.connects;
                }
                let Read::Packet(packet) = subscriber.read(Duration::from_millis(200)).await else {
                    continue;
                };
                match packet[0] & 0xF0 {
                    0x30 => {
                        let (_, payload, id) = parse_publish(&packet);
                        let id = id.expect("QoS 2 has a packet id");
                        if held.insert(id) {
                            *counted
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(payload)
                                .or_default() += 1;
                        }
                        subscriber.send(&[0x50, 2, id[0], id[1]]).await;
                    }
                    0x60 => {
                        let id = [packet[2], packet[3]];
                        held.remove(&id);
                        subscriber.send(&[0x70, 2, id[0], id[1]]).await;
                    }
                    _ => {}
                }
            }
        })
    };

    // A QoS 2 publisher on process 0 (never killed): PUBLISH, PUBREC, PUBREL, PUBCOMP.
    let mut publisher = Resilient::new("qos2-publisher", vec![p0]);
    publisher.connect(Some(p0)).await;
    let total: u16 = 1500;
    let started = Instant::now();
    let (mut next, mut in_flight, mut completed) = (1u16, 0usize, 0u16);
    let mut killed = false;
    while completed < total {
        assert!(started.elapsed() < Duration::from_secs(90), "publishing took too long");
        if !killed && started.elapsed() > Duration::from_secs(2) {
            cluster.procs[1].kill();
            killed = true;
        }
        let due = started.elapsed() >= Duration::from_millis(4) * u32::from(next);
        if next <= total && in_flight < 20 && due {
            let mut packet = publish_packet(&format!("q2/{}", next % 3), next, &format!("q{next}"), false);
            packet[0] = 0x34; // QoS 2
            publisher.send(&packet).await;
            next += 1;
            in_flight += 1;
        }
        if let Read::Packet(packet) = publisher.read(Duration::from_millis(3)).await {
            match packet[0] & 0xF0 {
                0x50 => {
                    assert_eq!(packet.get(4).copied().unwrap_or(0), 0, "PUBREC reason");
                    publisher.send(&[0x62, 2, packet[2], packet[3]]).await;
                }
                0x70 => {
                    completed += 1;
                    in_flight -= 1;
                }
                _ => {}
            }
        }
    }
    assert!(killed);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (have, twice) = {
            let counted = counted.lock().unwrap_or_else(|e| e.into_inner());
            let twice: Vec<String> = counted
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(p, _)| p.clone())
                .collect();
            (counted.len(), twice)
        };
        assert!(twice.is_empty(), "delivered twice: {twice:?}");
        if have == usize::from(total) {
            break;
        }
        assert!(Instant::now() < deadline, "{have} of {total} QoS 2 messages delivered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let connects = reader.await.expect("reader");
    let counted = counted.lock().unwrap_or_else(|e| e.into_inner());
    assert!(counted.values().all(|n| *n == 1), "exactly once");
    eprintln!(
        "QoS 2: {total} published, {} delivered exactly once; subscriber connected {connects} times",
        counted.len()
    );
    assert!(connects >= 2, "the subscriber had to move");
}
