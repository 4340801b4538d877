//! DescribeLogDirs (key 35): the one log dir of this broker (its data
//! dir), with the size of each partition replica it holds and, from v4,
//! the file system's total and usable bytes. As Kafka's
//! `ReplicaManager.describeLogDirs`: a null topic list means every replica
//! here; named partitions this broker does not hold are left out; the
//! offset lag of a current (not future) replica is how far its log end is
//! below its high watermark, which is 0 once it has the records.

use std::collections::BTreeMap;

use rill_protocol::kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use rill_protocol::kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};
use tracing::warn;

use super::{str_bytes, wire_topic};
use crate::server::Broker;

pub fn handle(
    broker: &Broker,
    version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        let mut wanted: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for topic in topics {
            wanted
                .entry(topic.topic.0.as_str().to_string())
                .or_default()
                .extend(topic.partitions);
        }
        wanted
    });
    let mut held: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for partition in broker.replicas.all() {
        let topic = partition.tp.topic.as_str();
        let index = partition.tp.partition;
        if let Some(wanted) = &wanted {
            if !wanted.get(topic).is_some_and(|p| p.contains(&index)) {
                continue;
            }
        }
        let log_end_offset = partition.log.log_end_offset();
        held.entry(topic.to_string()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(index)
                .with_partition_size(i64::try_from(partition.log.size_bytes()).unwrap_or(i64::MAX))
                .with_offset_lag((partition.high_watermark() - log_end_offset).max(0))
                .with_is_future_key(false),
        );
    }
    let topics = held
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(wire_topic(&name))
                .with_partitions(partitions)
        })
        .collect();
    let dir = &broker.config.data_dir;
    let path = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(path.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    if version >= 4 {
        match rustix::fs::statvfs(dir) {
            Ok(stat) => {
                let bytes = |blocks: u64| {
                    i64::try_from(blocks.saturating_mul(stat.f_frsize)).unwrap_or(i64::MAX)
                };
                result = result
                    .with_total_bytes(bytes(stat.f_blocks))
                    .with_usable_bytes(bytes(stat.f_bavail));
            }
            Err(error) => {
                warn!(%error, dir = %dir.display(), "cannot read the data dir's file system size");
            }
        }
    }
    DescribeLogDirsResponse::default()
        .with_error_code(0)
        .with_results(vec![result])
}
