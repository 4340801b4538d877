//! Small files replaced atomically: write a temporary file, optionally
//! fsync it, rename it over the target, optionally fsync the directory.
//! A crash leaves either the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Whether a write must be durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Fsync the file and its directory: the write survives a crash.
    Sync,
    /// Only the rename is atomic; a crash may lose the write (the old file
    /// or no file remains). For hints that can be recomputed.
    NoSync,
}

/// Replaces `dir/name` with `bytes`.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durability: Durability,
) -> io::Result<()> {
    write_file(dir, name, bytes, durability)?;
    if durability == Durability::Sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes`, fsyncing the file's data (when asked)
/// but not the directory, so that a caller writing many files can sync the
/// directory once at the end.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8], durability: Durability) -> io::Result<()> {
    match write_file_once(dir, name, bytes, durability) {
        Err(error) if is_disk_full(&error) && release_reserve(dir) => {
            write_file_once(dir, name, bytes, durability)
        }
        result => result,
    }
}

/// The file that holds space for the controller's own writes: see
/// [`ensure_reserve`].
pub const RESERVE_FILE: &str = "reserve";
/// How much space the reserve holds: room for the few small files openraft
/// writes at start-up (the vote, a blank entry of the new term) and more.
pub const RESERVE_BYTES: usize = 256 * 1024;

/// Creates `dir/reserve` if it is missing, best effort. openraft treats a
/// failed write of its log or vote as fatal, so a controller that opens on
/// a disk the partition logs filled could not start; the reserve is
/// deleted to make room when a write of the controller meets a full disk
/// (see [`write_file`]), and set aside again once there is space.
pub fn ensure_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let tmp = dir.join(format!("{RESERVE_FILE}.tmp"));
    let written = File::create(&tmp)
        .and_then(|mut file| {
            // Real bytes, not a hole: a sparse file reserves nothing.
            file.write_all(&vec![0u8; RESERVE_BYTES])?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// Deletes the reserve next to `dir` (in it, or in its parent for the
/// entries' subdirectory); whether there was one.
fn release_reserve(dir: &Path) -> bool {
    for candidate in [Some(dir), dir.parent()].into_iter().flatten() {
        let path = candidate.join(RESERVE_FILE);
        if fs::remove_file(&path).is_ok() {
            tracing::warn!(path = %path.display(), "the disk is full; released the controller's reserved space");
            return true;
        }
    }
    false
}

fn is_disk_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull || error.kind() == io::ErrorKind::QuotaExceeded
}

fn write_file_once(dir: &Path, name: &str, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    if durability == Durability::Sync {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, dir.join(name))
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `dir/name`, or `None` if it does not exist.
pub fn read_optional(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
