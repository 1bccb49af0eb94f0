//! What every operator integration test needs: the live environment, a namespace of its own,
//! unique Kafka topic names, the operator running in-process, and patience.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use mqtt_kafka_operator::controller::{Context, Settings};
use mqtt_kafka_operator::crd::MqttKafkaProxy;
use mqtt_kafka_operator::election::{self, LeaseSettings};
use mqtt_kafka_operator::metrics::Metrics;
use mqtt_kafka_operator::topics::Admin;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One test's slice of the environment.
pub struct TestEnv {
    pub client: Client,
    pub bootstrap: String,
    pub namespace: String,
    /// Prefix of this test's Kafka topics.
    pub topic_prefix: String,
    pub admin: Arc<Admin>,
    cleaned: bool,
    /// Cluster-scoped objects this test made (`kind/name`), deleted with the namespace.
    cluster_objects: Vec<String>,
}

impl Drop for TestEnv {
    /// A test that failed never reached `cleanup`: delete its namespace anyway (kubectl,
    /// because the async client cannot be driven from a destructor).
    fn drop(&mut self) {
        if !self.cleaned {
            self.delete_with_kubectl();
        }
    }
}

fn kubeconfig_path() -> PathBuf {
    mqtt_kafka_testenv::TestEnv::load()
        .unwrap_or_else(|e| panic!("{e}"))
        .kubeconfig
}

/// Connects to the live environment (failing, never skipping, when it is down), installs
/// the CRD and creates a namespace.
pub async fn env(prefix: &str) -> TestEnv {
    // RUST_LOG=mqtt_kafka_operator=debug shows what the in-process operator does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let client = mqtt_kafka_testenv::kube().await.unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = mqtt_kafka_testenv::kafka().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client).await;
    let namespace = mqtt_kafka_testenv::unique_name(prefix);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let admin = Arc::new(mqtt_kafka_proxy::kafka::admin::client(&bootstrap, &[]).expect("admin client"));
    TestEnv {
        client,
        bootstrap,
        topic_prefix: namespace.clone(),
        namespace,
        admin,
        cleaned: false,
        cluster_objects: Vec::new(),
    }
}

/// Applies the CRD the operator's types describe and waits until it is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        MqttKafkaProxy::crd_name(),
        &PatchParams::apply("mqtt-kafka-operator-tests").force(),
        &Patch::Apply(MqttKafkaProxy::crd()),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, MqttKafkaProxy::crd_name(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watch CRD");
}

impl TestEnv {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn proxies(&self) -> Api<MqttKafkaProxy> {
        self.api()
    }

    /// A topic name of this test.
    pub fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.topic_prefix)
    }

    /// A spec with this test's topics (3 partitions each) on the environment's Kafka.
    pub fn spec(&self, resource: &str) -> Value {
        json!({
            "kafka": {
                "bootstrapServers": self.bootstrap,
                "topics": {
                    "sessions": {"name": self.topic(&format!("{resource}-sessions")), "partitions": 3},
                    "retained": {"name": self.topic(&format!("{resource}-retained")), "partitions": 3},
                    "messages": {"name": self.topic(&format!("{resource}-messages")), "partitions": 3}
                }
            }
        })
    }

    /// Server-side applies a resource with `spec`, as `kubectl apply --server-side` would.
    pub async fn apply(&self, name: &str, spec: Value) -> MqttKafkaProxy {
        let object = json!({
            "apiVersion": "mqttkafka.io/v1alpha1",
            "kind": "MqttKafkaProxy",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec
        });
        self.proxies()
            .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"))
    }

    /// Starts the operator in-process for this namespace, without leader election.
    pub fn operator(&self) -> Operator {
        Operator::start(self.client.clone(), &self.namespace, None)
    }

    /// Waits until the resource's status describes its current generation and `check`
    /// holds for it.
    pub async fn status_where(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&MqttKafkaProxy) -> bool,
    ) -> MqttKafkaProxy {
        let proxies = self.proxies();
        eventually(what, Duration::from_secs(30), || async {
            let proxy = proxies.get(name).await.ok()?;
            let status = proxy.status.as_ref()?;
            (status.observed_generation == proxy.metadata.generation && check(&proxy)).then_some(proxy)
        })
        .await
    }

    /// Deletes `kind/name` (cluster-scoped) when the test ends, whether it passes or not.
    pub fn delete_at_end(&mut self, object: String) {
        self.cluster_objects.push(object);
    }

    fn delete_with_kubectl(&self) {
        let mut args = vec!["delete", "--wait=false", "--ignore-not-found"];
        let namespace = format!("namespace/{}", self.namespace);
        args.push(&namespace);
        args.extend(self.cluster_objects.iter().map(String::as_str));
        let _ = std::process::Command::new(tool("kubectl"))
            .args(args)
            .env("KUBECONFIG", kubeconfig_path())
            .output();
    }

    /// Deletes the namespace, cluster-scoped objects and this test's topics.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        if !self.cluster_objects.is_empty() {
            self.delete_with_kubectl();
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        let names: Vec<String> = self
            .admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
            .unwrap_or_default();
        let mine: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with(&self.topic_prefix))
            .collect();
        if !mine.is_empty() {
            let _ = mqtt_kafka_proxy::kafka::admin::delete_topics(&self.admin, &mine).await;
        }
    }

    /// The value of a topic config, `None` when the topic does not exist.
    pub async fn topic_config(&self, topic: &str, key: &str) -> Option<String> {
        mqtt_kafka_proxy::kafka::admin::topic_configs(&self.admin, topic)
            .await
            .ok()
            .and_then(|c| c.get(key).and_then(|e| e.value.clone()))
    }

    /// Partitions of a topic, `None` when it does not exist.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        mqtt_kafka_proxy::kafka::admin::topic_layout(&self.admin, topic, Duration::from_secs(10))
            .expect("topic metadata")
            .map(|l| l.partitions)
    }

    /// Reasons of the Events about resource `name`.
    pub async fn event_reasons(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.api();
        events
            .list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reporting_controller.as_deref() == Some("mqtt-kafka-operator"))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

/// Settings that make the operator quick to notice drift in tests.
pub fn test_settings(instance: &str) -> Settings {
    Settings {
        resync: Duration::from_secs(2),
        retry: Duration::from_secs(1),
        instance: instance.into(),
    }
}

/// The operator running in-process.
pub struct Operator {
    pub ctx: Arc<Context>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Operator {
    pub fn start(client: Client, namespace: &str, lease: Option<LeaseSettings>) -> Operator {
        let instance = lease.as_ref().map_or_else(|| "test".to_owned(), |l| l.identity.clone());
        let metrics = Metrics::new().expect("metrics");
        let ctx = Arc::new(Context::new(client, metrics, test_settings(&instance)));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(election::run(
            Arc::clone(&ctx),
            Some(namespace.to_owned()),
            lease,
            async move {
                let _ = stopped.await;
            },
        ));
        Operator {
            ctx,
            stop: Some(stop),
            task: tokio::spawn(async move {
                if let Ok(Err(err)) = task.await {
                    panic!("operator failed: {err}");
                }
            }),
        }
    }

    /// Stops it gracefully (finishing reconciles, releasing the lease).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("operator stops within 30 s")
            .expect("operator task");
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A condition's (status, reason, message).
pub fn condition(proxy: &MqttKafkaProxy, type_: &str) -> Option<(String, String, String)> {
    proxy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Whether a condition has `status`.
pub fn condition_is(proxy: &MqttKafkaProxy, type_: &str, status: &str) -> bool {
    condition(proxy, type_).is_some_and(|c| c.0 == status)
}

/// The uid of a resource, for owner-reference checks.
pub fn uid(proxy: &MqttKafkaProxy) -> String {
    proxy.uid().expect("stored resources have a uid")
}

/// kubectl and helm of the environment (`MQTT_KAFKA_BIN` of `.local/env`).
pub fn tool(name: &str) -> PathBuf {
    let env = std::fs::read_to_string(mqtt_kafka_testenv::env_file()).unwrap_or_default();
    let bin = std::env::var("MQTT_KAFKA_BIN")
        .ok()
        .or_else(|| mqtt_kafka_testenv::parse_env_file(&env).get("MQTT_KAFKA_BIN").cloned())
        .unwrap_or_else(|| panic!("no MQTT_KAFKA_BIN; {}", mqtt_kafka_testenv::START_HINT));
    let path = PathBuf::from(bin).join(name);
    assert!(
        path.is_file(),
        "{} missing; {}",
        path.display(),
        mqtt_kafka_testenv::START_HINT
    );
    path
}

/// Runs kubectl against the environment's apiserver; returns stdout, panics with stderr.
pub fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new(tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
