//! Services reached from outside the cluster: node ports, load-balancer IPs and external IPs,
//! with real TCP and UDP over both families, on a two-node cluster ([`testbed::Cluster`])
//! with a `weir` agent on each node (`--node-name nodeN --uplink eth0`), both reading one
//! manifests directory.
//!
//! Pods of namespace `np`: `e1`, `e2` on `node1` and `e3` on `node2` (labelled `app: echo`),
//! `lone` on `node1` alone (`app: lone`), `g1` on `node1` (`app: guarded`). Every pod's echo
//! servers name the pod and the source address it saw, so a client learns which backend each
//! connection reached and whether its own address arrived (see [`testbed::Answer`]).
//!
//! | Service       | type           | selects        | reached at                                  | policy    |
//! |---------------|----------------|----------------|---------------------------------------------|-----------|
//! | `cluster`     | `NodePort`     | `app: echo`    | node port 30080                             | `Cluster` |
//! | `local`       | `NodePort`     | `app: echo`    | node port 30081                             | `Local`   |
//! | `lone`        | `NodePort`     | `app: lone`    | node port 30082                             | `Local`   |
//! | `empty`       | `NodePort`     | nothing        | node port 30083                             | `Cluster` |
//! | `lb-cluster`  | `LoadBalancer` | `app: echo`    | `10.100.1.10`, `fd00:100:1::10`             | `Cluster` |
//! | `lb-local`    | `LoadBalancer` | `app: echo`    | `10.100.1.11`, `fd00:100:1::11`             | `Local`   |
//! | `lb-ranged`   | `LoadBalancer` | `app: echo`    | `10.100.1.12`, `fd00:100:1::12` (1)         | `Cluster` |
//! | `ext-cluster` | `ClusterIP`    | `app: echo`    | `externalIPs` `10.100.1.20`, `fd00:100:1::20` | `Cluster` |
//! | `ext-local`   | `ClusterIP`    | `app: echo`    | `externalIPs` `10.100.1.21`, `fd00:100:1::21` | `Local`   |
//! | `guarded`     | `NodePort`     | `app: guarded` | node port 30086                             | `Local`   |
//!
//! (1) `loadBalancerSourceRanges`: the client's first address of each family.
//!
//! The expectations are kube-proxy's and Cilium's:
//! - `Cluster`: every backend of the cluster answers; a backend on another node than the one
//!   the client reached sees that node's address (source NAT, so that replies return through
//!   it), a backend on that node the client's own;
//! - `Local`: only the backends of the node reached answer, seeing the client's address; a node
//!   with none drops (the client times out, it is not refused: another node may serve);
//! - `loadBalancerSourceRanges`: a client outside them gets no answer from the load-balancer IP;
//! - a Service without endpoints refuses (TCP reset, ICMP port unreachable), even where a
//!   node's own socket listens on its node port;
//! - with `Local`, a `NetworkPolicy` `ipBlock` on the backend sees the client's address.
//!
//! Every probe has a timeout, every loop a bound; the namespaces are the test's own and go
//! away on every path. Needs root; skips otherwise. Builds `weir` with cargo unless `WEIR_BIN`
//! names a binary. `--nocapture` prints the counts behind each verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::thread;

use testbed::{Agent, Answer, Cluster, Family, PodSpec, Proto, Session, TempDir, manifests};

/// Namespace of the Services and their pods.
const NS: &str = "np";
/// The port of every Service (TCP and UDP), and what its pods serve.
const SERVICE_PORT: u16 = 80;

/// Node ports; each Service uses one number for TCP and UDP.
const NP_CLUSTER: u16 = 30080;
const NP_LOCAL: u16 = 30081;
const NP_LONE: u16 = 30082;
const NP_EMPTY: u16 = 30083;
const NP_GUARDED: u16 = 30086;

/// The pods selected by `app: echo`, and their nodes.
const ECHO_PODS: [(&str, &str); 3] = [("e1", "node1"), ("e2", "node1"), ("e3", "node2")];

/// One test at a time: two agents per test already compete for the two cores, and a probe
/// timing out under load would be a false failure.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// New connections per case: with three equally weighted backends, the chance that one of
/// them gets none of 48 is 3 × (2/3)⁴⁸ ≈ 10⁻⁸.
const CONNECTIONS: usize = 48;
/// Requests on each connection, which must all reach the backend the first one did.
const REQUESTS_PER_CONNECTION: usize = 3;
/// Connections in flight at once.
const PARALLEL: usize = 8;
/// Attempts that must each fail the same way when a client is expected to get nothing.
const FAILED_ATTEMPTS: usize = 4;

/// A load-balancer or external IP pair, served on [`SERVICE_PORT`].
#[derive(Clone, Copy, Debug)]
struct Vip {
    v4: &'static str,
    v6: &'static str,
}

const LB_CLUSTER: Vip = Vip {
    v4: "10.100.1.10",
    v6: "fd00:100:1::10",
};
const LB_LOCAL: Vip = Vip {
    v4: "10.100.1.11",
    v6: "fd00:100:1::11",
};
const LB_RANGED: Vip = Vip {
    v4: "10.100.1.12",
    v6: "fd00:100:1::12",
};
const EXT_CLUSTER: Vip = Vip {
    v4: "10.100.1.20",
    v6: "fd00:100:1::20",
};
const EXT_LOCAL: Vip = Vip {
    v4: "10.100.1.21",
    v6: "fd00:100:1::21",
};

impl Vip {
    fn ip(self, family: Family) -> IpAddr {
        let text = match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        };
        text.parse().expect("a literal address")
    }

    fn addr(self, family: Family) -> SocketAddr {
        SocketAddr::new(self.ip(family), SERVICE_PORT)
    }

    /// Routes both addresses from the client through `node`.
    fn route_via(self, cluster: &Cluster, node: &str) {
        for family in Family::ALL {
            cluster.route_external(self.ip(family), node);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster and its manifests
// ---------------------------------------------------------------------------------------------

fn pod(name: &str, app: &str) -> PodSpec {
    PodSpec::new(NS, name)
        .label("pod", name)
        .label("app", app)
        .namespace_label("kubernetes.io/metadata.name", NS)
}

fn cluster() -> Cluster {
    Cluster::builder()
        .pods(
            "node1",
            [
                pod("e1", "echo"),
                pod("e2", "echo"),
                pod("lone", "lone"),
                pod("g1", "guarded"),
            ],
        )
        .pod("node2", pod("e3", "echo"))
        .build()
}

/// What a Service adds to its `spec` besides cluster IPs and ports.
struct ServiceSpec<'a> {
    name: &'a str,
    /// Picks the cluster IPs 10.97.0.N and `fd97::N`.
    n: u8,
    kind: &'a str,
    app: &'a str,
    node_port: Option<u16>,
    local: bool,
    /// Lines of `spec`, indented by two spaces.
    extra: String,
    /// Load-balancer ingress IPs, written to `status`.
    ingress: Option<Vip>,
}

impl ServiceSpec<'_> {
    fn yaml(&self) -> String {
        let n = self.n;
        let policy = if self.local { "Local" } else { "Cluster" };
        let mut yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  \
             type: {kind}\n  clusterIPs:\n    - 10.97.0.{n}\n    - fd97::{n}\n  \
             ipFamilyPolicy: RequireDualStack\n  selector:\n    app: {app}\n  \
             externalTrafficPolicy: {policy}\n{extra}  ports:\n",
            name = self.name,
            kind = self.kind,
            app = self.app,
            extra = self.extra,
        );
        for proto in Proto::ALL {
            write!(
                yaml,
                "    - name: {lower}\n      protocol: {proto}\n      port: {SERVICE_PORT}\n      \
                 targetPort: {SERVICE_PORT}\n",
                lower = proto.lowercase(),
            )
            .expect("writing to a String");
            if let Some(node_port) = self.node_port {
                writeln!(yaml, "      nodePort: {node_port}").expect("writing to a String");
            }
        }
        if let Some(vip) = self.ingress {
            write!(
                yaml,
                "status:\n  loadBalancer:\n    ingress:\n      - ip: {}\n      - ip: {}\n",
                vip.v4, vip.v6
            )
            .expect("writing to a String");
        }
        yaml
    }
}

/// Every Service of the table above, one document each.
fn services_yaml() -> String {
    let node_port = |name, n, app, port, local| ServiceSpec {
        name,
        n,
        kind: "NodePort",
        app,
        node_port: Some(port),
        local,
        extra: String::new(),
        ingress: None,
    };
    let load_balancer = |name, n, port, local, vip, extra| ServiceSpec {
        name,
        n,
        kind: "LoadBalancer",
        app: "echo",
        node_port: Some(port),
        local,
        extra,
        ingress: Some(vip),
    };
    let external = |name, n, local, vip: Vip| ServiceSpec {
        name,
        n,
        kind: "ClusterIP",
        app: "echo",
        node_port: None,
        local,
        extra: format!("  externalIPs:\n    - {}\n    - {}\n", vip.v4, vip.v6),
        ingress: None,
    };
    let ranges = format!(
        "  loadBalancerSourceRanges:\n    - {}/32\n    - {}/128\n",
        testbed::CLIENT_IPV4[0],
        testbed::CLIENT_IPV6[0]
    );
    [
        node_port("cluster", 1, "echo", NP_CLUSTER, false),
        node_port("local", 2, "echo", NP_LOCAL, true),
        node_port("lone", 3, "lone", NP_LONE, true),
        node_port("empty", 4, "nothing", NP_EMPTY, false),
        load_balancer("lb-cluster", 5, 30084, false, LB_CLUSTER, String::new()),
        load_balancer("lb-local", 6, 30085, true, LB_LOCAL, String::new()),
        load_balancer("lb-ranged", 7, 30087, false, LB_RANGED, ranges),
        external("ext-cluster", 8, false, EXT_CLUSTER),
        external("ext-local", 9, true, EXT_LOCAL),
        node_port("guarded", 10, "guarded", NP_GUARDED, true),
    ]
    .iter()
    .map(ServiceSpec::yaml)
    .collect::<Vec<_>>()
    .join("---\n")
}

/// Writes the manifests, starts an agent on each node and waits until both are ready.
fn start<'c>(cluster: &'c Cluster, dir: &TempDir) -> Vec<Agent<'c>> {
    cluster.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "services.yaml", &services_yaml());
    cluster.start_agents(&Agent::options(), dir.path())
}

/// Replaces manifest `name` and waits until every agent has applied it.
fn apply(agents: &mut [Agent<'_>], dir: &Path, name: &str, yaml: &str) {
    let generations: Vec<u64> = agents.iter_mut().map(|a| a.status().generation).collect();
    manifests::write_atomic(dir, name, yaml);
    for (agent, generation) in agents.iter_mut().zip(generations) {
        agent.wait_generation_after(generation);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// `n` new connections (or UDP flows) from the client's address `src` to `dst`, each with
/// [`REQUESTS_PER_CONNECTION`] requests, [`PARALLEL`] at a time. Each is its first answer, or
/// what went wrong, including answers that differ within one connection.
fn connections(
    cluster: &Cluster,
    src: IpAddr,
    dst: SocketAddr,
    proto: Proto,
    n: usize,
) -> Vec<Result<Answer, String>> {
    cluster.client().run(|| {
        thread::scope(|s| {
            let workers: Vec<_> = (0..PARALLEL)
                .map(|worker| {
                    // Threads start in the namespace of the thread that creates them.
                    s.spawn(move || {
                        (worker..n)
                            .step_by(PARALLEL)
                            .map(|_| connection(src, dst, proto))
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

/// One connection and its requests: the first answer, when every request got the same one
/// (same pod, same peer address and port: one backend and one translation per connection).
fn connection(src: IpAddr, dst: SocketAddr, proto: Proto) -> Result<Answer, String> {
    let mut session =
        Session::open_from(src, dst, proto).map_err(|(local, e)| format!("from {local}: {e}"))?;
    let local = session.local_addr();
    let first = session
        .exchange()
        .map_err(|e| format!("from {local}: request 1: {e}"))?;
    for i in 2..=REQUESTS_PER_CONNECTION {
        let next = session
            .exchange()
            .map_err(|e| format!("from {local}: request {i}: {e}"))?;
        if next != first {
            return Err(format!(
                "from {local}: request {i} reached {} seeing {}, request 1 {} seeing {}",
                next.pod, next.peer, first.pod, first.peer
            ));
        }
    }
    Ok(first)
}

/// One request on a new connection from `src` to `dst`, from the client.
fn attempt(cluster: &Cluster, src: IpAddr, dst: SocketAddr, proto: Proto) -> io::Result<Answer> {
    cluster
        .client()
        .run(|| testbed::exchange_from(src, dst, proto))
}

/// `np/<name>`.
fn id(name: &str) -> String {
    format!("{NS}/{name}")
}

/// Who must answer a client at `client` that reached node `entry`, and whom each must see:
/// a backend of `entry` sees the client; any other (only with `snat`, the `Cluster` policy)
/// sees `entry`'s address.
fn expected_peers(
    cluster: &Cluster,
    backends: &[(&str, &str)],
    entry: &str,
    client: IpAddr,
    family: Family,
) -> BTreeMap<String, IpAddr> {
    backends
        .iter()
        .map(|(name, node)| {
            let seen = if *node == entry {
                client
            } else {
                cluster.node(entry).ip(family)
            };
            (id(name), seen)
        })
        .collect()
}

/// The echo backends a `Cluster` policy reaches from `entry` (all), or a `Local` one (those
/// of `entry`).
fn echo_backends(entry: &str, local: bool) -> Vec<(&'static str, &'static str)> {
    ECHO_PODS
        .into_iter()
        .filter(|(_, node)| !local || *node == entry)
        .collect()
}

/// Whether every connection was answered, only by pods of `expected`, each seeing the address
/// `expected` gives it, and every pod of `expected` answered at least once. The error tells
/// every way the outcomes went wrong, not only the first.
fn check_answers(
    outcomes: &[Result<Answer, String>],
    expected: &BTreeMap<String, IpAddr>,
    what: &str,
) -> Result<(), String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = BTreeSet::new();
    let mut failed = Vec::new();
    for outcome in outcomes {
        let answer = match outcome {
            Ok(answer) => answer,
            Err(e) => {
                failed.push(e.as_str());
                continue;
            }
        };
        *counts.entry(&answer.pod).or_default() += 1;
        match expected.get(&answer.pod) {
            None => {
                wrong.insert(format!("{} answered, not a backend here", answer.pod));
            }
            Some(seen) if *seen != answer.peer.ip() => {
                wrong.insert(format!(
                    "{} saw {}, expected {seen}",
                    answer.pod,
                    answer.peer.ip()
                ));
            }
            Some(_) => {}
        }
    }
    eprintln!(
        "{what}: answered by {counts:?}, {} of {} failed",
        failed.len(),
        outcomes.len()
    );
    let silent: Vec<&String> = expected
        .keys()
        .filter(|pod| !counts.contains_key(pod.as_str()))
        .collect();
    if failed.is_empty() && wrong.is_empty() && silent.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} of {} connections failed (first ones: {:?}); wrong answers: {wrong:?}; \
         never answered: {silent:?}; answered by: {counts:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(3)],
    ))
}

/// Whether connections from the client's first address to `dst`, reaching node `entry`, are
/// answered as [`expected_peers`] says for the backends `backends`.
fn check_served(
    cluster: &Cluster,
    dst: SocketAddr,
    (family, proto): (Family, Proto),
    entry: &str,
    backends: &[(&str, &str)],
    what: &str,
) -> Result<(), String> {
    let client = cluster.client_ip(family, 0);
    let outcomes = connections(cluster, client, dst, proto, CONNECTIONS);
    let expected = expected_peers(cluster, backends, entry, client, family);
    check_answers(
        &outcomes,
        &expected,
        &format!("{what}, {family} {proto} to {dst}"),
    )
}

/// Whether each of [`FAILED_ATTEMPTS`] requests from `src` to `dst` fails as `fits` accepts
/// (`wanted` describes it).
fn check_each_attempt_fails(
    cluster: &Cluster,
    src: IpAddr,
    dst: SocketAddr,
    proto: Proto,
    wanted: &str,
    fits: impl Fn(io::ErrorKind) -> bool,
) -> Result<(), String> {
    let what = format!("{proto} {src} → {dst}");
    for i in 1..=FAILED_ATTEMPTS {
        match attempt(cluster, src, dst, proto) {
            Ok(answer) => {
                return Err(format!(
                    "{what}, attempt {i}: answered by {} (seeing {}); expected {wanted}",
                    answer.pod, answer.peer
                ));
            }
            Err(e) if !fits(e.kind()) => {
                return Err(format!(
                    "{what}, attempt {i}: {e} ({:?}); expected {wanted}",
                    e.kind()
                ));
            }
            Err(_) => {}
        }
    }
    eprintln!("{what}: {wanted}, {FAILED_ATTEMPTS} times");
    Ok(())
}

/// The verdicts of every case of a test. Every case runs, and the test fails at the end with
/// all those that went wrong: one failure does not hide the state of the others.
#[derive(Debug, Default)]
struct Verdicts {
    passed: usize,
    failures: Vec<String>,
}

impl Verdicts {
    fn record(&mut self, verdict: Result<(), String>) {
        match verdict {
            Ok(()) => self.passed += 1,
            Err(failure) => self.failures.push(failure),
        }
    }

    fn assert_all_passed(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.failures.len() + self.passed,
            self.failures.join("\n")
        );
    }
}

/// Silence: a dropped SYN times out the connect, a dropped datagram the wait for its echo.
fn is_silence(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// Every family and protocol.
fn cases() -> Vec<(Family, Proto)> {
    Family::ALL
        .into_iter()
        .flat_map(|f| Proto::ALL.into_iter().map(move |p| (f, p)))
        .collect()
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// `externalTrafficPolicy: Cluster` on a node port: through either node, every backend of the
/// cluster answers; those on the other node see the receiving node's address, those on the
/// receiving node the client's.
#[test]
fn node_port_with_cluster_policy_reaches_every_backend_and_translates_only_for_remote_ones() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    let mut verdicts = Verdicts::default();
    for entry in testbed::NODES {
        for (family, proto) in cases() {
            let dst = SocketAddr::new(cluster.node(entry).ip(family), NP_CLUSTER);
            verdicts.record(check_served(
                &cluster,
                dst,
                (family, proto),
                entry,
                &echo_backends(entry, false),
                &format!("np/cluster through {entry}"),
            ));
        }
    }
    verdicts.assert_all_passed();
}

/// `externalTrafficPolicy: Local` on a node port: only the receiving node's backends answer,
/// and they see the client's address.
#[test]
fn node_port_with_local_policy_reaches_only_local_backends_which_see_the_client() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    let mut verdicts = Verdicts::default();
    for entry in testbed::NODES {
        for (family, proto) in cases() {
            let dst = SocketAddr::new(cluster.node(entry).ip(family), NP_LOCAL);
            verdicts.record(check_served(
                &cluster,
                dst,
                (family, proto),
                entry,
                &echo_backends(entry, true),
                &format!("np/local through {entry}"),
            ));
        }
    }
    verdicts.assert_all_passed();
}

/// `externalTrafficPolicy: Local` on a node without local backends: the packet is dropped,
/// so the client times out rather than being refused (the node's stack, reached instead,
/// would refuse); the node that has the backend serves it.
#[test]
fn node_port_with_local_policy_drops_on_a_node_without_local_backends() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    let mut verdicts = Verdicts::default();
    for (family, proto) in cases() {
        let served = SocketAddr::new(cluster.node("node1").ip(family), NP_LONE);
        verdicts.record(check_served(
            &cluster,
            served,
            (family, proto),
            "node1",
            &[("lone", "node1")],
            "np/lone through node1",
        ));
        let client = cluster.client_ip(family, 0);
        let dropped = SocketAddr::new(cluster.node("node2").ip(family), NP_LONE);
        verdicts.record(check_each_attempt_fails(
            &cluster,
            client,
            dropped,
            proto,
            "a drop (timeout) by node2, which has no backend of np/lone",
            is_silence,
        ));
    }
    verdicts.assert_all_passed();
}

/// A load-balancer IP follows its Service's traffic policy on whichever node the client's
/// router sends it to: `Cluster` reaches every backend (remote ones see that node), `Local`
/// only that node's (which see the client).
#[test]
fn load_balancer_ips_follow_the_traffic_policy_on_the_node_they_are_routed_to() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    check_routed_vips(
        &cluster,
        [
            ("np/lb-cluster", LB_CLUSTER, false),
            ("np/lb-local", LB_LOCAL, true),
        ],
    )
    .assert_all_passed();
}

/// External IPs behave as load-balancer IPs: the traffic policy on the node they reach.
#[test]
fn external_ips_follow_the_traffic_policy_on_the_node_they_are_routed_to() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    check_routed_vips(
        &cluster,
        [
            ("np/ext-cluster", EXT_CLUSTER, false),
            ("np/ext-local", EXT_LOCAL, true),
        ],
    )
    .assert_all_passed();
}

/// For each node in turn, routes every address of `vips` (Service id, addresses, whether its
/// policy is `Local`) through it, and checks who answers and whom they see.
fn check_routed_vips(cluster: &Cluster, vips: [(&str, Vip, bool); 2]) -> Verdicts {
    let mut verdicts = Verdicts::default();
    for entry in testbed::NODES {
        for (_, vip, _) in vips {
            vip.route_via(cluster, entry);
        }
        for (what, vip, local) in vips {
            for (family, proto) in cases() {
                verdicts.record(check_served(
                    cluster,
                    vip.addr(family),
                    (family, proto),
                    entry,
                    &echo_backends(entry, local),
                    &format!("{what} routed through {entry}"),
                ));
            }
        }
    }
    verdicts
}

/// `loadBalancerSourceRanges` holding the client's first address: that address is served,
/// the client's second gets no answer.
#[test]
fn load_balancer_source_ranges_admit_only_clients_inside_them() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    LB_RANGED.route_via(&cluster, "node1");
    let mut verdicts = Verdicts::default();
    for (family, proto) in cases() {
        verdicts.record(check_served(
            &cluster,
            LB_RANGED.addr(family),
            (family, proto),
            "node1",
            &echo_backends("node1", false),
            "np/lb-ranged from inside its source ranges",
        ));
        let outside = cluster.client_ip(family, 1);
        verdicts.record(check_each_attempt_fails(
            &cluster,
            outside,
            LB_RANGED.addr(family),
            proto,
            "no answer (outside loadBalancerSourceRanges)",
            |_| true,
        ));
    }
    verdicts.assert_all_passed();
}

/// With `Local`, the backend sees the client's own address, so an ingress `NetworkPolicy`
/// whose `ipBlock` admits the client's first address and not its second lets exactly the
/// first through. Both reach the backend before the policy exists, so the denial is the
/// policy's.
#[test]
fn network_policy_ip_blocks_see_the_client_through_a_local_node_port() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let mut agents = start(&cluster, &dir);
    let guarded = [("g1", "node1")];
    let mut verdicts = Verdicts::default();
    let check_reaches = |verdicts: &mut Verdicts, family, proto, n, when: &str| {
        let dst = SocketAddr::new(cluster.node("node1").ip(family), NP_GUARDED);
        let client = cluster.client_ip(family, n);
        let outcomes = connections(&cluster, client, dst, proto, PARALLEL);
        let expected = expected_peers(&cluster, &guarded, "node1", client, family);
        let what = format!("np/guarded {when}, {family} {proto} from {client}");
        verdicts.record(check_answers(&outcomes, &expected, &what));
    };
    for (family, proto) in cases() {
        for n in 0..2 {
            check_reaches(&mut verdicts, family, proto, n, "before the policy");
        }
    }
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: first-client\n  \
         namespace: {NS}\nspec:\n  podSelector:\n    matchLabels:\n      app: guarded\n  \
         policyTypes: [Ingress]\n  ingress:\n    - from:\n        - ipBlock:\n            \
         cidr: {}/32\n        - ipBlock:\n            cidr: {}/128\n",
        testbed::CLIENT_IPV4[0],
        testbed::CLIENT_IPV6[0]
    );
    apply(&mut agents, dir.path(), "policy.yaml", &policy);
    for (family, proto) in cases() {
        check_reaches(&mut verdicts, family, proto, 0, "under the policy");
        let dst = SocketAddr::new(cluster.node("node1").ip(family), NP_GUARDED);
        verdicts.record(check_each_attempt_fails(
            &cluster,
            cluster.client_ip(family, 1),
            dst,
            proto,
            "a policy drop (timeout)",
            is_silence,
        ));
    }
    verdicts.assert_all_passed();
}

/// A node port of a Service without endpoints refuses at once (TCP reset, ICMP port
/// unreachable), through either node, even though a socket of the node listens on that port
/// (bound, never read): only a refusal by the dataplane passes, since the node's own socket
/// would complete the handshake or swallow the datagram.
#[test]
fn node_port_without_endpoints_refuses_instead_of_reaching_the_node() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    let _agents = start(&cluster, &dir);
    let _decoys: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let addrs: Vec<SocketAddr> = Family::ALL
                .iter()
                .map(|f| SocketAddr::new(node.ip(*f), NP_EMPTY))
                .collect();
            node.netns().run(|| decoy(&addrs))
        })
        .collect();
    let mut verdicts = Verdicts::default();
    for entry in testbed::NODES {
        for (family, proto) in cases() {
            let client = cluster.client_ip(family, 0);
            let dst = SocketAddr::new(cluster.node(entry).ip(family), NP_EMPTY);
            verdicts.record(check_each_attempt_fails(
                &cluster,
                client,
                dst,
                proto,
                "a refusal (TCP reset or ICMP port unreachable)",
                |kind| kind == io::ErrorKind::ConnectionRefused,
            ));
        }
    }
    verdicts.assert_all_passed();
}

/// Sockets bound at `addrs` in the calling thread's namespace, TCP listening and UDP, that
/// nobody serves.
fn decoy(addrs: &[SocketAddr]) -> Vec<(TcpListener, UdpSocket)> {
    addrs
        .iter()
        .map(|at| {
            let tcp = TcpListener::bind(at).unwrap_or_else(|e| panic!("binding TCP {at}: {e}"));
            let udp = UdpSocket::bind(at).unwrap_or_else(|e| panic!("binding UDP {at}: {e}"));
            (tcp, udp)
        })
        .collect()
}

/// Without `--uplink`, the agent attaches to the interfaces of the node's default routes
/// (here `eth0`), and node ports answer there.
#[test]
fn without_uplink_flag_the_default_route_interface_serves_node_ports() {
    testbed::require_root!();
    let _slot = lock();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    cluster.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "services.yaml", &services_yaml());
    let mut agents: Vec<Agent<'_>> = cluster
        .nodes()
        .iter()
        .map(|node| {
            Agent::options()
                .arg("--node-name")
                .arg(node.name())
                .start_in(node.netns(), dir.path())
        })
        .collect();
    for agent in &mut agents {
        agent.wait_ready();
    }
    let mut verdicts = Verdicts::default();
    for (family, proto) in cases() {
        let dst = SocketAddr::new(cluster.node("node1").ip(family), NP_CLUSTER);
        verdicts.record(check_served(
            &cluster,
            dst,
            (family, proto),
            "node1",
            &echo_backends("node1", false),
            "np/cluster through node1, uplink from the default route",
        ));
    }
    verdicts.assert_all_passed();
}

/// The Services of this file are what the agent reads them as: `weir check` compiles them,
/// with their external addresses, policies and source ranges.
#[test]
fn the_services_manifest_passes_weir_check() {
    let dir = TempDir::new("manifests");
    manifests::write_atomic(dir.path(), "services.yaml", &services_yaml());
    let out = std::process::Command::new(testbed::weir_binary())
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("running weir check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir check: {report}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        services_yaml()
    );
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("service {NS}/{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name} in\n{report}"))
            .to_owned()
    };
    for (name, vip) in [
        ("lb-cluster", LB_CLUSTER),
        ("lb-local", LB_LOCAL),
        ("lb-ranged", LB_RANGED),
        ("ext-cluster", EXT_CLUSTER),
        ("ext-local", EXT_LOCAL),
    ] {
        let line = line(name);
        assert!(line.contains(vip.v4) && line.contains(vip.v6), "{line}");
    }
    for name in ["local", "lone", "lb-local", "ext-local", "guarded"] {
        assert!(
            line(name).contains("external traffic Local"),
            "{}",
            line(name)
        );
    }
    for name in ["cluster", "empty", "lb-cluster", "ext-cluster"] {
        assert!(
            !line(name).contains("external traffic Local"),
            "{}",
            line(name)
        );
    }
    let ranged = line("lb-ranged");
    assert!(
        ranged.contains("clients from 10.100.0.100/32 fd00:100::100/128"),
        "{ranged}"
    );
}
