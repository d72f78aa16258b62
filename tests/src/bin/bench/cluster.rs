//! A synthetic cluster with the shape of a real one, for the benchmark.
//!
//! - 10 000 pods in 100 namespaces, 100 pods each; 10 apps per namespace (1 000 apps in all),
//!   10 replicas per app sharing their labels (`app`, `tier`), as a Deployment's pods do.
//! - Namespaces carry `kubernetes.io/metadata.name`, `team` (10 teams) and `env` labels.
//! - This node hosts 100 of the pods (one per namespace), as a node near the Kubernetes
//!   default of 110 pods would; the measured pod sits behind ifindex 1, because
//!   `BPF_PROG_TEST_RUN` runs skbs on loopback. The others get made-up ifindexes: compiling and
//!   writing maps never needs their interfaces.
//! - Every policy selects one app and has exactly [`RULES_PER_POLICY`] rules (a rule counted as
//!   peers × ports, as the benchmark counts them): same-namespace app peers, a team-wide
//!   namespace selector, a whole other namespace, an ipBlock with an `except`, and egress to a
//!   neighbour app and to the internet. Policy `i` selects app `i mod 1 000`, so policy 0, which
//!   the measured packets exercise, exists in every configuration, and with 100 000 rules every
//!   app (the measured pod's included) is selected by 10 policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use weir::compile::NodeView;
use weir::model::{
    DesiredState, LabelSelector, Labels, Namespace, NamespaceScope, Origin, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Rule,
};

pub const NAMESPACES: usize = 100;
pub const PODS_PER_NAMESPACE: usize = 100;
pub const APPS_PER_NAMESPACE: usize = 10;
pub const APPS: usize = NAMESPACES * APPS_PER_NAMESPACE;
pub const PODS: usize = NAMESPACES * PODS_PER_NAMESPACE;
/// Pods on this node: one per namespace.
pub const LOCAL_PODS: usize = NAMESPACES;
/// Rules (peers × ports) of every generated policy.
pub const RULES_PER_POLICY: usize = 10;
/// Distinct /24 blocks ipBlock peers draw from: all of 172.16.0.0/12.
const IPBLOCK_POOL: usize = 4096;

/// TCP port policy 0 opens to the neighbour app (the pod peer of the measured packets).
pub const POD_PEER_PORT: u16 = 8080;
/// TCP port policy 0 opens to its ipBlock (the ipBlock peer of the measured packets).
pub const IPBLOCK_PEER_PORT: u16 = 443;
/// A TCP port no generated rule names: the denied packets go there.
pub const DENIED_PORT: u16 = 7;

/// The interface of the measured pod: loopback, where `BPF_PROG_TEST_RUN` runs skbs.
pub const MEASURED_IFINDEX: u32 = 1;

/// The addresses the measured packets use.
pub struct Endpoints {
    /// The measured pod: `ns-00`, app `app-0000`, behind [`MEASURED_IFINDEX`].
    pub local: IpAddr,
    /// A replica of `app-0001` in the same namespace: policy 0 allows it on [`POD_PEER_PORT`].
    pub pod_peer: IpAddr,
    /// An address in policy 0's ipBlock (172.16.0.0/24 except 172.16.0.0/28), allowed on
    /// [`IPBLOCK_PEER_PORT`].
    pub ipblock_peer: IpAddr,
    /// The node's own address.
    pub host: IpAddr,
    /// An address that belongs to nothing in the cluster.
    pub unknown: IpAddr,
}

/// The endpoints of the measured packets (the same in every configuration).
pub fn endpoints() -> Endpoints {
    Endpoints {
        local: pod_ip(0, 0),
        pod_peer: pod_ip(0, PODS_PER_NAMESPACE / APPS_PER_NAMESPACE),
        ipblock_peer: IpAddr::V4(Ipv4Addr::new(172, 16, 0, 100)),
        host: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
        unknown: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
    }
}

/// A generated cluster and the node the benchmark pretends to be.
pub struct Cluster {
    pub state: DesiredState,
    pub node: NodeView,
}

/// The cluster with `rules` `NetworkPolicy` rules in all (a multiple of [`RULES_PER_POLICY`]).
pub fn generate(rules: usize) -> Cluster {
    assert!(
        rules > 0 && rules.is_multiple_of(RULES_PER_POLICY),
        "rule counts are whole policies of {RULES_PER_POLICY} rules"
    );
    let state = DesiredState {
        namespaces: (0..NAMESPACES).map(namespace).collect(),
        pods: (0..NAMESPACES)
            .flat_map(|ns| (0..PODS_PER_NAMESPACE).map(move |p| Arc::new(pod(ns, p))))
            .collect(),
        policies: (0..rules / RULES_PER_POLICY)
            .map(|i| Arc::new(policy(i)))
            .collect(),
        ..DesiredState::default()
    };
    Cluster {
        state,
        node: node(),
    }
}

/// Rules of a state, counted as the benchmark defines them: for each rule, peers × ports (an
/// empty list counting as one).
pub fn count_rules(state: &DesiredState) -> usize {
    state
        .policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()).flatten())
        .map(|r| r.peers.len().max(1) * r.ports.len().max(1))
        .sum()
}

fn labels<const N: usize>(pairs: [(&str, String); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn ns_name(ns: usize) -> String {
    format!("ns-{ns:02}")
}

fn app_name(app: usize) -> String {
    format!("app-{app:04}")
}

fn tier(app: usize) -> String {
    ["web", "api", "db"][app % APPS_PER_NAMESPACE % 3].to_owned()
}

fn namespace(ns: usize) -> (String, Namespace) {
    let name = ns_name(ns);
    let ns_labels = labels([
        ("kubernetes.io/metadata.name", name.clone()),
        ("team", format!("team-{}", ns % 10)),
        ("env", ["prod", "staging", "dev"][ns % 3].to_owned()),
    ]);
    (
        name.clone(),
        Namespace {
            name,
            labels: ns_labels,
        },
    )
}

/// Pod `p` of namespace `ns` has address 10.64.`ns`.`p + 1`.
fn pod_ip(ns: usize, p: usize) -> IpAddr {
    let octet = |n: usize| u8::try_from(n).expect("the cluster fits a /16");
    IpAddr::V4(Ipv4Addr::new(10, 64, octet(ns), octet(p + 1)))
}

fn app_of(ns: usize, p: usize) -> usize {
    ns * APPS_PER_NAMESPACE + p / (PODS_PER_NAMESPACE / APPS_PER_NAMESPACE)
}

fn pod(ns: usize, p: usize) -> Pod {
    let app = app_of(ns, p);
    Pod {
        namespace: ns_name(ns),
        name: format!("{}-{}", app_name(app), p % 10),
        labels: labels([("app", app_name(app)), ("tier", tier(app))]),
        ips: vec![pod_ip(ns, p)],
        ports: Vec::new(),
        origin: Origin::default(),
        ..Pod::default()
    }
}

/// The node: the measured pod behind loopback, one more pod of every other namespace behind a
/// made-up interface.
fn node() -> NodeView {
    let mut local_routes = BTreeMap::from([(endpoints().local, MEASURED_IFINDEX)]);
    for ns in 1..LOCAL_PODS {
        let ifindex = 1000 + u32::try_from(ns).expect("small");
        local_routes.insert(pod_ip(ns, ns * 37 % PODS_PER_NAMESPACE), ifindex);
    }
    NodeView {
        host_addrs: BTreeSet::from([endpoints().host]),
        local_routes,
        ..NodeView::default()
    }
}

fn select_app(app: usize) -> LabelSelector {
    LabelSelector {
        match_labels: labels([("app", app_name(app))]),
        ..LabelSelector::default()
    }
}

fn select_one(key: &str, value: String) -> LabelSelector {
    LabelSelector {
        match_labels: labels([(key, value)]),
        ..LabelSelector::default()
    }
}

fn tcp(first: u16, last: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortSpec::Range { first, last }),
    }
}

fn udp(port: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Udp,
        port: Some(PortSpec::Range {
            first: port,
            last: port,
        }),
    }
}

/// An ipBlock peer from CIDRs in text form.
fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock {
        cidr: cidr.parse().expect("generated CIDR"),
        except: except
            .iter()
            .map(|e| e.parse().expect("generated CIDR"))
            .collect(),
    }
}

/// The `k`-th /24 of 172.16.0.0/12, except its first /28.
fn ip_block(k: usize) -> Peer {
    let (b, c) = (16 + k / 256, k % 256);
    block(
        &format!("172.{b}.{c}.0/24"),
        &[&format!("172.{b}.{c}.0/28")],
    )
}

/// Policy `i`: selects app `i mod 1 000` in that app's namespace; exactly ten rules.
fn policy(i: usize) -> Policy {
    let app = i % APPS;
    let ns = app / APPS_PER_NAMESPACE;
    let sibling = |offset: usize| ns * APPS_PER_NAMESPACE + (app + offset) % APPS_PER_NAMESPACE;
    let own_app = |a: usize| Peer::Pods {
        namespaces: NamespaceScope::Own(ns_name(ns)),
        pods: select_app(a),
    };
    let generation = i / APPS;
    let extra_port = 8000 + u16::try_from(i * 7 % 100).expect("small");
    let ingress = vec![
        // 2 peers × 2 ports. For policy 0 the first peer is app-0001 on 8080: the pod peer.
        Rule {
            peers: vec![
                own_app(sibling(1)),
                Peer::Pods {
                    namespaces: NamespaceScope::Selected(select_one(
                        "team",
                        format!("team-{}", (ns + generation) % 10),
                    )),
                    pods: select_one("tier", "web".to_owned()),
                },
            ],
            ports: vec![
                tcp(POD_PEER_PORT, POD_PEER_PORT),
                tcp(extra_port, extra_port),
            ],
        },
        // 1 peer × 2 ports (one a 4-port range). For policy 0: 172.16.0.0/24 on 443.
        Rule {
            peers: vec![ip_block(i % IPBLOCK_POOL)],
            ports: vec![tcp(IPBLOCK_PEER_PORT, IPBLOCK_PEER_PORT), tcp(9000, 9003)],
        },
        // 1 peer × 1 port: every pod of another namespace.
        Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(select_one(
                    "kubernetes.io/metadata.name",
                    ns_name((ns + 1 + generation) % NAMESPACES),
                )),
                pods: LabelSelector::everything(),
            }],
            ports: vec![[tcp(6379, 6379), tcp(5432, 5432), tcp(27017, 27017)][i % 3].clone()],
        },
    ];
    let egress = vec![
        // 1 peer × 2 ports: a database and DNS-like UDP.
        Rule {
            peers: vec![own_app(sibling(2))],
            ports: vec![tcp(5432, 5432), udp(53)],
        },
        // 1 peer × 1 port: HTTPS to the internet, not to private ranges.
        Rule {
            peers: vec![block(
                "0.0.0.0/0",
                &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
            )],
            ports: vec![tcp(443, 443)],
        },
    ];
    Policy {
        namespace: ns_name(ns),
        name: format!("policy-{i:05}"),
        pod_selector: select_app(app),
        ingress: Some(ingress),
        egress: Some(egress),
        origin: Origin::default(),
    }
}
