//! The agent as users run it: `weir run`, a real process in a node namespace of the test bed,
//! over a manifests directory the size of a large cluster.
//!
//! # Setup
//!
//! The cluster of `bench/cluster.rs` at 100 000 rules (10 000 `NetworkPolicy` objects over
//! 10 000 pods in 100 namespaces, with pod, namespace and ipBlock peers) and [`SERVICES`]
//! `ClusterIP` Services of `bench/service_set.rs` (ten per app, in the app's namespace, each
//! selecting the app's ten replicas and listing them in its `EndpointSlice`) is written out as
//! one YAML file per object, in block style as `kubectl get -o yaml` writes it, with every
//! pod's `status.podIPs` moved into the test bed's ranges (`10.99.ns.n` and `fd99::ns:n`), and
//! the slices listing those addresses. The agent must compile and write every Service: after
//! its first apply, `/status` must count [`SERVICES`] frontends and ten times as many
//! backends in the Service maps. A node
//! namespace hosts [`LOCAL_PODS`] of those pods on veth pairs, so the agent attaches to that
//! many interfaces and enforces the whole cluster's policy on them. The agent is the release
//! build (`$WEIR_BIN`, or else built here with `cargo build --release`), started by the test
//! bed's [`Agent`] with `ip netns exec`, whose private mount namespace takes whatever the
//! agent pins with it.
//!
//! # Figures
//!
//! 1. Start to ready: from spawning `weir run` to `/readyz` answering 200 (polled every
//!    10 ms): loading the programs, reading and validating every file, compiling, writing the
//!    maps and attaching. The changes below run in [`BLOCKS`] blocks, each starting one agent
//!    per poll interval (in alternating order, so that the shared machine's noise falls on
//!    both alike): six starts.
//! 2. Memory of the `weir` process itself (`ip netns exec` execs into it; the pid is the one
//!    whose `/proc/PID/exe` is the binary): `VmHWM` after ready and `VmRSS` at rest (first
//!    agent), and the largest `VmHWM` of any agent after its changes.
//! 3. CPU at rest: `utime + stime` of `/proc/PID/stat` (all threads) over [`REST`] with
//!    nothing changing, as a percentage of one core; measured once the agent has come to rest
//!    (see below).
//! 4. Change latency: one policy file among the 10 000 is replaced (a dot-file renamed over
//!    it) so that a TCP connection between two local pods flips between denied and allowed.
//!    From the rename, two clocks run at once: the agent's `/status` generation moving (polled
//!    every [`STATUS_INTERVAL`]), and fresh connections between the pods (one every
//!    [`PROBE_INTERVAL`]) showing the new verdict. A connection counts as denied when its SYN
//!    goes unanswered for [`DENY_WAIT`], confirmed by a second one (so that a slow machine
//!    cannot fake a denial); the time recorded is the start of the first attempt that saw the
//!    new verdict. Run once with the default `--poll-ms 250`, once with 50.
//!
//! At rest: after an apply that took longer than its poll interval, the agent runs one
//! change check at once, then keeps its period. Before the rest window the benchmark waits
//! until a [`SETTLE_SLICE`] of the agent's CPU is below [`BUSY_PERCENT`] of a core (at most
//! [`SETTLE_MAX`]). The changes come one after the other, as a pipeline applying a series of
//! edits would make them; each is preceded by one such slice, which tells whether it met the
//! agent at rest or still busy with the change before (the report counts them), and by a
//! fraction of the poll interval that walks a low-discrepancy sequence, so that renames fall
//! evenly over the agent's tick phase.
//!
//! For where the time goes, this process also times the agent's steps on the same directory:
//! the change check every tick does (reading inotify events), a walk of the whole tree (the
//! periodic safety net), the first load of every file (read, YAML, validation), a reload
//! after one file changed, and compiling; and the agent's own log gives compile + apply per
//! change (`elapsed_ms`).
//!
//! Nothing here judges a time. Errors are real failures: the flip not flipping, the agent
//! refusing a change or exiting, Services missing from its maps, a timeout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dataplane_abi::names;
use serde_json::{Map, Value, json};
use testbed::{Agent, Netns, PodSpec, TempDir, Topology, manifests};
use weir::compile::NodeView;
use weir::model::{
    DesiredState, LabelSelector, NamespaceScope, Peer, Policy, PortMatch, PortSpec, Rule,
};
use weir::source::Source as _;
use weir::source::directory::{Directory, RESCAN_INTERVAL};

use crate::cluster;
use crate::measure::{median, thread_cpu};
use crate::service_set::{self, ENDPOINTS_PER_SERVICE, ServiceSpec};

/// Rules of the generated cluster: 10 000 policies of ten rules each.
const RULES: usize = 100_000;
/// `ClusterIP` Services of the cluster: one per pod, ten per app.
const SERVICES: usize = 10_000;
/// The cluster IP of the first Service; the others follow it.
const CLUSTER_IP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Pods of the cluster that live on the node namespace.
pub const LOCAL_PODS: usize = 20;
/// Poll intervals the change latency is measured with: the agent's default, then a short one.
pub const POLLS_MS: [u64; 2] = [250, 50];
/// Blocks the changes are split into: each block starts one agent per poll interval, in
/// alternating order, so that the machine's noise falls on both intervals alike.
const BLOCKS: usize = 3;
/// Length of the CPU-at-rest window.
const REST: Duration = Duration::from_secs(10);
/// Longest wait for the agent to come to rest after ready (see [`AgentProcess::settle`]).
const SETTLE_MAX: Duration = Duration::from_secs(8);
/// Length of the CPU slices that tell whether the agent is at rest.
const SETTLE_SLICE: Duration = Duration::from_millis(500);
/// CPU share of one core below which the agent counts as at rest: it no longer runs ticks
/// back to back.
const BUSY_PERCENT: f64 = 90.0;
/// Repetitions of the in-process timings.
const IN_PROCESS_RUNS: usize = 3;
/// Endpoint changes timed in process (each a few milliseconds).
const ENDPOINT_ROUNDS: usize = 20;

/// The server pod: app-0000 in ns-00, the pod policy `policy-00000` selects.
const SERVER: (&str, &str) = ("ns-00", "app-0000-0");
/// The client pod: app-0008 in ns-00, whose egress policies (`policy-00008`, ...) allow
/// app-0000 on TCP [`FLIP_PORT`]; no ingress rule of app-0000 admits it there.
const CLIENT: (&str, &str) = ("ns-00", "app-0008-0");
/// App label of the client, which the flipped rule admits.
const CLIENT_APP: &str = "app-0008";
/// The port whose verdict the change flips (the egress rule's database port).
const FLIP_PORT: u16 = 5432;
/// The policy file the changes rewrite.
const FLIP_POLICY: &str = "policy-00000";

/// Time allowed from spawn to ready.
const READY_TIMEOUT: Duration = Duration::from_mins(3);
/// Time allowed for one change to be applied and seen.
const CHANGE_TIMEOUT: Duration = Duration::from_mins(1);
/// Time given to the agent to exit after SIGTERM before SIGKILL. The agent handles signals
/// between ticks, and a tick that reloads this directory takes seconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const READY_INTERVAL: Duration = Duration::from_millis(10);
const STATUS_INTERVAL: Duration = Duration::from_millis(5);
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// A SYN unanswered this long is a denied connection (an allowed one is answered in well
/// under a millisecond between two namespaces).
const DENY_WAIT: Duration = Duration::from_millis(50);
/// While waiting for a connection to be allowed, an attempt gives up after this: a slow
/// answer only costs one more attempt.
const ALLOW_WAIT: Duration = Duration::from_millis(10);

/// Options of the agent part.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Changes per poll interval (at least 30 for a p99 that is not the maximum of a handful).
    pub changes: usize,
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Everything the agent part measured.
pub struct AgentReport {
    pub binary: PathBuf,
    pub pods: usize,
    pub policies: usize,
    pub rules: usize,
    pub services: usize,
    /// The Service maps as the agent's `/status` counted them after its first apply.
    pub service_entries: ServiceEntries,
    pub files: usize,
    pub local_pods: usize,
    pub ready: Vec<Duration>,
    pub hwm_ready_kib: u64,
    pub hwm_changes_kib: u64,
    pub rss_rest_kib: u64,
    pub runs: Vec<PollRun>,
    pub in_process: InProcess,
    /// `/proc/loadavg` at the start and at the end: how busy the shared machine was.
    pub loadavg: [String; 2],
}

/// Entries of the Service maps, from `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntries {
    /// `WEIR_SVC_V1`: one per Service port and cluster IP.
    pub frontends: u64,
    /// `WEIR_BE_V1`: one per endpoint of each backend set.
    pub backends: u64,
    /// The three `WEIR_MAG_*_V1` maps: one table per backend set.
    pub maglev_tables: u64,
}

/// The figures of one poll interval.
#[derive(Default)]
pub struct PollRun {
    pub poll_ms: u64,
    pub cpu_rest_pct: f64,
    pub samples: Vec<Change>,
    /// The agent's logged `elapsed_ms` (compile + apply) of each apply during the changes.
    pub apply_ms: Vec<f64>,
}

/// One change: which way it flipped and when each observer saw it, from the rename.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub to_allowed: bool,
    /// Whether the agent was at rest when the change came (not running missed ticks).
    pub from_rest: bool,
    pub generation: Duration,
    pub probe: Duration,
}

impl PollRun {
    fn new(poll_ms: u64) -> Self {
        Self {
            poll_ms,
            ..Self::default()
        }
    }
}

/// The agent's steps, timed in this process on the same directory (medians).
pub struct InProcess {
    /// `Directory::version` with nothing changed: what every tick does (reading inotify).
    pub version_check: Duration,
    /// A walk of the whole tree (`manifest::listing::list`): the safety-net rescan, and what
    /// every tick did before inotify.
    pub walk: Duration,
    /// `manifest::load_dir`: read, YAML, validation of every file (the first load).
    pub load: Duration,
    /// One policy file replaced, then `Directory::version` and `Directory::load`: the
    /// changed file read again, every file's result assembled.
    pub reload_one: Duration,
    /// `compile::compile` with the node namespace's view.
    pub compile: Duration,
    /// One `EndpointSlice` file replaced (an endpoint's address changed): `Directory::version`
    /// and `Directory::load`.
    pub endpoint_reload: Duration,
    /// That state compiled over the previous compilation (`compile::compile_with`), as the
    /// agent does: the policy maps kept, one Service compiled again. Wall time.
    pub endpoint_compile: Duration,
    /// The same, in CPU time of the thread.
    pub endpoint_compile_cpu: Duration,
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Runs the whole agent part.
pub fn run(opts: Options) -> Result<AgentReport> {
    ensure!(
        opts.changes >= BLOCKS,
        "--agent-changes needs at least {BLOCKS}"
    );
    let load_start = loadavg();
    let built = release_weir()?;
    eprintln!("weir-bench: agent: {}", built.display());
    // A private copy: a rebuild of the workspace during the run cannot swap the binary.
    let bin_dir = TempDir::new("bench-bin");
    let binary = bin_dir.path().join("weir");
    std::fs::copy(&built, &binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    let cluster = cluster::generate(RULES);
    let services = cluster_services(&cluster.state)?;
    let dir = TempDir::new("bench-manifests");
    eprintln!("weir-bench: agent: writing the manifests");
    let files = write_cluster(dir.path(), &cluster.state, &services)?;
    eprintln!("weir-bench: agent: building the node namespace");
    let topology = Topology::builder().pods(local_pods(&cluster.state)).build();
    let in_process = time_in_process(dir.path(), &topology, &cluster.state, &services)?;
    let bed = Bed {
        binary: &binary,
        state: &cluster.state,
        dir: dir.path(),
        topology: &topology,
    };
    let mut report = AgentReport {
        binary: built,
        pods: cluster.state.pods.len(),
        policies: cluster.state.policies.len(),
        rules: cluster::count_rules(&cluster.state),
        services: services.len(),
        service_entries: ServiceEntries::default(),
        files,
        local_pods: topology.pods().len(),
        ready: Vec::new(),
        hwm_ready_kib: 0,
        hwm_changes_kib: 0,
        rss_rest_kib: 0,
        runs: Vec::new(),
        in_process,
        loadavg: [load_start, String::new()],
    };
    report.runs = POLLS_MS.map(PollRun::new).into();
    for block in 0..BLOCKS {
        let changes = opts.changes / BLOCKS + usize::from(block < opts.changes % BLOCKS);
        for k in 0..POLLS_MS.len() {
            let i = (k + block) % POLLS_MS.len();
            let mut run = std::mem::replace(&mut report.runs[i], PollRun::new(POLLS_MS[i]));
            bed.block(&mut run, changes, block == 0, &mut report)?;
            report.runs[i] = run;
        }
    }
    report.loadavg[1] = loadavg();
    Ok(report)
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// What every agent run shares: the binary, the cluster, its manifests and the namespaces.
struct Bed<'a> {
    binary: &'a Path,
    state: &'a DesiredState,
    dir: &'a Path,
    topology: &'a Topology,
}

impl Bed<'_> {
    /// Starts an agent and waits until it is ready; returns it and the time it took.
    fn start_ready(&self, poll_ms: u64) -> (AgentProcess<'_>, Duration) {
        eprintln!("weir-bench: agent: starting weir run --poll-ms {poll_ms}");
        let mut agent = AgentProcess::start(self.topology, self.binary, self.dir, poll_ms);
        let ready = agent.wait_ready();
        eprintln!(
            "weir-bench: agent: ready after {:.0} ms",
            ready.as_secs_f64() * 1e3
        );
        (agent, ready)
    }

    /// One agent with the poll interval of `run`: its ready time, then `changes` changes,
    /// added to `run`. In the `first` block, also CPU at rest (and with the default interval
    /// the memory at ready and at rest).
    fn block(
        &self,
        run: &mut PollRun,
        changes: usize,
        first: bool,
        report: &mut AgentReport,
    ) -> Result<()> {
        let (mut agent, ready) = self.start_ready(run.poll_ms);
        report.ready.push(ready);
        report.service_entries = agent.service_entries()?;
        let memory = first && run.poll_ms == POLLS_MS[0];
        if memory {
            report.hwm_ready_kib = agent.proc_status_kib("VmHWM")?;
        }
        if first {
            run.cpu_rest_pct = rest_cpu(&mut agent)?;
        }
        if memory {
            report.rss_rest_kib = agent.proc_status_kib("VmRSS")?;
        }
        let flip = Flip::new(self, &mut agent, run.poll_ms)?;
        let applied_before = agent.applied_ms().len();
        let samples = flip.series(&mut agent, changes, run.samples.len())?;
        run.apply_ms
            .extend(agent.applied_ms().split_off(applied_before));
        let hwm = agent.proc_status_kib("VmHWM")?;
        report.hwm_changes_kib = report.hwm_changes_kib.max(hwm);
        if samples.last().is_some_and(|c| c.to_allowed) {
            flip.restore();
        }
        run.samples.extend(samples);
        Ok(())
    }
}

/// Waits for the agent to come to rest, then its CPU over [`REST`], in % of one core.
fn rest_cpu(agent: &mut AgentProcess<'_>) -> Result<f64> {
    let slices: Vec<String> = agent
        .settle(SETTLE_MAX)?
        .iter()
        .map(|pct| format!("{pct:.0}"))
        .collect();
    eprintln!(
        "weir-bench: agent: coming to rest, CPU % per {} ms: {}",
        SETTLE_SLICE.as_millis(),
        slices.join(" ")
    );
    eprintln!("weir-bench: agent: CPU at rest over {} s", REST.as_secs());
    agent.cpu_percent_over(REST)
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// The test bed's addresses of a cluster pod: `10.64.ns.n` becomes `10.99.ns.n` and
/// `fd99::ns:n`.
fn bed_addresses(cluster_ip: IpAddr) -> Result<(Ipv4Addr, Ipv6Addr)> {
    let IpAddr::V4(v4) = cluster_ip else {
        bail!("cluster pod address {cluster_ip} is not IPv4");
    };
    let [_, _, ns, n] = v4.octets();
    Ok((
        Ipv4Addr::new(10, 99, ns, n),
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, ns.into(), n.into()),
    ))
}

/// The pod's spec and both its addresses.
fn pod_spec(pod: &weir::model::Pod) -> Result<(PodSpec, Ipv4Addr, Ipv6Addr)> {
    let first = *pod.ips.first().context("a cluster pod without address")?;
    let (v4, v6) = bed_addresses(first)?;
    let spec = PodSpec {
        labels: pod.labels.clone(),
        ..PodSpec::new(&pod.namespace, &pod.name)
    }
    .addresses(v4, v6);
    Ok((spec, v4, v6))
}

/// The cluster's [`SERVICES`] Services, addressed as the manifests address the pods: Service
/// `i` is backed by the replicas of the `i mod 1 000`-th app (its `app` label), lives in their
/// namespace and lists their test-bed IPv4 addresses. An app thus sits behind ten Services,
/// as one exposing several ports, or reached under several names, would.
fn cluster_services(state: &DesiredState) -> Result<Vec<ServiceSpec>> {
    let mut apps: BTreeMap<(&str, &str), Vec<Ipv4Addr>> = BTreeMap::new();
    for pod in &state.pods {
        let app = pod
            .labels
            .get("app")
            .context("a cluster pod without app label")?;
        let first = *pod.ips.first().context("a cluster pod without address")?;
        let (v4, _) = bed_addresses(first)?;
        apps.entry((&pod.namespace, app)).or_default().push(v4);
    }
    let apps: Vec<_> = apps.into_iter().collect();
    ensure!(
        apps.iter()
            .all(|(_, pods)| pods.len() == ENDPOINTS_PER_SERVICE),
        "every app of the cluster should have {ENDPOINTS_PER_SERVICE} replicas"
    );
    let behind = |i: usize| &apps[i % apps.len()];
    let mut services = service_set::generate(
        SERVICES,
        |i| service_set::nth_address(CLUSTER_IP_BASE, i),
        |i| behind(i).1.clone(),
    );
    for (i, service) in services.iter_mut().enumerate() {
        let ((namespace, app), _) = behind(i);
        (*namespace).clone_into(&mut service.namespace);
        (*app).clone_into(&mut service.app);
    }
    Ok(services)
}

/// Writes one file per namespace, pod, policy, Service and `EndpointSlice`; returns how many.
fn write_cluster(dir: &Path, state: &DesiredState, services: &[ServiceSpec]) -> Result<usize> {
    let mut files = 0;
    let mut write = |name: String, text: String| -> Result<()> {
        files += 1;
        std::fs::write(dir.join(&name), text).with_context(|| format!("writing {name}"))
    };
    for ns in state.namespaces.values() {
        write(
            format!("namespace-{}.yaml", ns.name),
            manifests::namespace_yaml(&ns.name, &ns.labels),
        )?;
    }
    for pod in &state.pods {
        let (spec, v4, v6) = pod_spec(pod)?;
        write(
            format!("pod-{}-{}.yaml", pod.namespace, pod.name),
            manifests::pod_yaml(&spec, &[v4.into(), v6.into()]),
        )?;
    }
    for policy in &state.policies {
        write(policy_file(policy), to_yaml(&policy_json(policy)))?;
    }
    for service in services {
        let name = format!("{}-{}.yaml", service.namespace, service.name);
        write(
            format!("service-{name}"),
            to_yaml(&service_set::service_json(service)),
        )?;
        write(
            format!("endpointslice-{name}"),
            to_yaml(&service_set::slice_json(service)),
        )?;
    }
    Ok(files)
}

fn policy_file(policy: &Policy) -> String {
    format!("policy-{}-{}.yaml", policy.namespace, policy.name)
}

/// A policy as the Kubernetes object that declares it.
fn policy_json(p: &Policy) -> Value {
    let mut spec = Map::new();
    spec.insert("podSelector".into(), selector_json(&p.pod_selector));
    let mut types = Vec::new();
    for (kind, key, peer_key, rules) in [
        ("Ingress", "ingress", "from", &p.ingress),
        ("Egress", "egress", "to", &p.egress),
    ] {
        if let Some(rules) = rules {
            types.push(kind);
            let rules = rules.iter().map(|r| rule_json(r, peer_key)).collect();
            spec.insert(key.into(), Value::Array(rules));
        }
    }
    spec.insert("policyTypes".into(), json!(types));
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": spec,
    })
}

fn rule_json(rule: &Rule, peer_key: &str) -> Value {
    let mut out = Map::new();
    if !rule.peers.is_empty() {
        let peers = rule.peers.iter().map(peer_json).collect();
        out.insert(peer_key.into(), Value::Array(peers));
    }
    if !rule.ports.is_empty() {
        let ports = rule.ports.iter().map(port_json).collect();
        out.insert("ports".into(), Value::Array(ports));
    }
    Value::Object(out)
}

fn peer_json(peer: &Peer) -> Value {
    match peer {
        Peer::Pods {
            namespaces: NamespaceScope::Own(_),
            pods,
        } => json!({"podSelector": selector_json(pods)}),
        Peer::Pods {
            namespaces: NamespaceScope::Selected(namespaces),
            pods,
        } => json!({
            "namespaceSelector": selector_json(namespaces),
            "podSelector": selector_json(pods),
        }),
        Peer::IpBlock { cidr, except } => {
            let mut block = Map::new();
            block.insert("cidr".into(), json!(cidr.to_string()));
            if !except.is_empty() {
                let except: Vec<String> = except.iter().map(ToString::to_string).collect();
                block.insert("except".into(), json!(except));
            }
            json!({"ipBlock": block})
        }
    }
}

fn port_json(port: &PortMatch) -> Value {
    let mut out = Map::new();
    out.insert("protocol".into(), json!(port.protocol.to_string()));
    match &port.port {
        None => {}
        Some(PortSpec::Named(name)) => {
            out.insert("port".into(), json!(name));
        }
        Some(PortSpec::Range { first, last }) => {
            out.insert("port".into(), json!(first));
            if last != first {
                out.insert("endPort".into(), json!(last));
            }
        }
    }
    Value::Object(out)
}

fn selector_json(selector: &LabelSelector) -> Value {
    let mut out = Map::new();
    if !selector.match_labels.is_empty() {
        out.insert("matchLabels".into(), json!(selector.match_labels));
    }
    if !selector.match_expressions.is_empty() {
        let expressions = selector
            .match_expressions
            .iter()
            .map(|r| {
                let mut e = Map::new();
                e.insert("key".into(), json!(r.key));
                e.insert("operator".into(), json!(format!("{:?}", r.operator)));
                if !r.values.is_empty() {
                    e.insert("values".into(), json!(r.values));
                }
                Value::Object(e)
            })
            .collect();
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Value::Object(out)
}

/// `value` as block-style YAML, as `kubectl get -o yaml` lays objects out. Scalars are
/// written in JSON syntax, a subset of YAML's (so strings such as `"80"` stay strings);
/// empty maps and lists as `{}` and `[]`.
fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => yaml_map(map, 0, false, &mut out),
        other => {
            let _ = writeln!(out, "{other}");
        }
    }
    out
}

/// The entries of `map` at `indent`; `inline_first`: the first goes right after a `- `.
fn yaml_map(map: &Map<String, Value>, indent: usize, inline_first: bool, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !inline_first {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&yaml_key(key));
        out.push(':');
        yaml_value(value, indent, out);
    }
}

/// The items of `list` at `indent`.
fn yaml_list(list: &[Value], indent: usize, out: &mut String) {
    for item in list {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push(' ');
                yaml_map(map, indent + 2, true, out);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_list(inner, indent + 2, out);
            }
            scalar => {
                let _ = writeln!(out, " {scalar}");
            }
        }
    }
}

/// A value after `key:` at `indent`: nested blocks on the following lines.
fn yaml_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml_map(map, indent + 2, false, out);
        }
        Value::Array(list) if !list.is_empty() => {
            out.push('\n');
            yaml_list(list, indent + 2, out);
        }
        scalar => {
            let _ = writeln!(out, " {scalar}");
        }
    }
}

/// A key plain when it is a plain word (`matchLabels`, `kubernetes.io/metadata.name`),
/// quoted otherwise.
fn yaml_key(key: &str) -> String {
    let plain = key.chars().next().is_some_and(char::is_alphabetic)
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
    if plain {
        key.to_owned()
    } else {
        Value::from(key).to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The node namespace
// ---------------------------------------------------------------------------------------------

/// The cluster pods hosted on the node: the server and client of the flip, then one pod in
/// each of the next namespaces, as `bench/cluster.rs` spreads its local pods.
fn local_pods(state: &DesiredState) -> Vec<PodSpec> {
    let wanted = |ns: &str, name: &str| {
        state
            .pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .expect("the generated cluster has this pod")
    };
    let mut pods = vec![wanted(SERVER.0, SERVER.1), wanted(CLIENT.0, CLIENT.1)];
    let per_ns = cluster::PODS_PER_NAMESPACE;
    for ns in 1..=LOCAL_PODS - pods.len() {
        pods.push(&state.pods[ns * per_ns + ns * 37 % per_ns]);
    }
    pods.into_iter()
        .map(|p| {
            let (spec, _, _) = pod_spec(p).expect("generated pods have IPv4 addresses");
            spec.serving(vec![FLIP_PORT])
        })
        .collect()
}

fn pod_id((namespace, name): (&str, &str)) -> String {
    format!("{namespace}/{name}")
}

// ---------------------------------------------------------------------------------------------
// In-process timings
// ---------------------------------------------------------------------------------------------

/// The node as the agent sees it: its addresses, and each local pod's addresses routed to
/// its veth. (`node::read` itself cannot run on a thread here: it reads `/proc/net/route`,
/// which shows the namespace of the process, not of the thread.)
pub fn node_view(topology: &Topology) -> Result<NodeView> {
    let node = topology.node();
    let host_addrs = node
        .run(weir::node::read)
        .context("reading the node namespace's addresses")?
        .host_addrs;
    let mut local_routes = std::collections::BTreeMap::new();
    for pod in topology.pods() {
        let name = std::ffi::CString::new(pod.host_veth())?;
        // SAFETY: a NUL-terminated name; the lookup runs in the node namespace's thread.
        let ifindex = node.run(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
        ensure!(ifindex != 0, "no interface {} in the node", pod.host_veth());
        for ip in pod.ips() {
            local_routes.insert(ip, ifindex);
        }
    }
    Ok(NodeView {
        host_addrs,
        local_routes,
        ..NodeView::default()
    })
}

/// Times the agent's steps in this process on `dir`, with the node namespace's view; checks
/// that the files hold the generated cluster and that its Services compile.
fn time_in_process(
    dir: &Path,
    topology: &Topology,
    state: &DesiredState,
    services: &[ServiceSpec],
) -> Result<InProcess> {
    eprintln!("weir-bench: agent: timing load and compile in this process");
    let view = node_view(topology)?;
    let walk = median_time(IN_PROCESS_RUNS, || {
        let listing = weir::manifest::listing::list(dir);
        ensure!(listing.errors.is_empty(), "walking {}", dir.display());
        Ok(())
    })?;
    let mut loaded = None;
    let load = median_time(IN_PROCESS_RUNS, || {
        loaded = Some(weir::manifest::load_dir(dir)?);
        Ok(())
    })?;
    let loaded = loaded.context("loaded at least once")?.state;
    ensure!(
        loaded.pods.len() == state.pods.len()
            && loaded.policies.len() == state.policies.len()
            && cluster::count_rules(&loaded) == cluster::count_rules(state)
            && loaded.services.len() == services.len()
            && loaded.endpoint_slices.len() == services.len(),
        "the manifests do not read back as the generated cluster: {} pods, {} policies, {} \
         rules, {} Services, {} EndpointSlices",
        loaded.pods.len(),
        loaded.policies.len(),
        cluster::count_rules(&loaded),
        loaded.services.len(),
        loaded.endpoint_slices.len()
    );
    let (version_check, reload_one) = time_directory(dir, state)?;
    let (endpoint_reload, endpoint_compile, endpoint_compile_cpu) =
        time_endpoint_change(dir, &view, services)?;
    let compile = median_time(IN_PROCESS_RUNS, || {
        let maps = weir::compile::compile(&loaded, &view)?;
        ensure!(
            maps.local_pods.len() == LOCAL_PODS,
            "compiled {} local pods",
            maps.local_pods.len()
        );
        let counts = maps.services.counts();
        ensure!(
            counts.frontends == services.len()
                && counts.backends == services.len() * ENDPOINTS_PER_SERVICE,
            "{} Services compiled to {} frontends and {} backends",
            services.len(),
            counts.frontends,
            counts.backends
        );
        Ok(())
    })?;
    Ok(InProcess {
        version_check,
        walk,
        load,
        reload_one,
        compile,
        endpoint_reload,
        endpoint_compile,
        endpoint_compile_cpu,
    })
}

/// The agent's steps for one endpoint change on `dir`: the first Service's slice file
/// replaced with one endpoint at another address (and back, in turn), re-read, and compiled
/// over the previous compilation, [`ENDPOINT_ROUNDS`] times; medians of the reload (wall),
/// and of the compile (wall and CPU). Checks that each change compiles to the same sizes.
fn time_endpoint_change(
    dir: &Path,
    view: &NodeView,
    services: &[ServiceSpec],
) -> Result<(Duration, Duration, Duration)> {
    let mut source = Directory::new(dir.to_owned());
    source.version()?;
    let mut previous = weir::compile::compile(&source.load()?.state, view)?;
    source.version()?;
    let spec = services.first().context("a cluster without Services")?;
    let file = format!("endpointslice-{}-{}.yaml", spec.namespace, spec.name);
    let mut moved = spec.clone();
    moved.endpoints[0] = Ipv4Addr::new(100, 64, 0, 1);
    let texts = [&moved, spec].map(|s| to_yaml(&service_set::slice_json(s)));
    let (mut reloads, mut compiles, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ENDPOINT_ROUNDS {
        manifests::write_atomic(dir, &file, &texts[round % 2]);
        let started = Instant::now();
        source.version()?;
        let loaded = source.load()?.state;
        reloads.push(started.elapsed().as_secs_f64());
        let (started, cpu_started) = (Instant::now(), thread_cpu());
        let next = weir::compile::compile_with(&loaded, view, &previous)?;
        compiles.push(started.elapsed().as_secs_f64());
        cpu.push(thread_cpu().saturating_sub(cpu_started).as_secs_f64());
        ensure!(
            next.services.counts() == previous.services.counts()
                && next.local_pods.len() == previous.local_pods.len(),
            "an endpoint change compiled to other sizes"
        );
        let (before, after) = previous.services.changes(&next.services);
        ensure!(
            before.frontends.len() == 1 && after.frontends.len() == 1,
            "an endpoint change touched {} frontends",
            after.frontends.len()
        );
        previous = next;
    }
    let median_of = |v: &[f64]| Duration::from_secs_f64(median(v));
    Ok((median_of(&reloads), median_of(&compiles), median_of(&cpu)))
}

/// The agent's source on `dir`: a check with nothing changed, and a reload after one policy
/// file is replaced (by the same text: a new file all the same, and the directory unchanged
/// for the agent runs that follow).
fn time_directory(dir: &Path, state: &DesiredState) -> Result<(Duration, Duration)> {
    let mut source = Directory::new(dir.to_owned());
    source.version()?;
    source.load()?;
    // The first walk placed the watches, and the next check walks once more under them.
    source.version()?;
    let version_check = median_time(IN_PROCESS_RUNS, || source.version().map(drop))?;
    let policy = state
        .policies
        .first()
        .context("a cluster without policies")?;
    let (file, text) = (policy_file(policy), to_yaml(&policy_json(policy)));
    let reload_one = median_time(IN_PROCESS_RUNS, || {
        let (version, reads) = (source.version()?, source.files_read());
        manifests::write_atomic(dir, &file, &text);
        ensure!(source.version()? != version, "replacing {file} went unseen");
        let loaded = source.load()?;
        ensure!(
            source.files_read() == reads + 1 && loaded.state.policies.len() == state.policies.len(),
            "reloading after {file} changed read {} files",
            source.files_read() - reads
        );
        Ok(())
    })?;
    Ok((version_check, reload_one))
}

/// The median wall time of `runs` calls of `f`.
fn median_time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(&times)))
}

// ---------------------------------------------------------------------------------------------
// The flip
// ---------------------------------------------------------------------------------------------

/// The policy file whose two versions allow and deny the client → server connection.
struct Flip<'a> {
    dir: &'a Path,
    node: &'a Netns,
    client: &'a Netns,
    server: SocketAddr,
    file: String,
    denied: String,
    allowed: String,
    poll: Duration,
}

impl<'a> Flip<'a> {
    /// Prepares both versions of the policy file and checks that the connection is denied
    /// now (the original file is in place).
    fn new(bed: &Bed<'a>, agent: &mut AgentProcess<'_>, poll_ms: u64) -> Result<Self> {
        let policy = bed
            .state
            .policies
            .iter()
            .find(|p| p.namespace == SERVER.0 && p.name == FLIP_POLICY)
            .context("the generated cluster has the flipped policy")?;
        // The file as written at the start: the connection is denied.
        let denied = to_yaml(&policy_json(policy));
        let mut value = policy_json(policy);
        let rule = json!({
            "from": [{"podSelector": {"matchLabels": {"app": CLIENT_APP}}}],
            "ports": [{"protocol": "TCP", "port": FLIP_PORT}],
        });
        value["spec"]["ingress"]
            .as_array_mut()
            .context("the flipped policy has ingress rules")?
            .push(rule);
        let server = bed.topology.pod(&pod_id(SERVER));
        let flip = Self {
            dir: bed.dir,
            node: bed.topology.node(),
            client: bed.topology.pod(&pod_id(CLIENT)).netns(),
            server: SocketAddr::new(server.ips()[0], FLIP_PORT),
            file: policy_file(policy),
            denied,
            allowed: to_yaml(&value),
            poll: Duration::from_millis(poll_ms),
        };
        let server = flip.server;
        let reached = flip
            .client
            .run(|| connects(server, DENY_WAIT) || connects(server, DENY_WAIT));
        ensure!(
            !reached,
            "before any change, {} reaches {server}: there is no flip to measure",
            pod_id(CLIENT)
        );
        agent.agent.assert_running();
        Ok(flip)
    }

    /// `changes` changes, alternately allowing and denying, one after the other: each after
    /// a [`SETTLE_SLICE`] that tells whether the agent is at rest, and a fraction of the poll
    /// period that spreads the renames evenly over the agent's tick phase.
    /// `first` numbers the first change in the whole series of this interval.
    fn series(
        &self,
        agent: &mut AgentProcess<'_>,
        changes: usize,
        first: usize,
    ) -> Result<Vec<Change>> {
        let mut samples = Vec::with_capacity(changes);
        for i in 0..changes {
            let from_rest = agent.cpu_percent_over(SETTLE_SLICE)? < BUSY_PERCENT;
            thread::sleep(self.poll.mul_f64(phase(first + i)));
            let to_allowed = i % 2 == 0;
            let change = self
                .change(agent, to_allowed)
                .with_context(|| format!("change {} of {changes}", i + 1))?;
            samples.push(Change {
                from_rest,
                ..change
            });
        }
        eprintln!(
            "weir-bench: agent: changes with --poll-ms {}: {changes}",
            self.poll.as_millis()
        );
        Ok(samples)
    }

    /// One change, timed by both observers at once.
    fn change(&self, agent: &mut AgentProcess<'_>, to_allowed: bool) -> Result<Change> {
        let before = agent.generation();
        let text = if to_allowed {
            &self.allowed
        } else {
            &self.denied
        };
        manifests::write_atomic(self.dir, &self.file, text);
        let renamed = Instant::now();
        let deadline = renamed + CHANGE_TIMEOUT;
        let (health, server) = (agent.agent.health_addr(), self.server);
        let (generation, probe) = thread::scope(|s| {
            let watcher = s.spawn(|| self.node.run(|| wait_generation(health, before, deadline)));
            let probe = self
                .client
                .run(|| wait_verdict(server, to_allowed, deadline));
            (watcher.join(), probe)
        });
        let generation = generation
            .map_err(|_| anyhow::anyhow!("the status watcher panicked"))?
            .map_err(|e| e.context(agent.agent.log_tail()))?;
        let probe = probe.context("the probe never saw the new verdict")?;
        Ok(Change {
            to_allowed,
            from_rest: false,
            generation: generation - renamed,
            probe: probe.saturating_duration_since(renamed),
        })
    }

    /// Puts the original (denying) file back, so that the next run starts from it.
    fn restore(&self) {
        manifests::write_atomic(self.dir, &self.file, &self.denied);
    }
}

/// The `i`-th point of the golden-ratio sequence in [0, 1): evenly spread phases.
fn phase(i: usize) -> f64 {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    (f64::from(i) * 0.618_033_988_749_895).fract()
}

/// Polls `/status` until the generation passes `before`; the instant it was seen.
fn wait_generation(health: SocketAddr, before: u64, deadline: Instant) -> Result<Instant> {
    loop {
        let (code, body) = http_get(health, "/status")?;
        ensure!(code == 200, "GET /status: {code}");
        let seen = Instant::now();
        let status: Value = serde_json::from_str(&body).context("parsing /status")?;
        let generation = status["generation"].as_u64().context("no generation")?;
        if generation > before {
            if let Some(error) = status["last_error"].as_str() {
                bail!("the agent applied with an error: {error}");
            }
            return Ok(seen);
        }
        ensure!(
            Instant::now() < deadline,
            "generation still {before} after {CHANGE_TIMEOUT:?}; last status {status}"
        );
        thread::sleep(STATUS_INTERVAL);
    }
}

/// Connects to `server` until the verdict is `allowed`; the start of the first attempt that
/// saw it. A denial is confirmed by one more attempt.
fn wait_verdict(server: SocketAddr, allowed: bool, deadline: Instant) -> Result<Instant> {
    loop {
        let attempt = Instant::now();
        let connected = connects(server, if allowed { ALLOW_WAIT } else { DENY_WAIT });
        if connected == allowed && (allowed || !connects(server, DENY_WAIT)) {
            return Ok(attempt);
        }
        ensure!(
            Instant::now() < deadline,
            "{server} still {} after {CHANGE_TIMEOUT:?}",
            if allowed { "denied" } else { "allowed" }
        );
        thread::sleep(PROBE_INTERVAL);
    }
}

/// Whether a TCP connection to `server` opens within `wait`. The connection is reset at
/// once, so that thousands of probes leave no `TIME_WAIT` behind.
fn connects(server: SocketAddr, wait: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&server, wait) else {
        return false;
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small");
    // SAFETY: a valid socket and a pointer to a linger value of the given length.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        );
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------------------------

/// The `weir` binary: `$WEIR_BIN`, or else `cargo build --release` of it.
fn release_weir() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate sits in the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("weir-bench: agent: cargo build --release -p dataplane-user --bin weir");
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "dataplane-user",
            "--bin",
            "weir",
        ])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(output.status.success(), "cargo build of weir failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "weir")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo reported no weir executable")
}

/// A running `weir run` in the node namespace (the test bed's [`Agent`], stopped on drop),
/// with what this benchmark measures of it.
struct AgentProcess<'t> {
    agent: Agent<'t>,
}

impl<'t> AgentProcess<'t> {
    /// Starts `binary` with `--poll-ms poll_ms` on `manifests`, in `topology`'s node
    /// namespace. The test bed launches it with `ip netns exec` and `--no-socket-lb`: its
    /// fresh `/sys` has no cgroups, and the machine's root cgroup is no place for a
    /// benchmark's programs.
    fn start(topology: &'t Topology, binary: &Path, manifests: &Path, poll_ms: u64) -> Self {
        let agent = Agent::options()
            .binary(binary)
            .arg("--poll-ms")
            .arg(poll_ms.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .ready_within(READY_TIMEOUT, READY_INTERVAL)
            .stop_within(STOP_TIMEOUT)
            .start(topology, manifests);
        Self { agent }
    }

    /// Waits for `/readyz` 200; the time from spawn.
    fn wait_ready(&mut self) -> Duration {
        self.agent.wait_ready()
    }

    /// The generation `/status` reports.
    fn generation(&mut self) -> u64 {
        self.agent.status().generation
    }

    /// The Service maps' entries `/status` reports; an error unless every Service was
    /// written: one frontend each, and a backend per endpoint.
    fn service_entries(&mut self) -> Result<ServiceEntries> {
        let status = self.agent.status().raw;
        let entries = |map: &str| {
            status["maps"][map]["entries"]
                .as_u64()
                .with_context(|| format!("no {map} in /status maps: {}", status["maps"]))
        };
        let found = ServiceEntries {
            frontends: entries(names::SERVICES)?,
            backends: entries(names::BACKENDS)?,
            maglev_tables: entries(names::MAGLEV_SMALL)?
                + entries(names::MAGLEV_MEDIUM)?
                + entries(names::MAGLEV_LARGE)?,
        };
        let (services, endpoints) = (
            u64::try_from(SERVICES)?,
            u64::try_from(ENDPOINTS_PER_SERVICE)?,
        );
        ensure!(
            found.frontends == services && found.backends == services * endpoints,
            "the agent wrote {found:?} for {SERVICES} Services of {ENDPOINTS_PER_SERVICE} \
             endpoints; status summary: {}",
            status["summary"]
        );
        Ok(found)
    }

    /// A `kB` line of `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB.
    fn proc_status_kib(&self, field: &str) -> Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.agent.pid()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.agent.pid()))
    }

    /// `utime + stime` of the whole process, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.agent.pid()))?;
        // Fields after the command name (which may hold spaces): state is field 3, so
        // utime (14) and stime (15) are the 12th and 13th after it.
        let after = &stat[stat.rfind(')').context("malformed stat")? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .context("short stat")?
                .parse()
                .context("stat field")
        };
        Ok(field(11)? + field(12)?)
    }

    /// Waits until the agent uses less than [`BUSY_PERCENT`] of a core over two
    /// [`SETTLE_SLICE`]s in a row, for at most `max`: after a long apply, its poll timer fires
    /// the missed ticks back to back before it keeps its period again. Returns the CPU % of
    /// each slice.
    fn settle(&mut self, max: Duration) -> Result<Vec<f64>> {
        let deadline = Instant::now() + max;
        let mut slices = Vec::new();
        while Instant::now() < deadline {
            slices.push(self.cpu_percent_over(SETTLE_SLICE)?);
            if slices.len() >= 2 && slices[slices.len() - 2..].iter().all(|p| *p < BUSY_PERCENT) {
                break;
            }
        }
        Ok(slices)
    }

    /// CPU time used over `window`, as a percentage of one core.
    fn cpu_percent_over(&mut self, window: Duration) -> Result<f64> {
        self.agent.assert_running();
        let (t0, c0) = (Instant::now(), self.cpu_ticks()?);
        thread::sleep(window);
        let (t1, c1) = (Instant::now(), self.cpu_ticks()?);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
        #[expect(
            clippy::cast_precision_loss,
            reason = "tick counts and rates are far below 2^52"
        )]
        let cpu_s = (c1 - c0) as f64 / hz as f64;
        Ok(cpu_s / (t1 - t0).as_secs_f64() * 100.0)
    }

    /// The `elapsed_ms` of every "applied" line the agent has logged so far.
    fn applied_ms(&self) -> Vec<f64> {
        self.agent
            .log()
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" applied") || l.ends_with("applied"))
            .filter_map(|l| {
                let rest = &l[l.find("elapsed_ms=")? + "elapsed_ms=".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u32>().ok().map(f64::from)
            })
            .collect()
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET path` on the agent's health address: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    Ok(testbed::http_get(addr, path)?)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// The nearest-rank percentile `q` (0 < q <= 1) of `values`, which must not be empty.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank between 1 and a small sample count"
    )]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[expect(
    clippy::cast_precision_loss,
    reason = "memory sizes are far below 2^52 KiB"
)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// p50, p99 and max of the durations of `samples` picked by `pick`, in ms.
fn spread(samples: &[Change], pick: impl Fn(&Change) -> Duration) -> (f64, f64, f64) {
    let v: Vec<f64> = samples.iter().map(|c| ms(pick(c))).collect();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    )
}

/// The median in ms of the probe times of the samples `which` picks, or `-` for none.
fn median_probe(samples: &[Change], which: impl Fn(&Change) -> bool) -> String {
    let v: Vec<f64> = samples
        .iter()
        .filter(|c| which(c))
        .map(|c| ms(c.probe))
        .collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.0}", median(&v))
    }
}

impl AgentReport {
    fn ready_ms(&self) -> Vec<f64> {
        self.ready.iter().copied().map(ms).collect()
    }

    /// The tables of the agent part.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_setup(&mut out);
        self.render_process(&mut out);
        self.render_changes(&mut out);
        self.render_breakdown(&mut out);
        out
    }

    fn render_setup(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Agent process: weir run ({}) in a node namespace with {} local pods (veth pairs)\n\
             over {} manifest files: {} pods in {} namespaces (status.podIPs IPv4 + IPv6), {} \
             NetworkPolicies ({} rules: pod, namespace and ipBlock peers), {} ClusterIP Services\n\
             with an EndpointSlice each ({ENDPOINTS_PER_SERVICE} pods of one app; the agent's \
             maps after ready: {} frontends, {} backends, {} Maglev tables)",
            self.binary.display(),
            self.local_pods,
            self.files,
            self.pods,
            cluster::NAMESPACES,
            self.policies,
            self.rules,
            self.services,
            self.service_entries.frontends,
            self.service_entries.backends,
            self.service_entries.maglev_tables
        );
        let _ = writeln!(
            out,
            "  machine load average (1/5/15 min): {} at the start, {} at the end",
            self.loadavg[0], self.loadavg[1]
        );
    }

    fn render_process(&self, out: &mut String) {
        let ready = self.ready_ms();
        let list: Vec<String> = ready.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            out,
            "  {:<38}{:>9.0} ms  median of {} starts ({} ms)",
            "start to ready (/readyz 200)",
            median(&ready),
            ready.len(),
            list.join(", ")
        );
        for (label, kib) in [
            ("peak memory (VmHWM) after ready", self.hwm_ready_kib),
            ("RSS at rest (VmRSS)", self.rss_rest_kib),
            ("peak memory (VmHWM) after changes", self.hwm_changes_kib),
        ] {
            let _ = writeln!(out, "  {label:<38}{:>9.1} MiB", mib(kib));
        }
        out.push('\n');
    }

    fn render_changes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Change latency: one policy file of {} rewritten (dot-file + rename), flipping TCP\n\
             {} -> {}:{FLIP_PORT} between denied and allowed; from the rename to\n\
             the agent's /status generation moving, and to a probe between the pods seeing it.\n\
             p99 is nearest-rank: below 100 samples, the largest.",
            self.policies,
            pod_id(CLIENT),
            pod_id(SERVER)
        );
        let _ = write!(out, "{:<40}", "");
        for run in &self.runs {
            let _ = write!(out, "{:>34}", format!("--poll-ms {}", run.poll_ms));
        }
        out.push('\n');
        let row = |out: &mut String, label: &str, cell: &dyn Fn(&PollRun) -> String| {
            let _ = write!(out, "  {label:<38}");
            for run in &self.runs {
                let _ = write!(out, "{:>34}", cell(run));
            }
            out.push('\n');
        };
        row(out, "CPU at rest (% of one core, 10 s)", &|r| {
            format!("{:.2} %", r.cpu_rest_pct)
        });
        for (label, pick) in [
            (
                "rename -> generation+1  p50/p99/max",
                gen_of as fn(&Change) -> Duration,
            ),
            ("rename -> probe verdict p50/p99/max", probe_of),
        ] {
            row(out, label, &|r| {
                let (p50, p99, max) = spread(&r.samples, pick);
                format!("{p50:.0} / {p99:.0} / {max:.0} ms (n={})", r.samples.len())
            });
        }
        row(out, "  probe median: to allowed / to denied", &|r| {
            format!(
                "{} / {} ms",
                median_probe(&r.samples, |c| c.to_allowed),
                median_probe(&r.samples, |c| !c.to_allowed)
            )
        });
        row(out, "changes that met the agent at rest [2]", &|r| {
            let rest = r.samples.iter().filter(|c| c.from_rest).count();
            format!("{rest} of {}", r.samples.len())
        });
        row(out, "  probe median: at rest / catching up", &|r| {
            format!(
                "{} / {} ms",
                median_probe(&r.samples, |c| c.from_rest),
                median_probe(&r.samples, |c| !c.from_rest)
            )
        });
        row(out, "agent's compile+apply per change [1]", &|r| {
            if r.apply_ms.is_empty() {
                "n/a".to_owned()
            } else {
                format!("{:.0} ms (n={})", median(&r.apply_ms), r.apply_ms.len())
            }
        });
        out.push('\n');
    }

    fn render_breakdown(&self, out: &mut String) {
        let p = &self.in_process;
        let _ = writeln!(
            out,
            "[1] elapsed_ms of the agent's \"applied\" log lines (compile, map diff, attach).\n\
             [2] Under {BUSY_PERCENT:.0}% of a core in the {} ms before the rename: not still busy\n\
             with the change before. A change that meets the agent at rest waits 0..1 period for\n\
             the change check, then one more (debounce): about 1.5 periods on average.\n\
             Where a change's time goes: two change checks (the tick that sees it, the debounce tick),\n\
             then the agent re-reads the changed file, assembles every file's kept result and\n\
             recompiles everything, then writes the map difference.\n\
             The same steps in this process, same directory, median of {IN_PROCESS_RUNS}:\n\
             \x20 change check per tick (inotify events)    {:>8.1} ms\n\
             \x20 walk of the tree (stat of {} files)   {:>8.1} ms  every {} s, a safety net\n\
             \x20 first load (read + YAML + validation)     {:>8.1} ms\n\
             \x20 reload after one file changed            {:>8.1} ms\n\
             \x20 compile from scratch ({} policies, {} Services, {} local pods) {:>8.1} ms\n\
             One endpoint changed (its slice file rewritten), median of {ENDPOINT_ROUNDS}:\n\
             \x20 reload after the slice file changed     {:>8.1} ms\n\
             \x20 compile over the last (wall / CPU)       {:>8.3} / {:.3} ms\n",
            SETTLE_SLICE.as_millis(),
            ms(p.version_check),
            self.files,
            ms(p.walk),
            RESCAN_INTERVAL.as_secs(),
            ms(p.load),
            ms(p.reload_one),
            self.policies,
            self.services,
            self.local_pods,
            ms(p.compile),
            ms(p.endpoint_reload),
            ms(p.endpoint_compile),
            ms(p.endpoint_compile_cpu)
        );
    }

    /// The `key=value` lines of the agent part.
    pub fn keys(&self) -> Vec<(String, String)> {
        let ready = self.ready_ms();
        let p = &self.in_process;
        let mut kv: Vec<(String, String)> = vec![
            ("agent_pods".into(), self.pods.to_string()),
            ("agent_policies".into(), self.policies.to_string()),
            ("agent_rules".into(), self.rules.to_string()),
            ("agent_services".into(), self.services.to_string()),
            (
                "agent_service_frontends".into(),
                self.service_entries.frontends.to_string(),
            ),
            (
                "agent_service_backends".into(),
                self.service_entries.backends.to_string(),
            ),
            ("agent_manifest_files".into(), self.files.to_string()),
            ("agent_local_pods".into(), self.local_pods.to_string()),
            ("agent_ready_ms".into(), format!("{:.0}", median(&ready))),
            ("agent_ready_samples".into(), ready.len().to_string()),
            (
                "agent_vmhwm_ready_kib".into(),
                self.hwm_ready_kib.to_string(),
            ),
            ("agent_vmrss_rest_kib".into(), self.rss_rest_kib.to_string()),
            (
                "agent_vmhwm_after_changes_kib".into(),
                self.hwm_changes_kib.to_string(),
            ),
            (
                "agent_version_check_ms".into(),
                format!("{:.1}", ms(p.version_check)),
            ),
            ("agent_walk_ms".into(), format!("{:.1}", ms(p.walk))),
            ("agent_load_ms".into(), format!("{:.0}", ms(p.load))),
            (
                "agent_reload_one_ms".into(),
                format!("{:.1}", ms(p.reload_one)),
            ),
            ("agent_compile_ms".into(), format!("{:.0}", ms(p.compile))),
            (
                "agent_endpoint_reload_ms".into(),
                format!("{:.1}", ms(p.endpoint_reload)),
            ),
            (
                "agent_endpoint_compile_ms".into(),
                format!("{:.3}", ms(p.endpoint_compile)),
            ),
            (
                "agent_endpoint_compile_cpu_ms".into(),
                format!("{:.3}", ms(p.endpoint_compile_cpu)),
            ),
        ];
        for run in &self.runs {
            run.keys(&mut kv);
        }
        kv
    }
}

fn gen_of(c: &Change) -> Duration {
    c.generation
}

fn probe_of(c: &Change) -> Duration {
    c.probe
}

impl PollRun {
    fn keys(&self, kv: &mut Vec<(String, String)>) {
        let p = format!("agent_poll{}", self.poll_ms);
        let (g50, g99, _) = spread(&self.samples, gen_of);
        let (p50, p99, _) = spread(&self.samples, probe_of);
        let apply = if self.apply_ms.is_empty() {
            f64::NAN
        } else {
            median(&self.apply_ms)
        };
        kv.extend([
            (
                format!("{p}_cpu_rest_pct"),
                format!("{:.2}", self.cpu_rest_pct),
            ),
            (format!("{p}_changes"), self.samples.len().to_string()),
            (
                format!("{p}_changes_from_rest"),
                self.samples
                    .iter()
                    .filter(|c| c.from_rest)
                    .count()
                    .to_string(),
            ),
            (format!("{p}_generation_p50_ms"), format!("{g50:.0}")),
            (format!("{p}_generation_p99_ms"), format!("{g99:.0}")),
            (format!("{p}_probe_p50_ms"), format!("{p50:.0}")),
            (format!("{p}_probe_p99_ms"), format!("{p99:.0}")),
            (format!("{p}_apply_ms"), format!("{apply:.0}")),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated policy reads back, through the agent's own loader, as itself.
    #[test]
    fn rendered_policies_read_back_as_generated() {
        let state = cluster::generate(20 * cluster::RULES_PER_POLICY).state;
        for policy in &state.policies {
            let yaml = to_yaml(&policy_json(policy));
            let loaded = weir::manifest::load_str(Path::new("p.yaml"), &yaml)
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let mut read = Policy::clone(&loaded.state.policies[0]);
            read.origin = policy.origin.clone();
            assert_eq!(&read, &**policy, "\n{yaml}");
        }
    }

    /// Services and slices read back, through the agent's own loader, as the model of the
    /// same set; each slice lists exactly the pods its Service's selector picks.
    #[test]
    fn rendered_services_read_back_as_generated_and_select_their_endpoints() {
        let state = cluster::generate(cluster::RULES_PER_POLICY).state;
        let specs = cluster_services(&state).unwrap();
        assert_eq!(specs.len(), SERVICES);
        let sample: Vec<ServiceSpec> = specs.iter().step_by(997).cloned().collect();
        let (services, slices) = service_set::to_model(&sample);
        for ((spec, service), slice) in sample.iter().zip(&services).zip(&slices) {
            let yaml = format!(
                "{}---\n{}",
                to_yaml(&service_set::service_json(spec)),
                to_yaml(&service_set::slice_json(spec))
            );
            let mut loaded = weir::manifest::load_str(Path::new("s.yaml"), &yaml)
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
                .state;
            std::sync::Arc::make_mut(&mut loaded.services[0]).origin = service.origin.clone();
            std::sync::Arc::make_mut(&mut loaded.endpoint_slices[0]).origin = slice.origin.clone();
            assert_eq!(loaded.services, std::slice::from_ref(service), "\n{yaml}");
            assert_eq!(
                loaded.endpoint_slices,
                std::slice::from_ref(slice),
                "\n{yaml}"
            );
            let selector = service.selector.as_ref().expect("a selector");
            let selected: Vec<IpAddr> = state
                .pods
                .iter()
                .filter(|p| p.namespace == spec.namespace)
                .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .map(|p| bed_addresses(p.ips[0]).unwrap().0.into())
                .collect();
            let listed: Vec<IpAddr> = slice
                .endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect();
            assert_eq!(listed, selected, "{}/{}", spec.namespace, spec.name);
        }
    }

    #[test]
    fn yaml_nests_maps_and_lists_in_block_style() {
        let value = json!({"a": {"b": [{"c": 1, "d": "x"}, 2], "e": {}}, "f.io/g": []});
        assert_eq!(
            to_yaml(&value),
            "a:\n  b:\n    - c: 1\n      d: \"x\"\n    - 2\n  e: {}\nf.io/g: []\n"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert!((percentile(&v, 0.5) - 15.0).abs() < f64::EPSILON);
        assert!((percentile(&v, 0.99) - 30.0).abs() < f64::EPSILON);
        assert!((percentile(&[7.0], 0.99) - 7.0).abs() < f64::EPSILON);
    }
}
