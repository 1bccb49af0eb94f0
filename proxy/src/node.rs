//! This process as a member of the cluster: it announces itself, takes over the timers of
//! sessions whose process died, moves MQTT 5 clients whose session another process now
//! owns, and leaves on SIGTERM so that its partitions move at once. The decisions are
//! `cluster`'s; this module runs them against the hub's live connections and the
//! sessions topic.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::membership::{DEAD_AFTER, HEARTBEAT_EVERY, ServerReferences};
use crate::cluster::ownership::{self, Placement};
use crate::hub::{Hub, Kick};
use crate::kafka::sessions::SessionStore;
use crate::mqtt::connect::Limits;
use crate::mqtt::session;

/// How long leaving waits for the departure record to be written.
const LEAVE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the mover looks for clients to move.
const MOVE_EVERY: Duration = Duration::from_millis(100);

/// Longest a starting process waits for its own server references to resolve before it
/// announces itself (and so is given sessions whose clients are redirected to it).
const RESOLVE_WAIT: Duration = Duration::from_secs(15);
/// Longest one lookup of a server reference may take (a resolver that does not answer).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the lookups are tried again meanwhile.
const RESOLVE_EVERY: Duration = Duration::from_millis(250);

/// Whether `reference` (`host:port`) resolves to an address here.
async fn resolves(reference: String) -> bool {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(reference)).await {
        Ok(Ok(mut addresses)) => addresses.next().is_some(),
        _ => false,
    }
}

/// Waits until `resolve` answers yes for each of `references`, at most `limit`; returns
/// whether they all did. On Kubernetes a pod's DNS name (the default server reference)
/// appears a moment after the pod starts: a process that announced itself before would be
/// given sessions whose MQTT 5 clients are redirected to a name that does not resolve yet
/// (the e2e run on the local node saw that for 2 to 3 s on every scale-up).
async fn until_resolvable<F, Fut>(references: &ServerReferences, limit: Duration, resolve: F) -> bool
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let wanted: std::collections::BTreeSet<&String> = references
        .default
        .iter()
        .chain(references.by_listener.values())
        .collect();
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for reference in &wanted {
            if !resolve((*reference).clone()).await {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// Starts the heartbeat, the adoption of orphaned sessions and (with redirects on) the
/// mover, each with its name; they run until their tasks are aborted. Call it once the MQTT
/// listeners are bound: the first heartbeat makes this process an owner of sessions, and it
/// waits until the process's own server references resolve (at most [`RESOLVE_WAIT`]).
pub fn spawn(
    hub: Arc<Hub>,
    store: Arc<SessionStore>,
    limits: Arc<Limits>,
    references: ServerReferences,
) -> Vec<(&'static str, JoinHandle<()>)> {
    let mut tasks = Vec::new();
    let (h, s) = (Arc::clone(&hub), Arc::clone(&store));
    tasks.push((
        "heartbeat",
        tokio::spawn(async move {
            if !until_resolvable(&references, RESOLVE_WAIT, resolves).await {
                tracing::warn!(
                    ?references,
                    "this process's server reference does not resolve here after {} s; announcing it anyway \
                     (clients redirected to it may not reach this process)",
                    RESOLVE_WAIT.as_secs()
                );
            }
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                // A departure read is announced at once: the leaver waits for it.
                tokio::select! {
                    _ = tick.tick() => {}
                    () = s.departure_read() => {}
                }
                if let Err(error) = s.heartbeat(&references, h.shares()).await {
                    tracing::warn!(%error, "heartbeat not written");
                }
                let owned = s.owners(None).iter().filter(|o| *o == s.instance()).count();
                h.metrics().owned_partitions.set(i64::try_from(owned).unwrap_or(0));
            }
        }),
    ));
    let (h, s) = (Arc::clone(&hub), Arc::clone(&store));
    tasks.push((
        "adopt orphaned sessions",
        tokio::spawn(async move {
            // Until this process has heard everyone's heartbeats, every host looks dead.
            tokio::time::sleep(DEAD_AFTER + HEARTBEAT_EVERY).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if s.is_loaded() {
                    session::adopt_orphans(&h, &s).await;
                }
            }
        }),
    ));
    if let Some(reason) = limits.redirect {
        let per_tick = limits.redirects_per_second.div_ceil(10).max(1);
        tasks.push((
            "move clients",
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MOVE_EVERY);
                loop {
                    tick.tick().await;
                    let owners = store.owners(None);
                    if owners.is_empty() {
                        continue;
                    }
                    let moved = kick_misplaced(&hub, &store, &owners, reason, per_tick, None);
                    if moved > 0 {
                        hub.metrics()
                            .redirects
                            .with_label_values(&["moved"])
                            .inc_by(u64::try_from(moved).unwrap_or(0));
                    }
                }
            }),
        ));
    }
    tasks
}

/// Tells up to `budget` MQTT 5 connections whose session `owners` places elsewhere to go
/// there; with `otherwise`, also closes the others with that reason (shutdown). Returns how
/// many connections were told.
fn kick_misplaced(
    hub: &Hub,
    store: &SessionStore,
    owners: &[String],
    reason: u8,
    budget: u32,
    otherwise: Option<u8>,
) -> usize {
    let mut told = 0;
    for connection in hub.connections() {
        if told >= usize::try_from(budget).unwrap_or(usize::MAX) {
            break;
        }
        let placement = ownership::place(
            store.partition_of(&connection.client_id),
            owners,
            store.instance(),
            true,
            connection.mqtt5,
            |i| store.reference_of(i, &connection.listener),
        );
        let kick = match (placement, otherwise) {
            (Placement::Elsewhere(reference), _) => Kick {
                reason,
                server_reference: Some(reference),
            },
            (Placement::Here, Some(reason)) => Kick {
                reason,
                server_reference: None,
            },
            (Placement::Here, None) => continue,
        };
        hub.kick(connection.id, kick);
        told += 1;
    }
    told
}

/// SIGTERM: leaves the cluster (its partitions move to the others now), then ends every
/// connection with a DISCONNECT, MQTT 5 clients with the Server Reference of the process
/// that owns their session from now on (when redirects are on), at the configured rate;
/// returns once they are closed (sessions stored) or `grace` is over.
pub async fn leave(hub: &Arc<Hub>, store: &Arc<SessionStore>, limits: &Limits, grace: Duration) {
    let deadline = Instant::now() + grace;
    // Bounded: with Kafka unreachable the write would wait for the producer's delivery
    // timeout, and the hand-over below still has connections to end.
    match tokio::time::timeout(LEAVE_WRITE_TIMEOUT.min(grace), store.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "departure not written; the others notice in a few seconds"),
        Err(_) => tracing::warn!(
            "departure not written in time (Kafka slow or unreachable); the others notice in a few seconds"
        ),
    }
    if limits.redirect.is_some() {
        until_the_others_read_the_departure(
            store,
            CONFIRM_WAIT.min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let owners = store.owners(Some(store.instance()));
    let reason = limits.redirect.unwrap_or(0x9C);
    let per_tick = limits.redirects_per_second.div_ceil(10).max(1);
    const SHUTTING_DOWN: u8 = 0x8B;
    let mut tick = tokio::time::interval(MOVE_EVERY);
    while hub.connection_count() > 0 && Instant::now() < deadline {
        tick.tick().await;
        let owners: &[String] = if limits.redirect.is_some() { &owners } else { &[] };
        let told = kick_misplaced(hub, store, owners, reason, per_tick, Some(SHUTTING_DOWN));
        hub.metrics()
            .redirects
            .with_label_values(&["shutdown"])
            .inc_by(u64::try_from(told).unwrap_or(0));
    }
}

/// How long a leaving process waits for the others to announce that they read its
/// departure before it sends its clients to them anyway.
const CONFIRM_WAIT: Duration = Duration::from_secs(3);
const CONFIRM_POLL: Duration = Duration::from_millis(20);

/// Waits (at most `limit`) until every other live process has announced that it no longer
/// counts this one: a client sent to its new owner before that owner read the departure
/// would be sent straight back here.
async fn until_the_others_read_the_departure(store: &SessionStore, limit: Duration) {
    let started = Instant::now();
    loop {
        let unaware = store.unaware_of_departure();
        if unaware.is_empty() {
            tracing::info!(
                waited_ms = started.elapsed().as_millis(),
                "the other processes read the departure"
            );
            return;
        }
        if started.elapsed() >= limit {
            tracing::warn!(
                ?unaware,
                "these processes did not announce in time that they read the departure; handing clients over anyway"
            );
            return;
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn references(default: &str, listener: &str) -> ServerReferences {
        ServerReferences {
            default: Some(default.into()),
            by_listener: [("ws".to_owned(), listener.to_owned())].into(),
        }
    }

    #[tokio::test]
    async fn announcing_waits_until_every_own_reference_resolves() {
        let asked = AtomicUsize::new(0);
        // The pod's name resolves from the third round on; the WebSocket one at once.
        let ok = until_resolvable(
            &references("p-0.h.ns.svc:1883", "p-0.h.ns.svc:8080"),
            RESOLVE_WAIT,
            |r| {
                let round = asked.fetch_add(1, Ordering::SeqCst);
                async move { !r.ends_with(":1883") || round >= 2 }
            },
        )
        .await;
        assert!(ok);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            4,
            "two failed rounds, then both references"
        );
    }

    #[tokio::test]
    async fn a_reference_that_never_resolves_delays_announcing_by_the_limit_only() {
        let started = Instant::now();
        let ok = until_resolvable(
            &references("nowhere:1883", "nowhere:8080"),
            Duration::from_millis(600),
            |_| async { false },
        )
        .await;
        assert!(!ok);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn addresses_and_no_references_need_no_waiting() {
        let started = Instant::now();
        assert!(until_resolvable(&references("127.0.0.1:1883", "127.0.0.1:8080"), RESOLVE_WAIT, resolves).await);
        assert!(until_resolvable(&ServerReferences::default(), RESOLVE_WAIT, resolves).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
