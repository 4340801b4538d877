//! Declared lengths far beyond the bytes that follow them.
//!
//! kafka-protocol 0.18 calls `Vec::with_capacity(declared_length)` for every
//! array before reading its elements. These tests show that a 50-byte body can
//! make it ask for hundreds of gigabytes, which aborts the process, and check
//! that `parse_request` never lets such a body reach a vulnerable decoder. The
//! decoding that can abort runs in a child process (this test binary run
//! again, one ignored test selected by name), so the abort is observed instead
//! of killing the test run.

mod common;

use std::process::{Command, Output};

use bytes::{BufMut, Bytes, BytesMut};
use common::header;
use rill_protocol::kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader};
use rill_protocol::kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable};
use rill_protocol::{parse_request, RequestError, SUPPORTED_APIS};

const CHILD_ENV: &str = "RILL_PROTOCOL_HOSTILE_CHILD";

/// A Metadata v12 body (flexible): the topics compact array declares
/// 2^32 − 2 elements, then the body ends.
fn metadata_v12_hostile_body() -> Bytes {
    let mut body = BytesMut::new();
    body.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // unsigned varint u32::MAX
    body.put_slice(&[0; 45]);
    body.freeze()
}

/// A Metadata v4 body (not flexible): the topics array declares i32::MAX
/// elements.
fn metadata_v4_hostile_body() -> Bytes {
    let mut body = BytesMut::new();
    body.put_i32(i32::MAX);
    body.put_slice(&[0; 46]);
    body.freeze()
}

fn frame(header: &RequestHeader, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    encode_request_header_into_buffer(&mut frame, header).unwrap();
    frame.put_slice(body);
    frame.freeze()
}

/// Runs the ignored test `name` of this binary in a child process.
fn run_child(name: &str, mode: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

/// With `vm.overcommit_memory = 1` the kernel grants any allocation, so the
/// huge reservation succeeds (untouched) and nothing aborts.
fn kernel_grants_any_allocation() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|mode| mode.trim() == "1")
}

#[test]
#[ignore = "run by kafka_protocol_preallocates_declared_array_lengths in a child process"]
fn child_decode_hostile_metadata() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mut body, version) = match mode.as_str() {
        "compact" => (metadata_v12_hostile_body(), 12),
        "array" => (metadata_v4_hostile_body(), 4),
        other => panic!("unknown mode {other}"),
    };
    // If the allocation is refused, the process aborts inside this call.
    let result = MetadataRequest::decode(&mut body, version);
    assert!(result.is_err());
}

#[test]
fn kafka_protocol_preallocates_declared_array_lengths() {
    if kernel_grants_any_allocation() {
        eprintln!("vm.overcommit_memory = 1: huge allocations succeed here; not checked");
        return;
    }
    for mode in ["compact", "array"] {
        let output = run_child("child_decode_hostile_metadata", mode);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // If this fails, kafka-protocol has started checking array lengths
        // against the bytes left: update the crate doc's "Hostile lengths".
        assert!(
            !output.status.success(),
            "{mode}: the decoder did not abort"
        );
        assert!(stderr.contains("memory allocation of"), "{mode}: {stderr}");
    }
}

#[test]
fn parse_request_does_not_decode_hostile_bodies_of_unsupported_apis() {
    for (version, body) in [
        (12, metadata_v12_hostile_body()),
        (4, metadata_v4_hostile_body()),
    ] {
        let frame = frame(&header(ApiKey::Metadata, version, 21), &body);
        assert!(frame.len() < 100);
        assert_eq!(
            parse_request(frame),
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::Metadata,
                api_version: version,
                correlation_id: 21
            })
        );
    }
}

/// Bodies for `api_key` at `version` with a maximal array length (as INT32
/// and as unsigned varint) at every offset of the first 64 bytes, zeros
/// elsewhere, so that whatever field comes first in the schema, some body puts
/// the huge length where an array's length is read.
fn hostile_bodies() -> Vec<Bytes> {
    let mut bodies = Vec::new();
    for offset in 0..64 {
        for length in [&i32::MAX.to_be_bytes()[..], &[0xff, 0xff, 0xff, 0xff, 0x0f]] {
            let mut body = vec![0_u8; 80];
            body[offset..offset + length.len()].copy_from_slice(length);
            bodies.push(Bytes::from(body));
        }
    }
    bodies
}

#[test]
#[ignore = "run by supported_apis_survive_hostile_lengths in a child process"]
fn child_parse_hostile_bodies_of_supported_apis() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    for api in SUPPORTED_APIS {
        for version in api.min..=api.max {
            for body in hostile_bodies() {
                // Any result is fine; an abort is not.
                let _ = parse_request(frame(&header(api.key, version, 1), &body));
            }
        }
    }
}

/// The tripwire for the version table: an API whose request has an array
/// decoded without a length check, added to `SUPPORTED_APIS`, makes this fail.
#[test]
fn supported_apis_survive_hostile_lengths() {
    let output = run_child("child_parse_hostile_bodies_of_supported_apis", "table");
    assert!(
        output.status.success(),
        "parsing hostile bodies of a supported API aborted; read the crate doc's \
         \"Hostile lengths\" section:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The child really ran the test (and did not filter it away).
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"));
}
