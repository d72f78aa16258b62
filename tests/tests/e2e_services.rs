//! Services end to end: real TCP and UDP through `ClusterIP`s, with the `weir` agent reading a
//! manifests directory, between network namespaces wired as a CNI wires pods, both families.
//!
//! The model: namespace `svc` holds the backends `b1`, `b2`, `b3` (labelled `app: echo`), and
//! `n1`, `n2` (labelled `app: named`), which serve one named port on different numbers;
//! namespace `cl` holds the clients `c1` and `c2`. Every pod runs echo servers whose answers
//! name the pod that gave them, so a client learns which backend each connection reached.
//! The Services (`ports`: `tcp` TCP 80, `udp` UDP 80; cluster IPs in 10.99.100.0/24 and
//! `fd99::100:0/112`, inside the test range that only these namespaces use):
//!
//! | Service      | selects       | targetPort                 | what it is for                      |
//! |--------------|---------------|----------------------------|-------------------------------------|
//! | `svc/echo`   | `app: echo`   | 80                         | spread, stickiness, removal, policy |
//! | `svc/sticky` | `app: echo`   | 80                         | `sessionAffinity: ClientIP`         |
//! | `svc/empty`  | nothing       | 80                         | no endpoints: rejected              |
//! | `svc/own`    | `pod: b1`     | 80                         | hairpin (b1 reaching itself)        |
//! | `svc/named`  | `app: named`  | `web` / `web-udp`          | named targetPort, hairpin with it   |
//! | `svc/manual` | (no selector) | 80, hand-written slices    | removal by `EndpointSlice` edit     |
//! | `svc/closed` | `app: echo`   | 82, where nothing listens  | a backend's refusal                 |
//!
//! The tests that need them add more (the agent runs with `--node-name node-a`):
//!
//! | Service       | selects       | what it has                                | what it is for                    |
//! |---------------|---------------|--------------------------------------------|-----------------------------------|
//! | `svc/near`    | (no selector) | `b1` on `node-a`, one on `node-b`          | `internalTrafficPolicy: Local`    |
//! | `svc/far`     | (no selector) | the same, `internalTrafficPolicy: Cluster` | the control of `svc/near`         |
//! | `svc/ranged`  | `app: echo`   | `LoadBalancer`, ranges admitting `c1` only | `loadBalancerSourceRanges`        |
//! | `svc/rollout` | (no selector) | ready, serving, terminating, by phase      | the serving-terminating fallback  |
//!
//! Only pods' traffic is translated here (at their interfaces); the node's own sockets are not
//! part of these tests. Every probe has a timeout, every loop a bound; the namespaces are the
//! test's own and go away on every path. Needs root; skips otherwise. Builds `weir` with cargo
//! unless `WEIR_BIN` names a binary. `--nocapture` prints the counts behind each verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use dataplane_abi::maglev::Tier;
use testbed::{Agent, Family, Labels, PodSpec, Proto, Session, TempDir, Topology, manifests};
use weir::flows::{FlowRecord, Verdict};

/// Namespace of the Services and their backends.
const NS: &str = "svc";
/// Namespace of the client pods.
const CLIENTS: &str = "cl";
/// The backends of `svc/echo`, `svc/sticky` and `svc/manual`.
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
/// The port every Service serves, on TCP and UDP.
const SERVICE_PORT: u16 = 80;

/// One agent at a time: tests of this file would otherwise compete for the two cores, and a
/// probe timing out under load would be a false failure.
static ONE_AGENT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Requests in flight at once from one client: enough to keep the run short, few enough that a
/// busy machine does not turn slowness into timeouts.
const PARALLEL: usize = 8;
/// Flow events reach the agent within milliseconds; the margin is for a loaded machine.
const FLOW_TIMEOUT: Duration = Duration::from_secs(10);
/// A long-lived connection asks this often while the Service changes under it: well within the
/// echo servers' idle timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);

/// A Service's name and cluster IPs.
#[derive(Clone, Copy, Debug)]
struct Svc {
    name: &'static str,
    v4: &'static str,
    v6: &'static str,
}

const ECHO: Svc = Svc {
    name: "echo",
    v4: "10.99.100.10",
    v6: "fd99::100:10",
};
const STICKY: Svc = Svc {
    name: "sticky",
    v4: "10.99.100.11",
    v6: "fd99::100:11",
};
const EMPTY: Svc = Svc {
    name: "empty",
    v4: "10.99.100.12",
    v6: "fd99::100:12",
};
const OWN: Svc = Svc {
    name: "own",
    v4: "10.99.100.13",
    v6: "fd99::100:13",
};
const NAMED: Svc = Svc {
    name: "named",
    v4: "10.99.100.14",
    v6: "fd99::100:14",
};
const MANUAL: Svc = Svc {
    name: "manual",
    v4: "10.99.100.15",
    v6: "fd99::100:15",
};
const CLOSED: Svc = Svc {
    name: "closed",
    v4: "10.99.100.16",
    v6: "fd99::100:16",
};
const NEAR: Svc = Svc {
    name: "near",
    v4: "10.99.100.17",
    v6: "fd99::100:17",
};
const FAR: Svc = Svc {
    name: "far",
    v4: "10.99.100.18",
    v6: "fd99::100:18",
};
const RANGED: Svc = Svc {
    name: "ranged",
    v4: "10.99.100.19",
    v6: "fd99::100:19",
};
/// The load-balancer IPs of `svc/ranged` (`status.loadBalancer.ingress`).
const RANGED_LB: [&str; 2] = ["10.99.101.19", "fd99::101:19"];
const ROLLOUT: Svc = Svc {
    name: "rollout",
    v4: "10.99.100.20",
    v6: "fd99::100:20",
};

/// This node's name (`weir run --node-name`).
const NODE_NAME: &str = "node-a";
/// Another node's name, for endpoints that are not this node's.
const OTHER_NODE: &str = "node-b";
/// An endpoint on [`OTHER_NODE`]: no pod has these addresses and the node namespace has no
/// route to them, so a packet sent there ends in the node namespace with an ICMP unreachable
/// (what a one-node test bed can offer of a pod elsewhere).
const ELSEWHERE: [&str; 2] = ["10.99.200.1", "fd99::200:1"];

impl Svc {
    /// `svc/<name>`, as flows name it.
    fn id(self) -> String {
        format!("{NS}/{}", self.name)
    }

    /// The cluster IP of `family` and the Service port.
    fn addr(self, family: Family) -> SocketAddr {
        SocketAddr::new(by_family([self.v4, self.v6], family), SERVICE_PORT)
    }
}

/// The address of `family` of a pair written [IPv4, IPv6].
fn by_family([v4, v6]: [&str; 2], family: Family) -> IpAddr {
    let ip = match family {
        Family::V4 => v4,
        Family::V6 => v6,
    };
    ip.parse().expect("a literal address")
}

/// `ns/name` of a pod of namespace `svc`.
fn backend(name: &str) -> String {
    format!("{NS}/{name}")
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A pod of `namespace`, labelled `pod: <name>`, in a namespace labelled as the API server
/// labels every namespace.
fn pod(namespace: &str, name: &str) -> PodSpec {
    PodSpec::new(namespace, name)
        .label("pod", name)
        .namespace_label("kubernetes.io/metadata.name", namespace)
}

/// The backends serve the probe ports (80, 81); `n1` and `n2` serve only 8080 and 8081, each
/// naming it `web` (TCP) and `web-udp` (UDP).
fn topology() -> Topology {
    let named = |name: &str, port: u16| {
        pod(NS, name)
            .label("app", "named")
            .serving(vec![port])
            .port_name(port, Proto::Tcp, "web")
            .port_name(port, Proto::Udp, "web-udp")
    };
    Topology::builder()
        .pods(BACKENDS.map(|b| pod(NS, b).label("app", "echo")))
        .pod(named("n1", 8080))
        .pod(named("n2", 8081))
        .pod(pod(CLIENTS, "c1"))
        .pod(pod(CLIENTS, "c2"))
        .build()
}

/// A Service of namespace `svc` with ports `tcp` and `udp` (80), sending to `targets`
/// (TCP, UDP); `selector` and `extra` are YAML lines of `spec`, indented by two spaces.
fn service_yaml(svc: Svc, selector: &str, targets: (&str, &str), extra: &str) -> String {
    let (tcp, udp) = targets;
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  clusterIPs:\n    - {v4}\n    - {v6}\n{selector}  ports:\n\
         \x20   - name: tcp\n      protocol: TCP\n      port: {SERVICE_PORT}\n      targetPort: {tcp}\n\
         \x20   - name: udp\n      protocol: UDP\n      port: {SERVICE_PORT}\n      targetPort: {udp}\n\
         {extra}",
        name = svc.name,
        v4 = svc.v4,
        v6 = svc.v6,
    )
}

/// Every Service of the model, one document each.
fn services_yaml() -> String {
    let by_number = ("80", "80");
    [
        service_yaml(ECHO, "  selector:\n    app: echo\n", by_number, ""),
        service_yaml(
            STICKY,
            "  selector:\n    app: echo\n",
            by_number,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
             timeoutSeconds: 600\n",
        ),
        service_yaml(EMPTY, "  selector:\n    app: nothing\n", by_number, ""),
        service_yaml(OWN, "  selector:\n    pod: b1\n", by_number, ""),
        service_yaml(
            NAMED,
            "  selector:\n    app: named\n",
            ("web", "web-udp"),
            "",
        ),
        service_yaml(MANUAL, "", by_number, ""),
        service_yaml(CLOSED, "  selector:\n    app: echo\n", ("82", "82"), ""),
    ]
    .join("---\n")
}

/// The hand-written slices of `svc/manual`, one per family, listing the backends `members`.
fn manual_slices_yaml(topology: &Topology, members: &[&str]) -> String {
    let endpoints: Vec<SliceEndpoint> = members
        .iter()
        .map(|m| SliceEndpoint::pod(topology, &backend(m)))
        .collect();
    slices_yaml(MANUAL, &endpoints)
}

/// One `endpoints` entry of a hand-written `EndpointSlice`.
#[derive(Clone, Copy, Debug)]
struct SliceEndpoint {
    /// Its addresses, [IPv4, IPv6].
    addrs: [IpAddr; 2],
    ready: bool,
    serving: bool,
    terminating: bool,
    /// `nodeName`; `None`: not set.
    node: Option<&'static str>,
}

impl SliceEndpoint {
    /// Pod `id` of `topology`, ready, without `nodeName`.
    fn pod(topology: &Topology, id: &str) -> Self {
        Self::at(topology.pod(id).ips())
    }

    /// An endpoint at `addrs` ([IPv4, IPv6]), ready, without `nodeName`.
    fn at(addrs: [IpAddr; 2]) -> Self {
        Self {
            addrs,
            ready: true,
            serving: true,
            terminating: false,
            node: None,
        }
    }

    /// On node `node`.
    fn on(self, node: &'static str) -> Self {
        Self {
            node: Some(node),
            ..self
        }
    }

    /// Terminating (so not ready), and still `serving` or not, as during a pod's grace period.
    fn terminating(self, serving: bool) -> Self {
        Self {
            ready: false,
            serving,
            terminating: true,
            ..self
        }
    }
}

/// The hand-written slices of `svc` (without a selector), one per family, listing `endpoints`
/// with their conditions, on ports `tcp` and `udp` (80).
fn slices_yaml(svc: Svc, endpoints: &[SliceEndpoint]) -> String {
    Family::ALL
        .iter()
        .map(|family| {
            let (suffix, address_type, index) = match family {
                Family::V4 => ("ipv4", "IPv4", 0),
                Family::V6 => ("ipv6", "IPv6", 1),
            };
            let mut listed = String::new();
            for e in endpoints {
                writeln!(
                    listed,
                    "  - addresses:\n      - \"{ip}\"\n    conditions:\n      ready: {ready}\n      \
                     serving: {serving}\n      terminating: {terminating}",
                    ip = e.addrs[index],
                    ready = e.ready,
                    serving = e.serving,
                    terminating = e.terminating,
                )
                .expect("writing to a String");
                if let Some(node) = e.node {
                    writeln!(listed, "    nodeName: {node}").expect("writing to a String");
                }
            }
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                 name: {name}-{suffix}\n  namespace: {NS}\n  labels:\n    \
                 kubernetes.io/service-name: {name}\naddressType: {address_type}\nports:\n  \
                 - name: tcp\n    protocol: TCP\n    port: 80\n  \
                 - name: udp\n    protocol: UDP\n    port: 80\nendpoints:\n{listed}",
                name = svc.name,
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A running cluster: its manifests directory, with the agent started on it and ready.
fn start<'t>(topology: &'t Topology, dir: &TempDir) -> Agent<'t> {
    topology.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "services.yaml", &services_yaml());
    manifests::write_atomic(
        dir.path(),
        "manual-slices.yaml",
        &manual_slices_yaml(topology, &BACKENDS),
    );
    let mut agent = Agent::options()
        .arg("--node-name")
        .arg(NODE_NAME)
        .start(topology, dir.path());
    agent.wait_ready();
    agent
}

/// Replaces manifest `name` and waits until the agent has applied it.
fn apply(agent: &mut Agent<'_>, dir: &Path, name: &str, yaml: &str) {
    let generation = agent.status().generation;
    manifests::write_atomic(dir, name, yaml);
    agent.wait_generation_after(generation);
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// One new connection (or UDP flow) and its first request.
#[derive(Debug)]
struct Attempt {
    /// The client's port.
    port: u16,
    /// The pod that answered.
    answer: io::Result<String>,
}

/// `n` new connections from pod `from` to `dst`, each on a socket of its own, `PARALLEL` at a
/// time.
fn attempts(
    topology: &Topology,
    from: &str,
    dst: SocketAddr,
    proto: Proto,
    n: usize,
) -> Vec<Attempt> {
    topology.pod(from).netns().run(|| {
        thread::scope(|s| {
            let workers: Vec<_> = (0..PARALLEL)
                .map(|worker| {
                    // Threads start in the namespace of the thread that creates them.
                    s.spawn(move || {
                        (worker..n)
                            .step_by(PARALLEL)
                            .map(|_| attempt(dst, proto))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a client thread panicked"))
                .collect()
        })
    })
}

/// Opens a session, asks once, closes it.
fn attempt(dst: SocketAddr, proto: Proto) -> Attempt {
    match Session::open(dst, proto) {
        Ok(mut session) => Attempt {
            port: session.local_addr().port(),
            answer: session.ask(),
        },
        Err((local, error)) => Attempt {
            port: local.port(),
            answer: Err(error),
        },
    }
}

/// A session from pod `from`, opened in its namespace; panics when it cannot connect.
fn session(topology: &Topology, from: &str, dst: SocketAddr, proto: Proto) -> Session {
    topology
        .pod(from)
        .netns()
        .run(|| Session::open(dst, proto))
        .unwrap_or_else(|(local, e)| panic!("{from} ({local}) → {dst} {proto}: {e}"))
}

/// A session from pod `from` to `svc` whose first answer came from a pod `wanted` accepts, and
/// that pod; new sessions are opened until one does, at most `tries`.
fn session_reaching(
    topology: &Topology,
    from: &str,
    svc: Svc,
    (family, proto): (Family, Proto),
    tries: usize,
    wanted: impl Fn(&str) -> bool,
) -> Option<(Session, String)> {
    for _ in 0..tries {
        let mut s = session(topology, from, svc.addr(family), proto);
        let answer = s
            .ask()
            .unwrap_or_else(|e| panic!("{family} {proto} from {from} to {}: {e}", svc.id()));
        if wanted(&answer) {
            return Some((s, answer));
        }
    }
    None
}

/// How many answers each pod gave; panics on any failed attempt.
fn answered_by(attempts: &[Attempt], what: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in attempts {
        match &a.answer {
            Ok(pod) => *counts.entry(pod.clone()).or_insert(0) += 1,
            Err(e) => panic!("{what}: the connection from port {} failed: {e}", a.port),
        }
    }
    counts
}

/// The range that the number of `n` new connections landing on one of `k` equally weighted
/// backends must fall in.
///
/// Each connection's backend is the Maglev slot of the hash of its client address, port and
/// protocol; with fresh client ports, that is a draw with the backend's share of the table as
/// probability, so the count is binomial. Maglev gives every backend of a set ⌊M/k⌋ or ⌈M/k⌉
/// of the table's M slots, so the share p lies in [⌊M/k⌋/M, ⌈M/k⌉/M]. The range is that of
/// the mean, widened by 5σ (σ = √(n p (1 − p)) at the larger p, which for p ≤ ½ is the larger
/// σ): a correct dataplane falls outside with a probability below 10⁻⁶ per count, while a
/// backend left out, or a table that favours one backend, falls far outside.
fn binomial_range(n: usize, k: usize) -> (f64, f64) {
    let slots = Tier::for_backends(k)
        .expect("a handful of backends")
        .slots();
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let (n, slots, low, high) = (
        n as f64,
        slots as f64,
        (slots / k) as f64,
        slots.div_ceil(k) as f64,
    );
    let (p_low, p_high) = (low / slots, high / slots);
    let sigma = (n * p_high * (1.0 - p_high)).sqrt();
    (n * p_low - 5.0 * sigma, n * p_high + 5.0 * sigma)
}

/// Panics unless each of `pods` got a number of `total` connections within
/// [`binomial_range`] (over `pods.len()` backends), and nothing else answered.
fn assert_spread(counts: &BTreeMap<String, usize>, pods: &[String], what: &str) {
    let total: usize = counts.values().sum();
    let (low, high) = binomial_range(total, pods.len());
    eprintln!("{what}: {counts:?} of {total}, each expected in [{low:.1}, {high:.1}]");
    for pod in pods {
        let got = counts.get(pod).copied().unwrap_or(0);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let inside = (low..=high).contains(&(got as f64));
        assert!(
            inside,
            "{what}: {pod} answered {got} of {total} connections, outside [{low:.1}, {high:.1}] \
             (binomial, {} backends, ±5σ); all counts: {counts:?}",
            pods.len()
        );
    }
    let strangers: Vec<&String> = counts.keys().filter(|p| !pods.contains(p)).collect();
    assert!(
        strangers.is_empty(),
        "{what}: answered by {strangers:?}, which are not backends"
    );
}

fn echo_backends() -> Vec<String> {
    BACKENDS.iter().map(|b| backend(b)).collect()
}

/// Every family and protocol, the cases of most tests.
fn cases() -> Vec<(Family, Proto)> {
    Family::ALL
        .into_iter()
        .flat_map(|f| Proto::ALL.into_iter().map(move |p| (f, p)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// The agent's recent flows (`GET /flows`).
fn flows(topology: &Topology, agent: &Agent<'_>) -> Vec<FlowRecord> {
    let addr = agent.health_addr();
    let (code, body) = topology
        .node()
        .run(move || testbed::http_get(addr, "/flows"))
        .expect("GET /flows");
    assert_eq!(code, 200, "GET /flows: {body}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `/flows` until every predicate of `wanted` matches some flow; returns the first match
/// of each. Panics with what is missing after [`FLOW_TIMEOUT`].
fn wait_for_flows<F: Fn(&FlowRecord) -> bool>(
    topology: &Topology,
    agent: &mut Agent<'_>,
    wanted: &[(String, F)],
) -> Vec<FlowRecord> {
    let deadline = Instant::now() + FLOW_TIMEOUT;
    loop {
        let all = flows(topology, agent);
        let found: Vec<Option<&FlowRecord>> = wanted
            .iter()
            .map(|(_, f)| all.iter().find(|r| f(r)))
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().cloned().collect();
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = wanted
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|((what, _), _)| what.as_str())
                .collect();
            let status = agent.status().raw;
            panic!(
                "after {FLOW_TIMEOUT:?}, no flow for: {missing:#?}\n{} flows, the last ones: \
                 {:#?}\nstatus: {status}",
                all.len(),
                &all[all.len().saturating_sub(10)..]
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// New connections spread over every backend as Maglev's table shares say, within binomial
/// bounds ([`binomial_range`]), for both clients together, both families, TCP and UDP.
#[test]
fn new_connections_spread_over_every_backend() {
    const PER_CLIENT: usize = 150;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let _agent = start(&topology, &dir);
    for (family, proto) in cases() {
        let mut all = Vec::new();
        for client in ["cl/c1", "cl/c2"] {
            all.extend(attempts(
                &topology,
                client,
                ECHO.addr(family),
                proto,
                PER_CLIENT,
            ));
        }
        let what = format!("{family} {proto} to {}", ECHO.id());
        assert_spread(&answered_by(&all, &what), &echo_backends(), &what);
    }
}

/// Every request of one connection (and of one UDP flow) reaches the backend its first one did.
#[test]
fn every_request_of_a_connection_reaches_one_backend() {
    const SESSIONS: usize = 6;
    const REQUESTS: usize = 20;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let _agent = start(&topology, &dir);
    for (family, proto) in cases() {
        let mut reached = BTreeSet::new();
        for _ in 0..SESSIONS {
            let mut s = session(&topology, "cl/c1", ECHO.addr(family), proto);
            let answers: Vec<String> = (0..REQUESTS)
                .map(|i| {
                    s.ask().unwrap_or_else(|e| {
                        panic!("{family} {proto} from {}: request {i}: {e}", s.local_addr())
                    })
                })
                .collect();
            let distinct: BTreeSet<&String> = answers.iter().collect();
            assert_eq!(
                distinct.len(),
                1,
                "{family} {proto}: one connection from {} reached {distinct:?}",
                s.local_addr()
            );
            reached.insert(answers[0].clone());
        }
        eprintln!(
            "{family} {proto}: {SESSIONS} connections × {REQUESTS} requests, reached {reached:?}"
        );
    }
}

/// `sessionAffinity: ClientIP`: once a client's connection has been answered, every new
/// connection of that client goes to the same backend (per Service port and family), many at
/// once included, where the same client's connections to a Service without affinity go to
/// several. When that backend leaves the Service, the client's next connection picks another,
/// and the rest follow it.
///
/// Connections that race the very first one (none answered yet) may each pick a backend, the
/// last to record its pick winning: the dataplane checks and records a client's backend in two
/// map operations, not one, as kube-proxy's `recent` match does in two rules. The client's
/// first connection therefore goes alone here.
#[test]
fn client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    // Without affinity, 30 connections all land on one of 3 backends with probability
    // 3 (1/3)^30, about 10⁻¹⁴: the control below cannot pass by chance.
    const CONNECTIONS: usize = 30;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    for (family, proto) in cases() {
        for client in ["cl/c1", "cl/c2"] {
            let what = format!("{family} {proto} from {client} to {}", STICKY.id());
            let affine = first_answer(&topology, client, STICKY, family, proto);
            let sticky = attempts(&topology, client, STICKY.addr(family), proto, CONNECTIONS);
            let counts = answered_by(&sticky, &what);
            eprintln!("{what}: first {affine}, then {counts:?}");
            assert_eq!(
                counts.keys().collect::<Vec<_>>(),
                [&affine],
                "{what}: the first connection reached {affine}, the next ones {counts:?}"
            );

            let what = format!("{family} {proto} from {client} to {}", ECHO.id());
            let spread = attempts(&topology, client, ECHO.addr(family), proto, CONNECTIONS);
            let counts = answered_by(&spread, &what);
            assert!(
                counts.len() > 1,
                "{what} (no affinity): reached only {counts:?}"
            );
        }
    }
    affinity_moves_off_a_removed_backend(&topology, &mut agent, dir.path());
}

/// The pod that answered one new connection from `client` to `svc`.
fn first_answer(
    topology: &Topology,
    client: &str,
    svc: Svc,
    family: Family,
    proto: Proto,
) -> String {
    let what = format!("{family} {proto} from {client} to {}", svc.id());
    let first = attempts(topology, client, svc.addr(family), proto, 1);
    answered_by(&first, &what)
        .into_keys()
        .next()
        .expect("one answer")
}

/// A client whose affine backend leaves the Service gets a new one, and sticks to it.
fn affinity_moves_off_a_removed_backend(topology: &Topology, agent: &mut Agent<'_>, dir: &Path) {
    const CONNECTIONS: usize = 30;
    let (client, family, proto) = ("cl/c1", Family::V4, Proto::Tcp);
    let what = format!("{family} {proto} from {client} to {}", STICKY.id());
    let affine = first_answer(topology, client, STICKY, family, proto);
    let generation = agent.status().generation;
    let victim = affine
        .strip_prefix(&format!("{NS}/"))
        .expect("a backend of svc");
    let labels = Labels::from([("pod".to_owned(), victim.to_owned())]);
    topology.relabel(dir, &affine, &labels);
    agent.wait_generation_after(generation);
    let moved = first_answer(topology, client, STICKY, family, proto);
    assert_ne!(
        moved, affine,
        "{what}: still sent to {affine}, which left the Service"
    );
    let after = attempts(topology, client, STICKY.addr(family), proto, CONNECTIONS);
    let counts = answered_by(&after, &what);
    eprintln!("{what}, after {affine} left: first {moved}, then {counts:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        [&moved],
        "{what}, after {affine} left: the first connection reached {moved}, the next ones \
         {counts:?}"
    );
}

/// Backend removal by a label change: the pod no longer matches the selector.
#[test]
fn a_backend_removed_by_a_label_change_keeps_its_tcp_connections() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    backend_removal(&topology, ECHO, |victim| {
        let generation = agent.status().generation;
        let labels = Labels::from([("pod".to_owned(), victim.to_owned())]);
        topology.relabel(dir.path(), &backend(victim), &labels);
        agent.wait_generation_after(generation);
    });
}

/// Backend removal by an `EndpointSlice` edit: a Service without a selector, whose slices no
/// longer list the pod.
#[test]
fn a_backend_removed_from_an_endpoint_slice_keeps_its_tcp_connections() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    backend_removal(&topology, MANUAL, |victim| {
        let rest: Vec<&str> = BACKENDS.into_iter().filter(|b| *b != victim).collect();
        let yaml = manual_slices_yaml(&topology, &rest);
        apply(&mut agent, dir.path(), "manual-slices.yaml", &yaml);
    });
}

/// A connection kept open, asking every [`KEEPALIVE_INTERVAL`] on a thread of its own.
struct KeptOpen {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(Session, Vec<io::Result<String>>)>>,
}

impl KeptOpen {
    fn start(mut session: Session) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // The socket belongs to the client's namespace for its whole life, whatever thread
        // uses it.
        let thread = thread::spawn(move || {
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                answers.push(session.ask());
                thread::sleep(KEEPALIVE_INTERVAL);
            }
            (session, answers)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops asking; the session and every answer it got.
    fn stop(mut self) -> (Session, Vec<io::Result<String>>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the keep-alive thread panicked")
    }
}

impl Drop for KeptOpen {
    /// A test that fails with connections open stops their threads too (within one interval,
    /// without waiting for them).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Removes one backend of `svc` with `remove` while connections to it are open, then checks:
/// its TCP connections kept answering throughout, from it; UDP flows that reached it moved to
/// another backend; new connections avoid it, and all succeed.
fn backend_removal(topology: &Topology, svc: Svc, remove: impl FnOnce(&str)) {
    const CLIENT: &str = "cl/c1";
    // The backend of the first connection is the one removed; for every other case, new
    // connections are opened until one reaches it (each does with probability about 1/3, so
    // 60 tries all miss with probability (2/3)^60, about 10⁻¹¹).
    const TRIES: usize = 60;
    let mut first = session(topology, CLIENT, svc.addr(Family::V4), Proto::Tcp);
    let victim_id = first
        .ask()
        .unwrap_or_else(|e| panic!("the first connection to {} got no answer: {e}", svc.id()));
    let first = KeptOpen::start(first);
    let victim = victim_id
        .strip_prefix(&format!("{NS}/"))
        .expect("a backend of namespace svc")
        .to_owned();
    let mut tcp_kept = vec![(Family::V4, first)];
    let mut udp_flows = Vec::new();
    for (family, proto) in cases() {
        if (family, proto) == (Family::V4, Proto::Tcp) {
            continue;
        }
        let found = session_reaching(topology, CLIENT, svc, (family, proto), TRIES, |pod| {
            pod == victim_id
        });
        let (s, _) = found.unwrap_or_else(|| {
            panic!(
                "no {family} {proto} connection to {} reached {victim_id} in {TRIES} tries",
                svc.id()
            )
        });
        match proto {
            Proto::Tcp => tcp_kept.push((family, KeptOpen::start(s))),
            Proto::Udp => udp_flows.push((family, s)),
        }
    }

    remove(&victim);
    eprintln!("{victim_id} removed from {}", svc.id());

    for (family, mut flow) in udp_flows {
        let moved_to = flow
            .ask()
            .unwrap_or_else(|e| panic!("{family} UDP flow to {victim_id} after its removal: {e}"));
        assert_ne!(
            moved_to,
            victim_id,
            "{family} UDP: the flow still reaches {victim_id}, removed from {}",
            svc.id()
        );
        let again = flow.ask().expect("a second request of the moved UDP flow");
        assert_eq!(
            again, moved_to,
            "{family} UDP: the moved flow does not stay put"
        );
    }
    let rest: Vec<String> = BACKENDS
        .iter()
        .filter(|b| **b != victim)
        .map(|b| backend(b))
        .collect();
    for (family, proto) in cases() {
        let what = format!(
            "{family} {proto}: new connections to {} after removing {victim_id}",
            svc.id()
        );
        let fresh = attempts(topology, CLIENT, svc.addr(family), proto, 60);
        let counts = answered_by(&fresh, &what);
        eprintln!("{what}: {counts:?}");
        assert!(
            counts.keys().all(|pod| rest.contains(pod)),
            "{what}: reached {counts:?}"
        );
    }
    for (family, kept) in tcp_kept {
        let (mut s, answers) = kept.stop();
        let last = s.ask();
        let wrong: Vec<&io::Result<String>> = answers
            .iter()
            .chain([&last])
            .filter(|a| !matches!(a, Ok(pod) if *pod == victim_id))
            .collect();
        assert!(
            wrong.is_empty(),
            "{family} TCP connection to {victim_id} across its removal: {} requests, answers \
             other than {victim_id}: {wrong:?}",
            answers.len() + 1
        );
        eprintln!(
            "{family} TCP connection to {victim_id}: {} requests answered across the removal",
            answers.len() + 1
        );
    }
}

/// A Service without endpoints refuses at once: a TCP connect meets a reset
/// (`ECONNREFUSED`, not a timeout), a UDP request an ICMP port unreachable (a connected
/// socket's `recv` fails with `ECONNREFUSED`). The drops are flows naming the Service.
#[test]
fn a_service_without_endpoints_refuses_connections_at_once() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    let mut wanted = Vec::new();
    for (family, proto) in cases() {
        let dst = EMPTY.addr(family);
        let outcome = attempts(&topology, "cl/c1", dst, proto, 1)
            .pop()
            .expect("one attempt");
        match &outcome.answer {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => panic!(
                "{family} {proto} to {} (no endpoints): expected ECONNREFUSED, got {other:?}",
                EMPTY.id()
            ),
        }
        let port = outcome.port;
        wanted.push((
            format!(
                "{family} {proto} from port {port}: dropped no_endpoints via {}",
                EMPTY.id()
            ),
            move |r: &FlowRecord| {
                r.src.port == Some(port)
                    && r.src
                        .ip
                        .is_some_and(|ip| ip.is_ipv6() == (family == Family::V6))
                    && r.verdict == Verdict::Dropped
                    && r.reason == "no_endpoints"
                    && r.service.as_deref() == Some("svc/empty")
                    && r.dst.ip == Some(dst.ip())
            },
        ));
    }
    wait_for_flows(&topology, &mut agent, &wanted);
}

/// A backend that refuses (no socket on the target port) is heard by the client as the
/// Service refusing: its TCP reset, and its ICMP port unreachable for UDP, come back translated
/// (the ICMP error's own source and the packet it quotes), so that the client's socket, which
/// knows only the cluster IP, fails with `ECONNREFUSED` instead of waiting out a timeout.
#[test]
fn a_backends_refusal_reaches_the_client_as_the_services() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let _agent = start(&topology, &dir);
    for (family, proto) in cases() {
        for a in attempts(&topology, "cl/c1", CLOSED.addr(family), proto, 6) {
            match &a.answer {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                other => panic!(
                    "{family} {proto} from port {} to {} (backends closed on 82): expected \
                     ECONNREFUSED, got {other:?}",
                    a.port,
                    CLOSED.id()
                ),
            }
        }
    }
}

/// Hairpin: `b1` reaches a Service that selects only itself, and a Service whose backends
/// include itself, on every connection.
#[test]
fn a_pod_reaches_a_service_that_selects_itself() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let _agent = start(&topology, &dir);
    let b1 = backend("b1");
    for (family, proto) in cases() {
        let what = format!("{family} {proto} from {b1} to {} (itself only)", OWN.id());
        let own = attempts(&topology, &b1, OWN.addr(family), proto, 10);
        let counts = answered_by(&own, &what);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            [&b1],
            "{what}: {counts:?}"
        );

        let mut s = session(&topology, &b1, OWN.addr(family), proto);
        for i in 0..5 {
            let answer = s
                .ask()
                .unwrap_or_else(|e| panic!("{what}, one connection, request {i}: {e}"));
            assert_eq!(answer, b1, "{what}, one connection, request {i}");
        }

        // Each connection reaches b1 itself with probability about 1/3: 60 all miss it with
        // probability (2/3)^60, about 10⁻¹¹.
        let what = format!("{family} {proto} from {b1} to {}", ECHO.id());
        let shared = attempts(&topology, &b1, ECHO.addr(family), proto, 60);
        let counts = answered_by(&shared, &what);
        eprintln!("{what}: {counts:?}");
        assert!(
            counts.contains_key(&b1),
            "{what}: never reached itself: {counts:?}"
        );

        // Through a port translation (80 to its own 8080): n1 reaches itself with probability
        // about 1/2 per connection.
        let n1 = backend("n1");
        let what = format!("{family} {proto} from {n1} to {}", NAMED.id());
        let named = attempts(&topology, &n1, NAMED.addr(family), proto, 60);
        let counts = answered_by(&named, &what);
        eprintln!("{what}: {counts:?}");
        assert!(
            counts.contains_key(&n1),
            "{what}: never reached itself: {counts:?}"
        );
    }
}

/// A named `targetPort` resolves on each pod: `n1` serves `web` on 8080 and `n2` on 8081 (and
/// neither serves the other's number), and one Service port reaches both.
#[test]
fn a_named_target_port_reaches_each_pod_on_its_own_number() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let _agent = start(&topology, &dir);
    let named = [backend("n1"), backend("n2")];
    for (family, proto) in cases() {
        // The control: a backend sent to the other pod's number would not answer.
        assert!(
            !topology.probe("cl/c1", &named[0], 8081, proto, family),
            "{family} {proto}: n1 answers on 8081, so the test could not tell the ports apart"
        );
        let what = format!("{family} {proto} to {} (targetPort web)", NAMED.id());
        let all = attempts(&topology, "cl/c1", NAMED.addr(family), proto, 120);
        assert_spread(&answered_by(&all, &what), &named, &what);
    }
}

/// Policy judges the backend a connection was translated to. `c1` may send only to `b1` and
/// `b3` (an egress policy), and `b3` accepts only `c1` (an ingress policy): through
/// `svc/echo`, `c1`'s connections that land on `b2` fail and `c2`'s that land on `b3` fail,
/// every other one succeeds, and each failure is a `policy_denied` drop at the backend it was
/// translated to, in the flows. Connections open before the policies keep going or are cut
/// as new ones would be.
#[test]
fn policy_judges_the_backend_a_connection_was_translated_to() {
    // Enough that the binomial range of the failures (see `binomial_range`) excludes zero: a
    // dataplane that never sent a connection to the denied backend would fail, too.
    const CONNECTIONS: usize = 90;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    let policies = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: c1-to-b1-b3\n  \
         namespace: {CLIENTS}\nspec:\n  podSelector:\n    matchLabels:\n      pod: c1\n  \
         egress:\n    - to:\n        - namespaceSelector:\n            matchLabels:\n              \
         kubernetes.io/metadata.name: {NS}\n          podSelector:\n            matchExpressions:\n              \
         - key: pod\n                operator: In\n                values: [b1, b3]\n\
         ---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: b3-from-c1\n  \
         namespace: {NS}\nspec:\n  podSelector:\n    matchLabels:\n      pod: b3\n  \
         ingress:\n    - from:\n        - namespaceSelector:\n            matchLabels:\n              \
         kubernetes.io/metadata.name: {CLIENTS}\n          podSelector:\n            matchLabels:\n              \
         pod: c1\n"
    );
    let open = open_connections_across_a_policy_change(&topology);
    apply(&mut agent, dir.path(), "policies.yaml", &policies);
    check_connections_across_a_policy_change(open);
    // (client, the backend its policy keeps it from, where the drop happens)
    let denied = [("cl/c1", "b2", "egress"), ("cl/c2", "b3", "ingress")];
    for (family, proto) in cases() {
        for (client, blocked, direction) in denied {
            let blocked = backend(blocked);
            let what = format!("{family} {proto} from {client} to {}", ECHO.id());
            let all = attempts(&topology, client, ECHO.addr(family), proto, CONNECTIONS);
            let (ok, failed): (Vec<&Attempt>, Vec<&Attempt>) =
                all.iter().partition(|a| a.answer.is_ok());
            for a in &ok {
                let pod = a.answer.as_ref().expect("partitioned");
                assert_ne!(
                    *pod, blocked,
                    "{what}: port {} reached {blocked}, which policy denies",
                    a.port
                );
            }
            let (low, high) = binomial_range(CONNECTIONS, BACKENDS.len());
            eprintln!(
                "{what}: {} answered, {} failed (expected in [{low:.1}, {high:.1}])",
                ok.len(),
                failed.len()
            );
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let inside = (low..=high).contains(&(failed.len() as f64));
            assert!(
                inside,
                "{what}: {} of {CONNECTIONS} failed, outside [{low:.1}, {high:.1}]: {failed:?}",
                failed.len()
            );
            let client_ip = topology.pod(client).ip(family);
            let blocked_ip = topology.pod(&blocked).ip(family);
            let wanted: Vec<(String, _)> = failed
                .iter()
                .map(|a| {
                    let port = a.port;
                    let blocked = blocked.clone();
                    (
                        format!(
                            "{what}: port {port} dropped policy_denied at {blocked} ({direction})"
                        ),
                        move |r: &FlowRecord| {
                            r.src.port == Some(port)
                                && r.src.ip == Some(client_ip)
                                && r.dst.ip == Some(blocked_ip)
                                && r.dst.name.as_deref() == Some(&*blocked)
                                && r.verdict == Verdict::Dropped
                                && r.reason == "policy_denied"
                                && r.direction == direction
                                // The client's side knows the Service it sent to; the
                                // backend's side sees a packet from a pod to a pod.
                                && (direction == "ingress"
                                    || r.service.as_deref() == Some("svc/echo"))
                        },
                    )
                })
                .collect();
            wait_for_flows(&topology, &mut agent, &wanted);
        }
    }
}

/// Connections from `c1` through `svc/echo` open before the policies: per family and protocol,
/// one that reached `b2` (which `c1`'s policy will deny) and one that reached another backend,
/// each asking on a thread of its own, and the backend it reached.
struct OpenAcrossPolicy {
    case: (Family, Proto),
    denied: (KeptOpen, String),
    allowed: (KeptOpen, String),
}

fn open_connections_across_a_policy_change(topology: &Topology) -> Vec<OpenAcrossPolicy> {
    // Each new connection reaches b2 with probability about 1/3: 60 tries all miss with
    // probability (2/3)^60, about 10⁻¹¹ (and the others about 10⁻²⁸).
    const TRIES: usize = 60;
    let b2 = backend("b2");
    cases()
        .into_iter()
        .map(|case| {
            let reaching = |wanted: &dyn Fn(&str) -> bool, what: &str| {
                let (s, pod) = session_reaching(topology, "cl/c1", ECHO, case, TRIES, wanted)
                    .unwrap_or_else(|| panic!("{case:?}: no connection reached {what}"));
                (KeptOpen::start(s), pod)
            };
            OpenAcrossPolicy {
                case,
                denied: reaching(&|pod| pod == b2, "b2"),
                allowed: reaching(&|pod| pod != b2, "b1 or b3"),
            }
        })
        .collect()
}

/// A policy change cuts the open connections it now denies, within a packet, and leaves the
/// others alone (README: "Established connections when policy changes").
fn check_connections_across_a_policy_change(open: Vec<OpenAcrossPolicy>) {
    for OpenAcrossPolicy {
        case: (family, proto),
        denied: (denied, denied_pod),
        allowed: (allowed, allowed_pod),
    } in open
    {
        let what = format!(
            "{family} {proto} connection from cl/c1 through {}",
            ECHO.id()
        );
        let (mut s, answers) = allowed.stop();
        let last = s.ask();
        let wrong: Vec<&io::Result<String>> = answers
            .iter()
            .chain([&last])
            .filter(|a| !matches!(a, Ok(pod) if *pod == allowed_pod))
            .collect();
        assert!(
            wrong.is_empty(),
            "{what} to {allowed_pod}, which the policies allow: answers other than \
             {allowed_pod} across the change: {wrong:?}"
        );
        let (mut s, answers) = denied.stop();
        match s.ask() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!(
                "{what} to {denied_pod}, which the policies now deny: expected no answer, got \
                 {other:?} (answers before: {answers:?})"
            ),
        }
    }
}

/// Flows of translated connections name the Service, in `/flows` and in `weir flows`.
#[test]
fn flows_name_the_service_of_translated_connections() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    let mut wanted = Vec::new();
    for (family, proto) in cases() {
        let a = attempts(&topology, "cl/c1", ECHO.addr(family), proto, 1)
            .pop()
            .expect("one attempt");
        let pod = a
            .answer
            .unwrap_or_else(|e| panic!("{family} {proto} to {}: {e}", ECHO.id()));
        let port = a.port;
        let backend_ip: IpAddr = topology.pod(&pod).ip(family);
        wanted.push((
            format!(
                "{family} {proto} from cl/c1 port {port}: allowed to {pod} via {}",
                ECHO.id()
            ),
            move |r: &FlowRecord| {
                r.src.port == Some(port)
                    && r.src.name.as_deref() == Some("cl/c1")
                    && r.dst.ip == Some(backend_ip)
                    && r.dst.port == Some(SERVICE_PORT)
                    && r.verdict == Verdict::Allowed
                    && r.direction == "egress"
                    && r.service.as_deref() == Some("svc/echo")
            },
        ));
    }
    wait_for_flows(&topology, &mut agent, &wanted);

    let addr = agent.health_addr().to_string();
    let binary = testbed::weir_binary().to_str().expect("UTF-8 path");
    let out = topology
        .node()
        .exec(binary, &["flows", "--pod", "cl/c1", "--health-addr", &addr]);
    assert!(
        out.status.success(),
        "weir flows: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    eprintln!("$ weir flows --pod cl/c1\n{text}");
    assert!(text.contains(" via service svc/echo "), "{text}");
}

/// Panics unless `attempt` failed the way a dropped packet makes it fail: no answer within the
/// probe's timeout, rather than a refusal.
fn assert_unanswered(attempt: &Attempt, what: &str) {
    match &attempt.answer {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!(
            "{what}, from port {}: expected no answer (dropped), got {other:?}",
            attempt.port
        ),
    }
}

/// What to look for in the flows: a new connection from `client_ip`:`port` to `dst`, dropped
/// with `reason` at the client's interface, naming `svc`.
fn dropped_via(
    what: String,
    (client_ip, port): (IpAddr, u16),
    dst: IpAddr,
    reason: &'static str,
    svc: Svc,
) -> (String, impl Fn(&FlowRecord) -> bool) {
    let service = svc.id();
    (what, move |r: &FlowRecord| {
        r.src.ip == Some(client_ip)
            && r.src.port == Some(port)
            && r.dst.ip == Some(dst)
            && r.verdict == Verdict::Dropped
            && r.reason == reason
            && r.direction == "egress"
            && r.service.as_deref() == Some(service.as_str())
    })
}

/// `svc/near` (`internalTrafficPolicy: Local`) and `svc/far` (`Cluster`), without selectors,
/// each with slices listing `b1` on this node (when `local_endpoint`) and an endpoint on
/// another node ([`ELSEWHERE`]).
fn traffic_policy_yaml(topology: &Topology, local_endpoint: bool) -> String {
    let by_number = ("80", "80");
    let elsewhere = Family::ALL.map(|family| by_family(ELSEWHERE, family));
    let mut endpoints = vec![SliceEndpoint::at(elsewhere).on(OTHER_NODE)];
    if local_endpoint {
        endpoints.push(SliceEndpoint::pod(topology, &backend("b1")).on(NODE_NAME));
    }
    [
        service_yaml(NEAR, "", by_number, "  internalTrafficPolicy: Local\n"),
        slices_yaml(NEAR, &endpoints),
        service_yaml(FAR, "", by_number, "  internalTrafficPolicy: Cluster\n"),
        slices_yaml(FAR, &endpoints),
    ]
    .join("---\n")
}

/// `internalTrafficPolicy: Local`: a pod's connections to the `ClusterIP` go only to the
/// endpoints on its node (`nodeName` is `--node-name`), never to those listed on another;
/// the same slices behind `Cluster` send some to the other node. When no endpoint is left on
/// this node, connections are dropped (no answer, not a refusal: another node may have one,
/// as kube-proxy reasons), and the drops are flows with reason `no_local_endpoints`.
#[test]
fn internal_traffic_policy_local_reaches_only_this_nodes_endpoints() {
    // Behind `Cluster`, each connection reaches b1 with probability about 1/2: 30 all do with
    // probability about 10⁻⁹, so the control below cannot pass by chance.
    const CONNECTIONS: usize = 30;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    let yaml = traffic_policy_yaml(&topology, true);
    apply(&mut agent, dir.path(), "traffic-policy.yaml", &yaml);
    let b1 = backend("b1");
    for (family, proto) in cases() {
        let what = format!("{family} {proto} from cl/c1 to {}", NEAR.id());
        let near = attempts(&topology, "cl/c1", NEAR.addr(family), proto, CONNECTIONS);
        let counts = answered_by(&near, &what);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            [&b1],
            "{what}: {counts:?}"
        );

        let what = format!("{family} {proto} from cl/c1 to {}", FAR.id());
        let far = attempts(&topology, "cl/c1", FAR.addr(family), proto, CONNECTIONS);
        let (reached, elsewhere): (Vec<&Attempt>, Vec<&Attempt>) =
            far.iter().partition(|a| a.answer.is_ok());
        eprintln!(
            "{what}: {} answered by b1, {} sent to the other node",
            reached.len(),
            elsewhere.len()
        );
        assert!(
            !reached.is_empty() && !elsewhere.is_empty(),
            "{what} (Cluster): expected connections both to b1 and to the other node: {far:?}"
        );
        for a in reached {
            assert_eq!(a.answer.as_ref().ok(), Some(&b1), "{what}: port {}", a.port);
        }
    }

    let yaml = traffic_policy_yaml(&topology, false);
    apply(&mut agent, dir.path(), "traffic-policy.yaml", &yaml);
    let mut wanted = Vec::new();
    for (family, proto) in cases() {
        let what = format!(
            "{family} {proto} from cl/c1 to {} (no endpoint on this node)",
            NEAR.id()
        );
        let attempt = attempts(&topology, "cl/c1", NEAR.addr(family), proto, 1)
            .pop()
            .expect("one attempt");
        assert_unanswered(&attempt, &what);
        let client = (topology.pod("cl/c1").ip(family), attempt.port);
        wanted.push(dropped_via(
            format!("{what}: dropped no_local_endpoints"),
            client,
            NEAR.addr(family).ip(),
            "no_local_endpoints",
            NEAR,
        ));
    }
    wait_for_flows(&topology, &mut agent, &wanted);
}

/// `svc/ranged`: a `LoadBalancer` Service over the echo backends whose load-balancer IPs
/// ([`RANGED_LB`]) admit only `c1` (`loadBalancerSourceRanges`: its /32 and /128).
fn source_ranges_yaml(topology: &Topology) -> String {
    let [c1_v4, c1_v6] = topology.pod("cl/c1").ips();
    let [lb_v4, lb_v6] = RANGED_LB;
    service_yaml(
        RANGED,
        "  selector:\n    app: echo\n",
        ("80", "80"),
        &format!(
            "  type: LoadBalancer\n  loadBalancerSourceRanges:\n    - {c1_v4}/32\n    - \
             {c1_v6}/128\nstatus:\n  loadBalancer:\n    ingress:\n      - ip: {lb_v4}\n      \
             - ip: \"{lb_v6}\"\n"
        ),
    )
}

/// `loadBalancerSourceRanges` hold for pods reaching the load-balancer IP (kube-proxy checks
/// every client of that IP): `c1`, inside the ranges, reaches the backends through it; `c2`,
/// outside, is dropped (no answer; flows with reason `source_range`), and still reaches the
/// same Service through its `ClusterIP`, which the ranges do not guard.
#[test]
fn load_balancer_source_ranges_admit_only_pods_inside_them() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    apply(
        &mut agent,
        dir.path(),
        "source-ranges.yaml",
        &source_ranges_yaml(&topology),
    );
    let backends = echo_backends();
    let mut wanted = Vec::new();
    for (family, proto) in cases() {
        let lb = SocketAddr::new(by_family(RANGED_LB, family), SERVICE_PORT);
        let what = format!("{family} {proto} from cl/c1 (inside the ranges) to {lb}");
        let inside = attempts(&topology, "cl/c1", lb, proto, 10);
        let counts = answered_by(&inside, &what);
        assert!(
            counts.keys().all(|pod| backends.contains(pod)),
            "{what}: answered by {counts:?}"
        );

        let what = format!("{family} {proto} from cl/c2 (outside the ranges) to {lb}");
        let outside = attempts(&topology, "cl/c2", lb, proto, 1)
            .pop()
            .expect("one attempt");
        assert_unanswered(&outside, &what);
        let client = (topology.pod("cl/c2").ip(family), outside.port);
        wanted.push(dropped_via(
            format!("{what}: dropped source_range"),
            client,
            lb.ip(),
            "source_range",
            RANGED,
        ));

        let what = format!("{family} {proto} from cl/c2 to {}'s ClusterIP", RANGED.id());
        let cluster_ip = attempts(&topology, "cl/c2", RANGED.addr(family), proto, 10);
        let counts = answered_by(&cluster_ip, &what);
        assert!(
            counts.keys().all(|pod| backends.contains(pod)),
            "{what}: answered by {counts:?}"
        );
    }
    wait_for_flows(&topology, &mut agent, &wanted);
}

/// `EndpointSlice` conditions during a rollout, as kube-proxy reads them: new connections go
/// to the ready endpoints; when none is ready, to those still serving while terminating; an
/// endpoint that is terminating and no longer serving never gets one, and with only such
/// endpoints left the Service refuses (`ECONNREFUSED` at once, as with no endpoints at all).
/// `svc/rollout` has no selector: its slices are written here, phase by phase.
#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    // Each phase with two candidates: 30 connections all reach one of them with probability
    // 2 (1/2)^30, about 2·10⁻⁹.
    const CONNECTIONS: usize = 30;
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = topology();
    let dir = TempDir::new("manifests");
    let mut agent = start(&topology, &dir);
    let [b1, b2, b3] = BACKENDS.map(|b| SliceEndpoint::pod(&topology, &backend(b)));
    let phase = |agent: &mut Agent<'_>, endpoints: &[SliceEndpoint]| {
        let yaml = [
            service_yaml(ROLLOUT, "", ("80", "80"), ""),
            slices_yaml(ROLLOUT, endpoints),
        ]
        .join("---\n");
        apply(agent, dir.path(), "rollout.yaml", &yaml);
    };
    let phases = [
        (
            "b1 ready, b2 serving and terminating, b3 terminating",
            vec![b1, b2.terminating(true), b3.terminating(false)],
            vec![backend("b1")],
        ),
        (
            "none ready: b1 and b2 serving and terminating, b3 terminating",
            vec![
                b1.terminating(true),
                b2.terminating(true),
                b3.terminating(false),
            ],
            vec![backend("b1"), backend("b2")],
        ),
    ];
    for (what, endpoints, expected) in phases {
        phase(&mut agent, &endpoints);
        for (family, proto) in cases() {
            let what = format!("{family} {proto} to {} ({what})", ROLLOUT.id());
            let all = attempts(&topology, "cl/c1", ROLLOUT.addr(family), proto, CONNECTIONS);
            let counts = answered_by(&all, &what);
            eprintln!("{what}: {counts:?}");
            assert_eq!(
                counts.keys().collect::<Vec<_>>(),
                expected.iter().collect::<Vec<_>>(),
                "{what}: answered by {counts:?}"
            );
        }
    }

    phase(
        &mut agent,
        &[
            b1.terminating(false),
            b2.terminating(false),
            b3.terminating(false),
        ],
    );
    for (family, proto) in cases() {
        for a in attempts(&topology, "cl/c1", ROLLOUT.addr(family), proto, 3) {
            match &a.answer {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                other => panic!(
                    "{family} {proto} from port {} to {} (every endpoint terminating, none \
                     serving): expected ECONNREFUSED, got {other:?}",
                    a.port,
                    ROLLOUT.id()
                ),
            }
        }
    }
}
