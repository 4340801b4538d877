//! Whatever bytes a client sends, framing and parsing return; they never panic.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::header;
use proptest::prelude::*;
use rill_protocol::kafka_protocol::protocol::encode_request_header_into_buffer;
use rill_protocol::{decode_frame, parse_request, SUPPORTED_APIS};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_stream_frames_and_parses_without_panicking(
        stream in proptest::collection::vec(any::<u8>(), 0..512),
        limit in 0_usize..300,
    ) {
        let mut buf = BytesMut::from(&stream[..]);
        while let Ok(Some(frame)) = decode_frame(&mut buf, limit) {
            prop_assert!(frame.len() <= limit);
            let _ = parse_request(frame.freeze());
        }
    }

    #[test]
    fn any_frame_parses_without_panicking(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_request(Bytes::from(frame));
    }

    #[test]
    fn valid_header_then_any_body_parses_without_panicking(
        api in proptest::sample::select(SUPPORTED_APIS),
        version_offset in 0_i16..8,
        correlation_id in any::<i32>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        // Versions past the supported range too, where the body is not decoded.
        let version = api.min + version_offset;
        let mut frame = BytesMut::new();
        encode_request_header_into_buffer(&mut frame, &header(api.key, version, correlation_id))
            .unwrap();
        frame.put_slice(&body);
        match parse_request(frame.freeze()) {
            Ok(request) => prop_assert_eq!(request.header.correlation_id, correlation_id),
            Err(rill_protocol::RequestError::HeaderUnreadable { .. }) => {
                prop_assert!(false, "a valid header was unreadable")
            }
            Err(_) => {}
        }
    }
}
