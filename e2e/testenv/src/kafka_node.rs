//! A Kafka broker of a test's own, for fault tests: pausing, killing or restarting the
//! shared broker of `make env-up` would break every other test running beside it.
//!
//! The node is the same Kafka (the jars `make env-up` installed, `KAFKA_LIBS` in
//! `.local/env`) in KRaft mode on two free loopback ports, with its data under
//! `.local/kafka-nodes/<name>`. [`KafkaNode::pause`] is what a long GC pause, a stalled
//! disk or a network partition looks like to a client (SIGSTOP: connections stay open,
//! nothing answers); [`KafkaNode::kill`] and [`KafkaNode::restart`] are a crash and a
//! restart on the same ports and data. Dropping the node kills it and deletes its data.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{EnvError, START_HINT, TestEnv, repo_root, unique_name};

/// What can go wrong with a node of a test's own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("no KAFKA_LIBS in the environment file; {START_HINT}")]
    NoKafkaLibs,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Kafka node did not answer within {0:?}; see {1}")]
    NotUp(Duration, PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// A running (or paused, or killed) Kafka broker of one test.
pub struct KafkaNode {
    dir: PathBuf,
    libs: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> Result<u16, NodeError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(listener.local_addr().map_err(io("free port"))?.port())
}

impl KafkaNode {
    /// Formats and starts a new broker; returns once it answers metadata requests.
    pub async fn start() -> Result<Self, NodeError> {
        let libs = TestEnv::kafka_libs()?.ok_or(NodeError::NoKafkaLibs)?;
        let dir = repo_root().join(".local").join("kafka-nodes").join(unique_name("node"));
        std::fs::create_dir_all(dir.join("data")).map_err(io(format!("creating {}", dir.display())))?;
        let port = free_port()?;
        let controller = free_port()?;
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             auto.create.topics.enable=false\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=2\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            data = dir.join("data").display()
        );
        std::fs::write(dir.join("server.properties"), properties).map_err(io("writing server.properties"))?;
        let mut node = Self {
            dir,
            libs,
            port,
            child: None,
        };
        let format = node
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t", "mqtt-kafka-node-0000", "-c"])
            .arg(node.dir.join("server.properties"))
            .arg("--ignore-formatted")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("formatting the Kafka node's storage"))?;
        if !format.success() {
            return Err(NodeError::Io {
                what: "formatting the Kafka node's storage".into(),
                source: std::io::Error::other(format!("exit {format}")),
            });
        }
        node.launch().await?;
        Ok(node)
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.args(["-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                repo_root().join("e2e/env/kafka/log4j2.properties").display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", self.dir.join("logs").display()))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()));
        java
    }

    async fn launch(&mut self) -> Result<(), NodeError> {
        let log = std::fs::File::create(self.dir.join("stdout.log")).map_err(io("creating the node's log"))?;
        let err = log.try_clone().map_err(io("the node's log"))?;
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io("starting the Kafka node"))?;
        self.child = Some(child);
        self.wait_up(Duration::from_secs(90)).await
    }

    /// Waits until the broker answers a metadata request.
    pub async fn wait_up(&self, within: Duration) -> Result<(), NodeError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let bootstrap = self.bootstrap();
            let up = tokio::task::spawn_blocking(move || {
                let consumer: Result<BaseConsumer, _> = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("socket.connection.setup.timeout.ms", "2000")
                    .create();
                consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
            })
            .await
            .unwrap_or(false);
            if up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(NodeError::NotUp(within, self.dir.join("stdout.log")))
    }

    /// `127.0.0.1:<port>` of this broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the node keeps its data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn signal(&self, signal: &str) -> Result<(), NodeError> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .map_err(io(format!("kill -{signal}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(NodeError::Io {
                what: format!("kill -{signal} {}", child.id()),
                source: std::io::Error::other(format!("exit {status}")),
            })
        }
    }

    /// Freezes the broker (SIGSTOP): its sockets stay open and nothing answers.
    pub fn pause(&self) -> Result<(), NodeError> {
        self.signal("STOP")
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) -> Result<(), NodeError> {
        self.signal("CONT")
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) -> Result<(), NodeError> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().map_err(io("waiting for the killed Kafka node"))?;
        }
        Ok(())
    }

    /// Starts the broker again on the same ports and data; returns once it answers.
    pub async fn restart(&mut self) -> Result<(), NodeError> {
        self.kill()?;
        self.launch().await
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
