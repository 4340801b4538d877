//! The records inside a magic v2 batch: decoding them where the log has to
//! look inside a batch (compaction, rejecting keyless records on compacted
//! topics, finding the first record at or after a timestamp), and encoding
//! whole batches for compaction's rewrites and for tests.
//!
//! After the 61-byte header (see [`crate::batch`]) a batch holds
//! `recordCount` records back to back, compressed together as one stream if
//! the attributes name a codec. Each record is:
//!
//! ```text
//! length            varint   bytes after this field
//! attributes        i8       unused, always 0 today
//! timestampDelta    varlong  from the batch's baseTimestamp
//! offsetDelta       varint   from the batch's baseOffset
//! keyLength         varint   -1 for a null key
//! key               bytes
//! valueLength       varint   -1 for a null value
//! value             bytes
//! headerCount       varint
//! headers           headerKeyLength varint, headerKey bytes,
//!                   headerValueLength varint (-1 for null), headerValue
//! ```
//!
//! Varints are zigzag-encoded base-128 varints, like protobuf's `sint32` and
//! `sint64`.
//!
//! Decoding never trusts the bytes: a batch may come straight from a client,
//! so every length is checked against the bytes that are really there before
//! it is used, and nothing is allocated in proportion to a count or length
//! field alone.

use std::borrow::Cow;

use crate::batch::{self, BatchHeader, Compression, TimestampType, HEADER_LEN, MAGIC_V2};
use crate::compression;
use crate::error::CorruptBatch;

/// The most bytes a batch's records may decompress to. It bounds the memory a
/// decompression bomb can claim, and sits far above any real batch, since
/// `max.message.bytes` limits batches to about 1 MiB by default.
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The longest varint that can encode an i32 and an i64: 7 bits per byte.
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;

/// The smallest possible record: a one-byte length, attributes, and one byte
/// each for the timestamp delta, offset delta, key length, value length and
/// header count. It bounds how many records the remaining bytes can hold.
const RECORD_BYTES_MIN: usize = 7;
/// The smallest possible header: an empty key's length and a null value's.
const HEADER_BYTES_MIN: usize = 2;

/// Kafka's `RecordBatch.NO_TIMESTAMP`, the base timestamp of a batch built
/// without one.
const NO_TIMESTAMP: i64 = -1;

// The attribute bits below the codec's. `batch` keeps its own copies private,
// so the encoder names them again here.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
const ATTR_DELETE_HORIZON: i16 = 0x40;

/// A record header: a key (UTF-8 by convention; Kafka does not enforce it,
/// so neither do we) and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One record of a v2 batch, with its offset and timestamp still relative to
/// the batch's base offset and base timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

// ---------------------------------------------------------------------------
// Varints.

/// Appends `value` as a zigzag varint (Kafka's `ByteUtils.writeVarint`).
pub fn encode_varint(value: i32, out: &mut Vec<u8>) {
    encode_unsigned(u64::from(zigzag_i32(value)), out);
}

/// Appends `value` as a zigzag varlong (Kafka's `ByteUtils.writeVarlong`).
pub fn encode_varlong(value: i64, out: &mut Vec<u8>) {
    encode_unsigned(zigzag_i64(value), out);
}

/// The number of bytes [`encode_varint`] writes for `value`.
pub fn varint_len(value: i32) -> usize {
    unsigned_len(u64::from(zigzag_i32(value)))
}

/// The number of bytes [`encode_varlong`] writes for `value`.
pub fn varlong_len(value: i64) -> usize {
    unsigned_len(zigzag_i64(value))
}

/// Decodes a zigzag varint from the start of `buf`, returning it and the
/// number of bytes it took. More than 5 bytes is an error, as in Kafka.
///
/// Like Kafka's `ByteUtils.readVarint`, the fifth byte's bits beyond the 32nd
/// are dropped rather than rejected, so that this accepts exactly what Kafka
/// accepts.
pub fn decode_varint(buf: &[u8]) -> Result<(i32, usize), CorruptBatch> {
    let (raw, len) = decode_unsigned(buf, VARINT_BYTES_MAX, "varint")?;
    // Truncation is the point: it drops the bits Kafka drops.
    let raw = raw as u32;
    Ok(((raw >> 1) as i32 ^ -((raw & 1) as i32), len))
}

/// Decodes a zigzag varlong from the start of `buf`, returning it and the
/// number of bytes it took. More than 10 bytes is an error, as in Kafka.
pub fn decode_varlong(buf: &[u8]) -> Result<(i64, usize), CorruptBatch> {
    let (raw, len) = decode_unsigned(buf, VARLONG_BYTES_MAX, "varlong")?;
    Ok(((raw >> 1) as i64 ^ -((raw & 1) as i64), len))
}

fn zigzag_i32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag_i64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn encode_unsigned(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn unsigned_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

fn decode_unsigned(buf: &[u8], max_bytes: usize, what: &str) -> Result<(u64, usize), CorruptBatch> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().take(max_bytes).enumerate() {
        // At most 10 bytes, so the shift is at most 63; bits shifted past the
        // top are the overflow Kafka also discards.
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    if buf.len() < max_bytes {
        Err(malformed(format!("{what} is truncated")))
    } else {
        Err(malformed(format!(
            "{what} is longer than {max_bytes} bytes"
        )))
    }
}

fn malformed(reason: String) -> CorruptBatch {
    CorruptBatch::MalformedRecords(reason)
}

// ---------------------------------------------------------------------------
// Decoding.

/// Reads the fields of a record from a byte slice, failing instead of
/// reading past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &str) -> Result<u8, CorruptBatch> {
        let (&byte, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| malformed(format!("{what} is missing")))?;
        self.buf = rest;
        Ok(byte)
    }

    fn varint(&mut self, what: &str) -> Result<i32, CorruptBatch> {
        let (value, len) = decode_varint(self.buf).map_err(|e| context(what, e))?;
        self.buf = &self.buf[len..];
        Ok(value)
    }

    fn varlong(&mut self, what: &str) -> Result<i64, CorruptBatch> {
        let (value, len) = decode_varlong(self.buf).map_err(|e| context(what, e))?;
        self.buf = &self.buf[len..];
        Ok(value)
    }

    fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], CorruptBatch> {
        if len > self.buf.len() {
            return Err(malformed(format!(
                "{what} of {len} bytes overruns the {} left",
                self.buf.len()
            )));
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(bytes)
    }

    /// A length-prefixed byte string. Any negative length means null, as in
    /// Kafka's `Utils.readBytes`: the encoders write -1, but the broker must
    /// not refuse what Kafka accepts.
    fn nullable_bytes(&mut self, what: &str) -> Result<Option<&'a [u8]>, CorruptBatch> {
        match usize::try_from(self.varint(what)?) {
            Ok(len) => self.bytes(len, what).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }
}

fn context(what: &str, error: CorruptBatch) -> CorruptBatch {
    match error {
        CorruptBatch::MalformedRecords(reason) => malformed(format!("{what}: {reason}")),
        other => other,
    }
}

/// A decoded header that borrows from the batch.
struct HeaderView<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// A decoded record that borrows from the batch, so that the functions that
/// only look at records need not copy their keys and values.
struct RecordView<'a> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<HeaderView<'a>>,
}

impl RecordView<'_> {
    fn to_record(&self) -> Record {
        Record {
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|h| Header {
                    key: h.key.to_vec(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect(),
        }
    }
}

fn read_record<'a>(reader: &mut Reader<'a>) -> Result<RecordView<'a>, CorruptBatch> {
    let declared = reader.varint("record length")?;
    let len = usize::try_from(declared)
        .map_err(|_| malformed(format!("record length {declared} is negative")))?;
    // Everything below reads from the record's own bytes, so a field that
    // runs past the declared length fails instead of eating the next record.
    let mut body = Reader {
        buf: reader.bytes(len, "record")?,
    };
    let attributes = body.u8("attributes")? as i8;
    let timestamp_delta = body.varlong("timestamp delta")?;
    let offset_delta = body.varint("offset delta")?;
    let key = body.nullable_bytes("key")?;
    let value = body.nullable_bytes("value")?;
    let count = body.varint("header count")?;
    let count = usize::try_from(count)
        .map_err(|_| malformed(format!("header count {count} is negative")))?;
    let mut headers = Vec::with_capacity(count.min(body.remaining() / HEADER_BYTES_MIN));
    for _ in 0..count {
        let key_len = body.varint("header key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| malformed(format!("header key length {key_len} is negative")))?;
        let key = body.bytes(key_len, "header key")?;
        let value = body.nullable_bytes("header value")?;
        headers.push(HeaderView { key, value });
    }
    if body.remaining() != 0 {
        return Err(malformed(format!(
            "record declares {len} bytes but its fields end {} bytes sooner",
            body.remaining()
        )));
    }
    Ok(RecordView {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

/// The header of `batch`, its record count, and its records section,
/// decompressed.
fn records_section(batch: &[u8]) -> Result<(BatchHeader, usize, Cow<'_, [u8]>), CorruptBatch> {
    let header = BatchHeader::parse(batch)?;
    if header.size() > batch.len() {
        return Err(CorruptBatch::LengthOverrun {
            declared: header.size(),
            available: batch.len(),
        });
    }
    if header.size() < batch.len() {
        return Err(malformed(format!(
            "{} bytes follow the batch's declared end",
            batch.len() - header.size()
        )));
    }
    let codec = header.compression()?;
    let count = usize::try_from(header.record_count)
        .map_err(|_| malformed(format!("record count {} is negative", header.record_count)))?;
    let section = &batch[HEADER_LEN..];
    // Kafka reads a batch with no records without decompressing anything, so
    // an empty section there is fine whatever codec the attributes name.
    let data = if codec == Compression::None || (count == 0 && section.is_empty()) {
        Cow::Borrowed(section)
    } else {
        Cow::Owned(compression::decompress(
            codec,
            section,
            DECOMPRESSED_BYTES_MAX,
        )?)
    };
    Ok((header, count, data))
}

/// Decodes exactly `count` records from `data`, handing each to `visit`, and
/// insists that they use all of it.
fn parse_records<'a>(
    data: &'a [u8],
    count: usize,
    mut visit: impl FnMut(RecordView<'a>) -> Result<(), CorruptBatch>,
) -> Result<(), CorruptBatch> {
    let mut reader = Reader { buf: data };
    // Every record takes at least one byte, so this loop ends within
    // `data.len()` rounds however large the declared count.
    for index in 0..count {
        let record = read_record(&mut reader)
            .map_err(|e| context(&format!("record {index} of {count}"), e))?;
        visit(record)?;
    }
    if reader.remaining() != 0 {
        return Err(malformed(format!(
            "{} bytes follow the last of the {count} records",
            reader.remaining()
        )));
    }
    Ok(())
}

/// Checks, without decoding them, that an uncompressed batch holds exactly
/// the records its header declares: each record's length prefix is followed
/// by that many bytes, and nothing follows the last. This is the cheap part
/// of what Kafka's validator learns by decoding every record; the produce
/// path runs it on every uncompressed batch.
pub fn check_uncompressed_count(batch: &[u8]) -> Result<(), CorruptBatch> {
    let header = BatchHeader::parse(batch)?;
    let section = batch
        .get(HEADER_LEN..header.size())
        .ok_or(CorruptBatch::LengthOverrun {
            declared: header.size(),
            available: batch.len(),
        })?;
    let mut reader = Reader { buf: section };
    let mut found: i64 = 0;
    while reader.remaining() > 0 {
        let declared = reader.varint("record length")?;
        let len = usize::try_from(declared)
            .map_err(|_| malformed(format!("record length {declared} is negative")))?;
        reader.bytes(len, "record")?;
        found += 1;
    }
    if found != i64::from(header.record_count) {
        return Err(malformed(format!(
            "the header declares {} records but the batch holds {found}",
            header.record_count
        )));
    }
    Ok(())
}

/// Decodes every record of `batch`, one whole batch, header included.
///
/// The caller is expected to have checked the header and CRC already (see
/// [`batch::check`]); this still copes with any bytes at all without
/// panicking. Compressed records may take up to [`DECOMPRESSED_BYTES_MAX`]
/// bytes once decompressed, and the returned records several times their
/// encoded size when they are tiny, so callers that only need to look at
/// each record should prefer the queries below, which copy nothing.
pub fn decode_records(batch: &[u8]) -> Result<Vec<Record>, CorruptBatch> {
    let (_, count, data) = records_section(batch)?;
    // The count is the sender's claim; the bytes bound how many records can
    // really be there.
    let mut records = Vec::with_capacity(count.min(data.len() / RECORD_BYTES_MIN));
    parse_records(&data, count, |record| {
        records.push(record.to_record());
        Ok(())
    })?;
    Ok(records)
}

/// The absolute offset of the first record of `batch`, in batch order, whose
/// timestamp is at least `timestamp`, or `None` if there is none.
///
/// A record's timestamp is the batch's base timestamp plus its delta, unless
/// the batch is LogAppendTime, in which case every record's timestamp is the
/// batch's max timestamp, which the broker set when it appended the batch.
/// The whole batch is decoded, so a malformed batch is an error even if the
/// answer lies before the damage.
pub fn first_record_at_or_after(batch: &[u8], timestamp: i64) -> Result<Option<i64>, CorruptBatch> {
    let (header, count, data) = records_section(batch)?;
    let mut found = None;
    parse_records(&data, count, |record| {
        if found.is_some() {
            return Ok(());
        }
        let record_timestamp = match header.timestamp_type() {
            TimestampType::LogAppendTime => header.max_timestamp,
            // Kafka adds these as Java longs, which wrap.
            TimestampType::CreateTime => header.base_timestamp.wrapping_add(record.timestamp_delta),
        };
        if record_timestamp >= timestamp {
            let offset = header
                .base_offset
                .checked_add(i64::from(record.offset_delta))
                .ok_or_else(|| {
                    malformed(format!(
                        "base offset {} plus offset delta {} overflows",
                        header.base_offset, record.offset_delta
                    ))
                })?;
            found = Some(offset);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether every record of `batch` has a key, which a compacted topic
/// requires. An empty key counts as a key, as in Kafka. Control batches are
/// exempt, because the broker and transaction coordinator write them and
/// their records are not subject to compaction's keying; they are reported
/// as keyed without being decoded.
pub fn all_records_have_keys(batch: &[u8]) -> Result<bool, CorruptBatch> {
    Ok(keyless_records(batch)?.is_empty())
}

/// The positions in `batch` (from 0) of the records without a key, for
/// [`all_records_have_keys`]'s check when it fails: Kafka names each bad
/// record in its answer (KIP-467). None for a control batch.
pub fn keyless_records(batch: &[u8]) -> Result<Vec<usize>, CorruptBatch> {
    if BatchHeader::parse(batch)?.is_control() {
        return Ok(Vec::new());
    }
    let (_, count, data) = records_section(batch)?;
    let mut keyless = Vec::new();
    let mut index = 0;
    parse_records(&data, count, |record| {
        if record.key.is_none() {
            keyless.push(index);
        }
        index += 1;
        Ok(())
    })?;
    Ok(keyless)
}

// ---------------------------------------------------------------------------
// Encoding.

/// Builds a valid v2 batch from records.
///
/// Records keep the offset and timestamp deltas they are given, which is what
/// compaction needs when it rewrites a batch with some records removed. For
/// tests, [`BatchBuilder::push`] assigns the next offset delta and computes the
/// timestamp delta itself.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// The first offset of the batch. The broker normally overwrites it on
    /// append.
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub compression: Compression,
    /// LogAppendTime sets attribute bit 3; the records are encoded the same
    /// either way.
    pub timestamp_type: TimestampType,
    /// The timestamp the records' deltas count from. `None` until the first
    /// [`BatchBuilder::push`] sets it to that record's timestamp; a batch
    /// built while it is still `None` uses -1, Kafka's "no timestamp".
    pub base_timestamp: Option<i64>,
    /// Overrides the max timestamp, which is otherwise the largest record
    /// timestamp (or the base timestamp when there are no records). A
    /// LogAppendTime batch carries its append time here.
    pub max_timestamp: Option<i64>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub is_transactional: bool,
    pub is_control: bool,
    /// The base timestamp is a delete horizon (KIP-534: the cleaner's
    /// mark on a marker it will remove once that time has passed).
    pub delete_horizon: bool,
    /// Overrides lastOffsetDelta, which is otherwise the largest record
    /// offset delta (0 when there are no records). Compaction keeps the
    /// original batch's value so that the batch still spans the same offsets
    /// after records are removed.
    pub last_offset_delta: Option<i32>,
    pub records: Vec<Record>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: -1,
            compression: Compression::None,
            timestamp_type: TimestampType::CreateTime,
            base_timestamp: None,
            max_timestamp: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            is_transactional: false,
            is_control: false,
            delete_horizon: false,
            last_offset_delta: None,
            records: Vec::new(),
        }
    }
}

impl BatchBuilder {
    /// A builder for a batch with no records and the defaults of a
    /// non-idempotent producer: no producer id, epoch or sequence (-1), no
    /// leader epoch (-1), base offset 0, uncompressed, CreateTime.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record as it is, keeping its deltas.
    pub fn push_record(&mut self, record: Record) -> &mut Self {
        self.records.push(record);
        self
    }

    /// Adds a record without headers at the next offset delta (one past the
    /// largest so far, or 0), with the given absolute timestamp. The first
    /// record pushed sets the base timestamp if nothing else has.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> &mut Self {
        let offset_delta = self
            .records
            .iter()
            .map(|r| r.offset_delta.saturating_add(1))
            .max()
            .unwrap_or(0);
        let base = *self.base_timestamp.get_or_insert(timestamp_ms);
        self.records.push(Record {
            attributes: 0,
            // Kafka computes the delta as a Java long, which wraps; decoding
            // wraps back, so even absurd timestamps round-trip.
            timestamp_delta: timestamp_ms.wrapping_sub(base),
            offset_delta,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        });
        self
    }

    /// Encodes the batch: header, records (compressed with the chosen codec)
    /// and CRC.
    ///
    /// # Panics
    ///
    /// If the batch cannot be represented in the v2 format at all: a key,
    /// value, header, record or the whole batch longer than `i32::MAX`
    /// bytes, or more than `i32::MAX` records or headers.
    pub fn build(&self) -> Vec<u8> {
        let base_timestamp = self.base_timestamp.unwrap_or(NO_TIMESTAMP);
        let mut raw = Vec::new();
        let mut body = Vec::new();
        for record in &self.records {
            encode_record(record, &mut body, &mut raw);
        }
        let section = match self.compression {
            Compression::None => raw,
            codec => compression::compress(codec, &raw),
        };

        let last_offset_delta = self
            .last_offset_delta
            .or_else(|| self.records.iter().map(|r| r.offset_delta).max())
            .unwrap_or(0);
        let max_timestamp = self.max_timestamp.unwrap_or_else(|| {
            self.records
                .iter()
                .map(|r| base_timestamp.wrapping_add(r.timestamp_delta))
                .max()
                .unwrap_or(base_timestamp)
        });
        let mut attributes = self.compression.attribute_bits();
        if self.timestamp_type == TimestampType::LogAppendTime {
            attributes |= ATTR_LOG_APPEND_TIME;
        }
        if self.is_transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.is_control {
            attributes |= ATTR_CONTROL;
        }
        if self.delete_horizon {
            attributes |= ATTR_DELETE_HORIZON;
        }
        let batch_length = wire_len(batch::BATCH_LENGTH_MIN as usize + section.len(), "batch");

        let mut out = Vec::with_capacity(HEADER_LEN + section.len());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        // The CRC covers the bytes after it, so it is filled in last.
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&last_offset_delta.to_be_bytes());
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&wire_len(self.records.len(), "record count").to_be_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&section);
        let crc = batch::compute_crc(&out);
        out[batch::CRC_AT..batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Appends `record` to `out`, using `body` as scratch space for the fields,
/// whose length has to precede them.
fn encode_record(record: &Record, body: &mut Vec<u8>, out: &mut Vec<u8>) {
    body.clear();
    body.push(record.attributes as u8);
    encode_varlong(record.timestamp_delta, body);
    encode_varint(record.offset_delta, body);
    encode_nullable(record.key.as_deref(), "key", body);
    encode_nullable(record.value.as_deref(), "value", body);
    encode_varint(wire_len(record.headers.len(), "header count"), body);
    for header in &record.headers {
        encode_varint(wire_len(header.key.len(), "header key"), body);
        body.extend_from_slice(&header.key);
        encode_nullable(header.value.as_deref(), "header value", body);
    }
    encode_varint(wire_len(body.len(), "record"), out);
    out.extend_from_slice(body);
}

fn encode_nullable(bytes: Option<&[u8]>, what: &str, out: &mut Vec<u8>) {
    match bytes {
        None => encode_varint(-1, out),
        Some(bytes) => {
            encode_varint(wire_len(bytes.len(), what), out);
            out.extend_from_slice(bytes);
        }
    }
}

/// A length or count as the i32 the wire format holds. Only the builder calls
/// this, on the caller's own records, never on decoded input.
fn wire_len(len: usize, what: &str) -> i32 {
    match i32::try_from(len) {
        Ok(len) => len,
        Err(_) => panic!("{what} of {len} exceeds the v2 format's i32 limit"),
    }
}

// Tests unwrap freely: a panic there is a failed test, which is what it should be.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CODECS: [Compression; 5] = Compression::ALL;

    fn record(offset_delta: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Record {
        Record {
            attributes: 0,
            timestamp_delta: i64::from(offset_delta) * 3,
            offset_delta,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    fn header(key: &str, value: Option<&[u8]>) -> Header {
        Header {
            key: key.as_bytes().to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// Records covering each shape a field can take.
    fn varied_records() -> Vec<Record> {
        let mut with_headers = record(4, Some(b"hk"), Some(b"hv"));
        with_headers.headers = vec![
            header("trace-id", Some(b"abc123")),
            header("null-valued", None),
            header("", Some(b"")),
            header("ünïcödé", Some(&[0, 255, 7])),
        ];
        vec![
            record(0, Some(b"key"), Some(b"value")),
            record(1, None, Some(b"keyless")),
            record(2, Some(b"tombstone"), None),
            record(3, Some(b""), Some(b"")),
            with_headers,
            record(5, None, None),
            // A large value, so that the compressed codecs span several blocks.
            record(6, Some(b"big"), Some(&vec![b'x'; 100_000])),
        ]
    }

    fn builder(codec: Compression, records: Vec<Record>) -> BatchBuilder {
        BatchBuilder {
            base_offset: 1000,
            compression: codec,
            base_timestamp: Some(1_700_000_000_000),
            records,
            ..BatchBuilder::new()
        }
    }

    /// Fixes batchLength and the CRC after a test has edited a batch.
    fn reseal(batch: &mut [u8]) {
        let length = (batch.len() - batch::LOG_OVERHEAD) as i32;
        batch[batch::BATCH_LENGTH_AT..batch::BATCH_LENGTH_AT + 4]
            .copy_from_slice(&length.to_be_bytes());
        let crc = batch::compute_crc(batch);
        batch[batch::CRC_AT..batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// A batch with the given record count and records section, sealed.
    fn batch_with_section(attributes: i16, record_count: i32, section: &[u8]) -> Vec<u8> {
        let mut batch = BatchBuilder::new().build();
        batch[batch::ATTRIBUTES_AT..batch::ATTRIBUTES_AT + 2]
            .copy_from_slice(&attributes.to_be_bytes());
        batch[batch::RECORD_COUNT_AT..batch::RECORD_COUNT_AT + 4]
            .copy_from_slice(&record_count.to_be_bytes());
        batch.extend_from_slice(section);
        reseal(&mut batch);
        batch
    }

    fn is_malformed<T: std::fmt::Debug>(result: Result<T, CorruptBatch>) -> bool {
        matches!(result, Err(CorruptBatch::MalformedRecords(_)))
    }

    // --- Varints -----------------------------------------------------------

    #[test]
    fn varints_match_kafka_encoding() {
        let cases: [(i32, &[u8]); 9] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (63, &[0x7e]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(decode_varint(bytes).unwrap(), (value, bytes.len()));
        }
        let mut out = Vec::new();
        encode_varlong(i64::MIN, &mut out);
        assert_eq!(
            out,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        let ints = [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            8191,
            -8192,
            8192,
            i32::MAX,
            i32::MIN,
        ];
        for value in ints.into_iter().chain([i32::MAX - 1, i32::MIN + 1]) {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(decode_varint(&out).unwrap(), (value, out.len()));
            assert_eq!(varint_len(value), out.len());
            // Decoding stops at the varint's end, whatever follows.
            out.extend_from_slice(&[0xff, 0xff]);
            assert_eq!(decode_varint(&out).unwrap().0, value);
        }
        let longs = [
            0,
            1,
            -1,
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
        ];
        for value in longs
            .into_iter()
            .chain([i64::MAX - 1, i64::MIN + 1, 1 << 62, -(1 << 62)])
        {
            let mut out = Vec::new();
            encode_varlong(value, &mut out);
            assert!(out.len() <= VARLONG_BYTES_MAX);
            assert_eq!(decode_varlong(&out).unwrap(), (value, out.len()));
            assert_eq!(varlong_len(value), out.len());
        }
    }

    #[test]
    fn overlong_and_truncated_varints_are_refused() {
        assert!(is_malformed(decode_varint(&[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x00
        ])));
        assert!(is_malformed(decode_varint(&[0xff; 16])));
        assert!(is_malformed(decode_varlong(&[0x80; 10])));
        assert!(is_malformed(decode_varlong(&[0xff; 11])));
        assert!(is_malformed(decode_varint(&[])));
        assert!(is_malformed(decode_varint(&[0x80])));
        assert!(is_malformed(decode_varlong(&[0x80, 0x80])));
        // Ten bytes are fine for a varlong; five for a varint.
        assert!(
            decode_varlong(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).is_ok()
        );
        assert!(decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x00]).is_ok());
        // Like Kafka's readVarint, bits past the 32nd in the fifth byte are
        // dropped, not refused: 0x7f there leaves the low 32 bits all ones.
        assert_eq!(
            decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap(),
            (i32::MIN, 5)
        );
    }

    proptest! {
        #[test]
        fn any_varint_round_trips(value in any::<i32>(), long in any::<i64>()) {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            prop_assert_eq!(decode_varint(&out).unwrap(), (value, out.len()));
            out.clear();
            encode_varlong(long, &mut out);
            prop_assert_eq!(decode_varlong(&out).unwrap(), (long, out.len()));
        }

        #[test]
        fn varint_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_varint(&bytes);
            let _ = decode_varlong(&bytes);
        }
    }

    // --- Round trips -------------------------------------------------------

    #[test]
    fn every_codec_round_trips() {
        let many: Vec<Record> = (0..1000)
            .map(|i| {
                let key = format!("key-{}", i % 37);
                let value = if i % 10 == 0 {
                    None
                } else {
                    Some(format!("value {i}").into_bytes())
                };
                let mut r = record(i, Some(key.as_bytes()), value.as_deref());
                if i % 7 == 0 {
                    r.headers.push(header("n", Some(&i.to_be_bytes())));
                }
                r
            })
            .collect();
        for codec in CODECS {
            for records in [
                Vec::new(),
                vec![record(0, None, None)],
                varied_records(),
                many.clone(),
            ] {
                let built = builder(codec, records.clone()).build();
                let header = batch::check(&built).unwrap();
                // An empty batch spans no offsets, which a produced batch
                // never does, so only non-empty ones pass the count check.
                assert_eq!(
                    batch::check_record_count(&header).is_ok(),
                    !records.is_empty()
                );
                assert_eq!(header.compression().unwrap(), codec);
                assert_eq!(header.base_offset, 1000);
                assert_eq!(header.record_count as usize, records.len());
                assert_eq!(decode_records(&built).unwrap(), records, "{codec:?}");
            }
        }
    }

    #[test]
    fn header_fields_are_written_as_set() {
        let mut b = BatchBuilder {
            base_offset: 42,
            partition_leader_epoch: 7,
            compression: Compression::Zstd,
            timestamp_type: TimestampType::LogAppendTime,
            producer_id: 9000,
            producer_epoch: 3,
            base_sequence: 17,
            is_transactional: true,
            is_control: false,
            ..BatchBuilder::new()
        };
        b.push(Some(b"a"), Some(b"1"), 500)
            .push(Some(b"b"), Some(b"2"), 400);
        let header = batch::check(&b.build()).unwrap();
        batch::check_record_count(&header).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(header.compression().unwrap(), Compression::Zstd);
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.base_timestamp, 500);
        assert_eq!(header.max_timestamp, 500);
        assert_eq!(header.producer_id, 9000);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 17);
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(header.record_count, 2);

        let control = BatchBuilder {
            is_control: true,
            ..BatchBuilder::new()
        }
        .build();
        let header = batch::check(&control).unwrap();
        assert!(header.is_control() && !header.is_transactional());
        // With nothing set, an empty batch has Kafka's defaults.
        assert_eq!(header.base_timestamp, -1);
        assert_eq!(header.max_timestamp, -1);
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.partition_leader_epoch, -1);
        assert_eq!(header.last_offset_delta, 0);
        assert_eq!(header.record_count, 0);
    }

    #[test]
    fn push_assigns_offsets_and_timestamp_deltas() {
        let mut b = BatchBuilder::new();
        b.push(Some(b"a"), None, 1000)
            .push(None, Some(b"v"), 990)
            .push(Some(b"c"), None, 1010);
        let records = decode_records(&b.build()).unwrap();
        let deltas: Vec<_> = records
            .iter()
            .map(|r| (r.offset_delta, r.timestamp_delta))
            .collect();
        assert_eq!(deltas, [(0, 0), (1, -10), (2, 10)]);
        let header = batch::check(&b.build()).unwrap();
        assert_eq!((header.base_timestamp, header.max_timestamp), (1000, 1010));
    }

    #[test]
    fn compacted_batches_keep_their_last_offset_delta() {
        let records = vec![record(0, Some(b"a"), None), record(3, Some(b"b"), None)];
        let built = BatchBuilder {
            last_offset_delta: Some(5),
            ..builder(Compression::Lz4, records.clone())
        }
        .build();
        let header = batch::check(&built).unwrap();
        assert_eq!((header.last_offset_delta, header.record_count), (5, 2));
        assert!(batch::check_record_count(&header).is_err());
        assert_eq!(decode_records(&built).unwrap(), records);

        // Without the override, the largest offset delta counts, not the last.
        let gaps = vec![record(4, Some(b"a"), None), record(2, Some(b"b"), None)];
        let header = batch::check(&builder(Compression::None, gaps).build()).unwrap();
        assert_eq!(header.last_offset_delta, 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_records_round_trip(
            codec in 0usize..5,
            base_timestamp in any::<i64>(),
            fields in prop::collection::vec(
                (
                    any::<i8>(),
                    any::<i64>(),
                    any::<i32>(),
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
                    prop::collection::vec(
                        ("\\PC{0,8}", prop::option::of(prop::collection::vec(any::<u8>(), 0..10))),
                        0..4,
                    ),
                ),
                0..20,
            ),
        ) {
            let records: Vec<Record> = fields
                .into_iter()
                .map(|(attributes, timestamp_delta, offset_delta, key, value, headers)| Record {
                    attributes,
                    timestamp_delta,
                    offset_delta,
                    key,
                    value,
                    headers: headers
                        .into_iter()
                        .map(|(key, value): (String, _)| Header { key: key.into_bytes(), value })
                        .collect(),
                })
                .collect();
            let built = BatchBuilder {
                compression: CODECS[codec],
                base_timestamp: Some(base_timestamp),
                records: records.clone(),
                ..BatchBuilder::new()
            }
            .build();
            prop_assert!(batch::check(&built).is_ok());
            prop_assert_eq!(decode_records(&built).unwrap(), records);
        }
    }

    // --- Byte-exact checks against the spec and another encoder ------------

    #[test]
    fn one_record_batch_matches_the_spec_byte_for_byte() {
        // Written field by field from the Kafka protocol documentation, not
        // from the encoder. The record: key "k", value "v", one header "h"
        // with a null value, 300 ms after the base timestamp.
        let base_timestamp: i64 = 1_700_000_000_000; // 0x0000018BCFE56800
        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 0x2a,       // baseOffset 42
            0, 0, 0, 0x3e,                   // batchLength 62 = 49 + 13 record bytes
            0xff, 0xff, 0xff, 0xff,          // partitionLeaderEpoch -1
            0x02,                            // magic 2
            0, 0, 0, 0,                      // crc, filled in below
            0x00, 0x00,                      // attributes: none, CreateTime
            0, 0, 0, 0,                      // lastOffsetDelta 0
            0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // baseTimestamp
            0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x69, 0x2c, // maxTimestamp = base + 300
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // producerId -1
            0xff, 0xff,                      // producerEpoch -1
            0xff, 0xff, 0xff, 0xff,          // baseSequence -1
            0, 0, 0, 1,                      // recordCount 1
            0x18,                            // record length 12 (zigzag 24)
            0x00,                            // attributes
            0xd8, 0x04,                      // timestampDelta 300 (zigzag 600)
            0x00,                            // offsetDelta 0
            0x02, b'k',                      // key length 1, key
            0x02, b'v',                      // value length 1, value
            0x02,                            // header count 1
            0x02, b'h',                      // header key length 1, key
            0x01,                            // header value length -1: null
        ];
        assert_eq!(expected.len(), 74);
        let crc = crc32c::crc32c(&expected[21..]);
        expected[17..21].copy_from_slice(&crc.to_be_bytes());

        let record = Record {
            attributes: 0,
            timestamp_delta: 300,
            offset_delta: 0,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![header("h", None)],
        };
        let built = BatchBuilder {
            base_offset: 42,
            base_timestamp: Some(base_timestamp),
            records: vec![record.clone()],
            ..BatchBuilder::new()
        }
        .build();
        assert_eq!(built, expected);

        let header = batch::check(&expected).unwrap();
        assert_eq!(header.crc, crc);
        assert_eq!(header.max_timestamp, base_timestamp + 300);
        assert_eq!(decode_records(&expected).unwrap(), [record]);
        assert_eq!(
            first_record_at_or_after(&expected, base_timestamp + 300).unwrap(),
            Some(42)
        );
        assert_eq!(
            first_record_at_or_after(&expected, base_timestamp + 301).unwrap(),
            None
        );
    }

    /// The record of the Sarama (Go client) test vectors below: 5 ms after
    /// the base timestamp, key 01020304, value 050607, one header 08090a =
    /// 0b0c.
    fn sarama_record() -> Record {
        Record {
            attributes: 0,
            timestamp_delta: 5,
            offset_delta: 0,
            key: Some(vec![1, 2, 3, 4]),
            value: Some(vec![5, 6, 7]),
            headers: vec![Header {
                key: vec![8, 9, 10],
                value: Some(vec![11, 12]),
            }],
        }
    }

    /// A batch header as Sarama's tests write it (every field 0 but these),
    /// followed by `section`, with the CRC Sarama computed.
    fn sarama_batch(codec: u8, crc: [u8; 4], section: &[u8]) -> Vec<u8> {
        let mut batch = vec![0; HEADER_LEN];
        batch[8..12].copy_from_slice(&((49 + section.len()) as i32).to_be_bytes());
        batch[16] = 2;
        batch[17..21].copy_from_slice(&crc);
        batch[22] = codec;
        batch[27..35].copy_from_slice(&1_479_847_795_000i64.to_be_bytes());
        batch[60] = 1;
        batch.extend_from_slice(section);
        batch
    }

    const SARAMA_RECORD: [u8; 21] = [
        40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
    ];

    #[test]
    fn batches_from_another_client_decode() {
        // Vectors from Sarama's record_test.go, with CRCs Sarama computed:
        // an independent encoder's view of the same format.
        let uncompressed = sarama_batch(0, [84, 121, 97, 253], &SARAMA_RECORD);
        #[rustfmt::skip]
        let gzip = sarama_batch(1, [231, 74, 206, 165], &[
            31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2,
            3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
        ]);
        // Raw snappy, no xerial framing, as librdkafka and Sarama send it.
        #[rustfmt::skip]
        let snappy = sarama_batch(2, [21, 0, 159, 97], &[
            21, 80, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
        ]);
        #[rustfmt::skip]
        let lz4 = sarama_batch(3, [169, 74, 119, 197], &[
            4, 34, 77, 24, 100, 112, 185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6,
            7, 2, 6, 8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59, 239, 146,
        ]);
        for batch in [&uncompressed, &gzip, &snappy, &lz4] {
            let header = batch::check(batch).unwrap();
            assert_eq!(
                decode_records(batch).unwrap(),
                [sarama_record()],
                "{header:?}"
            );
        }

        // Our encoder, given the same header fields, writes Sarama's bytes,
        // CRC included.
        let built = BatchBuilder {
            partition_leader_epoch: 0,
            base_timestamp: Some(1_479_847_795_000),
            max_timestamp: Some(0),
            producer_id: 0,
            producer_epoch: 0,
            base_sequence: 0,
            records: vec![sarama_record()],
            ..BatchBuilder::new()
        }
        .build();
        assert_eq!(built, uncompressed);
    }

    // --- Queries -----------------------------------------------------------

    #[test]
    fn first_record_at_or_after_uses_create_time() {
        for codec in CODECS {
            let mut b = BatchBuilder {
                base_offset: 100,
                compression: codec,
                ..BatchBuilder::new()
            };
            // Out of order on purpose: the answer is the first in batch
            // order, not the earliest timestamp.
            b.push(Some(b"a"), None, 1000)
                .push(Some(b"b"), None, 3000)
                .push(Some(b"c"), None, 2000)
                .push(Some(b"d"), None, 4000);
            let built = b.build();
            let find = |ts| first_record_at_or_after(&built, ts).unwrap();
            assert_eq!(find(i64::MIN), Some(100));
            assert_eq!(find(1000), Some(100));
            assert_eq!(find(1001), Some(101));
            assert_eq!(find(2500), Some(101));
            assert_eq!(find(3001), Some(103));
            assert_eq!(find(4000), Some(103));
            assert_eq!(find(4001), None);
        }
        let empty = BatchBuilder {
            base_timestamp: Some(5),
            ..BatchBuilder::new()
        }
        .build();
        assert_eq!(first_record_at_or_after(&empty, i64::MIN).unwrap(), None);
    }

    #[test]
    fn first_record_at_or_after_uses_log_append_time() {
        let mut b = BatchBuilder {
            base_offset: 10,
            ..BatchBuilder::new()
        };
        b.push(Some(b"a"), None, 1000).push(Some(b"b"), None, 9000);
        // The broker stamps the batch as it appends it: every record then
        // has the append time, whatever its own delta says.
        let mut stamped = b.build();
        batch::set_log_append_time(&mut stamped, 5000);
        batch::check(&stamped).unwrap();
        assert_eq!(first_record_at_or_after(&stamped, 1).unwrap(), Some(10));
        assert_eq!(first_record_at_or_after(&stamped, 5000).unwrap(), Some(10));
        assert_eq!(first_record_at_or_after(&stamped, 5001).unwrap(), None);
        assert_eq!(first_record_at_or_after(&stamped, 9000).unwrap(), None);

        let built = BatchBuilder {
            timestamp_type: TimestampType::LogAppendTime,
            max_timestamp: Some(7000),
            ..b.clone()
        }
        .build();
        assert_eq!(first_record_at_or_after(&built, 7000).unwrap(), Some(10));
        assert_eq!(first_record_at_or_after(&built, 7001).unwrap(), None);
    }

    #[test]
    fn keys_are_checked_except_in_control_batches() {
        for codec in CODECS {
            let keyed = vec![
                record(0, Some(b"a"), None),
                record(1, Some(b""), Some(b"v")),
            ];
            assert!(all_records_have_keys(&builder(codec, keyed.clone()).build()).unwrap());
            let mut keyless = keyed.clone();
            keyless.push(record(2, None, Some(b"v")));
            assert!(!all_records_have_keys(&builder(codec, keyless.clone()).build()).unwrap());
            // Each keyless record by its position in the batch (KIP-467).
            let mut two_keyless = keyless.clone();
            two_keyless.insert(0, record(0, None, Some(b"first")));
            let batch = builder(codec, two_keyless).build();
            assert_eq!(keyless_records(&batch).unwrap(), [0, 3]);
            let control = BatchBuilder {
                is_control: true,
                ..builder(codec, keyless)
            };
            assert!(all_records_have_keys(&control.build()).unwrap());
            assert!(all_records_have_keys(&builder(codec, Vec::new()).build()).unwrap());
        }
    }

    // --- Malformed batches -------------------------------------------------

    #[test]
    fn record_counts_must_match_the_records() {
        let two = {
            let mut b = BatchBuilder::new();
            b.push(Some(b"a"), Some(b"1"), 0)
                .push(Some(b"b"), Some(b"2"), 0);
            b.build()
        };
        let section = &two[HEADER_LEN..];
        assert_eq!(
            decode_records(&batch_with_section(0, 2, section))
                .unwrap()
                .len(),
            2
        );
        for count in [-1, 0, 1, 3, i32::MAX] {
            let batch = batch_with_section(0, count, section);
            assert!(is_malformed(decode_records(&batch)), "count {count}");
            assert!(
                is_malformed(first_record_at_or_after(&batch, 0)),
                "count {count}"
            );
            assert!(is_malformed(all_records_have_keys(&batch)), "count {count}");
        }
        // The same holds inside a compressed section.
        let gzip = compression::compress(Compression::Gzip, section);
        assert_eq!(
            decode_records(&batch_with_section(1, 2, &gzip))
                .unwrap()
                .len(),
            2
        );
        assert!(is_malformed(decode_records(&batch_with_section(
            1, 1, &gzip
        ))));
        assert!(is_malformed(decode_records(&batch_with_section(
            1, 3, &gzip
        ))));
    }

    #[test]
    fn record_lengths_must_match_their_fields() {
        // key "k", value "v", no headers: 8 body bytes.
        let body = [0x00, 0x00, 0x00, 0x02, b'k', 0x02, b'v', 0x00];
        let with_len = |len: i32| {
            let mut section = Vec::new();
            encode_varint(len, &mut section);
            section.extend_from_slice(&body);
            section
        };
        assert!(decode_records(&batch_with_section(0, 1, &with_len(8))).is_ok());
        // Too short a length cuts the header count off; too long a one
        // overruns the section; a negative one is nonsense.
        for len in [7, 9, -8, 0] {
            assert!(is_malformed(decode_records(&batch_with_section(
                0,
                1,
                &with_len(len)
            ))));
        }
        // Declaring more than the fields use is refused even when the extra
        // bytes are there.
        let mut padded = with_len(9);
        padded.push(0);
        assert!(is_malformed(decode_records(&batch_with_section(
            0, 1, &padded
        ))));
    }

    #[test]
    fn bad_fields_are_refused() {
        let encode = |body: &[u8]| {
            let mut section = Vec::new();
            encode_varint(body.len() as i32, &mut section);
            section.extend_from_slice(body);
            batch_with_section(0, 1, &section)
        };
        // A well-formed record with one header "h" = "x", to start from.
        let good = [0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x02, b'h', 0x02, b'x'];
        assert_eq!(
            decode_records(&encode(&good)).unwrap()[0].headers,
            [header("h", Some(b"x"))]
        );
        // A negative header key length.
        let mut negative_key = good;
        negative_key[6] = 0x01;
        assert!(is_malformed(decode_records(&encode(&negative_key))));
        // A header key that is not UTF-8 is accepted, as Kafka accepts it.
        let mut not_utf8 = good;
        not_utf8[7] = 0xff;
        assert_eq!(
            decode_records(&encode(&not_utf8)).unwrap()[0].headers[0].key,
            [0xff]
        );
        // A negative header count, and one larger than the bytes allow.
        let mut negative_count = good;
        negative_count[5] = 0x03;
        assert!(is_malformed(decode_records(&encode(&negative_count))));
        let mut huge_count = good.to_vec();
        huge_count.splice(5..6, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert!(is_malformed(decode_records(&encode(&huge_count))));
        // A key longer than the record, and an overlong varint.
        let mut long_key = good;
        long_key[3] = 0x7e;
        assert!(is_malformed(decode_records(&encode(&long_key))));
        let overlong = [
            0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ];
        assert!(is_malformed(decode_records(&encode(&overlong))));
        // Kafka reads any negative key or value length as null, so do we.
        let mut minus_two = good;
        minus_two[3] = 0x03;
        minus_two[4] = 0x03;
        let record = &decode_records(&encode(&minus_two)).unwrap()[0];
        assert_eq!((&record.key, &record.value), (&None, &None));
    }

    #[test]
    fn bad_batches_are_refused() {
        let mut b = BatchBuilder::new();
        b.push(Some(b"a"), Some(b"1"), 0);
        let good = b.build();
        assert!(matches!(
            decode_records(&good[..40]),
            Err(CorruptBatch::HeaderTruncated { .. })
        ));
        assert!(matches!(
            decode_records(&good[..good.len() - 1]),
            Err(CorruptBatch::LengthOverrun { .. })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(is_malformed(decode_records(&longer)));
        let unknown = batch_with_section(5, 1, &good[HEADER_LEN..]);
        assert_eq!(
            decode_records(&unknown),
            Err(CorruptBatch::UnknownCompression(5))
        );
        // A compressed codec over bytes that are not compressed.
        assert!(is_malformed(decode_records(&batch_with_section(
            4,
            1,
            &good[HEADER_LEN..]
        ))));
        // An empty section is fine for an empty batch whatever the codec, as
        // Kafka writes it, but not when records are declared.
        for codec in CODECS {
            let attributes = codec.attribute_bits();
            assert_eq!(
                decode_records(&batch_with_section(attributes, 0, &[])).unwrap(),
                []
            );
            assert!(is_malformed(decode_records(&batch_with_section(
                attributes,
                1,
                &[]
            ))));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_sections_never_panic(
            section in prop::collection::vec(any::<u8>(), 0..300),
            codec in 0i16..8,
            record_count in prop_oneof![-2i32..40, any::<i32>()],
            compress_first in any::<bool>(),
        ) {
            // Either the bytes as they are, or the bytes properly compressed,
            // so that arbitrary records also reach the record decoder inside
            // every codec.
            let section = match Compression::from_attributes(codec) {
                Ok(c) if compress_first => compression::compress(c, &section),
                _ => section,
            };
            let batch = batch_with_section(codec, record_count, &section);
            prop_assert!(batch::check(&batch).is_ok() || codec > 4);
            let _ = decode_records(&batch);
            let _ = first_record_at_or_after(&batch, 0);
            let _ = all_records_have_keys(&batch);
        }

        #[test]
        fn damaged_batches_never_panic(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            codec in 0usize..5,
        ) {
            let mut batch = builder(CODECS[codec], varied_records()[..5].to_vec()).build();
            for (at, byte) in flips {
                let at = HEADER_LEN + at.index(batch.len() - HEADER_LEN);
                batch[at] ^= byte;
            }
            reseal(&mut batch);
            let _ = decode_records(&batch);
            let _ = first_record_at_or_after(&batch, 0);
            let _ = all_records_have_keys(&batch);
        }

        #[test]
        fn arbitrary_whole_batches_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = decode_records(&bytes);
            let _ = first_record_at_or_after(&bytes, 0);
            let _ = all_records_have_keys(&bytes);
        }
    }
}
