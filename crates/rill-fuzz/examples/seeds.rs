//! Writes seed inputs for the fuzz targets into `fuzz/corpus/<target>/`
//! (`seed-*` files): real request frames of every advertised API and
//! version, real record batches, and real log directories, so that the
//! fuzzers start deep instead of rediscovering the formats.
//!
//! `cargo run -p rill-fuzz --example seeds`, before `cargo fuzz cmin`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, JoinGroupRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest, RequestHeader,
    RequestKind, TopicName,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};
use rill_fuzz::log_recovery::{encode, Dir, Kind};
use rill_storage::records::{BatchBuilder, Header, Record};
use rill_storage::{Compression, FileCache, Log, LogConfig, LogOpenOptions};
use rill_types::{Clock, ManualClock};

const NOW_MS: i64 = 1_700_000_000_000;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("write a seed");
}

fn main() {
    request_seeds();
    let batches = batches();
    for (name, batch) in &batches {
        for flags in [0_u8, 2, 4, 8, 0x10, 0x30] {
            let mut data = vec![flags];
            data.extend_from_slice(batch);
            write("record_batch", &format!("{name}-{flags:02x}"), &data);
        }
    }
    let mut all = vec![0_u8];
    for (_, batch) in &batches {
        all.extend_from_slice(batch);
    }
    write("record_batch", "all", &all);
    log_seeds(&batches);
}

fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn request_bodies(api_key: ApiKey, batch: &[u8]) -> Vec<RequestKind> {
    macro_rules! default_of {
        ($($name:ident)*) => {
            match api_key {
                $(ApiKey::$name => RequestKind::$name(Default::default()),)*
                _ => return Vec::new(),
            }
        };
    }
    let mut bodies = vec![default_of!(
        Produce Fetch ListOffsets Metadata OffsetCommit OffsetFetch FindCoordinator JoinGroup
        Heartbeat LeaveGroup SyncGroup DescribeGroups ListGroups ApiVersions CreateTopics
        DeleteTopics DeleteRecords InitProducerId OffsetForLeaderEpoch DescribeConfigs
        AlterConfigs CreatePartitions DeleteGroups IncrementalAlterConfigs OffsetDelete
        DescribeCluster
    )];
    match api_key {
        ApiKey::Produce => bodies.push(RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(str("topic")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::copy_from_slice(batch)))])]),
        )),
        ApiKey::Metadata => bodies.push(RequestKind::Metadata(
            MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(str("topic"))))
            ])),
        )),
        ApiKey::JoinGroup => bodies.push(RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(str("group").into())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(30_000)
                .with_protocol_type(str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(str("range"))
                    .with_metadata(Bytes::from_static(
                        b"\x00\x01\x00\x00\x00\x01\x00\x05topic",
                    ))]),
        )),
        ApiKey::OffsetCommit => bodies.push(RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(str("group").into())
                .with_member_id(str("member"))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str("topic")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(42)
                        .with_committed_metadata(Some(str("meta")))])]),
        )),
        _ => {}
    }
    bodies
}

fn request_seeds() {
    let mut batch = BatchBuilder::new();
    batch.push(Some(b"key"), Some(b"value"), NOW_MS);
    let batch = batch.build();
    let mut stream = vec![0_u8, 0, 200, 3, 1, 7, 16, 64, 255, 2, 9];
    for api in rill_protocol::SUPPORTED_APIS {
        for version in api.min..=api.max {
            for (i, body) in request_bodies(api.key, &batch).iter().enumerate() {
                let header = RequestHeader::default()
                    .with_request_api_key(api.key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(7)
                    .with_client_id(Some(str("seed")));
                let mut frame = BytesMut::new();
                encode_request_header_into_buffer(&mut frame, &header).expect("encode a header");
                if body.encode(&mut frame, version).is_err() {
                    continue;
                }
                let mut data = vec![1_u8];
                data.extend_from_slice(&frame);
                write("request", &format!("{:?}-v{version}-{i}", api.key), &data);
                if api.key == ApiKey::ApiVersions || api.key == ApiKey::Metadata {
                    stream.extend_from_slice(&(frame.len() as i32).to_be_bytes());
                    stream.extend_from_slice(&frame);
                }
            }
        }
    }
    write("request", "stream", &stream);
}

fn batches() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut batch = BatchBuilder::new();
        batch.compression = codec;
        batch.push(Some(b"key"), Some(b"value"), NOW_MS);
        batch.push(None, Some(b"no key"), NOW_MS + 5);
        batch.push_record(Record {
            attributes: 0,
            timestamp_delta: 9,
            offset_delta: 2,
            key: Some(b"k2".to_vec()),
            value: None,
            headers: vec![Header {
                key: b"h".to_vec(),
                value: Some(b"hv".to_vec()),
            }],
        });
        out.push((format!("{codec:?}"), batch.build()));
    }
    let mut idempotent = BatchBuilder::new();
    idempotent.producer_id = 1000;
    idempotent.producer_epoch = 0;
    idempotent.base_sequence = 0;
    idempotent.push(Some(b"k"), Some(b"v"), NOW_MS);
    out.push(("idempotent".into(), idempotent.build()));
    let mut control = BatchBuilder::new();
    control.is_control = true;
    control.is_transactional = true;
    control.push(
        Some(b"\x00\x00\x00\x00"),
        Some(b"\x00\x00\x00\x00\x00\x00"),
        NOW_MS,
    );
    out.push(("control".into(), control.build()));
    out
}

fn log_seeds(batches: &[(String, Vec<u8>)]) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let log_dir: PathBuf = tmp.path().join("topic-0");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW_MS));
    let config = LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let log = Log::open(
        &log_dir,
        config,
        clock,
        FileCache::new(8),
        LogOpenOptions::default(),
    )
    .expect("open a log");
    for (epoch, (_, batch)) in batches.iter().enumerate() {
        log.append(&mut batch.clone(), epoch as i32 / 2)
            .expect("append a seed batch");
    }
    log.flush().expect("flush");
    log.close().expect("close");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&log_dir).expect("list the log") {
        let path = entry.expect("list the log").path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let contents = std::fs::read(&path).expect("read a log file");
        let (kind, base) = match name.split_once('.') {
            Some((base, "log")) => (Kind::Log, base),
            Some((base, "index")) => (Kind::Index, base),
            Some((base, "timeindex")) => (Kind::TimeIndex, base),
            _ if name == rill_storage::epoch::FILE_NAME => (Kind::EpochCheckpoint, "0"),
            _ => continue,
        };
        let base: u8 = base
            .parse::<u64>()
            .expect("a base offset")
            .try_into()
            .expect("small");
        files.push((kind, base, false, contents));
    }
    files.sort_by_key(|(kind, base, _, _)| (*base, format!("{kind:?}")));
    let dir = |files: Vec<(Kind, u8, bool, Vec<u8>)>, clean| Dir {
        recovery_point: 0,
        log_start_offset: 0,
        clean_shutdown: clean,
        segment_bytes: 4,
        files,
    };
    write(
        "log_recovery",
        "log-crashed",
        &encode(&dir(files.clone(), false)),
    );
    write(
        "log_recovery",
        "log-clean",
        &encode(&dir(files.clone(), true)),
    );
    let logs_only: Vec<_> = files.iter().filter(|f| f.0 == Kind::Log).cloned().collect();
    write(
        "log_recovery",
        "logs-only",
        &encode(&dir(logs_only.clone(), false)),
    );
    let mut torn = logs_only;
    if let Some(last) = torn.last_mut() {
        let keep = last.3.len() * 2 / 3;
        last.3.truncate(keep);
    }
    write("log_recovery", "torn-tail", &encode(&dir(torn, false)));
}
