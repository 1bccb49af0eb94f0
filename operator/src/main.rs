//! CLI and start-up of mqtt-kafka-operator.

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};
use mqtt_kafka_operator::crd::MqttKafkaProxy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let crd_name = MqttKafkaProxy::crd_name();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds
        .get_opt(crd_name)
        .await
        .context("reading CustomResourceDefinitions")?
        .is_none()
    {
        bail!("the CRD {crd_name} is not installed; install it with `kubectl apply -f crds/` (or the Helm chart)");
    }
    tracing::info!(crd = crd_name, "CRD installed; waiting for Ctrl-C");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}
