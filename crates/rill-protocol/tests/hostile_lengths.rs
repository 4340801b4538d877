//! Declared lengths far beyond the bytes that follow them.
//!
//! A request declares the length of each array before its elements, and a
//! client can declare any length. kafka-protocol 0.18.0 as published reserves
//! the declared length before reading any element, so a 50-byte body could
//! ask for hundreds of gigabytes and abort the process. rill builds it from
//! `vendor/kafka-protocol`, patched to reject a declared length longer than
//! the bytes left, as Kafka's generated readers do, and to reserve at most
//! 1 MiB ahead of the elements (`vendor/kafka-protocol/PATCHES.md`).
//!
//! These tests prove the patch for every API and version kafka-protocol
//! knows. The global allocator of this test binary records the largest
//! allocation each thread asks for, so a test can bound what decoding one
//! body allocates whatever the kernel's overcommit policy; and it refuses any
//! allocation over `allocation::ALLOCATION_BYTES_MAX`, so a decoder that
//! regresses aborts here on every machine ("memory allocation of … bytes
//! failed") instead of passing where the kernel happens to grant the request.
//! Without the patch every test here fails, most by that abort.

mod common;

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use common::header;
use proptest::prelude::*;
use proptest::sample::Index;
use rill_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use rill_protocol::kafka_protocol::messages::{ApiKey, RequestKind};
use rill_protocol::kafka_protocol::protocol::encode_request_header_into_buffer;
use rill_protocol::kafka_protocol::records::RecordBatchDecoder;
use rill_protocol::{parse_request_with, Request, RequestError, SupportedApi};

use allocation::largest_allocation;

/// The global allocator: the system allocator, plus a per-thread record of the
/// largest single allocation asked for, plus a hard ceiling.
#[allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; nothing else here is unsafe.
mod allocation {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Larger requests are refused, and Rust aborts the process on a refused
    /// allocation. Nothing in these tests legitimately asks for this much.
    pub const ALLOCATION_BYTES_MAX: usize = 256 * 1024 * 1024;

    thread_local! {
        // A `const` thread local of a `Copy` type neither allocates nor
        // registers a destructor, so the allocator can use it.
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(bytes: usize) {
        // `try_with`: the slot may be gone while the thread is exiting.
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(bytes)));
    }

    pub struct Tracking;

    // SAFETY: every call is forwarded unchanged to `System`, except that
    // requests over the ceiling get the null pointer that signals failure.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            if layout.size() > ALLOCATION_BYTES_MAX {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller upholds `alloc`'s contract; passed on as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            if layout.size() > ALLOCATION_BYTES_MAX {
                return std::ptr::null_mut();
            }
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            if new_size > ALLOCATION_BYTES_MAX {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller upholds `realloc`'s contract; passed on as is.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` through this allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Runs `f` and returns its result with the largest single allocation it
    /// asked for on this thread.
    pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|largest| largest.set(0));
        let result = f();
        (result, LARGEST.with(Cell::get))
    }
}

#[global_allocator]
static ALLOCATOR: allocation::Tracking = allocation::Tracking;

/// What decoding a body of `body_len` bytes may allocate at once: elements
/// are larger in memory than on the wire, but only by a bounded factor.
fn allocation_bytes_max(body_len: usize) -> usize {
    const ALLOCATION_BYTES_PER_BODY_BYTE: usize = 512;
    const ALLOCATION_BYTES_BASE: usize = 64 * 1024;
    ALLOCATION_BYTES_BASE + ALLOCATION_BYTES_PER_BODY_BYTE * body_len
}

/// The declared lengths the sweeps put in place of an array's length.
const ARRAY_LENGTH_HOSTILE: [u8; 4] = i32::MAX.to_be_bytes();
/// An unsigned varint of `u32::MAX`: a compact array of 2^32 − 2 elements.
const COMPACT_ARRAY_LENGTH_HOSTILE: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];

/// The message of the patched length check, the same as Kafka's.
const COLLECTION_CHECK: &str = "Tried to allocate a collection of size";

/// Every API key kafka-protocol knows, at every version it knows.
static ALL_APIS: LazyLock<Vec<SupportedApi>> = LazyLock::new(|| {
    ApiKey::iter()
        .map(|key| {
            let versions = key.valid_versions();
            SupportedApi::new(key, versions.min, versions.max)
        })
        .collect()
});

fn frame(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    encode_request_header_into_buffer(&mut frame, &header(api_key, version, 7)).unwrap();
    frame.put_slice(body);
    frame.freeze()
}

/// Parses `body` as a request of `api_key` at `version` under a table of every
/// API, and checks what that allocated at most.
fn parse_within_bounds(
    api_key: ApiKey,
    version: i16,
    body: &[u8],
) -> Result<Request, RequestError> {
    let frame = frame(api_key, version, body);
    let (result, largest) = largest_allocation(|| parse_request_with(frame, &ALL_APIS));
    assert!(
        largest <= allocation_bytes_max(body.len()),
        "{api_key:?} v{version}: decoding a {}-byte body allocated {largest} bytes at once",
        body.len()
    );
    if let Err(RequestError::HeaderUnreadable { reason }) = &result {
        panic!("{api_key:?} v{version}: a valid header was unreadable: {reason}");
    }
    result
}

/// Whether `result` is the patched length check's rejection.
fn is_collection_check(result: &Result<Request, RequestError>) -> bool {
    match result {
        Err(RequestError::Malformed { reason, .. }) => reason.contains(COLLECTION_CHECK),
        _ => false,
    }
}

/// The request kafka-protocol builds by default for `api_key`: every array
/// empty or null, so its encoding has each top-level array length in place.
fn default_request(api_key: ApiKey) -> RequestKind {
    macro_rules! default_request {
        ($($name:ident)*) => {
            match api_key {
                $(ApiKey::$name => RequestKind::$name(Default::default()),)*
            }
        };
    }
    // Every `ApiKey` variant; the match is exhaustive, so a kafka-protocol
    // that adds an API does not compile here until it is listed.
    default_request!(
        Produce Fetch ListOffsets Metadata OffsetCommit OffsetFetch FindCoordinator JoinGroup
        Heartbeat LeaveGroup SyncGroup DescribeGroups ListGroups SaslHandshake ApiVersions
        CreateTopics DeleteTopics DeleteRecords InitProducerId OffsetForLeaderEpoch
        AddPartitionsToTxn AddOffsetsToTxn EndTxn WriteTxnMarkers TxnOffsetCommit DescribeAcls
        CreateAcls DeleteAcls DescribeConfigs AlterConfigs AlterReplicaLogDirs DescribeLogDirs
        SaslAuthenticate CreatePartitions CreateDelegationToken RenewDelegationToken
        ExpireDelegationToken DescribeDelegationToken DeleteGroups ElectLeaders
        IncrementalAlterConfigs AlterPartitionReassignments ListPartitionReassignments
        OffsetDelete DescribeClientQuotas AlterClientQuotas DescribeUserScramCredentials
        AlterUserScramCredentials Vote BeginQuorumEpoch EndQuorumEpoch DescribeQuorum
        AlterPartition UpdateFeatures Envelope FetchSnapshot DescribeCluster DescribeProducers
        BrokerRegistration BrokerHeartbeat UnregisterBroker DescribeTransactions
        ListTransactions AllocateProducerIds ConsumerGroupHeartbeat ConsumerGroupDescribe
        ControllerRegistration GetTelemetrySubscriptions PushTelemetry AssignReplicasToDirs
        ListConfigResources DescribeTopicPartitions ShareGroupHeartbeat ShareGroupDescribe
        ShareFetch ShareAcknowledge AddRaftVoter RemoveRaftVoter UpdateRaftVoter
        InitializeShareGroupState ReadShareGroupState WriteShareGroupState
        DeleteShareGroupState ReadShareGroupStateSummary DescribeShareGroupOffsets
        AlterShareGroupOffsets DeleteShareGroupOffsets
    )
}

/// The default request body of `api_key` at `version`, as a client encodes
/// it, or `None` where the message type does not know `version` although
/// `ApiKey::valid_versions` lists it (OffsetCommit v10 in kafka-protocol
/// 0.18.0): there the decoder refuses every body before reading it.
fn default_body(api_key: ApiKey, version: i16) -> Option<Vec<u8>> {
    let mut body = BytesMut::new();
    match default_request(api_key).encode(&mut body, version) {
        Ok(()) => Some(body.to_vec()),
        Err(error) => {
            assert!(
                format!("{error:#}").contains("version not supported"),
                "{api_key:?} v{version}: default body: {error:#}"
            );
            None
        }
    }
}

/// `body` with a hostile declared length at every place one can stand: an
/// INT32 length written over each 4 bytes, and a compact (varint) length put
/// in place of each byte. Where that place holds an array's length, the body
/// declares an array far longer than the bytes left.
fn hostile_variants(body: &[u8]) -> Vec<Vec<u8>> {
    let mut variants = Vec::new();
    for offset in 0..=body.len().saturating_sub(ARRAY_LENGTH_HOSTILE.len()) {
        let mut variant = body.to_vec();
        let end = (offset + ARRAY_LENGTH_HOSTILE.len()).min(body.len());
        variant.splice(offset..end, ARRAY_LENGTH_HOSTILE);
        variants.push(variant);
    }
    for offset in 0..=body.len() {
        let mut variant = body.to_vec();
        let end = (offset + 1).min(body.len());
        variant.splice(offset..end, COMPACT_ARRAY_LENGTH_HOSTILE);
        variants.push(variant);
    }
    variants
}

/// The requests whose default body has no array at the top level at these
/// versions, so that no hostile variant reaches the length check; every other
/// (API, version) must reject at least one. Each row was checked against the
/// message's decoder in kafka-protocol 0.18.0: scalars, strings and bytes
/// only, or arrays that arrive in a later version (FindCoordinator v4,
/// LeaveGroup v3, ListGroups v4, ListConfigResources v1).
const NO_TOP_LEVEL_ARRAY: &[(ApiKey, i16, i16)] = &[
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 2),
    (ApiKey::ListGroups, 0, 3),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::RenewDelegationToken, 1, 2),
    (ApiKey::ExpireDelegationToken, 1, 2),
    (ApiKey::Envelope, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    // v1's offline log dirs are a tagged field, absent from a default body.
    (ApiKey::BrokerHeartbeat, 0, 1),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::AllocateProducerIds, 0, 0),
    (ApiKey::GetTelemetrySubscriptions, 0, 0),
    (ApiKey::PushTelemetry, 0, 0),
    (ApiKey::ListConfigResources, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
];

/// For every request at every version: a hostile length in place of any
/// top-level array's length is rejected by the length check, and no variant,
/// whatever it hit, allocates more than a bounded multiple of its size. The
/// sweep prints each API and version as it starts them (see `--nocapture`).
#[test]
fn every_api_rejects_huge_declared_array_lengths() {
    let mut without_array = Vec::new();
    let mut unknown_to_message = Vec::new();
    let mut cases = 0;
    for api in ALL_APIS.iter() {
        for version in api.min..=api.max {
            eprintln!("{:?} v{version}", api.key);
            let Some(body) = default_body(api.key, version) else {
                for variant in hostile_variants(&[]) {
                    assert!(parse_within_bounds(api.key, version, &variant).is_err());
                }
                unknown_to_message.push((api.key, version));
                continue;
            };
            // The unmodified body decodes: the hostile length alone makes a
            // variant fail.
            assert!(
                parse_within_bounds(api.key, version, &body).is_ok(),
                "{:?} v{version}: default body does not decode",
                api.key
            );
            let mut rejected = 0;
            for variant in hostile_variants(&body) {
                cases += 1;
                if is_collection_check(&parse_within_bounds(api.key, version, &variant)) {
                    rejected += 1;
                }
            }
            if rejected == 0 {
                without_array.push((api.key, version));
            }
        }
    }
    eprintln!("{cases} hostile bodies; no array reached: {without_array:?}");
    eprintln!("versions the message types do not know: {unknown_to_message:?}");
    let expected: Vec<(ApiKey, i16)> = NO_TOP_LEVEL_ARRAY
        .iter()
        .flat_map(|&(key, min, max)| (min..=max).map(move |version| (key, version)))
        .collect();
    assert_eq!(without_array, expected);
}

/// The example the patch was written for: a Metadata body of a few dozen
/// bytes declaring 2^31 − 1 (INT32) or 2^32 − 2 (compact) topics. kafka-protocol
/// as published reserved that many topics and aborted the process.
#[test]
fn metadata_with_a_huge_topic_count_is_malformed() {
    for (version, length, bytes_left) in [
        (4, &ARRAY_LENGTH_HOSTILE[..], 46),
        (12, &COMPACT_ARRAY_LENGTH_HOSTILE[..], 45),
    ] {
        let mut body = length.to_vec();
        body.resize(50, 0);
        let declared = if version >= 9 {
            u32::MAX - 1
        } else {
            i32::MAX as u32
        };
        match parse_within_bounds(ApiKey::Metadata, version, &body) {
            Err(RequestError::Malformed {
                reason,
                correlation_id: 7,
                ..
            }) => assert!(
                reason.contains(&format!(
                    "{COLLECTION_CHECK} {declared}, but there are only {bytes_left} bytes remaining"
                )),
                "v{version}: {reason}"
            ),
            other => panic!("v{version}: {other:?}"),
        }
    }
}

/// The check is Kafka's: a declared length equal to the bytes left passes it
/// (each element takes at least one byte), one more does not.
#[test]
fn a_declared_length_may_equal_the_bytes_left() {
    // Metadata v4: topics ARRAY of (name STRING); the 0xff filler reads as
    // null names, two bytes each, so the body runs out halfway through.
    let bytes_left = 10;
    for (declared, rejected) in [(bytes_left, false), (bytes_left + 1, true)] {
        let mut body = (declared as i32).to_be_bytes().to_vec();
        body.resize(4 + bytes_left, 0xff);
        let result = parse_within_bounds(ApiKey::Metadata, 4, &body);
        assert!(result.is_err());
        assert_eq!(
            is_collection_check(&result),
            rejected,
            "{declared}: {result:?}"
        );
    }
}

/// A declared length that passes the check can still be as large as the
/// frame, and a topic is larger in memory than the two bytes it needs on the
/// wire: what is reserved before the elements are read is bounded anyway.
#[test]
fn reservation_ahead_of_the_elements_is_bounded() {
    const TOPICS_DECLARED: usize = 1 << 20;
    const RESERVATION_BYTES_MAX: usize = 1024 * 1024;
    let unbounded = TOPICS_DECLARED * std::mem::size_of::<MetadataRequestTopic>();
    assert!(unbounded >= 32 * RESERVATION_BYTES_MAX, "{unbounded}");
    // Metadata v4: the topic count, then 0xfe bytes, where the first topic's
    // name length reads as −258 and decoding stops.
    let mut body = (TOPICS_DECLARED as i32).to_be_bytes().to_vec();
    body.resize(4 + TOPICS_DECLARED, 0xfe);
    let frame = frame(ApiKey::Metadata, 4, &body);
    let (result, largest) = largest_allocation(|| parse_request_with(frame, &ALL_APIS));
    match result {
        Err(RequestError::Malformed { reason, .. }) => {
            assert!(reason.contains("String length is negative"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Without the bound this reserved 1 Mi topics at once, and a 100 MiB
    // frame (Kafka's default `socket.request.max.bytes`) could reserve 100 Mi.
    assert!(
        largest <= RESERVATION_BYTES_MAX,
        "reserved {largest} bytes ahead of the elements"
    );
}

/// Arrays inside array elements go through the same decoders: a Produce
/// request with one topic of one partition rejects a hostile length in place
/// of the topic count and in place of the partition count.
#[test]
fn nested_arrays_reject_huge_declared_lengths() {
    use rill_protocol::kafka_protocol::messages::produce_request::{
        PartitionProduceData, TopicProduceData,
    };
    use rill_protocol::kafka_protocol::messages::{ProduceRequest, TopicName};
    use rill_protocol::kafka_protocol::protocol::StrBytes;

    let partition = PartitionProduceData::default()
        .with_index(3)
        .with_records(Some(Bytes::from_static(b"opaque")));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("orders")))
        .with_partition_data(vec![partition]);
    let request = RequestKind::Produce(ProduceRequest::default().with_topic_data(vec![topic]));
    let versions = ApiKey::Produce.valid_versions();
    for version in versions.min..=versions.max {
        let mut body = BytesMut::new();
        request.encode(&mut body, version).unwrap();
        assert!(parse_within_bounds(ApiKey::Produce, version, &body).is_ok());
        let rejected = hostile_variants(&body)
            .iter()
            .filter(|variant| {
                is_collection_check(&parse_within_bounds(ApiKey::Produce, version, variant))
            })
            .count();
        assert!(rejected >= 2, "Produce v{version}: {rejected} rejected");
    }
}

/// A record batch (magic 2, uncompressed, valid CRC) declaring
/// `record_count` records, followed by `records` as they are.
fn record_batch(record_count: i32, records: &[u8]) -> Bytes {
    let mut checked = BytesMut::new(); // everything the CRC covers
    checked.put_i16(0); // attributes: uncompressed, create time
    checked.put_i32(0); // last offset delta
    checked.put_i64(0); // base timestamp
    checked.put_i64(0); // max timestamp
    checked.put_i64(-1); // producer id
    checked.put_i16(-1); // producer epoch
    checked.put_i32(-1); // base sequence
    checked.put_i32(record_count);
    checked.put_slice(records);
    let mut batch = BytesMut::new();
    batch.put_i64(0); // base offset
    batch.put_i32(4 + 1 + 4 + checked.len() as i32); // batch length
    batch.put_i32(0); // partition leader epoch
    batch.put_i8(2); // magic
    batch.put_u32(crc32c::crc32c(&checked));
    batch.put_slice(&checked);
    batch.freeze()
}

/// One record with null key and value, declaring its header count with the
/// varint `header_count`, followed by `rest`.
fn record(header_count: &[u8], rest: &[u8]) -> Vec<u8> {
    // Attributes, timestamp delta 0, offset delta 0, key and value null (−1).
    let mut body = vec![0, 0, 0, 1, 1];
    body.extend_from_slice(header_count);
    body.extend_from_slice(rest);
    assert!(body.len() < 64); // so that its zigzag varint length is one byte
    let mut record = vec![2 * body.len() as u8];
    record.extend_from_slice(&body);
    record
}

/// kafka-protocol's record batch decoder is not used by rill (batches stay
/// raw bytes), but the patch covers its two declared counts as well.
#[test]
fn record_batches_reject_huge_declared_counts() {
    let decode = |batch: Bytes| {
        let (result, largest) =
            largest_allocation(|| RecordBatchDecoder::decode(&mut batch.clone()));
        assert!(largest <= 64 * 1024, "{largest}");
        result
    };
    // The builders make a batch kafka-protocol accepts.
    let valid = decode(record_batch(1, &record(&[0], &[]))).unwrap();
    assert_eq!(valid.records.len(), 1);
    assert!(valid.records[0].headers.is_empty());

    let error = decode(record_batch(i32::MAX, &record(&[0], &[]))).unwrap_err();
    let expected = format!("{COLLECTION_CHECK} 2147483647, but there are only 7 bytes remaining");
    assert!(format!("{error:#}").contains(&expected), "{error:#}");

    // Zigzag varint of i32::MAX headers, then 8 bytes.
    let headers = [0xfe, 0xff, 0xff, 0xff, 0x0f];
    let error = decode(record_batch(1, &record(&headers, &[0; 8]))).unwrap_err();
    let expected = format!("{COLLECTION_CHECK} 2147483647, but there are only 8 bytes remaining");
    assert!(format!("{error:#}").contains(&expected), "{error:#}");
}

fn api_and_version(api: Index, version: Index) -> (ApiKey, i16) {
    let api = api.get(&ALL_APIS);
    let versions = (api.min..=api.max).collect::<Vec<_>>();
    (api.key, *version.get(&versions))
}

/// A declared length as a client could write it: INT32 or unsigned varint.
fn length_bytes(length: u32, compact: bool) -> Vec<u8> {
    if !compact {
        return length.to_be_bytes().to_vec();
    }
    let mut bytes = Vec::new();
    let mut rest = length;
    while rest >= 0x80 {
        bytes.push(rest as u8 | 0x80);
        rest >>= 7;
    }
    bytes.push(rest as u8);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_body_of_any_api_decodes_within_bounds(
        api in any::<Index>(),
        version in any::<Index>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (api_key, version) = api_and_version(api, version);
        let _ = parse_within_bounds(api_key, version, &body);
    }

    /// A well-formed body with any length written anywhere in it, so that
    /// lengths land where arrays are read more often than in random bytes.
    #[test]
    fn any_length_anywhere_in_a_default_body_decodes_within_bounds(
        api in any::<Index>(),
        version in any::<Index>(),
        offset in any::<Index>(),
        length in prop_oneof![any::<u32>(), 0_u32..512],
        compact in any::<bool>(),
    ) {
        let (api_key, version) = api_and_version(api, version);
        let mut body = default_body(api_key, version).unwrap_or_default();
        let start = offset.index(body.len() + 1);
        let length = length_bytes(length, compact);
        let end = (start + length.len()).min(body.len());
        body.splice(start..end, length);
        let _ = parse_within_bounds(api_key, version, &body);
    }
}
