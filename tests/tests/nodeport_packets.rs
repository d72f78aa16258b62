//! Services from outside the node, on crafted packets through `BPF_PROG_TEST_RUN`: the uplink
//! program (`weir_from_world`) translating a client's packets to node ports and load-balancer
//! IPs, then the backend's side: a local backend's pod programs judging the connection and
//! turning its replies around, a remote backend's replies coming back to the uplink from the
//! masquerade address. Checksums are verified on every frame a program leaves.
//!
//! The node has `10.0.255.1` and `fd00:ff::1` (its node-port and masquerade addresses); the local
//! pod `x/l` sits behind ifindex 1 (`BPF_PROG_TEST_RUN` runs on loopback), `x/r` is a pod of
//! another node. Clients are outside the cluster.
//!
//! Packets that leave with the node's own address as source go out by a route lookup and a
//! redirect (`forward.rs`): `BPF_PROG_TEST_RUN` looks routes up in the namespace of the thread
//! that runs it, so every test runs in a namespace of its own, with forwarding on, a route to
//! the other node's pods through a neighbour whose MAC address is known (a lookup that gives
//! the next hop's addresses) and a route to the clients through one that is not (a lookup that
//! leaves the neighbour to the kernel).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use dataplane_abi::{DropReason, PassReason, masquerade_ports, programs};
use ipnetwork::IpNetwork;
use testbed::fixtures::{TC_ACT_OK, TC_ACT_SHOT, ip, labels};
use testbed::packet::{ACK, IcmpError, L4, Packet, SYN, icmp_frame, read_icmp_error};
use testbed::testrun::{Ran, TC_ACT_REDIRECT, run, run_frame, tcp, udp};
use testbed::{Netns, RunTag};
use weir::compile::{self, NodeView};
use weir::dataplane::Dataplane;
use weir::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, LabelSelector, Namespace, Origin, Peer,
    Pod, Policy, PortMatch, Protocol, Rule, Service, ServiceKind, ServicePort, TargetPort,
};

/// Addresses of one family.
#[derive(Clone, Copy)]
struct Family {
    node: &'static str,
    local: &'static str,
    remote: &'static str,
    /// A client inside the load balancer's source ranges (and the policy's ipBlock).
    client: &'static str,
    /// Those ranges.
    clients: &'static str,
    /// A client outside them.
    stranger: &'static str,
    lb: &'static str,
}

const V4: Family = Family {
    node: "10.0.255.1",
    local: "10.0.0.2",
    remote: "10.0.1.3",
    client: "198.51.100.7",
    clients: "198.51.100.0/24",
    stranger: "203.0.113.9",
    lb: "192.0.2.10",
};

const V6: Family = Family {
    node: "fd00:ff::1",
    local: "fd00::2",
    remote: "fd00:1::3",
    client: "2001:db8:100::7",
    clients: "2001:db8:100::/48",
    stranger: "2001:db8:200::9",
    lb: "2001:db8:2::10",
};

const CLUSTER_PORT: u16 = 30_080;
const LOCAL_PORT: u16 = 30_081;
const EMPTY_PORT: u16 = 30_082;
/// `externalTrafficPolicy: Local`, with its one endpoint on another node.
const ELSEWHERE_PORT: u16 = 30_083;
const TARGET: u16 = 8080;

const EXTERNAL: &str = PassReason::ExternalService.name();
const ESTABLISHED: &str = PassReason::Established.name();
const NOT_ISOLATED: &str = PassReason::NotIsolated.name();

fn range(cidr: &str) -> IpNetwork {
    cidr.parse().expect("a CIDR")
}

fn pod(name: &str, ips: [&str; 2]) -> Pod {
    Pod {
        namespace: "x".into(),
        name: name.into(),
        labels: labels(&[("pod", name)]),
        ips: ips.iter().map(|s| ip(s)).collect(),
        ..Pod::default()
    }
}

/// A `NodePort` Service (TCP 80 → 8080, UDP 53 → 5353 on node port `node_port` for both).
fn service(name: &str, node_port: u16, local: bool) -> Service {
    let port = |name: &str, protocol, port| ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port: TargetPort::Named(name.into()),
        node_port: Some(node_port),
    };
    Service {
        namespace: "x".into(),
        name: name.into(),
        kind: ServiceKind::NodePort,
        cluster_ips: vec![],
        ports: vec![
            port("http", Protocol::Tcp, 80),
            port("dns", Protocol::Udp, 53),
        ],
        external_traffic_local: local,
        ..Service::default()
    }
}

fn slice(service: &str, family: &str, backends: &[&str]) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        namespace: "x".into(),
        name: format!("{service}-{family}"),
        service: service.into(),
        ports: vec![
            EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: TARGET,
            },
            EndpointPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 5353,
            },
        ],
        endpoints: backends
            .iter()
            .map(|a| Endpoint {
                addresses: vec![ip(a)],
                ready: true,
                serving: true,
                ..Endpoint::default()
            })
            .collect(),
        legacy: false,
        origin: Origin::default(),
    })
}

/// Services of both families (cluster IPs give a Service its families): `cluster` (Cluster
/// policy, both backends), `local` (Local policy, both backends), `empty` (no endpoint),
/// `elsewhere` (Local policy, only the remote backend), and `lb`, a `LoadBalancer` on the
/// `cluster` backends with source ranges.
fn state() -> DesiredState {
    let with_ips = |mut s: Service, v4: &str, v6: &str| {
        s.cluster_ips = vec![ip(v4), ip(v6)];
        s
    };
    let mut lb = with_ips(service("lb", 30_090, false), "10.96.0.14", "fd00:96::14");
    lb.kind = ServiceKind::LoadBalancer;
    lb.load_balancer_ips = vec![ip(V4.lb), ip(V6.lb)];
    lb.load_balancer_source_ranges = vec![range(V4.clients), range(V6.clients)];
    let both = [V4.local, V4.remote];
    let both6 = [V6.local, V6.remote];
    let mut endpoint_slices = Vec::new();
    for (name, v4, v6) in [
        ("cluster", &both[..], &both6[..]),
        ("local", &both[..], &both6[..]),
        ("lb", &both[..], &both6[..]),
        ("empty", &[][..], &[][..]),
        ("elsewhere", &[V4.remote][..], &[V6.remote][..]),
    ] {
        endpoint_slices.push(slice(name, "v4", v4));
        endpoint_slices.push(slice(name, "v6", v6));
    }
    DesiredState {
        namespaces: BTreeMap::from([(
            "x".to_owned(),
            Namespace {
                name: "x".into(),
                labels: BTreeMap::new(),
            },
        )]),
        pods: [
            pod("l", [V4.local, V6.local]),
            pod("r", [V4.remote, V6.remote]),
        ]
        .map(Arc::new)
        .into(),
        services: [
            with_ips(
                service("cluster", CLUSTER_PORT, false),
                "10.96.0.10",
                "fd00:96::10",
            ),
            with_ips(
                service("local", LOCAL_PORT, true),
                "10.96.0.11",
                "fd00:96::11",
            ),
            with_ips(
                service("empty", EMPTY_PORT, false),
                "10.96.0.12",
                "fd00:96::12",
            ),
            with_ips(
                service("elsewhere", ELSEWHERE_PORT, true),
                "10.96.0.13",
                "fd00:96::13",
            ),
            lb,
        ]
        .map(Arc::new)
        .into(),
        endpoint_slices,
        ..DesiredState::default()
    }
}

fn node() -> NodeView {
    NodeView {
        host_addrs: BTreeSet::from([ip(V4.node), ip(V6.node)]),
        local_routes: BTreeMap::from([(ip(V4.local), 1), (ip(V6.local), 1)]),
        ..NodeView::default()
    }
}

/// The MAC address of the next hop towards the other node's pods.
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Runs `test` in a namespace of its own whose routes send the other node's pods through a
/// known neighbour and the clients through an unresolved one.
fn in_bed(test: impl FnOnce() + Send) {
    let bed = Netns::new(&RunTag::random(), "nodeport");
    bed.sysctl("net/ipv4/ip_forward", "1");
    bed.sysctl("net/ipv6/conf/all/forwarding", "1");
    bed.ip_batch(
        "link set lo up\n\
         link add up0 type veth peer name up1\n\
         link set up0 up\n\
         link set up1 up\n\
         addr add 10.0.2.1/24 dev up0\n\
         addr add fd00:2::1/64 dev up0 nodad\n\
         neigh add 10.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent\n\
         neigh add fd00:2::2 lladdr 02:00:00:00:00:02 dev up0 nud permanent\n\
         route add 10.0.1.0/24 via 10.0.2.2\n\
         route add fd00:1::/64 via fd00:2::2\n\
         route add 198.51.100.0/24 via 10.0.2.3\n\
         route add 203.0.113.0/24 via 10.0.2.3\n\
         route add 2001:db8::/32 via fd00:2::3\n",
    );
    bed.run(test);
}

fn loaded(state: &DesiredState) -> Dataplane {
    let mut dp = Dataplane::load().expect("loading the eBPF object (verifier)");
    let maps = compile::compile(state, &node()).expect("compiling");
    dp.sync_maps(&maps).expect("writing maps");
    dp.set_masquerade(
        Some(V4.node.parse::<Ipv4Addr>().expect("v4")),
        Some(V6.node.parse::<Ipv6Addr>().expect("v6")),
    )
    .expect("masquerade addresses");
    dp
}

/// The action of a client's translated packet at the uplink: masqueraded (from the node's
/// address), it leaves by a route lookup; to a local backend, it goes to the node's stack.
fn action_for(ran: &Ran, f: Family) -> i32 {
    if ran.tuple().src == ip(f.node) {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_OK
    }
}

/// Opens a TCP connection from `client`:`sport` to `frontend`:`port` through the uplink: the
/// SYN as it left the uplink program.
fn syn(dp: &mut Dataplane, client: &str, sport: u16, frontend: &str, port: u16) -> Ran {
    run(
        dp,
        programs::FROM_WORLD,
        &tcp(client, sport, frontend, port, SYN),
    )
}

/// Client source ports whose connections to `frontend`:`port` go to `backend`, found by
/// trying (the choice is the Maglev table's).
fn ports_to(
    dp: &mut Dataplane,
    client: &str,
    frontend: &str,
    port: u16,
    backend: &str,
) -> Vec<u16> {
    (41_000..41_064)
        .filter(|sport| syn(dp, client, *sport, frontend, port).tuple().dst == ip(backend))
        .collect()
}

/// `externalTrafficPolicy: Cluster`: a local backend gets the client's own address and answers
/// through its pod's interface; a remote one gets this node's masquerade address at a port of
/// the masquerade range, and answers back to the uplink. Both answers reach the client from the
/// node port.
fn cluster_policy(f: Family) {
    let mut dp = loaded(&state());
    let local = ports_to(&mut dp, f.client, f.node, CLUSTER_PORT, f.local);
    let remote = ports_to(&mut dp, f.client, f.node, CLUSTER_PORT, f.remote);
    assert!(
        !local.is_empty() && !remote.is_empty() && local.len() + remote.len() == 64,
        "connections spread over both backends: {} local, {} remote",
        local.len(),
        remote.len()
    );

    let first = syn(&mut dp, f.client, local[0], f.node, CLUSTER_PORT);
    first.expect(
        TC_ACT_OK,
        ESTABLISHED,
        "a SYN again: its connection is known",
    );
    let t = first.tuple();
    assert_eq!(
        (t.src, t.src_port, t.dst, t.dst_port),
        (ip(f.client), local[0], ip(f.local), TARGET),
        "to the local backend, the client's address kept"
    );
    let judged = run_frame(&mut dp, programs::TO_POD, &first.out);
    judged.expect(
        TC_ACT_OK,
        NOT_ISOLATED,
        "the local pod judges the connection",
    );
    let reply = run(
        &mut dp,
        programs::FROM_POD,
        &tcp(f.local, TARGET, f.client, local[0], SYN | ACK),
    );
    reply.expect(
        TC_ACT_REDIRECT,
        ESTABLISHED,
        "the local backend's reply, from the node's address: by a route lookup",
    );
    let r = reply.tuple();
    assert_eq!(
        (r.src, r.src_port, r.dst, r.dst_port),
        (ip(f.node), CLUSTER_PORT, ip(f.client), local[0]),
        "the client hears from the node port"
    );

    let out = syn(&mut dp, f.client, remote[0], f.node, CLUSTER_PORT);
    out.expect(
        TC_ACT_REDIRECT,
        ESTABLISHED,
        "masqueraded: out by a route lookup",
    );
    assert_eq!(
        out.out[..6],
        NEXT_HOP_MAC,
        "sent to the next hop the routes give for the other node's pods"
    );
    let t = out.tuple();
    assert_eq!(
        (t.src, t.dst, t.dst_port),
        (ip(f.node), ip(f.remote), TARGET),
        "to the remote backend, from the masquerade address"
    );
    let masquerade =
        masquerade_ports::FIRST..=masquerade_ports::FIRST + (masquerade_ports::COUNT - 1);
    assert!(
        masquerade.contains(&t.src_port),
        "masquerade port {} in the range",
        t.src_port
    );
    let back = run(
        &mut dp,
        programs::FROM_WORLD,
        &tcp(f.remote, TARGET, f.node, t.src_port, SYN | ACK),
    );
    back.expect(TC_ACT_REDIRECT, ESTABLISHED, "the remote backend's reply");
    let b = back.tuple();
    assert_eq!(
        (b.src, b.src_port, b.dst, b.dst_port),
        (ip(f.node), CLUSTER_PORT, ip(f.client), remote[0]),
        "the remote backend's reply goes back to the client, from the node port"
    );
    let ack = run(
        &mut dp,
        programs::FROM_WORLD,
        &tcp(f.client, remote[0], f.node, CLUSTER_PORT, ACK),
    );
    ack.expect(TC_ACT_REDIRECT, ESTABLISHED, "the client's next packet");
    assert_eq!(
        ack.tuple(),
        t,
        "every packet of the connection takes the same translation"
    );
}

#[test]
fn ipv4_cluster_policy() {
    testbed::require_root!();
    in_bed(|| {
        cluster_policy(V4);
    });
}

#[test]
fn ipv6_cluster_policy() {
    testbed::require_root!();
    in_bed(|| {
        cluster_policy(V6);
    });
}

/// `externalTrafficPolicy: Local`: only the local backend, with the client's address; a node
/// without a local endpoint drops the connection (no answer, unlike a Service without any).
fn local_policy(f: Family) {
    let mut dp = loaded(&state());
    for sport in 42_000..42_016 {
        let out = syn(&mut dp, f.client, sport, f.node, LOCAL_PORT);
        out.expect(TC_ACT_OK, EXTERNAL, "a new connection to a Local node port");
        let t = out.tuple();
        assert_eq!(
            (t.src, t.src_port, t.dst),
            (ip(f.client), sport, ip(f.local)),
            "only the local backend, the client's address kept"
        );
    }
    syn(&mut dp, f.client, 42_100, f.node, ELSEWHERE_PORT).expect(
        TC_ACT_SHOT,
        DropReason::NoLocalEndpoints.name(),
        "Local, and the only endpoint is on another node",
    );
    let refused = syn(&mut dp, f.client, 42_101, f.node, EMPTY_PORT);
    refused.expect(
        TC_ACT_REDIRECT,
        DropReason::NoEndpoints.name(),
        "no endpoint at all: answered",
    );
    let answer = refused.tuple();
    assert_eq!(
        (answer.src, answer.src_port, answer.dst, answer.dst_port),
        (ip(f.node), EMPTY_PORT, ip(f.client), 42_101),
        "the reset goes back to the client from the node port"
    );
}

#[test]
fn ipv4_local_policy() {
    testbed::require_root!();
    in_bed(|| {
        local_policy(V4);
    });
}

#[test]
fn ipv6_local_policy() {
    testbed::require_root!();
    in_bed(|| {
        local_policy(V6);
    });
}

/// A load-balancer IP with `loadBalancerSourceRanges`: a client inside them gets through, one
/// outside is dropped.
fn source_ranges(f: Family) {
    let mut dp = loaded(&state());
    let inside = syn(&mut dp, f.client, 43_000, f.lb, 80);
    inside.expect(
        action_for(&inside, f),
        EXTERNAL,
        "a client inside the source ranges",
    );
    syn(&mut dp, f.stranger, 43_000, f.lb, 80).expect(
        TC_ACT_SHOT,
        DropReason::SourceRange.name(),
        "a client outside them",
    );
}

#[test]
fn ipv4_source_ranges() {
    testbed::require_root!();
    in_bed(|| {
        source_ranges(V4);
    });
}

#[test]
fn ipv6_source_ranges() {
    testbed::require_root!();
    in_bed(|| {
        source_ranges(V6);
    });
}

/// UDP to a node port: translated both ways, as TCP.
#[test]
fn udp_through_a_node_port() {
    testbed::require_root!();
    in_bed(|| {
        for f in [V4, V6] {
            let mut dp = loaded(&state());
            let out = run(
                &mut dp,
                programs::FROM_WORLD,
                &udp(f.client, 5000, f.node, LOCAL_PORT),
            );
            out.expect(TC_ACT_OK, EXTERNAL, "UDP to a Local node port");
            let t = out.tuple();
            assert_eq!((t.dst, t.dst_port), (ip(f.local), 5353), "UDP translated");
            run_frame(&mut dp, programs::TO_POD, &out.out).expect(
                TC_ACT_OK,
                NOT_ISOLATED,
                "the pod takes the datagram",
            );
            let answer = run(
                &mut dp,
                programs::FROM_POD,
                &udp(f.local, 5353, f.client, 5000),
            );
            answer.expect(TC_ACT_REDIRECT, ESTABLISHED, "the answer");
            let a = answer.tuple();
            assert_eq!(
                (a.src, a.src_port, a.dst, a.dst_port),
                (ip(f.node), LOCAL_PORT, ip(f.client), 5000),
                "the answer comes from the node port"
            );
        }
    });
}

/// Policy is judged at the backend, on the client's own address (kept by `Local`): an ipBlock
/// lets one client in and not another, both translated alike by the uplink.
#[test]
fn policy_judges_external_clients_at_the_backend() {
    testbed::require_root!();
    in_bed(|| {
        for f in [V4, V6] {
            let mut state = state();
            state.policies.push(Arc::new(Policy {
                namespace: "x".into(),
                name: "clients-only".into(),
                pod_selector: LabelSelector {
                    match_labels: labels(&[("pod", "l")]),
                    ..LabelSelector::default()
                },
                ingress: Some(vec![Rule {
                    peers: vec![Peer::IpBlock {
                        cidr: range(f.clients),
                        except: vec![],
                    }],
                    ports: vec![PortMatch {
                        protocol: Protocol::Tcp,
                        port: None,
                    }],
                }]),
                egress: None,
                origin: Origin::default(),
            }));
            let mut dp = loaded(&state);
            let allowed = syn(&mut dp, f.client, 44_000, f.node, LOCAL_PORT);
            allowed.expect(TC_ACT_OK, EXTERNAL, "translated");
            run_frame(&mut dp, programs::TO_POD, &allowed.out).expect(
                TC_ACT_OK,
                PassReason::PolicyAllowed.name(),
                "a client the ipBlock allows",
            );
            let denied = syn(&mut dp, f.stranger, 44_000, f.node, LOCAL_PORT);
            denied.expect(TC_ACT_OK, EXTERNAL, "translated alike");
            run_frame(&mut dp, programs::TO_POD, &denied.out).expect(
                TC_ACT_SHOT,
                DropReason::PolicyDenied.name(),
                "a client it does not",
            );
        }
    });
}

/// What is not for a Service passes the uplink untouched and uncounted: the node's own
/// traffic, pods' traffic between nodes, a port of the node that is no node port.
#[test]
fn other_traffic_on_the_uplink_is_left_alone() {
    testbed::require_root!();
    in_bed(|| {
        let mut dp = loaded(&state());
        for f in [V4, V6] {
            for pkt in [
                tcp(f.client, 45_000, f.node, 22, SYN),
                tcp(f.remote, 45_000, f.local, TARGET, SYN),
                tcp(f.client, 45_000, f.node, masquerade_ports::FIRST, ACK),
                udp(f.stranger, 45_000, f.local, 5353),
            ] {
                let frame = pkt.frame();
                let ran = run_frame(&mut dp, programs::FROM_WORLD, &frame);
                assert_eq!(
                    (ran.action, ran.reason.as_str(), &ran.out),
                    (TC_ACT_OK, "", &frame),
                    "{pkt:?}: passed untouched, no counter"
                );
            }
        }
    });
}

/// ICMP errors about connections from outside: a masqueraded backend's port unreachable
/// reaches the client as about its datagram to the node port; the client's error about a
/// reply from the node port (path MTU discovery's fragmentation-needed travels this way)
/// reaches the backend as about its own datagram, for a local and a masqueraded one.
#[test]
fn icmp_errors_about_connections_from_outside_are_translated() {
    testbed::require_root!();
    in_bed(|| {
        for f in [V4, V6] {
            let mut dp = loaded(&state());
            let datagram = |dp: &mut Dataplane, sport| {
                let out = run(
                    dp,
                    programs::FROM_WORLD,
                    &udp(f.client, sport, f.node, CLUSTER_PORT),
                );
                out.expect(action_for(&out, f), EXTERNAL, "UDP to a Cluster node port");
                out.tuple()
            };
            let (mut masqueraded, mut direct) = (None, None);
            for sport in 46_000..46_064 {
                let t = datagram(&mut dp, sport);
                if t.dst == ip(f.remote) {
                    masqueraded.get_or_insert((sport, t));
                } else {
                    direct.get_or_insert((sport, t));
                }
            }
            let (sport, sent) = masqueraded.expect("a datagram went to the remote backend");
            let error = Packet::new(
                ip(f.remote),
                ip(f.node),
                L4::Unreachable {
                    quoted: Box::new(udp(&sent.src.to_string(), sent.src_port, f.remote, 5353)),
                },
            );
            let ran = run_frame(&mut dp, programs::FROM_WORLD, &icmp_frame(&error));
            ran.expect(
                TC_ACT_REDIRECT,
                ESTABLISHED,
                "the remote backend's port unreachable",
            );
            assert_eq!(
                read_icmp_error(&ran.out),
                IcmpError {
                    src: ip(f.node),
                    dst: ip(f.client),
                    quoted_src: (ip(f.client), sport),
                    quoted_dst: (ip(f.node), CLUSTER_PORT),
                },
                "{}: to the client, about its datagram to the node port",
                f.client
            );

            let about_reply = |sport| {
                icmp_frame(&Packet::new(
                    ip(f.client),
                    ip(f.node),
                    L4::Unreachable {
                        quoted: Box::new(udp(f.node, CLUSTER_PORT, f.client, sport)),
                    },
                ))
            };
            let ran = run_frame(&mut dp, programs::FROM_WORLD, &about_reply(sport));
            ran.expect(
                TC_ACT_REDIRECT,
                ESTABLISHED,
                "the client's error, masqueraded",
            );
            assert_eq!(
                read_icmp_error(&ran.out),
                IcmpError {
                    src: ip(f.node),
                    dst: ip(f.remote),
                    quoted_src: (ip(f.remote), 5353),
                    quoted_dst: (ip(f.node), sent.src_port),
                },
                "{}: to the remote backend, about its datagram to the masquerade address",
                f.client
            );

            let (sport, _) = direct.expect("a datagram went to the local backend");
            let ran = run_frame(&mut dp, programs::FROM_WORLD, &about_reply(sport));
            ran.expect(TC_ACT_OK, ESTABLISHED, "the client's error, local backend");
            assert_eq!(
                read_icmp_error(&ran.out),
                IcmpError {
                    src: ip(f.client),
                    dst: ip(f.local),
                    quoted_src: (ip(f.local), 5353),
                    quoted_dst: (ip(f.client), sport),
                },
                "{}: to the local backend, about its datagram to the client",
                f.client
            );
        }
    });
}

/// A client's source port reused for another frontend with the same local backend (a client
/// kernel reuses ports across destinations; UDP flows stay tracked for a minute): the new
/// connection's replies come from its own frontend, not the earlier one's. Found by
/// `e2e_nodeport` (one UDP request of 48 unanswered, now and then).
#[test]
fn a_source_port_reused_for_another_frontend_gets_its_own_replies() {
    testbed::require_root!();
    in_bed(|| {
        for f in [V4, V6] {
            let mut dp = loaded(&state());
            let to = |dp: &mut Dataplane, sport, port| {
                run(
                    dp,
                    programs::FROM_WORLD,
                    &udp(f.client, sport, f.node, port),
                )
            };
            let sport = (47_000..47_064)
                .find(|sport| to(&mut dp, *sport, CLUSTER_PORT).tuple().dst == ip(f.local))
                .expect("a client port whose Cluster flow goes to the local backend");
            let first = to(&mut dp, sport, CLUSTER_PORT);
            run_frame(&mut dp, programs::TO_POD, &first.out).expect(
                TC_ACT_OK,
                NOT_ISOLATED,
                "the first flow, judged at the pod",
            );
            let second = to(&mut dp, sport, LOCAL_PORT);
            second.expect(TC_ACT_OK, EXTERNAL, "the same port, another node port");
            assert_eq!(second.tuple().dst, ip(f.local), "the same backend");
            run_frame(&mut dp, programs::TO_POD, &second.out).expect(
                TC_ACT_OK,
                NOT_ISOLATED,
                "judged as the new flow it is",
            );
            let answer = run(
                &mut dp,
                programs::FROM_POD,
                &udp(f.local, 5353, f.client, sport),
            );
            answer.expect(TC_ACT_REDIRECT, ESTABLISHED, "the backend's answer");
            let a = answer.tuple();
            assert_eq!(
                (a.src, a.src_port),
                (ip(f.node), LOCAL_PORT),
                "{}: the answer comes from the node port the client asked, not the earlier one",
                f.client
            );
        }
    });
}
