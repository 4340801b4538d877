//! openraft's network over TCP: one connection per peer and stream, opened
//! on first use and again after any failure.
//!
//! Every call is bounded by openraft's time-to-live for it (and the connect
//! by [`rpc::CONNECT_TIMEOUT`]). A peer that cannot be reached is reported
//! as `Unreachable`, after which openraft backs off (see
//! [`RaftNetwork::backoff`]: 100 ms doubling to 2 s) before it tries again;
//! a connection that failed mid-call is dropped and the next call opens a
//! new one. A single voter never calls any of this.

use std::io;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::net::TcpStream;

use super::rpc::{self, Request, Response};
use super::{RaftNodeId, TypeConfig};

/// Makes a [`TcpPeer`] for each peer openraft talks to.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpNetwork;

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpPeer;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> Self::Network {
        TcpPeer::new(target, node.addr.clone())
    }
}

/// A connection to one peer's controller port, opened lazily.
#[derive(Debug)]
pub struct TcpPeer {
    target: RaftNodeId,
    addr: String,
    stream: Option<TcpStream>,
}

/// Why one call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection could not be opened: the peer is down or cut off.
    Unreachable(io::Error),
    /// The connection broke or timed out during the call.
    Network(io::Error),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<RaftNodeId, BasicNode, E> {
        match self {
            CallError::Unreachable(error) => RPCError::Unreachable(Unreachable::new(&error)),
            CallError::Network(error) => RPCError::Network(NetworkError::new(&error)),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(error) => write!(f, "unreachable: {error}"),
            CallError::Network(error) => write!(f, "network: {error}"),
        }
    }
}

impl TcpPeer {
    pub(crate) fn new(target: RaftNodeId, addr: String) -> Self {
        Self {
            target,
            addr,
            stream: None,
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        if self.stream.is_none() {
            let connect = TcpStream::connect(self.addr.as_str());
            let stream = tokio::time::timeout(rpc::CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    CallError::Unreachable(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "connecting to node {} at {} timed out",
                            self.target, self.addr
                        ),
                    ))
                })?
                .map_err(CallError::Unreachable)?;
            // Small request/answer pairs: do not wait to fill a segment.
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let exchange = async {
            rpc::write_frame(stream, request).await?;
            rpc::read_frame::<_, Response>(stream)
                .await?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
                })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                self.stream = None;
                Err(CallError::Network(error))
            }
            Err(_) => {
                // The answer may still come; on this connection it would be
                // taken for the next call's. Start afresh.
                self.stream = None;
                Err(CallError::Network(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("node {} did not answer within {timeout:?}", self.target),
                )))
            }
        }
    }
}

fn unexpected(response: &Response) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("answer of the wrong kind: {response:?}"),
    )
}

impl RaftNetwork<TypeConfig> for TcpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<RaftNodeId>,
        RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>>,
    > {
        match self
            .call(&Request::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?
        {
            Response::AppendEntries(result) => result.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            other => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftNodeId>,
        RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?
        {
            Response::InstallSnapshot(result) => result.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            other => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>>>
    {
        match self
            .call(&Request::Vote(rpc), option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?
        {
            Response::Vote(result) => result.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            other => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(
            Some(Duration::from_millis(100)),
            |d| Some((*d * 2).min(Duration::from_secs(2))),
        ))
    }
}
