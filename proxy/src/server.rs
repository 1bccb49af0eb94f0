//! Wiring of one proxy process: from a validated config to running listeners, Kafka
//! readers and the admin endpoint. `main` parses the CLI and calls [`start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::admin::{self, KAFKA_SETUP, Readiness};
use crate::broker::identity::{IdentityPatterns, PatternError};
use crate::broker::routes::{Condition, Route, RouteError, RouteTable};
use crate::cluster::membership::ServerReferences;
use crate::config::{Config, ConfigError, ListenerProtocol, RouteCondition};
use crate::hub::Hub;
use crate::kafka::admin::{self as kafka_admin, AdminError};
use crate::kafka::consumer::{self, ReaderError, RecordSink, Supervision};
use crate::kafka::health::Policy;
use crate::kafka::producer::{PublishError, Publisher};
use crate::kafka::replay::Replayer;
use crate::kafka::security::SecurityWatch;
use crate::kafka::sessions::SessionStore;
use crate::listener::{self, Shared, certs::TlsError};
use crate::metrics::Metrics;
use crate::mqtt::connect::Limits;
use crate::mqtt::session as mqtt_session;
use crate::supervisor::{Liveness, supervise};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error("clients: {0}")]
    Clients(#[from] PatternError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Security(#[from] crate::auth::setup::SetupError),
    #[error("binding {address} for listener {name}: {source}")]
    Bind {
        name: String,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the sockets of resting connections (epoll): {0}")]
    RestingSockets(#[source] std::io::Error),
    #[error("listener {name}: protocol tls needs tls.certFile and tls.keyFile")]
    MissingTls { name: String },
    #[error("listener {name}: {source}")]
    Tls {
        name: String,
        // Boxed: TLS errors are large and rare, and every `Result` of start-up carries the
        // size of its largest variant.
        #[source]
        source: Box<TlsError>,
    },
}

/// Start-up choices that are not part of the config file.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Create missing topics (local runs; on Kubernetes the operator creates them).
    pub create_topics: bool,
    /// Partitions of topics created with `create_topics`.
    pub partitions: i32,
    /// Keep retrying Kafka set-up while Kafka cannot be reached (the binary does; tests
    /// want the error).
    pub retry_kafka: bool,
    /// How often each Kafka client is checked (default 2 s): partition counts are looked
    /// up again (topics may grow) and readiness follows what the clients see.
    pub metadata_refresh: Option<Duration>,
    /// When a Kafka client that stopped working is replaced (default: after 10 s).
    pub client_policy: Option<Policy>,
}

/// A running proxy. Dropping it stops its tasks.
pub struct Server {
    /// Bound address of each MQTT listener, in config order.
    pub mqtt_addresses: Vec<SocketAddr>,
    pub admin_address: SocketAddr,
    pub readiness: Arc<Readiness>,
    /// Which long-lived tasks died (`/healthz`).
    pub liveness: Arc<Liveness>,
    pub hub: Arc<Hub>,
    pub sessions: Arc<SessionStore>,
    publisher: Arc<Publisher>,
    limits: Arc<Limits>,
    listener_tasks: Vec<JoinHandle<()>>,
    /// Heartbeat, adoption of orphaned sessions, the mover: stopped before the process
    /// leaves the cluster (a heartbeat after the departure would make the others count it
    /// live again; the mover and adoption would work against the hand-over).
    node_tasks: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long SIGTERM may take in all (Kubernetes' default grace period is 30 s; the
/// operator gives 60 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Of that, how long connections get to be handed over; the rest lets Kafka deliver what
/// is queued.
const HAND_OVER_GRACE: Duration = Duration::from_secs(20);
/// The producer's last flush gets at least this long.
const FLUSH_AT_LEAST: Duration = Duration::from_secs(2);

impl Server {
    /// Stops accepting, leaves the cluster and hands every connection over (DISCONNECT,
    /// with the new owner's Server Reference for MQTT 5 clients when redirects are on),
    /// then lets Kafka deliver what is queued.
    /// Everything together takes at most `SHUTDOWN_GRACE` plus `FLUSH_AT_LEAST`, also when
    /// Kafka cannot be reached.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for task in self.listener_tasks.iter().chain(&self.node_tasks) {
            task.abort();
        }
        crate::node::leave(&self.hub, &self.sessions, &self.limits, HAND_OVER_GRACE).await;
        for task in &self.tasks {
            task.abort();
        }
        let publisher = Arc::clone(&self.publisher);
        let flush = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(FLUSH_AT_LEAST);
        let _ = tokio::task::spawn_blocking(move || publisher.flush(flush)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.listener_tasks).chain(&self.node_tasks) {
            task.abort();
        }
    }
}

/// What a listener does with an accepted connection before MQTT starts.
enum Transport {
    Tcp,
    Tls(listener::tls::ListenerTls),
    /// `tls` makes it wss://.
    Websocket {
        path: Arc<str>,
        tls: Option<listener::tls::ListenerTls>,
    },
}

/// The transport of each listener, in config order. Reads the TLS files, so that a bad
/// certificate stops the start before anything else is set up (Kafka included).
fn transports(config: &Config) -> Result<Vec<Transport>, ServerError> {
    config
        .listeners
        .iter()
        .map(|l| {
            Ok(match l.protocol {
                ListenerProtocol::Tcp => Transport::Tcp,
                ListenerProtocol::Tls => {
                    // `validate` requires `tls` for this protocol; a config that skipped it
                    // gets an error, not a panic.
                    let tls = l
                        .tls
                        .as_ref()
                        .ok_or_else(|| ServerError::MissingTls { name: l.name.clone() })?;
                    Transport::Tls(
                        listener::tls::ListenerTls::load(tls).map_err(|source| ServerError::Tls {
                            name: l.name.clone(),
                            source: Box::new(source),
                        })?,
                    )
                }
                ListenerProtocol::Websocket => Transport::Websocket {
                    path: Arc::from(l.websocket_path()),
                    tls: match &l.tls {
                        None => None,
                        Some(tls) => {
                            Some(
                                listener::tls::ListenerTls::load(tls).map_err(|source| ServerError::Tls {
                                    name: l.name.clone(),
                                    source: Box::new(source),
                                })?,
                            )
                        }
                    },
                },
            })
        })
        .collect()
}

fn route_table(config: &Config) -> Result<RouteTable, RouteError> {
    let routes = config
        .routes
        .iter()
        .map(|r| Route {
            when: r
                .when
                .iter()
                .map(|c| {
                    let filters = c.topics().iter().map(|t| t.topic.clone()).collect();
                    match c {
                        RouteCondition::Publish(_) => Condition::Publish(filters),
                        RouteCondition::Subscribe(_) => Condition::Subscribe(filters),
                    }
                })
                .collect(),
            messages: r
                .with
                .as_ref()
                .map_or_else(|| config.topics.messages.clone(), |w| w.messages.clone()),
            guarded: r.guarded.values().flatten().cloned().collect(),
        })
        .collect();
    RouteTable::new(config.topics.messages.clone(), routes)
}

/// Whether retrying may fix the error (Kafka down or still starting), or a person must.
impl ServerError {
    pub fn is_transient(&self) -> bool {
        match self {
            ServerError::Admin(AdminError::SessionsNotCompacted { .. }) => false,
            ServerError::Admin(_) | ServerError::Reader(_) | ServerError::Producer(_) | ServerError::Publish(_) => true,
            _ => false,
        }
    }
}

/// What the Kafka side of a process consists of once connected.
struct KafkaSide {
    hub: Arc<Hub>,
    publisher: Arc<Publisher>,
    sessions: Arc<SessionStore>,
    replayer: Arc<Replayer>,
    tasks: Vec<JoinHandle<()>>,
}

/// Catch-ups that read Kafka at once; more wait for a consumer of the pool.
const CATCH_UP_CONSUMERS: usize = 4;

async fn connect_kafka(
    config: &Config,
    options: &StartOptions,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
    liveness: &Arc<Liveness>,
    retained_loaded: &Arc<AtomicBool>,
    refusals: &Arc<SecurityWatch>,
) -> Result<KafkaSide, ServerError> {
    let instance = config.effective_instance_id();
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let properties: Vec<(String, String)> = config.kafka.client_properties()?.into_iter().collect();
    // The producer first: its polling thread hands the clients' error callbacks (a refused
    // SASL login, a failed TLS handshake) to `refusals` while the admin requests wait.
    let publisher = Arc::new(
        Publisher::new(
            &bootstrap,
            &properties,
            &config.topics.retained,
            Duration::from_secs(30),
            Arc::clone(refusals),
        )?
        .with_metrics(Arc::clone(metrics)),
    );
    let admin = kafka_admin::client(&bootstrap, &properties)?;
    if options.create_topics {
        let specs = kafka_admin::topic_specs(config, options.partitions.max(1), 1);
        let created = kafka_admin::create_missing(&admin, &specs).await?;
        if !created.is_empty() {
            tracing::info!(?created, "created Kafka topics");
        }
    }
    kafka_admin::check_sessions_compacted(&admin, &config.topics.sessions).await?;

    let hub = Arc::new(Hub::new(
        route_table(config)?,
        IdentityPatterns::parse(&config.clients)?,
        Arc::clone(&publisher),
        Arc::clone(metrics),
        // Bounded so that a stalled client holds at most this much, whatever its lag.
        usize::try_from(config.mqtt.max_queued_messages).unwrap_or(usize::MAX),
        usize::try_from(config.mqtt.max_queued_bytes).unwrap_or(usize::MAX),
    ));
    let mut topics = hub.messages_topics();
    topics.push(config.topics.sessions.clone());
    publisher.load_partitions(&topics).await?;
    let sessions = Arc::new(SessionStore::new(
        &instance,
        &config.topics.sessions,
        publisher.partition_count(&config.topics.sessions)?,
        Arc::clone(&publisher),
    ));
    let candidates = {
        let hub = Arc::clone(&hub);
        Box::new(move |kafka_topic: &str, key: &str| hub.catch_up_candidates(kafka_topic, key))
    };
    let replayer = Arc::new(Replayer::new(
        &bootstrap,
        &properties,
        &instance,
        CATCH_UP_CONSUMERS,
        candidates,
        Arc::clone(metrics),
    ));

    let supervision = Supervision {
        every: options.metadata_refresh.unwrap_or(Duration::from_secs(2)),
        policy: options.client_policy.unwrap_or_default(),
        readiness: Arc::clone(readiness),
        metrics: Arc::clone(metrics),
    };
    let mut tasks = Vec::new();
    // Keep-alive deadlines are swept, not timed per connection (a silent client is closed
    // at most half a second after one and a half times its keep-alive).
    tasks.push(supervise(
        liveness,
        "keep-alive sweep",
        hub.sweep_keep_alive_every(Duration::from_millis(500)),
    ));
    let sink: Arc<dyn RecordSink> = hub.clone();
    for topic in hub.messages_topics() {
        let reader = consumer::start_fanout(
            &bootstrap,
            &properties,
            &instance,
            &topic,
            Arc::clone(&sink),
            supervision.clone(),
        );
        tasks.push(supervise(liveness, format!("fan-out {topic}"), reader.await?));
    }
    let watcher = publisher.supervise(
        topics,
        supervision.every,
        supervision.policy,
        Arc::clone(readiness),
        Arc::clone(metrics),
    );
    tasks.push(supervise(liveness, "producer supervision", watcher));
    let retained = consumer::start_retained_reader(
        &bootstrap,
        &properties,
        &instance,
        &config.topics.retained,
        Arc::clone(&sink),
        Arc::clone(retained_loaded),
        supervision.clone(),
    )
    .await?;
    tasks.push(supervise(
        liveness,
        format!("retained {}", config.topics.retained),
        retained,
    ));
    let sessions_reader =
        consumer::start_sessions_reader(&bootstrap, &properties, &instance, Arc::clone(&sessions), supervision).await?;
    tasks.push(supervise(
        liveness,
        format!("sessions {}", config.topics.sessions),
        sessions_reader,
    ));
    // The timers of sessions this instance served last (a restarted pod keeps its name).
    let (h, s, me) = (Arc::clone(&hub), Arc::clone(&sessions), instance.clone());
    tasks.push(tokio::spawn(async move {
        while !s.is_loaded() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mqtt_session::resume_timers(&h, &s, &me).await;
    }));
    Ok(KafkaSide {
        hub,
        publisher,
        sessions,
        replayer,
        tasks,
    })
}

/// Runs one Kafka set-up attempt; meanwhile, once a second, a connection refusal the
/// clients saw (wrong credentials, a failed TLS handshake) becomes the readiness problem,
/// rather than waiting for the attempt's requests to time out.
async fn explain_refusals<T>(
    attempt: impl Future<Output = Result<T, ServerError>>,
    readiness: &Readiness,
    refusals: &SecurityWatch,
) -> Result<T, ServerError> {
    let mut attempt = std::pin::pin!(attempt);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut attempt => return result,
            _ = tick.tick() => {
                if let Some(problem) = refusals.problem(Instant::now()) {
                    readiness.report(KAFKA_SETUP, Some(problem));
                }
            }
        }
    }
}

/// Starts everything `config` describes; returns once the listeners accept connections.
/// The admin endpoint comes first: while Kafka cannot be reached it answers `/readyz` with
/// what is missing, and (with `StartOptions::retry_kafka`) set-up is retried until it works.
pub async fn start(config: Config, options: StartOptions) -> Result<Server, ServerError> {
    config.validate()?;
    let transports = transports(&config)?;
    let metrics = Arc::new(Metrics::new());
    let retained_loaded = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(Readiness::new(Arc::clone(&retained_loaded)));
    let liveness = Arc::new(Liveness::new());
    let mut tasks = Vec::new();

    let admin_address = config.admin.socket_addr()?;
    let (admin_listener, admin_address) =
        listener::tcp::bind(admin_address)
            .await
            .map_err(|source| ServerError::Bind {
                name: "admin".into(),
                address: admin_address.to_string(),
                source,
            })?;
    tasks.push(tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&metrics),
        Arc::clone(&readiness),
        Arc::clone(&liveness),
    )));

    let mut backoff = Duration::from_millis(500);
    // Wrong credentials or a wrong CA make requests time out; the cause reaches only the
    // clients' error callbacks, which `refusals` collects for `/readyz`.
    let refusals = SecurityWatch::new();
    let kafka = loop {
        let attempt = connect_kafka(
            &config,
            &options,
            &metrics,
            &readiness,
            &liveness,
            &retained_loaded,
            &refusals,
        );
        match explain_refusals(attempt, &readiness, &refusals).await {
            Ok(kafka) => {
                readiness.report(KAFKA_SETUP, None);
                break kafka;
            }
            Err(error) if options.retry_kafka && error.is_transient() => {
                let problem = refusals
                    .problem(Instant::now())
                    .unwrap_or_else(|| format!("Kafka is not reachable: {error}"));
                readiness.report(KAFKA_SETUP, Some(problem));
                tracing::warn!(%error, retry_in = ?backoff, "Kafka set-up failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                for task in &tasks {
                    task.abort();
                }
                return Err(error);
            }
        }
    };
    let KafkaSide {
        hub,
        publisher,
        sessions,
        replayer,
        tasks: kafka_tasks,
    } = kafka;
    tasks.extend(kafka_tasks);

    let limits = Arc::new(Limits::from_config(&config));
    let instance = config.effective_instance_id();
    hub.set_share_runtime(crate::hub::ShareRuntime {
        sessions: Arc::clone(&sessions),
        replayer: Arc::clone(&replayer),
    });
    let security = Arc::new(crate::auth::setup::security(&config, jwks_tls())?);
    if let Some(guard) = &security.guard {
        let keys = Arc::clone(guard.keys());
        if let Err(error) = keys.refresh().await {
            // Not fatal: the refresher retries, and CONNECTs get 0x88 until it succeeds.
            tracing::warn!(%error, "JWT keys not read at start-up; every CONNECT is refused until they are");
        }
        if let Some(refresher) = keys.spawn_refresher(crate::auth::setup::keys_refresh(&config)) {
            tasks.push(supervise(&liveness, "jwt keys refresher", refresher));
        }
    }
    let shared = Shared {
        hub: Arc::clone(&hub),
        sessions: Arc::clone(&sessions),
        replayer,
        instance: Arc::from(config.effective_instance_id().as_str()),
        listener: Arc::from(""),
        limits: Arc::clone(&limits),
        security: Arc::clone(&security),
        connections: Arc::new(AtomicUsize::new(0)),
        runtime: tokio::runtime::Handle::current(),
        resting_sockets: crate::listener::resting::RestingSockets::start().map_err(ServerError::RestingSockets)?,
    };
    // From here on a failure drops `server`, whose `Drop` stops what was started already.
    let mut server = Server {
        mqtt_addresses: Vec::new(),
        admin_address,
        readiness,
        liveness,
        hub,
        sessions,
        publisher,
        limits,
        listener_tasks: Vec::new(),
        node_tasks: Vec::new(),
        tasks,
    };
    for (l, transport) in config.listeners.iter().zip(transports) {
        let address = l.socket_addr()?;
        let (tcp, bound) = listener::tcp::bind(address).await.map_err(|source| ServerError::Bind {
            name: l.name.clone(),
            address: l.address.clone(),
            source,
        })?;
        tracing::info!(listener = %l.name, protocol = l.protocol.as_str(), address = %bound, "MQTT listener ready");
        server.mqtt_addresses.push(bound);
        let shared = Shared {
            listener: Arc::from(l.name.as_str()),
            ..shared.clone()
        };
        let accept = match transport {
            Transport::Tcp => tokio::spawn(listener::tcp::accept_loop(tcp, shared)),
            Transport::Tls(tls) => tokio::spawn(listener::tls::accept_loop(tcp, tls, shared)),
            Transport::Websocket { path, tls } => {
                tokio::spawn(listener::websocket::accept_loop(tcp, path, tls, shared))
            }
        };
        let name = format!("listener {}", l.name);
        server.listener_tasks.push(supervise(&server.liveness, name, accept));
    }
    // Only now, with the listeners bound, does this process announce itself and so take
    // sessions over: a client redirected here must find it listening.
    let node_tasks = crate::node::spawn(
        Arc::clone(&server.hub),
        Arc::clone(&server.sessions),
        Arc::clone(&server.limits),
        ServerReferences {
            default: config.server_reference(&instance),
            by_listener: config.listener_server_references(&instance),
        },
    );
    let liveness = Arc::clone(&server.liveness);
    server.node_tasks.extend(
        node_tasks
            .into_iter()
            .map(|(name, task)| supervise(&liveness, name, task)),
    );
    server.readiness.set_listening();
    Ok(server)
}

/// TLS for `https` JWKS URLs: the platform's root certificates (none found: a warning, and
/// only `http` URLs work).
fn jwks_tls() -> rustls::ClientConfig {
    use hyper_rustls::ConfigBuilderExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        || rustls::ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions();
    match builder().map(|b| b.with_native_roots()) {
        Ok(Ok(roots)) => roots.with_no_client_auth(),
        other => {
            if let Ok(Err(error)) = other {
                tracing::warn!(%error, "no root certificates for https JWKS URLs");
            }
            match builder() {
                Ok(b) => b
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                // ring supports the default protocol versions; this cannot happen.
                Err(_) => rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            }
        }
    }
}
