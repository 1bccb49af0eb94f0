//! Kafka topics: what the spec wants ([`desired_topics`]), what to do about what exists
//! ([`plan`], pure), and doing it ([`reconcile_topics`], the Kafka I/O).
//!
//! Rules (DESIGN sections 2 and 5):
//! - missing topics are created, the sessions and retained topics compacted;
//! - configs that drifted from the spec are altered back (`configPolicy: Converge`) or
//!   reported (`Report`);
//! - partitions are never removed (Kafka cannot), and are only added to messages topics:
//!   the sessions and retained topics are keyed and compacted, and a new partition count
//!   would send existing keys to other partitions (a session would be looked up where it
//!   is not, a retained message could no longer be replaced or deleted);
//! - what cannot be fixed is reported with what to do about it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mqtt_kafka_proxy::kafka::admin::{self, CreateOutcome, TopicConfigEntry, TopicLayout, TopicSpec as AdminTopicSpec};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::crd::{MqttKafkaProxySpec, TopicConfigPolicy, TopicSpec, TopicStatus};

/// The admin client the operator uses.
pub type Admin = AdminClient<DefaultClientContext>;

const CLEANUP_POLICY: &str = "cleanup.policy";
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What a topic is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicRole {
    Sessions,
    Retained,
    Messages,
}

impl TopicRole {
    /// Lower-case name, as in status.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicRole::Sessions => "sessions",
            TopicRole::Retained => "retained",
            TopicRole::Messages => "messages",
        }
    }

    /// The spec field of the topic.
    pub fn spec_field(self) -> &'static str {
        match self {
            TopicRole::Sessions => "spec.kafka.topics.sessions",
            TopicRole::Retained => "spec.kafka.topics.retained",
            TopicRole::Messages => "spec.kafka.topics.messages",
        }
    }
}

/// A topic as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTopic {
    pub role: TopicRole,
    pub name: String,
    pub partitions: i32,
    /// -1: the broker default.
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

impl DesiredTopic {
    fn new(role: TopicRole, spec: &TopicSpec) -> Self {
        DesiredTopic {
            role,
            name: spec.name.clone(),
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            config: spec.config.clone(),
        }
    }
}

/// The topics of `spec`: sessions (always compacted), retained (compacted unless the spec
/// says `compact,delete`), messages, and every other messages topic a route sends to (with
/// the messages topic's settings).
pub fn desired_topics(spec: &MqttKafkaProxySpec) -> Vec<DesiredTopic> {
    let topics = &spec.kafka.topics;
    let mut sessions = DesiredTopic::new(TopicRole::Sessions, &topics.sessions);
    sessions.config.insert(CLEANUP_POLICY.into(), "compact".into());
    let mut retained = DesiredTopic::new(TopicRole::Retained, &topics.retained);
    retained
        .config
        .entry(CLEANUP_POLICY.into())
        .or_insert_with(|| "compact".into());
    let messages = DesiredTopic::new(TopicRole::Messages, &topics.messages);
    let mut out = vec![sessions, retained, messages];
    for route in &spec.routes {
        if let Some(with) = &route.with
            && !out.iter().any(|t| t.name == with.messages)
        {
            let mut topic = DesiredTopic::new(TopicRole::Messages, &topics.messages);
            topic.name = with.messages.clone();
            out.push(topic);
        }
    }
    out
}

/// A topic as Kafka has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub layout: TopicLayout,
    pub configs: BTreeMap<String, TopicConfigEntry>,
}

/// One config value that differs from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub key: String,
    pub actual: Option<String>,
    pub desired: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {}, the spec asks {}",
            self.key,
            self.actual.as_deref().unwrap_or("unset"),
            self.desired
        )
    }
}

/// Something to do to a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Create,
    /// Grow to this many partitions.
    AddPartitions(i32),
    /// Replace the topic-level configs with `configs` (what was set on the topic, with the
    /// spec's values on top), fixing `drifts`.
    AlterConfigs {
        configs: BTreeMap<String, String>,
        drifts: Vec<Drift>,
    },
}

/// Why a topic is not as the spec asks, when the operator will not or cannot fix it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemReason {
    /// The sessions topic is not `cleanup.policy=compact`.
    SessionsTopicNotCompacted,
    /// A config differs and `configPolicy` is `Report`.
    TopicConfigDrift,
    /// The topic has more partitions than the spec; Kafka cannot remove partitions.
    PartitionsShrinkRefused,
    /// The spec asks more partitions of a keyed, compacted topic.
    PartitionsChangeRefused,
    /// The replication factor differs (changing it needs a partition reassignment).
    ReplicationFactorMismatch,
    /// Kafka refused a request (create, alter, add partitions).
    TopicRequestFailed,
}

impl ProblemReason {
    /// The condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemReason::SessionsTopicNotCompacted => "SessionsTopicNotCompacted",
            ProblemReason::TopicConfigDrift => "TopicConfigDrift",
            ProblemReason::PartitionsShrinkRefused => "PartitionsShrinkRefused",
            ProblemReason::PartitionsChangeRefused => "PartitionsChangeRefused",
            ProblemReason::ReplicationFactorMismatch => "ReplicationFactorMismatch",
            ProblemReason::TopicRequestFailed => "TopicRequestFailed",
        }
    }
}

/// A problem with one topic, with a message saying what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub topic: String,
    pub reason: ProblemReason,
    pub message: String,
}

/// What to do about one topic, and what cannot be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPlan {
    pub steps: Vec<Step>,
    pub problems: Vec<Problem>,
}

fn kafka_configs_command(bootstrap: &str, topic: &str, key: &str, value: &str) -> String {
    format!(
        "kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} \
         --add-config {key}={value}"
    )
}

fn sessions_not_compacted(bootstrap: &str, topic: &str, policy: Option<&str>, why: &str) -> Problem {
    Problem {
        topic: topic.to_owned(),
        reason: ProblemReason::SessionsTopicNotCompacted,
        message: format!(
            "the sessions topic {topic} has cleanup.policy={}, but it must be compact: retention would delete \
             sessions, and the proxies refuse to start. {why}Fix it with `{}`, or set \
             spec.kafka.topics.configPolicy to Converge to let the operator alter it",
            policy.unwrap_or("delete"),
            kafka_configs_command(bootstrap, topic, CLEANUP_POLICY, "compact"),
        ),
    }
}

/// What to do about `desired`, given what Kafka has (`None`: the topic does not exist).
/// `bootstrap` only goes into messages, for the commands it suggests.
pub fn plan(
    desired: &DesiredTopic,
    observed: Option<&ObservedTopic>,
    policy: TopicConfigPolicy,
    bootstrap: &str,
) -> TopicPlan {
    let Some(observed) = observed else {
        return TopicPlan {
            steps: vec![Step::Create],
            problems: Vec::new(),
        };
    };
    let name = &desired.name;
    let field = desired.role.spec_field();
    let mut steps = Vec::new();
    let mut problems = Vec::new();

    let actual = observed.layout.partitions;
    if actual > desired.partitions {
        problems.push(Problem {
            topic: name.clone(),
            reason: ProblemReason::PartitionsShrinkRefused,
            message: format!(
                "topic {name} has {actual} partitions but the spec asks {}; Kafka cannot remove partitions: set \
                 {field}.partitions to {actual}",
                desired.partitions
            ),
        });
    } else if actual < desired.partitions {
        if desired.role == TopicRole::Messages {
            steps.push(Step::AddPartitions(desired.partitions));
        } else {
            problems.push(Problem {
                topic: name.clone(),
                reason: ProblemReason::PartitionsChangeRefused,
                message: format!(
                    "topic {name} has {actual} partitions but the spec asks {}; the operator does not add partitions \
                     to the {} topic because its keys would move to other partitions and existing {} would be lost: \
                     set {field}.partitions to {actual}, or move to a new topic",
                    desired.partitions,
                    desired.role.as_str(),
                    if desired.role == TopicRole::Sessions {
                        "sessions"
                    } else {
                        "retained messages"
                    },
                ),
            });
        }
    }

    let replicas = observed.layout.replication_factor;
    if desired.replication_factor > 0 && replicas != desired.replication_factor {
        problems.push(Problem {
            topic: name.clone(),
            reason: ProblemReason::ReplicationFactorMismatch,
            message: format!(
                "topic {name} has replication factor {replicas} but the spec asks {}; changing it needs a partition \
                 reassignment (kafka-reassign-partitions.sh), or set {field}.replicationFactor to {replicas}",
                desired.replication_factor
            ),
        });
    }

    let drifts: Vec<Drift> = desired
        .config
        .iter()
        .filter_map(|(key, want)| {
            let have = observed.configs.get(key).and_then(|e| e.value.clone());
            (have.as_deref() != Some(want.as_str())).then(|| Drift {
                key: key.clone(),
                actual: have,
                desired: want.clone(),
            })
        })
        .collect();
    if !drifts.is_empty() {
        match policy {
            TopicConfigPolicy::Converge => {
                // AlterConfigs replaces the whole topic-level config: resend what is set on
                // the topic (someone else's settings stay), with the spec on top.
                let mut configs: BTreeMap<String, String> = observed
                    .configs
                    .iter()
                    .filter(|(_, e)| e.set_on_topic)
                    .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), v)))
                    .collect();
                configs.extend(desired.config.clone());
                steps.push(Step::AlterConfigs { configs, drifts });
            }
            TopicConfigPolicy::Report => {
                for drift in drifts {
                    if desired.role == TopicRole::Sessions && drift.key == CLEANUP_POLICY {
                        problems.push(sessions_not_compacted(bootstrap, name, drift.actual.as_deref(), ""));
                    } else {
                        problems.push(Problem {
                            topic: name.clone(),
                            reason: ProblemReason::TopicConfigDrift,
                            message: format!(
                                "topic {name}: {drift}; fix it with `{}`, or set spec.kafka.topics.configPolicy to \
                                 Converge",
                                kafka_configs_command(bootstrap, name, &drift.key, &drift.desired)
                            ),
                        });
                    }
                }
            }
        }
    }
    TopicPlan { steps, problems }
}

/// A change the operator made to a topic, for an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Event reason: `TopicCreated`, `TopicConfigReverted`, `TopicPartitionsAdded`, `TopicDeleted`.
    pub reason: &'static str,
    pub message: String,
}

/// Why the topics could not be checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFailure {
    /// Condition reason: `KafkaUnreachable`, `KafkaCredentialsUnavailable`, `KafkaClientFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of one pass over the topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicReport {
    /// One entry per desired topic.
    pub topics: Vec<TopicStatus>,
    pub problems: Vec<Problem>,
    pub changes: Vec<Change>,
    /// Set when the topics could not be checked.
    pub failure: Option<TopicFailure>,
}

impl TopicReport {
    /// Whether every topic is as the spec asks.
    pub fn all_ready(&self) -> bool {
        self.failure.is_none() && !self.topics.is_empty() && self.topics.iter().all(|t| t.ready)
    }

    /// A report of topics that could not be checked.
    pub fn failed(desired: &[DesiredTopic], reason: &'static str, message: String) -> Self {
        TopicReport {
            topics: desired.iter().map(unknown_status).collect(),
            problems: Vec::new(),
            changes: Vec::new(),
            failure: Some(TopicFailure { reason, message }),
        }
    }
}

/// The topic as `admin::create_topics` wants it.
fn admin_spec(topic: &DesiredTopic) -> AdminTopicSpec {
    AdminTopicSpec {
        name: topic.name.clone(),
        partitions: topic.partitions,
        replication: topic.replication_factor,
        configs: topic.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

async fn observe(admin: &Arc<Admin>, topic: &str) -> Result<Option<ObservedTopic>, String> {
    let client = Arc::clone(admin);
    let name = topic.to_owned();
    let layout = tokio::task::spawn_blocking(move || admin::topic_layout(&client, &name, METADATA_TIMEOUT))
        .await
        .map_err(|e| format!("metadata task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let Some(layout) = layout else {
        return Ok(None);
    };
    let configs = admin::topic_configs(admin, topic).await.map_err(|e| e.to_string())?;
    Ok(Some(ObservedTopic { layout, configs }))
}

/// Brings every desired topic to the spec as far as the rules allow, and reports.
pub async fn reconcile_topics(
    admin: &Arc<Admin>,
    desired: &[DesiredTopic],
    policy: TopicConfigPolicy,
    bootstrap: &str,
) -> TopicReport {
    let mut report = TopicReport::default();
    for topic in desired {
        let observed = match observe(admin, &topic.name).await {
            Ok(observed) => observed,
            Err(reason) => {
                return TopicReport::failed(
                    desired,
                    "KafkaUnreachable",
                    format!(
                        "cannot read topic {} from Kafka at {bootstrap}: {reason}; check spec.kafka.bootstrapServers, \
                         that the operator's pod can reach Kafka, and the TLS / SASL settings",
                        topic.name
                    ),
                );
            }
        };
        let plan = plan(topic, observed.as_ref(), policy, bootstrap);
        let mut partitions = observed.as_ref().map_or(0, |o| o.layout.partitions);
        let mut problems = plan.problems;
        let mut created = false;
        for step in plan.steps {
            match execute(admin, topic, &step).await {
                Ok(done) => {
                    if let Step::Create | Step::AddPartitions(_) = step {
                        partitions = topic.partitions;
                    }
                    created |= done.created;
                    report.changes.push(done.change);
                }
                Err(failure) => {
                    if topic.role == TopicRole::Sessions
                        && let Step::AlterConfigs { drifts, .. } = &step
                        && let Some(policy) = drifts.iter().find(|d| d.key == CLEANUP_POLICY)
                    {
                        problems.push(sessions_not_compacted(
                            bootstrap,
                            &topic.name,
                            policy.actual.as_deref(),
                            &format!("Altering it failed ({failure}). "),
                        ));
                    } else {
                        problems.push(Problem {
                            topic: topic.name.clone(),
                            reason: ProblemReason::TopicRequestFailed,
                            message: failure,
                        });
                    }
                }
            }
        }
        let ready = problems.is_empty();
        report.topics.push(TopicStatus {
            name: topic.name.clone(),
            role: topic.role.as_str().into(),
            partitions,
            ready,
            message: problems.first().map(|p| p.message.clone()),
            created,
            ..TopicStatus::default()
        });
        report.problems.extend(problems);
    }
    report
}

fn unknown_status(topic: &DesiredTopic) -> TopicStatus {
    TopicStatus {
        name: topic.name.clone(),
        role: topic.role.as_str().into(),
        ..TopicStatus::default()
    }
}

/// A step done: the change to report, and whether it created the topic (Kafka answered
/// that it created it, not that it existed already).
struct Done {
    change: Change,
    created: bool,
}

impl From<Change> for Done {
    fn from(change: Change) -> Self {
        Done { change, created: false }
    }
}

async fn execute(admin: &Arc<Admin>, topic: &DesiredTopic, step: &Step) -> Result<Done, String> {
    let name = &topic.name;
    match step {
        Step::Create => {
            let outcome = admin::create_topics(admin, &[admin_spec(topic)])
                .await
                .map_err(|e| format!("creating topic {name} failed: {e}"))?;
            match outcome.into_iter().next().map(|(_, o)| o) {
                Some(CreateOutcome::Created) => Ok(Done {
                    change: Change {
                        reason: "TopicCreated",
                        message: format!(
                            "created {} topic {name} with {} partitions{}",
                            topic.role.as_str(),
                            topic.partitions,
                            config_suffix(&topic.config)
                        ),
                    },
                    created: true,
                }),
                // Someone else created it between the look and the request: not ours.
                Some(CreateOutcome::AlreadyExisted) => Ok(Change {
                    reason: "TopicFound",
                    message: format!(
                        "{} topic {name} was created by someone else meanwhile",
                        topic.role.as_str()
                    ),
                }
                .into()),
                Some(CreateOutcome::Failed(code)) => Err(format!("creating topic {name} failed: {code}")),
                None => Err(format!("creating topic {name}: Kafka sent no result")),
            }
        }
        Step::AddPartitions(count) => {
            admin::add_partitions(admin, name, usize::try_from(*count).unwrap_or(1))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Change {
                reason: "TopicPartitionsAdded",
                message: format!("grew topic {name} to {count} partitions"),
            }
            .into())
        }
        Step::AlterConfigs { configs, drifts } => {
            admin::alter_topic_configs(admin, name, configs)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Change {
                reason: "TopicConfigReverted",
                message: format!(
                    "topic {name}: {}; altered back to the spec",
                    drifts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
            }
            .into())
        }
    }
}

fn config_suffix(config: &BTreeMap<String, String>) -> String {
    if config.is_empty() {
        String::new()
    } else {
        format!(
            " and {}",
            config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Deletes the topics `names` (the `Delete` deletion policy, after `claims::delete_plan`
/// chose them); returns the names deleted.
pub async fn delete_topics(admin: &Arc<Admin>, names: &[String]) -> Result<Vec<String>, String> {
    let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    admin::delete_topics(admin, &names).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
