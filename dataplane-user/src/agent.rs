//! The agent: follows a manifests directory and this node's routes, recompiles on change,
//! applies the difference, and serves health, readiness and status over HTTP.
//!
//! Level-triggered: every change (file written, pod interface added) recomputes the whole
//! desired state and applies the difference. A bad change set is refused whole and the last
//! good state keeps being enforced.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::compile::{self, NodeView};
use crate::dataplane::{Dataplane, FlowEvents};
use crate::health_ports::{HealthPorts, PortStatus};
use crate::model::DesiredState;
use crate::node;
use crate::observer::Observer;
use crate::source::Source;

/// How the agent runs.
pub struct Config {
    /// Where the desired state comes from.
    pub source: Box<dyn Source>,
    /// Where `/healthz`, `/readyz`, `/status` and `/metrics` are served.
    pub health_addr: SocketAddr,
    /// How often the source (for a directory, the inotify events waiting) and the routes are
    /// checked for changes; a change is acted on once they have held still for one interval.
    pub poll_interval: Duration,
    /// Where maps and links are pinned, so enforcement outlives the agent.
    pub pins: crate::pins::Pins,
    /// How many flow events the programs may send.
    pub flow_events: FlowEvents,
    /// This node's name: endpoints whose `nodeName` it is count as local.
    pub node_name: Option<String>,
    /// The cgroup (as given: `/sys/fs/cgroup`, or on a hybrid host its parent) whose processes
    /// reach Services at the socket level; `None` turns the socket programs off, and
    /// detaches those an earlier agent pinned.
    pub socket_cgroup: Option<PathBuf>,
    /// The interfaces traffic from outside the node arrives on.
    pub uplinks: node::UplinkChoice,
    /// Forward the programs' per-packet debug logs (aya-log) to `tracing`.
    pub ebpf_debug_log: bool,
}

/// What the agent reports on `/status`; shared between the sync loop and the HTTP server.
#[derive(Clone, Debug, Default)]
struct Status {
    /// Set once the first desired state is enforced.
    ready: bool,
    /// Number of successful applies so far.
    generation: u64,
    last_error: Option<String>,
    last_sync: Option<SystemTime>,
    local_pods: Vec<String>,
    /// The uplinks (names) the uplink program is attached to.
    uplinks: Vec<String>,
    summary: String,
    counters: Option<crate::dataplane::Counters>,
    /// What the source reads, and how its connection is doing.
    source: String,
    source_health: Option<String>,
    conntrack: Option<crate::dataplane::ConntrackStats>,
    /// The `healthCheckNodePort`s served (or that could not be bound).
    health_ports: Vec<PortStatus>,
}

type Shared = Arc<Mutex<Status>>;

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let status: Shared = Arc::default();
    let listener = TcpListener::bind(config.health_addr)
        .await
        .with_context(|| format!("binding the health endpoint {}", config.health_addr))?;
    let observer = Arc::new(Observer::default());
    tokio::spawn(serve_http(listener, status.clone(), observer.clone()));
    let mut dataplane = Dataplane::load_pinned(&config.pins).context("loading the dataplane")?;
    if let Err(err) = observer.attach(&mut dataplane, config.flow_events) {
        // Enforcement does not depend on it: go on without flows.
        tracing::warn!(error = %anyhow::Error::new(err), "flow events unavailable");
    }
    attach_sockets(&mut dataplane, config.socket_cgroup.as_deref())?;
    let uplinks = attach_uplinks(&mut dataplane, &config.uplinks)?;
    status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .uplinks = uplinks;
    if config.ebpf_debug_log {
        let log = dataplane
            .enable_debug_log(crate::dataplane::TracingLog)
            .context("opening the eBPF debug log")?;
        tokio::spawn(forward_debug_log(log));
    }
    tracing::info!(source = %config.source.describe(), health = %config.health_addr, "agent started");

    let mut source = config.source;
    let mut sync = SyncLoop {
        observer,
        node_name: config.node_name,
        ..SyncLoop::default()
    };
    let mut ticker = tokio::time::interval(config.poll_interval);
    // After a long apply, one check is enough: a burst of missed ticks would only spin.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut conntrack_gc = tokio::time::interval(CONNTRACK_GC_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => sync.tick(source.as_mut(), &mut dataplane, &status),
            _ = conntrack_gc.tick() => collect_conntrack(&mut dataplane, &status),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Pinned programs outlive the agent: stop them sending events nobody will read.
    if let Err(err) = dataplane.set_flow_events(FlowEvents::Off) {
        tracing::warn!(error = %anyhow::Error::new(err), "turning flow events off");
    }
    tracing::info!(
        pins = %config.pins.root().display(),
        "agent stopping; pinned programs keep enforcing (weir uninstall removes them)"
    );
    Ok(())
}

/// Attaches the uplink program to the uplinks `choice` names (detaching it from any other an
/// earlier agent left), and sets the masquerade addresses from theirs: the uplinks' names.
fn attach_uplinks(
    dataplane: &mut Dataplane,
    choice: &node::UplinkChoice,
) -> anyhow::Result<Vec<String>> {
    let uplinks = node::uplinks(choice).context("finding the uplinks (see --uplink)")?;
    let ifindexes: Vec<u32> = uplinks.interfaces.iter().map(|(i, _)| *i).collect();
    dataplane
        .attach_uplinks(&ifindexes)
        .context("attaching to the uplinks")?;
    dataplane
        .set_masquerade(uplinks.masquerade_v4, uplinks.masquerade_v6)
        .context("setting the masquerade addresses")?;
    let names: Vec<String> = uplinks.interfaces.into_iter().map(|(_, n)| n).collect();
    tracing::info!(
        uplinks = ?names,
        masquerade_v4 = ?uplinks.masquerade_v4,
        masquerade_v6 = ?uplinks.masquerade_v6,
        "Services answer from outside the node on these uplinks"
    );
    Ok(names)
}

/// Reads the programs' debug log whenever records wait, until the agent exits.
async fn forward_debug_log(log: crate::dataplane::DebugLog) {
    // SAFETY: the logger owns its ring's descriptor, never replaces it, and closes it only
    // when dropped, which the `AsyncFd` does (as for the flow ring, `flows::ring`).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    };
    let mut log = match registered {
        Ok(log) => log,
        Err(err) => {
            tracing::warn!(error = %err, "eBPF debug log unavailable");
            return;
        }
    };
    loop {
        let Ok(mut ready) = log.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Attaches the socket programs to the cgroup `given` resolves to, or with none detaches
/// those an earlier agent left. An attachment that fails stops the agent: a node whose
/// processes silently miss Services is worse than one that says why it did not start.
fn attach_sockets(dataplane: &mut Dataplane, given: Option<&Path>) -> anyhow::Result<()> {
    let Some(given) = given else {
        let removed = dataplane
            .detach_pinned_sockets()
            .context("detaching the socket programs of an earlier agent")?;
        if removed > 0 {
            tracing::info!(removed, "socket programs of an earlier agent detached");
        }
        return Ok(());
    };
    let hint = "pass --cgroup with a cgroup v2 folder, or --no-socket-lb";
    let cgroup = Dataplane::socket_cgroup(given)
        .with_context(|| format!("finding the cgroup for the socket programs ({hint})"))?;
    // The agent runs in the node's network namespace: its own is the one to translate for.
    let node_netns = crate::dataplane::netns_cookie().context("reading the node's netns cookie")?;
    dataplane
        .attach_sockets(&cgroup, node_netns)
        .with_context(|| {
            format!(
                "attaching the socket programs to {} ({hint})",
                cgroup.display()
            )
        })?;
    tracing::info!(cgroup = %cgroup.display(), "socket programs attached: its processes reach Services");
    Ok(())
}

/// How often expired connection-tracking entries are collected.
const CONNTRACK_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Occupancy past which a nearly full conntrack table is worth a warning: past capacity the
/// least recently used connections are evicted, and judged as new on their next packet.
const CONNTRACK_WARN_PERCENT: usize = 90;

fn collect_conntrack(dataplane: &mut Dataplane, status: &Shared) {
    match dataplane.collect_conntrack() {
        Ok(ct) => {
            let percent = ct.live * 100 / (ct.capacity as usize).max(1);
            if percent >= CONNTRACK_WARN_PERCENT {
                tracing::warn!(
                    live = ct.live,
                    capacity = ct.capacity,
                    "conntrack table {percent}% full: least recently used connections will be \
                     evicted and re-checked against policy"
                );
            }
            if ct.collected > 0 {
                tracing::debug!(
                    collected = ct.collected,
                    live = ct.live,
                    "conntrack collected"
                );
            }
            status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .conntrack = Some(ct);
        }
        Err(err) => tracing::warn!(error = %anyhow::Error::new(err), "collecting conntrack"),
    }
}

/// Ticks a change may keep the inputs moving before it is acted on anyway: a cluster in
/// constant churn (a large rollout) must not starve the debounce.
const MAX_DEBOUNCE_TICKS: u32 = 8;

/// Change detection with a debounce: a change is acted on once the inputs have stayed the
/// same for one poll interval (so a burst of file writes becomes one change set), or after
/// [`MAX_DEBOUNCE_TICKS`] of continuous change.
#[derive(Default)]
struct SyncLoop {
    /// Fingerprint of the inputs at the previous tick.
    seen: Option<Inputs>,
    /// Consecutive ticks the inputs moved without being acted on.
    unsettled: u32,
    /// Fingerprint of the inputs last acted on (applied or refused).
    acted: Option<Inputs>,
    /// The desired state last loaded without error.
    state: Option<DesiredState>,
    /// Told about every generation applied.
    observer: Arc<Observer>,
    /// This node's name, for [`NodeView::node_name`].
    node_name: Option<String>,
    /// The health check node ports of the Services last applied.
    health_ports: HealthPorts,
}

/// What the agent's output depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Inputs {
    source: u64,
    node: NodeView,
}

impl SyncLoop {
    fn tick(&mut self, source: &mut dyn Source, dataplane: &mut Dataplane, status: &Shared) {
        {
            let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
            s.source = source.describe();
            s.source_health = source.health();
        }
        self.retry_health_ports(status);
        let inputs = match read_inputs(source, self.node_name.as_ref()) {
            Ok(inputs) => inputs,
            Err(err) => {
                record_error(status, format!("{err:#}"));
                return;
            }
        };
        let stable = self.seen.as_ref() == Some(&inputs);
        self.seen = Some(inputs.clone());
        let first = self.acted.is_none();
        let starving = self.unsettled >= MAX_DEBOUNCE_TICKS;
        if self.acted.as_ref() == Some(&inputs) {
            self.unsettled = 0;
            refresh_counters(dataplane, status);
            return;
        }
        if !(stable || first || starving) {
            self.unsettled += 1;
            refresh_counters(dataplane, status);
            return;
        }
        self.unsettled = 0;
        let source_changed = self
            .acted
            .as_ref()
            .is_none_or(|a| a.source != inputs.source);
        self.acted = Some(inputs.clone());
        // The state replaced: freeing it (a large tree of small allocations) waits until the
        // new one is enforced.
        let mut replaced = None;
        if source_changed || self.state.is_none() {
            match source.load() {
                Ok(loaded) => {
                    for ignored in &loaded.ignored {
                        tracing::info!("{ignored}");
                    }
                    replaced = self.state.replace(loaded.state);
                }
                Err(err) => {
                    for e in &err.errors {
                        tracing::error!("{e}");
                    }
                    record_error(status, err.to_string());
                    return;
                }
            }
        }
        let Some(state) = &self.state else { return };
        apply(
            state,
            &inputs.node,
            dataplane,
            status,
            &self.observer,
            &mut self.health_ports,
        );
        drop(replaced);
    }

    /// Tries again to bind the health check ports another process held.
    fn retry_health_ports(&mut self, status: &Shared) {
        let before = self.health_ports.status();
        if before.iter().all(|port| port.error.is_none()) {
            return;
        }
        self.health_ports.retry();
        status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .health_ports = self.health_ports.status();
    }
}

fn read_inputs(source: &mut dyn Source, node_name: Option<&String>) -> anyhow::Result<Inputs> {
    let source = source.version()?;
    let mut node = node::read().context("reading this node's addresses and routes")?;
    node.node_name = node_name.cloned();
    Ok(Inputs { source, node })
}

/// Compiles and applies `state`, then tells `observer` and, last, `status`: a client that
/// sees the generation move finds that generation's maps and names in `/status`, `/flows`
/// and `/explain`. A failure is logged and recorded in `status`.
fn apply(
    state: &DesiredState,
    node: &NodeView,
    dataplane: &mut Dataplane,
    status: &Shared,
    observer: &Observer,
    health_ports: &mut HealthPorts,
) {
    let started = std::time::Instant::now();
    let compiled = match compile::compile_with(state, node, dataplane.applied()) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!("{err}");
            record_error(status, err.to_string());
            return;
        }
    };
    for w in &compiled.warnings {
        tracing::warn!("{w}");
    }
    match dataplane.apply(&compiled) {
        Ok(applied) => {
            tracing::info!(
                upserts = applied.upserts,
                removals = applied.removals,
                attached = applied.attached,
                detached = applied.detached,
                elapsed_ms = started.elapsed().as_millis(),
                "applied"
            );
            let attached: Vec<u32> = dataplane.attached().collect();
            observer.publish(state, &compiled, &attached);
            // Only once applied, so that a health check never promises endpoints the maps do
            // not have; and before the generation moves, as what `/status` reports with it.
            health_ports.sync(compiled.services.health_checks());
            let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
            s.health_ports = health_ports.status();
            s.ready = true;
            s.generation += 1;
            s.last_error = None;
            s.last_sync = Some(SystemTime::now());
            s.summary = compiled.to_string();
            s.local_pods = compiled
                .local_pods
                .values()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
        }
        Err(err) => {
            let text = format!("{:#}", anyhow::Error::new(err));
            tracing::error!("applying: {text}; the previous state stays enforced");
            record_error(status, text);
        }
    }
}

fn record_error(status: &Shared, text: String) {
    status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .last_error = Some(text);
}

fn refresh_counters(dataplane: &Dataplane, status: &Shared) {
    if let Ok(c) = dataplane.counters() {
        status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters = Some(c);
    }
}

/// Reads up to the end of the request head (clients may send it in several writes), within
/// 2 s and 8 KiB.
pub(crate) async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A minimal HTTP/1.1 server: probes and scrapes need nothing more.
async fn serve_http(listener: TcpListener, status: Shared, observer: Arc<Observer>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        let observer = observer.clone();
        tokio::spawn(async move {
            let Some(request) = read_request_head(&mut stream).await else {
                return;
            };
            let target = request.split_whitespace().nth(1).unwrap_or("/");
            if crate::api::serve(&observer, target, &mut stream).await {
                return;
            }
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            let snapshot = status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let (code, content_type, body) = respond(path, &snapshot, &observer);
            let reply = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

fn respond(path: &str, s: &Status, observer: &Observer) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" if s.ready => ("200 OK", "text/plain", "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".into(),
        ),
        "/status" => ("200 OK", "application/json", status_json(s, observer)),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(s, observer)),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

fn status_json(s: &Status, observer: &Observer) -> String {
    let last_sync = s
        .last_sync
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let mut out = serde_json::json!({
        "ready": s.ready,
        "generation": s.generation,
        "last_error": s.last_error,
        "last_sync_unix": last_sync,
        "local_pods": s.local_pods,
        "uplinks": s.uplinks,
        "source": s.source,
        "source_health": s.source_health,
        "summary": s.summary,
        "health_check_node_ports": s.health_ports.iter().map(|p| serde_json::json!({
            "port": p.port,
            "service": format!("{}/{}", p.answer.namespace, p.answer.name),
            "local_endpoints": p.answer.local_endpoints,
            "serving": p.error.is_none(),
            "error": p.error,
        })).collect::<Vec<_>>(),
        "conntrack": s.conntrack.map(|ct| serde_json::json!({
            "live": ct.live,
            "capacity": ct.capacity,
        })),
        "counters": s.counters.as_ref().map(|c| serde_json::json!({
            "passed": c.passed,
            "dropped": c.dropped,
        })),
    });
    if let (Some(out), serde_json::Value::Object(more)) = (out.as_object_mut(), observer.status()) {
        out.extend(more);
    }
    out.to_string()
}

fn metrics(s: &Status, observer: &Observer) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TYPE weir_generation counter\nweir_generation {}",
        s.generation
    );
    if let Some(c) = &s.counters {
        let _ = writeln!(out, "# TYPE weir_packets_passed_total counter");
        for (reason, n) in &c.passed {
            let _ = writeln!(out, "weir_packets_passed_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE weir_packets_dropped_total counter");
        for (reason, n) in &c.dropped {
            let _ = writeln!(out, "weir_packets_dropped_total{{reason=\"{reason}\"}} {n}");
        }
    }
    if let Some(ct) = &s.conntrack {
        let _ = writeln!(
            out,
            "# TYPE weir_conntrack_entries gauge\nweir_conntrack_entries {}\n\
             # TYPE weir_conntrack_capacity gauge\nweir_conntrack_capacity {}",
            ct.live, ct.capacity
        );
    }
    observer.metrics(&mut out);
    out
}
