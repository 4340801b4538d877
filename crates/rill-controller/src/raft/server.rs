//! The controller port: Raft RPCs from peers go to openraft, broker
//! requests to the active controller (this node, or an answer naming the
//! one it knows).
//!
//! One task per connection answers its requests one at a time. A frame that
//! is too long or does not parse closes that connection and nothing else;
//! connections are bounded by [`CONNECTIONS_MAX`].

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::rpc::{self, ControllerResponse, Request, Response};
use super::Controller;

/// The most connections the controller port serves at once: a few per
/// peer and per broker of a cluster.
pub const CONNECTIONS_MAX: usize = 1024;

/// Serves the controller port until shutdown.
pub(super) async fn serve(
    controller: Controller,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "controller port: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "controller port: too many connections; closing the new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let controller = controller.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve_connection(controller, stream, peer) => {}
            }
            drop(permit);
        });
    }
}

async fn serve_connection(
    controller: Controller,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    loop {
        let read = tokio::time::timeout(
            rpc::READ_IDLE_TIMEOUT,
            rpc::read_frame::<_, Request>(&mut stream),
        );
        let request = match read.await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::info!(%peer, %error, "controller port: bad frame; closing the connection");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "controller port: connection idle too long; closing");
                return;
            }
        };
        let response = answer(&controller, request).await;
        if let Err(error) = rpc::write_frame(&mut stream, &response).await {
            tracing::debug!(%peer, %error, "controller port: cannot answer; closing");
            return;
        }
    }
}

async fn answer(controller: &Controller, request: Request) -> Response {
    match request {
        Request::Vote(rpc) => Response::Vote(controller.raft.vote(rpc).await),
        Request::AppendEntries(rpc) => {
            Response::AppendEntries(controller.raft.append_entries(rpc).await)
        }
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(controller.raft.install_snapshot(rpc).await)
        }
        Request::Controller(request) => {
            let leader = controller.raft.metrics().borrow().current_leader;
            if leader != Some(controller.raft_id()) {
                return Response::Controller(ControllerResponse::NotController { leader });
            }
            Response::Controller(controller.handle_as_active(request).await)
        }
    }
}
