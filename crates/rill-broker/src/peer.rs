//! A connection from this broker to another broker's Kafka listener, for
//! the requests brokers send each other: a follower's Fetch and
//! OffsetForLeaderEpoch ([`crate::replication`]), the transaction
//! coordinator's WriteTxnMarkers ([`crate::txn`]).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read from a peer.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to another broker's Kafka listener: requests one at a
/// time, each bounded by a timeout.
pub struct PeerConnection {
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
}

impl PeerConnection {
    pub async fn connect(addr: &str, client_id: String) -> Result<PeerConnection, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(PeerConnection {
            stream,
            correlation_id: 0,
            client_id: StrBytes::from_string(client_id),
        })
    }

    /// Sends one request and reads its answer, within `timeout`. A
    /// connection whose call failed or timed out half-way must be dropped:
    /// its next read could be this call's late answer.
    pub async fn send<R: Request>(
        &mut self,
        body: R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, String> {
        tokio::time::timeout(timeout, self.exchange(body, version))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn exchange<R: Request>(&mut self, body: R, version: i16) -> Result<R::Response, String> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| format!("unknown API key {}", R::KEY))?;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut payload = BytesMut::new();
        header
            .encode(&mut payload, key.request_header_version(version))
            .and_then(|()| body.encode(&mut payload, version))
            .map_err(|e| format!("cannot encode {key:?} v{version}: {e}"))?;
        let mut frame = BytesMut::with_capacity(4 + payload.len());
        frame.put_u32(payload.len() as u32);
        frame.put_slice(&payload);
        let io = |e: std::io::Error| format!("{key:?}: {e}");
        self.stream.write_all(&frame).await.map_err(io)?;
        let size = self.stream.read_u32().await.map_err(io)? as usize;
        if size > RESPONSE_BYTES_MAX {
            return Err(format!("a {size}-byte answer to {key:?}"));
        }
        let mut answer = vec![0; size];
        self.stream.read_exact(&mut answer).await.map_err(io)?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
            .map_err(|e| format!("cannot decode the header of {key:?}: {e}"))?;
        if header.correlation_id != self.correlation_id {
            return Err(format!(
                "answer {} to request {}",
                header.correlation_id, self.correlation_id
            ));
        }
        let decoded = R::Response::decode(&mut answer, version)
            .map_err(|e| format!("cannot decode {key:?} v{version}: {e}"))?;
        Ok(decoded)
    }
}
