//! openraft's network over TCP: one connection per peer and stream, opened
//! on first use and again after any failure.
//!
//! Every call is bounded by openraft's time-to-live for it (and the connect
//! by [`rpc::CONNECT_TIMEOUT`]). A peer that cannot be reached is reported
//! as `Unreachable`, after which openraft backs off (see
//! [`RaftNetwork::backoff`]: 100 ms doubling to 2 s) before it tries again;
//! a connection is reused only after a call that read its whole answer —
//! one that failed, timed out or was dropped half-way goes with its call,
//! and the next call opens a new one. A single voter never calls any of
//! this.

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
    ///
    /// Cancel-safe: the connection is taken out of `self` for the
    /// exchange and put back only once its answer has been read. A call
    /// that fails, times out or is dropped half-way (openraft puts its own
    /// timeout around every RPC, and drops the call when that fires first)
    /// takes its connection with it: an answer still in flight there must
    /// never be read as the next call's. That once made a leader count a
    /// follower as holding entries it did not have (docs/chaos.md,
    /// finding 10).
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
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
                stream
            }
        };
        let exchange = async {
            rpc::write_frame(&mut stream, request).await?;
            rpc::read_frame::<_, Response>(&mut stream)
                .await?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
                })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => {
                // Clean: nothing of this call is left on the connection.
                self.stream = Some(stream);
                Ok(response)
            }
            Ok(Err(error)) => Err(CallError::Network(error)),
            // The answer may still come; the connection goes with it.
            Err(_) => Err(CallError::Network(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("node {} did not answer within {timeout:?}", self.target),
            ))),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::raft::rpc::{ControllerRequest, ControllerResponse};

    /// A peer that answers the n-th request it reads (across connections)
    /// with `NotController { leader: Some(n) }`, the first one late.
    async fn numbering_peer() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    while let Ok(Some(_)) = rpc::read_frame::<_, Request>(&mut stream).await {
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == 1 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let answer = Response::Controller(ControllerResponse::NotController {
                            leader: Some(n),
                        });
                        if rpc::write_frame(&mut stream, &answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_call_dropped_half_way_takes_its_connection_with_it() {
        let mut peer = TcpPeer::new(7, numbering_peer().await);
        let request = Request::Controller(ControllerRequest::DescribeQuorum);
        // Dropped by a timeout around the call, as openraft does with its
        // own: the first answer is still on its way.
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            peer.call(&request, Duration::from_secs(5)),
        )
        .await;
        assert!(dropped.is_err(), "the first call was to be cut short");
        // The next call must get its own answer, not the late one.
        let answer = peer
            .call(&request, Duration::from_secs(5))
            .await
            .expect("an answer");
        match answer {
            Response::Controller(ControllerResponse::NotController { leader }) => {
                assert_eq!(leader, Some(2), "read another call's answer");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
