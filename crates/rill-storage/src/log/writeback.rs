//! Early writeback: asking the kernel to start writing appended bytes
//! that no fsync will cover soon (acks=1 and acks=0 appends on a leader),
//! without waiting for it.
//!
//! Left alone, the kernel writes dirty pages back once they are 30 s old
//! (`vm.dirty_expire_centisecs`), all at once. On ext4 (`data=ordered`) an
//! fsync commits the journal, and the commit waits for the data writes
//! under way. So a burst of writeback of one partition's acks=1 data
//! stalls the acks=all fsyncs of every partition on the filesystem for
//! tens of milliseconds (bench/README.md, "The RF 1 end-to-end tail").
//! Started every [`Log::WRITEBACK_CHUNK`] bytes, the writeback goes out
//! in small pieces as the data arrives. Nothing becomes durable by it:
//! no metadata is written, and the recovery point does not move.

use std::fs::File;
use std::sync::Arc;

use crate::error::Result;

use super::{lock, Log};

/// A writeback to start: a range of a segment file.
#[derive(Debug)]
pub struct Writeback {
    file: Arc<File>,
    from: u64,
    to: u64,
}

impl Log {
    /// Bytes of the active segment, neither fsynced nor sent to writeback
    /// yet, that make a writeback worth starting.
    pub const WRITEBACK_CHUNK: u64 = 4 << 20;

    /// Claims the active segment's bytes that are neither fsynced nor
    /// being written back, once there are [`Log::WRITEBACK_CHUNK`] of them,
    /// and returns the writeback to start ([`Writeback::start`]). `None`
    /// below that, so each chunk is claimed once however many appends ask.
    pub fn take_writeback(&self) -> Result<Option<Writeback>> {
        let mut state = lock(&self.state);
        if state.closed {
            return Ok(None);
        }
        let active = state.active();
        let (base, size, synced) = (active.base_offset, active.size, active.synced_size);
        let started = match state.writeback_started {
            (segment, position) if segment == base => position,
            _ => 0,
        };
        let from = started.max(synced);
        if size < from.saturating_add(Self::WRITEBACK_CHUNK) {
            return Ok(None);
        }
        let file = active.file(&self.files)?;
        state.writeback_started = (base, size);
        Ok(Some(Writeback {
            file,
            from,
            to: size,
        }))
    }
}

impl Writeback {
    /// The range of the segment file, in bytes.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.from..self.to
    }

    /// Asks the kernel to start writing the range's dirty pages. Does not
    /// wait for the writes, but may wait for room in the device's queue:
    /// call it where blocking is fine (the partition's flush thread).
    pub fn start(&self) -> std::io::Result<()> {
        start_writeback(&self.file, self.from, self.to - self.from)
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which no safe wrapper offers
/// (rustix has none).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::other("range past i64"));
    };
    // SAFETY: the call reads only its integer arguments and touches no
    // memory of this process; the descriptor stays open while `file` is
    // borrowed.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the kernel's own writeback has to do.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}
