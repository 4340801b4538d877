//! The controller port's wire format: what nodes send each other.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many
//! bytes of JSON. A connection carries one request at a time and its answer
//! (openraft keeps one connection per peer and per replication stream, so
//! requests never queue behind each other for long). Frames are bounded by
//! [`FRAME_BYTES_MAX`], checked before anything is allocated; a frame that
//! is too long or does not parse closes that connection and nothing else.
//!
//! JSON, as the controller's log: the messages are small (snapshots travel
//! in chunks of [`SNAPSHOT_CHUNK_BYTES`]), `serde_json` is already in the
//! tree, and a capture of the port can be read by eye. openraft's message
//! types are serde-serialisable, so they travel as they are.

use std::io;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rill_types::NodeId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use super::{RaftNodeId, TypeConfig};
use crate::state::{ApplyOutcome, MetadataCommand, MetadataError};

/// The largest frame either side accepts. A snapshot chunk is at most
/// [`SNAPSHOT_CHUNK_BYTES`] of data, which JSON writes as an array of
/// numbers (up to four bytes per byte); an append-entries batch is at most
/// [`ENTRIES_PER_APPEND_MAX`] entries of at most [`COMMAND_BYTES_MAX`].
pub const FRAME_BYTES_MAX: usize = 24 * 1024 * 1024;

/// The largest command (as JSON) a controller proposes. A larger one could
/// be written to the leader's log and then never fit a frame to its
/// followers; it is refused before it is proposed. The largest real one is
/// a topic of `PARTITIONS_PER_TOPIC_MAX` partitions with explicit replica
/// lists (about 1 MiB).
pub const COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024;

/// openraft's `max_payload_entries`: with [`COMMAND_BYTES_MAX`], what keeps
/// an append-entries frame within [`FRAME_BYTES_MAX`].
pub const ENTRIES_PER_APPEND_MAX: u64 = 8;

/// How long a connection may stay silent between frames, and a started
/// frame take to arrive whole. Raft peers send heartbeats every 200 ms; an
/// idle forwarding connection is simply opened again.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The snapshot chunk size openraft is configured with.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What one node asks another on the controller port.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Vote(VoteRequest<RaftNodeId>),
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// For the active controller; any other node answers
    /// [`ControllerResponse::NotController`].
    Controller(ControllerRequest),
}

/// The answer to a [`Request`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    AppendEntries(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<RaftNodeId>, RaftError<RaftNodeId, InstallSnapshotError>>,
    ),
    Controller(ControllerResponse),
}

/// What brokers (and nodes forwarding their own callers' requests) ask of
/// the active controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// Propose a command; answered once it is committed and applied.
    Submit(MetadataCommand),
    /// A broker process announces itself (KIP-631's BrokerRegistration).
    Register(BrokerRegistrationRequest),
    /// A registered broker is alive (KIP-631's BrokerHeartbeat).
    Heartbeat(BrokerHeartbeat),
    /// The quorum as the active controller sees it (DescribeQuorum).
    DescribeQuorum,
    /// A node that is not a voter asks to follow the metadata log as a
    /// learner (a broker-only node).
    AddObserver {
        node_id: NodeId,
        addr: String,
        /// The cluster id of the node's data dir, if it has one: a node of
        /// another cluster is refused before it is added.
        cluster_id: Option<String>,
        /// The data dir's id: the same node restarted may take its own
        /// place at once.
        directory_id: Uuid,
    },
}

/// A broker's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistrationRequest {
    pub node_id: NodeId,
    pub incarnation_id: Uuid,
    /// The data dir's id, from its `meta.properties`.
    pub directory_id: Uuid,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// A broker's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub node_id: NodeId,
    pub broker_epoch: i64,
    /// The version of the last image the broker has applied.
    pub metadata_version: u64,
    /// The broker is shutting down and asks for its leaderships to move.
    pub want_shut_down: bool,
}

/// The active controller's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub fenced: bool,
    /// A shutting-down broker leads nothing any more and may stop.
    pub shut_down_ready: bool,
}

/// The answer to a [`ControllerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// The command was committed at `log_index` and applied with this
    /// result.
    Submitted {
        result: Result<ApplyOutcome, MetadataError>,
        log_index: u64,
    },
    Registered {
        broker_epoch: i64,
        log_index: u64,
    },
    Heartbeat(HeartbeatAnswer),
    Quorum(super::QuorumState),
    ObserverAdded,
    /// This node is not the active controller; `leader` is the one it
    /// knows of, if any.
    NotController {
        leader: Option<RaftNodeId>,
    },
    /// Another live process has registered this node id.
    DuplicateBrokerRegistration(String),
    /// The node's data dir belongs to another cluster.
    InconsistentClusterId(String),
    /// The controller could not do it now (no space, raft stopped, …);
    /// the message says why.
    Failed(String),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "controller message of {} bytes is over the frame limit of {FRAME_BYTES_MAX}",
                body.len()
            ),
        ));
    }
    let len = u32::try_from(body.len()).expect("bounded by FRAME_BYTES_MAX");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one frame. `Ok(None)` when the peer closed the connection between
/// frames; an error for a frame over the limit, a cut-off frame or one that
/// does not parse.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    reader: &mut R,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {FRAME_BYTES_MAX}"),
        ));
    }
    // Grown as bytes arrive, not allocated at the declared length: a peer
    // that announces a large frame and sends nothing holds no memory.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    reader.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame cut off after {} of {len} bytes", body.len()),
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bounds_hold() {
        let request = Request::Controller(ControllerRequest::Heartbeat(BrokerHeartbeat {
            node_id: 3,
            broker_epoch: 7,
            metadata_version: 42,
            want_shut_down: false,
        }));
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &request).await.unwrap();
        let back: Request = read_frame(&mut bytes.as_slice()).await.unwrap().unwrap();
        assert!(matches!(
            back,
            Request::Controller(ControllerRequest::Heartbeat(BrokerHeartbeat {
                node_id: 3,
                broker_epoch: 7,
                metadata_version: 42,
                want_shut_down: false
            }))
        ));

        // A clean close between frames is not an error.
        let none: Option<Request> = read_frame(&mut [].as_slice()).await.unwrap();
        assert!(none.is_none());
        // A declared length over the bound is refused before allocating.
        let huge = u32::MAX.to_be_bytes();
        assert!(read_frame::<_, Request>(&mut huge.as_slice())
            .await
            .is_err());
        // A frame cut short, and garbage that is not JSON.
        assert!(read_frame::<_, Request>(&mut &bytes[..bytes.len() - 1])
            .await
            .is_err());
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"hello");
        assert!(read_frame::<_, Request>(&mut garbage.as_slice())
            .await
            .is_err());
    }
}
