//! `report.json` and `report.svg`: the checker's findings with the run's
//! parameters, and throughput and latency over time with the fault
//! windows shaded, as Jepsen's plots do.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use serde::Serialize;

use crate::history::{Op, Type, F};

/// What `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report<'a, A: Serialize> {
    /// `valid`, `anomalies` and the workload's counts come from here (the
    /// queue checker's [`crate::checker::Analysis`] or the txn checker's `TxnAnalysis`).
    #[serde(flatten)]
    pub analysis: &'a A,
    /// `queue` or `txn`.
    pub workload: String,
    pub seed: u64,
    /// How many faults were injected.
    pub faults: usize,
    /// The fault kinds that ran.
    pub fault_kinds: Vec<String>,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Fault kinds asked for that cannot run here, each with why
    /// (`"partition: not root"`).
    pub faults_unavailable: Vec<String>,
    /// Nodes that exited without being killed, each with its exit status
    /// (`"node 3: exit status: 1"`); each was restarted. Empty in a good
    /// run: a crash is a bug even when the history is valid.
    pub crashes: Vec<String>,
    /// Where the cluster ran: `namespace rill-chaos-<pid>` or `loopback`.
    pub network: String,
    pub nodes: usize,
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    pub duration_s: u64,
}

pub fn write_json<A: Serialize>(report: &Report<'_, A>, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report).context("encode the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

/// A time when a node was down or paused, or the network cut, in
/// seconds from the start.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: f64,
    end: f64,
    f: F,
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Fault windows from the nemesis's operations: from a kill to the
/// restart's end, from a pause to the resume, from a partition to its
/// heal.
fn windows(ops: &[Op], end: f64) -> Vec<Window> {
    let mut open: HashMap<i32, Window> = HashMap::new();
    let mut windows = Vec::new();
    for op in ops {
        let Some(node) = op.node else { continue };
        match (op.f, op.kind) {
            (F::Kill | F::Pause | F::Partition, Type::Ok) | (F::Crash, Type::Invoke) => {
                open.insert(
                    node,
                    Window {
                        start: seconds(op.time),
                        end,
                        f: op.f,
                    },
                );
            }
            (F::Restart | F::Resume | F::Heal | F::Crash, Type::Ok | Type::Fail) => {
                if let Some(mut window) = open.remove(&node) {
                    window.end = seconds(op.time);
                    windows.push(window);
                }
            }
            _ => {}
        }
    }
    windows.extend(open.into_values());
    windows
}

/// Draws acknowledged and failed sends per second, and the median and
/// maximum latency of the sends acknowledged in each second.
pub fn write_svg(ops: &[Op], path: &Path) -> anyhow::Result<()> {
    let end = seconds(ops.last().map_or(0, |op| op.time)).max(1.0);
    let buckets = end.ceil() as usize + 1;
    let mut acked = vec![0u64; buckets];
    let mut failed = vec![0u64; buckets];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    for op in ops.iter().filter(|op| op.f == F::Send) {
        let Some(value) = op.value else { continue };
        let bucket = (seconds(op.time) as usize).min(buckets - 1);
        match op.kind {
            Type::Invoke => {
                invoked.insert(value, op.time);
            }
            Type::Ok => {
                acked[bucket] += 1;
                if let Some(start) = invoked.remove(&value) {
                    latencies[bucket].push(op.time.saturating_sub(start) as f64 / 1e6);
                }
            }
            Type::Fail | Type::Info => failed[bucket] += 1,
        }
    }
    let mut p50 = Vec::new();
    let mut max = Vec::new();
    for (second, bucket) in latencies.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(f64::total_cmp);
        let x = second as f64 + 0.5;
        p50.push((x, bucket[bucket.len() / 2]));
        max.push((x, bucket[bucket.len() - 1]));
    }
    let windows = windows(ops, end);

    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(400);

        let rate_max = acked
            .iter()
            .chain(&failed)
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "sends per second (shaded: red killed, blue paused, orange partitioned)",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, 0f64..rate_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("sends/s")
            .draw()?;
        shade(&mut chart, &windows, rate_max)?;
        let per_second = |counts: &[u64]| -> Vec<(f64, f64)> {
            counts
                .iter()
                .enumerate()
                .map(|(s, &n)| (s as f64 + 0.5, n as f64))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(per_second(&acked), &BLUE))?
            .label("acknowledged")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(per_second(&failed), &RED))?
            .label("failed or unknown")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;

        let latency_max = max.iter().map(|&(_, l)| l).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                "send latency (acks=all), by the second it was acknowledged",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, 0f64..latency_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()?;
        shade(&mut chart, &windows, latency_max)?;
        chart
            .draw_series(LineSeries::new(p50, &BLUE))?
            .label("median")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(max, &BLACK))?
            .label("max")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow!("draw {}: {error}", path.display()))
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn shade(
    chart: &mut Chart<'_, '_>,
    windows: &[Window],
    top: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    chart.draw_series(windows.iter().map(|w| {
        let color = match w.f {
            F::Pause => BLUE.mix(0.15),
            F::Partition => RGBColor(255, 140, 0).mix(0.2),
            _ => RED.mix(0.15),
        };
        Rectangle::new([(w.start, 0.0), (w.end, top)], color.filled())
    }))?;
    Ok(())
}
