//! Pure builders: one function per Kubernetes object an `MqttKafkaProxy` owns, from the
//! resource alone (plus the rendered config for the StatefulSet's hash). No I/O here; the
//! controller applies what these return.

pub mod configmap;
pub mod pdb;
pub mod serviceaccount;
pub mod services;
pub mod statefulset;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::crd::MqttKafkaProxy;

/// Field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "mqtt-kafka-operator";
/// `app.kubernetes.io/name` of everything the operator creates.
pub const APP_NAME: &str = "mqtt-kafka-proxy";
/// Label keys.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Label the StatefulSet controller puts on each pod: what per-pod Services select.
pub const LABEL_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// Annotation with the hash of everything the operator last applied to an object: equal
/// hash (and no drift) means there is nothing to write.
pub const ANNOTATION_APPLIED_HASH: &str = "mqttkafka.io/applied-hash";
/// Pod-template annotation with the hash of the proxy config: pods roll when it changes.
pub const ANNOTATION_CONFIG_HASH: &str = "mqttkafka.io/config-hash";

/// What each object is called: all derived from the resource name.
pub mod names {
    /// StatefulSet, client Service, PodDisruptionBudget and ServiceAccount.
    pub fn main(name: &str) -> String {
        name.to_owned()
    }

    /// The headless Service giving each pod a DNS name.
    pub fn headless(name: &str) -> String {
        format!("{name}-headless")
    }

    /// The ConfigMap with the proxy config.
    pub fn config_map(name: &str) -> String {
        format!("{name}-config")
    }

    /// Pod `ordinal` of the StatefulSet, and its per-pod Service.
    pub fn pod(name: &str, ordinal: i32) -> String {
        format!("{name}-{ordinal}")
    }
}

/// The ordinals of the pods of `name` that exist (starting, running or terminating), from
/// their names `<name>-<ordinal>`; other names are ignored.
pub fn pod_ordinals<'a>(name: &str, pods: impl IntoIterator<Item = &'a str>) -> BTreeSet<i32> {
    let prefix = format!("{name}-");
    pods.into_iter()
        .filter_map(|pod| pod.strip_prefix(&prefix))
        .filter(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|ordinal| ordinal.parse().ok())
        .collect()
}

/// The ordinals that get a per-pod Service: every pod that exists (one that is handing its
/// sessions over during a scale-down keeps its address until it is gone) and every pod the
/// spec wants (its Service, and so its address, is ready before the pod starts).
pub fn per_pod_ordinals(replicas: i32, existing: &BTreeSet<i32>) -> BTreeSet<i32> {
    existing.iter().copied().chain(0..replicas.max(0)).collect()
}

/// Labels that select the pods of `name` (immutable once the StatefulSet exists).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), name.to_owned()),
    ])
}

/// The selector as the string the scale subresource publishes.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every object: the selector plus managed-by, part-of and `component`.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(LABEL_COMPONENT.to_owned(), component.to_owned());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned());
    labels.insert(LABEL_PART_OF.to_owned(), "mqtt-kafka".to_owned());
    labels
}

/// Label selector of everything the operator made for `name`.
pub fn owned_selector(name: &str) -> String {
    format!("{LABEL_INSTANCE}={name},{LABEL_MANAGED_BY}={MANAGER}")
}

/// The controller owner reference to `proxy` (garbage collection deletes what carries it).
/// `blockOwnerDeletion` makes a foreground deletion of the resource wait for its objects.
pub fn owner_reference(proxy: &MqttKafkaProxy) -> OwnerReference {
    OwnerReference {
        api_version: MqttKafkaProxy::api_version(&()).into_owned(),
        kind: MqttKafkaProxy::kind(&()).into_owned(),
        name: proxy.name_any(),
        // Every stored resource has a uid; only a builder test may lack one.
        uid: proxy.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of an object named `object_name` owned by `proxy`.
pub fn metadata(proxy: &MqttKafkaProxy, object_name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name),
        namespace: proxy.namespace(),
        labels: Some(labels(&proxy.name_any(), component)),
        owner_references: Some(vec![owner_reference(proxy)]),
        ..ObjectMeta::default()
    }
}

/// Whether `object` carries a controller owner reference to the resource with `uid`.
pub fn is_owned_by(object: &ObjectMeta, uid: &str) -> bool {
    object
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// FNV-1a (64 bit) as 16 hex digits. Stable across Rust releases and platforms, unlike
/// `DefaultHasher`: a hash that changed with the operator's build would roll every pod.
pub fn stable_hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Hash of an object as the operator would apply it.
pub fn applied_hash(desired: &Value) -> String {
    stable_hash(desired.to_string().as_bytes())
}

/// Whether every field of `desired` is present with the same value in `actual` (which may
/// hold more: server defaults, other managers' fields, status). Lists must have the same
/// length and match element by element. Used to skip writes when nothing changed, and to
/// notice when someone else changed a field the operator sets.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(found) => is_subset(value, found),
            // The apiserver drops empty maps and lists, and nulls mean "unset".
            None => is_empty(value),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (Value::Number(want), Value::Number(have)) => want.as_f64() == have.as_f64(),
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::MqttKafkaProxySpec;
    use serde_json::json;

    /// A stored-looking resource: name, namespace, uid, generation.
    pub(crate) fn proxy(spec: Value) -> MqttKafkaProxy {
        let mut proxy = MqttKafkaProxy::new(
            "mqtt",
            serde_json::from_value::<MqttKafkaProxySpec>(spec).expect("spec"),
        );
        proxy.metadata.namespace = Some("iot".into());
        proxy.metadata.uid = Some("uid-1".into());
        proxy.metadata.generation = Some(3);
        proxy
    }

    pub(crate) fn minimal() -> MqttKafkaProxy {
        proxy(json!({"kafka": {"bootstrapServers": "kafka:9092"}}))
    }

    #[test]
    fn names_labels_and_selector() {
        assert_eq!(names::headless("mqtt"), "mqtt-headless");
        assert_eq!(names::config_map("mqtt"), "mqtt-config");
        assert_eq!(names::pod("mqtt", 2), "mqtt-2");
        assert_eq!(
            selector_string("mqtt"),
            "app.kubernetes.io/instance=mqtt,app.kubernetes.io/name=mqtt-kafka-proxy"
        );
        let labels = labels("mqtt", "proxy");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGER);
        assert_eq!(labels[LABEL_COMPONENT], "proxy");
        assert_eq!(
            owned_selector("mqtt"),
            "app.kubernetes.io/instance=mqtt,app.kubernetes.io/managed-by=mqtt-kafka-operator"
        );
    }

    #[test]
    fn pod_ordinals_come_from_the_names_of_the_pods_that_exist() {
        let pods = [
            "mqtt-0",
            "mqtt-2",
            "mqtt-10",
            "mqtt-x",
            "mqtt-",
            "mqtt-web-1",
            "other-1",
            "mqtt--1",
            "mqtt-+3",
        ];
        assert_eq!(pod_ordinals("mqtt", pods), BTreeSet::from([0, 2, 10]));
    }

    #[test]
    fn per_pod_ordinals_keep_pods_that_still_exist_after_a_scale_down() {
        // Scaled from 3 to 1: mqtt-2 is handing its sessions over, mqtt-1 is gone already.
        assert_eq!(per_pod_ordinals(1, &BTreeSet::from([0, 2])), BTreeSet::from([0, 2]));
        // Scaled up: the new pods get their Services before they exist.
        assert_eq!(per_pod_ordinals(3, &BTreeSet::from([0])), BTreeSet::from([0, 1, 2]));
        assert!(per_pod_ordinals(0, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn metadata_carries_a_controller_owner_reference() {
        let proxy = minimal();
        let meta = metadata(&proxy, "x".into(), "config");
        assert_eq!(meta.namespace.as_deref(), Some("iot"));
        let owner = &meta.owner_references.as_ref().expect("owners")[0];
        assert_eq!(owner.kind, "MqttKafkaProxy");
        assert_eq!(owner.api_version, "mqttkafka.io/v1alpha1");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert!(is_owned_by(&meta, "uid-1"));
        assert!(!is_owned_by(&meta, "uid-2"));
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(stable_hash(b""), "cbf29ce484222325");
        assert_eq!(stable_hash(b"a"), "af63dc4c8601ec8c");
        assert_ne!(applied_hash(&json!({"a": 1})), applied_hash(&json!({"a": 2})));
    }

    #[test]
    fn subset_ignores_what_the_server_adds_but_not_what_someone_changed() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 1883}], "labels": {}}});
        let defaulted = json!({"spec": {"replicas": 2, "ports": [{"port": 1883, "protocol": "TCP"}], "x": 1}});
        assert!(is_subset(&desired, &defaulted));
        let changed = json!({"spec": {"replicas": 3, "ports": [{"port": 1883}]}});
        assert!(!is_subset(&desired, &changed));
        let extra_port = json!({"spec": {"replicas": 2, "ports": [{"port": 1883}, {"port": 8883}]}});
        assert!(!is_subset(&desired, &extra_port));
        assert!(is_subset(&json!({"n": 1}), &json!({"n": 1.0})));
        assert!(!is_subset(&json!({"a": "x"}), &json!({})));
    }
}
