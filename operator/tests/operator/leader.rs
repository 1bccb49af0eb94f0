//! Two operator replicas: one leads and reconciles, the other waits; when the leader stops,
//! the other takes over.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use mqtt_kafka_operator::election::LeaseSettings;
use serde_json::json;

use crate::support::{Operator, env, eventually};

/// Who holds the operator's Lease now.
async fn lease_holder(leases: &kube::Api<Lease>) -> Option<String> {
    leases
        .get("mqtt-kafka-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
}

fn lease(namespace: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: "mqtt-kafka-operator".into(),
        namespace: namespace.into(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        grace: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn two_operator_replicas_only_one_reconciles() {
    let env = env("op-leader").await;
    let a = Operator::start(
        env.client.clone(),
        &env.namespace,
        Some(lease(&env.namespace, "replica-a")),
    );
    let b = Operator::start(
        env.client.clone(),
        &env.namespace,
        Some(lease(&env.namespace, "replica-b")),
    );
    let (leader, standby) = eventually("one replica leads", Duration::from_secs(20), || async {
        match (a.ctx.metrics.leader.get(), b.ctx.metrics.leader.get()) {
            (1, 0) => Some(("replica-a", "replica-b")),
            (0, 1) => Some(("replica-b", "replica-a")),
            _ => None,
        }
    })
    .await;
    let (leading, waiting) = if leader == "replica-a" { (a, b) } else { (b, a) };
    let leases = env.api::<Lease>();
    let holder = lease_holder(&leases).await;
    assert_eq!(holder.as_deref(), Some(leader));

    env.apply("p", env.spec("p")).await;
    env.status_where("p", "reconciled", |p| p.status.is_some()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(leading.ctx.metrics.reconcile_count() > 0, "the leader reconciles");
    assert_eq!(waiting.ctx.metrics.reconcile_count(), 0, "the standby does not");
    assert_eq!(waiting.ctx.metrics.leader.get(), 0);

    // The leader stops (releasing the lease): the standby takes over and reconciles.
    leading.stop().await;
    eventually("the standby takes over", Duration::from_secs(15), || async {
        (waiting.ctx.metrics.leader.get() == 1).then_some(())
    })
    .await;
    let mut spec = env.spec("p");
    spec["replicas"] = json!(2);
    env.apply("p", spec).await;
    let sets = env.api::<StatefulSet>();
    eventually("the new leader applies the change", Duration::from_secs(15), || async {
        sets.get("p")
            .await
            .ok()
            .filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(2))
    })
    .await;
    assert!(waiting.ctx.metrics.reconcile_count() > 0);
    let holder = lease_holder(&leases).await;
    assert_eq!(holder.as_deref(), Some(standby));

    waiting.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_operator_refuses_to_start_without_its_crd() {
    let client = mqtt_kafka_testenv::kube().await.unwrap_or_else(|e| panic!("{e}"));
    let err = mqtt_kafka_operator::controller::ensure_crd_installed(&client, "nothings.mqttkafka.io")
        .await
        .expect_err("no such CRD");
    assert!(err.contains("nothings.mqttkafka.io is not installed"), "{err}");
    assert!(err.contains("kubectl apply --server-side -f crds/"), "{err}");
    crate::support::install_crd(&client).await;
    mqtt_kafka_operator::controller::ensure_crd_installed(&client, "mqttkafkaproxies.mqttkafka.io")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
