//! The nemesis: a schedule of faults drawn from a seed before the run
//! starts (the same seed gives the same schedule), then carried out one
//! fault at a time, each healed before the next, so a majority of the
//! controller voters is always up.

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
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
        })
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub kind: Kind,
    pub node: i32,
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
        if t + hold > duration {
            return faults;
        }
        faults.push(Fault {
            kind,
            node,
            at: t,
            hold,
        });
        t += hold + Duration::from_millis(rng.between(GAP_MS));
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, well mixed, and
/// fixed forever, so a seed in an old report still gives its schedule
/// (a library's generator may change between versions).
#[derive(Debug)]
struct SplitMix64(u64);

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
    fn below(&mut self, n: u64) -> u64 {
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
}
