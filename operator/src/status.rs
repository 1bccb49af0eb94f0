//! Status, computed by a pure function from what the reconciler observed, and the Events
//! that condition transitions deserve.
//!
//! Messages hold nothing that changes from one reconcile to the next (no timestamps, no
//! durations), and `lastTransitionTime` only moves when a condition's status does: an
//! unchanged world yields an equal status, which the controller does not write, so the
//! operator does not wake itself up.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{MqttKafkaProxy, MqttKafkaProxyStatus, PodServerReference, TopicDeletePolicy, TopicStatus};
use crate::resources::configmap::{SpecViolation, listener_reference_templates, server_reference_template};
use crate::resources::{names, selector_string};
use crate::topics::TopicReport;
use mqtt_kafka_proxy::config::INSTANCE_PLACEHOLDER;

/// Condition types.
pub const READY: &str = "Ready";
pub const TOPICS_READY: &str = "TopicsReady";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What one reconcile saw and did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// The StatefulSet as last read (absent before it was created or when the spec is invalid).
    pub statefulset: Option<&'a StatefulSet>,
    /// The topic pass; `None` when it did not run (invalid spec).
    pub topics: Option<&'a TopicReport>,
    /// Rules the spec breaks that admission could not catch.
    pub invalid_spec: &'a [SpecViolation],
    /// Why applying an object failed, if it did.
    pub apply_error: Option<&'a str>,
    /// Ordinals of the pods that exist; `None` when they were not looked at (the server
    /// references then stay as they were).
    pub pods: Option<&'a BTreeSet<i32>>,
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Joins messages, keeping the condition readable when many things are wrong.
fn join(messages: impl IntoIterator<Item = String>) -> String {
    let all: Vec<String> = messages.into_iter().collect();
    let shown: Vec<&str> = all.iter().take(5).map(String::as_str).collect();
    let mut text = shown.join("; ");
    if all.len() > shown.len() {
        text.push_str(&format!("; and {} more", all.len() - shown.len()));
    }
    text
}

struct Pods {
    wanted: i32,
    existing: i32,
    ready: i32,
    updated: i32,
    rollout_seen: bool,
    revision_current: bool,
}

fn pods(proxy: &MqttKafkaProxy, set: Option<&StatefulSet>) -> Option<Pods> {
    let set = set?;
    let status = set.status.clone().unwrap_or_default();
    Some(Pods {
        wanted: proxy.spec.replicas,
        existing: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        rollout_seen: status.observed_generation.is_some() && status.observed_generation >= set.metadata.generation,
        revision_current: status.update_revision.is_none() || status.current_revision == status.update_revision,
    })
}

/// The status `proxy` should have, given what was observed at `now`. Conditions keep their
/// `lastTransitionTime` from `proxy.status` unless their status changed.
pub fn compute(proxy: &MqttKafkaProxy, observed: Observed<'_>, now: Time) -> MqttKafkaProxyStatus {
    let name = proxy.name_any();
    let namespace = proxy.namespace().unwrap_or_default();
    let generation = proxy.metadata.generation;
    let previous = proxy.status.clone().unwrap_or_default();
    let pods = pods(proxy, observed.statefulset);
    let selector = selector_string(&name);

    // TopicsReady
    let topics_ready = match observed.topics {
        None => Condition {
            status: "Unknown".into(),
            ..condition(
                TOPICS_READY,
                false,
                "NotChecked",
                "topics are checked once the spec is valid".into(),
            )
        },
        Some(report) => {
            if let Some(failure) = &report.failure {
                condition(TOPICS_READY, false, failure.reason, failure.message.clone())
            } else if let Some(first) = report.problems.first() {
                condition(
                    TOPICS_READY,
                    false,
                    first.reason.as_str(),
                    join(report.problems.iter().map(|p| p.message.clone())),
                )
            } else if report.all_ready() {
                condition(
                    TOPICS_READY,
                    true,
                    "TopicsReady",
                    format!(
                        "topics {} exist with the partitions and config of the spec",
                        report
                            .topics
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                condition(
                    TOPICS_READY,
                    false,
                    "TopicsNotReady",
                    "some topics are not ready".into(),
                )
            }
        }
    };

    // Degraded: something a person must fix.
    let degraded = if !observed.invalid_spec.is_empty() {
        condition(
            DEGRADED,
            true,
            "InvalidSpec",
            format!(
                "the spec breaks rules of the proxy config, nothing was changed: {}",
                join(observed.invalid_spec.iter().map(ToString::to_string))
            ),
        )
    } else if let Some(error) = observed.apply_error {
        condition(DEGRADED, true, "ApplyFailed", error.to_owned())
    } else if topics_ready.status == "False" {
        condition(DEGRADED, true, &topics_ready.reason, topics_ready.message.clone())
    } else {
        condition(DEGRADED, false, "AsExpected", "nothing needs attention".into())
    };

    // Progressing: the StatefulSet moving towards the spec.
    let progressing = match &pods {
        None => condition(PROGRESSING, true, "Creating", "the StatefulSet is being created".into()),
        Some(p) if !p.rollout_seen => condition(
            PROGRESSING,
            true,
            "RollingOut",
            "the StatefulSet controller has not yet acted on the latest change".into(),
        ),
        Some(p) if p.updated < p.existing.min(p.wanted) || !p.revision_current => condition(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{} of {} pods run the latest pod template", p.updated, p.wanted),
        ),
        Some(p) if p.existing != p.wanted => condition(
            PROGRESSING,
            true,
            "Scaling",
            format!("{} pods exist, {} wanted", p.existing, p.wanted),
        ),
        Some(p) if p.ready < p.wanted => condition(
            PROGRESSING,
            true,
            "WaitingForPods",
            format!("{} of {} pods are ready", p.ready, p.wanted),
        ),
        Some(p) => condition(
            PROGRESSING,
            false,
            "Stable",
            format!("all {} pods run the latest pod template and are ready", p.wanted),
        ),
    };

    // Ready: devices can connect and their data reaches Kafka.
    let ready = if degraded.status == "True" {
        condition(READY, false, &degraded.reason, degraded.message.clone())
    } else if topics_ready.status != "True" {
        condition(READY, false, "TopicsNotReady", topics_ready.message.clone())
    } else if proxy.spec.replicas == 0 {
        condition(
            READY,
            false,
            "ScaledToZero",
            "spec.replicas is 0: no pod serves MQTT".into(),
        )
    } else {
        match &pods {
            Some(p) if p.ready >= p.wanted => condition(
                READY,
                true,
                "AllPodsReady",
                format!("all {} pods are ready and the topics exist as specified", p.wanted),
            ),
            Some(p) => condition(
                READY,
                false,
                "PodsNotReady",
                format!(
                    "{} of {} pods are ready; see `kubectl -n {namespace} get pods -l {selector}` and `kubectl -n \
                     {namespace} describe pod {}`",
                    p.ready,
                    p.wanted,
                    names::pod(&name, 0)
                ),
            ),
            None => condition(
                READY,
                false,
                "PodsNotReady",
                "the StatefulSet does not exist yet".into(),
            ),
        }
    };

    let conditions = [ready, topics_ready, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = previous
                .conditions
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == c.status)
                .map_or_else(|| now.clone(), |old| old.last_transition_time.clone());
            c
        })
        .collect();

    MqttKafkaProxyStatus {
        observed_generation: generation,
        replicas: pods.as_ref().map_or(0, |p| p.existing),
        ready_replicas: pods.as_ref().map_or(0, |p| p.ready),
        selector: Some(selector),
        server_references: observed.pods.map_or_else(
            || previous.server_references.clone(),
            |pods| server_references(proxy, pods),
        ),
        topics: observed.topics.map_or_else(
            || previous.topics.clone(),
            |report| topic_statuses(&report.topics, &previous.topics, proxy.spec.kafka.topics.delete_policy),
        ),
        conditions,
    }
}

/// The server references of the pods that exist (`pods`: their ordinals), not of the pods
/// the spec wants: a pod that hands its sessions over during a scale-down keeps its
/// address until it is gone, and a pod not yet created has none.
pub fn server_references(proxy: &MqttKafkaProxy, pods: &BTreeSet<i32>) -> Vec<PodServerReference> {
    let name = proxy.name_any();
    let template = server_reference_template(proxy);
    let listeners = listener_reference_templates(proxy);
    pods.iter()
        .map(|&ordinal| {
            let pod = names::pod(&name, ordinal);
            PodServerReference {
                server_reference: template.replace(INSTANCE_PLACEHOLDER, &pod),
                listeners: listeners
                    .iter()
                    .map(|(listener, t)| (listener.clone(), t.replace(INSTANCE_PLACEHOLDER, &pod)))
                    .collect(),
                pod,
            }
        })
        .collect()
}

/// The topics as reported, with what the status recorded before that the report cannot
/// know (the operator created the topic in an earlier pass), and what deletion will do.
fn topic_statuses(reported: &[TopicStatus], previous: &[TopicStatus], policy: TopicDeletePolicy) -> Vec<TopicStatus> {
    reported
        .iter()
        .map(|topic| {
            let mut topic = topic.clone();
            topic.created |= previous.iter().any(|p| p.name == topic.name && p.created);
            topic.on_delete = Some(on_delete(&topic, policy));
            topic
        })
        .collect()
}

/// What deleting the resource does to `topic`, for a person reading the status.
pub fn on_delete(topic: &TopicStatus, policy: TopicDeletePolicy) -> String {
    match (policy, &topic.claimed_by, topic.created) {
        (_, Some(holder), _) => format!("kept: MqttKafkaProxy {holder} uses it"),
        (TopicDeletePolicy::Retain, _, _) => "kept (deletePolicy: Retain)".into(),
        (TopicDeletePolicy::Delete, None, true) => {
            "deleted with this resource (the operator created it), unless another MqttKafkaProxy on the same Kafka \
             uses it then"
                .into()
        }
        (TopicDeletePolicy::Delete, None, false) => {
            "kept: it existed before this resource; only topics the operator created are deleted".into()
        }
    }
}

/// Whether an Event is routine or needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event to publish about the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub severity: Severity,
    pub reason: String,
    pub note: String,
}

/// Events for conditions whose status or reason changed between `old` and `new`: Ready
/// becoming true, a rollout or scaling starting, every new problem (Degraded, TopicsReady
/// false) and the recovery from one.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    let mut out = Vec::new();
    for cond in new {
        let before = old.iter().find(|o| o.type_ == cond.type_);
        if before.is_some_and(|b| b.status == cond.status && b.reason == cond.reason) {
            continue;
        }
        let severity = match (cond.type_.as_str(), cond.status.as_str()) {
            (DEGRADED, "True") | (TOPICS_READY, "False") => Severity::Warning,
            (READY, "True") => Severity::Normal,
            // A rollout or a scaling is news; pods starting up after it is not.
            (PROGRESSING, "True") if cond.reason == "RollingOut" || cond.reason == "Scaling" => Severity::Normal,
            (DEGRADED, "False") if before.is_some() => Severity::Normal,
            (TOPICS_READY, "True") if before.is_some() => Severity::Normal,
            _ => continue,
        };
        let mut note = cond.message.clone();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let reason = if cond.type_ == DEGRADED && cond.status == "False" {
            "Recovered".to_owned()
        } else {
            cond.reason.clone()
        };
        out.push(Transition { severity, reason, note });
    }
    out
}

#[cfg(test)]
mod tests;
