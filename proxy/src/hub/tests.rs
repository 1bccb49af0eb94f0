use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::*;
use crate::broker::identity::IdentityPatterns;
use crate::broker::routes::RouteTable;
use crate::kafka::producer::Publisher;
use crate::kafka::security::SecurityWatch;

fn hub() -> Hub {
    // Never connects: nothing here writes to Kafka.
    let publisher =
        Publisher::new("127.0.0.1:1", &[], "r", Duration::from_secs(1), SecurityWatch::new()).expect("producer");
    Hub::new(
        RouteTable::new("m".to_owned(), Vec::new()).expect("routes"),
        IdentityPatterns::parse(&[]).expect("patterns"),
        Arc::new(publisher),
        Arc::new(Metrics::new()),
        100,
        1 << 20,
    )
}

fn kicked(registration: &Registration) -> Option<Kick> {
    let waker = futures::task::noop_waker();
    match registration
        .deliveries
        .poll_kicked(&mut std::task::Context::from_waker(&waker))
    {
        Poll::Ready(kick) => Some(kick),
        Poll::Pending => None,
    }
}

#[test]
fn the_sweep_kicks_only_the_connections_whose_keep_alive_ran_out() {
    let hub = hub();
    let listener: Arc<str> = Arc::from("mqtt");
    let silent = hub.register("silent", true, Arc::clone(&listener), &Positions::new());
    let talking = hub.register("talking", true, Arc::clone(&listener), &Positions::new());
    let without = hub.register("without", true, listener, &Positions::new());
    silent.deliveries.set_deadline(1_000);
    talking.deliveries.set_deadline(5_000);
    // `without` keeps NO_DEADLINE (keep-alive 0, or reading paused).

    assert_eq!(hub.sweep_keep_alive(1_000), 0, "a deadline not yet passed");
    assert!(kicked(&silent).is_none());

    assert_eq!(hub.sweep_keep_alive(1_001), 1);
    assert_eq!(kicked(&silent).map(|k| k.reason), Some(KEEP_ALIVE_TIMEOUT));
    assert!(kicked(&talking).is_none());
    assert!(kicked(&without).is_none());

    // A packet moved the deadline on: the sweep leaves it alone.
    talking.deliveries.set_deadline(9_000);
    hub.sweep_keep_alive(6_000);
    assert!(kicked(&talking).is_none());
    hub.sweep_keep_alive(u64::MAX);
    assert!(kicked(&without).is_none(), "never without a deadline");
}
