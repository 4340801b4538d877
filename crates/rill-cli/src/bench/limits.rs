//! `rill bench limits`: this machine's ceilings, measured now, so that a
//! broker's figures can be read as a share of the hardware.
//!
//! - Disk: `--disk-mib` MiB written sequentially to a new file in `--dir`,
//!   1 MiB per `write`, timed to the end of the last `fdatasync`: once with
//!   one `fdatasync` at the end (the disk's bandwidth) and once with one
//!   every 64 MiB as well (closer to a log that flushes as it goes).
//! - Loopback TCP: one connection between two sockets on 127.0.0.1, one
//!   thread writing 128 KiB buffers and one reading, for `--tcp-seconds`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::SplitMix64;

/// Bytes per `write` to the disk.
const DISK_WRITE_BYTES: usize = 1 << 20;
/// Bytes between two `fdatasync`s in the second disk run.
const DISK_SYNC_INTERVAL_BYTES: u64 = 64 << 20;
/// Bytes per `write` to the socket (iperf3's default for TCP).
const TCP_WRITE_BYTES: usize = 128 << 10;

#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Where to write the test file: a directory on the disk to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// How much to write in each disk run, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    disk_mib: u64,
    /// How long to send over loopback TCP, in seconds.
    #[arg(long, default_value_t = 3.0)]
    tcp_seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &LimitsArgs) -> anyhow::Result<()> {
    if !(args.tcp_seconds.is_finite() && args.tcp_seconds > 0.0 && args.tcp_seconds <= 600.0) {
        bail!("--tcp-seconds must be more than 0 and at most 600");
    }
    let disk_bytes = args.disk_mib << 20;
    let end_only = disk_write(&args.dir, disk_bytes, None)?;
    let every_64_mib = disk_write(&args.dir, disk_bytes, Some(DISK_SYNC_INTERVAL_BYTES))?;
    let (tcp_bytes, tcp_seconds) = loopback_tcp(Duration::from_secs_f64(args.tcp_seconds))?;

    let mb_per_sec = |seconds: f64| disk_bytes as f64 / seconds.max(1e-9) / 1e6;
    let gbit_per_sec = tcp_bytes as f64 * 8.0 / tcp_seconds.max(1e-9) / 1e9;
    if args.json {
        let value = serde_json::json!({
            "mode": "limits",
            "disk": {
                "dir": args.dir.display().to_string(),
                "bytes": disk_bytes,
                "write_bytes": DISK_WRITE_BYTES,
                "fdatasync_at_end_seconds": end_only,
                "fdatasync_at_end_mb_per_sec": mb_per_sec(end_only),
                "fdatasync_every_64mib_seconds": every_64_mib,
                "fdatasync_every_64mib_mb_per_sec": mb_per_sec(every_64_mib),
            },
            "loopback_tcp": {
                "bytes": tcp_bytes,
                "seconds": tcp_seconds,
                "gbit_per_sec": gbit_per_sec,
            },
        });
        println!("{value}");
        return Ok(());
    }
    let size = if args.disk_mib.is_multiple_of(1024) {
        format!("{} GiB", args.disk_mib / 1024)
    } else {
        format!("{} MiB", args.disk_mib)
    };
    println!("disk write in {}", args.dir.display());
    println!(
        "  {size} in 1 MiB writes, fdatasync at the end     {:>8.1} MB/s",
        mb_per_sec(end_only)
    );
    println!(
        "  {size} in 1 MiB writes, fdatasync every 64 MiB   {:>8.1} MB/s",
        mb_per_sec(every_64_mib)
    );
    println!("loopback TCP, one connection on 127.0.0.1");
    println!(
        "  {:.1} s, 128 KiB writes                        {gbit_per_sec:>8.2} Gbit/s",
        tcp_seconds
    );
    Ok(())
}

/// A file that is removed when dropped, whether the run finished or not.
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `total` bytes to a new file in `dir`, with an `fdatasync` every
/// `sync_interval` bytes (if given) and at the end; the seconds it took.
fn disk_write(dir: &Path, total: u64, sync_interval: Option<u64>) -> anyhow::Result<f64> {
    let path = dir.join(format!(".rill-bench-limits-{}", std::process::id()));
    // Dirty pages someone else left would be written back during this
    // run and counted against it.
    rustix::fs::sync();
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let _scratch = ScratchFile(path.clone());
    let mut random = SplitMix64(total);
    // Random bytes, in case the filesystem or the device compresses.
    let buffer: Vec<u8> = (0..DISK_WRITE_BYTES / 8)
        .flat_map(|_| random.next().to_le_bytes())
        .collect();
    let failed = |what: &str| format!("cannot {what} {}", path.display());
    let start = Instant::now();
    let mut written = 0u64;
    while written < total {
        let chunk = (total - written).min(DISK_WRITE_BYTES as u64) as usize;
        file.write_all(&buffer[..chunk])
            .with_context(|| failed("write to"))?;
        written += chunk as u64;
        if sync_interval.is_some_and(|interval| written.is_multiple_of(interval)) && written < total
        {
            file.sync_data().with_context(|| failed("fdatasync"))?;
        }
    }
    file.sync_data().with_context(|| failed("fdatasync"))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Sends over one loopback TCP connection for `duration`; the bytes the
/// reader received and the seconds from its first byte to the end.
fn loopback_tcp(duration: Duration) -> anyhow::Result<(u64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on a loopback port")?;
    let address = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    // Connected before either thread starts, so that neither can wait for
    // a peer that failed to come.
    let mut writer = TcpStream::connect(address).context("cannot connect on loopback")?;
    let (mut stream, _) = listener.accept().context("cannot accept on loopback")?;
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> anyhow::Result<(u64, f64)> {
            let mut buffer = vec![0u8; 1 << 20];
            let mut received = 0u64;
            let mut first_byte_at = None;
            loop {
                let read = stream
                    .read(&mut buffer)
                    .context("cannot read from loopback")?;
                if read == 0 {
                    break;
                }
                first_byte_at.get_or_insert_with(Instant::now);
                received += read as u64;
            }
            let seconds = first_byte_at.map_or(0.0, |at| at.elapsed().as_secs_f64());
            Ok((received, seconds))
        });
        let sent = (|| -> anyhow::Result<()> {
            let buffer = vec![b'r'; TCP_WRITE_BYTES];
            let start = Instant::now();
            while start.elapsed() < duration {
                writer
                    .write_all(&buffer)
                    .context("cannot write to loopback")?;
            }
            // The reader sees the end of the stream and stops.
            writer
                .shutdown(Shutdown::Write)
                .context("cannot close loopback")
        })();
        let received = match reader.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the loopback reader panicked")),
        };
        sent?;
        received
    })
}
