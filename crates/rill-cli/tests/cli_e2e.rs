//! The `rill` client commands (topic, produce, consume, group, cluster,
//! completions) run as a user runs them, against a started broker; their
//! output is parsed and checked against what the broker then holds. Error
//! paths too: an unknown topic, a broker that is down, bad flags.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::output::{field, table};
use common::{poll_until, rill_binary, run_to_exit, wait_timeout, Broker, Finished};
use rustix::process::{kill_process, Pid, Signal};

/// How long one command may take against a running broker.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a group may take to settle (rill's first rebalance of an empty
/// group waits 3 s for more members).
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `rill ARGS` against `bootstrap` (through RILL_BOOTSTRAP, as a user would
/// set it), with `input` on standard input.
fn rill_at(bootstrap: &str, args: &[&str], input: &[u8]) -> Finished {
    let mut command = Command::new(rill_binary());
    command
        .args(args)
        .env("RILL_BOOTSTRAP", bootstrap)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run rill");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A separate writer, so a command that does not read its input cannot
    // block the test on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let finished = collect(child, COMMAND_TIMEOUT, args);
    let _ = writer.join();
    finished
}

fn rill(broker: &Broker, args: &[&str]) -> Finished {
    rill_at(&broker.bootstrap(), args, b"")
}

/// `rill ARGS`, which must succeed; its stdout.
fn ok(broker: &Broker, args: &[&str]) -> String {
    let finished = rill(broker, args);
    assert!(
        finished.status.success(),
        "rill {args:?} failed: {}",
        finished.stderr
    );
    finished.stdout
}

/// `rill ARGS`, which must fail with exit code `code` and one line on
/// stderr that starts with `rill: ` and contains `expected`.
fn fails(finished: &Finished, code: i32, expected: &str) {
    assert_eq!(
        finished.status.code(),
        Some(code),
        "exit code; stdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let error = lines
        .iter()
        .find(|line| line.starts_with("rill: "))
        .unwrap_or_else(|| panic!("no 'rill: ' line in stderr:\n{}", finished.stderr));
    assert!(
        error.contains(expected),
        "{error:?} does not contain {expected:?}"
    );
    assert!(
        !finished.stderr.contains("panicked") && !finished.stderr.contains("backtrace"),
        "a user error must not panic:\n{}",
        finished.stderr
    );
}

/// Waits for a spawned `rill` to exit (bounded) and collects its output.
fn collect(mut child: Child, timeout: Duration, args: &[&str]) -> Finished {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "rill {args:?} did not exit within {timeout:?}; stderr:\n{}",
            err.join().unwrap_or_default()
        );
    };
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `column` of each row, parsed as a number, summed.
fn sum(rows: &[BTreeMap<String, String>], column: &str) -> i64 {
    rows.iter()
        .map(|row| {
            row[column]
                .parse::<i64>()
                .unwrap_or_else(|_| panic!("{row:?}"))
        })
        .sum()
}

fn topic_names(broker: &Broker) -> Vec<String> {
    table(&ok(broker, &["topic", "list"]), "TOPIC")
        .into_iter()
        .map(|row| row["TOPIC"].clone())
        .collect()
}

#[test]
fn topic_create_list_describe_alter_delete() {
    let broker = Broker::start_new();
    let out = ok(
        &broker,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
            "--config",
            "max.message.bytes=2000000",
        ],
    );
    assert_eq!(out.trim(), "created topic orders");
    fails(
        &rill(&broker, &["topic", "create", "orders"]),
        1,
        "already exists",
    );
    ok(&broker, &["topic", "create", "orders", "--if-not-exists"]);
    // No partition count: the broker's default (1).
    ok(&broker, &["topic", "create", "plain"]);

    let list = table(&ok(&broker, &["topic", "list"]), "TOPIC");
    let orders = list
        .iter()
        .find(|row| row["TOPIC"] == "orders")
        .expect("orders listed");
    assert_eq!(orders["PARTITIONS"], "3");
    assert_eq!(orders["REPLICATION-FACTOR"], "1");
    let plain = list
        .iter()
        .find(|row| row["TOPIC"] == "plain")
        .expect("plain listed");
    assert_eq!(plain["PARTITIONS"], "1");

    let describe = ok(&broker, &["topic", "describe", "orders"]);
    assert_eq!(field(&describe, "topic"), "orders");
    assert_eq!(field(&describe, "partitions"), "3");
    assert_eq!(field(&describe, "replication factor"), "1");
    assert!(describe.contains("  retention.ms=3600000\n"), "{describe}");
    assert!(
        describe.contains("  max.message.bytes=2000000\n"),
        "{describe}"
    );
    assert!(
        !describe.contains("segment.bytes"),
        "defaults are not listed:\n{describe}"
    );
    let partitions = table(&describe, "PARTITION");
    assert_eq!(partitions.len(), 3);
    for (i, row) in partitions.iter().enumerate() {
        assert_eq!(row["PARTITION"], i.to_string());
        assert_eq!(row["LEADER"], "1");
        assert_eq!(row["REPLICAS"], "1");
        assert_eq!(row["ISR"], "1");
        assert_eq!(row["LOG-START"], "0");
        assert_eq!(row["LOG-END"], "0");
    }
    let plain = ok(&broker, &["topic", "describe", "plain"]);
    assert!(plain.contains("configs: (all defaults)"), "{plain}");

    let alter = ok(
        &broker,
        &[
            "topic",
            "alter",
            "orders",
            "--partitions",
            "5",
            "--config",
            "cleanup.policy=compact",
            "--delete-config",
            "retention.ms",
        ],
    );
    assert!(alter.contains("partitions: 3 -> 5"), "{alter}");
    let describe = ok(&broker, &["topic", "describe", "orders"]);
    assert_eq!(field(&describe, "partitions"), "5");
    assert_eq!(table(&describe, "PARTITION").len(), 5);
    assert!(
        describe.contains("  cleanup.policy=compact\n"),
        "{describe}"
    );
    assert!(
        describe.contains("  max.message.bytes=2000000\n"),
        "configs not named stay as they were:\n{describe}"
    );
    assert!(!describe.contains("retention.ms"), "{describe}");

    fails(
        &rill(&broker, &["topic", "alter", "orders", "--partitions", "2"]),
        1,
        "can be added, not removed",
    );
    fails(
        &rill(
            &broker,
            &["topic", "alter", "orders", "--config", "no.such.config=1"],
        ),
        1,
        "no.such.config",
    );
    fails(
        &rill(&broker, &["topic", "alter", "orders"]),
        1,
        "nothing to alter",
    );

    let out = ok(&broker, &["topic", "delete", "orders", "plain"]);
    assert!(out.contains("deleted topic orders"), "{out}");
    assert!(out.contains("deleted topic plain"), "{out}");
    let names = topic_names(&broker);
    assert!(!names.contains(&"orders".to_string()), "{names:?}");
    fails(
        &rill(&broker, &["topic", "delete", "orders"]),
        1,
        "topic 'orders' does not exist",
    );
    ok(&broker, &["topic", "delete", "orders", "--if-exists"]);
}

#[test]
fn unknown_topics_fail_clearly_and_are_not_created() {
    let broker = Broker::start_new();
    ok(&broker, &["topic", "create", "real"]);
    let expected = "topic 'ghost' does not exist";
    fails(&rill(&broker, &["topic", "describe", "ghost"]), 1, expected);
    fails(
        &rill(&broker, &["topic", "alter", "ghost", "--partitions", "4"]),
        1,
        expected,
    );
    fails(
        &rill_at(&broker.bootstrap(), &["produce", "ghost"], b"a\n"),
        1,
        expected,
    );
    fails(
        &rill(&broker, &["consume", "ghost", "--until-end"]),
        1,
        expected,
    );
    fails(
        &rill(
            &broker,
            &[
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "ghost",
                "--to-earliest",
            ],
        ),
        1,
        expected,
    );
    // A partition that does not exist is refused the same way.
    fails(
        &rill_at(
            &broker.bootstrap(),
            &["produce", "real", "--partition", "7"],
            b"a\n",
        ),
        1,
        "no partition 7",
    );
    fails(
        &rill(&broker, &["consume", "real", "--partition", "7"]),
        1,
        "no partition 7",
    );
    // Looking a topic up never creates it, though the broker auto-creates
    // topics for clients that ask.
    assert!(!topic_names(&broker).contains(&"ghost".to_string()));
}

/// One record of `--format '{partition}|{offset}|{timestamp}|{key}|{value}|{headers}'`.
#[derive(Debug, Clone, PartialEq)]
struct Printed {
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: String,
    value: String,
    headers: String,
}

const FORMAT: &str = "{partition}|{offset}|{timestamp}|{key}|{value}|{headers}";

fn printed(output: &str) -> Vec<Printed> {
    output
        .lines()
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            assert_eq!(cells.len(), 6, "{line:?}");
            Printed {
                partition: cells[0].parse().expect("partition"),
                offset: cells[1].parse().expect("offset"),
                timestamp: cells[2].parse().expect("timestamp"),
                key: cells[3].to_string(),
                value: cells[4].to_string(),
                headers: cells[5].to_string(),
            }
        })
        .collect()
}

#[test]
fn produce_lines_and_consume_them_back() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    ok(&broker, &["topic", "create", "events", "--partitions", "2"]);
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;

    // Three good lines and one without the separator, which fails alone.
    let produced = rill_at(
        &bootstrap,
        &[
            "produce",
            "events",
            "--key-separator",
            "::",
            "--header",
            "source=test",
            "--header",
            "run=1",
        ],
        b"user1::signed up\nuser2::logged in\nno separator here\nuser1::left\n",
    );
    fails(&produced, 1, "1 of 4 records failed");
    fails(&produced, 1, "line 3: no key separator '::'");
    assert!(
        produced
            .stderr
            .contains("produced 3 records (37 B) to events"),
        "summary line:\n{}",
        produced.stderr
    );

    let out = ok(
        &broker,
        &["consume", "events", "--until-end", "--format", FORMAT],
    );
    let mut records = printed(&out);
    assert_eq!(records.len(), 3, "{out}");
    records.sort_by_key(|r| (r.partition, r.offset));
    for record in &records {
        assert_eq!(record.headers, "source=test,run=1");
        assert!(record.timestamp >= before_ms - 60_000, "{record:?}");
    }
    let user1: Vec<&Printed> = records.iter().filter(|r| r.key == "user1").collect();
    assert_eq!(user1.len(), 2);
    assert_eq!(
        user1[0].partition, user1[1].partition,
        "one key, one partition"
    );
    assert_eq!(user1[0].value, "signed up");
    assert_eq!(user1[1].value, "left");
    assert!(user1[1].offset > user1[0].offset);

    // The log ends agree with what was printed.
    let describe = ok(&broker, &["topic", "describe", "events"]);
    assert_eq!(sum(&table(&describe, "PARTITION"), "LOG-END"), 3);

    // JSON: one object per line.
    let out = ok(
        &broker,
        &["consume", "events", "--until-end", "--format", "json"],
    );
    let objects: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
        .collect();
    assert_eq!(objects.len(), 3);
    let left = objects
        .iter()
        .find(|o| o["value"] == "left")
        .expect("the 'left' record");
    assert_eq!(left["key"], "user1");
    assert_eq!(left["topic"], "events");
    assert_eq!(left["partition"], user1[1].partition);
    assert_eq!(left["offset"], user1[1].offset);
    assert_eq!(left["headers"]["source"], "test");

    // Default format: the value alone.
    let p = user1[0].partition.to_string();
    let out = ok(
        &broker,
        &["consume", "events", "--partition", &p, "--until-end"],
    );
    let expected: Vec<&str> = records
        .iter()
        .filter(|r| r.partition == user1[0].partition)
        .map(|r| r.value.as_str())
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);

    // --count stops early; --from takes an offset, end, and times.
    let out = ok(
        &broker,
        &[
            "consume",
            "events",
            "--partition",
            &p,
            "--count",
            "1",
            "--format",
            FORMAT,
        ],
    );
    assert_eq!(printed(&out), vec![user1[0].clone()]);
    let from = user1[1].offset.to_string();
    let out = ok(
        &broker,
        &[
            "consume",
            "events",
            "--partition",
            &p,
            "--from",
            &from,
            "--until-end",
            "--format",
            FORMAT,
        ],
    );
    assert_eq!(printed(&out), vec![user1[1].clone()]);
    let out = ok(
        &broker,
        &["consume", "events", "--from", "end", "--until-end"],
    );
    assert_eq!(out, "");
    let out = ok(
        &broker,
        &[
            "consume",
            "events",
            "--from",
            "2999-01-01T00:00:00Z",
            "--until-end",
        ],
    );
    assert_eq!(out, "", "nothing at or after a future time");
    let out = ok(
        &broker,
        &["consume", "events", "--from", "@0", "--until-end"],
    );
    assert_eq!(out.lines().count(), 3);
}

#[test]
fn produce_a_file_with_partition_acks_and_compression() {
    let broker = Broker::start_new();
    ok(&broker, &["topic", "create", "bulk", "--partitions", "2"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("lines.txt");
    let lines: String = (0..2000).map(|i| format!("record {i}\n")).collect();
    std::fs::write(&file, &lines).expect("write the input file");
    let file = file.to_str().expect("utf-8 path");
    for (acks, compression) in [("1", "gzip"), ("all", "zstd"), ("0", "lz4")] {
        let produced = rill(
            &broker,
            &[
                "produce",
                "bulk",
                "--file",
                file,
                "--partition",
                "1",
                "--acks",
                acks,
                "--compression",
                compression,
            ],
        );
        assert!(produced.status.success(), "{}", produced.stderr);
        assert!(
            produced.stderr.contains("produced 2000 records"),
            "{}",
            produced.stderr
        );
    }
    let describe = ok(&broker, &["topic", "describe", "bulk"]);
    let partitions = table(&describe, "PARTITION");
    assert_eq!(partitions[0]["LOG-END"], "0");
    assert_eq!(partitions[1]["LOG-END"], "6000");
    let out = ok(
        &broker,
        &[
            "consume",
            "bulk",
            "--partition",
            "1",
            "--count",
            "3",
            "--from",
            "1999",
        ],
    );
    assert_eq!(out, "record 1999\nrecord 0\nrecord 1\n");

    fails(
        &rill(
            &broker,
            &["produce", "bulk", "--file", "/nonexistent/input"],
        ),
        1,
        "cannot open /nonexistent/input",
    );
}

/// `column` of the offsets table of `rill group describe`, by partition.
fn group_offsets(describe: &str) -> Vec<BTreeMap<String, String>> {
    table(describe, "TOPIC")
}

/// Starts `rill consume --group` as a long-running member.
fn spawn_member(broker: &Broker, topic: &str, group: &str) -> Child {
    Command::new(rill_binary())
        .args(["consume", topic, "--group", group, "--bootstrap"])
        .arg(broker.bootstrap())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rill consume")
}

#[test]
fn group_list_describe_reset_and_delete() {
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap();
    ok(&broker, &["topic", "create", "jobs", "--partitions", "2"]);
    let lines: String = (0..5).map(|i| format!("job {i}\n")).collect();
    for partition in ["0", "1"] {
        let produced = rill_at(
            &bootstrap,
            &["produce", "jobs", "--partition", partition],
            lines.as_bytes(),
        );
        assert!(produced.status.success(), "{}", produced.stderr);
    }

    // A member that reads four records commits exactly those.
    let out = ok(
        &broker,
        &["consume", "jobs", "--group", "workers", "--count", "4"],
    );
    assert_eq!(out.lines().count(), 4);
    let list = table(&ok(&broker, &["group", "list"]), "GROUP");
    let workers = list
        .iter()
        .find(|row| row["GROUP"] == "workers")
        .expect("the group is listed");
    assert_eq!(workers["STATE"], "Empty");
    assert_eq!(workers["MEMBERS"], "0");
    assert_eq!(workers["PROTOCOL-TYPE"], "consumer");
    let describe = ok(&broker, &["group", "describe", "workers"]);
    assert_eq!(field(&describe, "state"), "Empty");
    let offsets = group_offsets(&describe);
    let committed: i64 = offsets
        .iter()
        .filter(|row| row["COMMITTED"] != "-")
        .map(|row| row["COMMITTED"].parse::<i64>().expect("offset"))
        .sum();
    assert_eq!(committed, 4, "{describe}");

    // A second run goes on from the committed offsets: the other six.
    let out = ok(
        &broker,
        &["consume", "jobs", "--group", "workers", "--until-end"],
    );
    assert_eq!(out.lines().count(), 6, "{out}");
    let describe = ok(&broker, &["group", "describe", "workers"]);
    let offsets = group_offsets(&describe);
    assert_eq!(offsets.len(), 2, "{describe}");
    assert_eq!(sum(&offsets, "COMMITTED"), 10);
    assert_eq!(sum(&offsets, "LOG-END"), 10);
    assert_eq!(sum(&offsets, "LAG"), 0);

    // More records: lag per partition.
    let produced = rill_at(
        &bootstrap,
        &["produce", "jobs", "--partition", "0"],
        b"a\nb\nc\n",
    );
    assert!(produced.status.success(), "{}", produced.stderr);
    let offsets = group_offsets(&ok(&broker, &["group", "describe", "workers"]));
    assert_eq!(offsets[0]["PARTITION"], "0");
    let lag0: i64 = offsets[0]["LAG"].parse().expect("lag");
    assert_eq!(lag0, 3);
    assert_eq!(offsets[1]["LAG"], "0");

    // An active member: shown with its partitions; offsets cannot move.
    let member = spawn_member(&broker, "jobs", "workers");
    let describe = poll_until(GROUP_TIMEOUT, || {
        let describe = ok(&broker, &["group", "describe", "workers"]);
        (field(&describe, "state") == "Stable").then_some(describe)
    })
    .expect("the member joins within the timeout");
    assert_eq!(field(&describe, "members"), "1");
    let members = table(&describe, "MEMBER");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["ASSIGNMENT"], "jobs:0,1");
    assert_eq!(members[0]["CLIENT-ID"], "rill-cli");
    fails(
        &rill(
            &broker,
            &[
                "group",
                "reset-offsets",
                "workers",
                "--topic",
                "jobs",
                "--to-earliest",
            ],
        ),
        1,
        "is active",
    );
    fails(
        &rill(&broker, &["group", "delete", "workers"]),
        1,
        "active members",
    );
    // It reads the three new records and commits them (every second).
    poll_until(GROUP_TIMEOUT, || {
        let offsets = group_offsets(&ok(&broker, &["group", "describe", "workers"]));
        offsets.iter().all(|row| row["LAG"] == "0").then_some(())
    })
    .expect("the member catches up within the timeout");
    // SIGTERM: the member commits what it printed and leaves the group.
    kill_process(Pid::from_child(&member), Signal::TERM).expect("SIGTERM");
    let finished = collect(member, COMMAND_TIMEOUT, &["consume (member)"]);
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.stdout, "a\nb\nc\n");
    let describe = ok(&broker, &["group", "describe", "workers"]);
    assert_eq!(field(&describe, "state"), "Empty");
    assert_eq!(sum(&group_offsets(&describe), "LAG"), 0);

    // Reset: a dry run by default.
    let reset = rill(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
    );
    assert!(reset.status.success(), "{}", reset.stderr);
    assert!(reset.stderr.contains("dry run"), "{}", reset.stderr);
    let plan = table(&reset.stdout, "TOPIC");
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|row| row["NEW"] == "0"), "{}", reset.stdout);
    assert_eq!(sum(&plan, "CURRENT"), 13);
    assert_eq!(
        sum(
            &group_offsets(&ok(&broker, &["group", "describe", "workers"])),
            "COMMITTED"
        ),
        13,
        "a dry run changes nothing"
    );

    let committed = |broker: &Broker| -> Vec<i64> {
        group_offsets(&ok(broker, &["group", "describe", "workers"]))
            .iter()
            .map(|row| row["COMMITTED"].parse().expect("committed offset"))
            .collect()
    };
    let ends: Vec<i64> = group_offsets(&ok(&broker, &["group", "describe", "workers"]))
        .iter()
        .map(|row| row["LOG-END"].parse().expect("log end"))
        .collect();
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), vec![0, 0]);
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--all-topics",
            "--shift-by",
            "2",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), vec![2, 2]);
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--all-topics",
            "--shift-by",
            "-1",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), vec![1, 1]);
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--partition",
            "1",
            "--to-offset",
            "1000",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), vec![1, ends[1]], "kept within the log");
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-latest",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), ends);
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
            "--execute",
        ],
    );
    assert_eq!(committed(&broker), vec![0, 0], "every record is after 2000");

    // A member with --from starts there, whatever the group committed.
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-latest",
            "--execute",
        ],
    );
    let out = ok(
        &broker,
        &[
            "consume",
            "jobs",
            "--group",
            "workers",
            "--from",
            "beginning",
            "--until-end",
        ],
    );
    assert_eq!(out.lines().count(), 13, "{out}");

    // Deleting one topic's offsets, then the group.
    let out = ok(&broker, &["group", "delete", "workers", "--topic", "jobs"]);
    assert!(out.contains("deleted the committed offsets"), "{out}");
    let describe = rill(&broker, &["group", "describe", "workers"]);
    if describe.status.success() {
        assert!(
            group_offsets(&describe.stdout).is_empty(),
            "{}",
            describe.stdout
        );
    }
    fails(
        &rill(&broker, &["group", "delete", "workers", "--topic", "jobs"]),
        1,
        "no committed offsets for topic 'jobs'",
    );
    // A group with offsets again, deleted whole.
    ok(
        &broker,
        &["consume", "jobs", "--group", "workers", "--count", "1"],
    );
    let out = ok(&broker, &["group", "delete", "workers"]);
    assert_eq!(out.trim(), "deleted group workers");
    fails(
        &rill(&broker, &["group", "describe", "workers"]),
        1,
        "group 'workers' does not exist",
    );
    fails(
        &rill(&broker, &["group", "delete", "workers"]),
        1,
        "group 'workers' does not exist",
    );
}

/// `topic describe`, `group reset-offsets` and `group describe` on a topic
/// of 30,000 partitions: watermarks come from one ListOffsets per leader
/// (librdkafka's client-side lookups took time quadratic in partitions:
/// 15 s here, 170 s at 100,000), and a reset commits in requests small
/// enough for `__consumer_offsets` (one request for all of them is a
/// 1.3 MB batch, above its max.message.bytes).
#[test]
fn topic_and_group_commands_scale_to_many_partitions() {
    let mut broker = Broker::start_new();
    let partitions = 30_000;
    ok(
        &broker,
        &[
            "topic",
            "create",
            "wide",
            "--partitions",
            &partitions.to_string(),
        ],
    );
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = ok(&broker, args);
        (out, started.elapsed())
    };
    // Generous limits: each takes well under a second on a small machine.
    let limit = Duration::from_secs(5);
    let (describe, took) = timed(&["topic", "describe", "wide"]);
    assert!(took < limit, "topic describe took {took:?}");
    let rows = table(&describe, "PARTITION");
    assert_eq!(rows.len(), partitions);
    assert!(
        rows.iter().all(|row| row["LOG-END"] == "0"),
        "every log end is known"
    );
    let (_, took) = timed(&[
        "group",
        "reset-offsets",
        "wide-readers",
        "--topic",
        "wide",
        "--to-earliest",
        "--execute",
    ]);
    assert!(took < 4 * limit, "group reset-offsets took {took:?}");
    let (described, took) = timed(&["group", "describe", "wide-readers"]);
    assert!(took < limit, "group describe took {took:?}");
    assert_eq!(group_offsets(&described).len(), partitions);
    // A clean stop flushes and closes 30,000 logs; nothing here needs it.
    broker.kill();
}

#[test]
fn cluster_describe_shows_nodes_controller_and_versions() {
    let broker = Broker::start_new();
    let out = ok(&broker, &["cluster", "describe"]);
    let cluster_id = field(&out, "cluster id");
    assert!(cluster_id.len() >= 16, "{out}");
    assert_eq!(field(&out, "controller"), "1");
    let brokers = table(&out, "BROKER");
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0]["BROKER"], "1");
    assert_eq!(brokers[0]["HOST"], "127.0.0.1");
    assert_eq!(brokers[0]["PORT"], broker.ports().kafka.port().to_string());
    assert_eq!(brokers[0]["STATE"], "unfenced");
    // The single node is the quorum's only voter, and leads it.
    assert!(out.contains("controller quorum: leader 1,"), "{out}");
    let quorum = table(&out, "NODE");
    assert_eq!(quorum.len(), 1, "{out}");
    assert_eq!(quorum[0]["ROLE"], "leader");
    assert_eq!(quorum[0]["LAG"], "0");
    let apis = table(&out, "API");
    let api = |name: &str| {
        apis.iter()
            .find(|row| row["API"] == name)
            .unwrap_or_else(|| panic!("{name} missing from:\n{out}"))
    };
    assert_eq!(api("ApiVersions")["KEY"], "18");
    assert_eq!(api("ApiVersions")["MIN"], "0");
    assert_eq!(api("Produce")["KEY"], "0");
    // As crates/rill-protocol/src/versions.rs advertises it.
    assert_eq!(api("Fetch")["MAX"], "17");
    assert_eq!(api("DescribeTopicPartitions")["KEY"], "75");
    // The cluster id is the one in meta.properties.
    let meta = std::fs::read_to_string(broker.data_dir().join("meta.properties"))
        .expect("meta.properties");
    assert!(meta.contains(&format!("cluster.id={cluster_id}")), "{meta}");
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let mut command = Command::new(rill_binary());
        command.args(["completions", shell]);
        let finished = run_to_exit(command, COMMAND_TIMEOUT);
        assert!(finished.status.success(), "{shell}: {}", finished.stderr);
        for word in ["reset-offsets", "bootstrap", "until-end"] {
            assert!(
                finished.stdout.contains(word),
                "{shell} completions lack {word}"
            );
        }
    }
    let mut command = Command::new(rill_binary());
    command.args(["completions", "cmd.exe"]);
    fails(
        &run_to_exit(command, COMMAND_TIMEOUT),
        2,
        "invalid value 'cmd.exe'",
    );
}

/// A loopback address with nothing listening on it.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

#[test]
fn every_command_fails_fast_when_the_broker_is_down() {
    let dead = dead_address();
    let commands: &[&[&str]] = &[
        &["topic", "create", "t"],
        &["topic", "list"],
        &["topic", "describe", "t"],
        &["topic", "alter", "t", "--config", "retention.ms=1"],
        &["topic", "delete", "t"],
        &["produce", "t"],
        &["consume", "t"],
        &["group", "list"],
        &["group", "describe", "g"],
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ],
        &["group", "delete", "g"],
        &["group", "delete", "g", "--topic", "t"],
        &["txn", "list"],
        &["txn", "describe", "x"],
        &[
            "txn",
            "describe-producers",
            "--topic",
            "t",
            "--partition",
            "0",
        ],
        &[
            "txn",
            "abort",
            "--topic",
            "t",
            "--partition",
            "0",
            "--producer-id",
            "1",
        ],
        &["cluster", "describe"],
    ];
    for args in commands {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--timeout", "2s"]);
        let started = Instant::now();
        let finished = rill_at(&dead, &all, b"a\n");
        let took = started.elapsed();
        fails(&finished, 1, &dead);
        assert_eq!(
            finished.stderr.lines().count(),
            1,
            "{args:?}: one line:\n{}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains("refused"),
            "{args:?} says why: {}",
            finished.stderr
        );
        // The timeout bounds the wait (with room for a slow machine).
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let dead = dead_address();
    let cases: &[(&[&str], &str)] = &[
        (
            &["topic", "list", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (&["topic", "create"], "<TOPIC>"),
        (
            &["topic", "create", "t", "--partitions", "0"],
            "--partitions",
        ),
        (
            &["topic", "create", "t", "--config", "novalue"],
            "not key=value",
        ),
        (&["produce", "t", "--acks", "2"], "--acks"),
        (
            &["produce", "t", "--compression", "brotli"],
            "--compression",
        ),
        (&["produce", "t", "--key-separator", ""], "--key-separator"),
        (&["consume", "t", "--from", "yesterday"], "--from"),
        (
            &["consume", "t", "--format", "{nope}"],
            "unknown field {nope}",
        ),
        (
            &["consume", "t", "--group", "g", "--partition", "0"],
            "cannot be used with",
        ),
        (&["consume", "t", "--count", "0"], "--count"),
        (
            &["group", "reset-offsets", "g", "--topic", "t"],
            "--to-earliest",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest",
            ],
            "cannot be used with",
        ),
        (&["group", "reset-offsets", "g", "--to-earliest"], "--topic"),
        (
            &[
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-datetime",
                "noon",
            ],
            "RFC 3339",
        ),
        (&["cluster", "describe", "--timeout", "soon"], "--timeout"),
    ];
    for (args, expected) in cases {
        let finished = rill_at(&dead, args, b"");
        fails(&finished, 2, expected);
        assert_eq!(
            finished.stderr.lines().count(),
            1,
            "{args:?}: {}",
            finished.stderr
        );
    }
}

#[test]
fn a_broker_that_never_answers_times_out() {
    // The kernel completes connections to a listening socket that nobody
    // accepts, so clients connect and then wait for answers that never come.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("local addr").to_string();
    let commands: &[&[&str]] = &[
        &["topic", "list"],
        &["topic", "alter", "t", "--config", "retention.ms=1"],
        &["consume", "t"],
        &["group", "describe", "g"],
        &["group", "delete", "g", "--topic", "t"],
        &["cluster", "describe"],
    ];
    for args in commands {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--timeout", "1s"]);
        let started = Instant::now();
        let finished = rill_at(&addr, &all, b"");
        let took = started.elapsed();
        fails(&finished, 1, &addr);
        assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
        assert!(
            took >= Duration::from_millis(900),
            "{args:?} waited {took:?}"
        );
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }
    drop(silent);
}
