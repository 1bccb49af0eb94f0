//! Leader election through a Lease: any number of operator replicas run, one reconciles.
//!
//! A replica waits until it holds the lease, runs the controller while it does, and stops
//! the controller (finishing the reconciles in flight) when it loses the lease or shuts
//! down; on shutdown it releases the lease so a standby takes over within one lease
//! duration instead of waiting for it to expire.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::controller::{self, Context};

/// Where the lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// How long a lease holds without renewal: the longest a standby waits after the
    /// leader died.
    pub duration: Duration,
    /// How long before expiry the leader renews.
    pub grace: Duration,
}

/// Why the election loop stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader election through Lease {namespace}/{name} failed: {source}")]
    Lease {
        name: String,
        namespace: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("the lease manager stopped unexpectedly")]
    ManagerStopped,
}

/// Runs the controller for `namespace` (or all) whenever this replica leads, until
/// `shutdown` completes. Without `lease`, runs it unconditionally.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    lease: Option<LeaseSettings>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ElectionError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let Some(lease) = lease else {
        ctx.metrics.leader.set(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let controller = tokio::spawn(controller::run(Arc::clone(&ctx), namespace, async move {
            let _ = stopped.await;
        }));
        shutdown.as_mut().await;
        let _ = stop.send(());
        let _ = controller.await;
        ctx.metrics.leader.set(0);
        return Ok(());
    };

    let failed = |source| ElectionError::Lease {
        name: lease.name.clone(),
        namespace: lease.namespace.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration.as_secs().max(2))
        .with_grace(lease.grace.as_secs().clamp(1, lease.duration.as_secs().max(2) - 1))
        .build()
        .await
        .map_err(failed)?;
    let (mut leading, manager_task) = manager.watch().await;
    info!(lease = %lease.name, identity = %lease.identity, "waiting for the leader lease");

    let result = loop {
        // Standby until this replica holds the lease.
        if !*leading.borrow_and_update() {
            tokio::select! {
                () = shutdown.as_mut() => break Ok(()),
                changed = leading.changed() => {
                    if changed.is_err() {
                        break Err(ElectionError::ManagerStopped);
                    }
                    continue;
                }
            }
        }
        info!(identity = %lease.identity, "leading: starting the controller");
        ctx.metrics.leader.set(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let controller = tokio::spawn(controller::run(Arc::clone(&ctx), namespace.clone(), async move {
            let _ = stopped.await;
        }));
        let outcome = tokio::select! {
            () = shutdown.as_mut() => Some(Ok(())),
            lost = lost_lead(&mut leading) => lost.err().map(Err),
        };
        let _ = stop.send(());
        let _ = controller.await;
        ctx.metrics.leader.set(0);
        match outcome {
            Some(result) => break result,
            None => warn!(identity = %lease.identity, "lost the leader lease: controller stopped, back to standby"),
        }
    };
    // Closing the channel makes the manager release the lease and finish.
    drop(leading);
    match manager_task.await {
        Ok(Ok(_)) => info!("released the leader lease"),
        Ok(Err(err)) => warn!(%err, "releasing the leader lease failed; it expires on its own"),
        Err(err) => warn!(%err, "the lease manager task failed"),
    }
    result
}

/// Completes when this replica no longer leads (`Err` when the manager is gone).
async fn lost_lead(leading: &mut watch::Receiver<bool>) -> Result<(), ElectionError> {
    loop {
        leading.changed().await.map_err(|_| ElectionError::ManagerStopped)?;
        if !*leading.borrow_and_update() {
            return Ok(());
        }
    }
}

/// The lease settings of a replica named `identity`, with production timings.
pub fn default_lease(namespace: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: "mqtt-kafka-operator".into(),
        namespace: namespace.into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        grace: Duration::from_secs(5),
    }
}
