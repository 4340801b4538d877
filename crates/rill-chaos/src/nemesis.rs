//! The nemesis: a schedule of faults drawn from a seed before the run
//! starts (the same seed gives the same schedule), then carried out one
//! fault at a time, each healed before the next, so a majority of the
//! controller voters is always up (a network partition cuts off a
//! minority at most).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// How long the first fault waits, and the gap between faults: a range
/// in milliseconds.
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// How long a node stays killed or paused.
const HOLD_MS: (u64, u64) = (1_000, 5_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SIGKILL, then a restart on the same data dir after the hold.
    Kill,
    /// SIGSTOP, then SIGCONT after the hold.
    Pause,
    /// Packets between nodes dropped (see [`Cut`]), then let through again
    /// after the hold. Needs the cluster's network namespace (`netns`).
    Partition,
}

/// The shape of a network partition. The nodes' packets to and from the
/// clients are never dropped: only traffic between nodes is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cut {
    /// One node cut off from every other, both directions.
    Isolate,
    /// A minority (`(n - 1) / 2` nodes, at least one) cut off from the
    /// majority, both directions. With 3 nodes it cuts what `Isolate`
    /// cuts.
    Split,
    /// Packets from one node to one other are dropped; the other way they
    /// pass.
    OneWay,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cut::Isolate => "isolate",
            Cut::Split => "split",
            Cut::OneWay => "one-way",
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
        })
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub kind: Kind,
    /// The node killed or paused; for a partition, the node the cut was
    /// drawn around (the isolated one, one of the minority, the sender
    /// whose packets are dropped).
    pub node: i32,
    /// Partitions only: the shape, and the directed node pairs
    /// `(source, target)` whose packets are dropped.
    pub cut: Option<Cut>,
    pub drops: Vec<(i32, i32)>,
    /// When it begins, from the start of the workload. A restart that
    /// takes long delays the faults after it; their order, nodes and
    /// holds stay as drawn.
    #[serde(with = "millis")]
    pub at: Duration,
    #[serde(with = "millis")]
    pub hold: Duration,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The faults of a run of `duration`, drawn from `seed`. Every fault
/// ends (is healed) within `duration`.
pub fn schedule(seed: u64, duration: Duration, kinds: &[Kind], nodes: &[i32]) -> Vec<Fault> {
    assert!(!nodes.is_empty());
    let mut rng = SplitMix64(seed);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let mut t = Duration::from_millis(rng.between(GAP_MS));
    loop {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let hold = Duration::from_millis(rng.between(HOLD_MS));
        // Drawn only for partitions, so a schedule without them is the
        // same as before partitions existed (old seeds stay valid).
        let (cut, drops) = match kind {
            Kind::Partition => {
                let (cut, drops) = draw_cut(&mut rng, node, nodes);
                (Some(cut), drops)
            }
            Kind::Kill | Kind::Pause => (None, Vec::new()),
        };
        if t + hold > duration {
            return faults;
        }
        faults.push(Fault {
            kind,
            node,
            cut,
            drops,
            at: t,
            hold,
        });
        t += hold + Duration::from_millis(rng.between(GAP_MS));
    }
}

/// A partition around `node`: its shape, and the directed pairs of nodes
/// whose packets are dropped (sorted).
fn draw_cut(rng: &mut SplitMix64, node: i32, nodes: &[i32]) -> (Cut, Vec<(i32, i32)>) {
    assert!(nodes.len() >= 2, "a partition needs two nodes");
    let others: Vec<i32> = nodes.iter().copied().filter(|&n| n != node).collect();
    let cut = [Cut::Isolate, Cut::Split, Cut::OneWay][rng.below(3) as usize];
    let minority: Vec<i32> = match cut {
        Cut::Isolate => vec![node],
        Cut::Split => {
            let size = ((nodes.len() - 1) / 2).max(1);
            let mut rest = others.clone();
            let mut minority = vec![node];
            while minority.len() < size {
                minority.push(rest.remove(rng.below(rest.len() as u64) as usize));
            }
            minority
        }
        Cut::OneWay => {
            let target = others[rng.below(others.len() as u64) as usize];
            return (cut, vec![(node, target)]);
        }
    };
    let mut drops = Vec::new();
    for &inside in &minority {
        for &outside in nodes.iter().filter(|n| !minority.contains(n)) {
            drops.push((inside, outside));
            drops.push((outside, inside));
        }
    }
    drops.sort_unstable();
    (cut, drops)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, well mixed, and
/// fixed forever, so a seed in an old report still gives its schedule
/// (a library's generator may change between versions). The txn
/// workload draws its aborts from it too.
#[derive(Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Below `n` (> 0); the modulo bias is negligible for the small `n`
    /// used here.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }

    fn between(&mut self, (low, high): (u64, u64)) -> u64 {
        assert!(low <= high);
        low + self.below(high - low + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = [Kind::Kill, Kind::Pause];
        let a = schedule(7, Duration::from_secs(60), &kinds, &[1, 2, 3]);
        let b = schedule(7, Duration::from_secs(60), &kinds, &[1, 2, 3]);
        let c = schedule(8, Duration::from_secs(60), &kinds, &[1, 2, 3]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn faults_do_not_overlap_and_end_within_the_run() {
        let duration = Duration::from_secs(75);
        for seed in 0..100 {
            let faults = schedule(seed, duration, &[Kind::Kill, Kind::Pause], &[1, 2, 3]);
            assert!(faults.len() >= 8, "seed {seed}: {} faults", faults.len());
            for pair in faults.windows(2) {
                assert!(pair[0].at + pair[0].hold < pair[1].at);
            }
            let last = faults.last().unwrap();
            assert!(last.at + last.hold <= duration);
            assert!(faults.iter().any(|f| f.kind == Kind::Kill));
            assert!(faults.iter().any(|f| f.kind == Kind::Pause));
        }
    }

    /// Seed 12's kill and pause schedule is the bounded test's (7 kills, 7
    /// pauses): drawing partitions must not have changed it.
    #[test]
    fn a_schedule_without_partitions_is_unchanged() {
        let faults = schedule(
            12,
            Duration::from_secs(75),
            &[Kind::Kill, Kind::Pause],
            &[1, 2, 3],
        );
        assert_eq!(faults.len(), 14);
        assert_eq!(faults.iter().filter(|f| f.kind == Kind::Kill).count(), 7);
        assert!(faults.iter().all(|f| f.cut.is_none() && f.drops.is_empty()));
    }

    #[test]
    fn partitions_cut_a_minority_or_one_direction() {
        let nodes = [1, 2, 3, 4, 5];
        let mut seen = Vec::new();
        for seed in 0..50 {
            for fault in schedule(seed, Duration::from_secs(60), &[Kind::Partition], &nodes) {
                let cut = fault.cut.unwrap();
                seen.push(cut);
                assert!(!fault.drops.is_empty());
                for &(source, target) in &fault.drops {
                    assert_ne!(source, target);
                    assert!(nodes.contains(&source) && nodes.contains(&target));
                }
                match cut {
                    Cut::OneWay => assert_eq!(fault.drops, [(fault.node, fault.drops[0].1)]),
                    Cut::Isolate | Cut::Split => {
                        // Symmetric, and the side cut off is a minority
                        // holding the fault's node: each of its nodes
                        // drops packets to every node of the majority.
                        for &(source, target) in &fault.drops {
                            assert!(fault.drops.contains(&(target, source)));
                        }
                        let side = if cut == Cut::Isolate { 1 } else { 2 };
                        assert_eq!(fault.drops.len(), 2 * side * (nodes.len() - side));
                        let cut_off: BTreeSet<i32> = nodes
                            .iter()
                            .copied()
                            .filter(|&n| {
                                fault.drops.iter().filter(|d| d.0 == n).count()
                                    == nodes.len() - side
                            })
                            .collect();
                        assert_eq!(cut_off.len(), side, "{fault:?}");
                        assert!(cut_off.contains(&fault.node), "{fault:?}");
                    }
                }
            }
        }
        for cut in [Cut::Isolate, Cut::Split, Cut::OneWay] {
            assert!(seen.contains(&cut), "no {cut} in 50 seeds");
        }
    }
}
