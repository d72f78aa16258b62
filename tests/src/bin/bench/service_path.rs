//! The Service path in the kernel: what a pod's packet to a `ClusterIP` costs on
//! `weir_from_pod` (and the backend's reply on `weir_to_pod`), and whether that cost grows with
//! the number of Services: 10, 10 000 and 100 000 Services of 10 endpoints each.
//!
//! # Method
//!
//! As for the policy path (see the binary's documentation): three dataplanes side by side, one
//! per configuration; every round runs every packet on every configuration, configurations in
//! rotating order; a warm-up round is thrown away; the report gives the median of the rounds,
//! next to the empty program (the floor) measured in the same rounds.
//!
//! A bulk call cannot time a translated packet. `BPF_PROG_TEST_RUN` runs one skb `repeat`
//! times, and a program's rewrite stays in that skb: from the second run on, a packet sent to a
//! `ClusterIP` is already the translated one (pod → backend), which takes the plain conntrack
//! path, and the figure would be that path's (seen here: a SYN to a `ClusterIP` sent twice in
//! one call counts one new connection and one established packet). So every Service packet is
//! sent one per call (`repeat = 1`), the way the policy path sends new flows, interleaved with
//! the floor and an established packet straight to a pod (which does not rewrite, so its bulk
//! figure is exact), and each figure is, per round: established straight to a pod (bulk) +
//! [case − established straight to a pod] (single runs). New connections each use a source
//! port never used before on that dataplane.
//!
//! The packets: the established packet of a connection opened through the `ClusterIP`; the
//! backend's reply on that connection, translated back; a SYN to the `ClusterIP`; a SYN to a
//! different Service each time, spread over all of them (so that with 100 000 Services the
//! lookups leave the caches the measured Service keeps warm); and, for comparison, a SYN
//! straight to a pod.
//!
//! Every figure belongs to its path: the client is isolated for egress by a policy that allows
//! only the backend pods, on the target port. A SYN to a `ClusterIP` that was not translated
//! to a backend's target port would be denied, and a packet to the `ClusterIP` that found no
//! Service entry would be judged as new and denied. After every batch of single runs, the
//! `established` and `policy_allowed` counters must each have moved exactly three times per
//! group (its three established packets, its three fresh SYNs) and no other counter at all;
//! before the first round, one run of each Service packet is read back to check the
//! translation itself (backend, ports, checksums).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use dataplane_abi::{PassReason, programs};
use testbed::fixtures::TC_ACT_OK;
use testbed::packet::{self, ACK, L4, Packet, SYN, Tuple};
use weir::compile::{self, NodeView};
use weir::dataplane::{Counters, Dataplane};
use weir::model::{
    DesiredState, LabelSelector, NamespaceScope, Peer, Pod, Policy, PortMatch, PortSpec, Protocol,
    Rule,
};

use crate::cluster::MEASURED_IFINDEX;
use crate::measure::{self, Outcome, Probe, median};
use crate::report::GROWTH_TARGET;
use crate::service_set::{self, ENDPOINTS_PER_SERVICE, SERVICE_PORT, ServiceSpec, TARGET_PORT};

/// Service counts of the configurations, with their short names.
const CONFIGS: [(usize, &str); 3] = [(10, "10"), (10_000, "10k"), (100_000, "100k")];
/// Backend pods the Services draw their endpoints from (remote pods).
const POOL_PODS: usize = 10_000;
/// The client pod, behind [`MEASURED_IFINDEX`].
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// Pool pod `k` has address `POOL_BASE + k`.
const POOL_BASE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// Service `i` has `ClusterIP` `CLUSTER_IP_BASE + i`.
const CLUSTER_IP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The node's own address.
const HOST: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
/// Source port of the connection straight to a pod.
const DIRECT_PORT: u16 = 4_000;
/// Source port of the connection through the `ClusterIP`.
const VIA_SERVICE_PORT: u16 = 4_001;
/// Fresh source ports start here.
const FIRST_FRESH_PORT: u16 = 10_000;
/// Fresh SYNs per single-run group: straight to a pod, to the Service, to another Service.
const FRESH_PER_GROUP: usize = 3;
/// The spread SYNs visit Service `k × SPREAD_STRIDE mod n`: a prime, so that every count of
/// Services here is visited evenly.
const SPREAD_STRIDE: usize = 7_919;

/// How the section runs.
pub struct Options {
    pub rounds: usize,
    pub repeat: u32,
    /// Single-run groups per round and configuration (fewer when fresh ports would run out).
    pub single: usize,
}

/// A packet sent one per call in a group of single runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Single {
    Floor,
    DirectEstablished,
    ServiceEstablished,
    ServiceReply,
    DirectNew,
    ServiceNew,
    ServiceNewSpread,
}

impl Single {
    const ALL: [Self; 7] = [
        Self::Floor,
        Self::DirectEstablished,
        Self::ServiceEstablished,
        Self::ServiceReply,
        Self::DirectNew,
        Self::ServiceNew,
        Self::ServiceNewSpread,
    ];
}

/// A reported figure besides the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// Established packet straight to a pod (bulk): no Service involved.
    DirectEstablished,
    /// SYN straight to a pod: no Service involved.
    DirectNew,
    /// Established packet from the client to the `ClusterIP`.
    ServiceEstablished,
    /// The backend's reply, translated back to come from the `ClusterIP`.
    ServiceReply,
    /// SYN to the `ClusterIP` of the measured Service.
    ServiceNew,
    /// SYN to a different Service each time.
    ServiceNewSpread,
}

impl Case {
    const ALL: [Self; 6] = [
        Self::DirectEstablished,
        Self::DirectNew,
        Self::ServiceEstablished,
        Self::ServiceReply,
        Self::ServiceNew,
        Self::ServiceNewSpread,
    ];

    /// Whether the growth target applies: the Service path itself.
    fn has_target(self) -> bool {
        !matches!(self, Self::DirectEstablished | Self::DirectNew)
    }

    fn label(self) -> &'static str {
        match self {
            Self::DirectEstablished => "straight to a pod, established",
            Self::DirectNew => "straight to a pod, new (SYN) [1]",
            Self::ServiceEstablished => "Service, established [1]",
            Self::ServiceReply => "Service, backend's reply [1]",
            Self::ServiceNew => "Service, new (SYN) [1]",
            Self::ServiceNewSpread => "Service, new, spread over all [1]",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::DirectEstablished => "direct_established",
            Self::DirectNew => "direct_new",
            Self::ServiceEstablished => "service_established",
            Self::ServiceReply => "service_reply",
            Self::ServiceNew => "service_new",
            Self::ServiceNewSpread => "service_new_spread",
        }
    }

    /// The single-run packet behind the figure, for those sent one per call.
    fn single(self) -> Option<Single> {
        match self {
            Self::DirectEstablished => None,
            Self::DirectNew => Some(Single::DirectNew),
            Self::ServiceEstablished => Some(Single::ServiceEstablished),
            Self::ServiceReply => Some(Single::ServiceReply),
            Self::ServiceNew => Some(Single::ServiceNew),
            Self::ServiceNewSpread => Some(Single::ServiceNewSpread),
        }
    }
}

/// How big one configuration's Service maps are.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    frontends: usize,
    backends: usize,
    maglev_tables: usize,
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    service_set::nth_address(CLUSTER_IP_BASE, i)
}

fn pool_ip(k: usize) -> Ipv4Addr {
    service_set::nth_address(POOL_BASE, k)
}

/// `count` Services; Service `i` takes pool pods `10 i .. 10 i + 9` (wrapping around).
fn services(count: usize) -> Vec<ServiceSpec> {
    service_set::generate(count, cluster_ip, |i| {
        (0..ENDPOINTS_PER_SERVICE)
            .map(|j| pool_ip((i * ENDPOINTS_PER_SERVICE + j) % POOL_PODS))
            .collect()
    })
}

fn pod(namespace: &str, name: String, app: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name,
        labels: [("app".to_owned(), app.to_owned())].into(),
        ips: vec![IpAddr::V4(ip)],
        ..Pod::default()
    }
}

/// The client may send only to backend pods, on the target port: see the module doc.
fn client_egress_policy() -> Policy {
    Policy {
        namespace: "bench-client".into(),
        name: "only-backends".into(),
        pod_selector: LabelSelector {
            match_labels: [("app".to_owned(), "client".to_owned())].into(),
            ..LabelSelector::default()
        },
        ingress: None,
        egress: Some(vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(LabelSelector::everything()),
                pods: LabelSelector {
                    match_labels: [("app".to_owned(), "backend".to_owned())].into(),
                    ..LabelSelector::default()
                },
            }],
            ports: vec![PortMatch {
                protocol: Protocol::Tcp,
                port: Some(PortSpec::Range {
                    first: TARGET_PORT,
                    last: TARGET_PORT,
                }),
            }],
        }]),
        ..Policy::default()
    }
}

/// The cluster of one configuration: the client, the pool, the policy and `specs`.
fn state(specs: &[ServiceSpec]) -> DesiredState {
    let mut pods = vec![pod("bench-client", "client".into(), "client", CLIENT)];
    pods.extend((0..POOL_PODS).map(|k| {
        pod(
            "bench-backends",
            format!("backend-{k:05}"),
            "backend",
            pool_ip(k),
        )
    }));
    let (services, endpoint_slices) = service_set::to_model(specs);
    DesiredState {
        pods: pods.into_iter().map(Arc::new).collect(),
        policies: vec![Arc::new(client_egress_policy())],
        services,
        endpoint_slices,
        ..DesiredState::default()
    }
}

fn node() -> NodeView {
    NodeView {
        host_addrs: [IpAddr::V4(HOST)].into(),
        local_routes: [(IpAddr::V4(CLIENT), MEASURED_IFINDEX)].into(),
        ..NodeView::default()
    }
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    Packet::new(
        IpAddr::V4(src),
        IpAddr::V4(dst),
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
    )
    .frame()
}

fn from_pod(frame: Vec<u8>, outcome: Outcome) -> Probe {
    Probe {
        program: programs::FROM_POD,
        frame,
        outcome,
    }
}

const ESTABLISHED: Outcome = Outcome::Pass(PassReason::Established);
const ALLOWED: Outcome = Outcome::Pass(PassReason::PolicyAllowed);

/// One configuration, loaded, its two connections open.
struct Bench {
    label: &'static str,
    services: usize,
    sizes: Sizes,
    dp: Dataplane,
    floor: Probe,
    direct_established: Probe,
    service_established: Probe,
    service_reply: Probe,
    /// Per round: the bulk floor and established packet, and each single-run median.
    rounds: Vec<Round>,
    /// Smallest gap seen between two single-run times: the timer's resolution as seen.
    granularity: Option<f64>,
}

/// What one configuration measured in one round.
#[derive(Debug)]
struct Round {
    floor: f64,
    direct_established: f64,
    single: BTreeMap<Single, f64>,
}

impl Round {
    /// A case's figure: bulk for the established packet straight to a pod, else that packet's
    /// bulk figure plus what the case costs more in single runs.
    fn ns(&self, case: Case) -> f64 {
        match case.single() {
            None => self.direct_established,
            Some(single) => {
                self.direct_established
                    + (self.single[&single] - self.single[&Single::DirectEstablished])
            }
        }
    }
}

/// Runs `name` once on `frame` and reads the frame it left back, checksums checked.
fn translated(dp: &mut Dataplane, name: &'static str, frame: &[u8], what: &str) -> Result<Tuple> {
    let (action, out) = dp
        .test_run_output(name, frame)
        .with_context(|| format!("{what}: BPF_PROG_TEST_RUN"))?;
    ensure!(action == TC_ACT_OK, "{what}: TC action {action}");
    packet::checksums(&out).map_err(|e| anyhow::anyhow!("{what}: output frame: {e}"))
}

impl Bench {
    fn new(label: &'static str, count: usize) -> Result<Self> {
        let specs = services(count);
        let maps = compile::compile(&state(&specs), &node())
            .with_context(|| format!("compiling {count} Services"))?;
        ensure!(
            maps.services.counts().frontends == count,
            "{count} Services compiled to {} frontends",
            maps.services.counts().frontends
        );
        let sizes = Sizes {
            frontends: maps.services.counts().frontends,
            backends: maps.services.counts().backends,
            maglev_tables: maps.services.counts().tables.iter().sum(),
        };
        let mut dp = Dataplane::load().context("loading the eBPF programs (verifier)")?;
        dp.sync_maps(&maps).context("writing the maps")?;
        drop(maps);
        let backend = open_connections(&mut dp, &specs[0])?;
        let vip = specs[0].cluster_ip;
        let service_reply = Probe {
            program: programs::TO_POD,
            frame: tcp(backend, TARGET_PORT, CLIENT, VIA_SERVICE_PORT, ACK),
            outcome: ESTABLISHED,
        };
        let bench = Self {
            label,
            services: count,
            sizes,
            dp,
            floor: Probe {
                program: programs::FLOOR,
                frame: tcp(CLIENT, DIRECT_PORT, pool_ip(0), TARGET_PORT, ACK),
                outcome: Outcome::Floor,
            },
            direct_established: from_pod(
                tcp(CLIENT, DIRECT_PORT, pool_ip(0), TARGET_PORT, ACK),
                ESTABLISHED,
            ),
            service_established: from_pod(
                tcp(CLIENT, VIA_SERVICE_PORT, vip, SERVICE_PORT, ACK),
                ESTABLISHED,
            ),
            service_reply,
            rounds: Vec::new(),
            granularity: None,
        };
        Ok(bench)
    }

    /// The frame of fresh SYN `kind` from source port `port`. The spread SYNs go on through
    /// the Services from round to round, as the ports do.
    fn fresh_syn(&self, kind: Single, port: u16) -> Vec<u8> {
        let dst = match kind {
            Single::DirectNew => return tcp(CLIENT, port, pool_ip(0), TARGET_PORT, SYN),
            Single::ServiceNew => cluster_ip(0),
            _ => cluster_ip(usize::from(port) * SPREAD_STRIDE % self.services),
        };
        tcp(CLIENT, port, dst, SERVICE_PORT, SYN)
    }

    /// One round: the bulk floor and established packet (in alternating order), then `groups`
    /// groups of single runs on the fresh ports from `first_port`. Round 0 is the warm-up.
    fn round(&mut self, round: usize, repeat: u32, groups: usize, first_port: u16) -> Result<()> {
        let (floor, direct_established) = if round.is_multiple_of(2) {
            let f = measure::bulk(&mut self.dp, &self.floor, repeat)?;
            (
                f,
                measure::bulk(&mut self.dp, &self.direct_established, repeat)?,
            )
        } else {
            let e = measure::bulk(&mut self.dp, &self.direct_established, repeat)?;
            (measure::bulk(&mut self.dp, &self.floor, repeat)?, e)
        };
        let single = self
            .single_runs(groups, first_port)
            .with_context(|| format!("{} Services, single runs", self.label))?;
        if round > 0 {
            self.rounds.push(Round {
                floor,
                direct_established,
                single,
            });
        }
        Ok(())
    }

    /// `groups` groups of one call of each [`Single`] packet, in rotating order; the median
    /// kernel time of each. Checks the counters afterwards (see the module doc).
    fn single_runs(&mut self, groups: usize, first_port: u16) -> Result<BTreeMap<Single, f64>> {
        let before = self.dp.counters()?;
        let mut times: BTreeMap<Single, Vec<f64>> = BTreeMap::new();
        for n in 0..groups {
            let group_port = first_port + u16::try_from(n * FRESH_PER_GROUP)?;
            for slot in 0..Single::ALL.len() {
                let kind = Single::ALL[(n + slot) % Single::ALL.len()];
                let ns = self.run_single(kind, group_port)?;
                times.entry(kind).or_default().push(ns);
            }
        }
        let after = self.dp.counters()?;
        let all: Vec<f64> = times.values().flatten().copied().collect();
        self.granularity = [self.granularity, measure::granularity(&all)]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp);
        let runs = u64::try_from(groups * FRESH_PER_GROUP)?;
        check_counters(
            &before,
            &after,
            &[
                (PassReason::Established.name(), runs),
                (PassReason::PolicyAllowed.name(), runs),
            ],
        )?;
        Ok(times.into_iter().map(|(k, v)| (k, median(&v))).collect())
    }

    fn run_single(&mut self, kind: Single, group_port: u16) -> Result<f64> {
        let fresh = |offset: u16, bench: &Self| {
            from_pod(bench.fresh_syn(kind, group_port + offset), ALLOWED)
        };
        let probe = match kind {
            Single::Floor => self.floor.clone(),
            Single::DirectEstablished => self.direct_established.clone(),
            Single::ServiceEstablished => self.service_established.clone(),
            Single::ServiceReply => self.service_reply.clone(),
            Single::DirectNew => fresh(0, self),
            Single::ServiceNew => fresh(1, self),
            Single::ServiceNewSpread => fresh(2, self),
        };
        once(&mut self.dp, &probe).with_context(|| format!("{kind:?}"))
    }
}

/// One run of `probe` (`repeat = 1`): the kernel's time, after checking the action. The
/// counters are checked per batch, not per call: reading them between calls would leave every
/// call colder caches than the policy path's single runs have.
fn once(dp: &mut Dataplane, probe: &Probe) -> Result<f64> {
    let (action, took) = dp
        .test_run(probe.program, &probe.frame, 1)
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", probe.program))?;
    let expected = match probe.outcome {
        Outcome::Floor | Outcome::Pass(_) => TC_ACT_OK,
        Outcome::Drop(_) => testbed::fixtures::TC_ACT_SHOT,
    };
    ensure!(
        action == expected,
        "{} returned TC action {action}, expected {expected} ({:?})",
        probe.program,
        probe.outcome
    );
    #[expect(
        clippy::cast_precision_loss,
        reason = "one run's duration is far below 2^52 ns"
    )]
    Ok(took.as_nanos() as f64)
}

/// Every counter moved by exactly its `expected` amount (those not listed: not at all).
fn check_counters(before: &Counters, after: &Counters, expected: &[(&str, u64)]) -> Result<()> {
    let moved = |b: &BTreeMap<&str, u64>, a: &BTreeMap<&'static str, u64>| {
        a.iter()
            .map(|(k, v)| (*k, v - b.get(k).copied().unwrap_or(0)))
            .filter(|(_, d)| *d != 0)
            .collect::<Vec<_>>()
    };
    let mut all = moved(&before.passed, &after.passed);
    all.extend(moved(&before.dropped, &after.dropped));
    all.sort_unstable();
    let mut want: Vec<(&str, u64)> = expected.iter().copied().filter(|(_, n)| *n != 0).collect();
    want.sort_unstable();
    ensure!(
        all == want,
        "the runs took other paths than measured: counters moved {all:?}, expected {want:?}"
    );
    Ok(())
}

/// Opens the two connections the established packets belong to, checking each step's path
/// and translation: one straight to pool pod 0, one through `service`'s `ClusterIP`. Returns
/// the backend the latter went to.
fn open_connections(dp: &mut Dataplane, service: &ServiceSpec) -> Result<Ipv4Addr> {
    let pod0 = pool_ip(0);
    let syn = from_pod(tcp(CLIENT, DIRECT_PORT, pod0, TARGET_PORT, SYN), ALLOWED);
    measure::bulk(dp, &syn, 1).context("opening the connection straight to a pod")?;
    let synack = Probe {
        program: programs::TO_POD,
        frame: tcp(pod0, TARGET_PORT, CLIENT, DIRECT_PORT, SYN | ACK),
        outcome: ESTABLISHED,
    };
    measure::bulk(dp, &synack, 1).context("the pod's answer")?;

    let vip = service.cluster_ip;
    let syn = tcp(CLIENT, VIA_SERVICE_PORT, vip, SERVICE_PORT, SYN);
    let before = dp.counters()?;
    let out = translated(dp, programs::FROM_POD, &syn, "SYN to the ClusterIP")?;
    check_counters(
        &before,
        &dp.counters()?,
        &[(PassReason::PolicyAllowed.name(), 1)],
    )?;
    let IpAddr::V4(backend) = out.dst else {
        bail!("SYN to the ClusterIP left for {}", out.dst);
    };
    ensure!(
        service.endpoints.contains(&backend) && out.dst_port == TARGET_PORT,
        "SYN to the ClusterIP left for {}:{}, not an endpoint's target port",
        out.dst,
        out.dst_port
    );
    let synack = tcp(backend, TARGET_PORT, CLIENT, VIA_SERVICE_PORT, SYN | ACK);
    let before = dp.counters()?;
    let back = translated(dp, programs::TO_POD, &synack, "the backend's answer")?;
    check_counters(
        &before,
        &dp.counters()?,
        &[(PassReason::Established.name(), 1)],
    )?;
    ensure!(
        (back.src, back.src_port) == (IpAddr::V4(vip), SERVICE_PORT),
        "the backend's answer reached the client from {}:{}, not from the ClusterIP",
        back.src,
        back.src_port
    );
    let ack = tcp(CLIENT, VIA_SERVICE_PORT, vip, SERVICE_PORT, ACK);
    let out = translated(
        dp,
        programs::FROM_POD,
        &ack,
        "established packet to the ClusterIP",
    )?;
    ensure!(
        (out.dst, out.dst_port) == (IpAddr::V4(backend), TARGET_PORT),
        "the established packet left for {}:{}, not for its backend",
        out.dst,
        out.dst_port
    );
    Ok(backend)
}

/// Runs the section: builds the three configurations, then the rounds.
pub fn run(opts: &Options) -> Result<ServicePathReport> {
    let bulk_rewrite_seen = bulk_rewrite_seen().context("checking what a bulk call repeats")?;
    // Every call of every round needs fresh source ports on each dataplane.
    let available = usize::from(u16::MAX - FIRST_FRESH_PORT);
    let groups = opts
        .single
        .min(available / ((opts.rounds + 1) * FRESH_PER_GROUP))
        .max(1);
    let mut benches = Vec::new();
    for (count, label) in CONFIGS {
        eprintln!("weir-bench: service path: loading {label} Services");
        benches.push(Bench::new(label, count)?);
    }
    let mut next_port = FIRST_FRESH_PORT;
    for round in 0..=opts.rounds {
        let record = round > 0;
        eprintln!(
            "weir-bench: service path, round {round}/{}{}",
            opts.rounds,
            if record { "" } else { " (warm-up)" }
        );
        // The warm-up is a tenth of a round: enough to fault in code, maps and caches.
        let (repeat, count) = if record {
            (opts.repeat, groups)
        } else {
            (opts.repeat / 10 + 1, groups / 10 + 1)
        };
        let len = benches.len();
        for i in 0..len {
            benches[(i + round) % len].round(round, repeat, count, next_port)?;
        }
        next_port += u16::try_from(count * FRESH_PER_GROUP)?;
    }
    Ok(ServicePathReport {
        bulk_rewrite_seen,
        rounds: opts.rounds,
        repeat: opts.repeat,
        groups,
        configs: benches
            .into_iter()
            .map(|b| ConfigFigures {
                label: b.label,
                sizes: b.sizes,
                rounds: b.rounds,
                granularity: b.granularity,
            })
            .collect(),
    })
}

/// What one configuration measured.
struct ConfigFigures {
    label: &'static str,
    sizes: Sizes,
    rounds: Vec<Round>,
    granularity: Option<f64>,
}

impl ConfigFigures {
    fn ns(&self, case: Case) -> f64 {
        let per_round: Vec<f64> = self.rounds.iter().map(|r| r.ns(case)).collect();
        median(&per_round)
    }

    fn single_ns(&self, single: Single) -> f64 {
        let per_round: Vec<f64> = self.rounds.iter().map(|r| r.single[&single]).collect();
        median(&per_round)
    }
}

/// The section's figures.
pub struct ServicePathReport {
    /// Whether a bulk call repeated the translated packet rather than the one sent.
    bulk_rewrite_seen: bool,
    rounds: usize,
    repeat: u32,
    groups: usize,
    configs: Vec<ConfigFigures>,
}

fn verdict(growth: f64) -> &'static str {
    if growth <= GROWTH_TARGET {
        "PASS"
    } else {
        "MISS"
    }
}

impl ServicePathReport {
    /// The floor, all configurations pooled (the same empty program).
    fn floor_ns(&self) -> f64 {
        let all: Vec<f64> = self
            .configs
            .iter()
            .flat_map(|c| c.rounds.iter().map(|r| r.floor))
            .collect();
        median(&all)
    }

    /// Cost with the most Services over cost with the fewest.
    fn growth(&self, case: Case) -> f64 {
        match (self.configs.first(), self.configs.last()) {
            (Some(first), Some(last)) => last.ns(case) / first.ns(case),
            _ => f64::NAN,
        }
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Service path: in-kernel cost per packet, a pod's connection through a ClusterIP \
             (weir_from_pod;\nthe reply on weir_to_pod), {ENDPOINTS_PER_SERVICE} endpoints per \
             Service, median of {} rounds; bulk calls of {} runs,\n{} single-run groups per round \
             and configuration.",
            self.rounds, self.repeat, self.groups
        );
        let _ = write!(out, "{:<34}", "Services");
        for c in &self.configs {
            let _ = write!(out, "{:>19}", c.label);
        }
        out.push('\n');
        for (name, get) in [
            (
                "frontends",
                (|s: &Sizes| s.frontends) as fn(&Sizes) -> usize,
            ),
            ("backends", |s: &Sizes| s.backends),
            ("Maglev tables", |s: &Sizes| s.maglev_tables),
        ] {
            let _ = write!(out, "{name:<34}");
            for c in &self.configs {
                let _ = write!(out, "{:>19}", get(&c.sizes));
            }
            out.push('\n');
        }
        out.push('\n');
        self.render_figures(&mut out);
        self.render_single(&mut out);
        out
    }

    fn render_figures(&self, out: &mut String) {
        let floor = self.floor_ns();
        let _ = write!(out, "{:<34}", "ns per packet (x floor)");
        for c in &self.configs {
            let _ = write!(out, "{:>19}", format!("{} Services", c.label));
        }
        let _ = writeln!(out, "  {:>9}", "100k / 10");
        let _ = writeln!(
            out,
            "{:<34}{:>9.1} ns (1.00x)",
            "floor (empty TC program)", floor
        );
        for case in Case::ALL {
            let _ = write!(out, "{:<34}", case.label());
            for c in &self.configs {
                let ns = c.ns(case);
                let _ = write!(out, "{:>19}", format!("{ns:.1} ns ({:.2}x)", ns / floor));
            }
            let growth = self.growth(case);
            if case.has_target() {
                let _ = writeln!(
                    out,
                    "  {growth:>8.3}x {} (target <= {GROWTH_TARGET}x)",
                    verdict(growth)
                );
            } else {
                let _ = writeln!(out, "  {growth:>8.3}x");
            }
        }
        out.push('\n');
    }

    fn render_single(&self, out: &mut String) {
        let seen = if self.bulk_rewrite_seen {
            "Seen on this kernel: a SYN to a ClusterIP sent twice in one\ncall counted one new \
             connection and one established packet."
        } else {
            "Not seen on this kernel, where a bulk call repeated the\npacket as sent; single runs \
             are right either way."
        };
        let granularity = self
            .configs
            .iter()
            .filter_map(|c| c.granularity)
            .min_by(f64::total_cmp)
            .map_or_else(|| "n/a".to_owned(), |g| format!("{g:.0} ns"));
        let _ = writeln!(
            out,
            "[1] Sent one per call, as a program's rewrite stays in the skb a bulk call repeats, \
             and a new\nconnection must be new. {seen}\nFigure = established straight to a pod \
             (bulk) + [case - that packet] (single runs), per round.\nSingle-run medians \
             (timer granularity seen: {granularity}):"
        );
        let _ = write!(out, "{:<34}", "ns per call");
        for c in &self.configs {
            let _ = write!(out, "{:>19}", format!("{} Services", c.label));
        }
        out.push('\n');
        for single in Single::ALL {
            let _ = write!(out, "{:<34}", format!("{single:?}"));
            for c in &self.configs {
                let _ = write!(out, "{:>16.1} ns", c.single_ns(single));
            }
            out.push('\n');
        }
        out.push('\n');
    }

    /// `key=value` figures for scripts.
    pub fn keys(&self) -> Vec<(String, String)> {
        let floor = self.floor_ns();
        let mut kv = vec![
            ("service_path_floor_ns".to_owned(), format!("{floor:.1}")),
            (
                "service_path_single_groups".to_owned(),
                self.groups.to_string(),
            ),
        ];
        for c in &self.configs {
            for case in Case::ALL {
                let ns = c.ns(case);
                let p = format!("service_path_{}_services_{}", case.key(), c.label);
                kv.push((format!("{p}_ns"), format!("{ns:.1}")));
                kv.push((format!("{p}_x_floor"), format!("{:.2}", ns / floor)));
            }
        }
        for case in Case::ALL {
            let growth = self.growth(case);
            kv.push((
                format!("service_path_{}_growth", case.key()),
                format!("{growth:.3}"),
            ));
            if case.has_target() {
                kv.push((
                    format!("service_path_{}_verdict", case.key()),
                    verdict(growth).to_owned(),
                ));
            }
        }
        kv
    }
}

/// Whether, on this kernel, a bulk call repeats the packet as the program left it: a SYN to a
/// `ClusterIP` sent twice in one call is then translated once and found established the second
/// time (see the module doc). Either way the single runs measure the right path; the report
/// says which was seen.
fn bulk_rewrite_seen() -> Result<bool> {
    let specs = services(1);
    let maps = compile::compile(&state(&specs), &node())?;
    let mut dp = Dataplane::load()?;
    dp.sync_maps(&maps)?;
    let before = dp.counters()?;
    let syn = tcp(
        CLIENT,
        FIRST_FRESH_PORT,
        specs[0].cluster_ip,
        SERVICE_PORT,
        SYN,
    );
    dp.test_run(programs::FROM_POD, &syn, 2)?;
    let after = dp.counters()?;
    let moved = |name: &str| after.passed[name] - before.passed[name];
    Ok(moved(PassReason::PolicyAllowed.name()) == 1 && moved(PassReason::Established.name()) == 1)
}
