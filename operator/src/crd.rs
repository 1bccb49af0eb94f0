//! The `MqttKafkaProxy` custom resource (`mqttkafka.io/v1alpha1`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one sharded MQTT proxy deployment on Kafka.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "mqttkafka.io",
    version = "v1alpha1",
    kind = "MqttKafkaProxy",
    namespaced,
    shortname = "mkp",
    status = "MqttKafkaProxyStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Topics","type":"string","jsonPath":".status.conditions[?(@.type==\"TopicsReady\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaProxySpec {
    /// Number of proxy pods.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Container image of the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Kafka cluster that stores messages, retained messages and sessions.
    pub kafka: KafkaSpec,
}

fn default_replicas() -> i32 {
    1
}

/// How to reach Kafka.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
}

/// Observed state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaProxyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_the_names_and_subresources_users_rely_on() {
        let crd = MqttKafkaProxy::crd();
        assert_eq!(crd.spec.group, "mqttkafka.io");
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["mkp".to_owned()][..]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        assert_eq!(
            sub.scale.as_ref().map(|s| s.spec_replicas_path.as_str()),
            Some(".spec.replicas")
        );
    }
}
