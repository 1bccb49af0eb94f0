//! Prints the `MqttKafkaProxy` CustomResourceDefinition as YAML (`crds/` is its output).

use kube::CustomResourceExt;
use mqtt_kafka_operator::crd::MqttKafkaProxy;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_saphyr::to_string(&MqttKafkaProxy::crd())?);
    Ok(())
}
