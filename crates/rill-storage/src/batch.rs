//! The Kafka record batch, magic v2: its header, its validation, and the
//! broker's in-place edits (base offset, leader epoch, LogAppendTime).
//!
//! Layout of the 61-byte header (all big-endian):
//!
//! ```text
//!  0 baseOffset i64        12 partitionLeaderEpoch i32   21 attributes i16
//!  8 batchLength i32       16 magic i8                   23 lastOffsetDelta i32
//!                          17 crc u32 (CRC32C of bytes 21..end)
//! 27 baseTimestamp i64     43 producerId i64             53 baseSequence i32
//! 35 maxTimestamp i64      51 producerEpoch i16          57 recordCount i32
//! ```
//!
//! `batchLength` counts the bytes after itself, so a batch occupies
//! `12 + batchLength` bytes. The CRC does not cover `baseOffset`,
//! `batchLength` or `partitionLeaderEpoch`, which is why the broker may rewrite
//! the first and the third without recomputing it.

use crate::error::CorruptBatch;

/// Bytes before `partitionLeaderEpoch`: baseOffset and batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// The fixed header of a v2 batch.
pub const HEADER_LEN: usize = 61;
/// The smallest legal `batchLength` (a header with no records).
pub const BATCH_LENGTH_MIN: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;
/// The only record format this broker stores.
pub const MAGIC_V2: i8 = 2;

pub const BASE_OFFSET_AT: usize = 0;
pub const BATCH_LENGTH_AT: usize = 8;
pub const PARTITION_LEADER_EPOCH_AT: usize = 12;
pub const MAGIC_AT: usize = 16;
pub const CRC_AT: usize = 17;
pub const ATTRIBUTES_AT: usize = 21;
pub const LAST_OFFSET_DELTA_AT: usize = 23;
pub const BASE_TIMESTAMP_AT: usize = 27;
pub const MAX_TIMESTAMP_AT: usize = 35;
pub const PRODUCER_ID_AT: usize = 43;
pub const PRODUCER_EPOCH_AT: usize = 51;
pub const BASE_SEQUENCE_AT: usize = 53;
pub const RECORD_COUNT_AT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
const ATTR_DELETE_HORIZON: i16 = 0x40;

/// The compression codec named by a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every codec a v2 batch can name.
    pub const ALL: [Self; 5] = [Self::None, Self::Gzip, Self::Snappy, Self::Lz4, Self::Zstd];

    pub fn from_attributes(attributes: i16) -> Result<Self, CorruptBatch> {
        match attributes & ATTR_COMPRESSION_MASK {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(CorruptBatch::UnknownCompression(other)),
        }
    }

    pub fn attribute_bits(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }
}

/// How the timestamps of a log's batches are chosen (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's timestamps are kept.
    #[default]
    CreateTime,
    /// The broker stamps each batch with the time it appended it.
    LogAppendTime,
}

/// The fields of a v2 batch header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// The producer fields of a batch, for idempotence and transactions above the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub is_transactional: bool,
    pub is_control: bool,
}

fn i16_at(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}
fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn i64_at(buf: &[u8], at: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(bytes)
}

impl BatchHeader {
    /// Decodes the header at the start of `buf`, checking only what the header
    /// alone can tell: that it is all there, that its magic is 2 and that its
    /// declared length is at least a header's. Whether the rest of the batch
    /// is present is the caller's to check with [`BatchHeader::size`].
    pub fn parse(buf: &[u8]) -> Result<Self, CorruptBatch> {
        if buf.len() < HEADER_LEN {
            return Err(CorruptBatch::HeaderTruncated { len: buf.len() });
        }
        let magic = buf[MAGIC_AT] as i8;
        let batch_length = i32_at(buf, BATCH_LENGTH_AT);
        if batch_length < BATCH_LENGTH_MIN {
            return Err(CorruptBatch::LengthTooSmall {
                declared: batch_length,
            });
        }
        if magic != MAGIC_V2 {
            return Err(CorruptBatch::BadMagic(magic));
        }
        Ok(Self {
            base_offset: i64_at(buf, BASE_OFFSET_AT),
            batch_length,
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH_AT),
            magic,
            crc: i32_at(buf, CRC_AT) as u32,
            attributes: i16_at(buf, ATTRIBUTES_AT),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP_AT),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP_AT),
            producer_id: i64_at(buf, PRODUCER_ID_AT),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH_AT),
            base_sequence: i32_at(buf, BASE_SEQUENCE_AT),
            record_count: i32_at(buf, RECORD_COUNT_AT),
        })
    }

    /// The whole batch's size in bytes, header included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// The batch's last offset. Wraps rather than panics on absurd values;
    /// [`BatchHeader::offsets_are_sane`] is the check for untrusted headers.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// Whether the offsets a stored batch claims can be real: a base offset
    /// at least zero, a lastOffsetDelta at least zero, and an end that does
    /// not overflow.
    pub fn offsets_are_sane(&self) -> bool {
        self.base_offset >= 0
            && self.last_offset_delta >= 0
            && self
                .base_offset
                .checked_add(i64::from(self.last_offset_delta) + 1)
                .is_some()
    }

    /// The offset after this batch's last.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }

    pub fn compression(&self) -> Result<Compression, CorruptBatch> {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & ATTR_DELETE_HORIZON != 0
    }

    pub fn producer_fields(&self) -> ProducerFields {
        ProducerFields {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            is_transactional: self.is_transactional(),
            is_control: self.is_control(),
        }
    }
}

/// The CRC32C a v2 batch should carry: over attributes to the end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Checks one whole batch, `batch` being exactly its bytes: header, length,
/// CRC and compression codec. The record count is checked separately (see
/// [`check_record_count`]) because compacted batches legitimately have fewer
/// records than offsets.
pub fn check(batch: &[u8]) -> Result<BatchHeader, CorruptBatch> {
    let header = BatchHeader::parse(batch)?;
    if header.size() != batch.len() {
        return Err(CorruptBatch::LengthOverrun {
            declared: header.size(),
            available: batch.len(),
        });
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(CorruptBatch::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    header.compression()?;
    Ok(header)
}

/// A produced batch must carry at least one record, and one record per
/// offset it spans.
pub fn check_record_count(header: &BatchHeader) -> Result<(), CorruptBatch> {
    if header.record_count < 1
        || i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1
    {
        return Err(CorruptBatch::RecordCountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(())
}

/// Splits a buffer of back-to-back batches into single batches, checking that
/// each declared length fits. It stops at the first that does not.
pub fn split(buf: &[u8]) -> impl Iterator<Item = Result<&[u8], CorruptBatch>> {
    let mut rest = buf;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let result = match BatchHeader::parse(rest) {
            Ok(header) if header.size() <= rest.len() => {
                let (batch, tail) = rest.split_at(header.size());
                rest = tail;
                Ok(batch)
            }
            Ok(header) => Err(CorruptBatch::LengthOverrun {
                declared: header.size(),
                available: rest.len(),
            }),
            Err(reason) => Err(reason),
        };
        failed = result.is_err();
        Some(result)
    })
}

/// Writes the broker-assigned base offset. Not covered by the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the leader epoch of the appending leader. Not covered by the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `now_ms` as its max timestamp, and
/// recomputes the CRC, which covers both fields.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = i16_at(batch, ATTRIBUTES_AT) | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}
