//! The snapshot format (see the module doc) and the snapshot files.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::segment;

use super::*;

impl ProducerStateManager {
    /// The state in the snapshot format, producers in id order so that
    /// equal states give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut ids: Vec<i64> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut body = Vec::with_capacity(
            4 + ids.len() * (SNAPSHOT_PRODUCER_LEN + BATCHES_RETAINED * SNAPSHOT_BATCH_LEN),
        );
        let count = u32::try_from(ids.len()).expect("bounded by producers_max");
        body.extend_from_slice(&count.to_be_bytes());
        for id in ids {
            let entry = &self.producers[&id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.producer_epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_append_ms.to_be_bytes());
            body.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
            let txn_first_offset = entry.current_txn_first_offset.unwrap_or(-1);
            body.extend_from_slice(&txn_first_offset.to_be_bytes());
            body.push(u8::try_from(entry.batches.len()).expect("at most BATCHES_RETAINED"));
            for batch in &entry.batches {
                body.extend_from_slice(&batch.first_seq.to_be_bytes());
                body.extend_from_slice(&batch.last_seq.to_be_bytes());
                body.extend_from_slice(&batch.first_offset.to_be_bytes());
                body.extend_from_slice(&batch.last_offset.to_be_bytes());
                body.extend_from_slice(&batch.timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(6 + body.len());
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a snapshot back. Any damage is an error, never a panic.
    pub fn decode(bytes: &[u8], config: ProducerStateConfig) -> Result<Self, SnapshotError> {
        let mut reader = Reader { bytes, at: 0 };
        if bytes.len() < SNAPSHOT_HEADER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let version = reader.u16()?;
        let producer_len = match version {
            SNAPSHOT_VERSION => SNAPSHOT_PRODUCER_LEN,
            SNAPSHOT_VERSION_V1 => SNAPSHOT_PRODUCER_LEN_V1,
            _ => return Err(SnapshotError::Version(version)),
        };
        let stored = reader.u32()?;
        let computed = crc32c::crc32c(&bytes[reader.at..]);
        if stored != computed {
            return Err(SnapshotError::Crc { stored, computed });
        }
        let count = reader.u32()? as usize;
        // Checked against what is left before anything is allocated.
        if count > (bytes.len() - reader.at) / producer_len {
            return Err(SnapshotError::Truncated);
        }
        let mut manager = Self::new(config);
        for _ in 0..count {
            let producer_id = reader.i64()?;
            let producer_epoch = reader.u16()? as i16;
            let last_append_ms = reader.i64()?;
            let (coordinator_epoch, txn_first_offset) = if version == SNAPSHOT_VERSION_V1 {
                (NO_COORDINATOR_EPOCH, -1)
            } else {
                (reader.u32()? as i32, reader.i64()?)
            };
            let batch_count = usize::from(reader.u8()?);
            if producer_id < 0 || batch_count > BATCHES_RETAINED || txn_first_offset < -1 {
                return Err(SnapshotError::Invalid(format!(
                    "producer {producer_id} with {batch_count} batches and a transaction from {txn_first_offset}"
                )));
            }
            let current_txn_first_offset = (txn_first_offset >= 0).then_some(txn_first_offset);
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                let batch = BatchMetadata {
                    first_seq: reader.u32()? as i32,
                    last_seq: reader.u32()? as i32,
                    first_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                    timestamp: reader.i64()?,
                };
                if batch.first_offset < 0 || batch.first_offset > batch.last_offset {
                    return Err(SnapshotError::Invalid(format!(
                        "producer {producer_id} has a batch at offsets {}..={}",
                        batch.first_offset, batch.last_offset
                    )));
                }
                batches.push_back(batch);
            }
            if let Some(first_offset) = current_txn_first_offset {
                // The batch that began the transaction, or a later one of
                // it, is the producer's last.
                if batches.back().is_none_or(|b| b.last_offset < first_offset) {
                    return Err(SnapshotError::Invalid(format!(
                        "producer {producer_id} has a transaction from {first_offset} after its last batch"
                    )));
                }
                if manager.ongoing.insert(first_offset, producer_id).is_some() {
                    return Err(SnapshotError::Invalid(format!(
                        "two transactions begin at offset {first_offset}"
                    )));
                }
            }
            let entry = ProducerEntry {
                producer_epoch,
                batches,
                last_append_ms,
                coordinator_epoch,
                current_txn_first_offset,
            };
            if manager.producers.insert(producer_id, entry).is_some() {
                return Err(SnapshotError::Invalid(format!(
                    "producer {producer_id} appears twice"
                )));
            }
        }
        if reader.at != bytes.len() {
            return Err(SnapshotError::Invalid(format!(
                "{} bytes after the last producer",
                bytes.len() - reader.at
            )));
        }
        // A snapshot written under a larger bound keeps its most recent.
        while manager.producers.len() > config.producers_max {
            manager.evict_longest_idle();
        }
        manager.check_invariants();
        Ok(manager)
    }
}

/// Why a snapshot file cannot be used. The caller deletes it and falls
/// back to an older one or to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot ends early")]
    Truncated,
    #[error("unknown snapshot version {0}")]
    Version(u16),
    #[error("snapshot CRC32C is {stored:#010x} but its bytes sum to {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("snapshot is malformed: {0}")]
    Invalid(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.at.checked_add(N).ok_or(SnapshotError::Truncated)?;
        let bytes = self
            .bytes
            .get(self.at..end)
            .ok_or(SnapshotError::Truncated)?;
        self.at = end;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

pub(super) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_SUFFIX}"))
}

/// The offsets of the snapshot files in `dir`, ascending.
pub fn snapshot_offsets(dir: &Path) -> Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        if let Some((offset, SNAPSHOT_SUFFIX)) = name.to_str().and_then(segment::parse_file_name) {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes `bytes` ([`ProducerStateManager::take_snapshot`]) as the snapshot
/// at `offset` in `dir`, atomically, and removes all but the
/// [`SNAPSHOTS_KEPT`] newest. With `sync` the file is durable on return;
/// without, the caller makes the file system durable before relying on it
/// (one `syncfs` at shutdown).
///
/// The snapshot must describe only batches that a crash cannot take back
/// (flushed), or a restart could start from a state that remembers batches
/// the log lost; [`load`] drops snapshots past the log end, which covers a
/// lost tail but not one lost and then rewritten.
pub fn write_snapshot(dir: &Path, offset: i64, bytes: &[u8], sync: bool) -> Result<()> {
    assert!(offset >= 0);
    checkpoint::write_atomically_with(&snapshot_path(dir, offset), bytes, sync)?;
    let offsets = snapshot_offsets(dir)?;
    let stale = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    for &old in &offsets[..stale] {
        segment::remove_if_exists(&snapshot_path(dir, old))?;
    }
    Ok(())
}

/// Removes the snapshots past `offset`, for a caller that truncates the log
/// there.
pub fn remove_snapshots_after(dir: &Path, offset: i64) -> Result<()> {
    for stale in snapshot_offsets(dir)?.into_iter().filter(|&o| o > offset) {
        segment::remove_if_exists(&snapshot_path(dir, stale))?;
    }
    Ok(())
}
