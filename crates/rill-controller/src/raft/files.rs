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
