//! Smoke tests: the environment's apiserver and controller manager are real and kube-rs
//! can use them.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use mqtt_kafka_testenv::{kube, unique_name};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A throwaway resource type, registered by the test itself.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(group = "smoke.mqttkafka.io", version = "v1", kind = "SmokeWidget", namespaced)]
struct SmokeWidgetSpec {
    size: i32,
}

const FIELD_MANAGER: &str = "mqtt-kafka-smoke";

async fn client() -> Client {
    kube().await.unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh namespace for one test; `delete_namespace` removes it with everything in it.
async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

async fn delete_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

#[tokio::test]
async fn a_crd_is_registered_an_object_created_and_its_change_watched() {
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SmokeWidget::crd();
    let crd_name = crd.name_any();
    crds.patch(
        &crd_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &crd_name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watch CRD");

    let ns = namespace(&client, "smoke-crd").await;
    let widgets: Api<SmokeWidget> = Api::namespaced(client.clone(), &ns);
    let created = widgets
        .create(
            &PostParams::default(),
            &SmokeWidget::new("w", SmokeWidgetSpec { size: 1 }),
        )
        .await
        .expect("create widget");
    assert!(created.metadata.uid.is_some(), "the apiserver assigned a uid");

    let mut sizes = watcher(widgets.clone(), watcher::Config::default().fields("metadata.name=w"))
        .applied_objects()
        .map_ok(|w| w.spec.size)
        .boxed();
    assert_eq!(sizes.try_next().await.expect("watch"), Some(1));
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("patch widget");
    let changed = tokio::time::timeout(Duration::from_secs(30), sizes.try_next())
        .await
        .expect("change seen within 30 s")
        .expect("watch");
    assert_eq!(changed, Some(2));

    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_statefulset_gets_its_pods_from_the_controller_manager() {
    let client = client().await;
    let ns = namespace(&client, "smoke-sts").await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    // Parallel pod management: no kubelet runs here, so pods never become ready, and the
    // default OrderedReady policy would stop after the first.
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .expect("statefulset");
    let created = sets
        .create(&PostParams::default(), &set)
        .await
        .expect("create statefulset");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut names = Vec::new();
    for _ in 0..60 {
        names = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == created.metadata.uid.as_ref())
            })
            .map(|p| p.name_any())
            .collect();
        names.sort();
        if names.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        names,
        ["web-0", "web-1"],
        "kube-controller-manager created the StatefulSet's pods within 30 s"
    );

    delete_namespace(&client, &ns).await;
}
