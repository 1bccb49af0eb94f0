//! The Kafka side of a reconcile: admin clients, the topic pass (at most once per half
//! resync unless the spec changed), topic claims between resources, and deleting the
//! topics the operator created when the resource goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::info;

use super::{Context, Error, key};
use crate::claims::{self, Claim, Conflict};
use crate::crd::MqttKafkaProxy;
use crate::resources::configmap::{plain_properties, secret_properties};
use crate::resources::stable_hash;
use crate::status::Severity;
use crate::topics::{self, Admin, TopicReport};

/// Kafka admin clients by connection properties, shared by resources on the same Kafka.
/// librdkafka clients own threads and connections: one per reconcile would churn them.
#[derive(Default)]
pub(super) struct AdminCache {
    clients: Mutex<HashMap<String, (Arc<Admin>, Instant)>>,
}

const ADMIN_IDLE: Duration = Duration::from_secs(600);

impl AdminCache {
    fn get(&self, properties: &[(String, String)]) -> Result<Arc<Admin>, String> {
        let key = stable_hash(format!("{properties:?}").as_bytes());
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| "admin client cache poisoned".to_owned())?;
        // Clients unused for a while (a rotated password, a deleted resource) are dropped;
        // dropping one joins librdkafka threads, so not on the async runtime's threads.
        let idle: Vec<String> = clients
            .iter()
            .filter(|(k, (_, used))| **k != key && used.elapsed() > ADMIN_IDLE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            if let Some((client, _)) = clients.remove(&k) {
                tokio::task::spawn_blocking(move || drop(client));
            }
        }
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = Instant::now();
            return Ok(Arc::clone(client));
        }
        let bootstrap = properties
            .iter()
            .find(|(k, _)| k == "bootstrap.servers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let rest: Vec<(String, String)> = properties
            .iter()
            .filter(|(k, _)| k != "bootstrap.servers")
            .cloned()
            .collect();
        let client = Arc::new(mqtt_kafka_proxy::kafka::admin::client(&bootstrap, &rest).map_err(|e| e.to_string())?);
        clients.insert(key, (Arc::clone(&client), Instant::now()));
        Ok(client)
    }
}

pub(super) struct TopicCheck {
    generation: Option<i64>,
    at: Instant,
    report: TopicReport,
}

pub(super) struct CheckedTopics {
    pub(super) report: TopicReport,
    /// Whether this reconcile ran the check (its changes are news) or reused a recent one.
    pub(super) fresh: bool,
}

/// Runs the topic pass unless one ran for this generation less than half a resync ago: the
/// pods' status changes wake the controller often, and Kafka need not hear about each.
pub(super) async fn check_topics(proxy: &MqttKafkaProxy, ctx: &Context) -> CheckedTopics {
    let generation = proxy.metadata.generation;
    if let Ok(checks) = ctx.topic_checks.lock()
        && let Some(check) = checks.get(&key(proxy))
        && check.generation == generation
        && check.report.failure.is_none()
        && check.at.elapsed() < ctx.settings.resync / 2
    {
        return CheckedTopics {
            report: check.report.clone(),
            fresh: false,
        };
    }
    let report = run_topics(proxy, ctx).await;
    if let Ok(mut checks) = ctx.topic_checks.lock() {
        checks.insert(
            key(proxy),
            TopicCheck {
                generation,
                at: Instant::now(),
                report: report.clone(),
            },
        );
    }
    CheckedTopics { report, fresh: true }
}

async fn run_topics(proxy: &MqttKafkaProxy, ctx: &Context) -> TopicReport {
    let desired = topics::desired_topics(&proxy.spec);
    let admin = match admin_client(proxy, ctx).await {
        Ok(admin) => admin,
        Err(report) => return TopicReport::failed(&desired, report.0, report.1),
    };
    let spec = &proxy.spec.kafka;
    topics::reconcile_topics(&admin, &desired, spec.topics.config_policy, &spec.bootstrap_servers).await
}

/// The admin client for the resource's Kafka, with the secret properties read from their
/// Secrets; on failure the condition reason and message.
async fn admin_client(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<Arc<Admin>, (&'static str, String)> {
    let spec = &proxy.spec.kafka;
    let namespace = proxy.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut properties: Vec<(String, String)> = plain_properties(spec).into_iter().collect();
    properties.push(("bootstrap.servers".into(), spec.bootstrap_servers.clone()));
    for secret in secret_properties(spec) {
        let unavailable = |why: String| {
            (
                "KafkaCredentialsUnavailable",
                format!(
                    "cannot read key {} of Secret {}/{} for {}: {why}",
                    secret.secret.key, namespace, secret.secret.name, secret.property
                ),
            )
        };
        let found = secrets
            .get_opt(&secret.secret.name)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("the Secret does not exist".into()))?;
        let value = found
            .data
            .as_ref()
            .and_then(|d| d.get(&secret.secret.key))
            .ok_or_else(|| unavailable("the Secret has no such key".into()))?;
        let text = String::from_utf8(value.0.clone()).map_err(|_| unavailable("the value is not UTF-8".into()))?;
        properties.push((secret.property.into(), text));
    }
    properties.sort();
    ctx.admins
        .get(&properties)
        .map_err(|e| ("KafkaClientFailed", format!("cannot create a Kafka admin client: {e}")))
}

/// The claims of the other resources the operator sees (not being deleted), on any Kafka.
pub(super) async fn other_claims(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<Vec<Claim>, Error> {
    let store = ctx.proxies.lock().ok().and_then(|s| s.clone());
    let all: Vec<Arc<MqttKafkaProxy>> = match store {
        Some(store) => {
            // Until the first list is in, the store would hide resources that exist.
            let _ = store.wait_until_ready().await;
            store.state()
        }
        None => {
            let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
            Api::<MqttKafkaProxy>::namespaced(ctx.client.clone(), &namespace)
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect()
        }
    };
    let me = claims::resource_key(proxy);
    Ok(all
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && claims::resource_key(p) != me)
        .map(|p| Claim::of(p))
        .collect())
}

/// The topics of `proxy` that another resource on the same Kafka keeps.
pub(super) async fn conflicts(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<Vec<Conflict>, Error> {
    let others = other_claims(proxy, ctx).await?;
    Ok(claims::conflicts(&Claim::of(proxy), &others))
}

/// Adds to `report` which topics the operator created for `proxy` in earlier passes whose
/// status write this reconcile's copy of the resource may not show yet.
pub(super) fn remember_created(proxy: &MqttKafkaProxy, ctx: &Context, report: &mut TopicReport) {
    let Ok(mut created) = ctx.created.lock() else {
        return;
    };
    let mine = created.entry(proxy.uid().unwrap_or_default()).or_default();
    for topic in &mut report.topics {
        if topic.created {
            mine.insert(topic.name.clone());
        } else if mine.contains(&topic.name) {
            topic.created = true;
        }
    }
}

/// The `Delete` deletion policy: deletes the topics the operator created for `proxy` that
/// no other resource on the same Kafka wants; keeps (and says so) the others.
pub(super) async fn delete_topics(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<(), Error> {
    let failed = |reason: String| Error::DeleteTopics {
        name: key(proxy),
        reason,
    };
    let mut topics = proxy.status.as_ref().map(|s| s.topics.clone()).unwrap_or_default();
    if let Ok(created) = ctx.created.lock()
        && let Some(mine) = created.get(&proxy.uid().unwrap_or_default())
    {
        for topic in &mut topics {
            topic.created |= mine.contains(&topic.name);
        }
    }
    let others = other_claims(proxy, ctx).await?;
    let plan = claims::delete_plan(&Claim::of(proxy), &topics, &others);
    if !plan.keep.is_empty() {
        let kept: Vec<String> = plan.keep.iter().map(|(t, why)| format!("{t} ({why})")).collect();
        info!(resource = %key(proxy), ?kept, "keeping topics (deletePolicy: Delete)");
        ctx.publish(
            proxy,
            Severity::Normal,
            "TopicsKept",
            format!("kept topics {}", kept.join(", ")),
        )
        .await;
    }
    if plan.delete.is_empty() {
        return Ok(());
    }
    let admin = admin_client(proxy, ctx).await.map_err(|(_, message)| failed(message))?;
    let deleted = topics::delete_topics(&admin, &plan.delete).await.map_err(failed)?;
    info!(resource = %key(proxy), ?deleted, "deleted topics (deletePolicy: Delete)");
    ctx.publish(
        proxy,
        Severity::Normal,
        "TopicsDeleted",
        format!("deleted topics {}", deleted.join(", ")),
    )
    .await;
    Ok(())
}
