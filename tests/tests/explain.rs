//! `explain` against the kernel: for every pair of a reachability matrix, the verdict and
//! reason `weir::explain::judge` finds in the live maps are those `BPF_PROG_TEST_RUN` gets
//! from the programs, for the sender's egress and for the receiver's ingress.
//!
//! The programs check that a local pod's packets cross its own interface, so every local pod
//! gets an interface of its own: a veth end in a namespace the test makes, whose index the
//! test runs pass as the skb's `ifindex` (the test runs happen on a thread inside that
//! namespace). Every packet uses a fresh source port, so each one opens a new connection and
//! is judged by policy, never by connection tracking.

use testbed::packet;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_abi::{Direction, DropReason, PassReason, programs, proto};
use packet::{L4, Packet, SYN};
use testbed::{Netns, RunTag};
use weir::compile::{self, NodeView};
use weir::dataplane::{Counters, Dataplane};
use weir::explain::{self, Query};
use weir::model::{
    DesiredState, LabelSelector, NamedPort, Namespace, NamespaceScope, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Rule,
};

use testbed::fixtures::{TC_ACT_OK, TC_ACT_SHOT, ip, labels};

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        ..LabelSelector::default()
    }
}

fn pods_of_own_ns(ns: &str, pairs: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespaces: NamespaceScope::Own(ns.into()),
        pods: selector(pairs),
    }
}

fn port(protocol: Protocol, first: u16, last: u16) -> PortMatch {
    PortMatch {
        protocol,
        port: Some(PortSpec::Range { first, last }),
    }
}

fn policy(ns: &str, name: &str, app: &str) -> Policy {
    Policy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: selector(&[("app", app)]),
        ..Policy::default()
    }
}

/// Pods (name, namespace, app label, IPv4, IPv6, local): x/web, x/db, x/cli and y/mon on this
/// node, y/ext elsewhere.
const PODS: [(&str, &str, &str, &str, &str, bool); 5] = [
    ("x", "web", "web", "10.1.0.1", "fd01::1", true),
    ("x", "db", "db", "10.1.0.2", "fd01::2", true),
    ("x", "cli", "cli", "10.1.0.3", "fd01::3", true),
    ("y", "mon", "mon", "10.1.1.1", "fd01:1::1", true),
    ("y", "ext", "ext", "10.1.1.2", "fd01:1::2", false),
];

/// Addresses that are not pods: the node, inside and outside an ipBlock and its `except`,
/// link-local.
const OTHERS: [&str; 10] = [
    "10.1.255.1",
    "fd01:ff::1",
    "192.168.7.7",
    "192.168.1.9",
    "198.51.100.1",
    "fd99::5",
    "fd99:0:0:1::5",
    "2001:db8::1",
    "169.254.9.9",
    "fe80::9",
];

/// The namespaces x and y, the pods of [`PODS`], the [`policies`].
fn state() -> DesiredState {
    let namespaces = ["x", "y"]
        .into_iter()
        .map(|ns| {
            (
                ns.to_owned(),
                Namespace {
                    name: ns.into(),
                    labels: labels(&[("ns", ns)]),
                },
            )
        })
        .collect();
    let pods: Vec<Pod> = PODS
        .iter()
        .map(|(ns, name, app, v4, v6, _)| Pod {
            namespace: (*ns).into(),
            name: (*name).into(),
            labels: labels(&[("app", app)]),
            ips: vec![ip(v4), ip(v6)],
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            ..Pod::default()
        })
        .collect();
    DesiredState {
        namespaces,
        pods: pods.into_iter().map(Arc::new).collect(),
        policies: policies().into_iter().map(Arc::new).collect(),
        ..DesiredState::default()
    }
}

/// The policies, each exercising one kind of rule:
/// - `web-in`: web takes TCP 80 from cli, the named port `http` from pods of namespace y,
///   UDP 53 from anyone, TCP 443 from 192.168.0.0/16 except 192.168.1.0/24 (and
///   `fd99::/32` except `fd99:0:0:1::/64`);
/// - `db-in` and `db-out`: db takes TCP 5432-5440 from web only, and may only reach
///   y/mon on any port and protocol;
/// - `cli-out`: cli may reach web on its named port `http` and anything on UDP;
/// - `mon-deny`: mon denies all ingress.
fn policies() -> Vec<Policy> {
    let http = PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortSpec::Named("http".into())),
    };
    let block = |cidr: &str, except: &str| Peer::IpBlock {
        cidr: cidr.parse().expect("cidr"),
        except: vec![except.parse().expect("cidr")],
    };
    let web_in = Policy {
        ingress: Some(vec![
            Rule {
                peers: vec![pods_of_own_ns("x", &[("app", "cli")])],
                ports: vec![port(Protocol::Tcp, 80, 80)],
            },
            Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::Selected(selector(&[("ns", "y")])),
                    pods: LabelSelector::everything(),
                }],
                ports: vec![http.clone()],
            },
            Rule {
                peers: vec![],
                ports: vec![port(Protocol::Udp, 53, 53)],
            },
            Rule {
                peers: vec![
                    block("192.168.0.0/16", "192.168.1.0/24"),
                    block("fd99::/32", "fd99:0:0:1::/64"),
                ],
                ports: vec![port(Protocol::Tcp, 443, 443)],
            },
        ]),
        ..policy("x", "web-in", "web")
    };
    let db_in = Policy {
        ingress: Some(vec![Rule {
            peers: vec![pods_of_own_ns("x", &[("app", "web")])],
            ports: vec![port(Protocol::Tcp, 5432, 5440)],
        }]),
        ..policy("x", "db-in", "db")
    };
    let db_out = Policy {
        egress: Some(vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(selector(&[("ns", "y")])),
                pods: selector(&[("app", "mon")]),
            }],
            ports: vec![],
        }]),
        ..policy("x", "db-out", "db")
    };
    let cli_out = Policy {
        egress: Some(vec![
            Rule {
                peers: vec![pods_of_own_ns("x", &[("app", "web")])],
                ports: vec![http],
            },
            Rule {
                peers: vec![],
                ports: vec![PortMatch {
                    protocol: Protocol::Udp,
                    port: None,
                }],
            },
        ]),
        ..policy("x", "cli-out", "cli")
    };
    let mon_deny = Policy {
        ingress: Some(vec![]),
        ..policy("y", "mon-deny", "mon")
    };
    vec![web_in, db_in, db_out, cli_out, mon_deny]
}

/// The traffic tried between every pair: (protocol, destination port).
const CASES: [(u8, u16); 9] = [
    (proto::TCP, 80),
    (proto::TCP, 443),
    (proto::TCP, 5432),
    (proto::TCP, 5441),
    (proto::TCP, 8080),
    (proto::UDP, 53),
    (proto::UDP, 5000),
    (proto::SCTP, 80),
    (proto::ICMP, 0),
];

/// The namespace of the test's interfaces: one veth end per local pod.
struct Interfaces {
    netns: Netns,
    by_pod: BTreeMap<&'static str, u32>,
}

fn interfaces() -> Interfaces {
    let netns = Netns::new(&RunTag::random(), "explain");
    let mut by_pod = BTreeMap::new();
    for (i, (_, name, ..)) in PODS.iter().enumerate().filter(|(_, p)| p.5) {
        let (host, peer) = (format!("h{i}"), format!("p{i}"));
        netns.ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        netns.ip(&["link", "set", &host, "up"]);
        let name_c = std::ffi::CString::new(host).expect("interface name");
        // SAFETY: a NUL-terminated name; the thread is inside the namespace.
        let ifindex = netns.run(|| unsafe { libc::if_nametoindex(name_c.as_ptr()) });
        assert_ne!(ifindex, 0, "no index for the veth of {name}");
        by_pod.insert(*name, ifindex);
    }
    Interfaces { netns, by_pod }
}

fn node(ifs: &Interfaces) -> NodeView {
    let mut local_routes = BTreeMap::new();
    for (_, name, _, v4, v6, local) in PODS {
        if local {
            local_routes.insert(ip(v4), ifs.by_pod[name]);
            local_routes.insert(ip(v6), ifs.by_pod[name]);
        }
    }
    NodeView {
        host_addrs: BTreeSet::from([ip(OTHERS[0]), ip(OTHERS[1])]),
        local_routes,
        ..NodeView::default()
    }
}

/// Every address of the matrix, with the interface of its pod when the pod is local.
fn addresses(ifs: &Interfaces) -> Vec<(IpAddr, Option<u32>)> {
    let mut out = Vec::new();
    for (_, name, _, v4, v6, local) in PODS {
        let ifindex = local.then(|| ifs.by_pod[name]);
        out.push((ip(v4), ifindex));
        out.push((ip(v6), ifindex));
    }
    out.extend(OTHERS.iter().map(|a| (ip(a), None)));
    out
}

/// The first packet of a connection of `q`, from source port (or echo identifier) `sport`.
fn frame(q: &Query, sport: u16) -> Vec<u8> {
    let l4 = match q.proto {
        proto::TCP => L4::Tcp {
            src: sport,
            dst: q.port,
            flags: SYN,
        },
        proto::UDP => L4::Udp {
            src: sport,
            dst: q.port,
        },
        proto::SCTP => L4::Sctp {
            src: sport,
            dst: q.port,
        },
        _ => L4::Echo {
            id: sport,
            reply: false,
        },
    };
    Packet::new(q.src, q.dst, l4).frame()
}

type Outcome = Result<PassReason, DropReason>;

/// The outcome the kernel gave: the TC action and the one reason counter that moved.
fn kernel_outcome(before: &Counters, after: &Counters, action: i32) -> Option<Outcome> {
    let moved = |b: &BTreeMap<&'static str, u64>, a: &BTreeMap<&'static str, u64>| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
    };
    let pass = moved(&before.passed, &after.passed);
    let drop = moved(&before.dropped, &after.dropped);
    match (action, pass.as_slice(), drop.as_slice()) {
        (TC_ACT_OK, [name], []) => PassReason::ALL
            .into_iter()
            .find(|r| r.name() == *name)
            .map(Ok),
        (TC_ACT_SHOT, [], [name]) => DropReason::ALL
            .into_iter()
            .find(|r| r.name() == *name)
            .map(Err),
        _ => None,
    }
}

/// Compares explain and the kernel on every pair, both directions; returns the number of
/// judgements compared and the disagreements.
fn compare_all(
    dp: &mut Dataplane,
    ifs: &Interfaces,
) -> (usize, Vec<String>, BTreeMap<String, usize>) {
    let reader = dp.reader().expect("map handles");
    let addrs = addresses(ifs);
    let mut sport: u16 = 10_000;
    let mut compared = 0;
    let mut failures = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for &(src, src_if) in &addrs {
        for &(dst, dst_if) in &addrs {
            // A pod reaching its own address is a case of its own (`self_traffic`).
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for (l4, port) in CASES {
                let l4 = if l4 == proto::ICMP && src.is_ipv6() {
                    proto::ICMPV6
                } else {
                    l4
                };
                let q = Query {
                    src,
                    dst,
                    proto: l4,
                    port,
                };
                for (dir, ifindex, program) in [
                    (Direction::Egress, src_if, programs::FROM_POD),
                    (Direction::Ingress, dst_if, programs::TO_POD),
                ] {
                    let enforced = explain::Enforced::now(&reader).expect("reading the epoch");
                    let judged = explain::judge(&enforced, &q, dir).expect("reading the maps");
                    let Some(ifindex) = ifindex else {
                        if judged.is_some() {
                            failures.push(format!("{q:?} {dir:?}: judged, but not a local pod"));
                        }
                        continue;
                    };
                    sport = sport.checked_add(1).expect("enough source ports");
                    let before = dp.counters().expect("counters");
                    let (action, _) = dp
                        .test_run_on(program, &frame(&q, sport), 1, ifindex)
                        .expect("BPF_PROG_TEST_RUN");
                    let after = dp.counters().expect("counters");
                    let kernel = kernel_outcome(&before, &after, action);
                    let explained = judged.map(|j| j.outcome);
                    compared += 1;
                    if let Some(outcome) = kernel {
                        let name = outcome.map_or_else(DropReason::name, PassReason::name);
                        *seen.entry(name.to_owned()).or_default() += 1;
                    }
                    if kernel.is_none() || kernel != explained {
                        failures.push(format!(
                            "{q:?} {dir:?}: kernel {kernel:?} (action {action}), explain {explained:?}"
                        ));
                    }
                }
            }
        }
    }
    (compared, failures, seen)
}

#[test]
fn explain_agrees_with_the_kernel_on_every_pair() {
    testbed::require_root!();
    let ifs = interfaces();
    let state = state();
    let maps = compile::compile(&state, &node(&ifs)).expect("compiling");
    let (compared, failures, seen) = ifs.netns.run(|| {
        let mut dp = Dataplane::load().expect("loading the eBPF object (verifier)");
        dp.sync_maps(&maps).expect("writing maps");
        compare_all(&mut dp, &ifs)
    });
    eprintln!("{compared} judgements compared; outcomes: {seen:?}");
    assert!(
        failures.is_empty(),
        "{} of {compared} judgements differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The matrix must exercise every way policy decides, or agreeing proves little.
    for reason in [
        "policy_allowed",
        "policy_denied",
        "not_isolated",
        "node_traffic",
        "self_traffic",
        "link_local",
    ] {
        assert!(
            seen.contains_key(reason),
            "no judgement ended {reason}: {seen:?}"
        );
    }
}
