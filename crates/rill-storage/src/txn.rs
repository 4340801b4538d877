//! The partition side of Kafka transactions that lives in the log's bytes:
//! transaction markers (control batches) and the aborted-transaction index.
//!
//! A transaction ends in each of its partitions with a *marker*: a control
//! batch of one record, written by the broker on the transaction
//! coordinator's behalf, whose key says COMMIT or ABORT and whose value
//! carries the coordinator's epoch (Kafka's `ControlRecordType` and
//! `EndTransactionMarker`). Its header carries the producer id and epoch
//! and both the transactional and the control attribute bits.
//!
//! Every aborted transaction gets an entry in the `.txnindex` file of the
//! segment that holds its marker, in Kafka's format, so that a
//! read_committed fetch can tell the consumer which producers' records to
//! drop, and from where, without reading the log ([`crate::Log::aborted_txns`]).
//! All big-endian, 34 bytes per entry:
//!
//! ```text
//! version i16 (0)  producer_id i64  first_offset i64  last_offset i64  last_stable_offset i64
//! ```

use crate::batch::BatchHeader;
use crate::error::CorruptBatch;
use crate::records::{self, BatchBuilder, Record};

/// The version of the control record key and of the marker value written.
const CONTROL_RECORD_VERSION: i16 = 0;
const CONTROL_KEY_LEN: usize = 2 + 2;
const MARKER_VALUE_LEN: usize = 2 + 4;
/// The version of a `.txnindex` entry.
const TXN_INDEX_VERSION: i16 = 0;
/// The size of one `.txnindex` entry.
pub const TXN_INDEX_ENTRY_LEN: usize = 2 + 8 + 8 + 8 + 8;

/// What a transaction marker says (Kafka's `ControlRecordType` ABORT and
/// COMMIT; the other control types belong to KRaft's own logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    /// The type id in the control record's key.
    pub fn id(self) -> i16 {
        match self {
            Self::Abort => 0,
            Self::Commit => 1,
        }
    }

    /// The marker type of a control record key's type id, if it is one.
    pub fn from_id(id: i16) -> Option<Self> {
        match id {
            0 => Some(Self::Abort),
            1 => Some(Self::Commit),
            _ => None,
        }
    }
}

/// The end of a transaction in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub control_type: ControlType,
    /// The epoch of the transaction coordinator that decided it; a marker
    /// from an older coordinator is a zombie's.
    pub coordinator_epoch: i32,
}

/// A marker batch for `producer_id` at `producer_epoch`, ready for
/// [`crate::Log::append`]: base offset 0 (the log assigns it), no sequence,
/// the transactional and control bits set, one record at `timestamp_ms`.
pub fn build_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
    timestamp_ms: i64,
) -> Vec<u8> {
    assert!(producer_id >= 0, "a marker ends a producer's transaction");
    let mut key = Vec::with_capacity(CONTROL_KEY_LEN);
    key.extend_from_slice(&CONTROL_RECORD_VERSION.to_be_bytes());
    key.extend_from_slice(&marker.control_type.id().to_be_bytes());
    let mut value = Vec::with_capacity(MARKER_VALUE_LEN);
    value.extend_from_slice(&CONTROL_RECORD_VERSION.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let mut builder = BatchBuilder::new();
    builder.producer_id = producer_id;
    builder.producer_epoch = producer_epoch;
    builder.is_transactional = true;
    builder.is_control = true;
    builder.push(Some(&key), Some(&value), timestamp_ms);
    let batch = builder.build();
    debug_assert_eq!(parse_marker(&batch), Ok(Some(marker)));
    batch
}

/// The marker a batch carries: `None` if it is not a control batch. A
/// control batch whose first record is not a well-formed COMMIT or ABORT
/// marker is an error: Kafka skips unknown control types when it reads for
/// consumers, but a marker this broker must act on has to be understood.
/// Only the first record counts, as in Kafka.
pub fn parse_marker(batch: &[u8]) -> Result<Option<EndTxnMarker>, CorruptBatch> {
    let header = BatchHeader::parse(batch)?;
    if !header.is_control() {
        return Ok(None);
    }
    let malformed = |what: String| CorruptBatch::MalformedRecords(what);
    let records = records::decode_records(batch)?;
    let Some(Record { key, value, .. }) = records.into_iter().next() else {
        return Err(malformed("control batch has no record".into()));
    };
    let key = key.ok_or_else(|| malformed("control record has no key".into()))?;
    if key.len() < CONTROL_KEY_LEN {
        return Err(malformed(format!(
            "control record key of {} bytes",
            key.len()
        )));
    }
    let key_version = i16::from_be_bytes([key[0], key[1]]);
    if key_version < 0 {
        return Err(malformed(format!(
            "control record key version {key_version}"
        )));
    }
    let type_id = i16::from_be_bytes([key[2], key[3]]);
    let control_type = ControlType::from_id(type_id)
        .ok_or_else(|| malformed(format!("control record type {type_id} is not a marker")))?;
    let value = value.ok_or_else(|| malformed("transaction marker has no value".into()))?;
    if value.len() < MARKER_VALUE_LEN {
        return Err(malformed(format!(
            "transaction marker value of {} bytes",
            value.len()
        )));
    }
    // A newer value version is read as version 0, as Kafka does: later
    // versions only add fields.
    let value_version = i16::from_be_bytes([value[0], value[1]]);
    if value_version < 0 {
        return Err(malformed(format!(
            "transaction marker value version {value_version}"
        )));
    }
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok(Some(EndTxnMarker {
        control_type,
        coordinator_epoch,
    }))
}

/// One aborted transaction of one producer, as the `.txnindex` holds it
/// and a read_committed fetch answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// The offset of the transaction's first batch in this partition.
    pub first_offset: i64,
    /// The offset of its ABORT marker.
    pub last_offset: i64,
    /// The partition's last stable offset once the marker was written:
    /// every transaction that began below it had ended. A search for
    /// aborted transactions below some offset can stop at the first entry
    /// whose last stable offset reaches it.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    /// Checks the relations every entry holds; a violation is a bug in
    /// whoever made the entry.
    pub(crate) fn assert_valid(&self) {
        assert!(self.producer_id >= 0);
        assert!(self.first_offset >= 0);
        assert!(self.first_offset <= self.last_offset);
        // Another producer's transaction may hold the last stable offset
        // below this one's first offset; nothing holds it past the marker.
        assert!(self.last_stable_offset >= 0);
        assert!(self.last_stable_offset <= self.last_offset + 1);
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&TXN_INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.first_offset.to_be_bytes());
        out.extend_from_slice(&self.last_offset.to_be_bytes());
        out.extend_from_slice(&self.last_stable_offset.to_be_bytes());
    }

    /// Decodes one entry of exactly [`TXN_INDEX_ENTRY_LEN`] bytes; `None`
    /// if its version is unknown or its offsets cannot be real.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        assert_eq!(bytes.len(), TXN_INDEX_ENTRY_LEN);
        let i64_at = |at: usize| {
            let mut field = [0; 8];
            field.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(field)
        };
        if i16::from_be_bytes([bytes[0], bytes[1]]) != TXN_INDEX_VERSION {
            return None;
        }
        let txn = Self {
            producer_id: i64_at(2),
            first_offset: i64_at(10),
            last_offset: i64_at(18),
            last_stable_offset: i64_at(26),
        };
        let valid = txn.producer_id >= 0
            && txn.first_offset >= 0
            && txn.first_offset <= txn.last_offset
            && txn.last_stable_offset >= 0
            && txn.last_stable_offset <= txn.last_offset.saturating_add(1);
        valid.then_some(txn)
    }
}

/// Decodes a `.txnindex` file: its whole entries, and whether the bytes
/// held anything else (a torn last entry, an unknown version, offsets that
/// cannot be real), which the caller drops by rewriting the file.
pub(crate) fn decode_txn_index(bytes: &[u8]) -> (Vec<AbortedTxn>, bool) {
    let mut entries = Vec::with_capacity(bytes.len() / TXN_INDEX_ENTRY_LEN);
    let chunks = bytes.chunks_exact(TXN_INDEX_ENTRY_LEN);
    let mut damaged = !chunks.remainder().is_empty();
    for chunk in chunks {
        match AbortedTxn::decode(chunk) {
            Some(txn) => entries.push(txn),
            None => damaged = true,
        }
    }
    (entries, damaged)
}

pub(crate) fn encode_txn_index(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TXN_INDEX_ENTRY_LEN);
    for txn in entries {
        txn.encode(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch;

    fn marker(control_type: ControlType, coordinator_epoch: i32) -> EndTxnMarker {
        EndTxnMarker {
            control_type,
            coordinator_epoch,
        }
    }

    /// A control batch with one record of the given key and value.
    fn control_batch(key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        builder.producer_id = 1;
        builder.producer_epoch = 0;
        builder.is_transactional = true;
        builder.is_control = true;
        builder.push(key, value, 0);
        builder.build()
    }

    #[test]
    fn markers_round_trip_with_a_valid_crc_and_kafkas_layout() {
        for (control_type, coordinator_epoch) in [
            (ControlType::Commit, 0),
            (ControlType::Abort, 7),
            (ControlType::Commit, i32::MAX),
        ] {
            let m = marker(control_type, coordinator_epoch);
            let bytes = build_marker_batch(42, 3, m, 1_000);
            let header = batch::check(&bytes).unwrap();
            batch::check_record_count(&header).unwrap();
            assert!(header.is_control());
            assert!(header.is_transactional());
            assert_eq!(header.base_offset, 0);
            assert_eq!(header.producer_id, 42);
            assert_eq!(header.producer_epoch, 3);
            assert_eq!(header.base_sequence, -1);
            assert_eq!(header.record_count, 1);
            assert_eq!(header.max_timestamp, 1_000);
            assert_eq!(parse_marker(&bytes), Ok(Some(m)));
            let record = &records::decode_records(&bytes).unwrap()[0];
            let type_id = control_type.id().to_be_bytes();
            assert_eq!(
                record.key.as_deref(),
                Some(&[0, 0, type_id[0], type_id[1]][..])
            );
            let mut value = vec![0, 0];
            value.extend_from_slice(&coordinator_epoch.to_be_bytes());
            assert_eq!(record.value.as_deref(), Some(&value[..]));
        }
        assert_eq!(ControlType::Abort.id(), 0);
        assert_eq!(ControlType::Commit.id(), 1);
    }

    #[test]
    fn a_data_batch_has_no_marker() {
        let mut builder = BatchBuilder::new();
        builder.is_transactional = true;
        builder.push(Some(b"k"), Some(b"v"), 0);
        assert_eq!(parse_marker(&builder.build()), Ok(None));
    }

    #[test]
    fn malformed_and_unknown_control_records_are_errors() {
        let is_malformed =
            |bytes: &[u8]| matches!(parse_marker(bytes), Err(CorruptBatch::MalformedRecords(_)));
        let value: &[u8] = &[0, 0, 0, 0, 0, 5];
        // LEADER_CHANGE (2) and an unknown type are not markers.
        assert!(is_malformed(&control_batch(
            Some(&[0, 0, 0, 2]),
            Some(value)
        )));
        assert!(is_malformed(&control_batch(
            Some(&[0, 0, 0x7f, 0]),
            Some(value)
        )));
        assert!(is_malformed(&control_batch(
            Some(&[0xff, 0xff, 0, 1]),
            Some(value)
        )));
        assert!(is_malformed(&control_batch(Some(&[0, 0, 0]), Some(value))));
        assert!(is_malformed(&control_batch(None, Some(value))));
        assert!(is_malformed(&control_batch(Some(&[0, 0, 0, 1]), None)));
        assert!(is_malformed(&control_batch(
            Some(&[0, 0, 0, 1]),
            Some(&[0, 0, 0, 0, 5])
        )));
        assert!(is_malformed(&control_batch(
            Some(&[0, 0, 0, 1]),
            Some(&[0x80, 0, 0, 0, 0, 5])
        )));
        let mut empty = BatchBuilder::new();
        empty.is_control = true;
        assert!(is_malformed(&empty.build()));
        // Newer versions of key and value parse as version 0.
        assert_eq!(
            parse_marker(&control_batch(
                Some(&[0, 1, 0, 0]),
                Some(&[0, 3, 0, 0, 0, 5, 9, 9])
            )),
            Ok(Some(marker(ControlType::Abort, 5)))
        );
    }

    #[test]
    fn txn_index_entries_round_trip_and_damage_is_reported() {
        let entries = [
            AbortedTxn {
                producer_id: 1,
                first_offset: 0,
                last_offset: 10,
                last_stable_offset: 11,
            },
            AbortedTxn {
                producer_id: i64::MAX,
                first_offset: 5,
                last_offset: 20,
                last_stable_offset: 3,
            },
        ];
        let bytes = encode_txn_index(&entries);
        assert_eq!(bytes.len(), 2 * TXN_INDEX_ENTRY_LEN);
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &1i64.to_be_bytes());
        assert_eq!(decode_txn_index(&bytes), (entries.to_vec(), false));
        // A torn last entry.
        assert_eq!(
            decode_txn_index(&bytes[..bytes.len() - 1]),
            (entries[..1].to_vec(), true)
        );
        // An unknown version, and offsets that cannot be real.
        let mut damaged = bytes.clone();
        damaged[1] = 1;
        assert_eq!(decode_txn_index(&damaged), (entries[1..].to_vec(), true));
        let mut damaged = bytes.clone();
        damaged[TXN_INDEX_ENTRY_LEN + 26..TXN_INDEX_ENTRY_LEN + 34]
            .copy_from_slice(&22i64.to_be_bytes());
        assert_eq!(decode_txn_index(&damaged), (entries[..1].to_vec(), true));
        assert_eq!(decode_txn_index(&[]), (Vec::new(), false));
    }
}
