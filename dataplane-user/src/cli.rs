//! The client commands of `weir`: `flows`, `explain` and `status` ask a running agent over
//! its HTTP endpoint and print the answer for people (or as JSON lines with `-o json`).

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::api::encode_query;
use crate::dataplane::FlowEvents;
use crate::explain::Explanation;
use crate::flows::{FlowFilter, FlowRecord, Verdict};
use crate::manifest::Loaded;
use crate::model::{DesiredState, Service, ServiceKind, TargetPort};

/// The agent's default `--health-addr`.
pub const DEFAULT_AGENT: &str = "127.0.0.1:9876";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole answer (not a `--follow` stream) takes no longer than this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// The agent's JSON, one object per line.
    Json,
}

/// `weir run`'s flow-event options.
#[derive(Args, Debug)]
pub struct FlowEventArgs {
    /// Flow events (drops and new connections) each CPU may send per second; 0 turns them
    /// off. Past the rate they are counted, not sent.
    #[arg(long, default_value_t = 1000)]
    pub flow_events_per_sec: u32,
    /// Events a CPU may send at once after a quiet spell.
    #[arg(long, default_value_t = 100)]
    pub flow_events_burst: u32,
}

impl FlowEventArgs {
    /// The setting these options make.
    pub fn events(&self) -> FlowEvents {
        match (
            NonZeroU32::new(self.flow_events_per_sec),
            NonZeroU32::new(self.flow_events_burst),
        ) {
            (Some(per_sec), Some(burst)) => FlowEvents::Limited { per_sec, burst },
            (Some(per_sec), None) => FlowEvents::Limited {
                per_sec,
                burst: NonZeroU32::MIN,
            },
            (None, _) => FlowEvents::Off,
        }
    }
}

/// `weir run`'s options for Services reached from the node's own processes.
#[derive(Args, Debug)]
pub struct SocketLbArgs {
    /// Cgroup (v2) whose processes, and those of every cgroup below it, reach Services at
    /// the socket level: a `connect()` or `sendto()` to a `ClusterIP` goes straight to a
    /// backend, and `getpeername()`/`recvfrom()` show the `ClusterIP`. The default, the
    /// root, covers every process of the node, as Cilium's socket load balancing does; on a
    /// host with the hybrid v1/v2 layout, its `unified` folder is used.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CGROUP)]
    pub cgroup: PathBuf,
    /// Attach no socket programs (and detach those an earlier agent left): the node's own
    /// processes then reach no `ClusterIP` through Weir (pods still do).
    #[arg(long, conflicts_with = "cgroup")]
    pub no_socket_lb: bool,
}

impl SocketLbArgs {
    /// Where the socket programs attach; `None` when they are off.
    pub fn cgroup(&self) -> Option<PathBuf> {
        (!self.no_socket_lb).then(|| self.cgroup.clone())
    }
}

/// `weir run`'s options for Services reached from outside the node.
#[derive(Args, Debug)]
pub struct UplinkArgs {
    /// Interface traffic from outside the node arrives on (repeatable): node ports,
    /// load-balancer and external IPs are answered there, and connections to backends on
    /// other nodes are masqueraded to its first address of each family. Default: the
    /// interfaces of the default routes.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// Attach to no uplink (and detach what an earlier agent left): Services are then reached
    /// from inside the node only.
    #[arg(long, conflicts_with = "uplinks")]
    pub no_uplink: bool,
}

impl UplinkArgs {
    /// The uplinks asked for.
    pub fn choice(&self) -> crate::node::UplinkChoice {
        use crate::node::UplinkChoice;
        match (self.no_uplink, self.uplinks.is_empty()) {
            (true, _) => UplinkChoice::Off,
            (false, true) => UplinkChoice::DefaultRoutes,
            (false, false) => UplinkChoice::Named(self.uplinks.clone()),
        }
    }
}

/// `weir run`'s default `--cgroup`: where cgroup v2 is mounted on a unified host.
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

/// `weir flows`.
#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// The agent's `--health-addr`.
    #[arg(long, default_value = DEFAULT_AGENT)]
    pub health_addr: SocketAddr,
    /// Only flows from or to this pod (`namespace/name`).
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Option<String>,
    /// Only flows from or to pods of this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only allowed or only dropped flows.
    #[arg(long, value_parser = ["allowed", "dropped"])]
    pub verdict: Option<String>,
    /// Only flows with this source or destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// How many recent flows to print first (all kept ones without --follow, none with it,
    /// when not given).
    #[arg(long)]
    pub last: Option<usize>,
    /// Keep printing new flows as they come, until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// How to print: `text` for people, `json` as the agent serves it.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `weir explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The connection's source: an address, or a pod as `namespace/name`.
    pub src: String,
    /// Its destination, likewise.
    pub dst: String,
    /// `PORT/PROTO` (`80/tcp`, `53/udp`, `9000/sctp`; `80` is TCP) or `icmp`.
    #[arg(value_name = "PORT/PROTO")]
    pub port: String,
    /// The agent's `--health-addr`.
    #[arg(long, default_value = DEFAULT_AGENT)]
    pub health_addr: SocketAddr,
    /// How to print: `text` for people, `json` as the agent serves it.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `weir status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's `--health-addr`.
    #[arg(long, default_value = DEFAULT_AGENT)]
    pub health_addr: SocketAddr,
    /// How to print: `text` for people, `json` as the agent serves it.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Runs a client command, printing its error.
pub fn run(command: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match command() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weir flows`: prints the agent's flows, then follows new ones with `--follow`.
pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    let filter = FlowFilter {
        pod: args.pod.clone(),
        namespace: args.namespace.clone(),
        verdict: args.verdict.as_deref().and_then(Verdict::parse),
        port: args.port,
    };
    let mut params = filter.to_query();
    if let Some(last) = args.last {
        params.push(("last", last.to_string()));
    }
    if args.follow {
        params.push(("follow", "1".to_owned()));
    }
    let target = format!("/flows?{}", encode_query(&params));
    let timeout = (!args.follow).then_some(ANSWER_TIMEOUT);
    let body = get(args.health_addr, &target, timeout)?;
    let mut stdout = io::stdout().lock();
    for line in BufReader::new(body).lines() {
        let line = line.context("reading flows")?;
        let printed = match args.output {
            Output::Json => writeln!(stdout, "{line}"),
            Output::Text => {
                let record: FlowRecord = serde_json::from_str(&line).with_context(|| {
                    format!("the agent sent a flow this weir cannot read: {line}")
                })?;
                writeln!(stdout, "{record}")
            }
        };
        // A closed pipe (`weir flows | head`) ends the command quietly.
        if printed.is_err() || (args.follow && stdout.flush().is_err()) {
            break;
        }
    }
    Ok(())
}

/// `weir explain`: asks the agent, prints the answer.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let (port, proto) = match args.port.split_once('/') {
        Some((port, proto)) => (port.to_owned(), proto.to_owned()),
        None if args.port.parse::<u16>().is_ok() => (args.port.clone(), "tcp".to_owned()),
        None => (String::new(), args.port.clone()),
    };
    let target = format!(
        "/explain?{}",
        encode_query(&[
            ("src", args.src.clone()),
            ("dst", args.dst.clone()),
            ("port", port),
            ("proto", proto),
        ])
    );
    let mut body = String::new();
    get(args.health_addr, &target, Some(ANSWER_TIMEOUT))?
        .read_to_string(&mut body)
        .context("reading the explanation")?;
    match args.output {
        Output::Json => println!("{}", body.trim_end()),
        Output::Text => {
            let e: Explanation = serde_json::from_str(&body)
                .context("the agent sent an explanation this weir cannot read")?;
            print!("{e}");
        }
    }
    Ok(())
}

/// `weir status`: the agent's `/status`, for people.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut body = String::new();
    get(args.health_addr, "/status", Some(ANSWER_TIMEOUT))?
        .read_to_string(&mut body)
        .context("reading the status")?;
    let status: serde_json::Value =
        serde_json::from_str(&body).context("the agent's status is not JSON")?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Text => print!("{}", render_status(args.health_addr, &status)),
    }
    Ok(())
}

/// `GET target` from the agent at `addr`: the body of a 200 answer, read as it comes; any
/// other answer is an error carrying the agent's message.
fn get(addr: SocketAddr, target: &str, timeout: Option<Duration>) -> anyhow::Result<impl io::Read> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to the agent at {addr} (is `weir run` running?)"))?;
    stream.set_read_timeout(timeout)?;
    // One write: the agent reads the head within a deadline.
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    if code != "200" {
        let mut message = String::new();
        let _ = reader.read_to_string(&mut message);
        bail!(
            "the agent answered {}: {}",
            status_line.trim(),
            message.trim()
        );
    }
    Ok(reader)
}

/// `/status` as text. Fields missing from the answer (an older agent) are left out.
fn render_status(addr: SocketAddr, s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ready = if s["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "not ready"
    };
    let _ = writeln!(
        out,
        "agent {addr}: {ready}, generation {}",
        s["generation"].as_u64().unwrap_or(0)
    );
    if let Some(t) = s["last_sync_unix"].as_i64() {
        let _ = writeln!(
            out,
            "last sync: {}",
            crate::flows::rfc3339(i128::from(t) * 1_000_000_000)
                .get(..19)
                .unwrap_or_default()
        );
    }
    for key in ["source", "source_health"] {
        if let Some(v) = s[key].as_str() {
            let _ = writeln!(out, "{}: {v}", key.replace('_', " "));
        }
    }
    let _ = writeln!(
        out,
        "last error: {}",
        s["last_error"].as_str().unwrap_or("none")
    );
    if let Some(uplinks) = s["uplinks"].as_array() {
        let names: Vec<&str> = uplinks
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let shown = if names.is_empty() {
            "none (Services answer inside the node only)".to_owned()
        } else {
            names.join(", ")
        };
        let _ = writeln!(out, "uplinks: {shown}");
    }
    render_interfaces(&mut out, s);
    render_maps(&mut out, s);
    render_counters(&mut out, s);
    out
}

fn render_interfaces(out: &mut String, s: &serde_json::Value) {
    use std::fmt::Write as _;
    let Some(list) = s["interfaces"].as_array() else {
        return;
    };
    let _ = writeln!(out, "\nlocal pods ({}):", list.len());
    let _ = writeln!(
        out,
        "  {:>8}  {:<32} {:<9} {:<9} attached",
        "ifindex", "pod", "ingress", "egress"
    );
    for i in list {
        let iso = |k: &str| {
            if i[k].as_bool() == Some(true) {
                "isolated"
            } else {
                "open"
            }
        };
        let _ = writeln!(
            out,
            "  {:>8}  {:<32} {:<9} {:<9} {}",
            i["ifindex"].as_u64().unwrap_or(0),
            i["pod"].as_str().unwrap_or("?"),
            iso("ingress_isolated"),
            iso("egress_isolated"),
            if i["attached"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            }
        );
    }
}

fn render_maps(out: &mut String, s: &serde_json::Value) {
    use std::fmt::Write as _;
    let mut rows: Vec<(String, u64, u64)> = s["maps"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| {
            (
                name.clone(),
                v["entries"].as_u64().unwrap_or(0),
                v["capacity"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    if let Some(ct) = s["conntrack"].as_object() {
        rows.push((
            "conntrack".to_owned(),
            ct.get("live")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            ct.get("capacity")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nmaps:");
    for (name, entries, cap) in rows {
        #[expect(clippy::cast_precision_loss, reason = "map sizes are far below 2^52")]
        let percent = if cap == 0 {
            0.0
        } else {
            entries as f64 * 100.0 / cap as f64
        };
        let _ = writeln!(out, "  {name:<16} {entries:>9} / {cap:<9} {percent:>5.1}%");
    }
}

fn render_counters(out: &mut String, s: &serde_json::Value) {
    use std::fmt::Write as _;
    for (title, key) in [("packets passed", "passed"), ("packets dropped", "dropped")] {
        let Some(c) = s["counters"][key].as_object() else {
            continue;
        };
        let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "{}{title}: {}",
            if key == "passed" { "\n" } else { "" },
            parts.join(", ")
        );
    }
    let f = &s["flow_events"];
    if f.is_object() {
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "flow events ({}): {} emitted, {} rate-limited, {} lost to a full ring; {} received",
            f["mode"].as_str().unwrap_or("?"),
            n("emitted"),
            n("rate_limited"),
            n("ring_full"),
            n("received")
        );
    }
}

/// What `weir check` says of a directory that loaded: how many objects of each kind, then one
/// line per Service with its addresses, ports and endpoints.
pub fn check_summary(loaded: &Loaded) -> String {
    use std::fmt::Write as _;
    let state = &loaded.state;
    let mut out = format!(
        "{} files: {} namespaces, {} pods, {} network policies, {} services, {} endpoint slices \
         ({} derived from pods), {} nodes\n",
        loaded.files,
        state.namespaces.len(),
        state.pods.len(),
        state.policies.len(),
        state.services.len(),
        state.endpoint_slices.len(),
        loaded.derived_slices,
        state.nodes.len()
    );
    for service in &state.services {
        let _ = writeln!(out, "{}", service_line(state, service));
    }
    out
}

/// `service shop/web: NodePort 10.96.0.10; 80/TCP -> http (node port 30080); ClientIP affinity
/// 600s; 2 endpoint addresses, 1 ready`.
fn service_line(state: &DesiredState, service: &Service) -> String {
    use std::fmt::Write as _;
    let kind = match service.kind {
        ServiceKind::ClusterIp => "ClusterIP",
        ServiceKind::NodePort => "NodePort",
        ServiceKind::LoadBalancer => "LoadBalancer",
    };
    let addresses: Vec<String> = service
        .cluster_ips
        .iter()
        .chain(&service.external_ips)
        .chain(&service.load_balancer_ips)
        .map(ToString::to_string)
        .collect();
    let addresses = if addresses.is_empty() {
        "no address".to_owned()
    } else {
        addresses.join(" ")
    };
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|port| {
            let target = match &port.target_port {
                TargetPort::Number(number) => number.to_string(),
                TargetPort::Named(name) => name.clone(),
            };
            let node_port = port
                .node_port
                .map(|node_port| format!(" (node port {node_port})"))
                .unwrap_or_default();
            format!("{}/{} -> {target}{node_port}", port.port, port.protocol)
        })
        .collect();
    let mut line = format!(
        "service {}/{}: {kind} {addresses}; {}",
        service.namespace,
        service.name,
        if ports.is_empty() {
            "no ports".to_owned()
        } else {
            ports.join(", ")
        }
    );
    if let Some(timeout) = service.affinity_timeout_s {
        let _ = write!(line, "; ClientIP affinity {timeout}s");
    }
    if !service.load_balancer_source_ranges.is_empty() {
        let ranges: Vec<String> = service
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = write!(line, "; clients from {}", ranges.join(" "));
    }
    if service.external_traffic_local {
        line.push_str("; external traffic Local");
    }
    if let Some(port) = service.health_check_node_port {
        let _ = write!(line, "; health check node port {port}");
    }
    if service.internal_traffic_local {
        line.push_str("; internal traffic Local");
    }
    let (total, ready) = endpoint_addresses(state, service);
    let _ = write!(line, "; {total} endpoint addresses, {ready} ready");
    line
}

/// How many distinct endpoint addresses a Service has, and how many are ready: from its
/// `EndpointSlices`, or from its legacy `Endpoints` when it has no slice.
fn endpoint_addresses(state: &DesiredState, service: &Service) -> (usize, usize) {
    let slices = state
        .endpoint_slices
        .iter()
        .filter(|slice| slice.namespace == service.namespace && slice.service == service.name);
    let has_current = slices.clone().any(|slice| !slice.legacy);
    let mut addresses = std::collections::BTreeMap::new();
    for slice in slices.filter(|slice| slice.legacy != has_current) {
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                *addresses.entry(*address).or_insert(false) |= endpoint.ready;
            }
        }
    }
    let ready = addresses.values().filter(|ready| **ready).count();
    (addresses.len(), ready)
}
