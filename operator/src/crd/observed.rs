//! The status of an `MqttKafkaProxy`: what the operator observed and did.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaProxyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist (the StatefulSet's `status.replicas`); the scale subresource reads it.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The server reference of each pod, as the pods derive it from the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_references: Vec<PodServerReference>,
    /// The Kafka topics and whether each is as the spec asks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicStatus>,
    /// `Ready`, `TopicsReady`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The server reference of one pod.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodServerReference {
    /// Pod name (the proxy's instance id).
    pub pod: String,
    /// `host:port` clients are redirected to for sessions this pod owns.
    pub server_reference: String,
    /// The reference per listener name: clients are redirected to the one of the listener
    /// they connected on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, String>,
}

/// One Kafka topic as observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// `sessions`, `retained` or `messages`.
    pub role: String,
    /// Partitions the topic has (0 when it does not exist or could not be read).
    pub partitions: i32,
    /// Whether the topic exists with the partitions and config of the spec.
    pub ready: bool,
    /// What is wrong with it, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the operator created the topic for this resource. Only such topics are
    /// deleted with `deletePolicy: Delete`; a topic that existed before is kept.
    #[serde(default)]
    pub created: bool,
    /// What happens to the topic when the resource is deleted, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<String>,
    /// Another `MqttKafkaProxy` (`namespace/name`) that uses this topic on the same Kafka
    /// and keeps it: this resource is not reconciled until the conflict is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}
