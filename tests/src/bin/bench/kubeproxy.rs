//! Weir against kube-proxy on the whole path: TCP connections and requests from a pod through
//! a `ClusterIP` to backend pods, with 1 000 and 10 000 Services of 10 endpoints programmed by
//! Weir, or as kube-proxy's iptables mode, or its nftables mode, would program them (see
//! `bench/kubeproxy_rules.rs`), and the same traffic with no Services at all, straight to the
//! backend pods: the baseline of every ratio.
//!
//! # Set-up
//!
//! Each configuration gets a one-node test bed of its own (testbed's `Topology`: Calico-style
//! veths from pods to a node namespace): a client pod and 10 backend pods, each serving TCP on
//! ten ports. Identical beds side by side, rather than one bed reprogrammed, because
//! programming 10 000 Services takes kube-proxy's rules half a minute (iptables-restore) to
//! minutes (nft -f) here, far too long to do again in every round of a rotation; and no
//! configuration inherits another's leftovers (conntrack entries, tables). The kube-proxy rules
//! run in the node namespace of their bed only (`nsenter --net`). Every bed runs
//! Weir's programs on every pod's veth (loaded and attached in this process, as the agent does),
//! because the pod network under kube-proxy would be enforced by some CNI too: in the iptables,
//! nftables and no-Services beds Weir's maps hold the pods but no Service, so the ratios show
//! what Services cost on top of the same pod network. Of the 1 000 or 10 000 Services, 10 are
//! backed by the bed's backend pods, each on a target port of its own (8080 to 8089: distinct
//! Services rarely share a pod's port, see below); they sit at 5 %, 15 %, … 95 % of
//! kube-proxy's `KUBE-SERVICES` chain (kube-proxy's order is Go's map order: random), and the
//! client takes them in turn, so the iptables figure is that of an average position. The
//! baseline takes backend `k` on port `8080 + k` in turn, the same ten destinations. The other
//! Services' endpoints are addresses of no pod, never contacted.
//!
//! Why distinct ports: with Weir, two Services that share an endpoint `pod:port` translate a
//! client's connections from one source port to the same backend tuple, and when the client's
//! kernel reuses that port for the second Service while the first connection's entries are
//! still closing, the reply is translated back to the first Service's address and the new
//! connection never completes (about 1 % of connections here when ten Services shared their
//! endpoints; netfilter's NAT avoids it by giving the clashing connection another source port).
//! That is a defect to fix in Weir, not a cost to measure.
//!
//! # Method
//!
//! Per configuration and round: expired Weir conntrack entries collected (as the agent does
//! every 10 s), a short warm-up, then for `seconds` a tight loop in the client pod (connect,
//! send a 32-byte request, read the reply, close) over the 10 `ClusterIP`s (the
//! 10 backends, for the baseline); then for `seconds / 2` a ping-pong of the same request on
//! one established connection: requests per second, and the median and 99th percentile round
//! trip. Client and servers share one CPU (see `bench/tcp_traffic.rs`). Configurations run in
//! an order that rotates from round to round; a warm-up round is
//! thrown away; the report gives the median of the rounds, and every ratio is the median of
//! the per-round ratios (a configuration against the baseline measured in the same round).
//!
//! Every figure belongs to its path: a `ClusterIP` is routed nowhere in these namespaces, so a
//! completed connection was translated by the bed's own Service implementation, the only one it
//! holds. After every timed loop: Weir dropped nothing and saw every connection as new at both
//! veths (its `not_isolated` counter moved at least twice per connection); the node namespace's
//! netfilter conntrack table is empty in the Weir and baseline beds (no kube-proxy rule touched
//! a packet) and holds at least one entry per connection in the iptables and nftables beds.
//!
//! Programming times: `iptables-restore` and `nft -f` of the whole ruleset into the empty node
//! namespace, and Weir's compile and map writes of the same Services into fresh maps; one run
//! each, during set-up (the `services` section times Weir's control plane in detail).
//! kube-proxy itself runs `iptables-restore --noflush`, because it shares the tables with other
//! programs. With the `nf_tables` backend (iptables 1.8.9 here) that mode grows with the square
//! of the input: 1 000 Services took 8 s against 1 s without it, 3 000 took 91 s against 3 s,
//! and 10 000 were still being parsed after 14 minutes. The beds own their tables, so the
//! restore replaces them whole: the same rules, loaded in linear time, a lower bound on what
//! kube-proxy's own call takes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use dataplane_abi::PassReason;
use testbed::{Family, Netns, PodSpec, Topology};
use weir::compile;
use weir::dataplane::{Counters, Dataplane};
use weir::model::{DesiredState, Pod};

use crate::kubeproxy_rules::{self, ClusterNet};
use crate::measure::median;
use crate::service_set::{self, ENDPOINTS_PER_SERVICE, SERVICE_PORT, ServiceSpec, TARGET_PORT};

/// Target port of measured Service `k`, and the baseline's port on backend `k`.
fn measured_port(k: usize) -> u16 {
    TARGET_PORT + u16::try_from(k).expect("ten measured Services")
}
use crate::tcp_traffic::{self, Servers};

/// Pods' namespace in the beds.
const NAMESPACE: &str = "kp";
/// Measured Services per configuration, spread over the Service list.
const MEASURED: usize = 10;
/// The addresses kube-proxy's rules name. The pod CIDR holds the test bed's pods (10.99/16)
/// and the endpoints of other nodes (10.100/16).
const NET: ClusterNet = ClusterNet {
    pod_cidr: "10.96.0.0/12",
    service_cidr: "172.30.0.0/16",
    node_ip: testbed::NODE_IPV4,
};
/// Service `i` has `ClusterIP` `CLUSTER_IP_BASE + i`.
const CLUSTER_IP_BASE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// Endpoints of the Services nobody connects to: pods of other nodes, by address only.
const REMOTE_ENDPOINT_BASE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// Most Services a bed can hold: the Service CIDR's addresses.
const MAX_SERVICES: usize = 65_000;
/// Target set by the issue, at the largest Service count: connection rate through a
/// `ClusterIP` with Weir against the baseline.
const CONNECTION_TARGET: f64 = 0.95;
/// The same for requests on established connections.
const REQUEST_TARGET: f64 = 0.97;

/// How the section runs.
pub struct Options {
    pub rounds: usize,
    /// Seconds of the connection loop per configuration and round (the ping-pong runs half).
    pub seconds: f64,
    /// Service counts to compare at (1 000 and 10 000 by default).
    pub scales: Vec<usize>,
}

/// Who implements Services in a bed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// No Services: the client connects straight to the backend pods.
    NoServices,
    Weir,
    Iptables,
    Nftables,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::NoServices => "no Services (straight to pods)",
            Self::Weir => "Weir",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::NoServices => "none",
            Self::Weir => "weir",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }

    /// Whether kube-proxy's rules, and so netfilter's conntrack, handle its packets.
    fn uses_netfilter(self) -> bool {
        matches!(self, Self::Iptables | Self::Nftables)
    }
}

/// One configuration: a Service implementation at a number of Services. Ordered by the
/// number of Services first, as the report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Config {
    services: usize,
    mode: Mode,
}

impl Config {
    const BASELINE: Self = Self {
        mode: Mode::NoServices,
        services: 0,
    };

    fn label(self) -> String {
        match self.mode {
            Mode::NoServices => self.mode.label().to_owned(),
            mode => format!("{}, {} Services", mode.label(), self.services),
        }
    }

    fn key(self) -> String {
        match self.mode {
            Mode::NoServices => self.mode.key().to_owned(),
            mode => format!("{}_{}", mode.key(), self.services),
        }
    }
}

/// How long programming took, during set-up.
#[derive(Clone, Copy, Debug, Default)]
struct Programming {
    /// `iptables-restore` or `nft -f` of the whole ruleset.
    rules: Option<Duration>,
    /// Weir's compile and `sync_maps` into fresh maps (Weir beds).
    weir_compile: Option<Duration>,
    weir_sync: Option<Duration>,
}

/// A configuration's bed. Fields drop in order: servers (their threads hold the pod
/// namespaces), then Weir's programs, then the namespaces.
struct Bed {
    config: Config,
    _servers: Servers,
    dp: Dataplane,
    topology: Topology,
    /// Where the client connects, in turn.
    targets: Vec<SocketAddr>,
    programming: Programming,
}

/// What one configuration measured in one round.
#[derive(Clone, Copy, Debug)]
struct Figures {
    connections_per_s: f64,
    requests_per_s: f64,
    rtt_p50_ns: f64,
    rtt_p99_ns: f64,
}

fn client_id() -> String {
    format!("{NAMESPACE}/client")
}

fn pod_specs() -> Vec<PodSpec> {
    std::iter::once(PodSpec::new(NAMESPACE, "client").label("app", "client"))
        .chain(
            (0..ENDPOINTS_PER_SERVICE)
                .map(|i| PodSpec::new(NAMESPACE, &format!("backend-{i}")).label("app", "backend")),
        )
        .map(|spec| spec.serving(Vec::new()))
        .collect()
}

/// Where the `MEASURED` Services sit in a list of `count`: the middles of ten equal slices.
fn measured_indexes(count: usize) -> Vec<usize> {
    (0..MEASURED)
        .map(|k| (2 * k + 1) * count / (2 * MEASURED))
        .collect()
}

/// `count` Services; the measured ones are backed by `backends`, each on its own port, the
/// others by remote addresses.
fn services(count: usize, backends: &[Ipv4Addr]) -> Vec<ServiceSpec> {
    if count == 0 {
        return Vec::new();
    }
    let measured = measured_indexes(count);
    let mut specs = service_set::generate(
        count,
        |i| service_set::nth_address(CLUSTER_IP_BASE, i),
        |i| {
            if measured.contains(&i) {
                backends.to_vec()
            } else {
                (0..ENDPOINTS_PER_SERVICE)
                    .map(|j| {
                        service_set::nth_address(
                            REMOTE_ENDPOINT_BASE,
                            i * ENDPOINTS_PER_SERVICE + j,
                        )
                    })
                    .collect()
            }
        },
    );
    for (k, i) in measured.into_iter().enumerate() {
        specs[i].target_port = measured_port(k);
    }
    specs
}

/// The bed's pods, and `services` for Weir to program.
fn state(topology: &Topology, services: &[ServiceSpec]) -> DesiredState {
    let pods = topology
        .pods()
        .iter()
        .map(|p| {
            Arc::new(Pod {
                namespace: p.spec().namespace.clone(),
                name: p.spec().name.clone(),
                labels: p.spec().labels.clone(),
                ips: p.ips().to_vec(),
                ..Pod::default()
            })
        })
        .collect();
    let (services, endpoint_slices) = service_set::to_model(services);
    DesiredState {
        pods,
        services,
        endpoint_slices,
        ..DesiredState::default()
    }
}

/// Runs `program args` in `netns`'s network namespace only, with `input` on its standard
/// input; how long it took.
fn run_in(netns: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("piped stdin")?;
    stdin
        .write_all(input.as_bytes())
        .with_context(|| format!("writing {program}'s input"))?;
    drop(stdin);
    let output = child.wait_with_output()?;
    let took = started.elapsed();
    ensure!(
        output.status.success(),
        "{program} {} in {}: {}",
        args.join(" "),
        netns.name(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(took)
}

/// The backend pods of a bed, with their IPv4 addresses.
fn backends(topology: &Topology) -> Vec<(&testbed::Pod, Ipv4Addr)> {
    topology
        .pods()
        .iter()
        .filter(|p| p.spec().labels.get("app").is_some_and(|a| a == "backend"))
        .filter_map(|p| match p.ip(Family::V4) {
            IpAddr::V4(v4) => Some((p, v4)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Weir's programs with the bed's pods and `services` in their maps, attached to every veth of
/// the bed, as the agent would have them; and how long compiling and writing the maps took.
fn load_weir(
    topology: &Topology,
    services: &[ServiceSpec],
) -> Result<(Dataplane, Duration, Duration)> {
    let view = super::agent::node_view(topology)?;
    let started = Instant::now();
    let maps =
        compile::compile(&state(topology, services), &view).context("compiling the bed's state")?;
    let compile_time = started.elapsed();
    ensure!(
        maps.services.counts().frontends == services.len(),
        "{} Services compiled to {} frontends",
        services.len(),
        maps.services.counts().frontends
    );
    let mut dp = Dataplane::load().context("loading the eBPF programs (verifier)")?;
    let started = Instant::now();
    dp.sync_maps(&maps).context("writing the maps")?;
    let sync_time = started.elapsed();
    let (attached, _) = topology.node().run(|| dp.sync_attachments(&maps));
    ensure!(
        attached == topology.pods().len(),
        "Weir attached to {attached} of {} veths",
        topology.pods().len()
    );
    Ok((dp, compile_time, sync_time))
}

/// The CPU the servers and clients share (see `bench/tcp_traffic.rs`): the last one.
fn traffic_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// Entries of the netfilter conntrack table of `netns`.
fn nf_conntrack_count(netns: &Netns) -> Result<u64> {
    let text = netns
        .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))
        .context("reading nf_conntrack_count")?;
    text.trim()
        .parse()
        .with_context(|| format!("nf_conntrack_count {text:?}"))
}

impl Bed {
    fn build(config: Config) -> Result<Self> {
        let topology = Topology::builder().pods(pod_specs()).build();
        // Each connection leaves its port in TIME_WAIT for a minute: give the loop all ports.
        topology
            .pod(&client_id())
            .netns()
            .sysctl("net/ipv4/ip_local_port_range", "1024 65535");
        let backends = backends(&topology);
        let servers = Servers::start(
            backends.iter().map(|(pod, ip)| {
                let ports =
                    (0..MEASURED).map(|k| SocketAddr::new(IpAddr::V4(*ip), measured_port(k)));
                (pod.netns(), ports.collect())
            }),
            traffic_cpu(),
        )?;
        let backend_ips: Vec<Ipv4Addr> = backends.iter().map(|(_, ip)| *ip).collect();
        let specs = services(config.services, &backend_ips);
        let mut programming = Programming::default();
        let dp = if config.mode == Mode::Weir {
            let (dp, compile, sync) = load_weir(&topology, &specs)?;
            (programming.weir_compile, programming.weir_sync) = (Some(compile), Some(sync));
            dp
        } else {
            load_weir(&topology, &[])?.0
        };
        programming.rules = match config.mode {
            Mode::Iptables => Some(run_in(
                topology.node(),
                "iptables-restore",
                &[],
                &kubeproxy_rules::iptables(&specs, &NET),
            )?),
            Mode::Nftables => Some(run_in(
                topology.node(),
                "nft",
                &["-f", "-"],
                &kubeproxy_rules::nftables(&specs, &NET),
            )?),
            Mode::NoServices | Mode::Weir => None,
        };
        let targets = if config.mode == Mode::NoServices {
            backend_ips
                .iter()
                .enumerate()
                .map(|(k, ip)| SocketAddr::new(IpAddr::V4(*ip), measured_port(k)))
                .collect()
        } else {
            measured_indexes(config.services)
                .into_iter()
                .map(|i| SocketAddr::new(IpAddr::V4(specs[i].cluster_ip), SERVICE_PORT))
                .collect()
        };
        Ok(Self {
            config,
            _servers: servers,
            dp,
            topology,
            targets,
            programming,
        })
    }

    /// One round: warm-up, the connection loop (path checked), the ping-pong. Expired
    /// conntrack entries are collected first, as the agent's collector does every 10 s: the
    /// connections of the bed's last round would otherwise fill the table, and every insert
    /// would evict.
    fn measure(&mut self, seconds: f64) -> Result<Figures> {
        self.dp
            .collect_conntrack()
            .context("collecting expired conntrack entries")?;
        let targets = &self.targets;
        self.in_client(|| {
            tcp_traffic::connection_loop(targets, Duration::from_secs_f64(seconds / 10.0))
        })?;
        let before = self.dp.counters()?;
        let done = self.in_client(|| {
            tcp_traffic::connection_loop(targets, Duration::from_secs_f64(seconds))
        })?;
        let after = self.dp.counters()?;
        self.check_path(&before, &after, done.connections)?;
        let rtts = self.in_client(|| {
            tcp_traffic::ping_pong(targets[0], Duration::from_secs_f64(seconds / 2.0))
        })?;
        ensure!(!rtts.is_empty(), "no request completed");
        let mut sorted = rtts.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let requests_per_s = rtts.len() as f64 / (rtts.iter().sum::<f64>() / 1e9);
        Ok(Figures {
            connections_per_s: done.per_second(),
            requests_per_s,
            rtt_p50_ns: median(&rtts),
            rtt_p99_ns: p99,
        })
    }

    /// Runs `f` in the client pod, on the servers' CPU.
    fn in_client<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.topology.pod(&client_id()).netns().run(|| {
            tcp_traffic::pin(traffic_cpu()).context("pinning the client to the servers' CPU")?;
            f()
        })
    }

    /// See the module doc: the connections took this bed's Service implementation.
    fn check_path(&self, before: &Counters, after: &Counters, connections: u64) -> Result<()> {
        let label = self.config.label();
        let sum = |c: &Counters| c.dropped.values().sum::<u64>();
        let dropped = sum(after) - sum(before);
        ensure!(dropped == 0, "{label}: Weir dropped {dropped} packets");
        let name = PassReason::NotIsolated.name();
        let new = after.passed.get(name).copied().unwrap_or(0)
            - before.passed.get(name).copied().unwrap_or(0);
        ensure!(
            new >= 2 * connections,
            "{label}: Weir saw {new} new flows for {connections} connections"
        );
        let tracked = nf_conntrack_count(self.topology.node())?;
        if self.config.mode.uses_netfilter() {
            ensure!(
                tracked >= connections,
                "{label}: {connections} connections but {tracked} netfilter conntrack entries: \
                 the rules did not see them"
            );
        } else {
            ensure!(
                tracked == 0,
                "{label}: {tracked} netfilter conntrack entries in a bed without kube-proxy rules"
            );
        }
        Ok(())
    }
}

/// Runs the section: builds every bed, then the rounds.
pub fn run(opts: &Options) -> Result<KubeProxyReport> {
    ensure!(
        opts.seconds > 0.0,
        "the connection loop needs a positive duration"
    );
    for &n in &opts.scales {
        ensure!(
            (MEASURED..=MAX_SERVICES).contains(&n),
            "{n} Services: between {MEASURED} and {MAX_SERVICES}"
        );
    }
    let mut configs = vec![Config::BASELINE];
    for &services in &opts.scales {
        for mode in [Mode::Weir, Mode::Iptables, Mode::Nftables] {
            configs.push(Config { services, mode });
        }
    }
    let mut beds = Vec::new();
    for config in configs {
        eprintln!("weir-bench: kube-proxy: setting up {}", config.label());
        beds.push(Bed::build(config).with_context(|| config.label())?);
    }
    let mut rounds: BTreeMap<Config, Vec<Figures>> = BTreeMap::new();
    for round in 0..=opts.rounds {
        let record = round > 0;
        eprintln!(
            "weir-bench: kube-proxy, round {round}/{}{}",
            opts.rounds,
            if record { "" } else { " (warm-up)" }
        );
        let seconds = if record {
            opts.seconds
        } else {
            opts.seconds / 4.0
        };
        let len = beds.len();
        for i in 0..len {
            let bed = &mut beds[(i + round) % len];
            let figures = bed
                .measure(seconds)
                .with_context(|| format!("{}, round {round}", bed.config.label()))?;
            if record {
                rounds.entry(bed.config).or_default().push(figures);
            }
        }
    }
    let programming = beds.iter().map(|b| (b.config, b.programming)).collect();
    eprintln!("weir-bench: kube-proxy: tearing the beds down");
    drop(beds);
    Ok(KubeProxyReport {
        rounds: opts.rounds,
        seconds: opts.seconds,
        scales: opts.scales.clone(),
        figures: rounds,
        programming,
        iptables: tool_version("iptables-restore"),
        nft: tool_version("nft"),
    })
}

fn tool_version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{program}: version unknown"))
}

/// The section's figures.
pub struct KubeProxyReport {
    rounds: usize,
    seconds: f64,
    scales: Vec<usize>,
    figures: BTreeMap<Config, Vec<Figures>>,
    programming: BTreeMap<Config, Programming>,
    iptables: String,
    nft: String,
}

/// A figure of [`Figures`].
type Pick = fn(&Figures) -> f64;

const CONNECTIONS: Pick = |f| f.connections_per_s;
const REQUESTS: Pick = |f| f.requests_per_s;

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target { "PASS" } else { "MISS" }
}

fn seconds_text(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl KubeProxyReport {
    fn median(&self, config: Config, pick: Pick) -> f64 {
        let values: Vec<f64> = self.figures[&config].iter().map(pick).collect();
        median(&values)
    }

    /// Median over rounds of `a / b`, both measured in the same round.
    fn ratio(&self, a: Config, b: Config, pick: Pick) -> f64 {
        let per_round: Vec<f64> = self.figures[&a]
            .iter()
            .zip(&self.figures[&b])
            .map(|(x, y)| pick(x) / pick(y))
            .collect();
        median(&per_round)
    }

    fn configs(&self) -> impl Iterator<Item = Config> + '_ {
        self.figures.keys().copied()
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kube-proxy comparison: TCP from a pod through a ClusterIP to {ENDPOINTS_PER_SERVICE} \
             backend pods on one node, Weir's\npolicy programs on every veth; median of {} rounds \
             ({:.1} s of connections, {:.1} s of requests per\nconfiguration and round); x none: \
             median of the per-round ratios to no Services.\n{} / {}",
            self.rounds,
            self.seconds,
            self.seconds / 2.0,
            self.iptables,
            self.nft
        );
        let _ = writeln!(
            out,
            "{:<40}{:>10}{:>8}{:>11}{:>8}{:>10}{:>10}",
            "configuration", "conn/s", "x none", "req/s", "x none", "p50 us", "p99 us"
        );
        for c in self.configs() {
            let _ = writeln!(
                out,
                "{:<40}{:>10.0}{:>7.2}x{:>11.0}{:>7.2}x{:>10.1}{:>10.1}",
                c.label(),
                self.median(c, CONNECTIONS),
                self.ratio(c, Config::BASELINE, CONNECTIONS),
                self.median(c, REQUESTS),
                self.ratio(c, Config::BASELINE, REQUESTS),
                self.median(c, |f| f.rtt_p50_ns) / 1e3,
                self.median(c, |f| f.rtt_p99_ns) / 1e3,
            );
        }
        out.push('\n');
        self.render_comparisons(&mut out);
        self.render_programming(&mut out);
        out
    }

    fn render_comparisons(&self, out: &mut String) {
        for &n in &self.scales {
            let weir = Config {
                mode: Mode::Weir,
                services: n,
            };
            for other in [Mode::Iptables, Mode::Nftables] {
                let other = Config {
                    mode: other,
                    services: n,
                };
                let _ = writeln!(
                    out,
                    "{n} Services, Weir / {}: connections {:.2}x, requests {:.2}x",
                    other.mode.label(),
                    self.ratio(weir, other, CONNECTIONS),
                    self.ratio(weir, other, REQUESTS)
                );
            }
        }
        if let Some(&n) = self.scales.iter().max() {
            let weir = Config {
                mode: Mode::Weir,
                services: n,
            };
            let conn = self.ratio(weir, Config::BASELINE, CONNECTIONS);
            let req = self.ratio(weir, Config::BASELINE, REQUESTS);
            let _ = writeln!(
                out,
                "Weir at {n} Services against no Services: connections {conn:.2}x {} (target >= \
                 {CONNECTION_TARGET}x), requests {req:.2}x {} (target >= {REQUEST_TARGET}x)",
                verdict(conn, CONNECTION_TARGET),
                verdict(req, REQUEST_TARGET)
            );
        }
        out.push('\n');
    }

    fn render_programming(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Programming the Services from scratch (one run each, during set-up):\n{:>10}{:>20}{:>12}{:>16}{:>16}",
            "Services", "iptables-restore", "nft -f", "Weir compile", "Weir sync_maps"
        );
        for &n in &self.scales {
            let of = |mode| self.programming.get(&Config { mode, services: n });
            let _ = writeln!(
                out,
                "{n:>10}{:>20}{:>12}{:>16}{:>16}",
                seconds_text(of(Mode::Iptables).and_then(|p| p.rules)),
                seconds_text(of(Mode::Nftables).and_then(|p| p.rules)),
                seconds_text(of(Mode::Weir).and_then(|p| p.weir_compile)),
                seconds_text(of(Mode::Weir).and_then(|p| p.weir_sync)),
            );
        }
        out.push('\n');
    }

    /// `key=value` figures for scripts.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut kv = vec![("kubeproxy_rounds".to_owned(), self.rounds.to_string())];
        for c in self.configs() {
            let k = format!("kubeproxy_{}", c.key());
            kv.push((
                format!("{k}_conn_per_s"),
                format!("{:.0}", self.median(c, CONNECTIONS)),
            ));
            kv.push((
                format!("{k}_conn_x_none"),
                format!("{:.3}", self.ratio(c, Config::BASELINE, CONNECTIONS)),
            ));
            kv.push((
                format!("{k}_req_per_s"),
                format!("{:.0}", self.median(c, REQUESTS)),
            ));
            kv.push((
                format!("{k}_req_x_none"),
                format!("{:.3}", self.ratio(c, Config::BASELINE, REQUESTS)),
            ));
            kv.push((
                format!("{k}_rtt_p50_us"),
                format!("{:.1}", self.median(c, |f| f.rtt_p50_ns) / 1e3),
            ));
            kv.push((
                format!("{k}_rtt_p99_us"),
                format!("{:.1}", self.median(c, |f| f.rtt_p99_ns) / 1e3),
            ));
        }
        for &n in &self.scales {
            let weir = Config {
                mode: Mode::Weir,
                services: n,
            };
            for other in [Mode::Iptables, Mode::Nftables] {
                let o = Config {
                    mode: other,
                    services: n,
                };
                for (what, pick) in [("conn", CONNECTIONS), ("req", REQUESTS)] {
                    kv.push((
                        format!("kubeproxy_weir_over_{}_{n}_{what}", other.key()),
                        format!("{:.3}", self.ratio(weir, o, pick)),
                    ));
                }
            }
            for (mode, label) in [
                (Mode::Iptables, "iptables_restore"),
                (Mode::Nftables, "nft"),
            ] {
                if let Some(d) = self
                    .programming
                    .get(&Config { mode, services: n })
                    .and_then(|p| p.rules)
                {
                    kv.push((
                        format!("kubeproxy_program_{label}_{n}_s"),
                        format!("{:.2}", d.as_secs_f64()),
                    ));
                }
            }
        }
        if let Some(&n) = self.scales.iter().max() {
            let weir = Config {
                mode: Mode::Weir,
                services: n,
            };
            let conn = self.ratio(weir, Config::BASELINE, CONNECTIONS);
            let req = self.ratio(weir, Config::BASELINE, REQUESTS);
            kv.push((
                "kubeproxy_conn_verdict".to_owned(),
                verdict(conn, CONNECTION_TARGET).to_owned(),
            ));
            kv.push((
                "kubeproxy_req_verdict".to_owned(),
                verdict(req, REQUEST_TARGET).to_owned(),
            ));
        }
        kv
    }
}

/// Refuses to run where a bed could not be built: the tools kube-proxy's modes need.
pub fn check_tools() -> Result<()> {
    for tool in ["nsenter", "iptables-restore", "nft"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("{tool} is not installed: the kube-proxy comparison needs it");
        }
    }
    Ok(())
}
