//! Storage benchmarks for the partition log, measured against the raw disk
//! of the same machine in the same run.
//!
//! Every sample moves a whole `RILL_BENCH_BYTES` (default 1 GiB; `64M`, `1G`
//! and plain byte counts are accepted) so that each figure is a sustained
//! bandwidth rather than a burst into caches. Files go to `RILL_BENCH_DIR`,
//! by default `<target>/tmp/rill-storage-bench`: the same filesystem as the
//! build, which is what the logs would use, and never a tmpfs.
//!
//! The four targets of the issue, and the benchmark that measures each:
//!
//! | benchmark                       | compared with    | target |
//! |---------------------------------|------------------|--------|
//! | `append_no_fsync`               | `raw_disk_write` | ≥ 80 % |
//! | `append_group_commit_every_mib` | `raw_disk_write` | ≥ 50 % |
//! | `read_copying`                  | (absolute)       | ≥ 2 GB/s, also shown against `raw_read` |
//! | `recovery`                      | `raw_read`       | ≥ 100 % |
//!
//! The other benchmarks (`append_fsync_inline_every_mib`,
//! `raw_write_no_fsync`, `raw_write_fsync_every_mib`, `read_regions`,
//! `recovery_synced`) are diagnostics: the same access
//! pattern without the log, or one part of a log operation alone, so that a
//! missed target can be attributed.
//!
//! Each sample's scheduling (time on a CPU, time runnable but waiting for
//! one, from `/proc/thread-self/schedstat`) goes to `sched.jsonl` in the
//! bench directory: on a shared machine it tells a slow sample from a
//! descheduled one.
//!
//! Run with `bench/storage.sh` at the repository root, which also prints the
//! machine and a table of the results.

use std::cell::{Cell, RefCell};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use rill_storage::batch::{self, CRC_AT, HEADER_LEN, LOG_OVERHEAD};
use rill_storage::{FileCache, Log, LogConfig, LogOpenOptions};
use rill_types::{Clock, SystemClock};
use tempfile::TempDir;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The size of one record's value.
const RECORD_VALUE_BYTES: usize = 1024;
/// Records per batch: 64 KiB of values per batch (66,173 bytes on disk).
const RECORDS_PER_BATCH: usize = 64;
/// The write size of the raw-disk baselines.
const RAW_WRITE_CHUNK: usize = 64 * 1024;
/// The read size of the raw read baseline and the `max_bytes` of log reads.
const READ_CHUNK: u64 = MIB;
/// The group-commit interval.
const FSYNC_EVERY: u64 = MIB;

/// What one run measures, from the environment.
struct Setup {
    /// Bytes per sample.
    bytes: u64,
    /// Where files are written.
    dir: PathBuf,
    /// One produced batch, as a client would send it.
    batch: Vec<u8>,
    /// Pseudo-random bytes for the raw writes (no zero pages for a thin
    /// disk image to skip).
    chunk: Vec<u8>,
}

impl Setup {
    fn from_env() -> Self {
        let bytes = std::env::var("RILL_BENCH_BYTES")
            .ok()
            .map(|v| {
                parse_size(&v).unwrap_or_else(|| panic!("RILL_BENCH_BYTES={v:?} is not a size"))
            })
            .unwrap_or(GIB);
        let dir = std::env::var_os("RILL_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("rill-storage-bench"));
        fs::create_dir_all(&dir).expect("create the bench directory");
        let sched_log = dir.join("sched.jsonl");
        let file = File::create(&sched_log).expect("create the scheduling log");
        SCHED_LOG.with(|log| *log.borrow_mut() = Some(file));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let chunk = (0..RAW_WRITE_CHUNK)
            .map(|_| xorshift(&mut rng) as u8)
            .collect();
        let batch = encode_batch(RECORDS_PER_BATCH, RECORD_VALUE_BYTES, SystemClock.now_ms());
        eprintln!(
            "rill-storage bench: {} bytes per sample in {}, batches of {} bytes ({} records of {} bytes)",
            bytes,
            dir.display(),
            batch.len(),
            RECORDS_PER_BATCH,
            RECORD_VALUE_BYTES
        );
        Self {
            bytes,
            dir,
            batch,
            chunk,
        }
    }

    /// How many batches make up one sample, and their bytes.
    fn batches(&self) -> (u64, u64) {
        let count = (self.bytes / self.batch.len() as u64).max(1);
        (count, count * self.batch.len() as u64)
    }

    fn temp_dir(&self, prefix: &str) -> TempDir {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.dir)
            .expect("create a temporary directory")
    }

    fn raw_path(&self) -> PathBuf {
        self.dir.join("raw-sequential.bin")
    }
}

fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => value.split_at(at),
        None => (value, ""),
    };
    let unit = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => KIB,
        "M" => MIB,
        "G" => GIB,
        _ => return None,
    };
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(unit)
        .filter(|&b| b > 0)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push(zigzag as u8 | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// An uncompressed magic-v2 batch of `records` records with null keys and
/// `value_len`-byte values, as a producer would send it (base offset 0,
/// no producer id), its CRC32C set. Written here rather than with
/// `records::BatchBuilder` so that the benchmark depends only on the batch
/// format, not on the builder's API.
fn encode_batch(records: usize, value_len: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut body = Vec::with_capacity(records * (value_len + 16));
    let mut record = Vec::with_capacity(value_len + 16);
    for offset_delta in 0..records {
        record.clear();
        record.push(0); // attributes
        put_varint(&mut record, 0); // timestamp delta
        put_varint(&mut record, offset_delta as i64);
        put_varint(&mut record, -1); // null key
        put_varint(&mut record, value_len as i64);
        record.extend((0..value_len).map(|_| xorshift(&mut rng) as u8));
        put_varint(&mut record, 0); // no headers
        put_varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
    out.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    out.push(batch::MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    out.extend_from_slice(&((records - 1) as i32).to_be_bytes()); // lastOffsetDelta
    out.extend_from_slice(&timestamp_ms.to_be_bytes()); // baseTimestamp
    out.extend_from_slice(&timestamp_ms.to_be_bytes()); // maxTimestamp
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    out.extend_from_slice(&(records as i32).to_be_bytes()); // recordCount
    assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&body);
    let crc = batch::compute_crc(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let header = batch::check(&out).expect("the bench batch is valid");
    batch::check_record_count(&header).expect("the bench batch counts its records");
    out
}

fn open_log(dir: &Path) -> Log {
    Log::open(
        dir,
        LogConfig::default(),
        Arc::new(SystemClock),
        FileCache::new(FileCache::CAPACITY_DEFAULT),
        LogOpenOptions::default(),
    )
    .expect("open the log")
}

/// Appends `count` copies of `batch` as a leader would: each produce
/// request's bytes are copied into a buffer the log may rewrite (offsets and
/// epoch are set in place). That copy is part of the measured time; a broker
/// does the same when it reads the request off the socket. After every
/// `fsync_every` bytes, and at the end, a group commit makes them durable.
fn append_batches(log: &Log, batch: &[u8], count: u64, fsync_every: Option<u64>) {
    let mut request = vec![0u8; batch.len()];
    let mut unsynced = 0u64;
    for _ in 0..count {
        request.copy_from_slice(batch);
        log.append(&mut request, 0).expect("append");
        unsynced += batch.len() as u64;
        if let Some(every) = fsync_every {
            if unsynced >= every {
                log.flush_until(log.log_end_offset()).expect("flush");
                unsynced = 0;
            }
        }
    }
    if fsync_every.is_some() {
        log.flush_until(log.log_end_offset()).expect("flush");
    }
}

/// Appends like [`append_batches`], but as a broker serving acks=all
/// producers does: the appending thread never waits for an fsync. Every
/// `fsync_every` bytes it hands the log end offset to a second thread, which
/// calls `flush_until` for it; requests that arrive while an fsync runs are
/// covered together by the next one (group commit). The time includes the
/// final flush of everything.
fn append_batches_group_commit(log: &Log, batch: &[u8], count: u64, fsync_every: u64) {
    let (waiting, flusher_inbox) = std::sync::mpsc::sync_channel::<i64>(1024);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Ok(offset) = flusher_inbox.recv() {
                // Everything queued meanwhile is covered by the newest offset.
                let mut target = offset;
                while let Ok(later) = flusher_inbox.try_recv() {
                    target = later;
                }
                log.flush_until(target).expect("flush");
            }
        });
        let mut request = vec![0u8; batch.len()];
        let mut unsynced = 0u64;
        for _ in 0..count {
            request.copy_from_slice(batch);
            let info = log.append(&mut request, 0).expect("append");
            unsynced += batch.len() as u64;
            if unsynced >= fsync_every {
                waiting.send(info.last_offset + 1).expect("flusher alive");
                unsynced = 0;
            }
        }
        drop(waiting);
    });
    log.flush_until(log.log_end_offset()).expect("flush");
    assert_eq!(log.recovery_point(), log.log_end_offset());
}

/// Writes everything dirty in the machine to disk, so that a disk-bound
/// sample does not pay for the writeback of what came before it.
fn sync_machine() {
    // `sync(1)` rather than a libc call: the crate forbids unsafe code and
    // has no libc dependency. Failing to run it only makes samples noisier.
    let _ = Command::new("sync").status();
}

/// Sequential writes of `total` bytes in `chunk`-sized `write`s into a new
/// file, with `sync_all` every `fsync_every` bytes (if any) and at the end
/// (if `fsync_at_end`).
fn raw_write(
    path: &Path,
    chunk: &[u8],
    total: u64,
    fsync_every: Option<u64>,
    fsync_at_end: bool,
) -> Duration {
    let _ = fs::remove_file(path);
    sync_machine();
    timed(|| {
        let mut file = File::create(path).expect("create the raw file");
        let mut written = 0u64;
        let mut unsynced = 0u64;
        while written < total {
            let len = (total - written).min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..len]).expect("write the raw file");
            written += len as u64;
            unsynced += len as u64;
            if let Some(every) = fsync_every {
                if unsynced >= every {
                    file.sync_data().expect("fsync the raw file");
                    unsynced = 0;
                }
            }
        }
        if fsync_at_end {
            file.sync_all().expect("fsync the raw file");
        }
    })
}

/// The calling thread's time on a CPU and time spent runnable but waiting
/// for one, in nanoseconds (`/proc/thread-self/schedstat`), if the kernel
/// keeps them.
fn sched_times() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

#[derive(Default, Clone, Copy)]
struct Sched {
    on_cpu_ns: u64,
    run_delay_ns: u64,
}

thread_local! {
    /// What [`timed`] saw since [`repeat`] last reset it.
    static SCHED: Cell<Sched> = Cell::new(Sched::default());
    /// Where [`repeat`] records each sample's scheduling, one JSON object a line.
    static SCHED_LOG: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Times `work` on the wall clock, and notes how much of that time this
/// thread was on a CPU and how long it waited for one. On a shared machine
/// the wait separates "the code is slow" from "the code was descheduled".
fn timed(work: impl FnOnce()) -> Duration {
    let before = sched_times();
    let start = Instant::now();
    work();
    let elapsed = start.elapsed();
    if let (Some((cpu0, wait0)), Some((cpu1, wait1))) = (before, sched_times()) {
        SCHED.with(|s| {
            let mut sched = s.get();
            sched.on_cpu_ns += cpu1.saturating_sub(cpu0);
            sched.run_delay_ns += wait1.saturating_sub(wait0);
            s.set(sched);
        });
    }
    elapsed
}

/// One criterion sample of `iters` iterations of `one`, each of which
/// returns the time of its [`timed`] part; records the sample's scheduling.
fn repeat(name: &str, iters: u64, mut one: impl FnMut() -> Duration) -> Duration {
    SCHED.with(|s| s.set(Sched::default()));
    let total: Duration = (0..iters).map(|_| one()).sum();
    let sched = SCHED.with(Cell::get);
    SCHED_LOG.with(|log| {
        if let Some(file) = log.borrow_mut().as_mut() {
            let _ = writeln!(
                file,
                r#"{{"name":"{name}","iters":{iters},"wall_ns":{},"on_cpu_ns":{},"run_delay_ns":{}}}"#,
                total.as_nanos(),
                sched.on_cpu_ns,
                sched.run_delay_ns
            );
        }
    });
    total
}

fn raw_benches(group: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    group.throughput(Throughput::Bytes(s.bytes));
    let raw = s.raw_path();
    group.bench_function("raw_disk_write", |b| {
        b.iter_custom(|iters| {
            repeat("raw_disk_write", iters, || {
                raw_write(&raw, &s.chunk, s.bytes, None, true)
            })
        })
    });

    // The file just written (and fsynced) is in the page cache; make sure
    // it exists if this benchmark runs alone.
    if fs::metadata(&raw).map_or(true, |m| m.len() != s.bytes) {
        raw_write(&raw, &s.chunk, s.bytes, None, true);
    }
    group.bench_function("raw_read", |b| {
        let mut buf = vec![0u8; READ_CHUNK as usize];
        b.iter_custom(|iters| {
            repeat("raw_read", iters, || {
                let mut read = 0u64;
                let elapsed = timed(|| {
                    let mut file = File::open(&raw).expect("open the raw file");
                    loop {
                        let n = file.read(&mut buf).expect("read the raw file");
                        if n == 0 {
                            break;
                        }
                        black_box(&buf[..n]);
                        read += n as u64;
                    }
                });
                assert_eq!(read, s.bytes);
                elapsed
            })
        })
    });
}

fn append_benches(group: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    let (count, bytes) = s.batches();
    group.throughput(Throughput::Bytes(bytes));
    // How each benchmark makes its appends durable.
    #[derive(Clone, Copy)]
    enum Durability {
        None,
        InlineEvery(u64),
        GroupCommitEvery(u64),
    }
    for (name, durability) in [
        ("append_no_fsync", Durability::None),
        (
            "append_fsync_inline_every_mib",
            Durability::InlineEvery(FSYNC_EVERY),
        ),
        (
            "append_group_commit_every_mib",
            Durability::GroupCommitEvery(FSYNC_EVERY),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                repeat(name, iters, || {
                    let dir = s.temp_dir("append-");
                    let log = open_log(&dir.path().join("bench-0"));
                    sync_machine();
                    let elapsed = timed(|| match durability {
                        Durability::None => append_batches(&log, &s.batch, count, None),
                        Durability::InlineEvery(every) => {
                            append_batches(&log, &s.batch, count, Some(every))
                        }
                        Durability::GroupCommitEvery(every) => {
                            append_batches_group_commit(&log, &s.batch, count, every)
                        }
                    });
                    assert_eq!(log.size_bytes(), bytes);
                    elapsed
                })
            })
        });
    }
}

fn read_benches(group: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    let (count, bytes) = s.batches();
    group.throughput(Throughput::Bytes(bytes));
    // One log for both read benchmarks, written and flushed before timing so
    // that writeback does not compete with the reads. It stays in the page
    // cache (it was just written).
    let dir = s.temp_dir("read-");
    let log = open_log(&dir.path().join("bench-0"));
    append_batches(&log, &s.batch, count, None);
    log.flush().expect("flush");
    let end = log.log_end_offset();

    group.bench_function("read_copying", |b| {
        let mut out = Vec::with_capacity(2 * READ_CHUNK as usize);
        b.iter_custom(|iters| {
            repeat("read_copying", iters, || {
                let mut read = 0u64;
                let elapsed = timed(|| {
                    let mut offset = 0;
                    while offset < end {
                        out.clear();
                        let info = log
                            .read_into(offset, READ_CHUNK, end, &mut out)
                            .expect("read");
                        black_box(&out);
                        read += out.len() as u64;
                        offset = info.next_offset;
                    }
                });
                assert_eq!(read, bytes);
                elapsed
            })
        })
    });

    // Diagnostic: the same reads without the copy (what a `sendfile` fetch
    // pays before the kernel moves the bytes): locking, planning, and
    // scanning batch headers.
    group.bench_function("read_regions", |b| {
        b.iter_custom(|iters| {
            repeat("read_regions", iters, || {
                let mut read = 0u64;
                let elapsed = timed(|| {
                    let mut offset = 0;
                    while offset < end {
                        let info = log.read(offset, READ_CHUNK, end).expect("read");
                        read += info.bytes;
                        offset = black_box(info).next_offset;
                    }
                });
                assert_eq!(read, bytes);
                elapsed
            })
        })
    });
}

fn recovery_benches(group: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    let (count, bytes) = s.batches();
    group.throughput(Throughput::Bytes(bytes));
    // `recovery`: the log is written and dropped without a flush, so its
    // bytes are dirty in the page cache, as after a broker crash (not a
    // machine crash). `recovery_synced` (diagnostic) fsyncs the segment
    // files first, outside the timing, so that `Log::open` pays only for
    // the scan and CRC checks and not for the writeback of the data.
    for (name, presync) in [("recovery", false), ("recovery_synced", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                repeat(name, iters, || {
                    let dir = s.temp_dir("recovery-");
                    let log_dir = dir.path().join("bench-0");
                    let end = {
                        let log = open_log(&log_dir);
                        append_batches(&log, &s.batch, count, None);
                        log.log_end_offset()
                    };
                    if presync {
                        for entry in fs::read_dir(&log_dir).expect("list the log") {
                            let path = entry.expect("list the log").path();
                            File::open(&path)
                                .and_then(|f| f.sync_all())
                                .expect("fsync a segment");
                        }
                    }
                    let mut log = None;
                    let elapsed = timed(|| log = Some(open_log(&log_dir)));
                    let log = log.expect("opened");
                    assert_eq!(log.log_end_offset(), end);
                    assert_eq!(log.size_bytes(), bytes);
                    elapsed
                })
            })
        });
    }
}

/// Diagnostics for the appends: the same bytes written with plain `write`s
/// of one batch each, without and with an fsync every MiB.
fn raw_write_pattern_benches(group: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    let (_, bytes) = s.batches();
    group.throughput(Throughput::Bytes(bytes));
    let batch = &s.batch;
    for (name, fsync_every) in [
        ("raw_write_no_fsync", None),
        ("raw_write_fsync_every_mib", Some(FSYNC_EVERY)),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                repeat(name, iters, || {
                    let dir = s.temp_dir("raw-");
                    let path = dir.path().join("raw.bin");
                    raw_write(&path, batch, bytes, fsync_every, fsync_every.is_some())
                })
            })
        });
    }
}

fn storage(c: &mut Criterion) {
    let s = Setup::from_env();
    let mut group = c.benchmark_group("storage");
    // One pass over the whole size per sample; warm-up is a single pass.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    raw_benches(&mut group, &s);
    append_benches(&mut group, &s);
    read_benches(&mut group, &s);
    recovery_benches(&mut group, &s);
    raw_write_pattern_benches(&mut group, &s);
    group.finish();
    let _ = fs::remove_file(s.raw_path());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = storage
}
criterion_main!(benches);
