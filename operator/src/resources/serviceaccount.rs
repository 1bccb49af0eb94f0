//! The ServiceAccount of the proxy pods: their own identity (for workload identity,
//! image pull secrets, policies), without API access.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;

use super::{metadata, names};
use crate::crd::MqttKafkaProxy;

/// The ServiceAccount; its token is not mounted (the proxy never calls the API).
pub fn service_account(proxy: &MqttKafkaProxy) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(proxy, names::main(&proxy.name_any()), "service-account"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::is_owned_by;
    use crate::resources::tests::minimal;

    #[test]
    fn service_account_is_owned_and_mounts_no_token() {
        let sa = service_account(&minimal());
        assert_eq!(sa.metadata.name.as_deref(), Some("mqtt"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("iot"));
        assert!(is_owned_by(&sa.metadata, "uid-1"));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}
