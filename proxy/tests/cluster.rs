//! Several `mqtt-kafka-proxy` processes (the real binary) as one broker: redirects to the
//! owner of a session, ownership moving when a process is killed or stops, wills and
//! expiry of sessions whose process died, clients handed over on SIGTERM.

mod support;

use std::time::Duration;

use support::RawPeer;
use support::processes::*;
use tokio::net::TcpStream;
use tokio::time::Instant;

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
/// A hand-over longer than a heartbeat: the leaving process announces nothing after its
/// departure, and hands clients over only once the survivor has read it, so the survivor
/// takes every client it is sent and sends none back.
#[tokio::test]
async fn a_hand_over_longer_than_a_heartbeat_sends_no_client_back_to_the_leaver() {
    let mut cluster = TestCluster::start_with_redirect_rate(2, 10).await;
    let (leaving, staying) = (cluster.procs[0].port, cluster.procs[1].reference());
    let mut clients = Vec::new();
    for i in 0.. {
        if clients.len() == 20 {
            break;
        }
        let id = format!("slow-hand-over-{i}");
        let (peer, port, _, _) = connect_following(leaving, &id, false, 60, None).await;
        if port == leaving {
            clients.push((id, peer));
        }
    }
    let started = Instant::now();
    cluster.procs[0].signal("TERM");
    for (id, mut peer) in clients {
        let disconnect = peer.read_packet().await.expect("DISCONNECT");
        let (reason, reference) = reason_and_reference(&disconnect);
        assert_eq!((reason, reference.as_deref()), (0x9C, Some(staying.as_str())), "{id}");
        let mut moved = RawPeer {
            stream: TcpStream::connect(("127.0.0.1", cluster.procs[1].port))
                .await
                .expect("connect"),
        };
        moved.send(&connect_packet(&id, false, 60, None)).await;
        let connack = moved.read_packet().await.expect("CONNACK");
        assert_eq!(
            (connack[2], connack[3]),
            (1, 0),
            "{id}, {:?} after SIGTERM: session present, success: {connack:02x?}",
            started.elapsed()
        );
    }
    let took = started.elapsed();
    eprintln!("20 clients handed over at 10 a second in {took:?}");
    assert!(took > Duration::from_millis(1500), "longer than a heartbeat: {took:?}");
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

#[tokio::test]
async fn a_redirected_mqtt5_subscriber_gets_its_offline_messages_in_order_from_the_owner() {
    let cluster = TestCluster::start(3).await;
    let (mut sub, owner, _, present) = connect_following(cluster.procs[0].port, "offline-v5", false, 300, None).await;
    assert!(!present);
    subscribe(&mut sub, "away/#").await;
    sub.send(&[0xE0, 0]).await; // DISCONNECT: the session stays for 300 s
    drop(sub);

    let elsewhere = cluster
        .procs
        .iter()
        .map(|p| p.port)
        .find(|port| *port != owner)
        .expect("another process");
    let mut publisher = Resilient::new("offline-v5-publisher", vec![elsewhere]);
    publisher.connect(Some(elsewhere)).await;
    let total: u16 = 45;
    for n in 1..=total {
        publisher
            .send(&publish_packet(&format!("away/{}", n % 3), n, &format!("p{n}"), false))
            .await;
    }
    let mut acked = 0;
    while acked < total {
        if let Read::Packet(packet) = publisher.read(Duration::from_secs(5)).await
            && packet[0] == 0x40
        {
            assert_eq!(packet.get(4).copied().unwrap_or(0), 0, "PUBACK reason");
            acked += 1;
        }
    }

    // The subscriber comes back at a process that does not own its session and follows the
    // Server Reference, as an MQTT 5 client does.
    let (mut back, port, redirects, present) = connect_following(elsewhere, "offline-v5", false, 300, None).await;
    assert_eq!((port, redirects), (owner, 1), "redirected to the owner");
    assert!(present, "session present");
    let mut per_topic: std::collections::BTreeMap<String, Vec<u16>> = std::collections::BTreeMap::new();
    for _ in 0..total {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(20), next_publish(&mut back))
            .await
            .expect("every offline message");
        let n: u16 = payload.trim_start_matches('p').parse().expect("p<n>");
        per_topic.entry(topic).or_default().push(n);
    }
    for (topic, numbers) in &per_topic {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{topic} out of order: {numbers:?}"
        );
        assert_eq!(numbers.len(), 15, "{topic}");
    }
}

#[tokio::test]
async fn a_slow_subscriber_with_20000_messages_behind_gets_them_all_and_the_process_does_not_grow_with_the_lag() {
    use rumqttc::v5::MqttOptions;
    use rumqttc::v5::mqttbytes::QoS;
    use support::{Client, message_number};

    let cluster = TestCluster::start_with(1, false).await;
    let proc = &cluster.procs[0];
    let mut options = MqttOptions::new("slow-subscriber", "127.0.0.1", proc.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_manual_acks(true);
    options.set_receive_maximum(Some(10));
    let mut slow = Client::connect_options(options).await;
    slow.client
        .subscribe("slow/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    slow.suback().await;
    let mut publisher = Client::connect_options(MqttOptions::new("slow-publisher", "127.0.0.1", proc.port)).await;

    // 4 KiB messages: 18 000 more of them behind the subscriber are 70 MiB, which a
    // process that kept the lag in memory could not hide.
    let (first, total, padding) = (2_000, 20_000, 4096);
    let mut received: Vec<(String, usize)> = Vec::new();
    async fn read_one(slow: &mut Client, received: &mut Vec<(String, usize)>) {
        let p = slow.next_publish().await;
        slow.client.ack(&p).await.expect("ack");
        received.push((
            String::from_utf8_lossy(&p.topic).into_owned(),
            message_number(&p.payload),
        ));
    }
    publisher
        .publish_acked(0..first, |i| format!("slow/{}", i % 4), padding)
        .await;
    // The subscriber reads one message a second while it falls behind.
    for _ in 0..3 {
        read_one(&mut slow, &mut received).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss_behind_2k = proc.rss_bytes().expect("RSS");
    let publishing = tokio::spawn(async move {
        publisher
            .publish_acked(first..total, |i| format!("slow/{}", i % 4), padding)
            .await;
        publisher
    });
    while !publishing.is_finished() {
        read_one(&mut slow, &mut received).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _publisher = publishing.await.expect("publisher");
    for _ in 0..3 {
        read_one(&mut slow, &mut received).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss_behind_20k = proc.rss_bytes().expect("RSS");
    assert!(
        proc.metric("mqtt_kafka_subscriber_lags_total").await >= 1.0,
        "the subscriber fell behind"
    );
    let growth = rss_behind_20k.saturating_sub(rss_behind_2k);
    eprintln!(
        "RSS {} MiB with 2 000 messages behind, {} MiB with {} behind (+{} MiB)",
        rss_behind_2k >> 20,
        rss_behind_20k >> 20,
        total - received.len(),
        growth >> 20
    );
    assert!(growth < 24 << 20, "memory grew by {} MiB with the lag", growth >> 20);

    // Now it reads as fast as it can: every message arrives, in order per topic.
    while received.len() < total {
        read_one(&mut slow, &mut received).await;
    }
    let mut per_topic: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
    for (topic, n) in &received {
        per_topic.entry(topic).or_default().push(*n);
    }
    for (topic, numbers) in &per_topic {
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{topic} out of order");
        assert_eq!(numbers.len(), total / 4, "{topic}");
    }
    assert!(proc.metric("mqtt_kafka_replayed_records_total").await >= 1.0);
}

/// Sends `total` QoS 1 PUBLISHes (`tasks/{i}`, payload `task-{i}`) and waits for every
/// PUBACK with reason 0x00.
async fn publish_tasks(publisher: &mut RawPeer, total: usize) {
    for i in 0..total {
        let id = u16::try_from(i + 1).unwrap_or(u16::MAX);
        publisher
            .send(&publish_packet(&format!("tasks/{i}"), id, &format!("task-{i}"), false))
            .await;
    }
    let mut acked = 0;
    while acked < total {
        let packet = publisher.read_packet().await.expect("a PUBACK");
        if packet[0] == 0x40 {
            assert!(packet.len() == 4 || packet[4] == 0, "PUBACK {packet:02x?}");
            acked += 1;
        }
    }
}

#[tokio::test]
async fn a_share_members_process_killed_with_messages_unacknowledged_loses_none_of_them() {
    use std::collections::BTreeSet;
    let mut cluster = TestCluster::start_with(2, false).await;
    let filter = "$share/survive/tasks/#";
    let (mut silent, ..) = connect_following(cluster.procs[0].port, "share-silent-0", true, 0, None).await;
    subscribe(&mut silent, filter).await;
    let (mut worker, ..) = connect_following(cluster.procs[1].port, "share-worker-1", true, 0, None).await;
    subscribe(&mut worker, filter).await;
    // Both processes announce the share (a heartbeat a second) and split its partitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut publisher, ..) = connect_following(cluster.procs[1].port, "share-survive-pub", true, 0, None).await;
    let total = 60;
    publish_tasks(&mut publisher, total).await;

    // The member on process 0 acknowledges nothing of what it is given.
    let mut held = BTreeSet::new();
    while let Ok(Some(packet)) = tokio::time::timeout(Duration::from_millis(1500), silent.read_packet()).await {
        if packet[0] & 0xF0 == 0x30 {
            held.insert(parse_publish(&packet).1);
        }
    }
    let mut got = BTreeSet::new();
    while let Ok((_, payload)) = tokio::time::timeout(Duration::from_millis(1500), next_publish(&mut worker)).await {
        got.insert(payload);
    }
    assert!(!held.is_empty(), "process 0 serves some partitions of the share");
    assert!(held.is_disjoint(&got), "a message went to both members");
    assert_eq!(held.len() + got.len(), total, "every message went to a member");

    // Process 0 dies with them: process 1 takes its partitions of the share over and
    // reads them again from the share's cursor.
    let killed = Instant::now();
    cluster.procs[0].kill();
    while got.len() < total {
        // In slices shorter than the peer's own read timeout, so that the message below
        // says what is missing.
        if let Ok((_, payload)) = tokio::time::timeout(Duration::from_secs(5), next_publish(&mut worker)).await {
            got.insert(payload);
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "30 s after the kill the survivor's member has {} of {total}; missing {:?}",
            got.len(),
            held.difference(&got).collect::<Vec<_>>()
        );
    }
    assert!(held.is_subset(&got));
    assert!(cluster.procs[1].metric("mqtt_kafka_share_resumes_total").await >= 1.0);
    eprintln!(
        "{} messages held by the killed process's member reached the survivor's {:?} after SIGKILL",
        held.len(),
        killed.elapsed()
    );
}
