// Shared by the integration tests; each test file uses a different subset.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use rill_protocol::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use rill_protocol::kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};
use rill_protocol::SupportedApi;

/// A version table with APIs the broker does not implement yet, so that their
/// parsing can be tested.
pub const WIDE_TABLE: &[SupportedApi] = &[
    SupportedApi::new(ApiKey::Produce, 3, 13),
    SupportedApi::new(ApiKey::Metadata, 0, 13),
    SupportedApi::new(ApiKey::ApiVersions, 0, 4),
];

pub fn header(api_key: ApiKey, api_version: i16, correlation_id: i32) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("rill-test")))
}

/// A request frame (without size prefix) encoded by kafka-protocol's client
/// side encoder, a code path independent of our parsing.
pub fn encode_request(header: &RequestHeader, body: &RequestKind) -> Bytes {
    let mut buf = BytesMut::new();
    encode_request_header_into_buffer(&mut buf, header).unwrap();
    body.encode(&mut buf, header.request_api_version).unwrap();
    buf.freeze()
}

/// The length of the encoded header alone.
pub fn header_len(header: &RequestHeader) -> usize {
    let mut buf = BytesMut::new();
    encode_request_header_into_buffer(&mut buf, header).unwrap();
    buf.len()
}
