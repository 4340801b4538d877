//! The sparse indexes of a segment, in Kafka's on-disk formats.
//!
//! - `.index`: entries of (relative offset u32, file position u32), big-endian,
//!   8 bytes each; the offset is the last offset of the batch that starts at
//!   the position. One entry every `index.interval.bytes` of log.
//! - `.timeindex`: entries of (timestamp i64, relative offset u32), 12 bytes
//!   each; the largest timestamp seen so far in the segment and the batch
//!   where it was first seen, appended when it grows.
//!
//! Both are kept in memory as sorted vectors and written whole when the
//! segment closes (see `Segment::persist_indexes`), so the append path never
//! writes them. Entries are small (about 2 KiB per MiB of log at the default
//! interval), and an idle partition's empty active segment holds none.

pub const OFFSET_ENTRY_LEN: usize = 8;
pub const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some(last) = self.last() {
            assert!(
                relative_offset > last.relative_offset,
                "offset index must increase"
            );
            assert!(
                position > last.position,
                "offset index positions must increase"
            );
        }
        self.entries.push(OffsetEntry {
            relative_offset,
            position,
        });
    }

    /// The entry with the largest offset not above `relative_offset`.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The entry for the batch at `position`, if there is one.
    pub fn at_position(&self, position: u64) -> Option<OffsetEntry> {
        let position = u32::try_from(position).ok()?;
        let index = self
            .entries
            .binary_search_by_key(&position, |e| e.position)
            .ok()?;
        Some(self.entries[index])
    }

    /// Drops entries for batches at or after `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Decodes an index file, or `None` if it cannot belong to a segment of
    /// `segment_size` bytes: a partial entry, entries out of order, or a
    /// position beyond the segment.
    pub fn decode(bytes: &[u8], segment_size: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return None;
        }
        let mut index = Self {
            entries: Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN),
        };
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let relative_offset = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let position = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if u64::from(position) >= segment_size || relative_offset > i32::MAX as u32 {
                return None;
            }
            if let Some(last) = index.last() {
                if relative_offset <= last.relative_offset || position <= last.position {
                    return None;
                }
            }
            index.entries.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        Some(index)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Appends an entry if `timestamp` is above the last one's.
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) -> bool {
        if self.last().is_some_and(|last| timestamp <= last.timestamp) {
            return false;
        }
        self.entries.push(TimeEntry {
            timestamp,
            relative_offset,
        });
        true
    }

    /// The last entry whose timestamp is below `timestamp`: every batch
    /// before its offset has a smaller timestamp, so a search for the first
    /// batch at or after `timestamp` may start there.
    pub fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries that point at offsets at or after `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(keep);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decodes a time index file, or `None` if it is not increasing or has
    /// a partial entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return None;
        }
        let mut index = Self {
            entries: Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN),
        };
        for chunk in bytes.chunks_exact(TIME_ENTRY_LEN) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let timestamp = i64::from_be_bytes(ts);
            let relative_offset = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if relative_offset > i32::MAX as u32 {
                return None;
            }
            if let Some(last) = index.last() {
                if timestamp <= last.timestamp || relative_offset < last.relative_offset {
                    return None;
                }
            }
            index.entries.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_floor_and_truncate() {
        let mut index = OffsetIndex::default();
        assert_eq!(index.floor(5), None);
        index.push(9, 4100);
        index.push(19, 8300);
        index.push(29, 12500);
        assert_eq!(index.floor(8), None);
        assert_eq!(index.floor(9).unwrap().position, 4100);
        assert_eq!(index.floor(25).unwrap().position, 8300);
        assert_eq!(index.floor(u32::MAX).unwrap().position, 12500);
        index.truncate_to_position(8300);
        assert_eq!(index.len(), 1);
        let bytes = index.encode();
        assert_eq!(bytes, [0, 0, 0, 9, 0, 0, 0x10, 0x04]);
        assert_eq!(OffsetIndex::decode(&bytes, 5000), Some(index));
    }

    #[test]
    fn offset_index_decode_rejects_inconsistent_files() {
        let mut index = OffsetIndex::default();
        index.push(1, 10);
        index.push(2, 20);
        let bytes = index.encode();
        assert!(OffsetIndex::decode(&bytes, 21).is_some());
        assert!(
            OffsetIndex::decode(&bytes, 20).is_none(),
            "position beyond segment"
        );
        assert!(
            OffsetIndex::decode(&bytes[..7], 100).is_none(),
            "partial entry"
        );
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(OffsetIndex::decode(&swapped, 100).is_none(), "out of order");
    }

    #[test]
    fn time_index_search_and_decode() {
        let mut index = TimeIndex::default();
        assert!(index.maybe_push(100, 0));
        assert!(!index.maybe_push(100, 3));
        assert!(index.maybe_push(200, 5));
        assert_eq!(index.last_below(100), None);
        assert_eq!(index.last_below(101).unwrap().relative_offset, 0);
        assert_eq!(index.last_below(1000).unwrap().relative_offset, 5);
        let bytes = index.encode();
        assert_eq!(TimeIndex::decode(&bytes), Some(index.clone()));
        assert!(TimeIndex::decode(&bytes[..11]).is_none());
        let mut swapped = bytes[12..].to_vec();
        swapped.extend_from_slice(&bytes[..12]);
        assert!(TimeIndex::decode(&swapped).is_none());
        index.truncate_to_offset(5);
        assert_eq!(index.len(), 1);
    }
}
