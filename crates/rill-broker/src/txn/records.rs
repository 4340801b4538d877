//! The records the transaction coordinator keeps in `__transaction_state`,
//! in Kafka's own formats (`TransactionLogKey` and `TransactionLogValue`),
//! so that Kafka's tools (`kafka-dump-log --transaction-log-decoder`, the
//! transaction-log message formatter) read rill's topic and a topic copied
//! from Kafka loads here.
//!
//! A record's key is the version (0, the only one) and the transactional
//! id. Its value is the version and the transaction's metadata; a null
//! value is a tombstone (the id expired), which the caller handles before
//! anything here is called. Version 0 of the value is the classic layout;
//! version 1 is the same fields in Kafka's flexible encoding (compact
//! strings and arrays, tagged fields), with three optional tagged fields:
//! the previous and next producer ids and the client's transaction
//! version. Kafka writes version 0 at `transaction.version` 0 and
//! version 1 from 1 on; rill writes version 0 ([`VALUE_VERSION`]) and
//! reads both.
//!
//! Decoding never panics and never allocates by a length it has not
//! checked against the bytes left: a record that does not parse is an
//! error the loader logs and skips.

use bytes::{Buf, BufMut};

use crate::record_codec::{
    get_compact_string, get_i16, get_i32, get_i64, get_i8, get_string, get_uvarint,
    put_compact_string, put_string, put_uvarint, take, Malformed,
};

/// The key version Kafka writes (and the only one there is).
pub const KEY_VERSION: i16 = 0;
/// The value version rill writes: Kafka's at `transaction.version` 0,
/// readable by every Kafka since transactions began (0.11).
pub const VALUE_VERSION: i16 = 0;
/// The newest value version this module reads and writes.
pub const VALUE_VERSION_MAX: i16 = 1;

/// `PreviousProducerId` and `NextProducerId` when absent (Kafka's
/// `RecordBatch.NO_PRODUCER_ID`).
pub const NO_PRODUCER_ID: i64 = -1;

/// A transaction's metadata as stored, field for field
/// (`TransactionLogValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    /// The state's id (`TxnState::id`): 0 Empty … 7 PrepareEpochFence.
    pub transaction_status: i8,
    /// The partitions in the transaction by topic; null in the Empty
    /// state, as Kafka writes it.
    pub transaction_partitions: Option<Vec<TopicPartitions>>,
    pub last_update_timestamp_ms: i64,
    /// -1 when no transaction has started.
    pub start_timestamp_ms: i64,
    /// Tagged field 0 (version 1+): the producer id of the last committed
    /// transaction; [`NO_PRODUCER_ID`] when absent.
    pub previous_producer_id: i64,
    /// Tagged field 1 (version 1+): the producer id last sent to the
    /// producer (KIP-890's epoch overflow); [`NO_PRODUCER_ID`] when absent.
    pub next_producer_id: i64,
    /// Tagged field 2 (version 1+): the client's `transaction.version`;
    /// 0 when absent.
    pub client_transaction_version: i16,
}

/// One topic's partitions in a transaction (`PartitionsSchema`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartitions {
    pub topic: String,
    pub partition_ids: Vec<i32>,
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable __transaction_state record: {0}")]
pub struct Undecodable(pub &'static str);

impl From<Malformed> for Undecodable {
    fn from(malformed: Malformed) -> Self {
        Self(malformed.0)
    }
}

/// The smallest encoding of one `PartitionsSchema` element: an empty
/// topic and an empty array (2 + 4 bytes in version 0; 1 + 1 + 1 with the
/// element's tagged fields in version 1). A count claiming more elements
/// than the bytes left could hold is refused before anything is allocated.
const TOPIC_PARTITIONS_BYTES_MIN_V0: usize = 6;
const TOPIC_PARTITIONS_BYTES_MIN_V1: usize = 3;

const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, transactional_id);
    out
}

pub fn decode_key(mut buf: &[u8]) -> Result<String, Undecodable> {
    let version = get_i16(&mut buf)?;
    if version != KEY_VERSION {
        return Err(Undecodable("unknown key version"));
    }
    Ok(get_string(&mut buf)?)
}

/// `value` in `version` (0 or 1). Version 0 has no tagged fields: the
/// three must be at their defaults (Kafka's generated writer refuses
/// them too).
pub fn encode_value(value: &TxnValue, version: i16) -> Vec<u8> {
    assert!((0..=VALUE_VERSION_MAX).contains(&version));
    let mut out = Vec::with_capacity(64);
    out.put_i16(version);
    out.put_i64(value.producer_id);
    out.put_i16(value.producer_epoch);
    out.put_i32(value.transaction_timeout_ms);
    out.put_i8(value.transaction_status);
    if version == 0 {
        assert_eq!(value.previous_producer_id, NO_PRODUCER_ID);
        assert_eq!(value.next_producer_id, NO_PRODUCER_ID);
        assert_eq!(value.client_transaction_version, 0);
        match &value.transaction_partitions {
            None => out.put_i32(-1),
            Some(topics) => {
                out.put_i32(array_len(topics.len()));
                for topic in topics {
                    put_string(&mut out, &topic.topic);
                    out.put_i32(array_len(topic.partition_ids.len()));
                    for id in &topic.partition_ids {
                        out.put_i32(*id);
                    }
                }
            }
        }
        out.put_i64(value.last_update_timestamp_ms);
        out.put_i64(value.start_timestamp_ms);
    } else {
        match &value.transaction_partitions {
            None => put_uvarint(&mut out, 0),
            Some(topics) => {
                put_uvarint(&mut out, compact_len(topics.len()));
                for topic in topics {
                    put_compact_string(&mut out, &topic.topic);
                    put_uvarint(&mut out, compact_len(topic.partition_ids.len()));
                    for id in &topic.partition_ids {
                        out.put_i32(*id);
                    }
                    // The element's tagged fields: none.
                    put_uvarint(&mut out, 0);
                }
            }
        }
        out.put_i64(value.last_update_timestamp_ms);
        out.put_i64(value.start_timestamp_ms);
        // Tagged fields, in tag order, each only when not at its default
        // (as Kafka's generated writer does).
        let mut tagged: Vec<(u32, Vec<u8>)> = Vec::new();
        if value.previous_producer_id != NO_PRODUCER_ID {
            tagged.push((
                TAG_PREVIOUS_PRODUCER_ID,
                value.previous_producer_id.to_be_bytes().to_vec(),
            ));
        }
        if value.next_producer_id != NO_PRODUCER_ID {
            tagged.push((
                TAG_NEXT_PRODUCER_ID,
                value.next_producer_id.to_be_bytes().to_vec(),
            ));
        }
        if value.client_transaction_version != 0 {
            tagged.push((
                TAG_CLIENT_TRANSACTION_VERSION,
                value.client_transaction_version.to_be_bytes().to_vec(),
            ));
        }
        put_uvarint(&mut out, tagged.len() as u32);
        for (tag, data) in tagged {
            put_uvarint(&mut out, tag);
            put_uvarint(&mut out, data.len() as u32);
            out.put_slice(&data);
        }
    }
    out
}

pub fn decode_value(mut buf: &[u8]) -> Result<TxnValue, Undecodable> {
    let version = get_i16(&mut buf)?;
    if !(0..=VALUE_VERSION_MAX).contains(&version) {
        return Err(Undecodable("unknown value version"));
    }
    let flexible = version >= 1;
    let producer_id = get_i64(&mut buf)?;
    let producer_epoch = get_i16(&mut buf)?;
    let transaction_timeout_ms = get_i32(&mut buf)?;
    let transaction_status = get_i8(&mut buf)?;
    let transaction_partitions = if flexible {
        get_partitions_v1(&mut buf)?
    } else {
        get_partitions_v0(&mut buf)?
    };
    let last_update_timestamp_ms = get_i64(&mut buf)?;
    let start_timestamp_ms = get_i64(&mut buf)?;
    let mut value = TxnValue {
        producer_id,
        producer_epoch,
        transaction_timeout_ms,
        transaction_status,
        transaction_partitions,
        last_update_timestamp_ms,
        start_timestamp_ms,
        previous_producer_id: NO_PRODUCER_ID,
        next_producer_id: NO_PRODUCER_ID,
        client_transaction_version: 0,
    };
    if flexible {
        let count = get_uvarint(&mut buf)?;
        for _ in 0..count {
            let tag = get_uvarint(&mut buf)?;
            let size = get_uvarint(&mut buf)? as usize;
            let mut data = take(&mut buf, size)?;
            match tag {
                TAG_PREVIOUS_PRODUCER_ID => value.previous_producer_id = get_exact_i64(&mut data)?,
                TAG_NEXT_PRODUCER_ID => value.next_producer_id = get_exact_i64(&mut data)?,
                TAG_CLIENT_TRANSACTION_VERSION => {
                    if data.len() != 2 {
                        return Err(Undecodable("tagged field of the wrong size"));
                    }
                    value.client_transaction_version = data.get_i16();
                }
                // A tag from a newer Kafka: skipped, as Kafka keeps and
                // ignores unknown tags.
                _ => {}
            }
        }
    }
    Ok(value)
}

fn get_partitions_v0(buf: &mut &[u8]) -> Result<Option<Vec<TopicPartitions>>, Undecodable> {
    let count = get_i32(buf)?;
    if count < 0 {
        return Ok(None);
    }
    let count = count as usize;
    if count > buf.len() / TOPIC_PARTITIONS_BYTES_MIN_V0 {
        return Err(Undecodable("topic count beyond the record"));
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = get_string(buf)?;
        let ids = get_i32(buf)?;
        if ids < 0 {
            return Err(Undecodable("null where partition ids must be"));
        }
        topics.push(TopicPartitions {
            topic,
            partition_ids: get_i32s(buf, ids as usize)?,
        });
    }
    Ok(Some(topics))
}

fn get_partitions_v1(buf: &mut &[u8]) -> Result<Option<Vec<TopicPartitions>>, Undecodable> {
    let count = get_uvarint(buf)?;
    if count == 0 {
        return Ok(None);
    }
    let count = (count - 1) as usize;
    if count > buf.len() / TOPIC_PARTITIONS_BYTES_MIN_V1 {
        return Err(Undecodable("topic count beyond the record"));
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = get_compact_string(buf)?;
        let ids = get_uvarint(buf)?;
        if ids == 0 {
            return Err(Undecodable("null where partition ids must be"));
        }
        let partition_ids = get_i32s(buf, (ids - 1) as usize)?;
        skip_tagged_fields(buf)?;
        topics.push(TopicPartitions {
            topic,
            partition_ids,
        });
    }
    Ok(Some(topics))
}

fn skip_tagged_fields(buf: &mut &[u8]) -> Result<(), Undecodable> {
    let count = get_uvarint(buf)?;
    for _ in 0..count {
        get_uvarint(buf)?;
        let size = get_uvarint(buf)? as usize;
        take(buf, size)?;
    }
    Ok(())
}

fn array_len(len: usize) -> i32 {
    // A transaction's topics and partitions come from requests whose
    // arrays have i32 lengths, so they always fit.
    i32::try_from(len).expect("array too long for the record")
}

fn compact_len(len: usize) -> u32 {
    u32::try_from(len + 1).expect("array too long for the record")
}

fn get_exact_i64(data: &mut &[u8]) -> Result<i64, Undecodable> {
    if data.len() != 8 {
        return Err(Undecodable("tagged field of the wrong size"));
    }
    Ok(data.get_i64())
}

/// `count` big-endian i32s, the count checked against the bytes left
/// before the vector is allocated.
fn get_i32s(buf: &mut &[u8], count: usize) -> Result<Vec<i32>, Undecodable> {
    if count > buf.len() / 4 {
        return Err(Undecodable("partition count beyond the record"));
    }
    Ok((0..count).map(|_| buf.get_i32()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ongoing() -> TxnValue {
        TxnValue {
            producer_id: 1000,
            producer_epoch: 3,
            transaction_timeout_ms: 60_000,
            transaction_status: 1,
            transaction_partitions: Some(vec![
                TopicPartitions {
                    topic: "a".into(),
                    partition_ids: vec![0, 2],
                },
                TopicPartitions {
                    topic: "b".into(),
                    partition_ids: vec![7],
                },
            ]),
            last_update_timestamp_ms: 1_700_000_000_500,
            start_timestamp_ms: 1_700_000_000_000,
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn keys_and_values_round_trip() {
        for id in ["", "t", "transactional-id-ü"] {
            assert_eq!(decode_key(&encode_key(id)).unwrap(), id);
        }
        let empty = TxnValue {
            transaction_status: 0,
            transaction_partitions: None,
            start_timestamp_ms: -1,
            ..ongoing()
        };
        let no_partitions = TxnValue {
            transaction_status: 4,
            transaction_partitions: Some(vec![]),
            ..ongoing()
        };
        for value in [ongoing(), empty.clone(), no_partitions] {
            for version in 0..=VALUE_VERSION_MAX {
                assert_eq!(decode_value(&encode_value(&value, version)).unwrap(), value);
            }
        }
        let tagged = TxnValue {
            previous_producer_id: 999,
            next_producer_id: 1001,
            client_transaction_version: 2,
            ..ongoing()
        };
        assert_eq!(decode_value(&encode_value(&tagged, 1)).unwrap(), tagged);
    }

    /// The bytes of `TransactionLogKey` v0 and `TransactionLogValue` v0,
    /// spelled out field by field from Kafka's JSON schemas.
    #[test]
    fn version_0_matches_kafka_layout() {
        assert_eq!(encode_key("tx"), [0, 0, 0, 2, b't', b'x']);
        let value = TxnValue {
            transaction_partitions: Some(vec![TopicPartitions {
                topic: "t".into(),
                partition_ids: vec![1, 2],
            }]),
            ..ongoing()
        };
        let mut expected = vec![0, 0]; // version 0
        expected.extend_from_slice(&1000i64.to_be_bytes()); // ProducerId
        expected.extend_from_slice(&[0, 3]); // ProducerEpoch
        expected.extend_from_slice(&60_000i32.to_be_bytes()); // TransactionTimeoutMs
        expected.push(1); // TransactionStatus: Ongoing
        expected.extend_from_slice(&[0, 0, 0, 1]); // TransactionPartitions: 1 topic
        expected.extend_from_slice(&[0, 1, b't']); // Topic
        expected.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]); // PartitionIds
        expected.extend_from_slice(&1_700_000_000_500i64.to_be_bytes()); // LastUpdate
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // Start
        assert_eq!(encode_value(&value, 0), expected);

        // Empty: a null partitions array.
        let empty = TxnValue {
            transaction_status: 0,
            transaction_partitions: None,
            ..value
        };
        let encoded = encode_value(&empty, 0);
        assert_eq!(
            &encoded[2 + 8 + 2 + 4..2 + 8 + 2 + 4 + 1 + 4],
            [0, 255, 255, 255, 255]
        );
    }

    /// `TransactionLogValue` v1: compact arrays and strings, an empty tag
    /// section after each topic, and the tagged fields at the end.
    #[test]
    fn version_1_matches_kafka_layout() {
        let value = TxnValue {
            transaction_partitions: Some(vec![TopicPartitions {
                topic: "t".into(),
                partition_ids: vec![5],
            }]),
            previous_producer_id: 7,
            client_transaction_version: 1,
            ..ongoing()
        };
        let mut expected = vec![0, 1]; // version 1
        expected.extend_from_slice(&1000i64.to_be_bytes());
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(&60_000i32.to_be_bytes());
        expected.push(1);
        expected.push(2); // compact array: 1 topic
        expected.extend_from_slice(&[2, b't']); // compact string
        expected.extend_from_slice(&[2, 0, 0, 0, 5]); // compact array: [5]
        expected.push(0); // the topic's tagged fields: none
        expected.extend_from_slice(&1_700_000_000_500i64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        expected.push(2); // two tagged fields
        expected.extend_from_slice(&[0, 8]); // tag 0, 8 bytes
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&[2, 2, 0, 1]); // tag 2, 2 bytes: 1
        assert_eq!(encode_value(&value, 1), expected);

        // An unknown tag is skipped; a null array reads as None.
        let mut unknown = encode_value(
            &TxnValue {
                transaction_status: 0,
                transaction_partitions: None,
                ..ongoing()
            },
            1,
        );
        assert_eq!(unknown.pop(), Some(0));
        unknown.extend_from_slice(&[1, 9, 3, 1, 2, 3]);
        let decoded = decode_value(&unknown).unwrap();
        assert_eq!(decoded.transaction_partitions, None);
        assert_eq!(decoded.previous_producer_id, NO_PRODUCER_ID);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs: [&[u8]; 9] = [
            &[],
            &[0],
            &[0, 9],
            &[0, 0, 0, 50, b'a'],
            &[0, 0, 255, 255],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            // v0 with a topic count of i32::MAX and nothing after it.
            &[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff,
            ],
            // v1 with a compact count of u32::MAX and nothing after it.
            &[
                0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f,
            ],
            // v1 with a varint that never ends.
            &[
                0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ];
        for input in inputs {
            let _ = decode_key(input);
            assert!(decode_value(input).is_err());
        }
        // A partition count beyond the record.
        let mut big = encode_value(&ongoing(), 0);
        let at = 2 + 8 + 2 + 4 + 1 + 4 + 3;
        big[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value(&big).is_err());
        // Every truncation of a valid record fails cleanly.
        for version in 0..=VALUE_VERSION_MAX {
            let whole = encode_value(&ongoing(), version);
            for len in 0..whole.len() {
                assert!(decode_value(&whole[..len]).is_err(), "v{version} len {len}");
            }
        }
        // A tagged field of the wrong size.
        let mut wrong = encode_value(&ongoing(), 1);
        wrong.pop();
        wrong.extend_from_slice(&[1, 0, 4, 0, 0, 0, 1]);
        assert!(decode_value(&wrong).is_err());
    }
}
