//! The Service maps in the kernel: what the agent writes is what it compiled, through
//! additions, endpoint changes, a backend set changing Maglev tier and removals; a restarted
//! agent reads them back, recovers every id and rewrites nothing.
//!
//! Maps are pinned under a bpffs folder of this run only, removed on every path. No network
//! namespace is touched: only maps are written.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use dataplane_abi::maglev::Tier;
use dataplane_abi::proto;
use testbed::RunTag;
use weir::compile::{self, FlatServices, MapSet, NodeView};
use weir::dataplane::Dataplane;
use weir::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, Protocol, Service, ServiceKind,
    ServicePort, TargetPort,
};
use weir::pins::Pins;

/// Removes the run's pins on every path.
struct PinGuard(Pins);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = self.0.remove_all();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        namespace: "x".into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
        }],
        ..Service::default()
    }
}

/// A slice of `x/service` with `n` ready endpoints 10.`subnet`.0.1.. on port 8080.
fn slice(service: &str, subnet: u8, n: u8) -> EndpointSlice {
    EndpointSlice {
        namespace: "x".into(),
        name: format!("{service}-1"),
        service: service.into(),
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints: (1..=n)
            .map(|i| Endpoint {
                addresses: vec![IpAddr::from([10, subnet, 0, i])],
                ready: true,
                serving: true,
                node_name: Some(if i % 2 == 0 { "node-a" } else { "node-b" }.into()),
                ..Endpoint::default()
            })
            .collect(),
        ..EndpointSlice::default()
    }
}

fn node() -> NodeView {
    NodeView {
        host_addrs: BTreeSet::from([ip("192.168.1.10")]),
        node_name: Some("node-a".into()),
        ..NodeView::default()
    }
}

/// `web` (n endpoints), `lb` (a `LoadBalancer` with source ranges and local external traffic,
/// 4 endpoints), `empty` (no endpoint).
fn state(web_endpoints: u8) -> DesiredState {
    let mut lb = service("lb", "10.96.0.2");
    lb.kind = ServiceKind::LoadBalancer;
    lb.ports[0].node_port = Some(30080);
    lb.load_balancer_ips = vec![ip("198.51.100.7")];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    lb.external_traffic_local = true;
    lb.affinity_timeout_s = Some(600);
    DesiredState {
        services: vec![
            Arc::new(service("web", "10.96.0.1")),
            Arc::new(lb),
            Arc::new(service("empty", "10.96.0.3")),
        ],
        endpoint_slices: vec![
            Arc::new(slice("web", 1, web_endpoints)),
            Arc::new(slice("lb", 2, 4)),
        ],
        ..DesiredState::default()
    }
}

/// The Service part of a map set, as plain maps.
fn services_of(maps: &MapSet) -> FlatServices {
    maps.services.flatten()
}

/// Every frontend with backends finds its table, in its tier; every slot its backend.
fn assert_chains_whole(maps: &FlatServices, step: &str) {
    for (key, value) in &maps.frontends {
        if value.backend_count == 0 {
            continue;
        }
        let table = maps
            .tables
            .get(&value.backend_set)
            .unwrap_or_else(|| panic!("{step}: frontend {key:?} has no table"));
        assert_eq!(table.tier as u8, value.maglev, "{step}: {key:?}");
        for id in &table.slots {
            assert!(
                maps.backends.contains_key(id),
                "{step}: table {} names missing backend {id}",
                value.backend_set
            );
        }
    }
}

/// Applies `state` with ids kept from what the dataplane holds, restarts the dataplane on
/// its pins, and checks what the kernel holds against the compilation; then compiles again
/// with the recovered ids and checks that nothing needs writing.
fn apply_and_restart(dp: Dataplane, pins: &Pins, state: &DesiredState, step: &str) -> Dataplane {
    let mut dp = dp;
    let compiled = compile::compile_with(state, &node(), dp.applied()).unwrap();
    dp.sync_maps(&compiled)
        .unwrap_or_else(|e| panic!("{step}: {e:?}"));
    let slot = dp
        .reader()
        .and_then(|r| r.slot())
        .expect("reading the epoch");
    drop(dp);
    let mut dp = Dataplane::load_pinned(pins).expect("reloading on the pins");
    assert_ne!(
        dp.reader()
            .and_then(|r| r.slot())
            .expect("reading the epoch"),
        slot,
        "{step}: a restart starts a new generation, so that this agent's programs judge \
         tracked connections again"
    );
    let held = services_of(dp.applied());
    assert_eq!(
        held,
        services_of(&compiled),
        "{step}: the kernel holds the compilation"
    );
    assert_chains_whole(&held, step);
    let again = compile::compile_with(state, &node(), dp.applied()).unwrap();
    assert_eq!(
        services_of(&again),
        services_of(&compiled),
        "{step}: recovered ids give the same maps"
    );
    let written = dp.sync_maps(&again).unwrap();
    assert_eq!(
        (written.upserts, written.removals),
        (0, 0),
        "{step}: a restart rewrites nothing"
    );
    dp
}

#[test]
fn the_kernel_holds_what_was_compiled_and_a_restart_rewrites_nothing() {
    testbed::require_root!();
    let pins = Pins::new(PathBuf::from(format!(
        "/sys/fs/bpf/weir-test-svc-{}",
        RunTag::random().as_str()
    )));
    let _guard = PinGuard(pins.clone());
    let mut dp = Dataplane::load_pinned(&pins).expect("loading on fresh pins");

    dp = apply_and_restart(dp, &pins, &state(3), "three endpoints");
    let before = services_of(dp.applied());
    let web = before
        .frontends
        .values()
        .find(|v| v.backend_count == 3)
        .copied()
        .unwrap();
    assert_eq!(before.tables[&web.backend_set].tier, Tier::Small);
    assert_eq!(before.source_ranges.len(), 1);
    assert!(before.frontends.keys().all(|k| k.proto == proto::TCP));

    dp = apply_and_restart(dp, &pins, &state(4), "one endpoint more");
    let after = services_of(dp.applied());
    let changed: Vec<_> = after
        .frontends
        .iter()
        .filter(|(k, v)| before.frontends.get(*k) != Some(*v))
        .collect();
    assert_eq!(changed.len(), 1, "only web's frontend changes (its count)");
    assert_eq!(after.backends.len(), before.backends.len() + 1);

    dp = apply_and_restart(dp, &pins, &state(13), "thirteen endpoints: a medium table");
    let grown = services_of(dp.applied());
    let web_grown = grown.frontends[changed[0].0];
    assert_eq!(
        web_grown.backend_set, web.backend_set,
        "the set keeps its id"
    );
    assert_eq!(grown.tables[&web.backend_set].tier, Tier::Medium);

    let mut fewer = state(2);
    fewer.services.retain(|s| s.name != "lb");
    dp = apply_and_restart(dp, &pins, &fewer, "back to small, lb removed");
    assert!(services_of(dp.applied()).source_ranges.is_empty());

    dp = apply_and_restart(dp, &pins, &DesiredState::default(), "no Service");
    assert_eq!(services_of(dp.applied()), FlatServices::default());
    drop(dp);
}
