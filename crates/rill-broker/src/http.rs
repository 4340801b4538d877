//! The HTTP port: `GET /health` answers 200 once the node serves clients
//! (the listener is only served after start-up finished); `GET /metrics`
//! answers the Prometheus text exposition (see `crate::metrics`).
//!
//! hyper's HTTP/1.1 server, one request per connection: a scrape every few
//! seconds gains nothing from keep-alive, and closing after each answer
//! keeps every connection short-lived. Bounds: `http_connections_max`
//! connections at once (more are closed on accept), a request head within
//! `REQUEST_HEAD_TIMEOUT` and `REQUEST_HEAD_BYTES_MAX`, and a whole
//! connection within `CONNECTION_TIMEOUT`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics;
use crate::server::Broker;

/// The most bytes hyper buffers for a request head (hyper's smallest
/// allowed buffer); a larger head is answered 431.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client must send its request head within this time.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one connection lives, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP connections served at once: monitoring and health checks, a few.
const HTTP_CONNECTIONS_MAX: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: CancellationToken) {
    let http_connections = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely; back off rather than spin.
                warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&http_connections).try_acquire_owned() else {
            debug!(%peer, limit = HTTP_CONNECTIONS_MAX, "too many HTTP connections; closing the new one");
            continue;
        };
        let broker = Arc::clone(&broker);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| answer(Arc::clone(&broker), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .max_buf_size(REQUEST_HEAD_BYTES_MAX)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                let mut closing = false;
                loop {
                    tokio::select! {
                        result = connection.as_mut() => break result,
                        // Finish the answer under way, then close.
                        _ = shutdown.cancelled(), if !closing => {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(%peer, %error, "HTTP connection failed"),
                Err(_) => {
                    debug!(%peer, timeout = ?CONNECTION_TIMEOUT, "HTTP connection took too long; closed")
                }
            }
        });
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn answer(
    broker: Arc<Broker>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text =
        |status, body: &'static str| response(status, TEXT, Bytes::from_static(body.as_bytes()));
    if request.method() != Method::GET {
        let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        answer
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(answer);
    }
    Ok(match request.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            // Reading the state takes the logs' and the group
            // coordinator's locks: off the async threads.
            let render = move || {
                broker.metrics.render(&metrics::Sources {
                    node_id: broker.config.node_id,
                    metadata: &*broker.controller,
                    replicas: &broker.replicas,
                    groups: &broker.groups,
                    txns: &broker.txns,
                })
            };
            match tokio::task::spawn_blocking(render).await {
                Ok(body) => response(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(body)),
                Err(error) => {
                    warn!(%error, "rendering metrics failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}
