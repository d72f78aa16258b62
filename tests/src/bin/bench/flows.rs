//! What flow events cost per packet: the same packets with events off, on with a reader
//! draining the ring, and on under a flood that the rate limiter holds back.
//!
//! # Method
//!
//! One dataplane holds the 10-rule configuration (the event path does not depend on the
//! rules). A reader thread waits on the ring's descriptor with `poll(2)` and drains it, as the
//! agent's reader does with epoll, so the programs pay for the ring's wake-ups too. Each round
//! runs every mode, in rotating order, and in each mode:
//!
//! - the denied SYN, in bulk calls of at most [`RING_SAFE_REPEAT`] runs: with events on, every
//!   run writes an event, and a call must never find the ring full (the cheaper failure path
//!   would then be measured); the flow-event counters check it after every call;
//! - the established packet, in bulk: no event, whatever the mode (the control: ≈1.00x);
//! - new allowed SYNs, one per call on fresh source ports, interleaved with the floor and the
//!   established packet, as the main benchmark does: new = established (bulk) + [new −
//!   established] (single runs).
//!
//! In the rate-limited mode (1 000 events per second per CPU, bursts of 100, the agent's
//! default) a bulk call is a flood: after the burst, nearly every run takes the limiter's
//! "no credit" branch. The ratios are against events off, measured in the same rounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context as _, Result, ensure};
use dataplane_abi::{DropReason, PassReason, programs};
use weir::compile;
use weir::dataplane::{Dataplane, FlowEvents, FlowRing};

use crate::cluster;
use crate::measure::{self, Outcome, Probe, median};
use crate::packet::{ACK, L4, Packet, SYN};

/// Runs per bulk call: fewer events than the ring holds (6 553), so it never fills.
pub const RING_SAFE_REPEAT: u32 = 4_000;
/// Source ports of fresh SYNs: this range is split between modes and rounds.
const FRESH_PORTS: std::ops::Range<u16> = 20_000..65_000;
const PRIMED_PORT: u16 = 4_000;
const DENIED_SRC_PORT: u16 = 4_001;

/// How the programs send events in a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Off,
    /// Every event written, a reader draining the ring.
    Read,
    /// The agent's default limit, under a flood.
    Limited,
}

impl Mode {
    const ALL: [Self; 3] = [Self::Off, Self::Read, Self::Limited];

    fn events(self) -> FlowEvents {
        match self {
            Self::Off => FlowEvents::Off,
            Self::Read => FlowEvents::Unlimited,
            Self::Limited => FlowEvents::Limited {
                per_sec: NonZeroU32::new(1000).expect("non-zero"),
                burst: NonZeroU32::new(100).expect("non-zero"),
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Off => "events off",
            Self::Read => "on, ring read",
            Self::Limited => "on, rate-limited",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Read => "on",
            Self::Limited => "limited",
        }
    }
}

/// A measured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    Denied,
    NewAllowed,
    Established,
}

impl Case {
    const ALL: [Self; 3] = [Self::Denied, Self::NewAllowed, Self::Established];

    fn label(self) -> &'static str {
        match self {
            Self::Denied => "new denied (SYN), an event",
            Self::NewAllowed => "new allowed (SYN), an event",
            Self::Established => "established, never an event",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Denied => "new_denied",
            Self::NewAllowed => "new_allowed",
            Self::Established => "established_pod",
        }
    }
}

/// Per-round ns per packet of each case and mode, and the floor.
pub struct FlowReport {
    rounds: usize,
    repeat: u32,
    single: usize,
    floor: Vec<f64>,
    ns: BTreeMap<(Case, Mode), Vec<f64>>,
    /// Events the reader took off the ring, all rounds.
    read: u64,
    /// Share of the flood's events the limiter held back.
    limited_share: Vec<f64>,
}

fn tcp_frame(
    src: std::net::IpAddr,
    sport: u16,
    dst: std::net::IpAddr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    Packet::new(
        src,
        dst,
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
    )
    .frame()
}

/// The reader: `poll(2)` on the ring, drain, repeat, until told to stop.
fn spawn_reader(
    mut ring: FlowRing,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut fd = libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a 50 ms timeout lets the stop flag be seen.
            unsafe { libc::poll(&raw mut fd, 1, 50) };
            let n = weir::flows::ring::drain(&mut ring).len();
            read.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

struct Probes {
    floor: Probe,
    established: Probe,
    denied: Probe,
    new: Probe,
}

fn probes() -> Probes {
    let e = cluster::endpoints();
    let to_pod = |frame, outcome| Probe {
        program: programs::TO_POD,
        frame,
        outcome,
    };
    let ack = tcp_frame(
        e.pod_peer,
        PRIMED_PORT,
        e.local,
        cluster::POD_PEER_PORT,
        ACK,
    );
    Probes {
        floor: Probe {
            program: programs::FLOOR,
            frame: ack.clone(),
            outcome: Outcome::Floor,
        },
        established: to_pod(ack, Outcome::Pass(PassReason::Established)),
        denied: to_pod(
            tcp_frame(
                e.pod_peer,
                DENIED_SRC_PORT,
                e.local,
                cluster::DENIED_PORT,
                SYN,
            ),
            Outcome::Drop(DropReason::PolicyDenied),
        ),
        new: to_pod(
            tcp_frame(
                e.pod_peer,
                PRIMED_PORT,
                e.local,
                cluster::POD_PEER_PORT,
                SYN,
            ),
            Outcome::Pass(PassReason::PolicyAllowed),
        ),
    }
}

/// Runs the flow-event benchmark: `rounds` measured rounds after a warm-up, bulk calls of
/// `repeat` runs (at most [`RING_SAFE_REPEAT`]), `single` new flows per round and mode (fewer
/// when the fresh source ports would run out).
pub fn run(rounds: usize, repeat: u32, single: usize) -> Result<FlowReport> {
    let repeat = repeat.min(RING_SAFE_REPEAT);
    let per_call =
        usize::from(FRESH_PORTS.end - FRESH_PORTS.start) / ((rounds + 1) * Mode::ALL.len());
    let single = single.min(per_call).max(1);
    let c = cluster::generate(10);
    let maps = compile::compile(&c.state, &c.node).context("compiling the 10-rule cluster")?;
    let mut dp = Dataplane::load().context("loading the eBPF programs (verifier)")?;
    dp.sync_maps(&maps).context("writing the maps")?;
    let p = probes();
    measure::bulk(&mut dp, &p.new, 1).context("opening the established connection")?;

    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let reader = spawn_reader(dp.take_flow_ring()?, stop.clone(), read.clone());
    let mut report = FlowReport {
        rounds,
        repeat,
        single,
        floor: Vec::new(),
        ns: BTreeMap::new(),
        read: 0,
        limited_share: Vec::new(),
    };
    let mut next_port = FRESH_PORTS.start;
    let result = (|| -> Result<()> {
        for round in 0..=rounds {
            eprintln!(
                "weir-bench: flow events, round {round}/{rounds}{}",
                if round == 0 { " (warm-up)" } else { "" }
            );
            let mut modes = Mode::ALL;
            modes.rotate_left(round % Mode::ALL.len());
            for mode in modes {
                let frames: Vec<Vec<u8>> = (0..single)
                    .map(|i| {
                        let e = cluster::endpoints();
                        let port = next_port + u16::try_from(i).expect("checked above");
                        tcp_frame(e.pod_peer, port, e.local, cluster::POD_PEER_PORT, SYN)
                    })
                    .collect();
                next_port += u16::try_from(single).expect("checked above");
                let figures = measure_mode(&mut dp, &p, mode, repeat, &frames)?;
                if round > 0 {
                    report.record(mode, figures);
                }
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    result?;
    report.read = read.load(Ordering::Relaxed);
    Ok(report)
}

/// What one mode measured in one round.
#[derive(Clone, Copy)]
struct Figures {
    floor: f64,
    denied: f64,
    established: f64,
    new: f64,
    limited_share: Option<f64>,
}

fn measure_mode(
    dp: &mut Dataplane,
    p: &Probes,
    mode: Mode,
    repeat: u32,
    frames: &[Vec<u8>],
) -> Result<Figures> {
    dp.set_flow_events(mode.events())?;
    let before = dp.flow_event_counters()?;
    let denied = measure::bulk(dp, &p.denied, repeat).context("denied SYN")?;
    let after = dp.flow_event_counters()?;
    let delta = |k: &str| after[k] - before[k];
    let runs = u64::from(repeat);
    ensure!(
        delta("ring_full") == 0,
        "{mode:?}: the ring filled up; the figure would be wrong"
    );
    match mode {
        Mode::Off => ensure!(
            delta("emitted") + delta("rate_limited") == 0,
            "events while off"
        ),
        Mode::Read => ensure!(delta("emitted") == runs, "{mode:?}: not one event per run"),
        Mode::Limited => ensure!(
            delta("emitted") + delta("rate_limited") == runs,
            "{mode:?}: events unaccounted"
        ),
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let limited_share = (mode == Mode::Limited).then(|| delta("rate_limited") as f64 / runs as f64);
    let floor = measure::bulk(dp, &p.floor, repeat)?;
    let established = measure::bulk(dp, &p.established, repeat).context("established")?;
    let single = measure::single_runs(dp, &p.floor, &p.established, &p.new, frames)
        .context("new allowed SYNs")?;
    let new = established + (median(&single.new) - median(&single.established));
    Ok(Figures {
        floor,
        denied,
        established,
        new,
        limited_share,
    })
}

impl FlowReport {
    fn record(&mut self, mode: Mode, f: Figures) {
        if mode == Mode::Off {
            self.floor.push(f.floor);
        }
        for (case, ns) in [
            (Case::Denied, f.denied),
            (Case::NewAllowed, f.new),
            (Case::Established, f.established),
        ] {
            self.ns.entry((case, mode)).or_default().push(ns);
        }
        self.limited_share.extend(f.limited_share);
    }

    fn ns(&self, case: Case, mode: Mode) -> f64 {
        median(&self.ns[&(case, mode)])
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Flow events: cost per packet on weir_to_pod, 10 rules, median of {} rounds \
             ({} runs per bulk call, {} new flows per round and mode); ratio to events off",
            self.rounds, self.repeat, self.single
        );
        let _ = write!(out, "{:<30}", "ns per packet");
        for mode in Mode::ALL {
            let _ = write!(out, "{:>22}", mode.label());
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<30}{:>19.1} ns",
            "floor (empty TC program)",
            median(&self.floor)
        );
        for case in Case::ALL {
            let _ = write!(out, "{:<30}", case.label());
            let off = self.ns(case, Mode::Off);
            for mode in Mode::ALL {
                let ns = self.ns(case, mode);
                let _ = write!(out, "{:>22}", format!("{ns:.1} ns ({:.2}x)", ns / off));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "rate-limited flood: {:.1}% of events held back; the reader took {} events off the \
             ring, none lost to a full ring\n",
            100.0 * median(&self.limited_share),
            self.read
        );
        out
    }

    /// `key=value` figures for scripts.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut kv = vec![(
            "flow_events_floor_ns".to_owned(),
            format!("{:.1}", median(&self.floor)),
        )];
        for case in Case::ALL {
            let off = self.ns(case, Mode::Off);
            for mode in Mode::ALL {
                let ns = self.ns(case, mode);
                kv.push((
                    format!("flow_events_{}_{}_ns", case.key(), mode.key()),
                    format!("{ns:.1}"),
                ));
                if mode != Mode::Off {
                    kv.push((
                        format!("flow_events_{}_{}_ratio", case.key(), mode.key()),
                        format!("{:.3}", ns / off),
                    ));
                }
            }
        }
        kv
    }
}
