//! Checks of the two-node cluster itself, with no agent: the client reaches the pods of both
//! nodes by their addresses and the pods of one node reach those of the other, each seen
//! with its own address; external IPs are routed where a test points them; the manifests
//! are ones the agent reads; teardown leaves nothing behind.

use std::net::{IpAddr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;

use crate::{Cluster, Family, PodSpec, Proto, TempDir, exchange_from, netns_path};

/// Pods `x/a`, `x/b` on `node1` and `x/c`, `x/d` on `node2`.
fn two_by_two() -> Cluster {
    let pod = |name: &str| PodSpec::new("x", name).label("pod", name);
    Cluster::builder()
        .pods("node1", [pod("a"), pod("b")])
        .pods("node2", [pod("c"), pod("d")])
        .build()
}

/// One request per protocol to each pod of `to` (id, address), from address `src` of
/// namespace `from`: panics unless each pod answers as itself and saw `src`.
fn assert_reached_unchanged(from: &crate::Netns, src: IpAddr, to: &[(String, IpAddr)], what: &str) {
    for proto in Proto::ALL {
        for (pod, ip) in to {
            let dst = SocketAddr::new(*ip, 80);
            let answer = from
                .run(|| exchange_from(src, dst, proto))
                .unwrap_or_else(|e| panic!("{what}: {proto} {src} → {pod} ({dst}): {e}"));
            assert_eq!(&answer.pod, pod, "{what}: {proto} to {dst}");
            assert_eq!(
                answer.peer.ip(),
                src,
                "{what}: {proto} {src} → {pod} arrived from another address"
            );
        }
    }
}

#[test]
fn the_client_reaches_pods_of_both_nodes_and_pods_reach_across_nodes() {
    crate::require_root!();
    let cluster = two_by_two();
    for family in Family::ALL {
        let targets = |ids: &[&str]| -> Vec<(String, IpAddr)> {
            ids.iter()
                .map(|id| ((*id).to_owned(), cluster.pod(id).ip(family)))
                .collect()
        };
        let everyone = targets(&["x/a", "x/b", "x/c", "x/d"]);
        for n in 0..2 {
            let src = cluster.client_ip(family, n);
            assert_reached_unchanged(cluster.client(), src, &everyone, "client");
        }
        for (from, to) in [("x/a", ["x/c", "x/d"]), ("x/d", ["x/a", "x/b"])] {
            let pod = cluster.pod(from);
            let what = format!("{from} on {}", cluster.node_of(from).name());
            assert_reached_unchanged(pod.netns(), pod.ip(family), &targets(&to), &what);
        }
    }
}

#[test]
fn nodes_route_by_default_through_their_uplink_and_the_client_follows_external_routes() {
    crate::require_root!();
    let cluster = two_by_two();
    for node in cluster.nodes() {
        for flag in ["-4", "-6"] {
            let routes = ip_output(node.netns(), &[flag, "route", "show", "default"]);
            assert!(
                routes.contains(&format!("dev {}", crate::UPLINK)),
                "{} {flag}: default route {routes:?}",
                node.name()
            );
        }
    }
    let lb: IpAddr = "10.100.1.10".parse().unwrap();
    let lb6: IpAddr = "fd00:100:1::10".parse().unwrap();
    let via = |ip: IpAddr| {
        let text = ip_output(cluster.client(), &["route", "get", &ip.to_string()]);
        cluster
            .nodes()
            .iter()
            .find(|n| {
                let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
                text.contains(&format!("via {} ", n.ip(family)))
            })
            .map_or_else(
                || panic!("route to {ip} through no node: {text}"),
                crate::ClusterNode::name,
            )
    };
    assert_eq!(
        (via(lb), via(lb6)),
        ("node1", "node1"),
        "the range's default"
    );
    cluster.route_external(lb, "node2");
    cluster.route_external(lb6, "node2");
    assert_eq!((via(lb), via(lb6)), ("node2", "node2"));
    cluster.route_external_range("node2");
    cluster.route_external(lb, "node1");
    let other: IpAddr = "10.100.1.11".parse().unwrap();
    assert_eq!((via(lb), via(other)), ("node1", "node2"));
}

#[test]
fn cluster_manifests_place_pods_on_their_nodes_and_pass_weir_check() {
    crate::require_root!();
    let cluster = two_by_two();
    let dir = TempDir::new("manifests");
    cluster.write_manifests(dir.path());
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    };
    assert!(read("pod-x-c.yaml").contains("nodeName: \"node2\""));
    let node1 = read("node-node1.yaml");
    for expected in ["10.98.1.0/24", "fd98:1::/64", "10.100.0.1", "fd00:100::1"] {
        assert!(node1.contains(expected), "{expected} missing in\n{node1}");
    }
    let out = Command::new(crate::weir_binary())
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("running weir check");
    assert!(
        out.status.success(),
        "weir check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_panicking_test_leaves_no_cluster_namespace_behind() {
    crate::require_root!();
    let mut created = Vec::new();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let cluster = two_by_two();
        let namespaces = [cluster.lan(), cluster.client()]
            .into_iter()
            .chain(cluster.nodes().iter().map(crate::ClusterNode::netns))
            .chain(cluster.pods().iter().map(crate::Pod::netns));
        created.extend(namespaces.map(|n| n.name().to_owned()));
        panic!("deliberate panic with a cluster alive");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    assert_eq!(created.len(), 8, "lan, client, two nodes, four pods");
    for name in &created {
        assert!(!netns_path(name).exists(), "{name} survived the panic");
    }
}

/// `ip -n NAME ARGS` in `netns`, its standard output; panics when it fails.
fn ip_output(netns: &crate::Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns.name()])
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        netns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
