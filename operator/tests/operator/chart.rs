//! The Helm chart and the plain manifests, checked with the real helm and kubectl against
//! the local apiserver: they render, the apiserver accepts them (server-side dry run), they
//! are not stale, and the chart's RBAC is enough for the operator to do its job.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::DeleteParams;
use kube::{Client, CustomResourceExt};
use mqtt_kafka_operator::crd::MqttKafkaProxy;
use mqtt_kafka_operator::election::LeaseSettings;
use mqtt_kafka_operator::resources::configmap;
use serde_json::json;

use crate::support::{Operator, condition_is, env, eventually, install_crd, tool};

fn repo() -> PathBuf {
    mqtt_kafka_testenv::repo_root()
}

fn kubeconfig() -> PathBuf {
    mqtt_kafka_testenv::TestEnv::load()
        .unwrap_or_else(|e| panic!("{e}"))
        .kubeconfig
}

/// Runs `program` in the repository with the environment's kubeconfig; returns stdout,
/// panics with stderr.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("KUBECONFIG", kubeconfig())
        .env("HELM", tool("helm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        "charts/mqtt-kafka-operator",
        "--namespace",
        namespace,
        "--kube-version",
        "1.33.0",
    ];
    args.extend_from_slice(extra);
    run(&tool("helm"), &args, None)
}

fn dry_run(manifests: &str) -> String {
    run(
        &tool("kubectl"),
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(manifests),
    )
}

#[tokio::test]
async fn the_chart_and_the_manifests_render_and_the_apiserver_accepts_them() {
    let env = env("op-chart").await;
    run(&tool("helm"), &["lint", "--strict", "charts/mqtt-kafka-operator"], None);

    // Every namespace (ClusterRole), with the CRD.
    let rendered = helm_template("mko", &env.namespace, &["--include-crds"]);
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "Role",
        "ServiceAccount",
        "Service",
    ] {
        assert!(rendered.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
    assert!(rendered.contains("replicas: 2"), "two replicas for leader election");
    let applied = dry_run(&rendered);
    assert!(
        applied.contains("deployment.apps/mko-mqtt-kafka-operator serverside-applied (server dry run)"),
        "{applied}"
    );
    // One namespace (a Role there).
    let namespaced = helm_template(
        "mko",
        &env.namespace,
        &["--set", &format!("watchNamespace={}", env.namespace)],
    );
    assert!(namespaced.contains(&format!(
        "name: WATCH_NAMESPACE\n              value: \"{}\"",
        env.namespace
    )));
    dry_run(&namespaced);

    // The chart's CRD is the one crdgen prints.
    let chart_crd =
        std::fs::read_to_string(repo().join("charts/mqtt-kafka-operator/crds/mqttkafkaproxies.mqttkafka.io.yaml"))
            .expect("chart CRD");
    assert_eq!(
        chart_crd,
        serde_saphyr::to_string(&MqttKafkaProxy::crd()).expect("crd yaml"),
        "the chart's CRD is stale: run `make crds` (charts/.../crds links to crds/)"
    );

    // The plain manifests are what the chart renders, and are accepted.
    let manifests = std::fs::read_to_string(repo().join("deploy/mqtt-kafka-operator.yaml")).expect("deploy manifests");
    assert_eq!(
        manifests,
        run(&repo().join("deploy/render.sh"), &[], None),
        "deploy/mqtt-kafka-operator.yaml is stale: run `deploy/render.sh > deploy/mqtt-kafka-operator.yaml`"
    );
    run(
        &tool("kubectl"),
        &["apply", "--server-side", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mqtt-kafka-system\n"),
    );
    dry_run(&manifests);

    // The examples pass admission and render a valid proxy config.
    install_crd(&env.client).await;
    for example in ["mqtt-kafka-proxy.yaml", "mqtt-kafka-proxy-full.yaml"] {
        let path = repo().join("deploy/examples").join(example);
        let text = std::fs::read_to_string(&path).expect("example");
        let out = run(
            &tool("kubectl"),
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-n",
                &env.namespace,
                "-f",
                "-",
            ],
            Some(&text),
        );
        assert!(out.contains("serverside-applied (server dry run)"), "{example}: {out}");
        let mut proxy: MqttKafkaProxy = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{example}: {e}"));
        proxy.metadata.namespace = Some(env.namespace.clone());
        if let Err(violations) = configmap::render(&proxy) {
            panic!("{example} renders an invalid proxy config: {violations:?}");
        }
    }
    env.cleanup().await;
}

/// A client acting as the chart's ServiceAccount.
async fn impersonating(user: &str, namespace: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn the_charts_rbac_is_enough_for_the_operator() {
    let mut env = env("op-rbac").await;
    install_crd(&env.client).await;
    // Install the chart's RBAC for real, for this namespace only, and run the operator as
    // its ServiceAccount.
    let release = env.namespace.clone();
    let fullname = format!("{release}-mqtt-kafka-operator");
    env.delete_at_end(format!("clusterrole/{fullname}-crd"));
    env.delete_at_end(format!("clusterrolebinding/{fullname}-crd"));
    let rendered = helm_template(
        &release,
        &env.namespace,
        &["--set", &format!("watchNamespace={}", env.namespace)],
    );
    run(
        &tool("kubectl"),
        &["apply", "--server-side", "-f", "-"],
        Some(&rendered),
    );
    let user = format!("system:serviceaccount:{}:{fullname}", env.namespace);
    let client = impersonating(&user, &env.namespace).await;
    mqtt_kafka_operator::controller::ensure_crd_installed(&client, MqttKafkaProxy::crd_name())
        .await
        .expect("the ServiceAccount may read the CRD");
    let operator = Operator::start(
        client,
        &env.namespace,
        Some(LeaseSettings {
            name: format!("{fullname}-leader"),
            namespace: env.namespace.clone(),
            identity: "rbac-test".into(),
            duration: Duration::from_secs(3),
            grace: Duration::from_secs(1),
        }),
    );

    // Everything the operator does: create each kind, write status and events, add the
    // finalizer, prune a per-pod Service and the PodDisruptionBudget, delete topics.
    let mut spec = env.spec("p");
    spec["replicas"] = json!(2);
    spec["cluster"] = json!({"serverReference": "{instance}.mqtt.example.com:1883"});
    spec["perPodServices"] = json!({"enabled": true, "type": "ClusterIP"});
    spec["kafka"]["topics"]["deletePolicy"] = json!("Delete");
    env.apply("p", spec.clone()).await;
    env.status_where("p", "reconciled without errors", |p| {
        condition_is(p, "TopicsReady", "True") && condition_is(p, "Degraded", "False")
    })
    .await;
    env.api::<StatefulSet>().get("p").await.expect("StatefulSet");
    spec["replicas"] = json!(1);
    spec["podDisruptionBudget"] = json!({"enabled": false});
    env.apply("p", spec).await;
    let services = env.api::<Service>();
    eventually("per-pod Service p-1 pruned", Duration::from_secs(15), || async {
        services.get_opt("p-1").await.ok()?.is_none().then_some(())
    })
    .await;
    env.proxies()
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("finalizer ran", Duration::from_secs(20), || async {
        env.proxies().get_opt("p").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        operator.ctx.metrics.errors.with_label_values(&["forbidden"]).get(),
        0,
        "no request was forbidden"
    );

    operator.stop().await;
    env.cleanup().await;
}
