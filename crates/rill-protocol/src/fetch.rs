//! The zero-copy Fetch response writer.
//!
//! A Fetch response is mostly record bytes that already sit in segment
//! files. Encoding it through kafka-protocol would need those bytes in
//! memory; this writer instead encodes everything around them and leaves a
//! hole for each partition's records, so that the broker can send them
//! straight from the file (`sendfile`). Output is a list of [`FramePart`]s:
//! encoded bytes, and the caller's record sources in between, in wire order.
//! The frame's size prefix counts both.
//!
//! Versions 4 to 17 are written: from v13 a topic is named by its id, from
//! v12 a partition may carry the current leader (KIP-951's hint, which the
//! broker sets from v16) and from v16 the response the endpoints of the
//! leaders it names. A read_committed fetch lists the aborted transactions
//! of the records it returns; a read_uncommitted one writes null there.
//! Fields rill never sets are written as their defaults: no diverging
//! epoch or snapshot id (tagged fields, omitted). The tests compare every version byte for byte
//! with kafka-protocol's own encoder.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::frame::SIZE_PREFIX_LEN;
use crate::response::EncodeError;

/// The Fetch versions this writer encodes.
pub const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=17;
/// Fetch is flexible (compact arrays and strings, tagged fields) from v12.
const FIRST_FLEXIBLE_VERSION: i16 = 12;
/// From v13 topics are named by id (KIP-516).
const FIRST_TOPIC_ID_VERSION: i16 = 13;
/// From v16 the response lists the endpoints of the leaders it names.
const FIRST_NODE_ENDPOINTS_VERSION: i16 = 16;

/// Something that will be sent as record bytes: its length is all the
/// writer needs.
pub trait RecordSource {
    fn byte_len(&self) -> u64;
}

impl RecordSource for Bytes {
    fn byte_len(&self) -> u64 {
        Bytes::len(self) as u64
    }
}

/// One partition of a Fetch response.
#[derive(Debug, Clone)]
pub struct FetchPartitionOut<R> {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub preferred_read_replica: i32,
    /// The aborted transactions among the records, as (producer id, first
    /// offset), for a read_committed fetch; None (null on the wire) for a
    /// read_uncommitted one.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    /// The partition's leader and leader epoch, for a client that asked
    /// the wrong broker (KIP-951); written from v12 when set.
    pub current_leader: Option<(i32, i32)>,
    /// The record batches, in order; sent back to back as the partition's
    /// `records` field (an empty list is an empty, non-null field).
    pub records: Vec<R>,
}

/// One topic of a Fetch response: named by `topic` up to v12, by
/// `topic_id` from v13.
#[derive(Debug, Clone)]
pub struct FetchTopicOut<R> {
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub partitions: Vec<FetchPartitionOut<R>>,
}

/// Where a broker named as a current leader listens (v16+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpointOut {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// A Fetch response whose records are left to the caller to send.
#[derive(Debug, Clone)]
pub struct FetchResponseOut<R> {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<FetchTopicOut<R>>,
    /// Written from v16, when not empty.
    pub node_endpoints: Vec<NodeEndpointOut>,
}

/// A piece of an encoded frame.
#[derive(Debug, Clone)]
pub enum FramePart<R> {
    Bytes(Bytes),
    Records(R),
}

impl<R> FetchResponseOut<R> {
    /// Total record bytes in the response.
    pub fn record_bytes(&self) -> u64
    where
        R: RecordSource,
    {
        self.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .flat_map(|p| &p.records)
            .map(RecordSource::byte_len)
            .sum()
    }
}

/// Writes the whole response frame (size prefix, response header, body) as
/// parts, for a request at `version` with `correlation_id`.
pub fn encode_fetch_response<R: RecordSource>(
    version: i16,
    correlation_id: i32,
    response: FetchResponseOut<R>,
) -> Result<Vec<FramePart<R>>, EncodeError> {
    let unsupported = |reason: String| EncodeError::Body {
        api_key: ApiKey::Fetch,
        api_version: version,
        reason,
    };
    if !FETCH_VERSIONS.contains(&version) {
        return Err(unsupported(format!(
            "the zero-copy writer encodes versions {FETCH_VERSIONS:?}"
        )));
    }
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    let mut parts = Vec::new();
    let mut out = BytesMut::with_capacity(256);
    // The size prefix is filled in at the end, once every part is known.
    out.put_i32(0);
    out.put_i32(correlation_id);
    if flexible {
        put_unsigned_varint(&mut out, 0); // response header tagged fields
    }
    out.put_i32(response.throttle_time_ms);
    if version >= 7 {
        out.put_i16(response.error_code);
        out.put_i32(response.session_id);
    }
    put_array_len(&mut out, flexible, response.topics.len())?;
    for topic in response.topics {
        if version >= FIRST_TOPIC_ID_VERSION {
            out.put_slice(topic.topic_id.as_bytes());
        } else {
            put_string(&mut out, flexible, &topic.topic).map_err(unsupported)?;
        }
        put_array_len(&mut out, flexible, topic.partitions.len())?;
        for partition in topic.partitions {
            out.put_i32(partition.partition_index);
            out.put_i16(partition.error_code);
            out.put_i64(partition.high_watermark);
            out.put_i64(partition.last_stable_offset);
            if version >= 5 {
                out.put_i64(partition.log_start_offset);
            }
            match &partition.aborted_transactions {
                None if flexible => put_unsigned_varint(&mut out, 0),
                None => out.put_i32(-1),
                Some(aborted) => {
                    put_array_len(&mut out, flexible, aborted.len())?;
                    for (producer_id, first_offset) in aborted {
                        out.put_i64(*producer_id);
                        out.put_i64(*first_offset);
                        if flexible {
                            put_unsigned_varint(&mut out, 0); // tagged fields
                        }
                    }
                }
            }
            if version >= 11 {
                out.put_i32(partition.preferred_read_replica);
            }
            let records_len: u64 = partition.records.iter().map(RecordSource::byte_len).sum();
            let records_len = u32::try_from(records_len)
                .ok()
                .filter(|len| *len < i32::MAX as u32)
                .ok_or_else(|| {
                    unsupported(format!("{records_len} record bytes in one partition"))
                })?;
            if flexible {
                put_unsigned_varint(&mut out, records_len + 1);
            } else {
                out.put_i32(records_len as i32);
            }
            if records_len > 0 {
                parts.push(FramePart::Bytes(out.split().freeze()));
                parts.extend(partition.records.into_iter().map(FramePart::Records));
            }
            if flexible {
                match partition.current_leader {
                    // Tag 1: LeaderIdAndEpoch, two INT32s and no tags.
                    Some((leader_id, leader_epoch)) => {
                        put_unsigned_varint(&mut out, 1);
                        put_unsigned_varint(&mut out, 1);
                        put_unsigned_varint(&mut out, 9);
                        out.put_i32(leader_id);
                        out.put_i32(leader_epoch);
                        put_unsigned_varint(&mut out, 0);
                    }
                    None => put_unsigned_varint(&mut out, 0),
                }
            }
        }
        if flexible {
            put_unsigned_varint(&mut out, 0); // topic tagged fields
        }
    }
    if flexible {
        if version >= FIRST_NODE_ENDPOINTS_VERSION && !response.node_endpoints.is_empty() {
            // Tag 0: the endpoints, a compact array of NodeEndpoint.
            let mut field = BytesMut::new();
            put_array_len(&mut field, true, response.node_endpoints.len())?;
            for node in &response.node_endpoints {
                field.put_i32(node.node_id);
                put_string(&mut field, true, &node.host).map_err(unsupported)?;
                field.put_i32(node.port);
                match &node.rack {
                    Some(rack) => put_string(&mut field, true, rack).map_err(unsupported)?,
                    None => put_unsigned_varint(&mut field, 0),
                }
                put_unsigned_varint(&mut field, 0);
            }
            put_unsigned_varint(&mut out, 1);
            put_unsigned_varint(&mut out, 0);
            let len = u32::try_from(field.len())
                .map_err(|_| unsupported(format!("{} bytes of endpoints", field.len())))?;
            put_unsigned_varint(&mut out, len);
            out.put_slice(&field);
        } else {
            put_unsigned_varint(&mut out, 0); // response tagged fields
        }
    }
    parts.push(FramePart::Bytes(out.freeze()));

    let total: u64 = parts
        .iter()
        .map(|part| match part {
            FramePart::Bytes(bytes) => bytes.len() as u64,
            FramePart::Records(records) => records.byte_len(),
        })
        .sum();
    let size = i32::try_from(total - SIZE_PREFIX_LEN as u64)
        .map_err(|_| unsupported(format!("a frame of {total} bytes")))?;
    let FramePart::Bytes(first) = &mut parts[0] else {
        unreachable!("the first part is always encoded bytes");
    };
    let mut head = BytesMut::from(first.as_ref());
    head[..SIZE_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    *first = head.freeze();
    Ok(parts)
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_array_len(out: &mut BytesMut, flexible: bool, len: usize) -> Result<(), EncodeError> {
    let len = i32::try_from(len).map_err(|_| EncodeError::Body {
        api_key: ApiKey::Fetch,
        api_version: -1,
        reason: format!("an array of {len} entries"),
    })?;
    if flexible {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_i32(len);
    }
    Ok(())
}

fn put_string(out: &mut BytesMut, flexible: bool, value: &str) -> Result<(), String> {
    let len =
        i16::try_from(value.len()).map_err(|_| format!("a string of {} bytes", value.len()))?;
    if flexible {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_i16(len);
    }
    out.put_slice(value.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn sample() -> FetchResponseOut<Bytes> {
        let partition = |index: i32, records: Vec<&'static [u8]>| FetchPartitionOut {
            partition_index: index,
            error_code: if index == 2 { 1 } else { 0 },
            high_watermark: 1000 + i64::from(index),
            last_stable_offset: 900,
            log_start_offset: 7,
            preferred_read_replica: -1,
            aborted_transactions: match index {
                0 => Some(vec![(4000, 12), (4001, 19)]),
                1 => Some(vec![]),
                _ => None,
            },
            current_leader: (index == 2).then_some((3, 17)),
            records: records.into_iter().map(Bytes::from_static).collect(),
        };
        FetchResponseOut {
            throttle_time_ms: 3,
            error_code: 0,
            session_id: 0,
            topics: vec![
                FetchTopicOut {
                    topic: "orders".into(),
                    topic_id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                    partitions: vec![
                        partition(0, vec![b"first batch", b"second"]),
                        partition(1, vec![]),
                        partition(2, vec![b"x"]),
                    ],
                },
                FetchTopicOut {
                    topic: "a".repeat(200),
                    topic_id: uuid::Uuid::from_u128(2),
                    partitions: vec![partition(5, vec![&[7u8; 300]])],
                },
                FetchTopicOut {
                    topic: "empty".into(),
                    topic_id: uuid::Uuid::from_u128(3),
                    partitions: vec![],
                },
            ],
            node_endpoints: vec![
                NodeEndpointOut {
                    node_id: 3,
                    host: "broker-3.example".into(),
                    port: 9092,
                    rack: Some("rack-b".into()),
                },
                NodeEndpointOut {
                    node_id: 4,
                    host: "127.0.0.4".into(),
                    port: 19092,
                    rack: None,
                },
            ],
        }
    }

    /// The same response through kafka-protocol's encoder.
    fn reference(version: i16, correlation_id: i32, out: &FetchResponseOut<Bytes>) -> Vec<u8> {
        let topics = out
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let records: Vec<u8> = p.records.iter().flat_map(|r| r.to_vec()).collect();
                        PartitionData::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(p.error_code)
                            .with_high_watermark(p.high_watermark)
                            .with_last_stable_offset(p.last_stable_offset)
                            .with_log_start_offset(p.log_start_offset)
                            .with_preferred_read_replica(BrokerId(p.preferred_read_replica))
                            .with_aborted_transactions(p.aborted_transactions.as_ref().map(
                                |aborted| {
                                    aborted
                                        .iter()
                                        .map(|(producer_id, first_offset)| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(*producer_id))
                                                .with_first_offset(*first_offset)
                                        })
                                        .collect()
                                },
                            ))
                            .with_current_leader(match p.current_leader {
                                Some((id, epoch)) => LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(id))
                                    .with_leader_epoch(epoch),
                                None => LeaderIdAndEpoch::default(),
                            })
                            .with_records(Some(Bytes::from(records)))
                    })
                    .collect();
                let topic = FetchableTopicResponse::default().with_partitions(partitions);
                // Each version names a topic one way; the other field
                // must keep its default.
                if version >= 13 {
                    topic.with_topic_id(t.topic_id)
                } else {
                    topic.with_topic(TopicName(StrBytes::from_string(t.topic.clone())))
                }
            })
            .collect();
        let endpoints = out
            .node_endpoints
            .iter()
            .map(|n| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(n.node_id))
                    .with_host(StrBytes::from_string(n.host.clone()))
                    .with_port(n.port)
                    .with_rack(n.rack.clone().map(StrBytes::from_string))
            })
            .collect();
        let body = FetchResponse::default()
            .with_throttle_time_ms(out.throttle_time_ms)
            .with_error_code(out.error_code)
            .with_session_id(out.session_id)
            .with_responses(topics)
            .with_node_endpoints(if version >= 16 { endpoints } else { Vec::new() });
        let mut dst = BytesMut::new();
        crate::encode_response(
            ApiKey::Fetch,
            version,
            correlation_id,
            &ResponseKind::Fetch(body),
            &mut dst,
        )
        .unwrap();
        dst.to_vec()
    }

    fn flatten(parts: Vec<FramePart<Bytes>>) -> Vec<u8> {
        parts
            .into_iter()
            .flat_map(|part| match part {
                FramePart::Bytes(b) | FramePart::Records(b) => b.to_vec(),
            })
            .collect()
    }

    #[test]
    fn matches_kafka_protocol_byte_for_byte() {
        for version in FETCH_VERSIONS {
            let response = sample();
            let expected = reference(version, 42, &response);
            let parts = encode_fetch_response(version, 42, response).unwrap();
            assert_eq!(flatten(parts), expected, "version {version}");
        }
    }

    #[test]
    fn records_stay_separate_parts() {
        let parts = encode_fetch_response(12, 1, sample()).unwrap();
        let records: Vec<usize> = parts
            .iter()
            .filter_map(|p| match p {
                FramePart::Records(r) => Some(r.len()),
                FramePart::Bytes(_) => None,
            })
            .collect();
        assert_eq!(records, vec![11, 6, 1, 300]);
    }

    #[test]
    fn rejects_versions_outside_the_range() {
        assert!(encode_fetch_response(3, 1, sample()).is_err());
        assert!(encode_fetch_response(18, 1, sample()).is_err());
    }
}
