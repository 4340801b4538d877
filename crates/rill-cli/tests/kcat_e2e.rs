//! End to end with kcat, a command-line client built on an older librdkafka
//! (2.0 in Debian 12) than the one the `rdkafka` tests link.
//!
//! kcat must be on PATH (`apt-get install kcat`; `test.sh` installs it). If
//! it is not, the test fails, unless `RILL_SKIP_KCAT=1` says to skip it.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_to_exit, wait_timeout, Broker};

/// How long one kcat run may take.
const KCAT_TIMEOUT: Duration = Duration::from_secs(30);

/// kcat's path, or `None` if the test is to be skipped.
fn kcat() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kcat"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var("RILL_SKIP_KCAT").as_deref() == Ok("1") => {
            eprintln!("kcat is not on PATH; skipped because RILL_SKIP_KCAT=1");
            None
        }
        None => panic!(
            "kcat is not on PATH: install it (`apt-get install -y kcat`) or set \
             RILL_SKIP_KCAT=1 to skip this test"
        ),
    }
}

fn kcat_command(kcat: &PathBuf, broker: &Broker) -> Command {
    let mut command = Command::new(kcat);
    command.arg("-b").arg(broker.bootstrap());
    command
}

/// Runs `kcat -P` with `input` on stdin.
fn produce(kcat: &PathBuf, broker: &Broker, args: &[&str], input: &str) {
    let mut command = kcat_command(kcat, broker);
    command
        .arg("-P")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run kcat -P");
    {
        let mut stdin = child.stdin.take().expect("kcat stdin");
        stdin.write_all(input.as_bytes()).expect("write to kcat");
        // Dropping stdin gives kcat its EOF: it flushes and exits.
    }
    let status = wait_timeout(&mut child, KCAT_TIMEOUT);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("kcat -P {args:?} did not exit within {KCAT_TIMEOUT:?}");
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(
        status.success(),
        "kcat -P {args:?} exited with {status}; stderr:\n{stderr}\nbroker stderr:\n{}",
        broker.stderr_tail()
    );
}

/// Runs `kcat -C ... -e` from the beginning and returns what it printed.
fn consume(kcat: &PathBuf, broker: &Broker, args: &[&str]) -> String {
    let mut command = kcat_command(kcat, broker);
    command
        .args(["-C", "-e", "-o", "beginning"])
        .args(args)
        .stdin(Stdio::null());
    let finished = run_to_exit(command, KCAT_TIMEOUT);
    assert!(
        finished.status.success(),
        "kcat -C {args:?} exited with {}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    finished.stdout
}

#[test]
fn kcat_produces_consumes_and_lists() {
    let Some(kcat) = kcat() else { return };
    let broker = Broker::start_new();

    // Plain lines, to an auto-created topic, with every codec kcat has.
    let topic = "kcat-lines";
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..50).map(|i| format!("{codec} line {i}")).collect();
        let mut input = lines.join("\n");
        input.push('\n');
        produce(&kcat, &broker, &["-t", topic, "-z", codec], &input);
        expected.extend(lines);
    }
    let output = consume(&kcat, &broker, &["-t", topic]);
    let read: Vec<&str> = output.lines().collect();
    assert_eq!(read, expected, "kcat read back what kcat wrote");

    // Keyed records (`-K:` splits each line at the first ':'), read back
    // with key, partition and offset.
    let keyed = "kcat-keyed";
    let input = "alpha:1\nbeta:2\nalpha:3\ngamma:4\n";
    produce(&kcat, &broker, &["-t", keyed, "-K:"], input);
    let output = consume(&kcat, &broker, &["-t", keyed, "-f", "%k=%s@%p/%o\n"]);
    let read: Vec<&str> = output.lines().collect();
    assert_eq!(
        read,
        ["alpha=1@0/0", "beta=2@0/1", "alpha=3@0/2", "gamma=4@0/3"],
        "one partition (num.partitions 1), offsets in order"
    );

    // Metadata listing: the one broker and both topics.
    let mut list = kcat_command(&kcat, &broker);
    list.arg("-L");
    let finished = run_to_exit(list, KCAT_TIMEOUT);
    assert!(
        finished.status.success(),
        "kcat -L exited with {}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    let listing = finished.stdout;
    assert!(listing.contains(" 1 brokers:"), "kcat -L:\n{listing}");
    assert!(
        listing.contains(&format!("broker 1 at {}", broker.bootstrap())),
        "kcat -L:\n{listing}"
    );
    for name in [topic, keyed] {
        assert!(
            listing.contains(&format!("topic \"{name}\" with 1 partitions:")),
            "kcat -L does not list {name}:\n{listing}"
        );
    }
    assert!(
        listing.contains("partition 0, leader 1, replicas: 1, isrs: 1"),
        "kcat -L:\n{listing}"
    );
}
