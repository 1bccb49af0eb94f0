//! A resource becomes objects, topics and status; changes roll out; an idle resource is left
//! alone; `kubectl scale` and HPAs work through the scale subresource.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use mqtt_kafka_operator::resources::{ANNOTATION_CONFIG_HASH, stable_hash};
use mqtt_kafka_proxy::config::Config;
use serde_json::json;

use crate::support::{condition, condition_is, env, eventually, kubectl, uid};

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.uid == uid
            && o.kind == "MqttKafkaProxy"
            && o.api_version == "mqttkafka.io/v1alpha1"
            && o.controller == Some(true)
            && o.block_owner_deletion == Some(true)
    })
}

fn template_hash(set: &StatefulSet) -> String {
    set.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_CONFIG_HASH).cloned())
        .unwrap_or_default()
}

fn image(set: &StatefulSet) -> String {
    set.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers[0].image.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_resource_becomes_every_object_with_owner_references_and_compacted_topics() {
    let env = env("op-objects").await;
    let operator = env.operator();
    let mut spec = env.spec("p");
    spec["replicas"] = json!(2);
    spec["listeners"] = json!([{"name": "mqtt", "port": 1883}, {"name": "ws", "protocol": "websocket", "port": 8080}]);
    spec["cluster"] = json!({"serverReference": "{instance}.mqtt.example.com:1883", "redirect": {"enabled": true}});
    spec["service"] = json!({"type": "NodePort", "annotations": {"example.com/team": "iot"}});
    spec["perPodServices"] = json!({"enabled": true, "annotations": {"external-dns.alpha.kubernetes.io/hostname": "{instance}.mqtt.example.com"}});
    spec["kafka"]["topics"]["messages"]["config"] = json!({"retention.ms": "3600000"});
    env.apply("p", spec).await;

    let proxy = env
        .status_where("p", "TopicsReady", |p| condition_is(p, "TopicsReady", "True"))
        .await;
    let uid = uid(&proxy);

    let sa = env.api::<ServiceAccount>().get("p").await.expect("ServiceAccount");
    assert!(owned_by(&sa.metadata, &uid));

    let cm = env.api::<ConfigMap>().get("p-config").await.expect("ConfigMap");
    assert!(owned_by(&cm.metadata, &uid));
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml");
    let config = Config::from_yaml_str(yaml).expect("the proxy reads the rendered config");
    assert_eq!(config.kafka.bootstrap_servers, env.bootstrap);
    assert_eq!(config.topics.sessions, env.topic("p-sessions"));
    assert_eq!(
        config.cluster.server_reference.as_deref(),
        Some("{instance}.mqtt.example.com:1883")
    );
    assert!(config.cluster.redirect.enabled);
    assert_eq!(config.listeners.len(), 2);

    let services = env.api::<Service>();
    let headless = services.get("p-headless").await.expect("headless Service");
    assert!(owned_by(&headless.metadata, &uid));
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    let client = services.get("p").await.expect("client Service");
    assert!(owned_by(&client.metadata, &uid));
    assert_eq!(client.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("NodePort"));
    assert_eq!(
        client.annotations().get("example.com/team").map(String::as_str),
        Some("iot")
    );
    for (ordinal, name) in ["p-0", "p-1"].iter().enumerate() {
        let pod_service = services.get(name).await.expect("per-pod Service");
        assert!(owned_by(&pod_service.metadata, &uid));
        assert_eq!(
            pod_service
                .annotations()
                .get("external-dns.alpha.kubernetes.io/hostname")
                .cloned(),
            Some(format!("p-{ordinal}.mqtt.example.com"))
        );
    }

    let set = env.api::<StatefulSet>().get("p").await.expect("StatefulSet");
    assert!(owned_by(&set.metadata, &uid));
    let set_spec = set.spec.as_ref().expect("spec");
    assert_eq!(set_spec.replicas, Some(2));
    assert_eq!(set_spec.service_name.as_deref(), Some("p-headless"));
    assert_eq!(
        template_hash(&set),
        stable_hash(yaml.as_bytes()),
        "the pods carry the config's hash"
    );
    let pod = set_spec.template.spec.as_ref().expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(container.env.as_ref().expect("env")[0].name, "MQTT_KAFKA_INSTANCE_ID");
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("p"));

    let pdb = env
        .api::<PodDisruptionBudget>()
        .get("p")
        .await
        .expect("PodDisruptionBudget");
    assert!(owned_by(&pdb.metadata, &uid));

    // Topics: created, sessions and retained compacted, the spec's configs applied.
    assert_eq!(
        env.topic_config(&env.topic("p-sessions"), "cleanup.policy")
            .await
            .as_deref(),
        Some("compact")
    );
    assert_eq!(
        env.topic_config(&env.topic("p-retained"), "cleanup.policy")
            .await
            .as_deref(),
        Some("compact")
    );
    assert_eq!(
        env.topic_config(&env.topic("p-messages"), "cleanup.policy")
            .await
            .as_deref(),
        Some("delete")
    );
    assert_eq!(
        env.topic_config(&env.topic("p-messages"), "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );
    assert_eq!(env.partitions(&env.topic("p-sessions")), Some(3));

    // Status: what a person and an HPA need.
    let proxy = env
        .status_where("p", "2 pods exist and have references", |p| {
            // References follow the pods the operator has seen, which can trail the
            // StatefulSet's count by a reconcile.
            p.status
                .as_ref()
                .is_some_and(|s| s.replicas == 2 && s.server_references.len() == 2)
        })
        .await;
    let status = proxy.status.as_ref().expect("status");
    assert_eq!(status.ready_replicas, 0, "no kubelet here: pods never become ready");
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=p,app.kubernetes.io/name=mqtt-kafka-proxy")
    );
    let references: Vec<(&str, &str)> = status
        .server_references
        .iter()
        .map(|r| (r.pod.as_str(), r.server_reference.as_str()))
        .collect();
    assert_eq!(
        references,
        [
            ("p-0", "p-0.mqtt.example.com:1883"),
            ("p-1", "p-1.mqtt.example.com:1883")
        ]
    );
    let topics: Vec<(&str, &str, i32, bool)> = status
        .topics
        .iter()
        .map(|t| (t.role.as_str(), t.name.as_str(), t.partitions, t.ready))
        .collect();
    let (s, r, m) = (
        env.topic("p-sessions"),
        env.topic("p-retained"),
        env.topic("p-messages"),
    );
    assert_eq!(
        topics,
        [
            ("sessions", s.as_str(), 3, true),
            ("retained", r.as_str(), 3, true),
            ("messages", m.as_str(), 3, true)
        ]
    );
    let ready = condition(&proxy, "Ready").expect("Ready");
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "PodsNotReady"));
    assert!(ready.2.contains("kubectl -n"), "{}", ready.2);
    assert!(condition_is(&proxy, "Degraded", "False"));
    assert!(condition_is(&proxy, "Progressing", "True"));
    let events = env.event_reasons("p").await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "TopicCreated" && note.contains(&s)),
        "{events:?}"
    );

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_spec_change_rolls_the_statefulset_and_an_idle_resource_is_left_alone() {
    let env = env("op-change").await;
    let operator = env.operator();
    env.apply("p", env.spec("p")).await;
    env.status_where("p", "settled", |p| {
        condition_is(p, "TopicsReady", "True") && p.status.as_ref().is_some_and(|s| s.replicas == 1)
    })
    .await;
    let sets = env.api::<StatefulSet>();
    let first = sets.get("p").await.expect("StatefulSet");

    // Idle: the operator keeps reconciling (resync every 2 s) but writes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let versions = || async {
        let mut v = BTreeMap::new();
        v.insert("mkp", env.proxies().get("p").await.expect("mkp").resource_version());
        v.insert("sts", sets.get("p").await.expect("sts").resource_version());
        v.insert(
            "cm",
            env.api::<ConfigMap>()
                .get("p-config")
                .await
                .expect("cm")
                .resource_version(),
        );
        v.insert(
            "svc",
            env.api::<Service>().get("p").await.expect("svc").resource_version(),
        );
        v.insert(
            "headless",
            env.api::<Service>()
                .get("p-headless")
                .await
                .expect("svc")
                .resource_version(),
        );
        v.insert(
            "pdb",
            env.api::<PodDisruptionBudget>()
                .get("p")
                .await
                .expect("pdb")
                .resource_version(),
        );
        v.insert(
            "sa",
            env.api::<ServiceAccount>()
                .get("p")
                .await
                .expect("sa")
                .resource_version(),
        );
        v
    };
    let before = versions().await;
    let reconciles = operator.ctx.metrics.reconcile_count();
    let applied = operator.ctx.metrics.write_count("applied");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(versions().await, before, "no object changed while nothing changed");
    assert!(
        operator.ctx.metrics.reconcile_count() >= reconciles + 2,
        "the operator kept reconciling on its resync"
    );
    assert_eq!(operator.ctx.metrics.write_count("applied"), applied, "without writing");

    // An image change reaches the StatefulSet; the config, and so its hash, stay.
    let mut spec = env.spec("p");
    spec["image"] = json!("registry.example/mqtt-kafka-proxy:next");
    let applied_at = Instant::now();
    env.apply("p", spec.clone()).await;
    let updated = eventually(
        "the StatefulSet runs the new image",
        Duration::from_secs(10),
        || async {
            sets.get("p")
                .await
                .ok()
                .filter(|s| image(s) == "registry.example/mqtt-kafka-proxy:next")
        },
    )
    .await;
    let latency = applied_at.elapsed();
    println!("apply of a spec change -> StatefulSet updated: {latency:?}");
    assert!(latency < Duration::from_secs(5), "took {latency:?}");
    assert_eq!(template_hash(&updated), template_hash(&first));

    // A config change changes the ConfigMap and the pods' hash (so they roll).
    spec["mqtt"] = json!({"receiveMaximum": 10});
    env.apply("p", spec.clone()).await;
    let rolled = eventually("the config hash changes", Duration::from_secs(10), || async {
        sets.get("p")
            .await
            .ok()
            .filter(|s| template_hash(s) != template_hash(&first))
    })
    .await;
    let cm = env.api::<ConfigMap>().get("p-config").await.expect("cm");
    let yaml = cm.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config");
    assert!(yaml.contains("receiveMaximum: 10"), "{yaml}");
    assert_eq!(template_hash(&rolled), stable_hash(yaml.as_bytes()));

    // Scaling does not touch the pod template: no pod rolls.
    spec["replicas"] = json!(3);
    env.apply("p", spec).await;
    let scaled = eventually("3 replicas", Duration::from_secs(10), || async {
        sets.get("p")
            .await
            .ok()
            .filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(3))
    })
    .await;
    assert_eq!(
        scaled.spec.as_ref().map(|s| &s.template),
        rolled.spec.as_ref().map(|s| &s.template)
    );

    // Someone edits an owned object: the operator puts it back.
    sets.patch(
        "p",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"replicas": 7}})),
    )
    .await
    .expect("patch");
    eventually("the operator restores replicas", Duration::from_secs(10), || async {
        sets.get("p")
            .await
            .ok()
            .filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(3))
    })
    .await;

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn kubectl_scale_changes_replicas_status_and_per_pod_services_and_an_hpa_can_target_it() {
    let env = env("op-scale").await;
    let operator = env.operator();
    let mut spec = env.spec("p");
    spec["cluster"] = json!({"serverReference": "{instance}.mqtt.example.com:1883"});
    spec["perPodServices"] = json!({"enabled": true, "type": "ClusterIP"});
    env.apply("p", spec).await;
    env.status_where("p", "1 pod", |p| p.status.as_ref().is_some_and(|s| s.replicas == 1))
        .await;

    kubectl(&["-n", &env.namespace, "scale", "mkp/p", "--replicas=3"]);
    let proxy = env
        .status_where("p", "3 pods with references", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.replicas == 3 && s.server_references.len() == 3)
        })
        .await;
    assert_eq!(proxy.spec.replicas, 3);
    assert_eq!(proxy.status.as_ref().map(|s| s.server_references.len()), Some(3));
    let set = env.api::<StatefulSet>().get("p").await.expect("sts");
    assert_eq!(set.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let services = env.api::<Service>();
    for name in ["p-0", "p-1", "p-2"] {
        services
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("per-pod Service {name}: {e}"));
    }
    let scale = kubectl(&[
        "get",
        "--raw",
        &format!(
            "/apis/mqttkafka.io/v1alpha1/namespaces/{}/mqttkafkaproxies/p/scale",
            env.namespace
        ),
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("scale json");
    assert_eq!(scale["spec"]["replicas"], json!(3));
    assert_eq!(scale["status"]["replicas"], json!(3));
    assert_eq!(
        scale["status"]["selector"],
        json!("app.kubernetes.io/instance=p,app.kubernetes.io/name=mqtt-kafka-proxy")
    );

    // Scaling down: a pod that is still terminating (handing its sessions over; here a
    // finalizer holds it) keeps its per-pod Service and its server reference until it is
    // gone; the Services of the pods that went away are deleted.
    let pods = env.api::<Pod>();
    let hold = json!({"metadata": {"finalizers": ["mqttkafka.io/test-hold"]}});
    pods.patch("p-2", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .expect("hold p-2");
    kubectl(&["-n", &env.namespace, "scale", "mkp/p", "--replicas=1"]);
    eventually(
        "p-1's Service pruned, p-2 terminating",
        Duration::from_secs(15),
        || async {
            let p1 = services.get_opt("p-1").await.ok()?;
            let p2 = pods.get_opt("p-2").await.ok()??;
            (p1.is_none() && p2.metadata.deletion_timestamp.is_some()).then_some(())
        },
    )
    .await;
    let held = env
        .status_where("p", "references of the pods that exist", |p| {
            p.status.as_ref().is_some_and(|s| {
                s.server_references.iter().map(|r| r.pod.as_str()).collect::<Vec<_>>() == ["p-0", "p-2"]
            })
        })
        .await;
    assert_eq!(held.spec.replicas, 1);
    assert!(
        services.get_opt("p-2").await.expect("get").is_some(),
        "the terminating pod keeps its per-pod Service"
    );
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch("p-2", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("release p-2");
    eventually(
        "p-2's Service pruned once the pod is gone",
        Duration::from_secs(15),
        || async { services.get_opt("p-2").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(services.get_opt("p-0").await.expect("get").is_some());
    let proxy = env
        .status_where("p", "1 pod with a reference", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.replicas == 1 && s.server_references.len() == 1)
        })
        .await;
    assert_eq!(proxy.status.as_ref().map(|s| s.server_references.len()), Some(1));

    // An HPA reads the scale subresource (kube-controller-manager's HPA controller says
    // AbleToScale; without a metrics server it cannot compute a recommendation).
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "mqttkafka.io/v1alpha1", "kind": "MqttKafkaProxy", "name": "p"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    }))
    .expect("hpa");
    let hpas = env.api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>();
    hpas.create(&Default::default(), &hpa).await.expect("create HPA");
    eventually("the HPA can scale the resource", Duration::from_secs(40), || async {
        let hpa = hpas.get("p").await.ok()?;
        hpa.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "AbleToScale" && c.status == "True")
    })
    .await;

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_invalid_proxy_config_is_reported_in_status_naming_the_field() {
    let env = env("op-invalid").await;
    let operator = env.operator();
    let mut spec = env.spec("p");
    // Valid for the schema, not for the proxy: a clients pattern needs {identity}.
    spec["clients"] = json!(["place/#"]);
    env.apply("p", spec).await;
    let proxy = env
        .status_where("p", "Degraded", |p| condition_is(p, "Degraded", "True"))
        .await;
    let degraded = condition(&proxy, "Degraded").expect("Degraded");
    assert_eq!(degraded.1, "InvalidSpec");
    assert!(
        degraded.2.contains("spec.clients[0]: must contain {identity}"),
        "{}",
        degraded.2
    );
    assert!(
        env.api::<StatefulSet>().get_opt("p").await.expect("get").is_none(),
        "an invalid spec changes nothing"
    );
    assert!(env.event_reasons("p").await.iter().any(|(r, _)| r == "InvalidSpec"));

    // Fixing it recovers.
    let mut spec = env.spec("p");
    spec["clients"] = json!(["place/{identity}/#"]);
    env.apply("p", spec).await;
    env.status_where("p", "recovered", |p| condition_is(p, "Degraded", "False"))
        .await;
    env.api::<StatefulSet>()
        .get("p")
        .await
        .expect("StatefulSet created once valid");

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_the_resource_collects_its_objects_and_keeps_its_topics_unless_asked() {
    let env = env("op-delete").await;
    let operator = env.operator();
    env.apply("keep", env.spec("keep")).await;
    let mut spec = env.spec("drop");
    spec["kafka"]["topics"]["deletePolicy"] = json!("Delete");
    env.apply("drop", spec).await;
    for name in ["keep", "drop"] {
        env.status_where(name, "topics ready", |p| condition_is(p, "TopicsReady", "True"))
            .await;
    }
    let keep = env.proxies().get("keep").await.expect("keep");
    assert!(
        keep.finalizers().is_empty(),
        "a resource that keeps its topics needs no finalizer"
    );
    let drop = env.proxies().get("drop").await.expect("drop");
    assert_eq!(drop.finalizers(), ["mqttkafka.io/delete-topics"]);
    env.api::<StatefulSet>().get("keep").await.expect("sts");

    // The garbage collector of kube-controller-manager deletes what the resource owns.
    env.proxies().delete("keep", &Default::default()).await.expect("delete");
    eventually("owned objects garbage-collected", Duration::from_secs(60), || async {
        let gone = env.api::<StatefulSet>().get_opt("keep").await.ok()?.is_none()
            && env.api::<ConfigMap>().get_opt("keep-config").await.ok()?.is_none()
            && env.api::<Service>().get_opt("keep").await.ok()?.is_none()
            && env.api::<Service>().get_opt("keep-headless").await.ok()?.is_none()
            && env.api::<PodDisruptionBudget>().get_opt("keep").await.ok()?.is_none()
            && env.api::<ServiceAccount>().get_opt("keep").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert_eq!(env.partitions(&env.topic("keep-sessions")), Some(3), "topics are kept");
    assert_eq!(env.partitions(&env.topic("keep-messages")), Some(3), "topics are kept");

    // deletePolicy: Delete: the finalizer deletes the topics, then lets the resource go.
    env.proxies().delete("drop", &Default::default()).await.expect("delete");
    eventually("resource gone", Duration::from_secs(30), || async {
        env.proxies().get_opt("drop").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("topics deleted", Duration::from_secs(30), || async {
        (env.partitions(&env.topic("drop-sessions")).is_none() && env.partitions(&env.topic("drop-messages")).is_none())
            .then_some(())
    })
    .await;
    assert_eq!(drop.meta().namespace.as_deref(), Some(env.namespace.as_str()));

    operator.stop().await;
    env.cleanup().await;
}
