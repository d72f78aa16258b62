use std::collections::BTreeSet;
use std::net::IpAddr;

use dataplane_abi::{ServiceScope, proto, service_flags};

use dataplane_abi::maglev;
use dataplane_abi::{BACKEND_NONE, backend_flags};

use super::build::{describe, is_v4_mapped};
use super::*;
use crate::compile::{CompileError, to_addr};
use crate::compile::{FlatServices, MapSet};
use crate::model::{Protocol, ServiceKind, ServicePort};

/// A compilation, and its Service maps as plain maps.
#[derive(Debug)]
struct Compiled {
    maps: MapSet,
    flat: FlatServices,
}

impl std::ops::Deref for Compiled {
    type Target = FlatServices;

    fn deref(&self) -> &FlatServices {
        &self.flat
    }
}

fn compile(state: &DesiredState, node: &NodeView) -> Result<Compiled, CompileError> {
    compile_with(
        state,
        node,
        &Compiled {
            maps: MapSet::default(),
            flat: FlatServices::default(),
        },
    )
}

fn compile_with(
    state: &DesiredState,
    node: &NodeView,
    previous: &Compiled,
) -> Result<Compiled, CompileError> {
    let maps = crate::compile::compile_with(state, node, &previous.maps)?;
    let flat = maps.services.flatten();
    Ok(Compiled { maps, flat })
}
use crate::model::{Endpoint, EndpointPort, Node, Origin, TargetPort};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> Addr {
    to_addr(ip(s))
}

/// A `ClusterIP` Service `ns/name` at `cluster_ip`, port `http` 80/TCP.
fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![service_port("http", 80, None)],
        origin: Origin {
            file: "svc.yaml".into(),
            line: 3,
        },
        ..Service::default()
    }
}

fn service_port(name: &str, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
        target_port: TargetPort::Number(8080),
        node_port,
    }
}

/// A slice of `ns/service` whose endpoints listen on 8080 for port `http`.
fn slice(ns: &str, service: &str, name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        namespace: ns.into(),
        name: name.into(),
        service: service.into(),
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints,
        ..EndpointSlice::default()
    }
}

fn ready(addr: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready: true,
        serving: true,
        ..Endpoint::default()
    }
}

fn terminating(addr: &str, serving: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready: false,
        serving,
        terminating: true,
        ..Endpoint::default()
    }
}

fn on_node(mut ep: Endpoint, node: &str) -> Endpoint {
    ep.node_name = Some(node.into());
    ep
}

/// This node: `node-a`, addresses 192.168.1.10 and `fd00::10` (plus loopback and link-local),
/// hosting the pod 10.0.0.1 behind ifindex 5.
fn node() -> NodeView {
    NodeView {
        host_addrs: BTreeSet::from([
            ip("127.0.0.1"),
            ip("::1"),
            ip("169.254.3.3"),
            ip("fe80::1"),
            ip("192.168.1.10"),
            ip("fd00::10"),
        ]),
        local_routes: [(ip("10.0.0.1"), 5)].into(),
        node_name: Some("node-a".into()),
    }
}

fn state(services: Vec<Service>, slices: Vec<EndpointSlice>) -> DesiredState {
    DesiredState {
        services: services.into_iter().map(Arc::new).collect(),
        endpoint_slices: slices.into_iter().map(Arc::new).collect(),
        ..DesiredState::default()
    }
}

fn key(a: &str, port_h: u16, scope: ServiceScope) -> ServiceKey {
    ServiceKey {
        addr: addr(a),
        port_h,
        proto: proto::TCP,
        scope: scope as u8,
    }
}

/// The backends (address, port) a frontend's set holds, sorted, checked against its table.
fn backends_of(maps: &FlatServices, key: &ServiceKey) -> Vec<(IpAddr, u16)> {
    let value = maps
        .frontends
        .get(key)
        .unwrap_or_else(|| panic!("no frontend {}", describe(key)));
    let Some(table) = maps.tables.get(&value.backend_set) else {
        assert_eq!(value.backend_count, 0, "a set with backends has a table");
        return Vec::new();
    };
    assert_eq!(value.maglev, table.tier as u8);
    let ids: BTreeSet<u32> = table.slots.iter().copied().collect();
    assert_eq!(ids.len(), value.backend_count as usize);
    let mut out: Vec<(IpAddr, u16)> = ids
        .iter()
        .map(|id| {
            let be = maps.backends[id];
            let ip = if is_v4_mapped(&be.addr) {
                IpAddr::from([be.addr[12], be.addr[13], be.addr[14], be.addr[15]])
            } else {
                IpAddr::from(be.addr)
            };
            (ip, be.port_h)
        })
        .collect();
    out.sort();
    out
}

fn ips(list: &[&str]) -> Vec<(IpAddr, u16)> {
    let mut out: Vec<(IpAddr, u16)> = list.iter().map(|a| (ip(a), 8080)).collect();
    out.sort();
    out
}

#[test]
fn a_cluster_ip_balances_over_the_ready_endpoints_of_its_slices() {
    let maps = compile(
        &state(
            vec![service("x", "web", "10.96.0.1")],
            vec![
                slice(
                    "x",
                    "web",
                    "web-1",
                    vec![ready("10.0.0.1"), ready("10.0.0.2")],
                ),
                slice("x", "web", "web-2", vec![ready("10.0.0.3")]),
                slice("x", "other", "other-1", vec![ready("10.0.9.9")]),
                slice("y", "web", "web-1", vec![ready("10.0.8.8")]),
            ],
        ),
        &node(),
    )
    .unwrap();
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    assert_eq!(
        maps.frontends.len(),
        1,
        "one port, one cluster IP, one scope"
    );
    assert_eq!(
        backends_of(&maps, &frontend),
        ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    );
    let value = maps.frontends[&frontend];
    assert_eq!(value.flags, 0);
    assert_eq!(value.affinity_timeout_s, 0);
    assert_ne!(value.service, 0);
    assert_eq!(
        maps.backends
            .values()
            .filter(|b| b.flags & backend_flags::LOCAL != 0)
            .count(),
        1,
        "10.0.0.1 is routed to a local interface"
    );
}

#[test]
fn endpoint_ports_match_by_name_and_protocol() {
    let mut svc = service("x", "dns", "10.96.0.10");
    svc.ports = vec![
        ServicePort {
            protocol: Protocol::Udp,
            ..service_port("dns", 53, None)
        },
        service_port("dns-tcp", 53, None),
    ];
    let mut s = slice("x", "dns", "dns-1", vec![ready("10.0.0.2")]);
    s.ports = vec![
        EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 5353,
        },
        EndpointPort {
            name: "dns-tcp".into(),
            protocol: Protocol::Tcp,
            port: 5354,
        },
        EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Tcp,
            port: 9999,
        },
    ];
    let maps = compile(&state(vec![svc], vec![s]), &node()).unwrap();
    let udp = ServiceKey {
        proto: proto::UDP,
        ..key("10.96.0.10", 53, ServiceScope::Internal)
    };
    let tcp = key("10.96.0.10", 53, ServiceScope::Internal);
    assert_eq!(backends_of(&maps, &udp), vec![(ip("10.0.0.2"), 5353)]);
    assert_eq!(backends_of(&maps, &tcp), vec![(ip("10.0.0.2"), 5354)]);
}

#[test]
fn legacy_endpoints_count_only_without_slices() {
    let legacy = |addr| EndpointSlice {
        legacy: true,
        ..slice("x", "web", "web", vec![ready(addr)])
    };
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    let only_legacy = compile(
        &state(
            vec![service("x", "web", "10.96.0.1")],
            vec![legacy("10.0.0.7")],
        ),
        &node(),
    )
    .unwrap();
    assert_eq!(backends_of(&only_legacy, &frontend), ips(&["10.0.0.7"]));
    let both = compile(
        &state(
            vec![service("x", "web", "10.96.0.1")],
            vec![
                legacy("10.0.0.7"),
                slice("x", "web", "web-abc", vec![ready("10.0.0.1")]),
            ],
        ),
        &node(),
    )
    .unwrap();
    assert_eq!(backends_of(&both, &frontend), ips(&["10.0.0.1"]));
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    let compiled = |endpoints| {
        compile(
            &state(
                vec![service("x", "web", "10.96.0.1")],
                vec![slice("x", "web", "web-1", endpoints)],
            ),
            &node(),
        )
        .unwrap()
    };
    let mixed = compiled(vec![
        ready("10.0.0.1"),
        terminating("10.0.0.2", true),
        terminating("10.0.0.3", false),
    ]);
    assert_eq!(backends_of(&mixed, &frontend), ips(&["10.0.0.1"]));
    let draining = compiled(vec![
        terminating("10.0.0.2", true),
        terminating("10.0.0.3", false),
    ]);
    assert_eq!(
        backends_of(&draining, &frontend),
        ips(&["10.0.0.2"]),
        "serving and terminating: the fallback; not serving: never"
    );
    let gone = compiled(vec![terminating("10.0.0.3", false)]);
    let value = gone.frontends[&frontend];
    assert_eq!(value.backend_count, 0, "no backend: the kernel rejects");
    assert!(gone.tables.is_empty() && gone.backends.is_empty());
    assert_eq!(value.flags & service_flags::DROP_IF_EMPTY, 0);
}

#[test]
fn an_address_in_two_slices_counts_once_and_is_ready_if_either_says_so() {
    let maps = compile(
        &state(
            vec![service("x", "web", "10.96.0.1")],
            vec![
                slice("x", "web", "web-1", vec![ready("10.0.0.1")]),
                slice(
                    "x",
                    "web",
                    "web-2",
                    vec![terminating("10.0.0.1", true), ready("10.0.0.2")],
                ),
            ],
        ),
        &node(),
    )
    .unwrap();
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    assert_eq!(
        backends_of(&maps, &frontend),
        ips(&["10.0.0.1", "10.0.0.2"])
    );
    assert_eq!(maps.backends.len(), 2);
}

#[test]
fn dual_stack_frontends_use_endpoints_of_their_own_family() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.cluster_ips.push(ip("fd96::1"));
    let dual = Endpoint {
        addresses: vec![ip("10.0.0.2"), ip("fd10::2")],
        ..ready("10.0.0.2")
    };
    let maps = compile(
        &state(
            vec![svc],
            vec![slice("x", "web", "web-1", vec![dual, ready("10.0.0.3")])],
        ),
        &node(),
    )
    .unwrap();
    assert_eq!(
        backends_of(&maps, &key("10.96.0.1", 80, ServiceScope::Internal)),
        ips(&["10.0.0.2", "10.0.0.3"])
    );
    assert_eq!(
        backends_of(&maps, &key("fd96::1", 80, ServiceScope::Internal)),
        ips(&["fd10::2"])
    );
    let v4 = maps.frontends[&key("10.96.0.1", 80, ServiceScope::Internal)];
    let v6 = maps.frontends[&key("fd96::1", 80, ServiceScope::Internal)];
    assert_eq!(v4.service, v6.service, "one Service, one id");
    assert_ne!(v4.backend_set, v6.backend_set, "one set per family");
}

#[test]
fn internal_traffic_local_keeps_only_this_nodes_endpoints() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.internal_traffic_local = true;
    let endpoints = vec![
        ready("10.0.0.1"),                                // routed to a local interface
        on_node(ready("10.0.0.2"), "node-a"),             // named on this node
        on_node(ready("10.0.0.3"), "node-b"),             // elsewhere
        on_node(terminating("10.0.0.4", true), "node-a"), // not needed: local ones are ready
    ];
    let maps = compile(
        &state(vec![svc], vec![slice("x", "web", "web-1", endpoints)]),
        &node(),
    )
    .unwrap();
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    assert_eq!(
        backends_of(&maps, &frontend),
        ips(&["10.0.0.1", "10.0.0.2"])
    );
    assert_eq!(
        maps.frontends[&frontend].flags,
        service_flags::DROP_IF_EMPTY
    );
    assert!(
        maps.backends
            .values()
            .all(|b| b.flags & backend_flags::LOCAL != 0)
    );
}

#[test]
fn internal_traffic_local_falls_back_to_local_terminating_endpoints_then_drops() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.internal_traffic_local = true;
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    let draining = compile(
        &state(
            vec![svc.clone()],
            vec![slice(
                "x",
                "web",
                "web-1",
                vec![
                    on_node(ready("10.0.0.3"), "node-b"),
                    on_node(terminating("10.0.0.4", true), "node-a"),
                ],
            )],
        ),
        &node(),
    )
    .unwrap();
    assert_eq!(backends_of(&draining, &frontend), ips(&["10.0.0.4"]));
    let elsewhere = compile(
        &state(
            vec![svc],
            vec![slice(
                "x",
                "web",
                "web-1",
                vec![on_node(ready("10.0.0.3"), "node-b")],
            )],
        ),
        &node(),
    )
    .unwrap();
    let value = elsewhere.frontends[&frontend];
    assert_eq!(value.backend_count, 0);
    assert_eq!(value.flags, service_flags::DROP_IF_EMPTY);
}

/// A `LoadBalancer` Service with an external IP, a load-balancer IP and node port 30080,
/// endpoints 10.0.0.1 (local) and 10.0.0.3 (node-b).
fn load_balancer(external_local: bool, ranges: &[&str]) -> Compiled {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.kind = ServiceKind::LoadBalancer;
    svc.ports = vec![service_port("http", 80, Some(30080))];
    svc.external_ips = vec![ip("203.0.113.5"), ip("2001:db8::5")];
    svc.load_balancer_ips = vec![ip("198.51.100.7")];
    svc.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
    svc.external_traffic_local = external_local;
    compile(
        &state(
            vec![svc],
            vec![slice(
                "x",
                "web",
                "web-1",
                vec![ready("10.0.0.1"), on_node(ready("10.0.0.3"), "node-b")],
            )],
        ),
        &node(),
    )
    .unwrap()
}

#[test]
fn external_addresses_get_both_scopes() {
    let maps = load_balancer(false, &[]);
    let all = ips(&["10.0.0.1", "10.0.0.3"]);
    for (addr, port) in [
        ("203.0.113.5", 80),
        ("198.51.100.7", 80),
        ("192.168.1.10", 30080),
    ] {
        let external = key(addr, port, ServiceScope::External);
        let internal = key(addr, port, ServiceScope::Internal);
        assert_eq!(backends_of(&maps, &external), all, "{addr}");
        assert_eq!(backends_of(&maps, &internal), all, "{addr}");
        assert_eq!(
            maps.frontends[&external].flags,
            service_flags::MASQUERADE,
            "{addr}"
        );
        assert_eq!(maps.frontends[&internal].flags, 0, "{addr}");
    }
    let cluster_ip = maps.frontends[&key("10.96.0.1", 80, ServiceScope::Internal)];
    let node_port = maps.frontends[&key("192.168.1.10", 30080, ServiceScope::External)];
    assert_eq!(
        cluster_ip.backend_set, node_port.backend_set,
        "every Cluster frontend of the port shares one set"
    );
    // 1 cluster IP + (external IP + LB IP + node address) × 2 scopes; the IPv6 external IP
    // and node address are of a family the Service does not serve, loopback and link-local
    // addresses never answer.
    assert_eq!(
        maps.frontends.len(),
        7,
        "{:?}",
        maps.frontends.keys().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(maps.tables.len(), 1);
    assert_eq!(maps.backends.len(), 2);
}

#[test]
fn external_traffic_local_keeps_local_endpoints_and_the_client_address() {
    let maps = load_balancer(true, &[]);
    for (addr, port) in [("203.0.113.5", 80), ("192.168.1.10", 30080)] {
        let external = key(addr, port, ServiceScope::External);
        let internal = key(addr, port, ServiceScope::Internal);
        assert_eq!(backends_of(&maps, &external), ips(&["10.0.0.1"]), "{addr}");
        assert_eq!(
            maps.frontends[&external].flags,
            service_flags::DROP_IF_EMPTY,
            "{addr}: no masquerade"
        );
        assert_eq!(
            backends_of(&maps, &internal),
            ips(&["10.0.0.1", "10.0.0.3"]),
            "{addr}: in-cluster clients reach every endpoint"
        );
    }
    assert_eq!(
        backends_of(&maps, &key("10.96.0.1", 80, ServiceScope::Internal)),
        ips(&["10.0.0.1", "10.0.0.3"]),
        "externalTrafficPolicy does not touch the cluster IP"
    );
    assert_eq!(maps.tables.len(), 2, "a Cluster set and a Local set");
    assert_eq!(
        maps.backends.len(),
        3,
        "10.0.0.1 is in both sets, with one id in each"
    );
}

#[test]
fn source_ranges_guard_load_balancer_ips_only() {
    let maps = load_balancer(false, &["192.0.2.0/24", "2001:db8:1::/48"]);
    for scope in [ServiceScope::External, ServiceScope::Internal] {
        let lb = maps.frontends[&key("198.51.100.7", 80, scope)];
        assert_ne!(lb.flags & service_flags::SOURCE_RANGES, 0, "{scope:?}");
        let external_ip = maps.frontends[&key("203.0.113.5", 80, scope)];
        assert_eq!(
            external_ip.flags & service_flags::SOURCE_RANGES,
            0,
            "{scope:?}"
        );
    }
    let service = maps.frontends[&key("198.51.100.7", 80, ServiceScope::External)].service;
    let ranges: Vec<(u32, u32, Addr)> = maps
        .source_ranges
        .iter()
        .map(|r| (r.service, r.key_prefix_len(), r.addr))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (service, 32 + 48, addr("2001:db8:1::")),
            (service, 32 + 96 + 24, addr("192.0.2.0")),
        ]
    );
    let range = maps.source_ranges.first().unwrap();
    assert_eq!(range.key().service_be.to_ne_bytes(), service.to_be_bytes());
    assert_eq!(
        SourceRange::from_key(range.key_prefix_len(), &range.key()),
        Some(*range)
    );
}

/// Whether source range `range` holds `client` (as the programs' trie lookup decides).
fn admits(range: &SourceRange, client: &str) -> bool {
    let client = addr(client);
    (0..range.prefix_len).all(|i| {
        let (byte, mask) = ((i / 8) as usize, 0x80 >> (i % 8));
        client[byte] & mask == range.addr[byte] & mask
    })
}

#[test]
fn an_ipv6_source_range_admits_no_ipv4_client() {
    let v4_clients = ["10.0.0.1", "0.0.0.0", "255.255.255.255", "192.0.2.9"];
    let v6_clients = [
        "fd00::1",
        "2001:db8::1",
        "::1",
        "::fffe:0:1",
        "::1:0:0:0",
        "ff02::1",
    ];
    let everyone = load_balancer(false, &["::/0"]);
    assert_eq!(
        everyone.source_ranges.len(),
        96,
        "one prefix per bit above /96"
    );
    for client in v6_clients {
        assert!(
            everyone.source_ranges.iter().any(|r| admits(r, client)),
            "::/0 admits {client}"
        );
    }
    let inside_block = load_balancer(false, &["::ffff:10.0.0.0/104", "2001:db8::/32"]);
    for maps in [&everyone, &inside_block] {
        for client in v4_clients {
            let admitted: Vec<&SourceRange> = maps
                .source_ranges
                .iter()
                .filter(|r| admits(r, client))
                .collect();
            assert!(admitted.is_empty(), "{client} admitted by {admitted:?}");
        }
    }
    let kept: Vec<u32> = inside_block
        .source_ranges
        .iter()
        .map(|r| r.prefix_len)
        .collect();
    assert_eq!(
        kept,
        [32],
        "2001:db8::/32 as written, the range inside the block left out"
    );
    let with_v4 = load_balancer(false, &["10.0.0.0/8", "::/0"]);
    assert!(with_v4.source_ranges.iter().any(|r| admits(r, "10.0.0.1")));
    assert!(!with_v4.source_ranges.iter().any(|r| admits(r, "192.0.2.9")));
}

#[test]
fn node_ports_only_for_node_port_and_load_balancer_services() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.ports = vec![service_port("http", 80, Some(30080))];
    let cluster_ip = compile(&state(vec![svc.clone()], vec![]), &node()).unwrap();
    assert_eq!(
        cluster_ip.frontends.len(),
        1,
        "a ClusterIP Service has no node port"
    );
    svc.kind = ServiceKind::NodePort;
    let node_port = compile(&state(vec![svc], vec![]), &node()).unwrap();
    let keys: BTreeSet<ServiceKey> = node_port.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            key("10.96.0.1", 80, ServiceScope::Internal),
            key("192.168.1.10", 30080, ServiceScope::Internal),
            key("192.168.1.10", 30080, ServiceScope::External),
        ])
    );
}

#[test]
fn node_ports_answer_on_the_addresses_of_this_nodes_node_object() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.ports = vec![service_port("http", 80, Some(30080))];
    svc.kind = ServiceKind::NodePort;
    let node_object = |name: &str, addresses: &[&str]| Node {
        name: name.into(),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        pod_cidrs: vec![],
        origin: Origin::default(),
    };
    let mut desired = state(vec![svc], vec![]);
    desired.nodes = vec![
        node_object("node-b", &["192.168.1.11"]),
        node_object("node-a", &["192.168.1.20", "fe80::20"]),
    ];
    let maps = compile(&desired, &node()).unwrap();
    let node_ports: BTreeSet<ServiceKey> = maps
        .frontends
        .keys()
        .filter(|k| k.port_h == 30080)
        .copied()
        .collect();
    assert_eq!(
        node_ports,
        BTreeSet::from([
            key("192.168.1.20", 30080, ServiceScope::Internal),
            key("192.168.1.20", 30080, ServiceScope::External),
        ]),
        "this node's Node addresses (link-local left out), not the host's nor another node's"
    );
    desired.nodes.retain(|n| n.name != "node-a");
    let maps = compile(&desired, &node()).unwrap();
    assert!(
        maps.frontends
            .contains_key(&key("192.168.1.10", 30080, ServiceScope::External)),
        "without its Node object, the node's own addresses"
    );
}

#[test]
fn headless_services_are_not_balanced() {
    let mut svc = service("x", "db", "10.96.0.1");
    svc.cluster_ips.clear();
    svc.external_ips = vec![ip("203.0.113.5")];
    let maps = compile(
        &state(
            vec![svc],
            vec![slice("x", "db", "db-1", vec![ready("10.0.0.1")])],
        ),
        &node(),
    )
    .unwrap();
    assert!(maps.frontends.is_empty() && maps.backends.is_empty() && maps.tables.is_empty());
}

#[test]
fn session_affinity_sets_the_timeout() {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.affinity_timeout_s = Some(10_800);
    let maps = compile(&state(vec![svc], vec![]), &node()).unwrap();
    assert_eq!(
        maps.frontends[&key("10.96.0.1", 80, ServiceScope::Internal)].affinity_timeout_s,
        10_800
    );
}

#[test]
fn the_first_service_keeps_a_contested_frontend() {
    let maps = compile(
        &state(
            vec![
                service("x", "second", "10.96.0.1"),
                service("x", "first", "10.96.0.1"),
            ],
            vec![
                slice("x", "first", "first-1", vec![ready("10.0.0.1")]),
                slice("x", "second", "second-1", vec![ready("10.0.0.2")]),
            ],
        ),
        &node(),
    )
    .unwrap();
    assert_eq!(
        backends_of(&maps, &key("10.96.0.1", 80, ServiceScope::Internal)),
        ips(&["10.0.0.1"])
    );
    assert_eq!(maps.maps.warnings.len(), 1, "{:?}", maps.maps.warnings);
    assert!(
        maps.maps.warnings[0].contains("x/second"),
        "{}",
        maps.maps.warnings[0]
    );
    assert!(
        maps.maps.warnings[0].contains("10.96.0.1:80/TCP"),
        "{}",
        maps.maps.warnings[0]
    );
}

#[test]
fn the_output_does_not_depend_on_input_order() {
    let mut services = vec![
        service("x", "a", "10.96.0.1"),
        service("x", "b", "10.96.0.2"),
        service("y", "a", "10.96.0.3"),
    ];
    let mut slices = vec![
        slice("x", "a", "a-1", vec![ready("10.0.0.1"), ready("10.0.0.2")]),
        slice("x", "a", "a-2", vec![ready("10.0.0.3")]),
        slice("x", "b", "b-1", vec![ready("10.0.1.1")]),
        slice("y", "a", "a-1", vec![ready("10.0.2.1")]),
    ];
    let first = compile(&state(services.clone(), slices.clone()), &node()).unwrap();
    services.reverse();
    slices.reverse();
    for s in &mut slices {
        s.endpoints.reverse();
    }
    let second = compile(&state(services, slices), &node()).unwrap();
    assert_eq!(first.frontends, second.frontends);
    assert_eq!(first.backends, second.backends);
    assert_eq!(first.tables, second.tables);
}

#[test]
fn a_set_larger_than_the_largest_table_names_the_service() {
    let endpoints: Vec<Endpoint> = (0..=u32::try_from(maglev::LARGE).unwrap())
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Endpoint {
                addresses: vec![IpAddr::from([10, a, b, c])],
                ..ready("10.0.0.1")
            }
        })
        .collect();
    let err = compile(
        &state(
            vec![service("x", "huge", "10.96.0.1")],
            vec![slice("x", "huge", "huge-1", endpoints)],
        ),
        &node(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("x/huge (svc.yaml:3)"), "{text}");
    assert!(text.contains("port http (80/TCP)"), "{text}");
    assert!(text.contains("16382 endpoints"), "{text}");
}

#[test]
fn ids_are_kept_by_identity_and_never_reused() {
    let services = vec![
        service("x", "b", "10.96.0.2"),
        service("x", "c", "10.96.0.3"),
    ];
    let slices = vec![
        slice("x", "b", "b-1", vec![ready("10.0.0.1"), ready("10.0.0.2")]),
        slice("x", "c", "c-1", vec![ready("10.0.1.1")]),
    ];
    let first = compile(&state(services.clone(), slices.clone()), &node()).unwrap();
    // A Service that sorts first appears, b loses 10.0.0.2 and gains 10.0.0.3.
    let mut changed_services = services;
    changed_services.push(service("x", "a", "10.96.0.1"));
    let changed_slices = vec![
        slice("x", "a", "a-1", vec![ready("10.0.2.1")]),
        slice("x", "b", "b-1", vec![ready("10.0.0.1"), ready("10.0.0.3")]),
        slice("x", "c", "c-1", vec![ready("10.0.1.1")]),
    ];
    let second = compile_with(&state(changed_services, changed_slices), &node(), &first).unwrap();
    let b = key("10.96.0.2", 80, ServiceScope::Internal);
    let c = key("10.96.0.3", 80, ServiceScope::Internal);
    assert_eq!(first.frontends[&c], second.frontends[&c], "c is untouched");
    assert_eq!(first.frontends[&b].service, second.frontends[&b].service);
    assert_eq!(
        first.frontends[&b].backend_set,
        second.frontends[&b].backend_set
    );
    let id_of = |maps: &Compiled, a: &str| {
        *maps
            .backends
            .iter()
            .find(|(_, be)| be.addr == addr(a))
            .unwrap()
            .0
    };
    assert_eq!(id_of(&first, "10.0.0.1"), id_of(&second, "10.0.0.1"));
    let highest_before = *first.backends.keys().max().unwrap();
    assert!(
        id_of(&second, "10.0.0.3") > highest_before,
        "new ids above the old ones"
    );
    assert!(id_of(&second, "10.0.2.1") > highest_before);
    let a = second.frontends[&key("10.96.0.1", 80, ServiceScope::Internal)];
    assert!(a.service > first.frontends[&c].service.max(first.frontends[&b].service));
    assert!(!second.backends.contains_key(&BACKEND_NONE));
    let removed = id_of(&first, "10.0.0.2");
    assert!(
        !second.backends.contains_key(&removed),
        "the id of a backend that left is not given to another"
    );
    let c_set = first.frontends[&c].backend_set;
    assert_eq!(first.tables[&c_set], second.tables[&c_set]);
}

#[test]
fn a_restarted_agent_recovers_every_id_from_the_maps() {
    let mut web = service("x", "web", "10.96.0.1");
    web.kind = ServiceKind::LoadBalancer;
    web.ports = vec![service_port("http", 80, Some(30080))];
    web.load_balancer_ips = vec![ip("198.51.100.7")];
    web.external_traffic_local = true;
    let input = state(
        vec![web, service("y", "db", "10.96.0.9")],
        vec![
            slice(
                "x",
                "web",
                "web-1",
                vec![ready("10.0.0.1"), on_node(ready("10.0.0.3"), "node-b")],
            ),
            slice("y", "db", "db-1", vec![ready("10.0.5.1")]),
        ],
    );
    // A history of changes, so that ids are not simply 1, 2, 3.
    let mut before = compile(
        &state(
            vec![service("z", "old", "10.96.0.5")],
            vec![slice("z", "old", "old-1", vec![ready("10.0.7.7")])],
        ),
        &node(),
    )
    .unwrap();
    before = compile_with(&input, &node(), &before).unwrap();
    // What the kernel holds, as `Dataplane::load_pinned` reads it back.
    let recovered = Compiled {
        maps: MapSet {
            services: ServiceMaps::recovered(before.flat.clone()),
            ..MapSet::default()
        },
        flat: FlatServices::default(),
    };
    let after = compile_with(&input, &node(), &recovered).unwrap();
    assert_eq!(after.flat, before.flat);
    let (old, new) = recovered.maps.services.changes(&after.maps.services);
    assert_eq!(old, new, "nothing to write after a restart");
    // And new identities get ids above every recovered one.
    let mut grown = input.clone();
    grown
        .services
        .push(Arc::new(service("a", "new", "10.96.0.20")));
    grown.endpoint_slices.push(Arc::new(slice(
        "a",
        "new",
        "new-1",
        vec![ready("10.0.9.1")],
    )));
    let next = compile_with(&grown, &node(), &after).unwrap();
    let new = next.frontends[&key("10.96.0.20", 80, ServiceScope::Internal)];
    assert!(new.service > before.frontends.values().map(|v| v.service).max().unwrap());
    assert!(*next.backends.keys().max().unwrap() > *before.backends.keys().max().unwrap());
}

/// Three Services, x/a, x/b, x/c, of two endpoints each.
fn three_services() -> DesiredState {
    state(
        vec![
            service("x", "a", "10.96.0.1"),
            service("x", "b", "10.96.0.2"),
            service("x", "c", "10.96.0.3"),
        ],
        vec![
            slice("x", "a", "a-1", vec![ready("10.0.1.1"), ready("10.0.1.2")]),
            slice("x", "b", "b-1", vec![ready("10.0.2.1"), ready("10.0.2.2")]),
            slice("x", "c", "c-1", vec![ready("10.0.3.1"), ready("10.0.3.2")]),
        ],
    )
}

/// Names of the Services whose compiled unit is not the one `before` had, sorted.
fn recompiled(before: &Compiled, after: &Compiled) -> Vec<String> {
    let old = &before.maps.services.units;
    let mut names: Vec<String> = after
        .maps
        .services
        .units
        .iter()
        .filter(|(name, unit)| old.get(name).is_none_or(|(_, u)| !Arc::ptr_eq(u, unit)))
        .map(|(name, _)| name.to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn only_the_service_whose_endpoints_changed_is_compiled_again() {
    let first = compile(&three_services(), &node()).unwrap();
    let mut changed = three_services();
    Arc::make_mut(&mut changed.endpoint_slices[1]).endpoints[1] = ready("10.0.2.9");
    let second = compile_with(&changed, &node(), &first).unwrap();
    assert_eq!(recompiled(&first, &second), ["x/b"]);
    let (old, new) = first.maps.services.changes(&second.maps.services);
    assert_eq!(old.frontends.len(), 1, "b's frontend only");
    assert_eq!(new.frontends.len(), 1);
    assert_eq!(
        old.backends.len() + new.backends.len(),
        4,
        "b's two backends before and after"
    );
    let same = compile_with(&changed, &node(), &second).unwrap();
    assert!(recompiled(&second, &same).is_empty(), "nothing changed");
}

#[test]
fn a_new_route_recompiles_only_the_services_of_that_address() {
    let first = compile(&three_services(), &node()).unwrap();
    let mut moved = node();
    moved.local_routes.insert(ip("10.0.3.2"), 9);
    let second = compile_with(&three_services(), &moved, &first).unwrap();
    assert_eq!(recompiled(&first, &second), ["x/c"]);
    let local: Vec<u32> = second
        .backends
        .iter()
        .filter(|(_, be)| be.flags & backend_flags::LOCAL != 0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(local.len(), 1, "10.0.3.2 is local now");
    let mut renamed = moved.clone();
    renamed.node_name = Some("node-z".into());
    let third = compile_with(&three_services(), &renamed, &second).unwrap();
    assert_eq!(
        recompiled(&second, &third).len(),
        3,
        "another node name may make any endpoint local"
    );
}

#[test]
fn a_frontend_let_go_by_the_first_service_goes_to_the_next() {
    let contested = state(
        vec![
            service("x", "first", "10.96.0.1"),
            service("x", "second", "10.96.0.1"),
        ],
        vec![slice("x", "second", "second-1", vec![ready("10.0.0.2")])],
    );
    let before = compile(&contested, &node()).unwrap();
    let frontend = key("10.96.0.1", 80, ServiceScope::Internal);
    assert!(
        backends_of(&before, &frontend).is_empty(),
        "first has it, without endpoints"
    );
    let mut released = contested.clone();
    Arc::make_mut(&mut released.services[0]).cluster_ips = vec![ip("10.96.0.7")];
    let after = compile_with(&released, &node(), &before).unwrap();
    assert_eq!(backends_of(&after, &frontend), ips(&["10.0.0.2"]));
    assert!(after.maps.warnings.is_empty(), "{:?}", after.maps.warnings);
}

/// A `LoadBalancer` Service `x/web` with `externalTrafficPolicy: Local` and health check
/// node port 32000, with ports `http` and `metrics` (both on 8080 and 9090 of each endpoint).
fn health_checked() -> Service {
    let mut svc = service("x", "web", "10.96.0.1");
    svc.kind = ServiceKind::LoadBalancer;
    svc.external_traffic_local = true;
    svc.health_check_node_port = Some(32000);
    svc.ports = vec![
        service_port("http", 80, Some(30080)),
        service_port("metrics", 81, Some(30081)),
    ];
    svc
}

fn health_checks(maps: &Compiled) -> Vec<HealthCheck> {
    maps.maps
        .services
        .health_checks()
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn a_health_check_counts_this_nodes_ready_endpoints_once_whatever_the_ports() {
    let mut web = slice(
        "x",
        "web",
        "web-1",
        vec![
            ready("10.0.0.1"),                                // routed to a local interface
            on_node(ready("10.0.0.2"), "node-a"),             // named on this node
            on_node(ready("10.0.0.3"), "node-b"),             // elsewhere
            on_node(terminating("10.0.0.4", true), "node-a"), // local, but draining
        ],
    );
    web.ports.push(EndpointPort {
        name: "metrics".into(),
        protocol: Protocol::Tcp,
        port: 9090,
    });
    let maps = compile(&state(vec![health_checked()], vec![web]), &node()).unwrap();
    assert_eq!(
        health_checks(&maps),
        [HealthCheck {
            namespace: "x".into(),
            name: "web".into(),
            port: 32000,
            local_endpoints: 2,
        }]
    );
    // The same endpoints as the Local set the node port forwards to.
    let frontend = key("192.168.1.10", 30080, ServiceScope::External);
    assert_eq!(
        backends_of(&maps, &frontend),
        ips(&["10.0.0.1", "10.0.0.2"])
    );
}

#[test]
fn a_health_check_reports_zero_when_only_draining_or_remote_endpoints_are_left() {
    let slices = vec![slice(
        "x",
        "web",
        "web-1",
        vec![
            on_node(ready("10.0.0.3"), "node-b"),
            on_node(terminating("10.0.0.4", true), "node-a"),
        ],
    )];
    let maps = compile(&state(vec![health_checked()], slices), &node()).unwrap();
    assert_eq!(health_checks(&maps)[0].local_endpoints, 0);
    // No endpoint at all: the port is still served, with 0.
    let maps = compile(&state(vec![health_checked()], Vec::new()), &node()).unwrap();
    assert_eq!(health_checks(&maps)[0].local_endpoints, 0);
    let mut plain = health_checked();
    plain.health_check_node_port = None;
    let maps = compile(&state(vec![plain], Vec::new()), &node()).unwrap();
    assert!(health_checks(&maps).is_empty());
}

#[test]
fn a_health_check_follows_its_endpoints_across_compilations() {
    let one = state(
        vec![health_checked()],
        vec![slice(
            "x",
            "web",
            "web-1",
            vec![on_node(ready("10.0.0.2"), "node-a")],
        )],
    );
    let first = compile(&one, &node()).unwrap();
    assert_eq!(health_checks(&first)[0].local_endpoints, 1);
    // Unchanged inputs reuse the unit, count included.
    let again = compile_with(&one, &node(), &first).unwrap();
    assert_eq!(health_checks(&again)[0].local_endpoints, 1);
    let moved = state(
        vec![health_checked()],
        vec![slice(
            "x",
            "web",
            "web-1",
            vec![on_node(ready("10.0.0.2"), "node-b")],
        )],
    );
    let after = compile_with(&moved, &node(), &again).unwrap();
    assert_eq!(health_checks(&after)[0].local_endpoints, 0);
}

/// A small deterministic generator (xorshift), so that a failure replays.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap()
    }
}

/// One random change to `state`, as a source makes it: a new object where one changed,
/// the others passed on as they are. Cluster IPs come from a small pool so that Services
/// contest frontends; slices move between Services and turn legacy.
fn random_change(state: &mut DesiredState, dice: &mut Dice) {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let namespaces = ["x", "x-y"];
    let cluster_ip = |dice: &mut Dice| format!("10.96.0.{}", 1 + dice.below(6));
    let endpoint =
        |dice: &mut Dice| ready(&format!("10.0.{}.{}", dice.below(3), 1 + dice.below(9)));
    match dice.below(8) {
        0 | 1 => {
            let (ns, name) = (namespaces[dice.below(2)], names[dice.below(names.len())]);
            let service = Arc::new(service(ns, name, &cluster_ip(dice)));
            match state.services.iter().position(|s| s.key() == service.key()) {
                Some(i) => state.services[i] = service,
                None => state.services.push(service),
            }
        }
        2 if state.services.len() > 6 => {
            state.services.remove(dice.below(state.services.len()));
        }
        3 | 4 => {
            let (ns, svc) = (namespaces[dice.below(2)], names[dice.below(names.len())]);
            let name = format!("{svc}-{}", dice.below(2));
            let endpoints = (0..=dice.below(3)).map(|_| endpoint(dice)).collect();
            let mut new = slice(ns, svc, &name, endpoints);
            new.legacy = dice.below(4) == 0;
            let new = Arc::new(new);
            match state
                .endpoint_slices
                .iter()
                .position(|s| s.key() == new.key())
            {
                Some(i) => state.endpoint_slices[i] = new,
                None => state.endpoint_slices.push(new),
            }
        }
        5 if state.endpoint_slices.len() > 10 => {
            state
                .endpoint_slices
                .remove(dice.below(state.endpoint_slices.len()));
        }
        6 if !state.endpoint_slices.is_empty() => {
            // A slice relabelled to another Service.
            let i = dice.below(state.endpoint_slices.len());
            let mut moved = EndpointSlice::clone(&state.endpoint_slices[i]);
            moved.service = names[dice.below(names.len())].to_owned();
            state.endpoint_slices[i] = Arc::new(moved);
        }
        _ => {
            // An equal object under a new address (a source that rebuilt it).
            if let Some(i) = (!state.services.is_empty()).then(|| dice.below(state.services.len()))
            {
                state.services[i] = Arc::new(Service::clone(&state.services[i]));
            }
        }
    }
    state.sort_services_and_slices();
}

/// What two compilations must agree on: every map entry, ids to come, who has which
/// frontend, which Services are contested, sizes, and the warnings.
fn assert_same_output(
    incremental: &(ServiceMaps, Vec<String>),
    full: &(ServiceMaps, Vec<String>),
    step: usize,
) {
    let (a, b) = (&incremental.0, &full.0);
    assert_eq!(a.flatten(), b.flatten(), "step {step}: map entries");
    assert_eq!(a.next, b.next, "step {step}: next ids");
    assert_eq!(a.owners, b.owners, "step {step}: frontend owners");
    assert_eq!(a.contested, b.contested, "step {step}: contested");
    assert_eq!(a.counts, b.counts, "step {step}: counts");
    assert_eq!(a.counts, {
        let mut counts = Counts::default();
        a.units.values().for_each(|u| counts.add(u));
        counts
    });
    assert_eq!(a.seen, b.seen, "step {step}: what was read");
    let names = |m: &ServiceMaps| {
        let mut n: Vec<String> = m.services().map(|(n, _)| n.to_owned()).collect();
        n.sort();
        n
    };
    assert_eq!(names(a), names(b), "step {step}: units");
    assert_eq!(incremental.1, full.1, "step {step}: warnings");
    assert_ids_hold(a, step);
}

/// Every Service with frontends has an id of its own, and so has every backend set.
fn assert_ids_hold(maps: &ServiceMaps, step: usize) {
    let mut services = BTreeSet::new();
    let mut sets = BTreeSet::new();
    for (name, unit) in maps.services() {
        if unit.frontends.is_empty() {
            continue;
        }
        assert!(unit.id != 0, "step {step}: {name} has frontends and id 0");
        assert!(
            services.insert(unit.id),
            "step {step}: id {} twice",
            unit.id
        );
        for set in &unit.sets {
            assert!(
                set.id != 0 && sets.insert(set.id),
                "step {step}: set {}",
                set.id
            );
        }
    }
}

#[test]
fn compiling_what_changed_gives_what_compiling_everything_gives() {
    let node = node();
    let mut dice = Dice(0x5eed_1234_abcd_0001);
    let mut state = DesiredState::default();
    let mut previous = ServiceMaps::default();
    let mut incremental_steps = 0;
    for step in 0..3000 {
        random_change(&mut state, &mut dice);
        let facts = NodeFacts::of(&node, &state.nodes);
        let context = Context {
            node: &node,
            facts: &facts,
        };
        let full = compile_all(&state, &context, &previous).unwrap();
        let incremental = match incremental::compile(&state, &context, &previous) {
            Some(result) => {
                incremental_steps += 1;
                result.unwrap()
            }
            None => full.clone(),
        };
        assert_same_output(&incremental, &full, step);
        previous = incremental.0;
    }
    assert!(
        incremental_steps > 2900,
        "the walks gave up {} times",
        3000 - incremental_steps
    );
}

#[test]
fn a_headless_service_that_gets_a_cluster_ip_gets_an_id_of_its_own() {
    let mut headless = service("x", "a", "10.96.0.1");
    headless.cluster_ips.clear();
    let first = compile(
        &state(vec![headless, service("x", "b", "10.96.0.2")], vec![]),
        &node(),
    )
    .unwrap();
    let mut with_ip = state(
        vec![
            service("x", "a", "10.96.0.1"),
            service("x", "b", "10.96.0.2"),
        ],
        vec![],
    );
    with_ip.sort_services_and_slices();
    let second = compile_with(&with_ip, &node(), &first).unwrap();
    assert_ids_hold(&second.maps.services, 0);
    let ids: Vec<u32> = second.frontends.values().map(|v| v.service).collect();
    assert!(ids.iter().all(|id| *id != 0), "{ids:?}");
}

#[test]
fn a_state_out_of_key_order_is_compiled_whole_and_the_same() {
    let first = compile(&three_services(), &node()).unwrap();
    let mut shuffled = three_services();
    shuffled.services.reverse();
    shuffled.endpoint_slices.reverse();
    let facts = NodeFacts::of(&node(), &[]);
    let context = Context {
        node: &node(),
        facts: &facts,
    };
    assert!(incremental::compile(&shuffled, &context, &first.maps.services).is_none());
    let second = compile_with(&shuffled, &node(), &first).unwrap();
    assert_eq!(second.flat, first.flat);
    assert!(
        recompiled(&first, &second).is_empty(),
        "equal inputs reuse their units"
    );
}

#[test]
fn one_slice_replaced_among_many_compiles_one_service_and_copies_one_shard() {
    let mut state = DesiredState::default();
    for i in 0..2000 {
        let name = format!("s{i:04}");
        let ip = format!("10.96.{}.{}", i / 250, 1 + i % 250);
        state.services.push(Arc::new(service("x", &name, &ip)));
        let ep = format!("10.1.{}.{}", i / 250, 1 + i % 250);
        state.endpoint_slices.push(Arc::new(slice(
            "x",
            &name,
            &format!("{name}-1"),
            vec![ready(&ep)],
        )));
    }
    state.sort_services_and_slices();
    let first = compile(&state, &node()).unwrap();
    let mut next = state.clone();
    let i = next
        .endpoint_slices
        .iter()
        .position(|s| s.name == "s0777-1")
        .unwrap();
    next.endpoint_slices[i] = Arc::new(slice("x", "s0777", "s0777-1", vec![ready("10.2.0.1")]));
    let second = compile_with(&next, &node(), &first).unwrap();
    assert_eq!(recompiled(&first, &second), ["x/s0777"]);
    let (old, new) = first.maps.services.changed_units(&second.maps.services);
    assert_eq!((old.len(), new.len()), (1, 1));
    let seen = second.maps.services.seen.as_ref().unwrap();
    let before = first.maps.services.seen.as_ref().unwrap();
    assert_eq!(
        seen.services.shared_chunks(&before.services),
        (8, 8),
        "no Service changed"
    );
    assert_eq!(
        seen.slices.shared_chunks(&before.slices),
        (7, 8),
        "one slice replaced: one chunk of 256 copied"
    );
    assert!(
        Arc::ptr_eq(&second.maps.services.owners, &first.maps.services.owners),
        "no frontend moved"
    );
}
