//! Applying the objects of a resource: server-side apply with one field manager, skipped
//! when the stored object already is as built, and pruning what the spec no longer wants.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::{Context, Error};
use crate::crd::MqttKafkaProxy;
use crate::resources::configmap::{self, RenderedConfig};
use crate::resources::{
    ANNOTATION_APPLIED_HASH, LABEL_COMPONENT, MANAGER, applied_hash, is_owned_by, is_subset, owned_selector, pdb,
    per_pod_ordinals, pod_ordinals, selector_string, serviceaccount, services, statefulset,
};

/// Applies every object; returns the StatefulSet as stored.
/// `pods`: the ordinals of the pods that exist (`observed_pods`).
pub(super) async fn apply_objects(
    proxy: &MqttKafkaProxy,
    ctx: &Context,
    rendered: &RenderedConfig,
    pods: &BTreeSet<i32>,
) -> Result<StatefulSet, Error> {
    let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let uid = proxy.uid().unwrap_or_default();

    apply(
        ctx,
        &Api::namespaced(client.clone(), &namespace),
        serviceaccount::service_account(proxy),
        &uid,
    )
    .await?;
    apply(
        ctx,
        &Api::namespaced(client.clone(), &namespace),
        configmap::config_map(proxy, &rendered.yaml),
        &uid,
    )
    .await?;
    let service_api: Api<Service> = Api::namespaced(client.clone(), &namespace);
    apply(ctx, &service_api, services::headless(proxy), &uid).await?;
    apply(ctx, &service_api, services::client(proxy), &uid).await?;
    let ordinals = per_pod_ordinals(proxy.spec.replicas, pods);
    for service in services::per_pod(proxy, &ordinals) {
        apply(ctx, &service_api, service, &uid).await?;
    }
    prune_per_pod_services(proxy, ctx, &service_api, &uid, &ordinals).await?;

    let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    match pdb::pod_disruption_budget(proxy) {
        Some(budget) => {
            apply(ctx, &pdb_api, budget, &uid).await?;
        }
        None => delete_owned(ctx, &pdb_api, &proxy.name_any(), &uid).await?,
    }
    apply(
        ctx,
        &Api::namespaced(client.clone(), &namespace),
        statefulset::statefulset(proxy, &rendered.hash),
        &uid,
    )
    .await
}

/// The ordinals of the pods of `proxy` that exist (terminating ones included).
pub(super) async fn observed_pods(proxy: &MqttKafkaProxy, ctx: &Context) -> Result<BTreeSet<i32>, Error> {
    let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
    let name = proxy.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods
        .list_metadata(&ListParams::default().labels(&selector_string(&name)))
        .await?;
    Ok(pod_ordinals(
        &name,
        listed.items.iter().filter_map(|p| p.metadata.name.as_deref()),
    ))
}

fn per_pod_service_selector(proxy: &MqttKafkaProxy) -> String {
    format!("{},{LABEL_COMPONENT}=pod-service", owned_selector(&proxy.name_any()))
}

/// Deletes per-pod Services of this resource whose pod is gone and not wanted.
async fn prune_per_pod_services(
    proxy: &MqttKafkaProxy,
    ctx: &Context,
    api: &Api<Service>,
    uid: &str,
    ordinals: &BTreeSet<i32>,
) -> Result<(), Error> {
    let wanted = services::per_pod_names(proxy, ordinals);
    let selector = per_pod_service_selector(proxy);
    for service in api.list_metadata(&ListParams::default().labels(&selector)).await? {
        let name = service.name_any();
        if !wanted.contains(&name) && is_owned_by(&service.metadata, uid) {
            delete_owned(ctx, api, &name, uid).await?;
        }
    }
    Ok(())
}

async fn delete_owned<K>(ctx: &Context, api: &Api<K>, name: &str, uid: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(found) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    if !is_owned_by(&found.metadata, uid) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(kind = %K::kind(&()), name, "deleted an object no longer wanted");
            ctx.metrics
                .writes
                .with_label_values(&[K::kind(&()).as_ref(), "deleted"])
                .inc();
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Server-side applies `desired` unless the stored object already is as built: the
/// applied-hash annotation matches (nothing removed from the desired state) and every
/// desired field has its value (nobody changed one behind the operator's back).
async fn apply<K>(ctx: &Context, api: &Api<K>, mut desired: K, uid: &str) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let kind: &'static str = match K::kind(&()).as_ref() {
        "ConfigMap" => "ConfigMap",
        "Service" => "Service",
        "StatefulSet" => "StatefulSet",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "ServiceAccount" => "ServiceAccount",
        _ => "object",
    };
    let name = desired.name_any();
    let hash = applied_hash(&serde_json::to_value(&desired).map_err(|e| Error::Serialize(kind, e))?);
    desired
        .annotations_mut()
        .insert(ANNOTATION_APPLIED_HASH.into(), hash.clone());
    let want = serde_json::to_value(&desired).map_err(|e| Error::Serialize(kind, e))?;
    if let Some(actual) = api.get_opt(&name).await?
        && actual.annotations().get(ANNOTATION_APPLIED_HASH) == Some(&hash)
        && is_owned_by(actual.meta(), uid)
        && is_subset(
            &want,
            &serde_json::to_value(&actual).map_err(|e| Error::Serialize(kind, e))?,
        )
    {
        ctx.metrics.writes.with_label_values(&[kind, "unchanged"]).inc();
        return Ok(actual);
    }
    let applied = api
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired))
        .await
        .map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
    debug!(kind, name, "applied");
    ctx.metrics.writes.with_label_values(&[kind, "applied"]).inc();
    Ok(applied)
}
