//! Start-up behaviour of the binary and the server: config checking, and an unreachable
//! Kafka answered with readiness false and retried set-up, never a crash.

use std::process::Command;
use std::time::Duration;

mod support;

use mqtt_kafka_proxy::config::{Config, Kafka};
use mqtt_kafka_proxy::server;
use support::processes::free_port;

const PROXY: &str = env!("CARGO_BIN_EXE_mqtt-kafka-proxy");

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "mqtt-kafka-startup-{}-{}.yaml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_prints_the_config_with_defaults_and_refuses_a_bad_one_naming_the_key() {
    let good = write_config("kafka: {bootstrapServers: \"k:9092\"}\nmqtt: {receiveMaximum: 10}\n");
    let out = Command::new(PROXY)
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("receiveMaximum: 10") && printed.contains("maximumPacketSize:"),
        "{printed}"
    );

    let bad = write_config("kafka: {bootstrapServers: \"k:9092\"}\nmqtt: {receiveMaximum: 0, bogus: 1}\n");
    let out = Command::new(PROXY)
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mqtt.bogus"), "unknown key named by path: {stderr}");
}

#[tokio::test]
async fn an_unreachable_kafka_gives_readiness_false_and_set_up_is_retried() {
    // Nothing listens on this port: Kafka is "down".
    let kafka_port = free_port();
    let mut config = Config::new(Kafka::new(format!("127.0.0.1:{kafka_port}")));
    config.listeners[0].address = "127.0.0.1:0".into();
    let (answer, starting) = support::readiness_while_starting(config, |_| true).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Kafka is not reachable"), "{answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!starting.is_finished(), "set-up keeps retrying instead of failing");
    starting.abort();
}

#[tokio::test]
async fn a_sessions_topic_that_is_not_compacted_is_refused_with_the_fix() {
    let bootstrap = mqtt_kafka_testenv::kafka().await.unwrap_or_else(|e| panic!("{e}"));
    let prefix = mqtt_kafka_testenv::unique_name("t-uncompacted");
    let mut config = Config::new(Kafka::new(bootstrap.clone()));
    config.topics.sessions = format!("{prefix}-sessions");
    config.topics.messages = format!("{prefix}-messages");
    config.topics.retained = format!("{prefix}-retained");
    config.admin.address = "127.0.0.1:0".into();
    config.listeners[0].address = "127.0.0.1:0".into();
    // The sessions topic exists already, with the default (delete) policy.
    let admin = mqtt_kafka_proxy::kafka::admin::client(&bootstrap, &[]).expect("admin");
    let sessions = mqtt_kafka_proxy::kafka::admin::TopicSpec {
        name: config.topics.sessions.clone(),
        partitions: 1,
        replication: 1,
        configs: Vec::new(),
    };
    mqtt_kafka_proxy::kafka::admin::create_missing(&admin, &[sessions])
        .await
        .expect("create");

    let error = match server::start(config, support::retrying_options()).await {
        Ok(_) => panic!("started on a non-compacted sessions topic"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("cleanup.policy=delete") && error.contains("must be compacted"),
        "{error}"
    );
    assert!(error.contains("kafka-configs.sh"), "says how to fix it: {error}");
}

/// A config for the binary: Kafka at `bootstrap`, the admin endpoint on `admin_port`, the
/// MQTT listener on any free port.
fn binary_config(bootstrap: &str, admin_port: u16) -> std::path::PathBuf {
    write_config(&format!(
        "kafka: {{bootstrapServers: \"{bootstrap}\"}}\nadmin: {{address: \"127.0.0.1:{admin_port}\"}}\n\
         listeners:\n  - {{name: mqtt, address: \"127.0.0.1:0\"}}\n"
    ))
}

/// `/readyz` of the admin endpoint on `port`, once it answers (within 10 s).
fn readyz(port: u16) -> String {
    use std::io::{Read, Write};
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut answer = String::new();
        if s.read_to_string(&mut answer).is_ok() && !answer.is_empty() {
            return answer;
        }
    }
    panic!("the admin endpoint on port {port} never answered");
}

/// Waits up to `limit` for `child` to exit.
fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts the binary against `bootstrap`, waits until it reports Kafka unreachable (so it
/// is in its set-up retry loop), waits `after` more, sends `signal` and expects a clean
/// exit within 5 s.
fn exits_cleanly_on_signal_while_kafka_is_unreachable(bootstrap: &str, signal: &str, after: Duration) {
    let admin_port = free_port();
    let config = binary_config(bootstrap, admin_port);
    let mut child = Command::new(PROXY)
        .arg("--config")
        .arg(&config)
        // `make test` exports the local environment's KAFKA_BOOTSTRAP, which the binary
        // would take over the unreachable one in the file.
        .env_remove("KAFKA_BOOTSTRAP")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    let answer = readyz(admin_port);
    if !(answer.starts_with("HTTP/1.1 503") && answer.contains("Kafka")) {
        let _ = child.kill();
        panic!("expected readiness false naming Kafka, got {answer}");
    }
    std::thread::sleep(after);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the proxy exited before the signal"
    );
    let sent = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -s {signal}");
    let signalled = std::time::Instant::now();
    let status = wait_for_exit(&mut child, Duration::from_secs(5));
    let Some(status) = status else {
        let _ = child.kill();
        let output = child.wait_with_output().expect("wait");
        panic!(
            "still running 5 s after SIG{signal} (bootstrap {bootstrap}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let output = child.wait_with_output().expect("wait");
    assert!(
        status.success(),
        "SIG{signal} ends the process with success, got {status} after {:?}; stderr:\n{}",
        signalled.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn sigterm_ends_the_process_cleanly_while_kafka_refuses_connections() {
    // Nothing listens on port 1: every connection is refused at once.
    exits_cleanly_on_signal_while_kafka_is_unreachable("127.0.0.1:1", "TERM", Duration::from_millis(1500));
}

#[test]
fn sigint_ends_the_process_cleanly_while_kafka_refuses_connections() {
    exits_cleanly_on_signal_while_kafka_is_unreachable("127.0.0.1:1", "INT", Duration::from_millis(300));
}

/// A "Kafka" that accepts connections and never answers: librdkafka requests wait for
/// their whole timeout, which is where a blocking call would hold a signal back.
fn silent_kafka() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            if held.len() > 200 {
                break;
            }
        }
    });
    (address, accepting)
}

#[test]
fn sigterm_ends_the_process_cleanly_while_kafka_accepts_but_never_answers() {
    let (bootstrap, _accepting) = silent_kafka();
    exits_cleanly_on_signal_while_kafka_is_unreachable(&bootstrap, "TERM", Duration::from_millis(2500));
}

#[test]
fn sigint_ends_the_process_cleanly_while_kafka_accepts_but_never_answers() {
    let (bootstrap, _accepting) = silent_kafka();
    exits_cleanly_on_signal_while_kafka_is_unreachable(&bootstrap, "INT", Duration::from_millis(500));
}
