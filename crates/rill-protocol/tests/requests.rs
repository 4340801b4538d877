//! Request parsing: round trips through kafka-protocol's own encoder, and
//! every way a frame can be wrong.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{encode_request, header, header_len, WIDE_TABLE};
use rill_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use rill_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use rill_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, ProduceRequest, RequestKind, TopicName,
};
use rill_protocol::kafka_protocol::protocol::StrBytes;
use rill_protocol::{decode_frame, encode_frame, parse_request, parse_request_with, RequestError};

fn api_versions_request(version: i16) -> RequestKind {
    let mut request = ApiVersionsRequest::default();
    if version >= 3 {
        request = request
            .with_client_software_name(StrBytes::from_static_str("librdkafka"))
            .with_client_software_version(StrBytes::from_static_str("2.12.1"));
    }
    RequestKind::ApiVersions(request)
}

fn metadata_request(version: i16) -> RequestKind {
    let topic = |name: &'static str| {
        // The topic id stays nil: it needs the `uuid` crate, and its
        // encoding is kafka-protocol's business, not ours.
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(name))))
    };
    let mut request =
        MetadataRequest::default().with_topics(Some(vec![topic("orders"), topic("audit.log")]));
    if version >= 4 {
        request = request.with_allow_auto_topic_creation(true);
    }
    if (8..=10).contains(&version) {
        request = request.with_include_cluster_authorized_operations(true);
    }
    if version >= 8 {
        request = request.with_include_topic_authorized_operations(true);
    }
    RequestKind::Metadata(request)
}

fn produce_request() -> RequestKind {
    // The records are opaque here: any bytes go through untouched.
    let records = Bytes::from_static(b"\x00\x01not really a record batch\xff");
    let partition = PartitionProduceData::default()
        .with_index(3)
        .with_records(Some(records));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("orders")))
        .with_partition_data(vec![partition]);
    RequestKind::Produce(
        ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic]),
    )
}

fn assert_round_trip(api_key: ApiKey, version: i16, body: RequestKind) {
    let header = header(api_key, version, 0x0102_0304 + i32::from(version));
    let frame = encode_request(&header, &body);
    let request = parse_request_with(frame, WIDE_TABLE)
        .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
    assert_eq!(request.api_key, api_key);
    assert_eq!(request.api_version, version);
    assert_eq!(request.header, header, "{api_key:?} v{version}");
    assert_eq!(request.body, body, "{api_key:?} v{version}");
    assert_eq!(request.trailing_bytes, 0);
}

#[test]
fn api_versions_round_trips_at_every_supported_version() {
    for version in 0..=3 {
        let header = header(ApiKey::ApiVersions, version, 7);
        let body = api_versions_request(version);
        let request = parse_request(encode_request(&header, &body)).unwrap();
        assert_eq!(request.header, header);
        assert_eq!(request.body, body);
    }
}

#[test]
fn metadata_round_trips_including_flexible_versions() {
    for version in [0, 1, 4, 8, 9, 10, 12, 13] {
        assert_round_trip(ApiKey::Metadata, version, metadata_request(version));
    }
}

#[test]
fn produce_round_trips_including_flexible_versions() {
    for version in [3, 7, 8, 9, 11] {
        assert_round_trip(ApiKey::Produce, version, produce_request());
    }
}

#[test]
fn flexible_header_tagged_fields_survive() {
    let mut header = header(ApiKey::ApiVersions, 3, 11);
    header
        .unknown_tagged_fields
        .insert(5, Bytes::from_static(b"tag"));
    let request = parse_request(encode_request(&header, &api_versions_request(3))).unwrap();
    assert_eq!(request.header, header);
}

#[test]
fn null_client_id_is_accepted() {
    let header = header(ApiKey::ApiVersions, 1, 11).with_client_id(None);
    let request = parse_request(encode_request(&header, &api_versions_request(1))).unwrap();
    assert_eq!(request.header.client_id, None);
}

#[test]
fn through_the_framer_split_at_every_byte() {
    let frames = [
        encode_request(&header(ApiKey::ApiVersions, 3, 1), &api_versions_request(3)),
        encode_request(&header(ApiKey::Produce, 9, 2), &produce_request()),
        encode_request(&header(ApiKey::Metadata, 12, 3), &metadata_request(12)),
    ];
    let mut stream = BytesMut::new();
    for frame in &frames {
        encode_frame(frame, &mut stream).unwrap();
    }
    for cut in 0..=stream.len() {
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        for chunk in [&stream[..cut], &stream[cut..]] {
            buf.extend_from_slice(chunk);
            while let Some(frame) = decode_frame(&mut buf, 1 << 20).unwrap() {
                let request = parse_request_with(frame.freeze(), WIDE_TABLE).unwrap();
                ids.push(request.header.correlation_id);
            }
        }
        assert_eq!(ids, [1, 2, 3], "cut at {cut}");
    }
}

#[test]
fn frames_shorter_than_the_key_and_version_are_unreadable() {
    for len in 0..4 {
        let frame = Bytes::from(vec![0_u8; len]);
        assert!(
            matches!(
                parse_request(frame),
                Err(RequestError::HeaderUnreadable { .. })
            ),
            "{len} bytes"
        );
    }
}

#[test]
fn truncated_header_is_unreadable_and_truncated_body_is_malformed() {
    let cases = [
        (header(ApiKey::ApiVersions, 3, 41), api_versions_request(3)),
        (header(ApiKey::Produce, 9, 42), produce_request()),
        (header(ApiKey::Produce, 3, 43), produce_request()),
        (header(ApiKey::Metadata, 12, 44), metadata_request(12)),
    ];
    for (header, body) in cases {
        let frame = encode_request(&header, &body);
        let body_at = header_len(&header);
        for cut in 0..frame.len() {
            let result = parse_request_with(frame.slice(..cut), WIDE_TABLE);
            if cut < body_at {
                assert!(
                    matches!(result, Err(RequestError::HeaderUnreadable { .. })),
                    "{header:?} cut at {cut}: {result:?}"
                );
            } else {
                match result {
                    Err(RequestError::Malformed { correlation_id, .. }) => {
                        assert_eq!(correlation_id, header.correlation_id)
                    }
                    other => panic!("{header:?} cut at {cut}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn client_id_that_is_not_utf8_is_unreadable() {
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(0);
    frame.put_i32(5);
    frame.put_i16(2);
    frame.put_slice(&[0xc3, 0x28]);
    assert!(matches!(
        parse_request(frame.freeze()),
        Err(RequestError::HeaderUnreadable { .. })
    ));
}

#[test]
fn unknown_api_keys_are_reported() {
    for api_key in [-1_i16, 93, 1000, i16::MAX, i16::MIN] {
        let mut frame = BytesMut::new();
        frame.put_i16(api_key);
        frame.put_i16(0);
        frame.put_i32(99);
        frame.put_i16(-1);
        assert_eq!(
            parse_request(frame.freeze()),
            Err(RequestError::UnknownApiKey {
                api_key,
                api_version: 0
            })
        );
    }
}

#[test]
fn unsupported_versions_carry_the_correlation_id() {
    // ApiVersions newer than the table (v4 is known to kafka-protocol, v127 to
    // nobody), and versions newer than the table's for other APIs (Fetch v18
    // carries KIP-1166's follower high watermark; Produce v12 means
    // transaction version 2).
    let cases = [
        (ApiKey::ApiVersions, 4, api_versions_request(4)),
        (
            ApiKey::Fetch,
            18,
            RequestKind::Fetch(kafka_protocol::messages::FetchRequest::default()),
        ),
        (
            ApiKey::Produce,
            12,
            RequestKind::Produce(kafka_protocol::messages::ProduceRequest::default()),
        ),
    ];
    for (api_key, api_version, body) in cases {
        let frame = encode_request(&header(api_key, api_version, 1234), &body);
        assert_eq!(
            parse_request(frame),
            Err(RequestError::UnsupportedVersion {
                api_key,
                api_version,
                correlation_id: 1234
            })
        );
    }
    // A version nobody knows: the body is never looked at, so garbage is fine.
    for api_version in [127, i16::MAX, -1] {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(api_version);
        frame.put_i32(-77);
        frame.put_i16(-1);
        if api_version >= 3 {
            frame.put_u8(0); // header v2: no tagged fields
        }
        frame.put_slice(b"\xff\xff\xff garbage body");
        assert_eq!(
            parse_request(frame.freeze()),
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                api_version,
                correlation_id: -77
            })
        );
    }
    // Below kafka-protocol's oldest Produce version, with a table that has Produce.
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(2);
    frame.put_i32(8);
    frame.put_i16(-1);
    frame.put_slice(b"a v2 body");
    let frame = frame.freeze();
    assert!(matches!(
        parse_request_with(frame, WIDE_TABLE),
        Err(RequestError::UnsupportedVersion {
            correlation_id: 8,
            ..
        })
    ));
}

#[test]
fn trailing_bytes_are_counted_not_rejected() {
    // Kafka does not check that a request body used up its frame.
    let header = header(ApiKey::ApiVersions, 3, 5);
    let body = api_versions_request(3);
    let mut frame = BytesMut::from(&encode_request(&header, &body)[..]);
    frame.put_slice(b"extra");
    let request = parse_request(frame.freeze()).unwrap();
    assert_eq!(request.body, body);
    assert_eq!(request.trailing_bytes, 5);
}

#[test]
fn body_that_does_not_decode_is_malformed() {
    // ApiVersions v3 with a client software name whose length runs past the end.
    let header = header(ApiKey::ApiVersions, 3, 6);
    let mut frame = BytesMut::from(&encode_request(&header, &api_versions_request(3))[..]);
    frame.truncate(header_len(&header));
    frame.put_u8(0x7f);
    frame.put_slice(b"short");
    assert!(matches!(
        parse_request(frame.freeze()),
        Err(RequestError::Malformed {
            api_key: ApiKey::ApiVersions,
            api_version: 3,
            correlation_id: 6,
            ..
        })
    ));
}
