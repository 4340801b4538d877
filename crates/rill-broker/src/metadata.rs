//! The one seam between a broker and the controller quorum: the committed
//! metadata image (now, and as it changes) and the requests only the
//! active controller answers. Everything on the broker side — handlers,
//! the group coordinator, the replica fetchers, producer ids — reaches the
//! controller through [`MetadataClient`], so each can be tested against an
//! image and answers of the test's own, without a Raft quorum. The
//! concrete [`Controller`] implements it; only `server` (which starts and
//! stops the node) holds the concrete type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rill_controller::raft::rpc::{BrokerHeartbeat, BrokerRegistrationRequest, HeartbeatAnswer};
use rill_controller::raft::QuorumState;
use rill_controller::{ApplyOutcome, Controller, ControllerError, MetadataCommand, MetadataImage};
use tokio::sync::watch;

/// An answer of the active controller, still to come.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, ControllerError>> + Send + 'a>>;

/// What a broker needs of the controller quorum.
pub trait MetadataClient: Send + Sync + std::fmt::Debug {
    /// The latest committed image this node has applied.
    fn image(&self) -> Arc<MetadataImage>;

    /// Every committed image from now on (`changed().await` wakes on each).
    fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>>;

    /// Whether this node's controller is the active one.
    fn is_active(&self) -> bool;

    /// Proposes `command` to the active controller and waits until it is
    /// applied to this node's image too, within the controller's request
    /// timeout.
    fn submit(&self, command: MetadataCommand) -> Answer<'_, ApplyOutcome>;

    /// [`MetadataClient::submit`] within the caller's own timeout.
    fn submit_within(
        &self,
        command: MetadataCommand,
        timeout: Duration,
    ) -> Answer<'_, ApplyOutcome>;

    /// Registers this node as a broker; its broker epoch.
    fn register_broker(&self, registration: BrokerRegistrationRequest) -> Answer<'_, i64>;

    /// One broker heartbeat to the active controller.
    fn heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
        timeout: Duration,
    ) -> Answer<'_, HeartbeatAnswer>;

    /// The quorum as the active controller sees it (DescribeQuorum).
    fn describe_quorum(&self, timeout: Duration) -> Answer<'_, QuorumState>;
}

impl MetadataClient for Controller {
    fn image(&self) -> Arc<MetadataImage> {
        Controller::image(self)
    }

    fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        Controller::subscribe(self)
    }

    fn is_active(&self) -> bool {
        Controller::is_active(self)
    }

    fn submit(&self, command: MetadataCommand) -> Answer<'_, ApplyOutcome> {
        Box::pin(Controller::submit(self, command))
    }

    fn submit_within(
        &self,
        command: MetadataCommand,
        timeout: Duration,
    ) -> Answer<'_, ApplyOutcome> {
        Box::pin(Controller::submit_within(self, command, timeout))
    }

    fn register_broker(&self, registration: BrokerRegistrationRequest) -> Answer<'_, i64> {
        Box::pin(Controller::register_broker(self, registration))
    }

    fn heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
        timeout: Duration,
    ) -> Answer<'_, HeartbeatAnswer> {
        Box::pin(Controller::heartbeat(self, heartbeat, timeout))
    }

    fn describe_quorum(&self, timeout: Duration) -> Answer<'_, QuorumState> {
        Box::pin(Controller::describe_quorum(self, timeout))
    }
}
