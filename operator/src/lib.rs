//! mqtt-kafka-operator: reconciles `MqttKafkaProxy` resources into sharded proxy pods,
//! their Kafka topics and status. See `shared/DESIGN.md` section 5.

pub mod crd;
