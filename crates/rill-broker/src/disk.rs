//! The threads that do the partitions' disk work, so that the async workers
//! do not wait on a disk.
//!
//! A [`DiskExecutor`] is a fixed set of threads, each with a bounded queue
//! of jobs. Every partition is given one thread of it for good, its shard
//! ([`DiskExecutor::next_shard`], round robin as partitions open), and all
//! its jobs run there, in the order they were queued. The broker has two:
//! one for follower appends, truncations, reads by time and, while the
//! disk pushes back ([`DiskPressure`]), client and coordinator appends
//! (`--io-threads`); one for fsyncs (`--flush-threads`). They are apart so
//! that a partition's next append never waits behind its last fsync: a producer keeps appending
//! while the batch before is being made durable, as it did when fsyncs ran
//! on tokio's blocking pool. Fsyncs of one partition queue on one thread,
//! so the first flushes everything appended so far and those queued behind
//! it find nothing left to do (group commit).
//!
//! Bounds: `threads` threads and `queued_jobs_max` waiting jobs per
//! thread. A caller whose shard's queue is full waits (asynchronously)
//! for room: a disk slower than its producers slows their partitions
//! down, not the broker's async workers. A caller that may not wait (a
//! coordinator under its lock) is refused instead ([`DiskError::Full`]).
//!
//! A job that panics fails only its own caller ([`DiskError::Failed`]);
//! the thread goes on with the next job.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// How many threads the broker's two executors have, and which appends
/// run on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskThreads {
    /// Appends, truncations, reads by time: `--io-threads` (Kafka's
    /// `num.io.threads`, 8).
    pub io: usize,
    /// Fsyncs: `--flush-threads`.
    pub flush: usize,
    /// Every client and coordinator append runs on its partition's I/O
    /// thread, as Kafka runs them on its request handler threads, and not
    /// only under [`DiskPressure`]: `--appends-on-io-threads`. For a
    /// machine whose thread switches are cheaper than this 2-core VM's.
    pub appends_on_io_threads: bool,
}

impl Default for DiskThreads {
    fn default() -> Self {
        Self {
            io: 8,
            flush: 8,
            appends_on_io_threads: false,
        }
    }
}

/// Jobs waiting per thread. A job holds at most one request's records for
/// one partition, and the requests read are bounded already
/// (`queued.max.request.bytes`); this bounds the jobs that hold none.
pub const QUEUED_JOBS_MAX: usize = 1024;

/// Whether this node's appends have been slow lately, which is how the
/// broker tells that its disk pushes back (page-cache writeback throttling
/// the writers, a segment roll on a busy disk). While it does, client and
/// coordinator appends go to their partitions' I/O threads; otherwise they
/// run where the request is handled, since every switch to another thread
/// and back costs a wake-up. Measured on this 2-core VM (bench/README.md): with
/// every append on the I/O threads, the RF 3 end-to-end p99 at 10,000
/// records/s went from about 4 ms to 10–60 ms.
#[derive(Debug)]
pub struct DiskPressure {
    started: Instant,
    /// Milliseconds after `started` until which appends go to the I/O
    /// threads.
    until_ms: AtomicU64,
    /// Client and coordinator appends sent to an I/O thread, for this
    /// reason or another (`rill_appends_on_io_threads_total`).
    appends_moved: AtomicU64,
}

impl DiskPressure {
    /// An append that takes this long is slow.
    pub const APPEND_SLOW: Duration = Duration::from_millis(10);
    /// How long after a slow append the others keep off the async workers.
    pub const HOLD: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            until_ms: AtomicU64::new(0),
            appends_moved: AtomicU64::new(0),
        }
    }

    /// Whether an append took long enough ago that appends should still
    /// go to the I/O threads.
    pub fn is_on(&self) -> bool {
        self.elapsed_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// Records how long an append took.
    pub fn observe(&self, took: Duration) {
        if took >= Self::APPEND_SLOW {
            let until = self.elapsed_ms() + Self::HOLD.as_millis() as u64;
            self.until_ms.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Counts an append sent to its partition's I/O thread.
    pub fn count_moved_append(&self) {
        self.appends_moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends sent to their I/O threads so far.
    pub fn appends_moved(&self) -> u64 {
        self.appends_moved.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for DiskPressure {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a job gave no result.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// The job panicked (a bug), or the executor is shutting down.
    #[error(
        "the partition's disk work failed (a broker bug: its log has the panic) or the broker \
         is shutting down; retry, and report it if it persists"
    )]
    Failed,
    /// The partition's queue was full and its caller could not wait (see
    /// [`DiskShard::try_submit`]): the disk is far behind.
    #[error("the partition's disk queue is full: its disk is far behind; retry after a backoff")]
    Full,
}

/// A fixed set of threads, each running its own queue of jobs in order.
#[derive(Debug)]
pub struct DiskExecutor {
    shards: Vec<DiskShard>,
    /// The shard the next partition gets.
    next: AtomicUsize,
}

/// One thread of a [`DiskExecutor`]: a partition keeps its shard, so its
/// jobs run one at a time, in the order queued.
#[derive(Debug, Clone)]
pub struct DiskShard {
    queue: mpsc::Sender<Job>,
}

impl DiskExecutor {
    /// Starts `threads` threads named `{name}-{i}`, each with room for
    /// `queued_jobs_max` waiting jobs. The threads end once every
    /// [`DiskShard`] handle is gone and their queues are empty.
    pub fn start(name: &str, threads: usize, queued_jobs_max: usize) -> std::io::Result<Self> {
        assert!(threads > 0);
        assert!(queued_jobs_max > 0);
        let mut shards = Vec::with_capacity(threads);
        for i in 0..threads {
            let (queue, mut jobs) = mpsc::channel::<Job>(queued_jobs_max);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Some(job) = jobs.blocking_recv() {
                        // A panicking job drops its answer's sender, which
                        // is how its caller learns; the shard goes on.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
            shards.push(DiskShard { queue });
        }
        Ok(Self {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    /// The shard for a partition being opened: round robin, so that a
    /// node's partitions spread evenly however few there are.
    pub fn next_shard(&self) -> DiskShard {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[i].clone()
    }
}

impl DiskShard {
    /// Runs `work` on this shard's thread, after every job queued before
    /// it, and returns its result. Waits for room when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DiskError> {
        self.submit(work).await?.await
    }

    /// Queues `work` (waiting for room when the queue is full) and returns
    /// its result to come. A caller with jobs for several partitions
    /// submits them all and then awaits them, so that they run at once on
    /// their shards.
    pub async fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<DiskJob<T>, DiskError> {
        let (job, result) = job(work);
        self.queue.send(job).await.map_err(|_| DiskError::Failed)?;
        Ok(result)
    }

    /// [`DiskShard::submit`] for a caller on a disk thread (not in async
    /// code), such as an append that queues its own flush: it blocks while
    /// the queue is full.
    pub fn submit_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<DiskJob<T>, DiskError> {
        let (job, result) = job(work);
        self.queue
            .blocking_send(job)
            .map_err(|_| DiskError::Failed)?;
        Ok(result)
    }

    /// [`DiskShard::submit`] for a caller that must not wait at all, such
    /// as one holding a lock that orders its jobs: a full queue refuses
    /// the job with [`DiskError::Full`].
    pub fn try_submit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<DiskJob<T>, DiskError> {
        let (job, result) = job(work);
        self.queue.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DiskError::Full,
            mpsc::error::TrySendError::Closed(_) => DiskError::Failed,
        })?;
        Ok(result)
    }
}

/// `work` as a job for a shard's thread, and its result to come.
fn job<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> (Job, DiskJob<T>) {
    let (answer, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(work());
    });
    (job, DiskJob(result))
}

/// The result of a submitted job, once it has run.
#[derive(Debug)]
pub struct DiskJob<T>(oneshot::Receiver<T>);

impl<T> std::future::Future for DiskJob<T> {
    type Output = Result<T, DiskError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.map_err(|_| DiskError::Failed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_shard_runs_its_jobs_on_its_thread_in_order() {
        let executor = DiskExecutor::start("test-io", 2, 64).unwrap();
        let shard = executor.next_shard();
        // Hold the thread so that every job below is queued before any
        // runs.
        let release = Arc::new(Barrier::new(2));
        let held = {
            let release = Arc::clone(&release);
            shard.submit(move || release.wait()).await.unwrap()
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = Vec::new();
        for i in 0..50 {
            let seen = Arc::clone(&seen);
            let job = shard
                .submit(move || {
                    let thread = std::thread::current().name().map(str::to_string);
                    seen.lock().unwrap().push((i, thread));
                    i * 2
                })
                .await
                .unwrap();
            jobs.push(job);
        }
        release.wait();
        held.await.unwrap();
        let mut results = Vec::new();
        for job in jobs {
            results.push(job.await);
        }
        assert_eq!(results, (0..50).map(|i| Ok(i * 2)).collect::<Vec<_>>());
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        assert!(seen.iter().all(|(_, t)| t.as_deref() == Some("test-io-0")));
    }

    #[tokio::test]
    async fn partitions_spread_round_robin_over_the_threads() {
        let executor = DiskExecutor::start("test-spread", 3, 1).unwrap();
        let mut names = Vec::new();
        for _ in 0..6 {
            let name = executor
                .next_shard()
                .run(|| std::thread::current().name().unwrap().to_string())
                .await
                .unwrap();
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "test-spread-0",
                "test-spread-1",
                "test-spread-2",
                "test-spread-0",
                "test-spread-1",
                "test-spread-2"
            ]
        );
    }

    #[test]
    fn a_slow_append_turns_the_pressure_on_for_a_while() {
        let pressure = DiskPressure::new();
        assert!(!pressure.is_on());
        pressure.observe(DiskPressure::APPEND_SLOW / 2);
        assert!(!pressure.is_on());
        pressure.observe(DiskPressure::APPEND_SLOW);
        assert!(pressure.is_on());
        // Rewound past the hold: off again.
        pressure
            .until_ms
            .store(pressure.elapsed_ms(), Ordering::Relaxed);
        assert!(!pressure.is_on());
    }

    #[tokio::test]
    async fn a_panicking_job_fails_only_its_caller() {
        let executor = DiskExecutor::start("test-panic", 1, 2).unwrap();
        let shard = executor.next_shard();
        let failed = shard.run(|| -> u32 { panic!("a bug in a disk job") }).await;
        assert_eq!(failed, Err(DiskError::Failed));
        assert_eq!(shard.run(|| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_full_queue_makes_its_callers_wait_without_blocking_the_runtime() {
        let executor = DiskExecutor::start("test-full", 1, 1).unwrap();
        let shard = executor.next_shard();
        // The thread blocks in the first job until released; one more job
        // fits in the queue; the third caller must wait for room.
        let release = Arc::new(Barrier::new(2));
        let blocked = {
            let release = Arc::clone(&release);
            let shard = shard.clone();
            tokio::spawn(async move { shard.run(move || release.wait()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = tokio::spawn({
            let shard = shard.clone();
            async move { shard.run(|| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut waiting = Box::pin(shard.run(|| 3));
        let early = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await;
        assert!(early.is_err(), "a job ran past a full queue");
        // A caller that cannot wait is refused instead.
        assert_eq!(shard.try_submit(|| 4).err(), Some(DiskError::Full));
        // The runtime was free all along: this timer fired.
        release.wait();
        assert!(blocked.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap(), Ok(2));
        assert_eq!(waiting.await, Ok(3));
    }
}
