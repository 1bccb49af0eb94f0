//! Integration tests of the operator against the real kube-apiserver,
//! kube-controller-manager and Kafka of `make env-up`. The operator runs in-process, each
//! test in a namespace of its own with Kafka topics of its own.

mod admission;
mod chart;
mod leader;
mod reconcile;
mod support;
mod topics;
