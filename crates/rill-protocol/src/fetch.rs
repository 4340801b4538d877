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
//! Versions 4 to 12 are written (rill's Fetch range; v13+ name topics by
//! id). Fields rill never sets are written as their defaults: no aborted
//! transactions (null), no diverging epoch, current leader or snapshot id
//! (tagged fields, omitted), no node endpoints. The tests compare every
//! version byte for byte with kafka-protocol's own encoder.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::frame::SIZE_PREFIX_LEN;
use crate::response::EncodeError;

/// The Fetch versions this writer encodes.
pub const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;
/// Fetch is flexible (compact arrays and strings, tagged fields) from v12.
const FIRST_FLEXIBLE_VERSION: i16 = 12;

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
    /// The record batches, in order; sent back to back as the partition's
    /// `records` field (an empty list is an empty, non-null field).
    pub records: Vec<R>,
}

/// One topic of a Fetch response.
#[derive(Debug, Clone)]
pub struct FetchTopicOut<R> {
    pub topic: String,
    pub partitions: Vec<FetchPartitionOut<R>>,
}

/// A Fetch response whose records are left to the caller to send.
#[derive(Debug, Clone)]
pub struct FetchResponseOut<R> {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<FetchTopicOut<R>>,
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
        put_string(&mut out, flexible, &topic.topic).map_err(unsupported)?;
        put_array_len(&mut out, flexible, topic.partitions.len())?;
        for partition in topic.partitions {
            out.put_i32(partition.partition_index);
            out.put_i16(partition.error_code);
            out.put_i64(partition.high_watermark);
            out.put_i64(partition.last_stable_offset);
            if version >= 5 {
                out.put_i64(partition.log_start_offset);
            }
            // Aborted transactions: null.
            if flexible {
                put_unsigned_varint(&mut out, 0);
            } else {
                out.put_i32(-1);
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
                put_unsigned_varint(&mut out, 0); // partition tagged fields
            }
        }
        if flexible {
            put_unsigned_varint(&mut out, 0); // topic tagged fields
        }
    }
    if flexible {
        put_unsigned_varint(&mut out, 0); // response tagged fields
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
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{BrokerId, FetchResponse, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn sample() -> FetchResponseOut<Bytes> {
        let partition = |index: i32, records: Vec<&'static [u8]>| FetchPartitionOut {
            partition_index: index,
            error_code: if index == 2 { 1 } else { 0 },
            high_watermark: 1000 + i64::from(index),
            last_stable_offset: 900,
            log_start_offset: 7,
            preferred_read_replica: -1,
            records: records.into_iter().map(Bytes::from_static).collect(),
        };
        FetchResponseOut {
            throttle_time_ms: 3,
            error_code: 0,
            session_id: 0,
            topics: vec![
                FetchTopicOut {
                    topic: "orders".into(),
                    partitions: vec![
                        partition(0, vec![b"first batch", b"second"]),
                        partition(1, vec![]),
                        partition(2, vec![b"x"]),
                    ],
                },
                FetchTopicOut {
                    topic: "a".repeat(200),
                    partitions: vec![partition(5, vec![&[7u8; 300]])],
                },
                FetchTopicOut {
                    topic: "empty".into(),
                    partitions: vec![],
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
                            .with_aborted_transactions(None)
                            .with_records(Some(Bytes::from(records)))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(t.topic.clone())))
                    .with_partitions(partitions)
            })
            .collect();
        let body = FetchResponse::default()
            .with_throttle_time_ms(out.throttle_time_ms)
            .with_error_code(out.error_code)
            .with_session_id(out.session_id)
            .with_responses(topics);
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
        assert!(encode_fetch_response(13, 1, sample()).is_err());
    }
}
