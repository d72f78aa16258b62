//! Continuous traffic: probes one after another from several sources at once, each timed, for
//! tests that change the desired state while packets flow and judge every probe afterwards.
//!
//! A [`Lane`] is one thread inside its source namespace doing one probe at a time; a denied
//! probe holds its lane for its whole timeout, so a test that wants a pair probed densely gives
//! it several lanes.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::probe::{self, Case};
use crate::rng::Rng;
use crate::topology::{Probe, Source, Topology};

/// One stream of probes from `from`, each to a target drawn at random from `targets`.
#[derive(Clone, Debug)]
pub struct Lane {
    pub from: Source,
    /// Destination pod ids and traffic, drawn uniformly with replacement.
    pub targets: Vec<(String, Case)>,
    /// Fixes the sequence of draws.
    pub seed: u64,
}

/// One probe that ran: what, when, and whether the echo came back.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub probe: Probe,
    /// Taken before the probe's socket exists: no packet of it is older.
    pub started: Instant,
    /// Taken after its last packet was received or its timeout expired.
    pub ended: Instant,
    pub connected: bool,
}

/// Lanes of probes running until [`Traffic::stop`]. Borrows the topology so that the lanes,
/// whose threads live in its namespaces, end before it does; dropping it stops them too.
#[derive(Debug)]
pub struct Traffic<'t> {
    stop: Arc<AtomicBool>,
    lanes: Vec<JoinHandle<Vec<Outcome>>>,
    _topology: PhantomData<&'t Topology>,
}

impl<'t> Traffic<'t> {
    /// Starts every lane of `lanes`. Each lane starts its probes at least `pace` apart, so
    /// that lanes whose targets all answer at once do not take every core.
    pub fn start(topology: &'t Topology, lanes: &[Lane], pace: Duration) -> Self {
        // Every lane is checked before any starts, and each one started is in `traffic`
        // at once: a panic half-way stops and joins those already running.
        let plans: Vec<LanePlan> = lanes
            .iter()
            .enumerate()
            .map(|(i, lane)| {
                assert!(!lane.targets.is_empty(), "lane {i} has no target");
                LanePlan::new(topology, lane)
            })
            .collect();
        let mut traffic = Self {
            stop: Arc::new(AtomicBool::new(false)),
            lanes: Vec::with_capacity(plans.len()),
            _topology: PhantomData,
        };
        for (i, plan) in plans.into_iter().enumerate() {
            let stop = Arc::clone(&traffic.stop);
            let netns = topology.source_netns(&plan.from);
            let lane = netns.spawn(format!("lane-{i}"), move || plan.run(&stop, pace));
            traffic.lanes.push(lane);
        }
        traffic
    }

    /// Stops every lane after its current probe and returns all outcomes, lane by lane.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        // Every lane is joined before any panic is passed on: their threads hold the pod
        // namespaces alive.
        let joined: Vec<_> = self.lanes.drain(..).map(JoinHandle::join).collect();
        let mut outcomes = Vec::new();
        for lane in joined {
            outcomes.extend(lane.unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        outcomes
    }
}

impl Drop for Traffic<'_> {
    fn drop(&mut self) {
        // Reached with lanes left only when the test failed before `stop`: join them anyway,
        // since their threads hold the pod namespaces alive.
        self.stop.store(true, Ordering::Relaxed);
        for lane in self.lanes.drain(..) {
            if lane.join().is_err() {
                eprintln!("warning: a probe lane panicked");
            }
        }
    }
}

/// A lane with its targets resolved to socket addresses, ready to move to its thread.
struct LanePlan {
    from: Source,
    targets: Vec<(String, Case, SocketAddr)>,
    rng: Rng,
}

impl LanePlan {
    fn new(topology: &Topology, lane: &Lane) -> Self {
        let targets = lane
            .targets
            .iter()
            .map(|(to, case)| {
                let dst = SocketAddr::new(topology.pod(to).ip(case.family), case.port);
                (to.clone(), *case, dst)
            })
            .collect();
        Self {
            from: lane.from.clone(),
            targets,
            rng: Rng::seeded(lane.seed),
        }
    }

    /// Probes until `stop` is set; runs inside the source namespace.
    fn run(mut self, stop: &AtomicBool, pace: Duration) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (to, case, dst) = &self.targets[self.rng.below(self.targets.len())];
            let started = Instant::now();
            let connected = probe::send(*dst, case.proto);
            let ended = Instant::now();
            outcomes.push(Outcome {
                probe: Probe {
                    from: self.from.clone(),
                    to: to.clone(),
                    case: *case,
                },
                started,
                ended,
                connected,
            });
            if let Some(rest) = pace.checked_sub(ended - started) {
                thread::sleep(rest);
            }
        }
        outcomes
    }
}
