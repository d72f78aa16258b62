//! The eBPF programs on crafted packets, through `BPF_PROG_TEST_RUN` on the real kernel.
//!
//! Each table row is a packet, the program it enters (towards the pod or from it), the
//! expected TC action and the expected reason (read back from the reason counters). Rows run
//! in order against one loaded dataplane, so a row may rely on the connections earlier rows
//! opened. The local pod sits behind ifindex 1: `BPF_PROG_TEST_RUN` runs on loopback.
//!
//! Flow events are read back from the ring buffer: one per drop and per new connection, with
//! the packet's fields, none for established packets, and never a different verdict.

use testbed::packet;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dataplane_abi::{
    Direction, DropReason, FLOW_UNKNOWN, FlowEvent, FlowVerdict, PEER_CLASS_WORLD, PassReason,
    flow_flags, programs, proto,
};
use packet::{ACK, FIN, Frag, L4, Packet, SYN};
use weir::compile::{self, MapSet, NodeView};
use weir::dataplane::{Dataplane, FlowEvents};
use weir::flows::ring::drain;
use weir::model::{
    DesiredState, LabelSelector, NamedPort, Namespace, NamespaceScope, Origin, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Rule,
};

use testbed::fixtures::{TC_ACT_OK, TC_ACT_SHOT, ip, labels};

fn pod(ns: &str, name: &str, ips: &[&str], ports: Vec<NamedPort>) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("pod", name)]),
        ips: ips.iter().map(|s| ip(s)).collect(),
        ports,
        origin: Origin::default(),
        ..Pod::default()
    }
}

fn pods_labelled(name: &str) -> Peer {
    Peer::Pods {
        namespaces: NamespaceScope::Own("x".into()),
        pods: LabelSelector {
            match_labels: labels(&[("pod", name)]),
            ..LabelSelector::default()
        },
    }
}

fn ports(protocol: Protocol, first: u16, last: u16) -> PortMatch {
    PortMatch {
        protocol,
        port: Some(PortSpec::Range { first, last }),
    }
}

/// Local pod `x/a` (`10.0.0.1`, `fd00::1`). Remote pods `x/b` (`10.0.0.2`, `fd00::2`) and `y/c`
/// (`10.0.1.3`, `fd00:1::3`). The node is `10.0.255.1` / `fd00:ff::1`.
fn state(allow_b_on_80: bool) -> DesiredState {
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y"] {
        namespaces.insert(
            ns.to_owned(),
            Namespace {
                name: ns.into(),
                labels: labels(&[("ns", ns)]),
            },
        );
    }
    let http = NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    };
    let mut from_b = vec![
        ports(Protocol::Udp, 53, 53),
        ports(Protocol::Sctp, 9000, 9000),
        PortMatch {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Named("http".into())),
        },
    ];
    if allow_b_on_80 {
        from_b.push(ports(Protocol::Tcp, 80, 80));
    }
    let ingress = vec![
        Rule {
            peers: vec![pods_labelled("b")],
            ports: from_b,
        },
        Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(LabelSelector {
                    match_labels: labels(&[("ns", "y")]),
                    ..LabelSelector::default()
                }),
                pods: LabelSelector::everything(),
            }],
            ports: vec![ports(Protocol::Tcp, 1000, 1010)],
        },
        Rule {
            peers: vec![Peer::IpBlock {
                cidr: "192.168.0.0/16".parse().expect("cidr"),
                except: vec!["192.168.1.0/24".parse().expect("cidr")],
            }],
            ports: vec![ports(Protocol::Tcp, 443, 443)],
        },
    ];
    let egress = vec![
        Rule {
            peers: vec![pods_labelled("b")],
            ports: vec![],
        },
        Rule {
            peers: vec![Peer::IpBlock {
                cidr: "172.16.0.0/12".parse().expect("cidr"),
                except: vec![],
            }],
            ports: vec![PortMatch {
                protocol: Protocol::Udp,
                port: None,
            }],
        },
    ];
    DesiredState {
        namespaces,
        pods: [
            pod("x", "a", &["10.0.0.1", "fd00::1"], vec![http]),
            pod("x", "b", &["10.0.0.2", "fd00::2"], vec![]),
            pod("y", "c", &["10.0.1.3", "fd00:1::3"], vec![]),
        ]
        .map(Arc::new)
        .into(),
        policies: vec![Arc::new(Policy {
            namespace: "x".into(),
            name: "a-policy".into(),
            pod_selector: LabelSelector {
                match_labels: labels(&[("pod", "a")]),
                ..LabelSelector::default()
            },
            ingress: Some(ingress),
            egress: Some(egress),
            origin: Origin::default(),
        })],
        ..DesiredState::default()
    }
}

fn node() -> NodeView {
    NodeView {
        host_addrs: BTreeSet::from([ip("10.0.255.1"), ip("fd00:ff::1")]),
        // BPF_PROG_TEST_RUN runs skbs on loopback: the local pod is "behind" ifindex 1.
        local_routes: BTreeMap::from([(ip("10.0.0.1"), 1), (ip("fd00::1"), 1)]),
        ..NodeView::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Pass(PassReason),
    Drop(DropReason),
}

#[derive(Clone, Copy)]
enum Way {
    /// `weir_to_pod`: delivered to the local pod.
    ToPod,
    /// `weir_from_pod`: sent by the local pod.
    FromPod,
}

struct Row {
    what: &'static str,
    way: Way,
    frame: Vec<u8>,
    expect: Expect,
}

fn row(what: &'static str, way: Way, pkt: &Packet, expect: Expect) -> Row {
    Row {
        what,
        way,
        frame: pkt.frame(),
        expect,
    }
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Packet {
    Packet::new(
        ip(src),
        ip(dst),
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
    )
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet::new(
        ip(src),
        ip(dst),
        L4::Udp {
            src: sport,
            dst: dport,
        },
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the rows in order; fails with every mismatch listed.
fn run(dp: &mut Dataplane, rows: &[Row]) {
    assert!(!rows.is_empty(), "a table with no rows tests nothing");
    let mut failures = Vec::new();
    for r in rows {
        let before = dp.counters().expect("reading counters");
        let program = match r.way {
            Way::ToPod => programs::TO_POD,
            Way::FromPod => programs::FROM_POD,
        };
        let (action, _) = dp
            .test_run(program, &r.frame, 1)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN: {e:?}", r.what));
        let after = dp.counters().expect("reading counters");
        let observed = changed_reason(&before, &after);
        let (want_action, want_reason) = match r.expect {
            Expect::Pass(p) => (TC_ACT_OK, p.name()),
            Expect::Drop(d) => (TC_ACT_SHOT, d.name()),
        };
        if action != want_action || observed.as_deref() != Some(want_reason) {
            failures.push(format!(
                "{}: expected action {want_action} ({want_reason}), got {action} ({observed:?})",
                r.what
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The one reason whose counter moved.
fn changed_reason(
    before: &weir::dataplane::Counters,
    after: &weir::dataplane::Counters,
) -> Option<String> {
    let moved = |b: &BTreeMap<&'static str, u64>, a: &BTreeMap<&'static str, u64>| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| (*k).to_owned())
            .collect::<Vec<_>>()
    };
    let mut all = moved(&before.passed, &after.passed);
    all.extend(moved(&before.dropped, &after.dropped));
    (all.len() == 1).then(|| all.remove(0))
}

fn loaded(allow_b_on_80: bool) -> Dataplane {
    let mut dp = Dataplane::load().expect("loading the eBPF object (verifier)");
    let maps = compile::compile(&state(allow_b_on_80), &node()).expect("compiling");
    dp.sync_maps(&maps).expect("writing maps");
    dp
}

use Expect::{Drop, Pass};
use Way::{FromPod, ToPod};

#[test]
fn ipv4_policy_table() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    run(&mut loaded(true), &ipv4_rows());
}

#[expect(
    clippy::too_many_lines,
    reason = "a table: one row per line reads best"
)]
fn ipv4_rows() -> Vec<Row> {
    let a = "10.0.0.1";
    let b = "10.0.0.2";
    let c = "10.0.1.3";
    let world = "198.51.100.7";
    let ok = Pass(PassReason::PolicyAllowed);
    let denied = Drop(DropReason::PolicyDenied);
    let est = Pass(PassReason::Established);
    let quoted = udp(a, 40000, "172.16.3.3", 53);
    vec![
        row(
            "b → a tcp/80 allowed",
            ToPod,
            &tcp(b, 40000, a, 80, SYN),
            ok,
        ),
        row(
            "b → a tcp/81 denied",
            ToPod,
            &tcp(b, 40001, a, 81, SYN),
            denied,
        ),
        row(
            "b → a tcp/8080 by named port http",
            ToPod,
            &tcp(b, 40002, a, 8080, SYN),
            ok,
        ),
        row("b → a udp/53 allowed", ToPod, &udp(b, 40003, a, 53), ok),
        row(
            "b → a udp/80 denied: tcp only",
            ToPod,
            &udp(b, 40004, a, 80),
            denied,
        ),
        row(
            "b → a sctp/9000 allowed",
            ToPod,
            &Packet::new(
                ip(b),
                ip(a),
                L4::Sctp {
                    src: 5000,
                    dst: 9000,
                },
            ),
            ok,
        ),
        row(
            "c (ns y) → a tcp/1005 in endPort range",
            ToPod,
            &tcp(c, 40005, a, 1005, SYN),
            ok,
        ),
        row(
            "c (ns y) → a tcp/1011 past endPort",
            ToPod,
            &tcp(c, 40006, a, 1011, SYN),
            denied,
        ),
        row(
            "c (ns y) → a tcp/80 not for ns y",
            ToPod,
            &tcp(c, 40007, a, 80, SYN),
            denied,
        ),
        row(
            "ipBlock 192.168.5.5 → a tcp/443",
            ToPod,
            &tcp("192.168.5.5", 40008, a, 443, SYN),
            ok,
        ),
        row(
            "ipBlock except 192.168.1.5 → a tcp/443",
            ToPod,
            &tcp("192.168.1.5", 40009, a, 443, SYN),
            denied,
        ),
        row(
            "a → 192.168.5.5 reply of an allowed connection, though egress denies it",
            FromPod,
            &tcp(a, 443, "192.168.5.5", 40008, SYN | ACK),
            est,
        ),
        row(
            "a → world tcp denied (egress isolated)",
            FromPod,
            &tcp(a, 40010, world, 80, SYN),
            denied,
        ),
        row(
            "a → 172.16.3.3 udp allowed by ipBlock",
            FromPod,
            &quoted,
            ok,
        ),
        row(
            "icmp unreachable about that udp flow passes",
            ToPod,
            &Packet::new(
                ip("172.16.3.3"),
                ip(a),
                L4::Unreachable {
                    quoted: Box::new(quoted.clone()),
                },
            ),
            est,
        ),
        row(
            "icmp unreachable about an unknown flow is judged as icmp",
            ToPod,
            &Packet::new(
                ip(world),
                ip(a),
                L4::Unreachable {
                    quoted: Box::new(udp(a, 41000, world, 53)),
                },
            ),
            denied,
        ),
        row(
            "a → b ping allowed (egress to b, any port)",
            FromPod,
            &Packet::new(
                ip(a),
                ip(b),
                L4::Echo {
                    id: 7,
                    reply: false,
                },
            ),
            ok,
        ),
        row(
            "b → a echo reply passes",
            ToPod,
            &Packet::new(ip(b), ip(a), L4::Echo { id: 7, reply: true }),
            est,
        ),
        row(
            "b → a ping denied (ingress rules all have ports)",
            ToPod,
            &Packet::new(
                ip(b),
                ip(a),
                L4::Echo {
                    id: 8,
                    reply: false,
                },
            ),
            denied,
        ),
        row(
            "node → a tcp/22 always allowed",
            ToPod,
            &tcp("10.0.255.1", 40011, a, 22, SYN),
            Pass(PassReason::NodeTraffic),
        ),
        row(
            "a → node always allowed",
            FromPod,
            &tcp(a, 40012, "10.0.255.1", 10250, SYN),
            Pass(PassReason::NodeTraffic),
        ),
        row(
            "spoofed source from the pod's interface",
            FromPod,
            &tcp(b, 40013, c, 80, SYN),
            Drop(DropReason::NotPodAddress),
        ),
        row(
            "b → a tcp/80 with IP options",
            ToPod,
            &tcp(b, 40014, a, 80, SYN).with_options(),
            ok,
        ),
        row(
            "b → a tcp/81 with IP options",
            ToPod,
            &tcp(b, 40015, a, 81, SYN).with_options(),
            denied,
        ),
        row(
            "first fragment b → a udp/53",
            ToPod,
            &udp(b, 40016, a, 53).fragment(Frag::First { id: 77 }),
            ok,
        ),
        row(
            "later fragment of an allowed datagram",
            ToPod,
            &Packet::new(ip(b), ip(a), L4::None { proto: 17 })
                .fragment(Frag::Later { id: 77, offset: 2 }),
            est,
        ),
        row(
            "first fragment b → a udp/80 denied",
            ToPod,
            &udp(b, 40017, a, 80).fragment(Frag::First { id: 78 }),
            denied,
        ),
        row(
            "later fragment of a denied datagram",
            ToPod,
            &Packet::new(ip(b), ip(a), L4::None { proto: 17 })
                .fragment(Frag::Later { id: 78, offset: 2 }),
            Drop(DropReason::FragmentUnknown),
        ),
        row(
            "b → a tcp/80 FIN closes",
            ToPod,
            &tcp(b, 40000, a, 80, FIN | ACK),
            est,
        ),
    ]
}

#[test]
fn ipv6_policy_table() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    run(&mut loaded(true), &ipv6_rows());
}

#[expect(
    clippy::too_many_lines,
    reason = "a table: one row per line reads best"
)]
fn ipv6_rows() -> Vec<Row> {
    let a = "fd00::1";
    let b = "fd00::2";
    let c = "fd00:1::3";
    let ok = Pass(PassReason::PolicyAllowed);
    let denied = Drop(DropReason::PolicyDenied);
    let est = Pass(PassReason::Established);
    vec![
        row(
            "b → a tcp/80 allowed",
            ToPod,
            &tcp(b, 40000, a, 80, SYN),
            ok,
        ),
        row(
            "b → a tcp/81 denied",
            ToPod,
            &tcp(b, 40001, a, 81, SYN),
            denied,
        ),
        row(
            "a → b reply",
            FromPod,
            &tcp(a, 80, b, 40000, SYN | ACK),
            est,
        ),
        row(
            "c → a tcp/1000 endPort start",
            ToPod,
            &tcp(c, 40002, a, 1000, SYN),
            ok,
        ),
        row(
            "c → a tcp/999 below range",
            ToPod,
            &tcp(c, 40003, a, 999, SYN),
            denied,
        ),
        row(
            "b → a tcp/80 with extension headers",
            ToPod,
            &tcp(b, 40004, a, 80, SYN).with_options(),
            ok,
        ),
        row(
            "b → a tcp/81 with extension headers",
            ToPod,
            &tcp(b, 40005, a, 81, SYN).with_options(),
            denied,
        ),
        row(
            "first fragment udp/53",
            ToPod,
            &udp(b, 40006, a, 53).fragment(Frag::First { id: 9 }),
            ok,
        ),
        row(
            "later fragment follows",
            ToPod,
            &Packet::new(ip(b), ip(a), L4::None { proto: 17 })
                .fragment(Frag::Later { id: 9, offset: 4 }),
            est,
        ),
        row(
            "later fragment never seen",
            ToPod,
            &Packet::new(ip(b), ip(a), L4::None { proto: 17 })
                .fragment(Frag::Later { id: 10, offset: 4 }),
            Drop(DropReason::FragmentUnknown),
        ),
        row(
            "neighbour solicitation (link-local) passes",
            FromPod,
            &Packet::new(
                ip("fe80::2"),
                ip("ff02::1:ff00:1"),
                L4::Echo {
                    id: 0,
                    reply: false,
                },
            ),
            Pass(PassReason::LinkLocal),
        ),
        row(
            "node → a",
            ToPod,
            &tcp("fd00:ff::1", 40007, a, 22, SYN),
            Pass(PassReason::NodeTraffic),
        ),
        row(
            "a → world denied",
            FromPod,
            &tcp(a, 40008, "2001:db8::9", 443, SYN),
            denied,
        ),
        row(
            "icmpv6 unreachable about a tracked flow",
            FromPod,
            &Packet::new(
                ip(a),
                ip(b),
                L4::Unreachable {
                    quoted: Box::new(tcp(b, 40000, a, 80, ACK)),
                },
            ),
            est,
        ),
    ]
}

#[test]
fn malformed_and_non_ip() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let mut dp = loaded(true);
    let full = tcp("10.0.0.2", 40000, "10.0.0.1", 80, SYN).frame();
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44; // IHL 4: shorter than the fixed header.
    let rows = vec![
        Row {
            what: "ARP is never blocked",
            way: ToPod,
            frame: packet::arp_frame(),
            expect: Pass(PassReason::NonIp),
        },
        Row {
            what: "TCP header cut short",
            way: ToPod,
            frame: full[..14 + 20 + 10].to_vec(),
            expect: Drop(DropReason::Malformed),
        },
        Row {
            what: "IPv4 header length below 20 bytes",
            way: ToPod,
            frame: bad_ihl,
            expect: Drop(DropReason::Malformed),
        },
        Row {
            // The kernel refuses to test-run an IPv6 frame shorter than the fixed header.
            what: "IPv6 TCP header cut short",
            way: ToPod,
            frame: tcp("fd00::2", 1, "fd00::1", 80, SYN).frame()[..14 + 40 + 10].to_vec(),
            expect: Drop(DropReason::Malformed),
        },
    ];
    run(&mut dp, &rows);
}

#[test]
fn policy_change_revokes_established_connections() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let mut dp = loaded(true);
    let conn = tcp("10.0.0.2", 45000, "10.0.0.1", 80, SYN);
    let still_allowed = udp("10.0.0.2", 45001, "10.0.0.1", 53);
    run(
        &mut dp,
        &[
            row("open tcp/80", ToPod, &conn, Pass(PassReason::PolicyAllowed)),
            row(
                "open udp/53",
                ToPod,
                &still_allowed,
                Pass(PassReason::PolicyAllowed),
            ),
        ],
    );
    let narrower = compile::compile(&state(false), &node()).expect("compiling");
    dp.sync_maps(&narrower).expect("writing maps");
    run(
        &mut dp,
        &[
            row(
                "tcp/80 no longer allowed: cut",
                ToPod,
                &tcp("10.0.0.2", 45000, "10.0.0.1", 80, ACK),
                Drop(DropReason::PolicyRevoked),
            ),
            row(
                "reply direction of udp/53 still allowed",
                FromPod,
                &udp("10.0.0.1", 53, "10.0.0.2", 45001),
                Pass(PassReason::Established),
            ),
        ],
    );
}

/// The verdicts of both tables are the same whatever the flow events do: off, every one
/// written, or nearly all held back by the limiter (1 per second, no burst).
#[test]
fn verdicts_do_not_depend_on_flow_events() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let one = std::num::NonZeroU32::MIN;
    for events in [
        FlowEvents::Off,
        FlowEvents::Unlimited,
        FlowEvents::Limited {
            per_sec: one,
            burst: one,
        },
    ] {
        let mut dp = loaded(true);
        // Taken and never read: the unlimited run fills part of the ring and nobody minds.
        let _ring = dp.take_flow_ring().expect("the flow ring");
        dp.set_flow_events(events).expect("configuring flow events");
        run(&mut dp, &ipv4_rows());
        run(&mut dp, &ipv6_rows());
    }
}

/// A row of the flow-event table: a packet, its verdict, and the event it must produce (with
/// `time_ns` left out of the comparison), or none.
struct EventRow {
    row: Row,
    event: Option<FlowEvent>,
}

/// The event of a packet from `src` to `dst` that `expect` describes, seen by the program of
/// `way` on the test's interface (ifindex 1).
fn expected_event(pkt: &Packet, way: Way, expect: Expect) -> FlowEvent {
    let (src_port_h, dst_port_h, tcp_flags) = match pkt.l4 {
        L4::Tcp { src, dst, flags } => (src, dst, flags),
        L4::Udp { src, dst } | L4::Sctp { src, dst } => (src, dst, 0),
        _ => (0, 0, 0),
    };
    let (verdict, reason) = match expect {
        Pass(r) => (FlowVerdict::Passed, r as u32),
        Drop(r) => (FlowVerdict::Dropped, r as u32),
    };
    FlowEvent {
        time_ns: 0,
        src: compile::to_addr(pkt.src),
        dst: compile::to_addr(pkt.dst),
        src_port_h,
        dst_port_h,
        proto: match pkt.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Sctp { .. } => proto::SCTP,
            _ => 0,
        },
        direction: match way {
            ToPod => Direction::Ingress as u8,
            FromPod => Direction::Egress as u8,
        },
        verdict: verdict as u8,
        flags: flow_flags::HEADERS,
        reason,
        ifindex: 1,
        peer_class: FLOW_UNKNOWN,
        policy: FLOW_UNKNOWN,
        rule: FLOW_UNKNOWN,
        tcp_flags,
        _pad: [0; 3],
        service: FLOW_UNKNOWN,
        _pad2: 0,
    }
}

fn class_of(maps: &MapSet, addr: &str) -> u32 {
    maps.endpoints[&compile::to_addr(ip(addr))].peer_class
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table: one row per packet reads best"
)]
fn flow_events_report_drops_and_new_connections_only() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let maps = compile::compile(&state(true), &node()).expect("compiling");
    let mut dp = Dataplane::load().expect("loading the eBPF object (verifier)");
    dp.sync_maps(&maps).expect("writing maps");
    let mut ring = dp.take_flow_ring().expect("the flow ring");

    // Off (as loaded): a drop writes nothing.
    run(
        &mut dp,
        &[row(
            "denied while events are off",
            ToPod,
            &tcp("10.0.0.2", 39999, "10.0.0.1", 81, SYN),
            Drop(DropReason::PolicyDenied),
        )],
    );
    assert_eq!(
        drain(&mut ring),
        [],
        "events are off until the agent turns them on"
    );

    dp.set_flow_events(FlowEvents::Unlimited)
        .expect("turning flow events on");
    let (a, b) = ("10.0.0.1", "10.0.0.2");
    let b_class = class_of(&maps, b);
    let event_row = |what, way, pkt: Packet, expect, event: Option<FlowEvent>| EventRow {
        row: row(what, way, &pkt, expect),
        event,
    };
    let denied = tcp(b, 40001, a, 81, SYN);
    let allowed = tcp(b, 40000, a, 80, SYN);
    let egress_allowed = udp(a, 40002, b, 5353);
    let to_world = tcp(a, 40003, "198.51.100.7", 80, SYN);
    let spoofed = tcp(b, 40004, "10.0.1.3", 80, SYN);
    let rows = vec![
        event_row(
            "denied SYN: dropped, no policy, the peer's class",
            ToPod,
            denied.clone(),
            Drop(DropReason::PolicyDenied),
            Some(FlowEvent {
                peer_class: b_class,
                ..expected_event(&denied, ToPod, Drop(DropReason::PolicyDenied))
            }),
        ),
        event_row(
            "allowed SYN: the policy and rule of the entry",
            ToPod,
            allowed.clone(),
            Pass(PassReason::PolicyAllowed),
            Some(FlowEvent {
                peer_class: b_class,
                policy: 0,
                rule: 0,
                ..expected_event(&allowed, ToPod, Pass(PassReason::PolicyAllowed))
            }),
        ),
        event_row(
            "established ACK of that connection: no event",
            ToPod,
            tcp(b, 40000, a, 80, ACK),
            Pass(PassReason::Established),
            None,
        ),
        event_row(
            "reply from the pod: no event",
            FromPod,
            tcp(a, 80, b, 40000, SYN | ACK),
            Pass(PassReason::Established),
            None,
        ),
        event_row(
            "new egress UDP: egress rule 0 (to b, any port)",
            FromPod,
            egress_allowed.clone(),
            Pass(PassReason::PolicyAllowed),
            Some(FlowEvent {
                peer_class: b_class,
                policy: 0,
                rule: 0,
                ..expected_event(&egress_allowed, FromPod, Pass(PassReason::PolicyAllowed))
            }),
        ),
        event_row(
            "egress to the world: dropped, the world's class",
            FromPod,
            to_world.clone(),
            Drop(DropReason::PolicyDenied),
            Some(FlowEvent {
                peer_class: PEER_CLASS_WORLD,
                ..expected_event(&to_world, FromPod, Drop(DropReason::PolicyDenied))
            }),
        ),
        event_row(
            "node traffic: always allowed, no event",
            ToPod,
            tcp("10.0.255.1", 40005, a, 22, SYN),
            Pass(PassReason::NodeTraffic),
            None,
        ),
        event_row(
            "spoofed source: dropped before the peer is classified",
            FromPod,
            spoofed.clone(),
            Drop(DropReason::NotPodAddress),
            Some(expected_event(
                &spoofed,
                FromPod,
                Drop(DropReason::NotPodAddress),
            )),
        ),
        EventRow {
            row: Row {
                what: "truncated TCP header: dropped, headers not reported",
                way: ToPod,
                frame: tcp(b, 40006, a, 80, SYN).frame()[..14 + 20 + 10].to_vec(),
                expect: Drop(DropReason::Malformed),
            },
            event: Some(FlowEvent {
                time_ns: 0,
                direction: Direction::Ingress as u8,
                verdict: FlowVerdict::Dropped as u8,
                reason: DropReason::Malformed as u32,
                ifindex: 1,
                peer_class: FLOW_UNKNOWN,
                policy: FLOW_UNKNOWN,
                rule: FLOW_UNKNOWN,
                service: FLOW_UNKNOWN,
                ..FlowEvent::default()
            }),
        },
    ];
    let mut failures = Vec::new();
    for r in &rows {
        run(&mut dp, std::slice::from_ref(&r.row));
        let mut events = drain(&mut ring);
        for e in &mut events {
            assert_ne!(e.time_ns, 0, "{}: events carry the time", r.row.what);
            e.time_ns = 0;
        }
        let want: Vec<FlowEvent> = r.event.into_iter().collect();
        if events != want {
            failures.push(format!(
                "{}:
  got  {events:?}
  want {want:?}",
                r.row.what
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    let counters = dp.flow_event_counters().expect("flow-event counters");
    let sent = rows.iter().filter(|r| r.event.is_some()).count() as u64;
    assert_eq!(counters["emitted"], sent);
    assert_eq!(counters["rate_limited"] + counters["ring_full"], 0);
}

/// A flood of denied SYNs in one test run (10 000 packets, on one CPU, within milliseconds)
/// gets the burst and what the elapsed time earned, no more; every other event is counted as
/// held back, and every packet is still dropped.
#[test]
fn the_rate_limiter_caps_a_flood() {
    const FLOOD: u32 = 10_000;
    const PER_SEC: u32 = 1000;
    const BURST: u32 = 100;
    if !is_root() {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let mut dp = loaded(true);
    let mut ring = dp.take_flow_ring().expect("the flow ring");
    dp.set_flow_events(FlowEvents::Limited {
        per_sec: PER_SEC.try_into().expect("non-zero"),
        burst: BURST.try_into().expect("non-zero"),
    })
    .expect("configuring flow events");
    let frame = tcp("10.0.0.2", 40001, "10.0.0.1", 81, SYN).frame();
    let before = dp.counters().expect("counters");
    let started = std::time::Instant::now();
    let (action, _) = dp
        .test_run(programs::TO_POD, &frame, FLOOD)
        .expect("BPF_PROG_TEST_RUN");
    // An upper bound on the credit the bucket could earn meanwhile: a slow or preempted
    // machine only widens it, so this never fails for timing reasons.
    let earned = started.elapsed().as_secs_f64() * f64::from(PER_SEC);
    let after = dp.counters().expect("counters");
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(
        after.dropped["policy_denied"] - before.dropped["policy_denied"],
        u64::from(FLOOD),
        "the limiter never changes a verdict"
    );
    let events = drain(&mut ring);
    let counters = dp.flow_event_counters().expect("flow-event counters");
    let emitted = counters["emitted"];
    assert_eq!(
        events.len() as u64,
        emitted,
        "every emitted event is in the ring"
    );
    assert_eq!(emitted + counters["rate_limited"], u64::from(FLOOD));
    assert!(
        emitted >= u64::from(BURST),
        "the burst goes through: {emitted} events"
    );
    #[expect(clippy::cast_precision_loss, reason = "a count of at most 10 000")]
    let excess = emitted as f64 - f64::from(BURST);
    assert!(
        excess <= earned.ceil() + 1.0,
        "{emitted} events of {FLOOD} got through, the burst of {BURST} and at most {earned:.1} earned"
    );
    assert!(
        events
            .iter()
            .all(|e| e.reason == DropReason::PolicyDenied as u32)
    );
}

/// Collects the programs' debug log records.
#[derive(Clone, Default)]
struct Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("log lock")
            .push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn debug_logs_are_off_until_enabled_then_name_each_outcome() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut dp = loaded(true);
    let records = Collect::default();
    let syn = tcp("10.0.0.2", 40100, "10.0.0.1", 81, SYN).frame();
    dp.test_run(programs::TO_POD, &syn, 1).expect("test run");
    let mut log = dp
        .enable_debug_log(records.clone())
        .expect("opening the debug log");
    log.flush();
    assert!(
        records.0.lock().expect("log lock").is_empty(),
        "no records before enabling"
    );
    dp.test_run(programs::TO_POD, &syn, 1).expect("test run");
    log.flush();
    let got = records.0.lock().expect("log lock").clone();
    let denied = DropReason::PolicyDenied as u32;
    assert_eq!(got.len(), 1, "one record per packet: {got:?}");
    assert!(
        got[0].contains("passed 0") && got[0].contains(&format!("reason {denied}")),
        "the record names the drop and its reason: {got:?}"
    );
}
