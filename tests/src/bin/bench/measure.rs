//! Running the programs with `BPF_PROG_TEST_RUN`, and checking that every timed run took the
//! path it claims to measure.
//!
//! The kernel times the whole `repeat` loop with `ktime_get_ns` (time spent rescheduled left
//! out) and returns the mean per run in whole nanoseconds. Every timed call is followed by a
//! look at the reason counters: a run counted under any other reason than the expected one is
//! an error, not a figure.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dataplane_abi::{DropReason, PassReason};
use weir::dataplane::{Counters, Dataplane};

use testbed::fixtures::{TC_ACT_OK, TC_ACT_SHOT};

/// How a run must end: the TC action, and the reason counter that moves once per run.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// The empty program: passes and counts nothing.
    Floor,
    Pass(PassReason),
    Drop(DropReason),
}

impl Outcome {
    fn action(self) -> i32 {
        match self {
            Self::Floor | Self::Pass(_) => TC_ACT_OK,
            Self::Drop(_) => TC_ACT_SHOT,
        }
    }

    /// The counter this outcome moves, or `None` for the floor.
    fn counter(self, counters: &Counters) -> Option<u64> {
        match self {
            Self::Floor => None,
            Self::Pass(r) => Some(counters.passed.get(r.name()).copied().unwrap_or(0)),
            Self::Drop(r) => Some(counters.dropped.get(r.name()).copied().unwrap_or(0)),
        }
    }
}

/// A frame, the program it enters, and how every run of it must end.
#[derive(Clone, Debug)]
pub struct Probe {
    pub program: &'static str,
    pub frame: Vec<u8>,
    pub outcome: Outcome,
}

/// The kernel's duration in nanoseconds, as a float for the statistics.
fn nanos(d: Duration) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "per-run durations are far below 2^52 ns"
    )]
    let ns = d.as_nanos() as f64;
    ns
}

/// One `BPF_PROG_TEST_RUN` of `probe` without checking the counters: the kernel's mean time
/// per run, after checking the action.
fn run(dp: &mut Dataplane, probe: &Probe, repeat: u32) -> Result<Duration> {
    let (action, mean) = dp
        .test_run(probe.program, &probe.frame, repeat)
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", probe.program))?;
    ensure!(
        action == probe.outcome.action(),
        "{} returned TC action {action}, expected {} ({:?})",
        probe.program,
        probe.outcome.action(),
        probe.outcome
    );
    Ok(mean)
}

/// Runs `probe` `repeat` times in one call: the kernel's mean ns per run. Fails unless the
/// expected reason counter moved exactly `repeat` times.
pub fn bulk(dp: &mut Dataplane, probe: &Probe, repeat: u32) -> Result<f64> {
    let before = dp.counters()?;
    let mean = run(dp, probe, repeat)?;
    let after = dp.counters()?;
    check_moved(probe, &before, &after, u64::from(repeat))?;
    Ok(nanos(mean))
}

fn check_moved(probe: &Probe, before: &Counters, after: &Counters, runs: u64) -> Result<()> {
    if let (Some(b), Some(a)) = (probe.outcome.counter(before), probe.outcome.counter(after)) {
        ensure!(
            a - b == runs,
            "{} ran {runs} times but {:?} was counted {} times: the runs took another path",
            probe.program,
            probe.outcome,
            a - b
        );
    }
    Ok(())
}

/// Per-call kernel times of one round of single runs (`repeat = 1`), in nanoseconds.
#[derive(Default)]
pub struct SingleRuns {
    pub floor: Vec<f64>,
    pub established: Vec<f64>,
    pub new: Vec<f64>,
}

/// One call each of the floor, the established packet and a fresh SYN, per frame of
/// `new_frames`, in rotating order so that whatever the order costs falls on all three alike.
/// Every SYN must be a new connection allowed by policy (the policy counter moves once per
/// frame) and every established packet must find its connection.
pub fn single_runs(
    dp: &mut Dataplane,
    floor: &Probe,
    established: &Probe,
    new: &Probe,
    new_frames: &[Vec<u8>],
) -> Result<SingleRuns> {
    let before = dp.counters()?;
    let mut out = SingleRuns::default();
    for (i, frame) in new_frames.iter().enumerate() {
        let fresh = Probe {
            frame: frame.clone(),
            ..new.clone()
        };
        for slot in 0..3 {
            match (i + slot) % 3 {
                0 => out.floor.push(nanos(run(dp, floor, 1)?)),
                1 => out.established.push(nanos(run(dp, established, 1)?)),
                _ => out.new.push(nanos(run(dp, &fresh, 1)?)),
            }
        }
    }
    let after = dp.counters()?;
    let calls = u64::try_from(new_frames.len())?;
    check_moved(established, &before, &after, calls)?;
    check_moved(new, &before, &after, calls)?;
    Ok(out)
}

/// CPU time of the calling thread, user and kernel: on a shared machine, unlike wall time,
/// it leaves out the time spent waiting for a CPU.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter for a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The median (the mean of the middle two for an even count). `values` must not be empty.
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

/// The smallest gap between two distinct values: the timer's effective resolution as seen.
pub fn granularity(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.windows(2).map(|w| w[1] - w[0]).min_by(f64::total_cmp)
}
