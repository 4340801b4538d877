//! A raw Kafka protocol client for the fields librdkafka does not expose
//! (leader epochs, the controller id, error codes as sent): one connection,
//! one request at a time, encoded and decoded by kafka-protocol.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// One connection sending one request at a time.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    correlation_id: i32,
}

impl RawClient {
    /// Connects with `timeout` on the connect and on every read.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(RawClient {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `body` at `version` and reads its answer; panics on a broken
    /// connection or an answer that does not decode.
    pub fn send<R: Request>(&mut self, version: i16, body: R) -> R::Response {
        self.try_send(version, body).expect("raw request")
    }

    /// [`RawClient::send`], with I/O failures (a closed connection, a
    /// timeout) as errors.
    pub fn try_send<R: Request>(&mut self, version: i16, body: R) -> std::io::Result<R::Response> {
        let api_key = ApiKey::try_from(R::KEY).expect("known API");
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("rill-e2e")));
        let mut payload = BytesMut::new();
        header
            .encode(&mut payload, api_key.request_header_version(version))
            .expect("encode header");
        body.encode(&mut payload, version).expect("encode body");
        let mut frame = BytesMut::with_capacity(4 + payload.len());
        frame.put_u32(payload.len() as u32);
        frame.put_slice(&payload);
        self.stream.write_all(&frame)?;

        let mut size = [0; 4];
        self.stream.read_exact(&mut size)?;
        let mut response = vec![0; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response)?;
        let mut response = Bytes::from(response);
        let header =
            ResponseHeader::decode(&mut response, api_key.response_header_version(version))
                .expect("response header");
        assert_eq!(header.correlation_id, self.correlation_id);
        let body = R::Response::decode(&mut response, version).expect("response body");
        assert!(!response.has_remaining(), "bytes after the response");
        Ok(body)
    }
}
