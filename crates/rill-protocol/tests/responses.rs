//! Response encoding, checked byte by byte against the protocol spec
//! (<https://kafka.apache.org/protocol.html#The_Messages_ApiVersions>).

use bytes::{Buf, Bytes, BytesMut};
use rill_protocol::kafka_protocol::messages::{
    ApiKey, MetadataResponse, ResponseHeader, ResponseKind,
};
use rill_protocol::kafka_protocol::protocol::Decodable;
use rill_protocol::{
    api_versions_response, decode_frame, encode_api_versions_unsupported, encode_response,
    response_header_version, SUPPORTED_APIS,
};

fn encode_api_versions(version: i16, correlation_id: i32) -> Bytes {
    let mut dst = BytesMut::new();
    let body = ResponseKind::ApiVersions(api_versions_response());
    encode_response(
        ApiKey::ApiVersions,
        version,
        correlation_id,
        &body,
        &mut dst,
    )
    .unwrap();
    // The frame must come out of our own framer whole.
    let mut read = dst.clone();
    let payload = decode_frame(&mut read, usize::MAX).unwrap().unwrap();
    assert!(read.is_empty());
    assert_eq!(payload.len() + 4, dst.len());
    dst.freeze()
}

/// Reads Kafka's unsigned varint.
fn get_unsigned_varint(buf: &mut Bytes) -> u32 {
    let mut value = 0_u32;
    for shift in (0..35).step_by(7) {
        let byte = buf.get_u8();
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 5 bytes")
}

#[test]
fn api_versions_v0_bytes() {
    let mut buf = encode_api_versions(0, 0x0a0b_0c0d);
    let size = buf.get_i32();
    assert_eq!(size as usize, buf.remaining());
    // Response header v0: correlation_id only.
    assert_eq!(buf.get_i32(), 0x0a0b_0c0d);
    // ApiVersionsResponse v0: error_code INT16, api_keys ARRAY(INT32 length) of
    // (api_key INT16, min_version INT16, max_version INT16). No throttle time.
    assert_eq!(buf.get_i16(), 0);
    assert_eq!(buf.get_i32() as usize, SUPPORTED_APIS.len());
    for api in SUPPORTED_APIS {
        assert_eq!(buf.get_i16(), api.key as i16);
        assert_eq!(buf.get_i16(), api.min);
        assert_eq!(buf.get_i16(), api.max);
    }
    assert!(!buf.has_remaining(), "{} bytes left", buf.remaining());
}

#[test]
fn api_versions_v1_and_v2_add_throttle_time() {
    for version in [1, 2] {
        let mut buf = encode_api_versions(version, 3);
        assert_eq!(buf.get_i32() as usize, buf.remaining());
        assert_eq!(buf.get_i32(), 3);
        assert_eq!(buf.get_i16(), 0);
        assert_eq!(buf.get_i32() as usize, SUPPORTED_APIS.len());
        buf.advance(6 * SUPPORTED_APIS.len());
        assert_eq!(buf.get_i32(), 0, "throttle_time_ms");
        assert!(!buf.has_remaining());
    }
}

#[test]
fn api_versions_v3_bytes() {
    let mut buf = encode_api_versions(3, -5);
    assert_eq!(buf.get_i32() as usize, buf.remaining());
    // The response header stays v0 (no tagged fields) although v3 is flexible.
    assert_eq!(buf.get_i32(), -5);
    // ApiVersionsResponse v3: error_code INT16, api_keys COMPACT_ARRAY (length
    // + 1 as unsigned varint) of (api_key, min_version, max_version INT16,
    // tagged fields), throttle_time_ms INT32, tagged fields.
    assert_eq!(buf.get_i16(), 0);
    assert_eq!(
        get_unsigned_varint(&mut buf) as usize,
        SUPPORTED_APIS.len() + 1
    );
    for api in SUPPORTED_APIS {
        assert_eq!(buf.get_i16(), api.key as i16);
        assert_eq!(buf.get_i16(), api.min);
        assert_eq!(buf.get_i16(), api.max);
        assert_eq!(get_unsigned_varint(&mut buf), 0, "entry tagged fields");
    }
    assert_eq!(buf.get_i32(), 0, "throttle_time_ms");
    // No supported/finalized features and no ZK migration flag: no tagged fields.
    assert_eq!(get_unsigned_varint(&mut buf), 0, "tagged fields");
    assert!(!buf.has_remaining(), "{} bytes left", buf.remaining());
}

#[test]
fn unsupported_api_versions_answer_is_v0_with_error_35() {
    let mut dst = BytesMut::new();
    encode_api_versions_unsupported(77, &mut dst).unwrap();
    let mut buf = dst.freeze();
    assert_eq!(buf.get_i32() as usize, buf.remaining());
    assert_eq!(buf.get_i32(), 77);
    assert_eq!(buf.get_i16(), 35, "UNSUPPORTED_VERSION");
    assert_eq!(buf.get_i32(), 1, "only the ApiVersions entry");
    assert_eq!(buf.get_i16(), ApiKey::ApiVersions as i16);
    assert_eq!(buf.get_i16(), 0);
    assert_eq!(buf.get_i16(), 3);
    assert!(!buf.has_remaining());
}

#[test]
fn flexible_responses_use_header_v1() {
    assert_eq!(response_header_version(ApiKey::ApiVersions, 3), 0);
    assert_eq!(response_header_version(ApiKey::Metadata, 8), 0);
    assert_eq!(response_header_version(ApiKey::Metadata, 9), 1);

    let body = MetadataResponse::default().with_cluster_id(None);
    let mut dst = BytesMut::new();
    encode_response(
        ApiKey::Metadata,
        12,
        9,
        &ResponseKind::Metadata(body.clone()),
        &mut dst,
    )
    .unwrap();
    let mut payload = decode_frame(&mut dst, usize::MAX)
        .unwrap()
        .unwrap()
        .freeze();
    let header = ResponseHeader::decode(&mut payload, 1).unwrap();
    assert_eq!(header.correlation_id, 9);
    assert_eq!(MetadataResponse::decode(&mut payload, 12).unwrap(), body);
    assert!(!payload.has_remaining());
}

#[test]
fn failed_encoding_leaves_the_buffer_as_it_was() {
    let mut dst = BytesMut::from(&b"earlier frame"[..]);
    // ApiVersions has no v99: the body cannot be encoded.
    let body = ResponseKind::ApiVersions(api_versions_response());
    assert!(encode_response(ApiKey::ApiVersions, 99, 1, &body, &mut dst).is_err());
    assert_eq!(&dst[..], b"earlier frame");
}
