//! Target `log_recovery`: a log directory of arbitrary segment, index and
//! checkpoint files, opened as after a crash.

use std::sync::Arc;

use rill_storage::batch::{self, BatchHeader};
use rill_storage::records::BatchBuilder;
use rill_storage::{FileCache, Log, LogConfig, LogOpenOptions};
use rill_types::{Clock, ManualClock};

use crate::record_batch::{fix_crcs, read_all};

const NOW_MS: i64 = 1_700_000_000_000;

/// What a file of the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Log,
    Index,
    TimeIndex,
    /// Left by a compaction that did not finish.
    Cleaned,
    EpochCheckpoint,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Log,
        Kind::Index,
        Kind::TimeIndex,
        Kind::Cleaned,
        Kind::EpochCheckpoint,
    ];
}

/// The input, in a simple format so that seeds can be written from real
/// log directories ([`encode`]):
/// - 4 bytes: recovery point, log start offset (both as [`offset`]), clean
///   shutdown (odd: yes), `segment.bytes` after recovery (64-byte units
///   over the minimum);
/// - then files, each: kind (mod 5, as [`Kind::ALL`]), base offset (as
///   [`offset`]), flags (bit 0: recompute the CRC of each batch first, so
///   that recovery gets past the CRC check into what follows it), length
///   (u16, big-endian), contents (cut short where the input ends).
#[derive(Debug, Clone)]
pub struct Dir {
    pub recovery_point: u8,
    pub log_start_offset: u8,
    pub clean_shutdown: bool,
    pub segment_bytes: u8,
    pub files: Vec<(Kind, u8, bool, Vec<u8>)>,
}

impl Dir {
    fn parse(data: &[u8]) -> Option<Dir> {
        let (&[recovery_point, log_start_offset, clean, segment_bytes], mut rest) =
            data.split_first_chunk::<4>()?;
        let mut files = Vec::new();
        while let Some((&[kind, base, flags, len_hi, len_lo], tail)) = rest.split_first_chunk::<5>()
        {
            let len = usize::from(u16::from_be_bytes([len_hi, len_lo])).min(tail.len());
            let (contents, tail) = tail.split_at(len);
            files.push((
                Kind::ALL[usize::from(kind) % Kind::ALL.len()],
                base,
                flags & 1 != 0,
                contents.to_vec(),
            ));
            rest = tail;
        }
        Some(Dir {
            recovery_point,
            log_start_offset,
            clean_shutdown: clean % 2 == 1,
            segment_bytes,
            files,
        })
    }
}

/// The bytes [`log_recovery`] reads as `dir`.
pub fn encode(dir: &Dir) -> Vec<u8> {
    let mut out = vec![
        dir.recovery_point,
        dir.log_start_offset,
        u8::from(dir.clean_shutdown),
        dir.segment_bytes,
    ];
    for (kind, base, fix_crcs, contents) in &dir.files {
        let kind = Kind::ALL.iter().position(|k| k == kind).expect("listed") as u8;
        let len = u16::try_from(contents.len()).expect("a file of at most 64 KiB");
        out.extend_from_slice(&[kind, *base, u8::from(*fix_crcs)]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(contents);
    }
    out
}

/// An offset from one byte: itself, except 255, which is far past any
/// other (2^40), for segments with a large base offset.
pub fn offset(byte: u8) -> i64 {
    if byte == u8::MAX {
        1 << 40
    } else {
        i64::from(byte)
    }
}

fn file_name(base: i64, suffix: &str) -> String {
    format!("{base:020}.{suffix}")
}

/// The files are written into an empty log directory, and the log opened
/// with the checkpointed offsets from the input. Whatever the files hold:
/// - opening succeeds (file contents never make it fail);
/// - the log start is at most the log end, and what reads from the log
///   start is whole, valid batches in ascending offsets below the log end;
/// - reopened with full recovery, then appended to at its end, the batch
///   reads back at the log end;
/// - recovered again (the process "crashes": nothing is flushed or
///   closed), the log keeps all it had, the new batch included.
pub fn log_recovery(data: &[u8]) {
    let Some(spec) = Dir::parse(data) else {
        return;
    };
    let dir = crate::temp_dir();
    let log_dir = dir.path().join("topic-0");
    std::fs::create_dir_all(&log_dir).expect("create the log directory");
    for (kind, base, fix, contents) in spec.files.iter().take(16) {
        let base = offset(*base);
        let name = match kind {
            Kind::Log => file_name(base, "log"),
            Kind::Index => file_name(base, "index"),
            Kind::TimeIndex => file_name(base, "timeindex"),
            Kind::Cleaned => file_name(base, "log.cleaned"),
            Kind::EpochCheckpoint => rill_storage::epoch::FILE_NAME.to_string(),
        };
        let mut contents = contents.clone();
        if *fix {
            fix_crcs(&mut contents);
        }
        std::fs::write(log_dir.join(name), contents).expect("write a file");
    }

    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW_MS));
    let files = FileCache::new(8);
    let config = LogConfig {
        segment_bytes: LogConfig::SEGMENT_BYTES_MIN + 64 * u64::from(spec.segment_bytes) + 64,
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let open = |options| {
        Log::open(
            &log_dir,
            config.clone(),
            Arc::clone(&clock),
            Arc::clone(&files),
            options,
        )
        .expect("file contents never make opening fail")
    };

    // As the checkpoints say: possibly trusting damaged files.
    let log = open(LogOpenOptions {
        recovery_point: offset(spec.recovery_point),
        log_start_offset: offset(spec.log_start_offset),
        clean_shutdown: spec.clean_shutdown,
    });
    assert!(log.log_start_offset() <= log.log_end_offset());
    let _ = read_all(&log);
    let _ = log.batch_headers(log.log_start_offset(), log.log_end_offset());
    let _ = log.offset_for_timestamp(0);
    let _ = log.max_timestamp_offset();
    let log_start_offset = log.log_start_offset();
    drop(log);

    // As after a crash with no recovery point: every segment is checked.
    let crashed = LogOpenOptions {
        recovery_point: 0,
        log_start_offset,
        clean_shutdown: false,
    };
    let log = open(crashed);
    let kept = read_all(&log);
    let end = log.log_end_offset();
    check_batches(&kept, log.log_start_offset(), end);

    let mut batch = BatchBuilder::new();
    batch.push(Some(b"key"), Some(b"after recovery"), NOW_MS);
    let info = log
        .append(&mut batch.build(), 3)
        .expect("append at the end of a recovered log");
    assert_eq!(
        info.base_offset, end,
        "the append did not go at the log end"
    );
    let mut read = Vec::new();
    let read_info = log
        .read_into(end, u64::MAX, i64::MAX, &mut read)
        .expect("read the new batch");
    assert_eq!(read_info.next_offset, end + 1);
    let header = batch::check(&read).expect("the new batch reads back whole");
    assert_eq!(header.base_offset, end);
    let all = read_all(&log);
    drop(log);

    let log = open(LogOpenOptions {
        log_start_offset: log_start_offset.min(end),
        ..crashed
    });
    assert_eq!(log.log_end_offset(), end + 1, "a second recovery lost data");
    assert!(read_all(&log) == all, "a second recovery changed the log");
}

/// Whole batches that pass their checks, offsets ascending, each ending at
/// or after the log start and before the log end.
fn check_batches(bytes: &[u8], log_start_offset: i64, log_end_offset: i64) {
    let mut next = i64::MIN;
    for (i, batch) in batch::split(bytes).enumerate() {
        let batch = batch.unwrap_or_else(|e| panic!("batch {i} read back cut: {e}"));
        let header: BatchHeader =
            batch::check(batch).unwrap_or_else(|e| panic!("batch {i} read back corrupt: {e}"));
        assert!(header.offsets_are_sane(), "batch {i}: {header:?}");
        assert!(
            header.base_offset >= next,
            "batch {i} goes back: {header:?}"
        );
        assert!(
            header.last_offset() >= log_start_offset,
            "batch {i} entirely below the log start {log_start_offset}"
        );
        assert!(
            header.last_offset() < log_end_offset,
            "batch {i} reaches the log end {log_end_offset}"
        );
        next = header.next_offset();
    }
}
