//! Target `request`: request framing and the decoding of every advertised
//! API and version.

use arbitrary::Unstructured;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};
use rill_protocol::{decode_frame, parse_request, RequestError, SUPPORTED_APIS};

/// The first byte chooses how the rest is used:
/// - 0: a byte stream, fed to [`decode_frame`] in chunks whose sizes come
///   from the input, under a small frame size limit; every frame is parsed.
/// - 1: one frame, parsed as it is (seeds are real requests).
/// - 2, 3: an (API, version) from the advertised table and a valid header
///   for it, then the rest as the body, so that every body decoder is
///   reached rather than only those whose key and version the fuzzer
///   happens to guess.
pub fn request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => frames(rest),
        1 => parse_and_check(Bytes::copy_from_slice(rest)),
        _ => structured(rest),
    }
}

/// Chunked framing takes the same frames off the stream, and stops at the
/// same error, as framing the whole stream at once; no frame is over the
/// limit.
fn frames(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(limit), Ok(chunk_sizes)) = (u.int_in_range(0..=1024_usize), u.arbitrary::<[u8; 8]>())
    else {
        return;
    };
    let stream = u.take_rest();

    let mut whole = BytesMut::from(stream);
    let mut expected = Vec::new();
    let expected_end = loop {
        match decode_frame(&mut whole, limit) {
            Ok(Some(frame)) => expected.push(frame),
            end => break end,
        }
    };

    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut end = Ok(None);
    let mut fed = 0;
    let mut sizes = chunk_sizes.iter().cycle();
    'feed: while fed < stream.len() {
        let size = usize::from(*sizes.next().expect("cycles")).max(1);
        let to = (fed + size).min(stream.len());
        buf.extend_from_slice(&stream[fed..to]);
        fed = to;
        loop {
            match decode_frame(&mut buf, limit) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                error => {
                    end = error;
                    break 'feed;
                }
            }
        }
    }
    if stream.is_empty() {
        end = decode_frame(&mut buf, limit);
    }
    assert_eq!(frames, expected, "chunked framing differs from whole");
    assert_eq!(end, expected_end, "chunked framing ends differently");
    if end.is_ok() {
        assert_eq!(buf, whole, "chunked framing leaves different bytes");
    }
    for frame in frames {
        assert!(
            frame.len() <= limit,
            "frame of {} over {limit}",
            frame.len()
        );
        parse_and_check(frame.freeze());
    }
}

fn structured(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(api) = u.choose(SUPPORTED_APIS) else {
        return;
    };
    let version = match u.ratio(1, 16) {
        // Versions outside the advertised range too, now and then.
        Ok(true) => u.arbitrary::<i16>().unwrap_or(api.max),
        _ => u.int_in_range(api.min..=api.max).unwrap_or(api.min),
    };
    let correlation_id = u.arbitrary::<i32>().unwrap_or(0);
    let client_id = match u.arbitrary::<Option<String>>() {
        Ok(id) => id.map(StrBytes::from_string),
        Err(_) => None,
    };
    let header = RequestHeader::default()
        .with_request_api_key(api.key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id);
    let mut frame = BytesMut::new();
    encode_request_header_into_buffer(&mut frame, &header).expect("encode a request header");
    frame.extend_from_slice(u.take_rest());
    let frame = frame.freeze();
    if let Err(RequestError::HeaderUnreadable { reason }) = parse_request(frame.clone()) {
        panic!(
            "a valid {:?} v{version} header was unreadable: {reason}",
            api.key
        );
    }
    parse_and_check(frame);
}

/// Parses one frame. A request that parses is of an advertised version,
/// and encodes (header and body, with kafka-protocol's client-side
/// encoder) to a frame that parses to the same request.
fn parse_and_check(frame: Bytes) {
    let request = match parse_request(frame.clone()) {
        Ok(request) => request,
        Err(RequestError::UnsupportedVersion {
            api_key,
            api_version,
            ..
        }) => {
            assert!(
                !rill_protocol::supported(api_key).is_some_and(|r| r.contains(&api_version)),
                "{api_key:?} v{api_version} is advertised but was refused"
            );
            return;
        }
        Err(_) => return,
    };
    let (api_key, version) = (request.api_key, request.api_version);
    assert!(
        rill_protocol::supported(api_key).is_some_and(|r| r.contains(&version)),
        "{api_key:?} v{version} parsed but is not advertised"
    );
    assert_eq!(request.header.request_api_key, api_key as i16);
    assert_eq!(request.header.request_api_version, version);
    assert!(request.trailing_bytes <= frame.len());

    let mut encoded = BytesMut::new();
    if encode_request_header_into_buffer(&mut encoded, &request.header).is_err() {
        return;
    }
    if request.body.encode(&mut encoded, version).is_err() {
        // Encoders refuse some values a decoder accepts (for example a
        // field set at a version that cannot carry it); refusing is fine.
        return;
    }
    let again = parse_request(encoded.freeze());
    if again.as_ref().is_ok_and(|again| {
        again.trailing_bytes == 0 && again.header == request.header && again.body == request.body
    }) {
        return;
    }
    // kafka-protocol keeps unknown tagged fields in a map keyed by i32: a
    // tag of 2^31 or more becomes a negative key, which its encoders count
    // but do not write (`write_unknown_tagged_fields(buf, 0.., ..)`), so
    // such a request re-encodes to one that does not parse. rill never
    // re-encodes a request nor sends unknown tagged fields back, so only
    // requests without them must round-trip.
    let debug = format!("{:?}{:?}", request.header, request.body);
    if debug
        .replace("unknown_tagged_fields: {}", "")
        .contains("unknown_tagged_fields: {")
    {
        return;
    }
    match again {
        Err(error) => {
            panic!("{api_key:?} v{version} re-encoded to an unparseable request: {error}")
        }
        Ok(again) => panic!(
            "{api_key:?} v{version} changed by re-encoding:\n{:?}\n{:?}",
            request, again
        ),
    }
}
