//! Reconcile and error policy: dereference, validate, build, apply, status.
//!
//! One reconcile of an `MqttKafkaProxy`:
//! 1. deletion: run the finalizer (delete the topics if the spec asks), or nothing;
//! 2. validate: render the proxy config with the proxy's own rules; an invalid spec changes
//!    nothing and is reported as `Degraded` / `InvalidSpec`;
//! 3. topics: create / converge them in Kafka (at most once per resync interval unless the
//!    spec changed);
//! 4. objects, concurrently with 3: build each with a pure builder and server-side apply
//!    it with one field manager, unless it already is as built (no write, so no watch
//!    event, so no loop); delete owned objects no longer wanted (per-pod Services after
//!    scaling down, a disabled PodDisruptionBudget);
//! 5. status: computed by `status::compute`, written only when it changed; Events for
//!    condition transitions and topic changes.

mod apply;
mod kafka;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use self::kafka::{AdminCache, TopicCheck};
use crate::claims;
use crate::crd::{MqttKafkaProxy, TopicDeletePolicy};
use crate::metrics::Metrics;
use crate::resources::configmap;
use crate::resources::{LABEL_MANAGED_BY, MANAGER};
use crate::status::{self, Observed, Severity};
use crate::topics;

/// Finalizer that deletes the Kafka topics with the resource (`deletePolicy: Delete` only).
pub const FINALIZER: &str = "mqttkafka.io/delete-topics";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("applying {kind} {name} failed: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {0} failed: {1}")]
    Serialize(&'static str, serde_json::Error),
    #[error("deleting the topics of {name} failed, the resource stays until it succeeds: {reason}")]
    DeleteTopics { name: String, reason: String },
    #[error("the resource has no namespace")]
    NoNamespace,
}

impl Error {
    /// The `reason` label of the error metric.
    pub fn metric_reason(&self) -> &'static str {
        match self.api_status() {
            Some(403) => return "forbidden",
            Some(409) => return "conflict",
            _ => {}
        }
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Apply { .. } => "apply",
            Error::Serialize(..) => "serialize",
            Error::DeleteTopics { .. } => "kafka",
            Error::NoNamespace => "invalid_resource",
        }
    }

    /// The HTTP status of a refused API request.
    fn api_status(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(status))
            | Error::Apply {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Timings of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Reconcile every resource this often even without changes: topic drift is only seen
    /// by looking.
    pub resync: Duration,
    /// Retry after this long when a reconcile failed or Kafka could not be reached.
    pub retry: Duration,
    /// Identity in Events (`reportingInstance`).
    pub instance: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(60),
            retry: Duration::from_secs(10),
            instance: "mqtt-kafka-operator".into(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub settings: Settings,
    recorder: Recorder,
    admins: AdminCache,
    topic_checks: Mutex<HashMap<String, TopicCheck>>,
    /// Every resource the controller watches (set by [`run`]), for topic claims.
    proxies: Mutex<Option<Store<MqttKafkaProxy>>>,
    /// Topics the operator created, by resource uid: the status write that records them
    /// may not have reached the next reconcile's copy of the resource yet.
    created: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, metrics: Metrics, settings: Settings) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        );
        Context {
            client,
            metrics,
            settings,
            recorder,
            admins: AdminCache::default(),
            topic_checks: Mutex::new(HashMap::new()),
            proxies: Mutex::new(None),
            created: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, proxy: &MqttKafkaProxy, severity: Severity, reason: &str, note: String) {
        let event = Event {
            type_: match severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &proxy.object_ref(&())).await {
            warn!(%err, reason, "publishing an Event failed");
        }
    }
}

fn key(proxy: &MqttKafkaProxy) -> String {
    format!("{}/{}", proxy.namespace().unwrap_or_default(), proxy.name_any())
}

/// Runs the controller until `shutdown` completes; reconciles resources of `namespace`, or
/// of every namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>>(
        client: &Client,
        ns: &Option<String>,
    ) -> Api<K> {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    info!(
        namespace = namespace.as_deref().unwrap_or("<all>"),
        "controller starting"
    );
    let controller = Controller::new(api::<MqttKafkaProxy>(&client, &namespace), watcher::Config::default());
    // Each run (leadership regained) has a store of its own; the old one is no longer fed.
    if let Ok(mut proxies) = ctx.proxies.lock() {
        *proxies = Some(controller.store());
    }
    controller
        .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &namespace), owned.clone())
        .owns(api::<ServiceAccount>(&client, &namespace), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(resource = %object, "reconciled"),
                Err(err) => debug!(%err, "reconcile failed"),
            }
        })
        .await;
    info!("controller stopped");
}

/// Reconciles one resource (the controller's entry point); counts and times it.
pub async fn reconcile(proxy: Arc<MqttKafkaProxy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_resource(&proxy, &ctx).await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

/// Retries a failed reconcile after `settings.retry`.
/// A conflict (the resource changed while it was reconciled) is retried at once, with what
/// the watch has brought in the meantime.
pub fn error_policy(proxy: Arc<MqttKafkaProxy>, err: &Error, ctx: Arc<Context>) -> Action {
    let reason = err.metric_reason();
    ctx.metrics.errors.with_label_values(&[reason]).inc();
    if reason == "conflict" {
        debug!(resource = %key(&proxy), %err, "conflict; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(resource = %key(&proxy), %err, "reconcile failed");
    Action::requeue(ctx.settings.retry)
}

async fn reconcile_resource(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<Action, Error> {
    let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
    let proxies: Api<MqttKafkaProxy> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = proxy.finalizers().iter().any(|f| f == FINALIZER);
    let deletes_topics = proxy.spec.kafka.topics.delete_policy == TopicDeletePolicy::Delete;

    if proxy.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            if deletes_topics {
                kafka::delete_topics(proxy, ctx).await?;
            }
            remove_finalizer(&proxies, proxy).await?;
        }
        if let Ok(mut checks) = ctx.topic_checks.lock() {
            checks.remove(&key(proxy));
        }
        if let Ok(mut created) = ctx.created.lock() {
            created.remove(&proxy.uid().unwrap_or_default());
        }
        return Ok(Action::await_change());
    }
    // The finalizer exists only while the spec asks to delete the topics: a resource that
    // keeps its topics can be deleted even when the operator is not running.
    if deletes_topics && !has_finalizer {
        add_finalizer(&proxies, proxy).await?;
    } else if !deletes_topics && has_finalizer {
        remove_finalizer(&proxies, proxy).await?;
    }

    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let rendered = match configmap::render(proxy) {
        Ok(rendered) => rendered,
        Err(violations) => {
            ctx.metrics.errors.with_label_values(&["invalid_spec"]).inc();
            let set = sets.get_opt(&proxy.name_any()).await?;
            let observed = Observed {
                statefulset: set.as_ref(),
                invalid_spec: &violations,
                ..Observed::default()
            };
            write_status(proxy, ctx, &proxies, observed, &[]).await?;
            // Nothing will change until the spec does.
            return Ok(Action::await_change());
        }
    };

    // Another resource on the same Kafka keeps some of these topics: change nothing (not
    // the topics, not the objects, so the pods keep what they run) until that is resolved.
    let conflicts = kafka::conflicts(proxy, ctx).await?;
    if !conflicts.is_empty() {
        ctx.metrics.errors.with_label_values(&["resource_conflict"]).inc();
        let set = sets.get_opt(&proxy.name_any()).await?;
        let report = claims::conflict_report(
            &topics::desired_topics(&proxy.spec),
            &conflicts,
            &proxy.spec.kafka.bootstrap_servers,
        );
        let observed = Observed {
            statefulset: set.as_ref(),
            topics: Some(&report),
            ..Observed::default()
        };
        write_status(proxy, ctx, &proxies, observed, &[]).await?;
        // The other resource may go or move: look again.
        return Ok(Action::requeue(ctx.settings.retry));
    }

    // Topics and objects do not depend on each other: a spec change reaches the
    // StatefulSet without waiting for Kafka round trips (and a Kafka outage does not hold
    // the objects back).
    let pods = apply::observed_pods(proxy, ctx).await?;
    let (mut report, applied) = tokio::join!(
        kafka::check_topics(proxy, ctx),
        apply::apply_objects(proxy, ctx, &rendered, &pods)
    );
    kafka::remember_created(proxy, ctx, &mut report.report);
    let (set, apply_error) = match applied {
        Ok(set) => (Some(set), None),
        Err(err) => (sets.get_opt(&proxy.name_any()).await.ok().flatten(), Some(err)),
    };
    let apply_message = apply_error.as_ref().map(ToString::to_string);
    let observed = Observed {
        statefulset: set.as_ref(),
        topics: Some(&report.report),
        invalid_spec: &[],
        apply_error: apply_message.as_deref(),
        pods: Some(&pods),
    };
    let changes: Vec<topics::Change> = if report.fresh {
        report.report.changes.clone()
    } else {
        Vec::new()
    };
    write_status(proxy, ctx, &proxies, observed, &changes).await?;
    if let Some(err) = apply_error {
        return Err(err);
    }
    if report.report.failure.is_some() {
        ctx.metrics.errors.with_label_values(&["kafka"]).inc();
        return Ok(Action::requeue(ctx.settings.retry));
    }
    Ok(Action::requeue(ctx.settings.resync))
}

async fn add_finalizer(api: &Api<MqttKafkaProxy>, proxy: &MqttKafkaProxy) -> Result<(), Error> {
    let mut finalizers = proxy.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    set_finalizers(api, proxy, finalizers).await
}

async fn remove_finalizer(api: &Api<MqttKafkaProxy>, proxy: &MqttKafkaProxy) -> Result<(), Error> {
    let finalizers = proxy.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, proxy, finalizers).await
}

/// Replaces the finalizer list. The resourceVersion in the patch makes the apiserver refuse
/// it (409, retried by the error policy) if someone changed the resource meanwhile, so
/// another controller's finalizer is never lost.
async fn set_finalizers(
    api: &Api<MqttKafkaProxy>,
    proxy: &MqttKafkaProxy,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": {
            "resourceVersion": proxy.resource_version(),
            "finalizers": finalizers,
        }
    });
    api.patch(&proxy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Computes the status, writes it if it changed, and publishes Events for transitions and
/// for the topic changes of this reconcile.
async fn write_status(
    proxy: &MqttKafkaProxy,
    ctx: &Context,
    api: &Api<MqttKafkaProxy>,
    observed: Observed<'_>,
    changes: &[topics::Change],
) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(proxy, observed, now);
    // The event recorder folds events of one reason into a series that keeps the first
    // note: one event per reason, listing every change.
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for change in changes {
        match by_reason.iter_mut().find(|(reason, _)| *reason == change.reason) {
            Some((_, messages)) => messages.push(&change.message),
            None => by_reason.push((change.reason, vec![&change.message])),
        }
    }
    for (reason, messages) in by_reason {
        ctx.publish(proxy, Severity::Normal, reason, messages.join("; ")).await;
    }
    let previous = proxy.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(());
    }
    for transition in status::transitions(&previous.conditions, &status.conditions) {
        ctx.publish(proxy, transition.severity, &transition.reason, transition.note)
            .await;
    }
    let patch = json!({
        "apiVersion": MqttKafkaProxy::api_version(&()),
        "kind": MqttKafkaProxy::kind(&()),
        "status": status,
    });
    api.patch_status(
        &proxy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Fails with a clear message when the CRD is not installed.
pub async fn ensure_crd_installed(client: &Client, crd_name: &str) -> Result<(), String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(crd_name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "the CustomResourceDefinition {crd_name} is not installed: install it with `kubectl apply \
             --server-side -f crds/` (or the Helm chart charts/mqtt-kafka-operator), then start the operator again"
        )),
        Err(err) => Err(format!("cannot read CustomResourceDefinition {crd_name}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            serde_json::from_value(json!({"status": "Failure", "message": "m", "reason": "r", "code": code}))
                .expect("status"),
        )
    }

    #[test]
    fn errors_have_metric_reasons() {
        assert_eq!(Error::NoNamespace.metric_reason(), "invalid_resource");
        assert_eq!(Error::Kube(api_error(409)).metric_reason(), "conflict");
        assert_eq!(Error::Kube(api_error(500)).metric_reason(), "kubernetes");
        let forbidden = Error::Apply {
            kind: "Service",
            name: "s".into(),
            source: api_error(403),
        };
        assert_eq!(forbidden.metric_reason(), "forbidden");
        let err = Error::DeleteTopics {
            name: "ns/a".into(),
            reason: "down".into(),
        };
        assert_eq!(err.metric_reason(), "kafka");
        assert!(err.to_string().contains("the resource stays until it succeeds"));
    }

    #[test]
    fn default_settings_resync_every_minute() {
        let settings = Settings::default();
        assert_eq!(settings.resync, Duration::from_secs(60));
        assert!(settings.retry < settings.resync);
    }
}
