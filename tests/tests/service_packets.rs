//! The Service path on crafted packets, through `BPF_PROG_TEST_RUN` on the real kernel: a
//! client's packet to a `ClusterIP` leaves translated to a backend, the backend's reply comes
//! back as from the `ClusterIP`, checksums right after every rewrite, in both families, for
//! TCP, UDP and SCTP. Also the backend choice (spread, stickiness, affinity), backend removal
//! (TCP stays, UDP moves), the answer to a Service without endpoints, policy judged on the
//! translated packet, `internalTrafficPolicy: Local` and `loadBalancerSourceRanges`.
//!
//! The local pod `x/a` sits behind ifindex 1 (`BPF_PROG_TEST_RUN` runs on loopback); its
//! backends `x/b` and `x/c` are remote pods, and so is `x/d` as far as routes go, though its
//! endpoints say it runs on this node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_abi::{DropReason, PassReason, programs};
use testbed::fixtures::{TC_ACT_OK, TC_ACT_SHOT, ip, labels};
use testbed::packet::{ACK, IcmpError, L4, Packet, SYN, icmp_frame, read_icmp_error};
use testbed::testrun::{TC_ACT_REDIRECT, run, run_frame, tcp, udp};
use weir::compile::{self, NodeView};
use weir::dataplane::Dataplane;
use weir::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, LabelSelector, Namespace, NamespaceScope,
    Origin, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule, Service, ServiceKind,
    ServicePort, TargetPort,
};

/// Addresses of one family.
#[derive(Clone, Copy)]
struct Family {
    client: &'static str,
    b: &'static str,
    c: &'static str,
    web: &'static str,
    empty: &'static str,
    sticky: &'static str,
    /// A Service whose one endpoint is the client itself.
    own: &'static str,
    /// Pod `x/d`, on this node by its endpoints' `nodeName` (no local route here).
    d: &'static str,
    /// `x/near` (`internalTrafficPolicy: Local`) and `x/far` (the same endpoints, `Cluster`).
    near: &'static str,
    far: &'static str,
    /// Cluster and load-balancer IPs of `x/lb-in`, whose source ranges hold the client, and of
    /// `x/lb-out`, whose ranges do not.
    lb_in: [&'static str; 2],
    lb_out: [&'static str; 2],
}

const V4: Family = Family {
    client: "10.0.0.1",
    b: "10.0.0.2",
    c: "10.0.1.3",
    web: "10.96.0.10",
    empty: "10.96.0.11",
    sticky: "10.96.0.12",
    own: "10.96.0.13",
    d: "10.0.0.4",
    near: "10.96.0.14",
    far: "10.96.0.15",
    lb_in: ["10.96.0.16", "10.97.0.16"],
    lb_out: ["10.96.0.17", "10.97.0.17"],
};

const V6: Family = Family {
    client: "fd00::1",
    b: "fd00::2",
    c: "fd00:1::3",
    web: "fd00:96::10",
    empty: "fd00:96::11",
    sticky: "fd00:96::12",
    own: "fd00:96::13",
    d: "fd00::4",
    near: "fd00:96::14",
    far: "fd00:96::15",
    lb_in: ["fd00:96::16", "fd00:97::16"],
    lb_out: ["fd00:96::17", "fd00:97::17"],
};

fn pod(name: &str, app: &str, ips: [&str; 2]) -> Pod {
    Pod {
        namespace: "x".into(),
        name: name.into(),
        labels: labels(&[("pod", name), ("app", app)]),
        ips: ips.iter().map(|s| ip(s)).collect(),
        ..Pod::default()
    }
}

fn port(name: &str, protocol: Protocol, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port: TargetPort::Number(target),
        node_port: None,
    }
}

fn service(name: &str, ips: [&str; 2], ports: Vec<ServicePort>) -> Service {
    Service {
        namespace: "x".into(),
        name: name.into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: ips.iter().map(|s| ip(s)).collect(),
        ports,
        selector: Some(labels(&[("app", "web")])),
        ..Service::default()
    }
}

/// One slice per family for `service`, with `backends` ready.
fn slices(service: &str, backends: &[&str]) -> Vec<Arc<EndpointSlice>> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
        backends.iter().map(|s| ip(s)).partition(IpAddr::is_ipv4);
    [("v4", v4), ("v6", v6)]
        .into_iter()
        .map(|(family, addrs)| {
            let endpoints = addrs.into_iter().map(|a| ready(a, None)).collect();
            slice(service, family, endpoints)
        })
        .collect()
}

/// Slice `<service>-<suffix>` of `service`, serving [`endpoint_ports`].
fn slice(service: &str, suffix: &str, endpoints: Vec<Endpoint>) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        namespace: "x".into(),
        name: format!("{service}-{suffix}"),
        service: service.into(),
        ports: endpoint_ports(),
        endpoints,
        legacy: false,
        origin: Origin::default(),
    })
}

/// A ready endpoint at `addr`, on node `node` (`None`: no `nodeName`).
fn ready(addr: IpAddr, node: Option<&str>) -> Endpoint {
    Endpoint {
        addresses: vec![addr],
        ready: true,
        serving: true,
        node_name: node.map(str::to_owned),
        ..Endpoint::default()
    }
}

/// The ports every slice serves: `http` (TCP 8080), `dns` (UDP 5353), `sctp` (SCTP 3869).
fn endpoint_ports() -> Vec<EndpointPort> {
    [
        ("http", Protocol::Tcp, 8080),
        ("dns", Protocol::Udp, 5353),
        ("sctp", Protocol::Sctp, 3869),
    ]
    .into_iter()
    .map(|(name, protocol, port)| EndpointPort {
        name: name.into(),
        protocol,
        port,
    })
    .collect()
}

/// Services `x/web` (TCP 80 → 8080, UDP 53 → 5353, SCTP 3868 → 3869), `x/empty` (no
/// endpoint) and `x/sticky` (`ClientIP` affinity), backed by the given addresses.
fn state(backends: &[&str]) -> DesiredState {
    let http_dns = || {
        vec![
            port("http", Protocol::Tcp, 80, 8080),
            port("dns", Protocol::Udp, 53, 5353),
        ]
    };
    let mut sticky = service("sticky", [V4.sticky, V6.sticky], http_dns());
    sticky.affinity_timeout_s = Some(10_800);
    let mut endpoint_slices = slices("web", backends);
    endpoint_slices.extend(slices("sticky", backends));
    endpoint_slices.extend(slices("own", &[V4.client, V6.client]));
    DesiredState {
        namespaces: BTreeMap::from([(
            "x".to_owned(),
            Namespace {
                name: "x".into(),
                labels: BTreeMap::new(),
            },
        )]),
        pods: [
            pod("a", "client", [V4.client, V6.client]),
            pod("b", "web", [V4.b, V6.b]),
            pod("c", "web", [V4.c, V6.c]),
        ]
        .map(Arc::new)
        .into(),
        services: [
            service("web", [V4.web, V6.web], {
                let mut ports = http_dns();
                ports.push(port("sctp", Protocol::Sctp, 3868, 3869));
                ports
            }),
            service("empty", [V4.empty, V6.empty], http_dns()),
            sticky,
            service("own", [V4.own, V6.own], http_dns()),
        ]
        .map(Arc::new)
        .into(),
        endpoint_slices,
        ..DesiredState::default()
    }
}

const BOTH: [&str; 4] = [V4.b, V4.c, V6.b, V6.c];

/// This node's name (`weir run --node-name`).
const NODE_NAME: &str = "node-a";

fn node() -> NodeView {
    NodeView {
        host_addrs: BTreeSet::from([ip("10.0.255.1"), ip("fd00:ff::1")]),
        local_routes: BTreeMap::from([(ip(V4.client), 1), (ip(V6.client), 1)]),
        node_name: Some(NODE_NAME.to_owned()),
    }
}

fn loaded(state: &DesiredState) -> Dataplane {
    let mut dp = Dataplane::load().expect("loading the eBPF object (verifier)");
    sync(&mut dp, state);
    dp
}

fn sync(dp: &mut Dataplane, state: &DesiredState) {
    let maps = compile::compile(state, &node()).expect("compiling");
    dp.sync_maps(&maps).expect("writing maps");
}

fn sctp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet::new(
        ip(src),
        ip(dst),
        L4::Sctp {
            src: sport,
            dst: dport,
        },
    )
}

const NOT_ISOLATED: &str = PassReason::NotIsolated.name();
const ESTABLISHED: &str = PassReason::Established.name();

/// Opens a TCP connection from the client's `sport` to `vip`:80; the backend it went to.
fn connect(dp: &mut Dataplane, f: Family, vip: &str, sport: u16) -> IpAddr {
    let syn = run(dp, programs::FROM_POD, &tcp(f.client, sport, vip, 80, SYN));
    syn.expect(TC_ACT_OK, NOT_ISOLATED, "SYN to the ClusterIP");
    let t = syn.tuple();
    assert_eq!((t.src, t.src_port), (ip(f.client), sport), "source kept");
    assert_eq!(t.dst_port, 8080, "port translated to the target port");
    t.dst
}

fn translation_and_reply(f: Family) {
    let mut dp = loaded(&state(&BOTH));
    let backend = connect(&mut dp, f, f.web, 40_000);
    assert!(
        [ip(f.b), ip(f.c)].contains(&backend),
        "translated to a backend, got {backend}"
    );
    let ack = run(
        &mut dp,
        programs::FROM_POD,
        &tcp(f.client, 40_000, f.web, 80, ACK),
    );
    ack.expect(TC_ACT_OK, ESTABLISHED, "later packet");
    assert_eq!(ack.tuple().dst, backend, "every packet to the same backend");

    let backend_s = backend.to_string();
    let reply = run(
        &mut dp,
        programs::TO_POD,
        &tcp(&backend_s, 8080, f.client, 40_000, SYN | ACK),
    );
    reply.expect(TC_ACT_OK, ESTABLISHED, "backend's reply");
    let t = reply.tuple();
    assert_eq!(
        (t.src, t.src_port, t.dst, t.dst_port),
        (ip(f.web), 80, ip(f.client), 40_000),
        "the reply comes from the ClusterIP"
    );

    let dns = run(&mut dp, programs::FROM_POD, &udp(f.client, 5000, f.web, 53));
    dns.expect(TC_ACT_OK, NOT_ISOLATED, "UDP to the ClusterIP");
    let t = dns.tuple();
    assert_eq!(t.dst_port, 5353, "UDP port translated");
    let answer = run(
        &mut dp,
        programs::TO_POD,
        &udp(&t.dst.to_string(), 5353, f.client, 5000),
    );
    answer.expect(TC_ACT_OK, ESTABLISHED, "UDP answer");
    let a = answer.tuple();
    assert_eq!(
        (a.src, a.src_port),
        (ip(f.web), 53),
        "UDP answer from the ClusterIP"
    );
}

#[test]
fn ipv4_translation_and_reply() {
    testbed::require_root!();
    translation_and_reply(V4);
}

#[test]
fn ipv6_translation_and_reply() {
    testbed::require_root!();
    translation_and_reply(V6);
}

#[test]
fn connections_spread_over_backends_and_affinity_pins_a_client() {
    testbed::require_root!();
    for f in [V4, V6] {
        let mut dp = loaded(&state(&BOTH));
        let mut per_backend: BTreeMap<IpAddr, u32> = BTreeMap::new();
        let connections: u16 = 400;
        for sport in 0..connections {
            *per_backend
                .entry(connect(&mut dp, f, f.web, 20_000 + sport))
                .or_default() += 1;
        }
        // Two backends over 400 connections: each share is binomial(400, 0.5) with a standard
        // deviation of 10; 140..=260 is six of them away from 200.
        assert_eq!(
            per_backend.len(),
            2,
            "both backends chosen: {per_backend:?}"
        );
        for (backend, n) in &per_backend {
            assert!(
                (140..=260).contains(n),
                "{backend} got {n} of {connections} connections"
            );
        }
        let sticky: BTreeSet<IpAddr> = (0..50)
            .map(|sport| connect(&mut dp, f, f.sticky, 30_000 + sport))
            .collect();
        assert_eq!(
            sticky.len(),
            1,
            "ClientIP affinity: one backend, got {sticky:?}"
        );
    }
}

#[test]
fn a_removed_backend_keeps_tcp_and_loses_udp() {
    testbed::require_root!();
    for f in [V4, V6] {
        let mut dp = loaded(&state(&BOTH));
        let tcp_backend = connect(&mut dp, f, f.web, 41_000);
        let udp_backend = run(&mut dp, programs::FROM_POD, &udp(f.client, 6000, f.web, 53))
            .tuple()
            .dst;
        // Remove whichever backend the UDP flow uses; keep the TCP one when they differ.
        let gone = udp_backend;
        let kept: Vec<&str> = BOTH.iter().copied().filter(|b| ip(b) != gone).collect();
        sync(&mut dp, &state(&kept));

        let ack = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(f.client, 41_000, f.web, 80, ACK),
        );
        ack.expect(TC_ACT_OK, ESTABLISHED, "TCP after its backend changed set");
        assert_eq!(
            ack.tuple().dst,
            tcp_backend,
            "an established TCP connection stays"
        );

        let moved = run(&mut dp, programs::FROM_POD, &udp(f.client, 6000, f.web, 53));
        assert_eq!(moved.action, TC_ACT_OK, "the UDP flow goes on");
        let to = moved.tuple().dst;
        assert_ne!(to, gone, "the UDP flow leaves its removed backend");
        assert!(kept.iter().any(|b| ip(b) == to), "to a live backend: {to}");
    }
}

#[test]
fn a_service_without_endpoints_is_rejected() {
    testbed::require_root!();
    for f in [V4, V6] {
        let mut dp = loaded(&state(&BOTH));
        let no_endpoints = DropReason::NoEndpoints.name();
        let syn = tcp(f.client, 42_000, f.empty, 80, SYN);
        let rst = run(&mut dp, programs::FROM_POD, &syn);
        rst.expect(
            TC_ACT_REDIRECT,
            no_endpoints,
            "SYN to a Service with no endpoint",
        );
        let t = rst.tuple();
        assert_eq!(
            (t.src, t.src_port, t.dst, t.dst_port),
            (ip(f.empty), 80, ip(f.client), 42_000),
            "a reset from the ClusterIP to the client"
        );
        let ip_len = if f.client.contains(':') { 40 } else { 20 };
        let tcp_header = &rst.out[14 + ip_len..];
        assert_eq!(tcp_header[13], 0x14, "RST and ACK set");
        assert_eq!(
            &tcp_header[8..12],
            &2u32.to_be_bytes(),
            "acknowledges the SYN (seq 1 + 1)"
        );

        let unreachable = run(
            &mut dp,
            programs::FROM_POD,
            &udp(f.client, 7000, f.empty, 53),
        );
        unreachable.expect(
            TC_ACT_REDIRECT,
            no_endpoints,
            "UDP to a Service with no endpoint",
        );
        check_port_unreachable(&unreachable.out, f);
    }
}

/// An ICMP(v6) port unreachable from the `ClusterIP` to the client, with right checksums,
/// quoting the client's datagram.
fn check_port_unreachable(frame: &[u8], f: Family) {
    let read = read_icmp_error(frame);
    assert_eq!(
        (read.src, read.dst),
        (ip(f.empty), ip(f.client)),
        "from the ClusterIP"
    );
    let v6 = f.client.contains(':');
    let ip_len = if v6 { 40 } else { 20 };
    let icmp = &frame[14 + ip_len..];
    let (kind, code) = if v6 { (1, 4) } else { (3, 3) };
    assert_eq!((icmp[0], icmp[1]), (kind, code), "port unreachable");
    assert_eq!(
        icmp.len(),
        8 + ip_len + 8,
        "quotes the IP header and 8 bytes"
    );
    assert_eq!(
        read.quoted_dst.0,
        ip(f.empty),
        "the quoted datagram is the client's"
    );
}

#[test]
fn icmp_errors_about_a_service_connection_are_translated() {
    testbed::require_root!();
    for f in [V4, V6] {
        let mut dp = loaded(&state(&BOTH));
        let out = run(&mut dp, programs::FROM_POD, &udp(f.client, 7100, f.web, 53));
        out.expect(TC_ACT_OK, NOT_ISOLATED, "UDP to the ClusterIP");
        let backend = out.tuple().dst;

        // The backend has no socket on 5353: its port unreachable quotes the datagram as it
        // arrived there. The client, connected to the ClusterIP, must read it as about its own
        // datagram, from the ClusterIP.
        let error = Packet::new(
            backend,
            ip(f.client),
            L4::Unreachable {
                quoted: Box::new(udp(f.client, 7100, &backend.to_string(), 5353)),
            },
        );
        let ran = run_frame(&mut dp, programs::TO_POD, &icmp_frame(&error));
        ran.expect(TC_ACT_OK, ESTABLISHED, "the backend's port unreachable");
        assert_eq!(
            read_icmp_error(&ran.out),
            IcmpError {
                src: ip(f.web),
                dst: ip(f.client),
                quoted_src: (ip(f.client), 7100),
                quoted_dst: (ip(f.web), 53),
            },
            "{}: the error reads as from the ClusterIP, about the client's datagram to it",
            f.client
        );

        // A router on the way keeps its own address; the quoted datagram is translated all
        // the same.
        let router = if f.client.contains(':') {
            "fd00:ff::1"
        } else {
            "10.0.255.1"
        };
        let error = Packet::new(
            ip(router),
            ip(f.client),
            L4::Unreachable {
                quoted: Box::new(udp(f.client, 7100, &backend.to_string(), 5353)),
            },
        );
        let ran = run_frame(&mut dp, programs::TO_POD, &icmp_frame(&error));
        ran.expect(TC_ACT_OK, ESTABLISHED, "a router's unreachable");
        let read = read_icmp_error(&ran.out);
        assert_eq!(
            (read.src, read.quoted_dst),
            (ip(router), (ip(f.web), 53)),
            "{}: the router's address stays, the quoted datagram is translated",
            f.client
        );

        // The other way: the client's port unreachable about the answer it got from the
        // ClusterIP goes to the backend, about the backend's own datagram.
        let error = Packet::new(
            ip(f.client),
            ip(f.web),
            L4::Unreachable {
                quoted: Box::new(udp(f.web, 53, f.client, 7100)),
            },
        );
        let ran = run_frame(&mut dp, programs::FROM_POD, &icmp_frame(&error));
        ran.expect(TC_ACT_OK, ESTABLISHED, "the client's port unreachable");
        assert_eq!(
            read_icmp_error(&ran.out),
            IcmpError {
                src: ip(f.client),
                dst: backend,
                quoted_src: (backend, 5353),
                quoted_dst: (ip(f.client), 7100),
            },
            "{}: the client's error goes to the backend, about its datagram",
            f.client
        );
    }
}

#[test]
fn policy_judges_the_translated_packet() {
    testbed::require_root!();
    // The client may reach pod b on 8080 and nothing else: through the ClusterIP, connections
    // that land on b pass and those that land on c are denied.
    let mut state = state(&BOTH);
    state.policies.push(Arc::new(Policy {
        namespace: "x".into(),
        name: "a-to-b".into(),
        pod_selector: LabelSelector {
            match_labels: labels(&[("pod", "a")]),
            ..LabelSelector::default()
        },
        ingress: None,
        egress: Some(vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Own("x".into()),
                pods: LabelSelector {
                    match_labels: labels(&[("pod", "b")]),
                    ..LabelSelector::default()
                },
            }],
            ports: vec![PortMatch {
                protocol: Protocol::Tcp,
                port: Some(PortSpec::Range {
                    first: 8080,
                    last: 8080,
                }),
            }],
        }]),
        origin: Origin::default(),
    }));
    for f in [V4, V6] {
        let mut dp = loaded(&state);
        let (mut allowed, mut denied) = (0, 0);
        for sport in 0..64 {
            let ran = run(
                &mut dp,
                programs::FROM_POD,
                &tcp(f.client, 50_000 + sport, f.web, 80, SYN),
            );
            let backend = ran.tuple().dst;
            if backend == ip(f.b) {
                ran.expect(TC_ACT_OK, PassReason::PolicyAllowed.name(), "to b");
                allowed += 1;
            } else {
                ran.expect(TC_ACT_SHOT, DropReason::PolicyDenied.name(), "to c");
                denied += 1;
            }
        }
        assert!(
            allowed > 0 && denied > 0,
            "both backends tried: {allowed}/{denied}"
        );
    }
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    testbed::require_root!();
    for f in [V4, V6] {
        let mut dp = loaded(&state(&BOTH));
        let self_traffic = PassReason::SelfTraffic.name();
        // Out of the pod: to itself, but from the frontend (from its own address, its stack
        // would drop the packet as a martian).
        let out = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(f.client, 43_000, f.own, 80, SYN),
        );
        out.expect(TC_ACT_OK, self_traffic, "SYN to the pod's own Service");
        let t = out.tuple();
        assert_eq!(
            (t.src, t.src_port, t.dst, t.dst_port),
            (ip(f.own), 43_000, ip(f.client), 8080),
            "hairpin: from the frontend to the pod's backend port"
        );
        // Back in, as the kernel routes it: part of the connection, unchanged.
        let back_in = run(
            &mut dp,
            programs::TO_POD,
            &tcp(f.own, 43_000, f.client, 8080, SYN),
        );
        back_in.expect(TC_ACT_OK, ESTABLISHED, "the hairpin SYN into the pod");
        assert_eq!(back_in.tuple(), t, "nothing rewritten on the way in");
        // The pod answers the frontend; the answer turns around to the client side.
        let answer = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(f.client, 8080, f.own, 43_000, SYN | ACK),
        );
        answer.expect(TC_ACT_OK, ESTABLISHED, "the pod's answer");
        let a = answer.tuple();
        assert_eq!(
            (a.src, a.src_port, a.dst, a.dst_port),
            (ip(f.own), 80, ip(f.client), 43_000),
            "the answer comes from the Service port, to the client port"
        );
        let delivered = run(
            &mut dp,
            programs::TO_POD,
            &tcp(f.own, 80, f.client, 43_000, SYN | ACK),
        );
        delivered.expect(TC_ACT_OK, ESTABLISHED, "the answer into the pod");
    }
}

#[test]
fn a_source_port_reused_for_another_service_with_the_same_backend_gets_its_own_translation() {
    testbed::require_root!();
    for f in [V4, V6] {
        // One backend behind both Services: the two connections translate to one tuple.
        let mut dp = loaded(&state(&[f.b]));
        let first = connect(&mut dp, f, f.web, 45_000);
        let second = connect(&mut dp, f, f.sticky, 45_000);
        assert_eq!((first, second), (ip(f.b), ip(f.b)), "one backend for both");
        let b = f.b.to_string();
        let reply = run(
            &mut dp,
            programs::TO_POD,
            &tcp(&b, 8080, f.client, 45_000, SYN | ACK),
        );
        reply.expect(TC_ACT_OK, ESTABLISHED, "the backend's answer");
        let t = reply.tuple();
        assert_eq!(
            (t.src, t.src_port),
            (ip(f.sticky), 80),
            "answered as the Service the client connected to last, not the earlier one"
        );
    }
}

/// SCTP through a `ClusterIP`: the client's packet leaves with the backend's address and
/// target port, later packets follow it, and the backend's reply comes back from the
/// `ClusterIP` and Service port.
///
/// The checksums: IPv4's header checksum is checked ([`Ran::tuple`]). SCTP's own checksum is
/// a `CRC32c` over the SCTP packet, with no pseudo-header, so the address rewrite leaves it
/// alone; the port rewrite would change it, and the dataplane does not recompute it (`nat.rs`):
/// right for packets whose CRC the sender leaves to offload, as every sender on a veth does,
/// not for one that arrives with its CRC already filled in (README, "Known limits").
/// So there is no CRC to check here: the crafted frames carry a zero CRC, and each output must
/// be, byte for byte, the frame crafted with the translated addresses and ports (verification
/// tag and CRC as they came, nothing else touched).
fn sctp_translation_and_reply(f: Family) {
    let mut dp = loaded(&state(&BOTH));
    let first = run(
        &mut dp,
        programs::FROM_POD,
        &sctp(f.client, 40_100, f.web, 3868),
    );
    first.expect(TC_ACT_OK, NOT_ISOLATED, "SCTP to the ClusterIP");
    let backend = first.tuple().dst;
    assert!(
        [ip(f.b), ip(f.c)].contains(&backend),
        "translated to a backend, got {backend}"
    );
    let backend_s = backend.to_string();
    let to_backend = sctp(f.client, 40_100, &backend_s, 3869).frame();
    assert_eq!(
        first.out, to_backend,
        "{}: the first packet, to the backend's address and target port",
        f.client
    );

    let later = run(
        &mut dp,
        programs::FROM_POD,
        &sctp(f.client, 40_100, f.web, 3868),
    );
    later.expect(TC_ACT_OK, ESTABLISHED, "a later SCTP packet");
    later.tuple();
    assert_eq!(
        later.out, to_backend,
        "{}: a later packet, to the same backend",
        f.client
    );

    let reply = run(
        &mut dp,
        programs::TO_POD,
        &sctp(&backend_s, 3869, f.client, 40_100),
    );
    reply.expect(TC_ACT_OK, ESTABLISHED, "the backend's SCTP reply");
    reply.tuple();
    assert_eq!(
        reply.out,
        sctp(f.web, 3868, f.client, 40_100).frame(),
        "{}: the reply, from the ClusterIP and Service port",
        f.client
    );
}

#[test]
fn ipv4_sctp_translation_and_reply() {
    testbed::require_root!();
    sctp_translation_and_reply(V4);
}

#[test]
fn ipv6_sctp_translation_and_reply() {
    testbed::require_root!();
    sctp_translation_and_reply(V6);
}

/// Node of the endpoints that are not on this one.
const OTHER_NODE: &str = "node-b";

/// [`state`] with `x/near` (`internalTrafficPolicy: Local`) and `x/far` (`Cluster`), whose
/// slices list the same endpoints: `b` and `c` on [`OTHER_NODE`], and, when `local_endpoint`,
/// `d` on this node. Nothing but `d`'s `nodeName` makes it local: the node view has no route
/// to it.
fn traffic_policy_state(local_endpoint: bool) -> DesiredState {
    let mut state = state(&BOTH);
    let mut near = service(
        "near",
        [V4.near, V6.near],
        vec![
            port("http", Protocol::Tcp, 80, 8080),
            port("dns", Protocol::Udp, 53, 5353),
        ],
    );
    near.internal_traffic_local = true;
    let far = Service {
        name: "far".into(),
        cluster_ips: vec![ip(V4.far), ip(V6.far)],
        internal_traffic_local: false,
        ..near.clone()
    };
    state.services.extend([near, far].map(Arc::new));
    state.pods.push(Arc::new(pod("d", "web", [V4.d, V6.d])));
    for svc in ["near", "far"] {
        for f in [V4, V6] {
            let mut endpoints = vec![
                ready(ip(f.b), Some(OTHER_NODE)),
                ready(ip(f.c), Some(OTHER_NODE)),
            ];
            if local_endpoint {
                endpoints.push(ready(ip(f.d), Some(NODE_NAME)));
            }
            let suffix = if f.client.contains(':') { "v6" } else { "v4" };
            state.endpoint_slices.push(slice(svc, suffix, endpoints));
        }
    }
    state
}

/// `internalTrafficPolicy: Local`: a pod's connection to the `ClusterIP` goes only to
/// endpoints on its own node. With none there, it is dropped (`no_local_endpoints`), not
/// rejected as a Service without endpoints is: kube-proxy drops it too. With one, every
/// connection goes to it, while the same endpoints behind `Cluster` also reach the others.
#[test]
fn internal_traffic_policy_local_sends_only_to_this_nodes_endpoints() {
    testbed::require_root!();
    let no_local = DropReason::NoLocalEndpoints.name();
    for f in [V4, V6] {
        let mut dp = loaded(&traffic_policy_state(false));
        let syn = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(f.client, 46_000, f.near, 80, SYN),
        );
        syn.expect(TC_ACT_SHOT, no_local, "SYN, no endpoint on this node");
        let dns = run(
            &mut dp,
            programs::FROM_POD,
            &udp(f.client, 46_000, f.near, 53),
        );
        dns.expect(TC_ACT_SHOT, no_local, "UDP, no endpoint on this node");
        let remote = connect(&mut dp, f, f.far, 46_000);
        assert!(
            [ip(f.b), ip(f.c)].contains(&remote),
            "{}: the same endpoints behind Cluster: reached {remote}",
            f.client
        );

        sync(&mut dp, &traffic_policy_state(true));
        // Each of 64 connections would land on d with probability 1/3 if the remote
        // endpoints were eligible: all 64 do by chance with probability 3⁻⁶⁴.
        let near: BTreeSet<IpAddr> = (0..64)
            .map(|sport| connect(&mut dp, f, f.near, 46_100 + sport))
            .collect();
        assert_eq!(
            near,
            BTreeSet::from([ip(f.d)]),
            "{}: Local reaches only the endpoint on this node",
            f.client
        );
        let dns = run(
            &mut dp,
            programs::FROM_POD,
            &udp(f.client, 46_000, f.near, 53),
        );
        dns.expect(TC_ACT_OK, NOT_ISOLATED, "UDP, an endpoint on this node");
        assert_eq!(dns.tuple().dst, ip(f.d), "{}: UDP to d", f.client);
        let far: BTreeSet<IpAddr> = (0..64)
            .map(|sport| connect(&mut dp, f, f.far, 46_200 + sport))
            .collect();
        assert!(
            far.contains(&ip(f.b)) && far.contains(&ip(f.c)),
            "{}: Cluster reaches the other node's endpoints too: {far:?}",
            f.client
        );
    }
}

/// `LoadBalancer` Service `x/<name>` (TCP 80 → 8080, UDP 53 → 5353) with cluster and
/// load-balancer IPs `[cluster, load balancer]` in each family, and source ranges `ranges`.
fn load_balancer(name: &str, v4: [&str; 2], v6: [&str; 2], ranges: &[&str]) -> Arc<Service> {
    let ([v4_cluster, v4_lb], [v6_cluster, v6_lb]) = (v4, v6);
    Arc::new(Service {
        kind: ServiceKind::LoadBalancer,
        load_balancer_ips: vec![ip(v4_lb), ip(v6_lb)],
        load_balancer_source_ranges: ranges
            .iter()
            .map(|r| r.parse().expect("a test range"))
            .collect(),
        ..service(
            name,
            [v4_cluster, v6_cluster],
            vec![
                port("http", Protocol::Tcp, 80, 8080),
                port("dns", Protocol::Udp, 53, 5353),
            ],
        )
    })
}

/// [`state`] with two `LoadBalancer` Services whose load-balancer IPs have source ranges:
/// `x/lb-in`'s hold the client (`10.0.0.0/24`, `fd00::/64`), `x/lb-out`'s do not
/// (`10.0.1.0/24`, `fd00:1::/64`, where `c` is). Both are backed by `b` and `c`.
fn source_range_state() -> DesiredState {
    let mut state = state(&BOTH);
    state.services.extend([
        load_balancer("lb-in", V4.lb_in, V6.lb_in, &["10.0.0.0/24", "fd00::/64"]),
        load_balancer(
            "lb-out",
            V4.lb_out,
            V6.lb_out,
            &["10.0.1.0/24", "fd00:1::/64"],
        ),
    ]);
    state.endpoint_slices.extend(slices("lb-in", &BOTH));
    state.endpoint_slices.extend(slices("lb-out", &BOTH));
    state
}

/// `loadBalancerSourceRanges` hold for pods reaching a load-balancer IP too (kube-proxy
/// checks them for in-cluster clients of that IP as well): a client inside a range is
/// translated and answered from the load-balancer IP; one outside is dropped
/// (`source_range`). The ranges guard the load-balancer IP alone: the same Service's
/// `ClusterIP` serves every client.
#[test]
fn load_balancer_source_ranges_admit_only_clients_inside_them() {
    testbed::require_root!();
    let source_range = DropReason::SourceRange.name();
    for f in [V4, V6] {
        let mut dp = loaded(&source_range_state());
        let [_, lb_in] = f.lb_in;
        let backend = connect(&mut dp, f, lb_in, 47_000);
        assert!(
            [ip(f.b), ip(f.c)].contains(&backend),
            "{}: inside the range, translated to a backend: {backend}",
            f.client
        );
        let reply = run(
            &mut dp,
            programs::TO_POD,
            &tcp(&backend.to_string(), 8080, f.client, 47_000, SYN | ACK),
        );
        reply.expect(TC_ACT_OK, ESTABLISHED, "the backend's reply");
        let t = reply.tuple();
        assert_eq!(
            (t.src, t.src_port),
            (ip(lb_in), 80),
            "{}: the reply comes from the load-balancer IP",
            f.client
        );
        let dns = run(
            &mut dp,
            programs::FROM_POD,
            &udp(f.client, 47_000, lb_in, 53),
        );
        dns.expect(TC_ACT_OK, NOT_ISOLATED, "UDP inside the range");

        let [lb_out_cluster, lb_out] = f.lb_out;
        let syn = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(f.client, 47_001, lb_out, 80, SYN),
        );
        syn.expect(TC_ACT_SHOT, source_range, "SYN from outside the ranges");
        let dns = run(
            &mut dp,
            programs::FROM_POD,
            &udp(f.client, 47_001, lb_out, 53),
        );
        dns.expect(TC_ACT_SHOT, source_range, "UDP from outside the ranges");
        let backend = connect(&mut dp, f, lb_out_cluster, 47_002);
        assert!(
            [ip(f.b), ip(f.c)].contains(&backend),
            "{}: the ClusterIP of a Service with source ranges: {backend}",
            f.client
        );
    }
}

/// An IPv6 source range admits no IPv4 client, whatever it covers: IPv4 addresses live in the
/// IPv4-mapped block (`::ffff:0:0/96`) of the 16-byte addresses the programs match, and an
/// IPv6 range over that block (`::/0`, "every IPv6 client") or inside it must not reach
/// them. Each Service below admits the IPv6 client and none of its IPv4 ranges holds the
/// IPv4 client: the IPv4 client is dropped.
#[test]
fn an_ipv6_source_range_admits_no_ipv4_client() {
    testbed::require_root!();
    let cases = [
        (
            "every IPv6 client",
            ["10.96.0.18", "10.97.0.18"],
            ["fd00:96::18", "fd00:97::18"],
            &["10.0.1.0/24", "::/0"][..],
        ),
        (
            "an IPv6 range inside the IPv4-mapped block",
            ["10.96.0.19", "10.97.0.19"],
            ["fd00:96::19", "fd00:97::19"],
            &["10.0.1.0/24", "::ffff:10.0.0.0/104", "fd00::/64"][..],
        ),
    ];
    let mut state = state(&BOTH);
    for (i, (_, v4, v6, ranges)) in cases.iter().enumerate() {
        let name = format!("mixed-{i}");
        state.services.push(load_balancer(&name, *v4, *v6, ranges));
        state.endpoint_slices.extend(slices(&name, &BOTH));
    }
    let mut dp = loaded(&state);
    for (what, [_, v4_lb], [_, v6_lb], ranges) in cases {
        let what = format!("{what} ({ranges:?})");
        let syn = run(
            &mut dp,
            programs::FROM_POD,
            &tcp(V4.client, 48_000, v4_lb, 80, SYN),
        );
        syn.expect(
            TC_ACT_SHOT,
            DropReason::SourceRange.name(),
            &format!("{what}: the IPv4 client"),
        );
        let backend = connect(&mut dp, V6, v6_lb, 48_000);
        assert!(
            [ip(V6.b), ip(V6.c)].contains(&backend),
            "{what}: the IPv6 client, translated to a backend: {backend}"
        );
    }
}

/// A family the Service lists no source range of admits no client of that family (the
/// stricter reading: kube-proxy filters the ranges per family and leaves such a family open;
/// README, "Services").
#[test]
fn a_family_without_source_ranges_admits_no_client() {
    testbed::require_root!();
    let (v4, v6) = (["10.96.0.20", "10.97.0.20"], ["fd00:96::20", "fd00:97::20"]);
    let mut state = state(&BOTH);
    state
        .services
        .push(load_balancer("v4-only", v4, v6, &["10.0.0.0/24"]));
    state.endpoint_slices.extend(slices("v4-only", &BOTH));
    let mut dp = loaded(&state);
    let backend = connect(&mut dp, V4, v4[1], 49_000);
    assert!(
        [ip(V4.b), ip(V4.c)].contains(&backend),
        "the IPv4 client, inside 10.0.0.0/24: {backend}"
    );
    let syn = run(
        &mut dp,
        programs::FROM_POD,
        &tcp(V6.client, 49_000, v6[1], 80, SYN),
    );
    syn.expect(
        TC_ACT_SHOT,
        DropReason::SourceRange.name(),
        "the IPv6 client, with no IPv6 range",
    );
}
