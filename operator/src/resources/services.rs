//! The Services: headless (a DNS name per pod, the default server references), client
//! (what devices connect to first), and optionally one per pod (externally reachable
//! redirect targets).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mqtt_kafka_proxy::config::INSTANCE_PLACEHOLDER;

use super::{LABEL_POD_NAME, metadata, names, selector_labels};
use crate::crd::{ADMIN_PORT, MqttKafkaProxy};

/// Name of the container port serving health and metrics.
pub const ADMIN_PORT_NAME: &str = "admin";

fn listener_ports(proxy: &MqttKafkaProxy) -> Vec<ServicePort> {
    proxy
        .spec
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.clone()),
            port: l.port,
            target_port: Some(IntOrString::String(l.name.clone())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect()
}

/// The headless Service: `<pod>.<name>-headless.<namespace>.svc` for every pod, published
/// before the pods are ready so that a starting pod's server reference already resolves.
pub fn headless(proxy: &MqttKafkaProxy) -> Service {
    let name = proxy.name_any();
    let mut ports = listener_ports(proxy);
    ports.push(ServicePort {
        name: Some(ADMIN_PORT_NAME.into()),
        port: i32::from(ADMIN_PORT),
        target_port: Some(IntOrString::String(ADMIN_PORT_NAME.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    });
    Service {
        metadata: metadata(proxy, names::headless(&name), "headless-service"),
        spec: Some(K8sServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(ports),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service, with the type and annotations of `spec.service`.
pub fn client(proxy: &MqttKafkaProxy) -> Service {
    let name = proxy.name_any();
    let spec = &proxy.spec.service;
    let mut meta = metadata(proxy, names::main(&name), "client-service");
    if let Some(labels) = meta.labels.as_mut() {
        for (k, v) in &spec.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    let exposed = spec.type_ != crate::crd::ServiceType::ClusterIP;
    Service {
        metadata: meta,
        spec: Some(K8sServiceSpec {
            type_: Some(spec.type_.as_str().into()),
            selector: Some(selector_labels(&name)),
            ports: Some(listener_ports(proxy)),
            load_balancer_class: spec.load_balancer_class.clone(),
            external_traffic_policy: spec
                .external_traffic_policy
                .filter(|_| exposed)
                .map(|p| format!("{p:?}")),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// One Service per pod of `ordinals` (see `resources::per_pod_ordinals`: the pods that
/// exist and those the spec wants), selecting that pod only; `{instance}` in annotation
/// values becomes the pod name. Empty unless `spec.perPodServices.enabled`.
pub fn per_pod(proxy: &MqttKafkaProxy, ordinals: &BTreeSet<i32>) -> Vec<Service> {
    let Some(per_pod) = proxy.spec.per_pod_services.as_ref().filter(|p| p.enabled) else {
        return Vec::new();
    };
    let name = proxy.name_any();
    ordinals
        .iter()
        .map(|&ordinal| {
            let pod = names::pod(&name, ordinal);
            let mut meta = metadata(proxy, pod.clone(), "pod-service");
            if !per_pod.annotations.is_empty() {
                meta.annotations = Some(
                    per_pod
                        .annotations
                        .iter()
                        .map(|(k, v)| (k.clone(), v.replace(INSTANCE_PLACEHOLDER, &pod)))
                        .collect(),
                );
            }
            let mut selector = selector_labels(&name);
            selector.insert(LABEL_POD_NAME.into(), pod);
            Service {
                metadata: meta,
                spec: Some(K8sServiceSpec {
                    type_: Some(per_pod.type_.as_str().into()),
                    selector: Some(selector),
                    ports: Some(listener_ports(proxy)),
                    external_traffic_policy: per_pod
                        .external_traffic_policy
                        .filter(|_| per_pod.type_ != crate::crd::ServiceType::ClusterIP)
                        .map(|p| format!("{p:?}")),
                    ..K8sServiceSpec::default()
                }),
                ..Service::default()
            }
        })
        .collect()
}

/// Names of the per-pod Services wanted for `ordinals` (to delete the others once their
/// pods are gone).
pub fn per_pod_names(proxy: &MqttKafkaProxy, ordinals: &BTreeSet<i32>) -> BTreeSet<String> {
    per_pod(proxy, ordinals)
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{minimal, proxy};
    use crate::resources::{LABEL_COMPONENT, is_owned_by};
    use serde_json::json;

    fn port_names(service: &Service) -> Vec<(String, i32)> {
        service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect()
    }

    #[test]
    fn headless_service_publishes_every_pod_with_listener_and_admin_ports() {
        let service = headless(&minimal());
        assert_eq!(service.metadata.name.as_deref(), Some("mqtt-headless"));
        let spec = service.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(selector_labels("mqtt")));
        assert_eq!(port_names(&service), [("mqtt".into(), 1883), ("admin".into(), 9090)]);
        assert!(is_owned_by(&service.metadata, "uid-1"));
    }

    #[test]
    fn client_service_takes_type_annotations_and_labels_from_the_spec() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9092"},
            "listeners": [{"name": "mqtt", "port": 1883}, {"name": "ws", "protocol": "websocket", "port": 8080}],
            "service": {
                "type": "LoadBalancer",
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                "labels": {"team": "iot", "app.kubernetes.io/component": "ignored"},
                "externalTrafficPolicy": "Local"
            }
        }));
        let service = client(&proxy);
        assert_eq!(service.metadata.name.as_deref(), Some("mqtt"));
        let spec = service.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            service.metadata.annotations.as_ref().expect("annotations")["service.beta.kubernetes.io/aws-load-balancer-type"],
            "nlb"
        );
        let labels = service.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "iot");
        assert_eq!(labels[LABEL_COMPONENT], "client-service", "the operator's labels win");
        assert_eq!(port_names(&service), [("mqtt".into(), 1883), ("ws".into(), 8080)]);
        assert!(is_owned_by(&service.metadata, "uid-1"));
    }

    #[test]
    fn cluster_ip_client_service_has_no_traffic_policy() {
        let mut proxy = minimal();
        proxy.spec.service.external_traffic_policy = Some(crate::crd::TrafficPolicy::Local);
        assert_eq!(client(&proxy).spec.expect("spec").external_traffic_policy, None);
    }

    #[test]
    fn per_pod_services_follow_the_pods_and_template_annotations() {
        let mut proxy = proxy(json!({
            "replicas": 3,
            "kafka": {"bootstrapServers": "k:9092"},
            "cluster": {"serverReference": "{instance}.mqtt.example.com:1883"},
            "perPodServices": {"enabled": true, "annotations": {"external-dns.alpha.kubernetes.io/hostname": "{instance}.mqtt.example.com"}}
        }));
        let wanted = crate::resources::per_pod_ordinals(3, &BTreeSet::new());
        let services = per_pod(&proxy, &wanted);
        let names: Vec<_> = services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, ["mqtt-0", "mqtt-1", "mqtt-2"]);
        let second = &services[1];
        assert_eq!(
            second.metadata.annotations.as_ref().expect("annotations")["external-dns.alpha.kubernetes.io/hostname"],
            "mqtt-1.mqtt.example.com"
        );
        let spec = second.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.selector.as_ref().expect("selector")[LABEL_POD_NAME], "mqtt-1");
        assert!(is_owned_by(&second.metadata, "uid-1"));
        // Scaled down to 1 while mqtt-2 still hands its sessions over.
        proxy.spec.replicas = 1;
        let ordinals = crate::resources::per_pod_ordinals(1, &BTreeSet::from([0, 2]));
        assert_eq!(
            per_pod_names(&proxy, &ordinals).into_iter().collect::<Vec<_>>(),
            ["mqtt-0", "mqtt-2"]
        );
        proxy.spec.per_pod_services = None;
        assert!(per_pod(&proxy, &ordinals).is_empty());
    }
}
