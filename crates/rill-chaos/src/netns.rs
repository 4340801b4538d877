//! The private network namespace a run's cluster lives in when
//! `rill-chaos` runs as root, and the nftables rules that partition it.
//!
//! The namespace is `rill-chaos-<pid>`, made with `ip netns add`; only its
//! loopback is up. Node `i` listens on `127.0.0.(10 + i)` and runs as its
//! own user, uid `40000 + i`. Why the user: every connection a node opens
//! leaves from `127.0.0.1` (rill does not bind its outgoing sockets), so an
//! address alone cannot tell which node sent a packet. A NAT rule keyed on
//! the sending socket's uid (`meta skuid`) rewrites the source of every
//! connection a node opens to that node's address, so both directions of
//! every node-to-node connection carry the two nodes' addresses, and a
//! partition is a list of `ip saddr A ip daddr B drop` rules. Clients (this
//! process, uid 0) keep `127.0.0.1`: they are never cut off.
//!
//! The drop rules sit at two hooks, because each direction of a
//! connection shows the nodes' addresses at a different point:
//! - packets of the side that opened the connection leave from `127.0.0.1`
//!   and get the node's address in `postrouting` (source NAT, priority
//!   100), so they are matched after it (priority 200);
//! - packets of the side that accepted it are addressed to the opener's
//!   node address until the NAT's reverse mapping rewrites it in `output`
//!   (priority -100), so they are matched before it (priority -150).
//!
//! A fault is the table `inet rill_chaos`, loaded atomically (`nft -f -`);
//! healing deletes it. The source NAT is the table `ip rill_chaos_nat`,
//! loaded before any node starts (NAT is decided on a connection's first
//! packet) and kept for the run.
//!
//! **Invariant:** nothing here changes the host's network. Every `ip` and
//! `nft` command runs inside the namespace (`ip netns exec NAME`), except
//! `ip netns add` and `ip netns del`, which make and remove it.
//!
//! Removal: [`Netns`]'s `Drop` (a failed or finished run, a panic of the
//! main thread), [`remove_current`] (an interrupt whose run did not stop in
//! time), and [`Netns::create`]'s sweep of `rill-chaos-<pid>` namespaces
//! whose process is gone (a `rill-chaos` killed by SIGKILL).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::cluster::wait_timeout;

use anyhow::{bail, Context};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Namespaces are named `rill-chaos-<pid>`.
const NAME_PREFIX: &str = "rill-chaos-";
/// Where `ip netns` keeps its namespaces (bind mounts of their nsfs files).
const NETNS_DIR: &str = "/var/run/netns";
/// Node `i` runs as uid and gid `NODE_UID_BASE + i`: no user of a usual
/// system, and needing no entry in /etc/passwd.
const NODE_UID_BASE: u32 = 40_000;
/// The table of a fault's drop rules; deleting it heals.
const FAULT_TABLE: &str = "rill_chaos";
/// How long one `ip` or `nft` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The namespace made by this process and not yet removed, for the
/// interrupt path, which exits without running `Drop`.
static CURRENT: Mutex<Option<String>> = Mutex::new(None);

/// The most nodes a namespace holds: their addresses end at 127.0.0.210.
pub const NODES_MAX: usize = 200;

/// Node `id`'s address on the namespace's loopback.
pub fn node_address(id: i32) -> Ipv4Addr {
    assert!((1..=NODES_MAX as i32).contains(&id), "node id {id}");
    Ipv4Addr::new(127, 0, 0, 10 + id as u8)
}

/// The uid (and gid) node `id` runs as inside the namespace.
pub fn node_uid(id: i32) -> u32 {
    assert!((1..=NODES_MAX as i32).contains(&id), "node id {id}");
    NODE_UID_BASE + id as u32
}

/// Why the cluster cannot run in a namespace here (and so partitions
/// cannot run), or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_string());
    }
    for (command, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(command)
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("no `{command}` command (install {package})"));
        }
    }
    None
}

/// A network namespace of this process; removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `rill-chaos-<pid>` with its loopback up and the source NAT
    /// that gives each of `node_ids` its own address (see the module
    /// doc). First removes namespaces left by `rill-chaos` processes that
    /// are gone.
    pub fn create(node_ids: &[i32]) -> anyhow::Result<Netns> {
        sweep_stale();
        let name = format!("{NAME_PREFIX}{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]), None)
            .with_context(|| format!("ip netns add {name}"))?;
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
        // From here on, `Drop` removes it whatever fails next.
        let netns = Netns { name };
        netns
            .exec(Command::new("ip").args(["link", "set", "lo", "up"]), None)
            .context("set the namespace's loopback up")?;
        netns
            .nft(&nat_script(node_ids))
            .context("load the nodes' source NAT")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Moves the calling thread into the namespace (setns(2)). Threads it
    /// starts afterwards, librdkafka's included, and processes it spawns
    /// are in the namespace too; other threads are not.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let file =
            File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
            .with_context(|| format!("setns into {}", self.name))?;
        assert!(self.is_current()?, "setns did not move the thread");
        Ok(())
    }

    /// Whether the calling thread is in the namespace.
    pub fn is_current(&self) -> anyhow::Result<bool> {
        let ours = std::fs::metadata("/proc/thread-self/ns/net")
            .context("stat /proc/thread-self/ns/net")?;
        let namespace = std::fs::metadata(self.path())
            .with_context(|| format!("stat {}", self.path().display()))?;
        Ok(ours.dev() == namespace.dev() && ours.ino() == namespace.ino())
    }

    /// Drops the packets from each `(source, target)` node to the other,
    /// until [`Netns::heal`]. One fault at a time: the table must not exist.
    pub fn partition(&self, drops: &[(i32, i32)]) -> anyhow::Result<()> {
        assert!(!drops.is_empty());
        self.nft(&drop_script(drops))
    }

    /// Lets every packet through again (also when no fault is on).
    pub fn heal(&self) -> anyhow::Result<()> {
        // Adding an existing table is no error, so the delete always
        // finds one.
        self.nft(&format!(
            "add table inet {FAULT_TABLE}\ndelete table inet {FAULT_TABLE}\n"
        ))
    }

    /// Loads `script` atomically with `nft -f -` inside the namespace.
    fn nft(&self, script: &str) -> anyhow::Result<()> {
        self.exec(Command::new("nft").args(["-f", "-"]), Some(script))
            .with_context(|| format!("nft -f - in {}:\n{script}", self.name))
    }

    /// Runs `command` inside the namespace with `ip netns exec`.
    fn exec(&self, command: &Command, stdin: Option<&str>) -> anyhow::Result<()> {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        run(&mut wrapped, stdin)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() == Some(self.name.as_str()) {
            *current = None;
        }
        drop(current);
        if let Err(error) = remove(&self.name) {
            eprintln!("rill-chaos: {error:#}");
        }
    }
}

/// Removes the namespace this process made, if any: for the interrupt
/// path, which ends the process without `Drop`.
pub fn remove_current() {
    let name = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(name) = name {
        if let Err(error) = remove(&name) {
            eprintln!("rill-chaos: {error:#}");
        }
    }
}

fn remove(name: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(["netns", "del", name]), None)
        .with_context(|| format!("ip netns del {name} (remove it by hand)"))
}

/// Removes `rill-chaos-<pid>` namespaces whose process is gone (one that
/// was killed by SIGKILL leaves its namespace). A live process keeps its
/// namespace whatever it is (a test binary makes them too); a pid reused
/// by another process keeps a stale namespace until that one ends.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove(&name) {
            Ok(()) => eprintln!("rill-chaos: removed {name}, left by a run that is gone"),
            Err(error) => eprintln!("rill-chaos: {error:#}"),
        }
    }
}

/// The source NAT: each node's connections leave from its own address.
fn nat_script(node_ids: &[i32]) -> String {
    let mut script = String::from(
        "table ip rill_chaos_nat {\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for &id in node_ids {
        script += &format!(
            "\t\tmeta skuid {} ip daddr 127.0.0.0/8 snat to {}\n",
            node_uid(id),
            node_address(id)
        );
    }
    script += "\t}\n}\n";
    script
}

/// A fault's table: the same drop rules at the two hooks (see the module
/// doc for why two).
fn drop_script(drops: &[(i32, i32)]) -> String {
    let rules: String = drops
        .iter()
        .map(|&(source, target)| {
            format!(
                "\t\tip saddr {} ip daddr {} drop\n",
                node_address(source),
                node_address(target)
            )
        })
        .collect();
    format!(
        "table inet {FAULT_TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority -150; policy accept;\n\
         {rules}\t}}\n\
         \tchain postrouting {{\n\
         \t\ttype filter hook postrouting priority 200; policy accept;\n\
         {rules}\t}}\n\
         }}\n"
    )
}

/// Runs `command` to completion within [`COMMAND_TIMEOUT`], `stdin` fed
/// to it; an exit other than 0 is an error with its stderr.
fn run(command: &mut Command, stdin: Option<&str>) -> anyhow::Result<()> {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {:?}", command.get_program()))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("piped stdin")?;
        // Dropping the pipe closes it: nft reads to its end.
        pipe.write_all(text.as_bytes()).context("write stdin")?;
    }
    let status = match wait_timeout(&mut child, COMMAND_TIMEOUT)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        bail!("{command:?} exited with {status}: {}", stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_have_their_own_address_and_user() {
        assert_eq!(node_address(1), Ipv4Addr::new(127, 0, 0, 11));
        assert_eq!(node_address(3), Ipv4Addr::new(127, 0, 0, 13));
        assert_eq!(node_uid(2), 40_002);
    }

    #[test]
    fn the_nat_gives_each_nodes_connections_its_address() {
        let script = nat_script(&[1, 2]);
        assert!(script.contains("meta skuid 40001 ip daddr 127.0.0.0/8 snat to 127.0.0.11\n"));
        assert!(script.contains("meta skuid 40002 ip daddr 127.0.0.0/8 snat to 127.0.0.12\n"));
        assert!(script.contains("type nat hook postrouting priority srcnat;"));
    }

    #[test]
    fn a_cut_drops_each_pair_at_both_hooks() {
        let script = drop_script(&[(1, 2), (2, 1)]);
        let rule = "ip saddr 127.0.0.11 ip daddr 127.0.0.12 drop\n";
        assert_eq!(script.matches(rule).count(), 2);
        assert_eq!(
            script
                .matches("ip saddr 127.0.0.12 ip daddr 127.0.0.11 drop\n")
                .count(),
            2
        );
        assert!(script.contains("type filter hook output priority -150;"));
        assert!(script.contains("type filter hook postrouting priority 200;"));
        assert!(script.starts_with("table inet rill_chaos {"));
    }

    /// Set for the child side of [`a_cut_drops_node_packets_and_a_heal_restores_them`]:
    /// the address [`connect_helper`] connects to.
    const CONNECT_TO: &str = "RILL_CHAOS_TEST_CONNECT_TO";

    /// Not a test of its own: run by the test below as a child process (of
    /// a node's uid, in the namespace), it exits 10 when a connection to
    /// `CONNECT_TO` is made within a second, 11 when not. Without the
    /// variable it does nothing. (Codes the test harness does not use: a
    /// filter that matched no test would exit 0.)
    #[test]
    fn connect_helper() {
        let Ok(address) = std::env::var(CONNECT_TO) else {
            return;
        };
        let address: std::net::SocketAddr = address.parse().unwrap();
        let connected = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1));
        std::process::exit(if connected.is_ok() { 10 } else { 11 });
    }

    /// Whether a process of node `node`'s user (`None`: a client, root)
    /// can connect to `to`, from the calling thread's namespace.
    fn connects(node: Option<i32>, to: std::net::SocketAddr) -> bool {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["netns::tests::connect_helper", "--exact", "--quiet"])
            .env(CONNECT_TO, to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(node) = node {
            command.uid(node_uid(node)).gid(node_uid(node));
        }
        let mut child = command.spawn().unwrap();
        // The helper gives up after a second; this bounds the harness too.
        let status = wait_timeout(&mut child, COMMAND_TIMEOUT)
            .unwrap()
            .expect("the helper ends");
        match status.code() {
            Some(10) => true,
            Some(11) => false,
            other => panic!("connect helper: {other:?}"),
        }
    }

    /// The namespace, its NAT and faults in a real kernel: as root with
    /// `ip` and `nft` only (skipped with a reason otherwise). Node 2 is a
    /// listener on its address in this process; node 1 is a child
    /// process of node 1's user.
    #[test]
    fn a_cut_drops_node_packets_and_a_heal_restores_them() {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        let netns = Netns::create(&[1, 2]).unwrap();
        let path = netns.path();
        assert!(path.exists());
        assert!(!netns.is_current().unwrap());
        // Only this test's thread (and what it spawns) goes in.
        netns.enter_current_thread().unwrap();
        assert!(netns.is_current().unwrap());
        // Connections are made by the kernel into the backlog: no accept
        // is needed.
        let listener = std::net::TcpListener::bind((node_address(2), 0)).unwrap();
        let to = listener.local_addr().unwrap();
        assert!(connects(Some(1), to), "no cut: node 1 reaches node 2");

        netns.partition(&[(1, 2)]).unwrap();
        assert!(!connects(Some(1), to), "1 -> 2 dropped: the SYN is lost");
        assert!(connects(None, to), "a client is never cut off");
        netns.heal().unwrap();
        assert!(connects(Some(1), to), "healed");

        netns.partition(&[(2, 1)]).unwrap();
        assert!(
            !connects(Some(1), to),
            "2 -> 1 dropped: node 2's SYN-ACK to node 1's address is lost"
        );
        netns.heal().unwrap();
        // The heal works with no fault on, too.
        netns.heal().unwrap();
        assert!(connects(Some(1), to), "healed");

        drop(listener);
        drop(netns);
        assert!(!path.exists());
        // The thread stays in the removed namespace until it ends; it opens
        // nothing more.
    }
}
