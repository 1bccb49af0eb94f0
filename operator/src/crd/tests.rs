//! Unit tests of `crd`.

use super::*;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn crd_json() -> Value {
    serde_json::to_value(MqttKafkaProxy::crd()).expect("crd json")
}

fn spec_schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crd_has_the_names_and_subresources_users_rely_on() {
    let crd = MqttKafkaProxy::crd();
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["mkp".to_owned()][..]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Replicas", "Ready", "Topics", "Status", "Age"]);
}

#[test]
fn cross_field_rules_are_cel_validations_naming_the_field() {
    let spec = spec_schema();
    let spec_rules = rules(&spec);
    assert!(spec_rules.iter().any(|r| r.contains("'5.0'")), "{spec_rules:?}");
    let paths: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["fieldPath"].as_str())
        .collect();
    assert!(paths.contains(&".cluster.redirect.enabled"), "{paths:?}");
    let listener = &spec["properties"]["listeners"]["items"];
    assert!(rules(listener).iter().any(|r| r.contains("has(self.tls)")));
    assert_eq!(spec["properties"]["listeners"]["x-kubernetes-list-type"], json!("map"));
    assert_eq!(
        spec["properties"]["listeners"]["x-kubernetes-list-map-keys"],
        json!(["name"])
    );
    let sessions = &spec["properties"]["kafka"]["properties"]["topics"]["properties"]["sessions"];
    assert!(rules(sessions).iter().any(|r| r.contains("cleanup.policy")));
}

#[test]
fn names_that_cannot_name_the_objects_are_refused_by_root_rules() {
    let root = &crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let root_rules = rules(root);
    assert!(
        root_rules.contains(&format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}")),
        "{root_rules:?}"
    );
    assert!(
        root_rules.iter().any(|r| r.contains("^[a-z]([-a-z0-9]*[a-z0-9])?$")),
        "{root_rules:?}"
    );
    // The longest accepted name still makes valid object names.
    let name = "a".repeat(MAX_NAME_LENGTH);
    assert!(
        format!("{name}-{}", "x".repeat(10)).len() <= 63,
        "controller-revision-hash label"
    );
    assert!(crate::resources::names::headless(&name).len() <= 63, "headless Service");
    assert!(
        crate::resources::names::pod(&name, 9999).len() <= 63,
        "pod and per-pod Service"
    );
}

/// Paths of the objects in `schema` that could name something in another namespace:
/// a `name` next to a `namespace`.
fn cross_namespace_references(schema: &Value, path: &str, found: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties")
                && properties.contains_key("name")
                && properties.contains_key("namespace")
            {
                found.push(path.to_owned());
            }
            for (key, value) in map {
                cross_namespace_references(value, &format!("{path}.{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                cross_namespace_references(item, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_stays_in_the_resources_namespace() {
    // Secrets and everything else are named without a namespace: the pods (which mount
    // and read them) live in the resource's namespace, and so does every lookup.
    let mut found = Vec::new();
    cross_namespace_references(&spec_schema(), "spec", &mut found);
    assert!(found.is_empty(), "references that can leave the namespace: {found:?}");
}

#[test]
fn defaults_are_in_the_schema_so_the_apiserver_fills_them() {
    let spec = spec_schema();
    assert_eq!(spec["properties"]["replicas"]["default"], json!(1));
    assert_eq!(spec["properties"]["replicas"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(
        spec["properties"]["listeners"]["default"],
        json!([{"name": "mqtt", "protocol": "tcp", "port": 1883}])
    );
}

#[test]
fn a_minimal_spec_reads_with_every_default() {
    let proxy: MqttKafkaProxy = serde_json::from_value(json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaProxy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"kafka": {"bootstrapServers": "k:9092"}}
    }))
    .expect("minimal spec");
    assert_eq!(proxy.spec.replicas, 1);
    assert_eq!(proxy.spec.image(), DEFAULT_IMAGE);
    assert_eq!(proxy.spec.listeners, default_listeners());
    assert_eq!(proxy.spec.kafka.topics.sessions.name, "mqtt-sessions");
    assert_eq!(proxy.spec.kafka.topics.sessions.partitions, 12);
    assert_eq!(proxy.spec.kafka.topics.delete_policy, TopicDeletePolicy::Retain);
    assert!(proxy.spec.pod_disruption_budget.enabled);
    assert!(!proxy.spec.per_pod_services_enabled());
}
