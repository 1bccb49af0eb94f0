//! The PodDisruptionBudget: voluntary disruptions (drains, upgrades) take proxy pods one at
//! a time by default, so at most one pod's sessions move at once.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{metadata, names, selector_labels};
use crate::crd::MqttKafkaProxy;

/// The PodDisruptionBudget, `None` when `spec.podDisruptionBudget.enabled` is false.
pub fn pod_disruption_budget(proxy: &MqttKafkaProxy) -> Option<PodDisruptionBudget> {
    let spec = &proxy.spec.pod_disruption_budget;
    if !spec.enabled {
        return None;
    }
    let name = proxy.name_any();
    let max_unavailable = match (&spec.max_unavailable, &spec.min_available) {
        (None, None) => Some(IntOrString::Int(1)),
        (max, _) => max.clone(),
    };
    Some(PodDisruptionBudget {
        metadata: metadata(proxy, names::main(&name), "disruption-budget"),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            max_unavailable,
            min_available: spec.min_available.clone(),
            // A pod that never became ready holds no sessions: evicting it must not wait
            // for the budget, or a broken rollout would block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::is_owned_by;
    use crate::resources::tests::minimal;

    #[test]
    fn default_budget_allows_one_pod_down() {
        let pdb = pod_disruption_budget(&minimal()).expect("enabled by default");
        assert_eq!(pdb.metadata.name.as_deref(), Some("mqtt"));
        assert!(is_owned_by(&pdb.metadata, "uid-1"));
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(selector_labels("mqtt"))
        );
        assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
    }

    #[test]
    fn min_available_replaces_the_default_and_disabled_means_none() {
        let mut proxy = minimal();
        proxy.spec.pod_disruption_budget.min_available = Some(IntOrString::String("50%".into()));
        let spec = pod_disruption_budget(&proxy).and_then(|p| p.spec).expect("spec");
        assert_eq!(spec.max_unavailable, None);
        assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));
        proxy.spec.pod_disruption_budget.enabled = false;
        assert!(pod_disruption_budget(&proxy).is_none());
    }
}
