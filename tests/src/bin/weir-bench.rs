//! `weir-bench`: what Weir's policy path costs per packet, and whether that cost grows with the
//! number of `NetworkPolicy` rules; then what compiling and loading a large policy set costs;
//! then what flow events add per packet (`bench/flows.rs`); then the Service path per packet at
//! 10 to 100 000 Services (`bench/service_path.rs`); then Weir against kube-proxy's iptables and
//! nftables modes on real TCP traffic through a `ClusterIP` (`bench/kubeproxy.rs`); then the
//! real agent process, `weir run`, at that scale (`bench/agent.rs`); then what compiling and
//! writing 10 000 Services costs, from scratch and for one endpoint change (`bench/services.rs`).
//!
//! Run as root: `cargo run --release -p weir-tests --bin weir-bench` (or `cargo xtask bench`).
//! Options: `--rounds N` (default 9), `--repeat N` runs per bulk call (default 250 000),
//! `--single N` one-run calls per round for new flows (default 3 000); `--only PART`,
//! `--skip PART` to run one part or all but one, parts `kernel`, `service-path`, `kubeproxy`,
//! `agent` and `services`; `--agent-changes N` policy changes timed per poll interval (default 30);
//! `--kubeproxy-seconds S` of connections per configuration and round (default 2; the
//! request ping-pong runs half as long), `--kubeproxy-services N,N` Service counts compared
//! (default 1000,10000). The agent part runs the release `weir` (`$WEIR_BIN`, or else built
//! with `cargo build --release`) in network namespaces of its own; the kube-proxy part builds
//! test beds of network namespaces and needs `nsenter`, `iptables-restore` and `nft`.
//!
//! A benchmark, not a test: it never judges a time. It fails only on real errors (not root,
//! the verifier refusing the programs, a packet taking another path than the one measured).
//! The in-kernel parts run packets through `BPF_PROG_TEST_RUN` only: no interface, address or
//! route is touched. The kube-proxy and agent parts touch only namespaces they create.
//!
//! # Method
//!
//! Three configurations (10, 10 000 and 100 000 rules over the same 10 000 pods, see
//! `bench/cluster.rs`) are loaded into three dataplanes side by side. Each round runs every
//! packet on every configuration, in an order that rotates from round to round, so that machine
//! noise falls on all of them alike; a warm-up round is thrown away and the report gives the
//! median of the rounds, next to the empty program (the floor) measured in the same rounds.
//! After every call the reason counters must have moved once per run under the expected
//! reason: a figure always belongs to the path it is labelled with.
//!
//! Established and denied packets repeat fine: the first leaves no new state, the second none
//! at all. A new allowed flow does not: a test run sends one frame `repeat` times, and from the
//! second run on, that SYN finds the connection the first run created. The programs have no
//! switch to skip the insert, and deleting entries between runs is impossible inside one call.
//! So each new flow is its own call with `repeat = 1`, and a never-used source port: the kernel
//! then times one run (`ktime_get_ns` has 1 ns steps with the TSC clocksource; the report
//! prints the smallest step it saw). Such a call also holds one clock read and colder caches
//! than a tight loop, so the floor and the established packet are sent the same way,
//! interleaved with the SYNs, and the new-flow figure is, per round:
//! established (bulk) + [new − established] (single runs). The raw single-run medians are
//! printed too.

/// The agent's allocator, so that the agent's steps timed in this process cost what they
/// cost in the agent.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bench/agent.rs"]
mod agent;
#[path = "bench/cluster.rs"]
mod cluster;
#[path = "bench/flows.rs"]
mod flows;
#[path = "bench/kubeproxy.rs"]
mod kubeproxy;
#[path = "bench/kubeproxy_rules.rs"]
mod kubeproxy_rules;
#[path = "bench/measure.rs"]
mod measure;
use testbed::packet;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/service_path.rs"]
mod service_path;
#[path = "bench/service_set.rs"]
mod service_set;
#[path = "bench/services.rs"]
mod services;
#[path = "bench/tcp_traffic.rs"]
mod tcp_traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use dataplane_abi::{
    DropReason, PEER_CLASS_WORLD, PassReason, endpoint_flags, programs, v4_mapped,
};
use weir::compile::{self, MapSet};
use weir::dataplane::Dataplane;

use cluster::Cluster;
use measure::{Outcome, Probe, median};
use packet::{ACK, L4, Packet, SYN};
use report::{Case, ConfigReport, ControlPlane, Environment, Report, SingleRounds, Sizes};

/// Rule counts of the configurations, with their short names.
const CONFIGS: [(usize, &str); 3] = [(10, "10"), (10_000, "10k"), (100_000, "100k")];
/// Repetitions of the control-plane measurements.
const CONTROL_RUNS: usize = 3;
/// Source ports of fresh SYNs start here; the primed connections use lower ones.
const FIRST_FRESH_PORT: u16 = 10_000;
/// Source port of the primed (established) connections.
const PRIMED_PORT: u16 = 4_000;
/// Source port of the denied SYN.
const DENIED_SRC_PORT: u16 = 4_001;

/// Command-line options.
struct Options {
    rounds: usize,
    repeat: u32,
    single: usize,
    /// The parts to run.
    parts: BTreeSet<Part>,
    kubeproxy_seconds: f64,
    kubeproxy_scales: Vec<usize>,
    agent_opts: agent::Options,
}

/// A part of the benchmark, as `--only` and `--skip` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// The in-kernel policy path (`BPF_PROG_TEST_RUN`, control plane in process), flow events.
    Kernel,
    /// The Service path in the kernel (`bench/service_path.rs`).
    ServicePath,
    /// Weir against kube-proxy on the whole path (`bench/kubeproxy.rs`).
    KubeProxy,
    /// The agent process.
    Agent,
    /// Compiling and writing 10 000 Services (`bench/services.rs`).
    Services,
}

impl Part {
    const ALL: [Self; 5] = [
        Self::Kernel,
        Self::ServicePath,
        Self::KubeProxy,
        Self::Agent,
        Self::Services,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::ServicePath => "service-path",
            Self::KubeProxy => "kubeproxy",
            Self::Agent => "agent",
            Self::Services => "services",
        }
    }

    /// The part named by `--only` or `--skip`.
    fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("unknown part {name}: one of {}", names.join(", "))
            })
    }
}

impl Options {
    fn parse() -> Result<Self> {
        let mut opts = Self {
            rounds: 9,
            repeat: 250_000,
            single: 3_000,
            parts: Part::ALL.into(),
            kubeproxy_seconds: 2.0,
            kubeproxy_scales: vec![1_000, 10_000],
            agent_opts: agent::Options { changes: 30 },
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut text = || args.next().with_context(|| format!("{flag} needs a value"));
            let mut value = || -> Result<usize> {
                let v = text()?;
                v.parse()
                    .with_context(|| format!("{flag} {v}: not a count"))
            };
            match flag.as_str() {
                "--rounds" => opts.rounds = value()?,
                "--repeat" => opts.repeat = u32::try_from(value()?)?,
                "--single" => opts.single = value()?,
                "--agent-changes" => opts.agent_opts.changes = value()?,
                "--kubeproxy-seconds" => {
                    let v = text()?;
                    opts.kubeproxy_seconds = v
                        .parse()
                        .with_context(|| format!("{flag} {v}: not seconds"))?;
                }
                "--kubeproxy-services" => {
                    let v = text()?;
                    opts.kubeproxy_scales = v
                        .split(',')
                        .map(|n| n.parse().with_context(|| format!("{flag} {v}: not counts")))
                        .collect::<Result<_>>()?;
                }
                "--only" => opts.parts = [Part::parse(&text()?)?].into(),
                "--skip" => {
                    opts.parts.remove(&Part::parse(&text()?)?);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: weir-bench [--rounds N] [--repeat N] [--single N] \
                         [--only PART] [--skip PART] [--agent-changes N]\n\
                         \x20      [--kubeproxy-seconds S] [--kubeproxy-services N,N]\n\
                         parts: kernel, agent, service-path, kubeproxy, services"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other} (try --help)"),
            }
        }
        ensure!(
            opts.rounds >= 1 && opts.repeat >= 1 && opts.single >= 1,
            "counts must be positive"
        );
        // Warm-up plus every round must find fresh source ports.
        let fresh = (opts.rounds + 1) * opts.single;
        ensure!(
            fresh <= usize::from(u16::MAX - FIRST_FRESH_PORT),
            "--rounds × --single is too large: {fresh} fresh source ports needed"
        );
        Ok(opts)
    }
}

/// One configuration, loaded and ready to measure.
struct Bench {
    label: &'static str,
    sizes: Sizes,
    dp: Dataplane,
    probes: Probes,
    rounds: BTreeMap<Case, Vec<f64>>,
    floor: Vec<f64>,
    single: SingleRounds,
    single_all: Vec<f64>,
}

/// The packets of the benchmark.
struct Probes {
    floor: Probe,
    established_pod: Probe,
    established_ipblock: Probe,
    denied: Probe,
    /// A fresh SYN from the pod peer; its frame is replaced by one per fresh source port.
    new_allowed: Probe,
    /// The stage ladder's early leavers.
    non_ip: Probe,
    not_pod_address: Probe,
    node_traffic: Probe,
}

fn tcp_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
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

impl Probes {
    fn new() -> Self {
        let e = cluster::endpoints();
        let to_pod = |frame, outcome| Probe {
            program: programs::TO_POD,
            frame,
            outcome,
        };
        let established = Outcome::Pass(PassReason::Established);
        Self {
            floor: Probe {
                program: programs::FLOOR,
                frame: tcp_frame(
                    e.pod_peer,
                    PRIMED_PORT,
                    e.local,
                    cluster::POD_PEER_PORT,
                    ACK,
                ),
                outcome: Outcome::Floor,
            },
            established_pod: to_pod(
                tcp_frame(
                    e.pod_peer,
                    PRIMED_PORT,
                    e.local,
                    cluster::POD_PEER_PORT,
                    ACK,
                ),
                established,
            ),
            established_ipblock: to_pod(
                tcp_frame(
                    e.ipblock_peer,
                    PRIMED_PORT,
                    e.local,
                    cluster::IPBLOCK_PEER_PORT,
                    ACK,
                ),
                established,
            ),
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
            new_allowed: to_pod(fresh_syn(0), Outcome::Pass(PassReason::PolicyAllowed)),
            non_ip: to_pod(packet::arp_frame(), Outcome::Pass(PassReason::NonIp)),
            not_pod_address: to_pod(
                tcp_frame(
                    e.pod_peer,
                    PRIMED_PORT,
                    e.unknown,
                    cluster::POD_PEER_PORT,
                    SYN,
                ),
                Outcome::Drop(DropReason::NotPodAddress),
            ),
            node_traffic: to_pod(
                tcp_frame(e.host, PRIMED_PORT, e.local, cluster::POD_PEER_PORT, SYN),
                Outcome::Pass(PassReason::NodeTraffic),
            ),
        }
    }
}

/// The `n`-th fresh SYN from the pod peer to the allowed port: a 5-tuple never sent before.
fn fresh_syn(n: usize) -> Vec<u8> {
    let e = cluster::endpoints();
    let port = FIRST_FRESH_PORT + u16::try_from(n).expect("checked by Options::parse");
    tcp_frame(e.pod_peer, port, e.local, cluster::POD_PEER_PORT, SYN)
}

/// The fresh SYNs of calls `first..first + count`.
fn fresh_syns(first: usize, count: usize) -> Vec<Vec<u8>> {
    (first..first + count).map(fresh_syn).collect()
}

/// Map sizes of a compiled configuration.
fn sizes(cluster: &Cluster, maps: &MapSet) -> Sizes {
    Sizes {
        policies: cluster.state.policies.len(),
        rules: cluster::count_rules(&cluster.state),
        policy_entries: maps.policy.len(),
        measured_entries: maps
            .policy
            .keys()
            .filter(|k| k.endpoint == cluster::MEASURED_IFINDEX)
            .count(),
        peer_classes: maps.peer_classes,
        cidr_prefixes: maps.cidrs.len(),
        endpoints: maps.endpoints.len(),
        local_pods: maps.local_pods.len(),
    }
}

fn compile_cluster(cluster: &Cluster) -> Result<MapSet> {
    compile::compile(&cluster.state, &cluster.node).context("compiling the generated cluster")
}

fn load() -> Result<Dataplane> {
    Dataplane::load().context("loading the eBPF programs (verifier)")
}

/// Process peak resident set size, in KiB (`ru_maxrss`).
fn peak_rss_kib() -> Result<u64> {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    ensure!(rc == 0, "getrusage: {}", std::io::Error::last_os_error());
    Ok(u64::try_from(usage.ru_maxrss)?)
}

/// Compiles the largest configuration and writes it into fresh maps, [`CONTROL_RUNS`] times
/// each. Runs first, so that the peak RSS reflects this work. Returns the compiled maps for
/// reuse by the packet benchmark.
fn control_plane(cluster: &Cluster) -> Result<(ControlPlane, MapSet)> {
    let mut compile_times = Vec::new();
    let mut maps = MapSet::default();
    for _ in 0..CONTROL_RUNS {
        let started = Instant::now();
        maps = compile_cluster(cluster)?;
        compile_times.push(started.elapsed());
    }
    let mut program_load = Vec::new();
    let mut sync = Vec::new();
    for _ in 0..CONTROL_RUNS {
        let started = Instant::now();
        let mut dp = load()?;
        program_load.push(started.elapsed());
        let started = Instant::now();
        dp.sync_maps(&maps).context("writing the maps")?;
        sync.push(started.elapsed());
    }
    let control = ControlPlane {
        sizes: sizes(cluster, &maps),
        pods: cluster.state.pods.len(),
        compile: compile_times,
        program_load,
        sync,
        peak_rss_kib: peak_rss_kib()?,
    };
    Ok((control, maps))
}

/// Checks that the measured packets meet policy: the measured pod is ingress-isolated and
/// has entries of its own, and both peers have a class of their own (not the world's).
fn check_measured_path(maps: &MapSet) -> Result<()> {
    let e = cluster::endpoints();
    let local = maps
        .endpoints
        .get(&compile::to_addr(e.local))
        .context("the measured pod has no endpoint entry")?;
    ensure!(
        local.endpoint == cluster::MEASURED_IFINDEX
            && local.flags & endpoint_flags::INGRESS_ISOLATED != 0,
        "the measured pod is not an ingress-isolated pod behind ifindex 1: {local:?}"
    );
    let pod_peer = maps
        .endpoints
        .get(&compile::to_addr(e.pod_peer))
        .context("the pod peer has no endpoint entry")?;
    ensure!(
        pod_peer.peer_class != PEER_CLASS_WORLD,
        "the pod peer has the world's class"
    );
    let IpAddr::V4(v4) = e.ipblock_peer else {
        bail!("the ipBlock peer is IPv4");
    };
    let [a, b, c, _] = v4.octets();
    let block = (96 + 24, v4_mapped([a, b, c, 0]));
    ensure!(
        maps.cidrs
            .get(&block)
            .is_some_and(|info| info.peer_class != PEER_CLASS_WORLD),
        "the ipBlock peer's /24 is not in the trie with a class of its own"
    );
    Ok(())
}

impl Bench {
    /// Loads `maps` into a fresh dataplane and opens the two connections the established
    /// packets belong to.
    fn new(label: &'static str, sizes: Sizes, maps: &MapSet) -> Result<Self> {
        check_measured_path(maps).with_context(|| format!("{label} rules"))?;
        let mut dp = load()?;
        dp.sync_maps(maps).context("writing the maps")?;
        let probes = Probes::new();
        let e = cluster::endpoints();
        for (peer, port) in [
            (e.pod_peer, cluster::POD_PEER_PORT),
            (e.ipblock_peer, cluster::IPBLOCK_PEER_PORT),
        ] {
            let syn = Probe {
                frame: tcp_frame(peer, PRIMED_PORT, e.local, port, SYN),
                ..probes.new_allowed.clone()
            };
            measure::bulk(&mut dp, &syn, 1)
                .with_context(|| format!("opening the connection from {peer} to port {port}"))?;
        }
        Ok(Self {
            label,
            sizes,
            dp,
            probes,
            rounds: BTreeMap::new(),
            floor: Vec::new(),
            single: SingleRounds::default(),
            single_all: Vec::new(),
        })
    }

    /// The bulk-measured packets, in the order of round `round`.
    fn bulk_cases(&self, round: usize) -> Vec<(Option<Case>, Probe)> {
        let p = &self.probes;
        let mut cases = vec![
            (None, p.floor.clone()),
            (Some(Case::EstablishedPod), p.established_pod.clone()),
            (
                Some(Case::EstablishedIpBlock),
                p.established_ipblock.clone(),
            ),
            (Some(Case::NewDenied), p.denied.clone()),
            (Some(Case::NonIp), p.non_ip.clone()),
            (Some(Case::NotPodAddress), p.not_pod_address.clone()),
            (Some(Case::NodeTraffic), p.node_traffic.clone()),
        ];
        let len = cases.len();
        cases.rotate_left(round % len);
        cases
    }

    /// One round: every bulk case, then the single runs; `record` false for the warm-up.
    fn round(&mut self, round: usize, repeat: u32, fresh: &[Vec<u8>], record: bool) -> Result<()> {
        let mut bulk = BTreeMap::new();
        let mut floor = f64::NAN;
        for (case, probe) in self.bulk_cases(round) {
            let ns = measure::bulk(&mut self.dp, &probe, repeat)
                .with_context(|| format!("{} rules, {case:?}", self.label))?;
            match case {
                Some(case) => {
                    bulk.insert(case, ns);
                }
                None => floor = ns,
            }
        }
        let p = &self.probes;
        let single = measure::single_runs(
            &mut self.dp,
            &p.floor,
            &p.established_pod,
            &p.new_allowed,
            fresh,
        )
        .with_context(|| format!("{} rules, new flows", self.label))?;
        if !record {
            return Ok(());
        }
        let (s_floor, s_est, s_new) = (
            median(&single.floor),
            median(&single.established),
            median(&single.new),
        );
        // New flow, bulk terms: what the established packet costs in bulk, plus what a new
        // flow costs more than an established one when both are sent one per call.
        bulk.insert(
            Case::NewAllowed,
            bulk[&Case::EstablishedPod] + (s_new - s_est),
        );
        for (case, ns) in bulk {
            self.rounds.entry(case).or_default().push(ns);
        }
        self.floor.push(floor);
        self.single.floor.push(s_floor);
        self.single.established.push(s_est);
        self.single.new.push(s_new);
        self.single_all.extend(
            single
                .floor
                .iter()
                .chain(&single.established)
                .chain(&single.new),
        );
        Ok(())
    }

    fn into_report(self) -> ConfigReport {
        ConfigReport {
            label: self.label,
            sizes: self.sizes,
            rounds: self.rounds,
            single: self.single,
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

fn environment(opts: &Options) -> Environment {
    Environment {
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        clocksource: read_trimmed(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        ),
        rounds: opts.rounds,
        repeat: opts.repeat,
        single_runs: opts.single,
    }
}

/// Builds every configuration (the largest from the control-plane run's maps).
fn benches(largest: &Cluster, largest_maps: &MapSet) -> Result<Vec<Bench>> {
    let mut out = Vec::new();
    for (rules, label) in CONFIGS {
        eprintln!("weir-bench: loading {label} rules");
        let bench = if rules == CONFIGS[CONFIGS.len() - 1].0 {
            Bench::new(label, sizes(largest, largest_maps), largest_maps)?
        } else {
            let cluster = cluster::generate(rules);
            let maps = compile_cluster(&cluster)?;
            Bench::new(label, sizes(&cluster, &maps), &maps)?
        };
        out.push(bench);
    }
    Ok(out)
}

/// A warm-up round, then the measured rounds; configurations in rotating order.
fn measure_all(benches: &mut [Bench], opts: &Options) -> Result<()> {
    let mut next_fresh = 0;
    for round in 0..=opts.rounds {
        let record = round > 0;
        // The warm-up is a tenth of a round: enough to fault in code, maps and caches.
        let repeat = if record {
            opts.repeat
        } else {
            opts.repeat / 10 + 1
        };
        let count = if record {
            opts.single
        } else {
            opts.single / 10 + 1
        };
        eprintln!(
            "weir-bench: round {round}/{}{}",
            opts.rounds,
            if record { "" } else { " (warm-up)" }
        );
        let fresh = fresh_syns(next_fresh, count);
        next_fresh += count;
        let len = benches.len();
        for i in 0..len {
            benches[(i + round) % len].round(round, repeat, &fresh, record)?;
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    let opts = Options::parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF_PROG_TEST_RUN, map creation, network namespaces)");
    }
    let started = Instant::now();
    let mut keys = Vec::new();
    if opts.parts.contains(&Part::Kernel) {
        let report = kernel_part(&opts)?;
        print!("{}", report.render_tables());
        keys.extend(report.keys());
        let flows = flows::run(opts.rounds, opts.repeat, opts.single)?;
        print!("{}", flows.render());
        keys.extend(flows.keys());
    }
    if opts.parts.contains(&Part::ServicePath) {
        let report = service_path::run(&service_path::Options {
            rounds: opts.rounds,
            repeat: opts.repeat,
            single: opts.single,
        })?;
        print!("{}", report.render());
        keys.extend(report.keys());
    }
    if opts.parts.contains(&Part::KubeProxy) {
        kubeproxy::check_tools()?;
        let report = kubeproxy::run(&kubeproxy::Options {
            rounds: opts.rounds,
            seconds: opts.kubeproxy_seconds,
            scales: opts.kubeproxy_scales.clone(),
        })?;
        print!("{}", report.render());
        keys.extend(report.keys());
    }
    if opts.parts.contains(&Part::Agent) {
        let env = environment(&opts);
        println!("weir-bench agent: kernel {}, {} CPUs", env.kernel, env.cpus);
        let report = agent::run(opts.agent_opts)?;
        print!("{}", report.render());
        keys.extend(report.keys());
    }
    if opts.parts.contains(&Part::Services) {
        let report = services::run(opts.rounds)?;
        print!("{}", report.render());
        keys.extend(report.keys());
    }
    print!("{}", report::render_keys(&keys));
    eprintln!(
        "weir-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The in-kernel part: the packet benchmark and the in-process control plane.
fn kernel_part(opts: &Options) -> Result<Report> {
    let env = environment(opts);
    let (largest_rules, _) = CONFIGS[CONFIGS.len() - 1];
    eprintln!("weir-bench: generating {largest_rules} rules, compiling and loading them");
    let largest = cluster::generate(largest_rules);
    let (control, largest_maps) = control_plane(&largest)?;
    let mut benches = benches(&largest, &largest_maps)?;
    drop(largest_maps);
    measure_all(&mut benches, opts)?;
    let mut floor = Vec::new();
    let mut single_all = Vec::new();
    for b in &benches {
        floor.extend(&b.floor);
        single_all.extend(&b.single_all);
    }
    Ok(Report {
        env,
        floor,
        granularity: measure::granularity(&single_all),
        configs: benches.into_iter().map(Bench::into_report).collect(),
        control,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weir-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
