//! Small text files replaced atomically: write a temporary file, fsync it,
//! rename it over the old one, fsync the directory. A crash leaves either the
//! old file or the new one, never a mix.
//!
//! The format is Kafka's checkpoint format: a version line, a count line,
//! then one entry per line with space-separated fields.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, StorageError};

const VERSION: &str = "0";

/// Replaces `path` with `contents`, durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically_with(path, contents, true)
}

/// Replaces `path` with `contents` atomically; durably only if `sync`. A
/// caller that passes `false` makes the file system durable by other means
/// (one `syncfs` at shutdown) before relying on the file.
pub fn write_atomically_with(path: &Path, contents: &[u8], sync: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    file.write_all(contents)
        .map_err(StorageError::io("write", &tmp))?;
    if sync {
        file.sync_all().map_err(StorageError::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(StorageError::io("rename", &tmp))?;
    if let (true, Some(dir)) = (sync, path.parent()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the creation, renaming or removal of files in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}

/// Encodes entries in the checkpoint format.
pub fn encode<I, E>(entries: I) -> Vec<u8>
where
    I: IntoIterator<Item = E>,
    E: std::fmt::Display,
{
    let lines: Vec<String> = entries.into_iter().map(|e| e.to_string()).collect();
    let mut out = format!("{VERSION}\n{}\n", lines.len());
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Why a checkpoint file could not be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("unknown version line {0:?}")]
    Version(String),
    #[error("bad count line {0:?}")]
    Count(String),
    #[error("count says {expected} entries but {found} follow")]
    CountMismatch { expected: usize, found: usize },
    #[error("bad entry {0:?}")]
    Entry(String),
}

/// Decodes a checkpoint file, each entry's line parsed by `parse_entry`.
/// Anything malformed is an error, for the caller to log and fall back from.
pub fn decode<T>(
    bytes: &[u8],
    parse_entry: impl Fn(&[&str]) -> Option<T>,
) -> Result<Vec<T>, CheckpointError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CheckpointError::NotUtf8)?;
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default();
    if version.trim() != VERSION {
        return Err(CheckpointError::Version(version.chars().take(40).collect()));
    }
    let count_line = lines.next().unwrap_or_default();
    let expected: usize = count_line
        .trim()
        .parse()
        .map_err(|_| CheckpointError::Count(count_line.into()))?;
    let mut entries = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = parse_entry(&fields)
            .ok_or_else(|| CheckpointError::Entry(line.chars().take(80).collect()))?;
        entries.push(entry);
    }
    if entries.len() != expected {
        return Err(CheckpointError::CountMismatch {
            expected,
            found: entries.len(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(fields: &[&str]) -> Option<(i32, i64)> {
        match fields {
            [a, b] => Some((a.parse().ok()?, b.parse().ok()?)),
            _ => None,
        }
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        write_atomically(&path, &encode(["0 0", "3 150"])).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes, b"0\n2\n0 0\n3 150\n");
        assert_eq!(decode(&bytes, pair).unwrap(), vec![(0, 0), (3, 150)]);
        write_atomically(&path, &encode(["4 200"])).unwrap();
        assert_eq!(
            decode(&fs::read(&path).unwrap(), pair).unwrap(),
            vec![(4, 200)]
        );
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn rejects_malformed_files() {
        assert_eq!(decode(b"\xff", pair), Err(CheckpointError::NotUtf8));
        assert!(matches!(
            decode(b"9\n0\n", pair),
            Err(CheckpointError::Version(_))
        ));
        assert!(matches!(
            decode(b"0\nx\n", pair),
            Err(CheckpointError::Count(_))
        ));
        assert!(matches!(
            decode(b"0\n1\n1 2 3\n", pair),
            Err(CheckpointError::Entry(_))
        ));
        assert_eq!(
            decode(b"0\n2\n1 2\n", pair),
            Err(CheckpointError::CountMismatch {
                expected: 2,
                found: 1
            })
        );
        assert!(decode(b"", pair).is_err());
    }
}
