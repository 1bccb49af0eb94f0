//! The StatefulSet of proxy pods.
//!
//! Nothing in the pod template depends on the replica count: each pod learns its name (its
//! instance id) from the downward API and derives its server reference from the template in
//! the shared config, so scaling creates or removes pods without rolling the others. The
//! template carries the config's hash, so a config change (and only a config or template
//! change) rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, SleepAction, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::configmap::{
    CLIENT_CA_DIR, CLIENT_CA_FILE, CONFIG_DIR, CONFIG_KEY, JWKS_DIR, JWKS_FILE, TLS_DIR, config_path, secret_properties,
};
use super::services::ADMIN_PORT_NAME;
use super::{ANNOTATION_CONFIG_HASH, labels, metadata, names, selector_labels};
use crate::crd::{ADMIN_PORT, MqttKafkaProxy};

/// Name of the proxy container.
pub const CONTAINER: &str = "proxy";
/// The proxy reads its instance id from this variable (`--instance-id`).
pub const INSTANCE_ID_ENV: &str = "MQTT_KAFKA_INSTANCE_ID";
/// Default seconds a terminating pod has to hand its sessions to the survivors: the proxy
/// disconnects its clients at a bounded rate (DESIGN section 4) and commits its session
/// positions before it leaves the consumer group.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 60;
/// Seconds a deleted pod keeps serving before it is told to stop (preStop sleep), at most
/// a sixth of the grace period: time for the Service's endpoints to drop it, so that new
/// connections through the Service stop reaching it before it closes its listeners (the
/// local e2e run saw "connection refused" through the ClusterIP without it).
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// The unprivileged user of the proxy image (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn container_env(proxy: &MqttKafkaProxy) -> Vec<EnvVar> {
    let mut env = vec![env_from_field(INSTANCE_ID_ENV, "metadata.name")];
    for secret in secret_properties(&proxy.spec.kafka) {
        env.push(EnvVar {
            name: secret.variable.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.secret.name,
                    key: secret.secret.key,
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    // The operator's variables come first and win: a user variable of the same name is dropped.
    for extra in &proxy.spec.pod.env {
        if !env.iter().any(|e| e.name == extra.name) {
            env.push(extra.clone());
        }
    }
    env
}

fn volumes_and_mounts(proxy: &MqttKafkaProxy) -> (Vec<Volume>, Vec<VolumeMount>) {
    let name = proxy.name_any();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&name),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.into(),
                    path: CONFIG_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // The root filesystem is read-only; librdkafka and the runtime may want a scratch dir.
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    for listener in &proxy.spec.listeners {
        if let Some(tls) = &listener.tls {
            let volume = format!("tls-{}", listener.name);
            volumes.push(Volume {
                name: volume.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(tls.secret_name.clone()),
                    items: Some(
                        ["tls.crt", "tls.key"]
                            .iter()
                            .map(|k| KeyToPath {
                                key: (*k).into(),
                                path: (*k).into(),
                                ..KeyToPath::default()
                            })
                            .collect(),
                    ),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: volume,
                mount_path: format!("{TLS_DIR}/{}", listener.name),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            // Mounted whole as well (no subPath): a rotated CA bundle reaches the proxy.
            if let Some(ca) = &tls.client_ca_secret {
                let volume = format!("client-ca-{}", listener.name);
                volumes.push(Volume {
                    name: volume.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(ca.name.clone()),
                        items: Some(vec![KeyToPath {
                            key: ca.key.clone(),
                            path: CLIENT_CA_FILE.into(),
                            ..KeyToPath::default()
                        }]),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    name: volume,
                    mount_path: format!("{CLIENT_CA_DIR}/{}", listener.name),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
            }
        }
    }
    let jwt = proxy.spec.authorization.as_ref().and_then(|a| a.jwt.as_ref());
    // Mounted whole (no subPath), so that Kubernetes updates the file when the Secret or
    // ConfigMap changes and the proxy reads the rotated keys without a restart.
    let jwks_volume = match (
        jwt.and_then(|j| j.jwks_secret.as_ref()),
        jwt.and_then(|j| j.jwks_config_map.as_ref()),
    ) {
        (Some(secret), _) => Some(Volume {
            name: "jwks".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: JWKS_FILE.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }),
        (None, Some(map)) => Some(Volume {
            name: "jwks".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: map.name.clone(),
                items: Some(vec![KeyToPath {
                    key: map.key.clone(),
                    path: JWKS_FILE.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }),
        (None, None) => None,
    };
    if let Some(volume) = jwks_volume {
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: "jwks".into(),
            mount_path: JWKS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// Prefer one pod per node, so that a node failure takes as few session partitions as
/// possible; "prefer" so that small clusters still run every replica.
fn default_affinity(name: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(name)),
                        ..LabelSelector::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn none_if_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    if items.is_empty() { None } else { Some(items) }
}

/// The StatefulSet; `config_hash` is the hash of the rendered proxy config.
pub fn statefulset(proxy: &MqttKafkaProxy, config_hash: &str) -> StatefulSet {
    let name = proxy.name_any();
    let pod = &proxy.spec.pod;
    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(labels(&name, "proxy"));
    let mut pod_annotations = pod.annotations.clone();
    pod_annotations.insert(ANNOTATION_CONFIG_HASH.into(), config_hash.into());
    let (volumes, mounts) = volumes_and_mounts(proxy);

    let mut ports: Vec<ContainerPort> = proxy
        .spec
        .listeners
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.name.clone()),
            container_port: l.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some(ADMIN_PORT_NAME.into()),
        container_port: i32::from(ADMIN_PORT),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });

    let grace = pod
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS);
    let pre_stop_sleep = (grace / 6).min(PRE_STOP_SLEEP_SECONDS);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(proxy.spec.image().into()),
        image_pull_policy: proxy.spec.image_pull_policy.map(|p| p.as_str().into()),
        args: Some(vec!["--config".into(), config_path()]),
        env: Some(container_env(proxy)),
        ports: Some(ports),
        // Ready once the proxy has loaded the retained and session views and joined the
        // cluster; alive as long as its event loop answers.
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Loading the views of a large sessions topic can take a while: the startup probe
        // holds liveness off for up to two minutes.
        startup_probe: Some(http_probe("/healthz", 2, 60)),
        resources: pod.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        lifecycle: (pre_stop_sleep > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: pre_stop_sleep,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        service_account_name: Some(names::main(&name)),
        // The proxy never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        // Service links would put KAFKA_* variables into the environment for a Service
        // named "kafka", and the proxy reads KAFKA_BOOTSTRAP.
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(grace),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        affinity: Some(pod.affinity.clone().unwrap_or_else(|| default_affinity(&name))),
        tolerations: none_if_empty(pod.tolerations.clone()),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        topology_spread_constraints: none_if_empty(pod.topology_spread_constraints.clone()),
        priority_class_name: pod.priority_class_name.clone(),
        image_pull_secrets: none_if_empty(pod.image_pull_secrets.clone()),
        volumes: Some(volumes),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: metadata(proxy, names::main(&name), "proxy"),
        spec: Some(StatefulSetSpec {
            replicas: Some(proxy.spec.replicas),
            service_name: Some(names::headless(&name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            // Pods hold no state of their own and find each other through Kafka: start and
            // stop them all at once instead of one by one. Rolling updates still replace
            // one pod at a time.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The pod template's annotations, for tests and the controller's logging.
pub fn template_annotations(set: &StatefulSet) -> BTreeMap<String, String> {
    set.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{minimal, proxy};
    use crate::resources::{LABEL_COMPONENT, is_owned_by};
    use serde_json::json;

    fn pod_spec(set: &StatefulSet) -> &PodSpec {
        set.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn container(set: &StatefulSet) -> &Container {
        &pod_spec(set).containers[0]
    }

    #[test]
    fn statefulset_runs_the_proxy_with_its_config_and_identity() {
        let set = statefulset(&minimal(), "abc");
        assert_eq!(set.metadata.name.as_deref(), Some("mqtt"));
        assert!(is_owned_by(&set.metadata, "uid-1"));
        let spec = set.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("mqtt-headless"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels("mqtt")));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        for (k, v) in selector_labels("mqtt") {
            assert_eq!(template_labels.get(&k), Some(&v), "the template matches the selector");
        }
        assert_eq!(template_annotations(&set)[ANNOTATION_CONFIG_HASH], "abc");

        let c = container(&set);
        assert_eq!(c.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
        assert_eq!(
            c.args.as_deref(),
            Some(&["--config".to_owned(), "/etc/mqtt-kafka/config/config.yaml".to_owned()][..])
        );
        let instance = &c.env.as_ref().expect("env")[0];
        assert_eq!(instance.name, INSTANCE_ID_ENV);
        assert_eq!(
            instance
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.name"),
            "each pod learns its instance id from the downward API"
        );
        let probe_path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(ports, [("mqtt".into(), 1883), ("admin".into(), 9090)]);
    }

    #[test]
    fn pods_are_non_root_with_a_read_only_root_and_time_to_hand_sessions_over() {
        let set = statefulset(&minimal(), "abc");
        let pod = pod_spec(&set);
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(DEFAULT_TERMINATION_GRACE_SECONDS)
        );
        let pod_security = pod.security_context.as_ref().expect("pod security");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(RUN_AS_USER));
        let security = container(&set).security_context.as_ref().expect("security");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("mqtt"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert!(
            pod.affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some()
        );
    }

    fn pre_stop_sleep(set: &StatefulSet) -> Option<i64> {
        container(set)
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds)
    }

    #[test]
    fn a_deleted_pod_serves_a_few_seconds_more_so_the_service_drops_it_before_it_stops_listening() {
        let set = statefulset(&minimal(), "abc");
        assert_eq!(pre_stop_sleep(&set), Some(PRE_STOP_SLEEP_SECONDS));
        // The sleep counts against the grace period: at most a sixth of it, none when short.
        let grace = |seconds: i64| {
            let mut p = minimal();
            p.spec.pod.termination_grace_period_seconds = Some(seconds);
            pre_stop_sleep(&statefulset(&p, "abc"))
        };
        assert_eq!(grace(12), Some(2));
        assert_eq!(grace(5), None);
        assert_eq!(grace(600), Some(PRE_STOP_SLEEP_SECONDS));
    }

    #[test]
    fn the_template_does_not_depend_on_the_replica_count() {
        let one = minimal();
        let mut five = minimal();
        five.spec.replicas = 5;
        let a = statefulset(&one, "h");
        let b = statefulset(&five, "h");
        assert_eq!(b.spec.as_ref().and_then(|s| s.replicas), Some(5));
        assert_eq!(
            a.spec.as_ref().map(|s| &s.template),
            b.spec.as_ref().map(|s| &s.template)
        );
    }

    #[test]
    fn secrets_arrive_as_env_and_volumes_overrides_apply() {
        let proxy = proxy(json!({
            "image": "registry.example/proxy:2",
            "imagePullPolicy": "Always",
            "kafka": {
                "bootstrapServers": "k:9093",
                "tls": {"caSecret": {"name": "kafka-ca", "key": "ca.crt"}},
                "sasl": {"mechanism": "PLAIN", "username": "u", "passwordSecret": {"name": "kafka-user", "key": "password"}}
            },
            "listeners": [{"name": "mqtt", "port": 1883}, {"name": "mqtts", "protocol": "tls", "port": 8883, "tls": {"secretName": "mqtt-cert", "clientCaSecret": {"name": "device-ca", "key": "bundle.pem"}}}],
            "authorization": {"jwt": {"jwksSecret": {"name": "jwks", "key": "keys.json"}}},
            "pod": {
                "annotations": {"prometheus.io/scrape": "true"},
                "labels": {"team": "iot", "app.kubernetes.io/component": "mine"},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
                "nodeSelector": {"pool": "mqtt"},
                "priorityClassName": "high",
                "env": [{"name": "RUST_LOG", "value": "debug"}, {"name": "MQTT_KAFKA_INSTANCE_ID", "value": "x"}],
                "terminationGracePeriodSeconds": 120,
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}}
            }
        }));
        let set = statefulset(&proxy, "h");
        let c = container(&set);
        assert_eq!(c.image.as_deref(), Some("registry.example/proxy:2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(
            env,
            [
                "MQTT_KAFKA_INSTANCE_ID",
                "KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_CA_PEM",
                "RUST_LOG"
            ]
        );
        let password = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "KAFKA_SASL_PASSWORD")
            .expect("password env");
        let secret = password
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret ref");
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("kafka-user", "password"));
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            [
                "/etc/mqtt-kafka/config",
                "/tmp",
                "/etc/mqtt-kafka/tls/mqtts",
                "/etc/mqtt-kafka/client-ca/mqtts",
                "/etc/mqtt-kafka/jwks"
            ]
        );
        let pod = pod_spec(&set);
        let tls_volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls-mqtts")
            .expect("tls volume");
        assert_eq!(
            tls_volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("mqtt-cert")
        );
        let ca_volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "client-ca-mqtts")
            .and_then(|v| v.secret.as_ref())
            .expect("client CA volume");
        assert_eq!(ca_volume.secret_name.as_deref(), Some("device-ca"));
        let items: Vec<(&str, &str)> = ca_volume
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(items, [("bundle.pem", "ca.crt")]);
        assert_eq!(pod.termination_grace_period_seconds, Some(120));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.node_selector.as_ref().expect("node selector")["pool"], "mqtt");
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert!(pod.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).is_some());
        assert!(
            pod.affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_none(),
            "an explicit affinity replaces the default"
        );
        assert!(c.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some());
        let meta = set
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .expect("template meta");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["team"], "iot");
        assert_eq!(labels[LABEL_COMPONENT], "proxy");
        assert_eq!(meta.annotations.expect("annotations")["prometheus.io/scrape"], "true");
    }
}
