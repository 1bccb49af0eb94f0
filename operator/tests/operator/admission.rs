//! Invalid resources are refused by the apiserver with a message naming the field: the
//! CRD's schema and CEL rules, no operator needed.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use mqtt_kafka_operator::crd::MqttKafkaProxy;
use serde_json::{Value, json};

use crate::support::{TestEnv, env};

async fn rejection(env: &TestEnv, name: &str, spec: Value) -> String {
    let object = json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaProxy",
        "metadata": {"name": name, "namespace": env.namespace},
        "spec": spec
    });
    // A plain create, as `kubectl create` does: the object reaches validation as sent.
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &ApiResource::erase::<MqttKafkaProxy>(&()),
    );
    let object: DynamicObject = serde_json::from_value(object).expect("object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => panic!("{name} was accepted"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(err) => panic!("{name}: unexpected error {err}"),
    }
}

fn with(mut spec: Value, key: &str, value: Value) -> Value {
    spec[key] = value;
    spec
}

#[tokio::test]
async fn invalid_resources_are_rejected_at_admission_naming_the_field() {
    let env = env("op-admission").await;
    let base = env.spec("p");

    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "redirect-without-v5",
            with(
                with(base.clone(), "mqtt", json!({"versions": ["3.1.1"]})),
                "cluster",
                json!({"serverReference": "{instance}.example.com:1883", "redirect": {"enabled": true}}),
            ),
            &["spec.cluster.redirect.enabled", "needs \"5.0\" in mqtt.versions"],
        ),
        (
            "redirect-without-reference",
            with(base.clone(), "cluster", json!({"redirect": {"enabled": true}})),
            &["spec.cluster.redirect.enabled", "needs cluster.serverReference"],
        ),
        (
            "listener-reference-without-instance",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "mqtt", "port": 1883, "serverReference": "mqtt.example.com:1883"}]),
            ),
            &["spec.listeners[0].serverReference", "must contain {instance}"],
        ),
        (
            "tls-without-secret",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "mqtt", "port": 1883}, {"name": "mqtts", "protocol": "tls", "port": 8883}]),
            ),
            &["spec.listeners[1].tls", "needs tls.secretName"],
        ),
        (
            "tls-on-tcp",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "mqtt", "port": 1883, "tls": {"secretName": "s"}}]),
            ),
            &["spec.listeners[0].tls", "only allowed on a listener with protocol tls"],
        ),
        (
            "client-identity-without-client-ca",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "mqtts", "protocol": "tls", "port": 8883,
                        "tls": {"secretName": "s", "clientIdentity": "subject-cn"}}]),
            ),
            &["spec.listeners[0].tls.clientIdentity", "needs clientCaSecret"],
        ),
        (
            "duplicate-listener",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "mqtt", "port": 1883}, {"name": "mqtt", "port": 1884}]),
            ),
            &["spec.listeners[1]", "Duplicate value"],
        ),
        (
            "duplicate-port",
            with(
                base.clone(),
                "listeners",
                json!([{"name": "a", "port": 1883}, {"name": "b", "port": 1883}]),
            ),
            &["spec.listeners", "port must be unique"],
        ),
        (
            "admin-port",
            with(base.clone(), "listeners", json!([{"name": "mqtt", "port": 9090}])),
            &["spec.listeners[0].port", "health and metrics port"],
        ),
        (
            "negative-replicas",
            with(base.clone(), "replicas", json!(-1)),
            &["spec.replicas", "should be greater than or equal to 0"],
        ),
        (
            "reference-without-instance",
            with(
                base.clone(),
                "cluster",
                json!({"serverReference": "mqtt.example.com:1883"}),
            ),
            &["spec.cluster.serverReference", "must contain {instance}"],
        ),
        (
            "per-pod-without-reference",
            with(base.clone(), "perPodServices", json!({"enabled": true})),
            &["spec.perPodServices.enabled", "needs cluster.serverReference"],
        ),
        (
            "sessions-not-compacted",
            {
                let mut spec = base.clone();
                spec["kafka"]["topics"]["sessions"]["config"] = json!({"cleanup.policy": "delete"});
                spec
            },
            &["spec.kafka.topics.sessions", "must have cleanup.policy=compact"],
        ),
        (
            "same-topic-twice",
            {
                let mut spec = base.clone();
                spec["kafka"]["topics"]["messages"]["name"] = spec["kafka"]["topics"]["sessions"]["name"].clone();
                spec
            },
            &["spec.kafka.topics.sessions.name", "must have different names"],
        ),
        (
            "bad-topic-name",
            {
                let mut spec = base.clone();
                spec["kafka"]["topics"]["messages"]["name"] = json!("mqtt messages");
                spec
            },
            &["spec.kafka.topics.messages.name", "should match"],
        ),
        (
            "both-pdb-bounds",
            with(
                base.clone(),
                "podDisruptionBudget",
                json!({"minAvailable": 1, "maxUnavailable": 1}),
            ),
            &[
                "spec.podDisruptionBudget",
                "at most one of minAvailable and maxUnavailable",
            ],
        ),
        (
            "jwt-keys-and-secret",
            with(
                base.clone(),
                "authorization",
                json!({"jwt": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "a"}], "jwksSecret": {"name": "s", "key": "k"}}}),
            ),
            &[
                "spec.authorization.jwt",
                "set at most one of keys, jwksSecret, jwksConfigMap and jwksUrl",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, fragments) in cases {
        let message = rejection(&env, name, spec).await;
        for fragment in fragments {
            if !message.contains(fragment) {
                failures.push(format!("{name}: {fragment:?} not in {message:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Unknown fields are refused with strict field validation (what kubectl asks for).
    let object = json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaProxy",
        "metadata": {"name": "unknown-field", "namespace": env.namespace},
        "spec": with(base.clone(), "replicaz", json!(3))
    });
    let strict = PatchParams::apply("tests").validation(ValidationDirective::Strict);
    match env
        .proxies()
        .patch("unknown-field", &strict, &Patch::Apply(&object))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains(".spec.replicaz"), "{}", status.message)
        }
        other => panic!("an unknown field was not refused: {other:?}"),
    }

    // Names that cannot become object names are refused naming the limit, not later as
    // ApplyFailed.
    let long = format!("p{}", "x".repeat(52));
    let names: [(&str, &[&str]); 3] = [
        ("with.dot", &["metadata.name", "no dots"]),
        ("1leading-digit", &["metadata.name", "start with a lower-case letter"]),
        (
            &long,
            &["metadata.name", "at most 52 characters", "controller-revision-hash"],
        ),
    ];
    for (name, fragments) in names {
        let message = rejection(&env, name, base.clone()).await;
        for fragment in fragments {
            assert!(message.contains(fragment), "{name}: {fragment:?} not in {message:?}");
        }
    }
    // 52 characters are fine.
    env.apply(&format!("p{}", "x".repeat(51)), base.clone()).await;
    // wss: a websocket listener with tls, and a server reference of its own.
    env.apply(
        "wss",
        with(
            base.clone(),
            "listeners",
            json!([
                {"name": "mqtt", "port": 1883},
                {"name": "wss", "protocol": "websocket", "port": 8443, "tls": {"secretName": "cert"},
                 "serverReference": "{instance}.ws.example.com:443"}
            ]),
        ),
    )
    .await;

    // The base spec itself is accepted.
    env.apply("p", base).await;
    env.cleanup().await;
}
