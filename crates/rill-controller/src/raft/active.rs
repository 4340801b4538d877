//! What only the active controller does (KIP-631's broker lifecycle):
//! judge broker liveness from heartbeats, fence a broker that misses its
//! session timeout, unfence one that has caught up, refuse a second live
//! process with the same node id, and set the cluster id once.
//!
//! Liveness is judged in memory, by the clock in [`ControllerOptions`]:
//! heartbeats are not log entries. What the judgement decides enters the
//! log as commands (`FenceBroker`, `UnfenceBroker`), so every node's image
//! agrees on who is fenced. A node that becomes active starts every
//! broker's session afresh, as Kafka's controller does: it has heard from
//! nobody yet, and fencing them all at once would be wrong.
//!
//! [`ControllerOptions`]: super::ControllerOptions

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rpc::{BrokerHeartbeat, BrokerRegistrationRequest, ControllerResponse, HeartbeatAnswer};
use super::Controller;
use crate::state::{ApplyOutcome, MetadataCommand};
use rill_types::NodeId;

/// How often the active controller looks for brokers past their session.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// When the active controller last heard from each broker.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Node id → the clock's milliseconds at its last heartbeat or
    /// registration.
    last_heard_ms: HashMap<NodeId, i64>,
    /// The term in which this node last became active; sessions restart
    /// when it changes.
    active_term: Option<u64>,
    /// When the last round ran. A round much later than its interval means
    /// this process itself was not running (paused, starved): heartbeats
    /// that arrived meanwhile were not heard, so no broker is judged on
    /// that gap.
    last_round_ms: Option<i64>,
    /// When the active controller last looked for leader imbalance.
    last_rebalance_ms: Option<i64>,
}

/// A gap between rounds past which sessions restart instead of being
/// judged (see `Liveness::last_round_ms`).
const ROUND_GAP_MAX: Duration = Duration::from_secs(1);

impl Controller {
    fn now_ms(&self) -> i64 {
        self.shared.options.clock.now_ms()
    }

    fn session_timeout_ms(&self) -> i64 {
        self.shared
            .options
            .broker_session_timeout
            .and_then(|t| i64::try_from(t.as_millis()).ok())
            .unwrap_or(i64::MAX)
    }

    fn heard_from(&self, node_id: NodeId) {
        let now = self.now_ms();
        self.shared
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_heard_ms
            .insert(node_id, now);
    }

    /// Whether `node_id` has been heard from within its session.
    pub(super) fn is_alive(&self, node_id: NodeId) -> bool {
        let now = self.now_ms();
        let liveness = self
            .shared
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        liveness
            .last_heard_ms
            .get(&node_id)
            .is_some_and(|at| now.saturating_sub(*at) < self.session_timeout_ms())
    }

    pub(super) async fn handle_register(
        &self,
        registration: BrokerRegistrationRequest,
    ) -> ControllerResponse {
        let image = self.image();
        if let Some(current) = image.broker(registration.node_id) {
            let other_process = current.incarnation_id != registration.incarnation_id;
            // A restart on the node's own data dir replaces the old process
            // (whose session may not have expired yet: it was killed); only
            // another data dir claiming a live node's id is a duplicate.
            let other_dir = current.directory_id != registration.directory_id;
            if other_process && other_dir && !current.fenced && self.is_alive(registration.node_id)
            {
                return ControllerResponse::DuplicateBrokerRegistration(format!(
                    "node {} is registered by a live broker at {}:{} (incarnation {}); stop it first or pick another node id",
                    registration.node_id, current.host, current.port, current.incarnation_id
                ));
            }
            if !other_process {
                // A retried registration of this very process.
                return ControllerResponse::Registered {
                    broker_epoch: current.broker_epoch,
                    log_index: image.version.saturating_sub(1),
                };
            }
        }
        let node_id = registration.node_id;
        let command = MetadataCommand::RegisterBroker {
            node_id,
            incarnation_id: registration.incarnation_id,
            directory_id: registration.directory_id,
            host: registration.host,
            port: registration.port,
            rack: registration.rack,
        };
        match self.propose(command).await {
            ControllerResponse::Submitted {
                result: Ok(ApplyOutcome::BrokerRegistered { broker_epoch, .. }),
                log_index,
            } => {
                self.heard_from(node_id);
                tracing::info!(
                    node_id,
                    broker_epoch,
                    "broker registered (fenced until caught up)"
                );
                ControllerResponse::Registered {
                    broker_epoch,
                    log_index,
                }
            }
            ControllerResponse::Submitted {
                result: Err(rejection),
                ..
            } => ControllerResponse::Failed(rejection.to_string()),
            other => other,
        }
    }

    pub(super) async fn handle_heartbeat(&self, heartbeat: BrokerHeartbeat) -> ControllerResponse {
        let image = self.image();
        let Some(broker) = image.broker(heartbeat.node_id) else {
            return ControllerResponse::Failed(format!(
                "broker {} is not registered",
                heartbeat.node_id
            ));
        };
        if broker.broker_epoch != heartbeat.broker_epoch {
            return ControllerResponse::Failed(format!(
                "broker {} has epoch {}, not {}: register again",
                heartbeat.node_id, broker.broker_epoch, heartbeat.broker_epoch
            ));
        }
        self.heard_from(heartbeat.node_id);
        let node_id = heartbeat.node_id;
        let broker_epoch = heartbeat.broker_epoch;
        if heartbeat.want_shut_down {
            let leads_something = image
                .topics()
                .flat_map(|t| t.partitions.iter())
                .any(|p| p.leader == node_id);
            if !broker.fenced || leads_something {
                match self
                    .propose(MetadataCommand::ControlledShutdown {
                        node_id,
                        broker_epoch,
                    })
                    .await
                {
                    ControllerResponse::Submitted { result: Ok(_), .. } => {
                        tracing::info!(node_id, "controlled shutdown: leaderships moved");
                    }
                    ControllerResponse::Submitted {
                        result: Err(rejection),
                        ..
                    } => return ControllerResponse::Failed(rejection.to_string()),
                    other => return other,
                }
            }
            return ControllerResponse::Heartbeat(HeartbeatAnswer {
                fenced: true,
                shut_down_ready: true,
            });
        }
        if broker.fenced && heartbeat.metadata_version >= broker.registered_version {
            match self
                .propose(MetadataCommand::UnfenceBroker {
                    node_id,
                    broker_epoch,
                })
                .await
            {
                ControllerResponse::Submitted { result: Ok(_), .. } => {
                    tracing::info!(node_id, "broker caught up; unfenced");
                    return ControllerResponse::Heartbeat(HeartbeatAnswer {
                        fenced: false,
                        shut_down_ready: false,
                    });
                }
                ControllerResponse::Submitted {
                    result: Err(rejection),
                    ..
                } => return ControllerResponse::Failed(rejection.to_string()),
                other => return other,
            }
        }
        ControllerResponse::Heartbeat(HeartbeatAnswer {
            fenced: broker.fenced,
            shut_down_ready: false,
        })
    }

    /// One round of the active controller's duties; nothing when this
    /// node is not active.
    async fn active_round(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        // A leader cut off from the quorum decides nothing: it could not
        // commit it, and its view of who is alive is its own isolation.
        // When it hears from a majority again, the gap in its rounds
        // restarts every broker's session (below).
        if !super::leads_with_quorum(&metrics) {
            return;
        }
        let image = self.image();
        let now = self.now_ms();
        let expired: Vec<(NodeId, i64)> = {
            let mut liveness = self
                .shared
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let gap_ms = liveness.last_round_ms.map(|last| now.saturating_sub(last));
            liveness.last_round_ms = Some(now);
            let paused = gap_ms.is_some_and(|gap| gap > ROUND_GAP_MAX.as_millis() as i64);
            let new_term = liveness.active_term != Some(metrics.current_term);
            if new_term || paused {
                // A new active controller has heard from nobody yet; one
                // that was not running could not hear anybody. Either way
                // every broker starts a fresh session rather than being
                // fenced for the controller's own silence.
                liveness.active_term = Some(metrics.current_term);
                liveness.last_heard_ms.clear();
                for broker in image.brokers() {
                    liveness.last_heard_ms.insert(broker.node_id, now);
                }
                if new_term {
                    tracing::info!(
                        node_id = self.node_id,
                        term = metrics.current_term,
                        "this node is the active controller"
                    );
                } else {
                    tracing::warn!(
                        node_id = self.node_id,
                        gap_ms,
                        "the active controller did not run for a while; broker sessions restart"
                    );
                }
            }
            image
                .unfenced_brokers()
                // This node's own broker shares the process: if this round
                // runs, it is alive. Its heartbeats may still be late when
                // the runtime was busy (a huge request), and fencing it then
                // would take a single node's partitions offline for nothing.
                .filter(|b| b.node_id != self.node_id)
                .filter(|b| {
                    liveness
                        .last_heard_ms
                        .get(&b.node_id)
                        .is_none_or(|at| now.saturating_sub(*at) >= self.session_timeout_ms())
                })
                .map(|b| (b.node_id, b.broker_epoch))
                .collect()
        };
        if let (None, Some(cluster_id)) = (image.cluster_id(), &self.shared.options.cluster_id) {
            tracing::info!(%cluster_id, "setting the cluster id");
            let cluster_id = cluster_id.clone();
            let _ = self
                .propose(MetadataCommand::SetClusterId { cluster_id })
                .await;
        }
        self.maybe_rebalance_leaders(&image, now).await;
        for (node_id, broker_epoch) in expired {
            tracing::warn!(
                node_id,
                session_timeout = ?self.shared.options.broker_session_timeout,
                "broker missed its session timeout; fencing it"
            );
            let _ = self
                .propose(MetadataCommand::FenceBroker {
                    node_id,
                    broker_epoch,
                })
                .await;
        }
    }
}

impl Controller {
    /// Kafka's automatic preferred-leader election: every
    /// `leader.imbalance.check.interval`, the partitions of each broker
    /// that leads too few of those it is the preferred leader of go back
    /// to it (ElectLeaders, preferred), where it is in sync and unfenced.
    async fn maybe_rebalance_leaders(&self, image: &crate::MetadataImage, now: i64) {
        let Some(interval) = self.shared.options.leader_imbalance_check_interval else {
            return;
        };
        {
            let mut liveness = self
                .shared
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let last = *liveness.last_rebalance_ms.get_or_insert(now);
            if now.saturating_sub(last) < interval.as_millis() as i64 {
                return;
            }
            liveness.last_rebalance_ms = Some(now);
        }
        let partitions = crate::state::imbalanced_partitions(image, LEADER_IMBALANCE_PERCENT);
        if partitions.is_empty() {
            return;
        }
        tracing::info!(
            partitions = partitions.len(),
            "moving partitions back to their preferred leaders"
        );
        let _ = self
            .propose(MetadataCommand::ElectLeaders {
                election: crate::state::ElectionType::Preferred,
                partitions: Some(partitions),
            })
            .await;
    }
}

/// Kafka's `leader.imbalance.per.broker.percentage`.
const LEADER_IMBALANCE_PERCENT: u32 = 10;

/// Runs the active controller's duties whenever this node is active, until
/// shutdown.
pub(super) async fn run(controller: Controller, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => controller.active_round().await,
        }
    }
}
