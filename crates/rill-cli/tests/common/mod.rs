//! A real `rill serve` process for end-to-end tests.
//!
//! [`Broker`] starts the binary cargo built for this test run in a fresh
//! data dir on free loopback ports, waits for its ready line, and stops it
//! when dropped. Tests drive it with real clients (librdkafka through
//! `rdkafka`, kcat, raw sockets), so what they check is what a user sees.
//!
//! Every wait here is bounded: a broker that does not come up, or does not
//! stop, fails the test with its stderr rather than hanging the suite.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod cluster;
pub mod output;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

/// How long a broker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP request to the broker may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting loop looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many times a start is retried when a picked port was taken by someone
/// else between picking and binding.
const START_ATTEMPTS_MAX: usize = 3;
/// How many of the broker's stderr lines a failing test prints.
const STDERR_TAIL_LINES: usize = 60;

/// The three listeners of one node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub kafka: SocketAddr,
    pub controller: SocketAddr,
    pub http: SocketAddr,
}

impl Ports {
    /// Three distinct free ports on 127.0.0.1. The listeners are held until
    /// all three are picked, so the kernel cannot hand out one twice.
    pub fn pick() -> Ports {
        Ports::pick_many(1)[0]
    }

    /// The ports of `n` nodes, all distinct: every listener is held until
    /// all are picked.
    pub fn pick_many(n: usize) -> Vec<Ports> {
        let listeners: Vec<TcpListener> = (0..3 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let addr = |i: usize| listeners[i].local_addr().expect("local addr");
        (0..n)
            .map(|node| Ports {
                kafka: addr(3 * node),
                controller: addr(3 * node + 1),
                http: addr(3 * node + 2),
            })
            .collect()
    }
}

/// A running (or stopped, between [`Broker::kill`] and [`Broker::start`])
/// `rill serve` process with its own data dir.
#[derive(Debug)]
pub struct Broker {
    // Dropped after the process is stopped (see `Drop`), so the broker never
    // sees its data dir vanish under it.
    dir: TempDir,
    ports: Ports,
    child: Option<Child>,
    /// Every line the broker wrote to stderr, across restarts.
    stderr: Arc<Mutex<Vec<String>>>,
    /// Flags added to `rill serve` on every start, restarts included.
    extra_args: Vec<String>,
}

impl Broker {
    /// Starts a broker in a new temporary data dir and waits until it is ready.
    pub fn start_new() -> Broker {
        Broker::start_new_with_args(&[])
    }

    /// [`Broker::start_new`] with more `rill serve` flags (for example
    /// `["--group-initial-rebalance-delay-ms", "100"]`), which every later
    /// [`Broker::start`] passes again.
    pub fn start_new_with_args(extra_args: &[&str]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("rill-e2e-")
            .tempdir()
            .expect("create a temporary dir");
        Broker::start_new_in_dir(dir, extra_args)
    }

    /// [`Broker::start_new_with_args`] with the data dir in `parent` (for
    /// example a small filesystem the test mounted).
    pub fn start_new_in(parent: &Path, extra_args: &[&str]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("rill-e2e-")
            .tempdir_in(parent)
            .expect("create a temporary dir");
        Broker::start_new_in_dir(dir, extra_args)
    }

    fn start_new_in_dir(dir: TempDir, extra_args: &[&str]) -> Broker {
        let mut broker = Broker {
            dir,
            ports: Ports::pick(),
            child: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match broker.try_start() {
                Ok(()) => return broker,
                // Another test may have taken a picked port in between
                // picking and binding; anything else is a real failure.
                Err(error) if error.contains("in use") && attempts < START_ATTEMPTS_MAX => {
                    broker.ports = Ports::pick();
                    broker.stderr.lock().expect("stderr lock").clear();
                }
                Err(error) => panic!("rill did not start: {error}"),
            }
        }
    }

    /// The address to give clients as `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.ports.kafka.to_string()
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every line the broker has written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker is not running").id()
    }

    /// The running broker's memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }

    /// Starts the broker again on the same data dir and ports (after
    /// [`Broker::kill`] or [`Broker::stop`]) and waits until it is ready.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        if let Err(error) = self.try_start() {
            panic!("rill did not restart: {error}");
        }
    }

    /// Stops the broker with SIGTERM and checks that it exits with status 0
    /// within [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "rill exited with {status} after SIGTERM; stderr:\n{}",
            self.stderr_tail()
        );
    }

    /// Stops the broker with SIGTERM and returns its exit status, which must
    /// come within [`STOP_TIMEOUT`] (for a test where a clean stop may fail).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker is not running");
        let pid = Pid::from_child(&child);
        kill_process(pid, Signal::TERM).expect("send SIGTERM");
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rill did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// A clean restart: SIGTERM, exit 0, start again on the same dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Kills the broker with SIGKILL, as a crash or power cut would, and
    /// reaps it. [`Broker::start`] brings it back.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        child.kill().expect("send SIGKILL");
        child.wait().expect("reap the killed broker");
    }

    /// `GET path` on the HTTP port: the status code and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.ports.http).expect("connect to the HTTP port");
        stream
            .set_read_timeout(Some(HTTP_TIMEOUT))
            .expect("set read timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the HTTP response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The last lines of the broker's stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr_lines();
        let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
        lines[from..].join("\n")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut command = serve_command(self.dir.path(), &self.ports);
        command.args(&self.extra_args);
        let (child, line) = spawn_serve(command, &self.stderr)?.wait_ready(READY_TIMEOUT)?;
        let expected = format!("kafka={}", self.ports.kafka);
        assert!(
            line.contains(&expected),
            "ready line {line:?} does not name {expected}"
        );
        self.child = Some(child);
        // Ready means serving: the health check says so too.
        let (status, _) = self.http_get("/health");
        assert_eq!(status, 200, "GET /health right after the ready line");
        Ok(())
    }
}

/// A `rill serve` process started but not yet known to be ready.
pub struct Starting {
    child: Child,
    ready_rx: mpsc::Receiver<String>,
    stderr_reader: thread::JoinHandle<()>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Spawns `command` (a `rill serve`), collecting its stderr lines into
/// `stderr` and watching its stdout for the ready line.
pub fn spawn_serve(
    mut command: Command,
    stderr_lines: &Arc<Mutex<Vec<String>>>,
) -> Result<Starting, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", rill_binary().display()))?;

    let stderr = child.stderr.take().expect("piped stderr");
    let lines = Arc::clone(stderr_lines);
    let stderr_reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.lock().expect("stderr lock").push(line);
        }
    });

    // The ready line comes on stdout; a reader thread hands it over so
    // that the wait for it can be bounded.
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("rill ready:") {
                let _ = ready_tx.send(line.trim_end().to_string());
            }
            line.clear();
        }
        // Keep draining until the process closes stdout.
        let _ = reader.read_to_end(&mut Vec::new());
    });
    Ok(Starting {
        child,
        ready_rx,
        stderr_reader,
        stderr: Arc::clone(stderr_lines),
    })
}

impl Starting {
    /// Kills the process (SIGKILL) and reaps it: for a start abandoned
    /// because another failed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the ready line; returns the process and the line, or why
    /// it did not come (the process is then gone).
    pub fn wait_ready(self, timeout: Duration) -> Result<(Child, String), String> {
        let Starting {
            mut child,
            ready_rx,
            stderr_reader,
            stderr,
        } = self;
        let tail = |stderr: &Arc<Mutex<Vec<String>>>| {
            let lines = stderr.lock().expect("stderr lock");
            let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
            lines[from..].join("\n")
        };
        let deadline = Instant::now() + timeout;
        loop {
            match ready_rx.recv_timeout(POLL_INTERVAL) {
                Ok(line) => return Ok((child, line)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without a ready line: the process is
                    // exiting; give stderr a moment to be read.
                }
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                // The process is gone, so its stderr is at its end.
                let _ = stderr_reader.join();
                return Err(format!(
                    "rill exited with {status} before it was ready; stderr:\n{}",
                    tail(&stderr)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "rill was not ready within {timeout:?}; stderr:\n{}",
                    tail(&stderr)
                ));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::TERM);
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- rill stderr (last {STDERR_TAIL_LINES} lines) ---\n{}\n---",
                self.stderr_tail()
            );
        }
    }
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now, in bytes.
    pub rss: u64,
    /// `VmHWM`: the most ever resident, in bytes.
    pub peak: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|error| panic!("cannot read /proc/{pid}/status: {error}"));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}

/// Raises this process's open-files soft limit to its hard limit, for
/// tests that open thousands of connections. Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The `rill` binary cargo built for these tests.
pub fn rill_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rill"))
}

/// `rill serve` on the given dir and ports, not yet spawned.
pub fn serve_command(data_dir: &Path, ports: &Ports) -> Command {
    let mut command = Command::new(rill_binary());
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--kafka-addr")
        .arg(ports.kafka.to_string())
        .arg("--controller-addr")
        .arg(ports.controller.to_string())
        .arg("--http-addr")
        .arg(ports.http.to_string())
        .stdin(Stdio::null())
        // The tests read rill's own default log level; a RUST_LOG of the
        // caller's must not change what they see.
        .env_remove("RUST_LOG");
    command
}

/// What a process that ran to its end left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command that is expected to exit by itself, killing it if it has
/// not within `timeout`.
pub fn run_to_exit(mut command: Command, timeout: Duration) -> Finished {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not exit within {timeout:?}; stderr:\n{}",
                command.get_program(),
                err.join().unwrap_or_default()
            );
        }
    };
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Waits for a child to exit, at most `timeout`. `None` if it has not.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `check` until it returns `Some`, at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}
