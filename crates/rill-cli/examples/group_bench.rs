//! Consumer-group benchmarks against any Kafka-compatible broker, through
//! librdkafka. `bench/groups.sh` builds and runs it against a fresh
//! `rill serve`; results are in `bench/README.md`.
//!
//! - `failover`: a group of two librdkafka members (threads here) and one
//!   `kcat -G` member process on a six-partition topic, records produced
//!   to every partition without pause. kcat is killed with SIGKILL; the
//!   time measured is from the kill to the first record of one of kcat's
//!   partitions processed by another member. kcat commits nothing, so its
//!   partitions are read again from the start by whoever takes them: the
//!   time is the failover, not a wait for new records. Each repetition
//!   uses a fresh topic and group.
//! - `commits`: `--consumers` librdkafka members, split over `--groups`
//!   groups (member i in group i mod groups), subscribed to one topic with
//!   as many partitions as consumers. Once every member holds partitions,
//!   each commits an offset of one of its partitions synchronously in a
//!   loop for `--seconds`: commits per second over all, and the latency of
//!   each commit (from the call to its result) in an HDR histogram.
//!
//! Not a test and not run by `cargo test`; an example so that it builds
//! with `cargo build --all-targets` and needs no flags on the binary.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long any one client request may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a group may take to have every member holding partitions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failover may take before the repetition counts as failed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);
/// Partitions of the failover topic.
const FAILOVER_PARTITIONS: i32 = 6;
/// The producer's pause between rounds of one record per partition.
const PRODUCE_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Parser)]
struct Cli {
    /// A broker to bootstrap from.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time from a member process's SIGKILL to its partitions being
    /// consumed elsewhere.
    Failover {
        /// kcat's path.
        #[arg(long, default_value = "kcat")]
        kcat: String,
        /// `session.timeout.ms` of every member.
        #[arg(long, default_value_t = 6000)]
        session_timeout_ms: u64,
        /// `heartbeat.interval.ms` of every member.
        #[arg(long, default_value_t = 1000)]
        heartbeat_interval_ms: u64,
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
    },
    /// OffsetCommit throughput and latency from many members committing
    /// synchronously.
    Commits {
        #[arg(long, default_value_t = 100)]
        consumers: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        BenchCommand::Failover {
            kcat,
            session_timeout_ms,
            heartbeat_interval_ms,
            repetitions,
        } => failover(
            &cli.bootstrap,
            &kcat,
            session_timeout_ms,
            heartbeat_interval_ms,
            repetitions,
        ),
        BenchCommand::Commits {
            consumers,
            groups,
            seconds,
        } => commits(&cli.bootstrap, consumers, groups, seconds),
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000");
    config
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(CLIENT_TIMEOUT));
    let results = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(admin.create_topics([&topic], &options))?;
    for result in results {
        if let Err((topic, code)) = result {
            bail!("CreateTopics {topic}: {code:?}");
        }
    }
    Ok(())
}

fn partitions_of(list: &TopicPartitionList) -> BTreeSet<i32> {
    list.elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

/// Polls until `check` returns `Some`, at most `timeout`.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |duration: Duration| format!("{:.2}", duration.as_secs_f64());
    format!(
        "min {} s, median {} s, max {} s",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    )
}

// ---------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------

/// A member polling in its own thread, noting when it first processed a
/// record of one of the `watched` partitions.
#[derive(Debug)]
struct WatchingMember {
    assignment: Arc<Mutex<BTreeSet<i32>>>,
    watched: Arc<Mutex<BTreeSet<i32>>>,
    first_watched: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WatchingMember {
    fn start(config: &ClientConfig, topic: &str) -> anyhow::Result<WatchingMember> {
        let consumer: BaseConsumer = config.create()?;
        consumer.subscribe(&[topic])?;
        let assignment = Arc::new(Mutex::new(BTreeSet::new()));
        let watched = Arc::new(Mutex::new(BTreeSet::new()));
        let first_watched = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (assignment, watched, first_watched, stop) = (
                Arc::clone(&assignment),
                Arc::clone(&watched),
                Arc::clone(&first_watched),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) {
                        let now = Instant::now();
                        if watched.lock().expect("lock").contains(&message.partition()) {
                            first_watched.lock().expect("lock").get_or_insert(now);
                        }
                    }
                    if let Ok(list) = consumer.assignment() {
                        *assignment.lock().expect("lock") = partitions_of(&list);
                    }
                }
            })
        };
        Ok(WatchingMember {
            assignment,
            watched,
            first_watched,
            stop,
            thread: Some(thread),
        })
    }

    fn assignment(&self) -> BTreeSet<i32> {
        self.assignment.lock().expect("lock").clone()
    }
}

impl Drop for WatchingMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Produces one record to every partition, then pauses, until stopped.
#[derive(Debug)]
struct SteadyProducer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SteadyProducer {
    fn start(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<SteadyProducer> {
        let producer: BaseProducer = client_config(bootstrap)
            .set("linger.ms", "1")
            .set("enable.idempotence", "false")
            .create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let topic = topic.to_string();
            thread::spawn(move || {
                let mut sequence = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let payload = sequence.to_string();
                    for partition in 0..partitions {
                        let record = BaseRecord::<(), str>::to(&topic)
                            .partition(partition)
                            .payload(payload.as_str());
                        // A full queue only means fewer records this round.
                        let _ = producer.send(record);
                    }
                    producer.poll(Duration::ZERO);
                    sequence += 1;
                    thread::sleep(PRODUCE_INTERVAL);
                }
                let _ = producer.flush(CLIENT_TIMEOUT);
            })
        };
        Ok(SteadyProducer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SteadyProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one failover took: to the survivors holding every partition, and
/// to the first record of the killed member's partitions processed.
#[derive(Debug, Clone, Copy)]
struct Failover {
    reassigned: Duration,
    first_record: Duration,
}

fn failover(
    bootstrap: &str,
    kcat: &str,
    session_timeout_ms: u64,
    heartbeat_interval_ms: u64,
    repetitions: usize,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for repetition in 0..repetitions {
        let stamp = format!("{session_timeout_ms}-{repetition}-{}", std::process::id());
        let topic = format!("failover-{stamp}");
        let group = format!("failover-group-{stamp}");
        let result = failover_once(
            bootstrap,
            kcat,
            &topic,
            &group,
            session_timeout_ms,
            heartbeat_interval_ms,
        )?;
        eprintln!(
            "failover {repetition}: session.timeout.ms {session_timeout_ms}: reassigned after \
             {:.3} s, first record of the killed member's partitions after {:.3} s",
            result.reassigned.as_secs_f64(),
            result.first_record.as_secs_f64()
        );
        results.push(result);
    }
    let mut first: Vec<Duration> = results.iter().map(|result| result.first_record).collect();
    let mut reassigned: Vec<Duration> = results.iter().map(|result| result.reassigned).collect();
    println!(
        "failover, session.timeout.ms {session_timeout_ms}, heartbeat.interval.ms \
         {heartbeat_interval_ms}, {repetitions} runs: SIGKILL to first record consumed \
         elsewhere: {}; SIGKILL to survivors holding every partition: {}",
        summary(&mut first),
        summary(&mut reassigned)
    );
    Ok(())
}

fn failover_once(
    bootstrap: &str,
    kcat: &str,
    topic: &str,
    group: &str,
    session_timeout_ms: u64,
    heartbeat_interval_ms: u64,
) -> anyhow::Result<Failover> {
    create_topic(bootstrap, topic, FAILOVER_PARTITIONS)?;
    let _producer = SteadyProducer::start(bootstrap, topic, FAILOVER_PARTITIONS)?;
    let mut config = client_config(bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat_interval_ms.to_string())
        .set("fetch.wait.max.ms", "100");
    let members = [
        WatchingMember::start(&config, topic)?,
        WatchingMember::start(&config, topic)?,
    ];
    let mut kcat = KillOnDrop(Some(
        Command::new(kcat)
            .args(["-b", bootstrap, "-G", group, "-q"])
            .args(["-X", &format!("session.timeout.ms={session_timeout_ms}")])
            .args([
                "-X",
                &format!("heartbeat.interval.ms={heartbeat_interval_ms}"),
            ])
            .args(["-X", "enable.auto.commit=false"])
            .args(["-X", "auto.offset.reset=earliest"])
            .arg(topic)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("run {kcat}"))?,
    ));

    // The three members settled: the two here hold four partitions between
    // them, kcat the other two.
    let observer: BaseConsumer = client_config(bootstrap).create()?;
    let kcat_partitions = wait_for(SETTLE_TIMEOUT, "three members settled", || {
        let listed = observer
            .fetch_group_list(Some(group), CLIENT_TIMEOUT)
            .ok()?;
        let info = listed.groups().iter().find(|info| info.name() == group)?;
        if info.state() != "Stable" || info.members().len() != 3 {
            return None;
        }
        let (a, b) = (members[0].assignment(), members[1].assignment());
        if a.is_empty() || b.is_empty() || !a.is_disjoint(&b) || a.len() + b.len() != 4 {
            return None;
        }
        let held: BTreeSet<i32> = a.union(&b).copied().collect();
        Some(
            (0..FAILOVER_PARTITIONS)
                .filter(|p| !held.contains(p))
                .collect::<BTreeSet<i32>>(),
        )
    })?;
    for member in &members {
        *member.watched.lock().expect("lock") = kcat_partitions.clone();
    }
    // Let kcat consume for a moment, as a member at work would be.
    thread::sleep(Duration::from_millis(500));

    let killed_at = Instant::now();
    let mut child = kcat.0.take().context("kcat is running")?;
    if let Some(status) = child.try_wait()? {
        bail!("kcat exited early: {status}");
    }
    child.kill()?;
    child.wait()?;

    let reassigned = wait_for(
        FAILOVER_TIMEOUT,
        "the survivors hold every partition",
        || {
            let (a, b) = (members[0].assignment(), members[1].assignment());
            let all = a.len() + b.len() == FAILOVER_PARTITIONS as usize && a.is_disjoint(&b);
            all.then(|| killed_at.elapsed())
        },
    )?;
    let first_record = wait_for(FAILOVER_TIMEOUT, "a record of kcat's partitions", || {
        members
            .iter()
            .filter_map(|member| *member.first_watched.lock().expect("lock"))
            .min()
    })?;
    Ok(Failover {
        reassigned,
        first_record: first_record.duration_since(killed_at),
    })
}

// ---------------------------------------------------------------------------
// Commit throughput
// ---------------------------------------------------------------------------

fn commits(bootstrap: &str, consumers: usize, groups: usize, seconds: u64) -> anyhow::Result<()> {
    if consumers == 0 || groups == 0 || groups > consumers {
        bail!("need 1 <= groups <= consumers");
    }
    let stamp = std::process::id();
    let topic = format!("commits-{consumers}-{groups}-{stamp}");
    let partitions = i32::try_from(consumers)?;
    create_topic(bootstrap, &topic, partitions)?;

    let members: Vec<BaseConsumer> = (0..consumers)
        .map(|i| {
            let consumer: BaseConsumer = client_config(bootstrap)
                .set("group.id", format!("commits-{stamp}-{}", i % groups))
                .set("client.id", format!("committer-{i}"))
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "30000")
                .create()?;
            consumer.subscribe(&[&topic])?;
            Ok(consumer)
        })
        .collect::<anyhow::Result<_>>()?;

    // Each member polls in its own thread; once all hold partitions, all
    // start committing together and stop together.
    let held = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(consumers + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<JoinHandle<anyhow::Result<Committed>>> = members
        .into_iter()
        .map(|consumer| {
            let (held, start, stop, topic) = (
                Arc::clone(&held),
                Arc::clone(&start),
                Arc::clone(&stop),
                topic.clone(),
            );
            thread::spawn(move || commit_loop(&consumer, &topic, &held, &start, &stop))
        })
        .collect();
    let settle_started = Instant::now();
    while held.load(Ordering::SeqCst) < consumers as u64 {
        if settle_started.elapsed() > SETTLE_TIMEOUT {
            stop.store(true, Ordering::SeqCst);
            bail!(
                "only {} of {consumers} members held partitions after {SETTLE_TIMEOUT:?}",
                held.load(Ordering::SeqCst)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let settled = settle_started.elapsed();
    start.wait();
    let began = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::SeqCst);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for thread in threads {
        let (histogram, errors) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a committer panicked"))??;
        latency.add(histogram)?;
        failed += errors;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let us = |quantile: f64| latency.value_at_quantile(quantile);
    println!(
        "commits: {consumers} consumers in {groups} group(s), {seconds} s: {} commits, \
         {:.0} commits/s, {failed} failed; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us \
         (members settled in {:.1} s)",
        latency.len(),
        latency.len() as f64 / elapsed,
        us(0.5),
        us(0.99),
        us(0.999),
        latency.max(),
        settled.as_secs_f64()
    );
    Ok(())
}

/// One member's result: the latencies of its successful commits (µs) and
/// the count of failed ones.
type Committed = (Histogram<u64>, u64);

/// One member: polls until it holds a partition, then (after the barrier)
/// commits ever larger offsets of its first partition until stopped.
fn commit_loop(
    consumer: &BaseConsumer,
    topic: &str,
    held: &AtomicU64,
    start: &Barrier,
    stop: &AtomicBool,
) -> anyhow::Result<Committed> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let partition = loop {
        consumer.poll(Duration::from_millis(50));
        if let Some(&partition) = partitions_of(&consumer.assignment()?).iter().next() {
            break partition;
        }
        if stop.load(Ordering::SeqCst) {
            return Ok((latency, 0));
        }
    };
    held.fetch_add(1, Ordering::SeqCst);
    // While the others settle this member must keep polling: a member that
    // stops serving its rebalance callbacks holds the group's rebalance up.
    let waiting = AtomicBool::new(true);
    thread::scope(|scope| {
        scope.spawn(|| {
            start.wait();
            waiting.store(false, Ordering::SeqCst);
        });
        while waiting.load(Ordering::SeqCst) {
            consumer.poll(Duration::from_millis(10));
        }
    });
    let mut failed = 0;
    let mut offset = 0;
    while !stop.load(Ordering::SeqCst) {
        consumer.poll(Duration::ZERO);
        offset += 1;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        let began = Instant::now();
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => latency.record(began.elapsed().as_micros().max(1) as u64)?,
            Err(error) => {
                if failed == 0 {
                    eprintln!("commit {topic}-{partition}: {error}");
                }
                failed += 1;
            }
        }
    }
    Ok((latency, failed))
}
