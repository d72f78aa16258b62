use std::collections::BTreeSet;
use std::sync::Arc;

use dataplane_abi::{FlowEvent, v4_mapped};

use super::*;
use crate::compile::{self, NodeView};
use crate::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, LabelSelector, Pod, Policy, Protocol,
    Service, ServicePort,
};

/// x/a (local, ifindex 4) isolated for ingress by x/deny and x/also; x/b remote, the one
/// endpoint of Service x/web (10.96.0.10, TCP 80 → 8080).
fn names() -> Catalog {
    let labels = |v: &str| [("app".to_owned(), v.to_owned())].into();
    let pod = |name: &str, ip: &str| Pod {
        namespace: "x".into(),
        name: name.into(),
        labels: labels(name),
        ips: vec![ip.parse().unwrap()],
        ..Pod::default()
    };
    let deny = |name: &str| Policy {
        namespace: "x".into(),
        name: name.into(),
        pod_selector: LabelSelector {
            match_labels: labels("a"),
            ..LabelSelector::default()
        },
        ingress: Some(vec![]),
        ..Policy::default()
    };
    let web = Service {
        namespace: "x".into(),
        name: "web".into(),
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        ports: vec![ServicePort::tcp(80, 8080)],
        ..Service::default()
    };
    let web_endpoints = EndpointSlice {
        namespace: "x".into(),
        name: "web-1".into(),
        service: "web".into(),
        ports: vec![EndpointPort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.2".parse().unwrap()],
            ready: true,
            serving: true,
            ..Endpoint::default()
        }],
        ..EndpointSlice::default()
    };
    let state = DesiredState {
        pods: vec![
            Arc::new(pod("a", "10.0.0.1")),
            Arc::new(pod("b", "10.0.0.2")),
        ],
        policies: vec![Arc::new(deny("deny")), Arc::new(deny("also"))],
        services: vec![Arc::new(web)],
        endpoint_slices: vec![Arc::new(web_endpoints)],
        ..DesiredState::default()
    };
    let node = NodeView {
        host_addrs: BTreeSet::new(),
        local_routes: [("10.0.0.1".parse().unwrap(), 4)].into(),
        ..NodeView::default()
    };
    Catalog::new(&state, &compile::compile(&state, &node).unwrap())
}

fn denied_syn() -> FlowEvent {
    FlowEvent {
        time_ns: 5,
        src: v4_mapped([10, 0, 0, 2]),
        dst: v4_mapped([10, 0, 0, 1]),
        src_port_h: 40000,
        dst_port_h: 81,
        proto: proto::TCP,
        direction: Direction::Ingress as u8,
        verdict: FlowVerdict::Dropped as u8,
        flags: flow_flags::HEADERS,
        reason: DropReason::PolicyDenied as u32,
        ifindex: 4,
        peer_class: 2,
        policy: FLOW_UNKNOWN,
        rule: FLOW_UNKNOWN,
        tcp_flags: 0x02,
        _pad: [0; 3],
        service: FLOW_UNKNOWN,
        _pad2: 0,
    }
}

#[test]
fn a_denied_event_is_named_and_explained() {
    let r = FlowRecord::from_event(&denied_syn(), &names(), &Clock::now()).unwrap();
    assert_eq!(r.verdict, Verdict::Dropped);
    assert_eq!(r.reason, "policy_denied");
    assert_eq!(r.src.name.as_deref(), Some("x/b"));
    assert_eq!(r.dst.port, Some(81));
    assert_eq!(r.pod.as_deref(), Some("x/a"));
    assert_eq!(r.isolated_by, ["x/deny", "x/also"]);
    assert_eq!(
        r.summary,
        "isolated by policy x/deny (and x/also) and nothing allows it"
    );
    assert_eq!(r.tcp_flags.as_deref(), Some("SYN"));
    let line = r.to_string();
    assert!(
        line.contains("x/b:40000 (10.0.0.2) -> x/a:81 (10.0.0.1)  TCP SYN  ingress  DROPPED"),
        "{line}"
    );
}

#[test]
fn a_translated_event_names_its_service() {
    let names = names();
    let web = (1..100)
        .find(|id| names.service(*id) == Some("x/web"))
        .expect("x/web has an id");
    // x/a's connection to 10.96.0.10:80, translated to x/b:8080 and allowed.
    let ev = FlowEvent {
        src: v4_mapped([10, 0, 0, 1]),
        dst: v4_mapped([10, 0, 0, 2]),
        src_port_h: 40000,
        dst_port_h: 8080,
        direction: Direction::Egress as u8,
        verdict: FlowVerdict::Passed as u8,
        reason: PassReason::NotIsolated as u32,
        service: web,
        ..denied_syn()
    };
    let r = FlowRecord::from_event(&ev, &names, &Clock::now()).unwrap();
    assert_eq!(r.service.as_deref(), Some("x/web"));
    assert_eq!(r.dst.name.as_deref(), Some("x/b"));
    let line = r.to_string();
    assert!(
        line.contains("x/a:40000 (10.0.0.1) -> x/b:8080 (10.0.0.2) via service x/web  TCP SYN"),
        "{line}"
    );
    assert_eq!(
        FlowRecord::from_event(&denied_syn(), &names, &Clock::now())
            .unwrap()
            .service,
        None,
        "a packet sent to a pod went through no Service"
    );
    let gone = FlowEvent {
        service: web + 1000,
        ..ev
    };
    let r = FlowRecord::from_event(&gone, &names, &Clock::now()).unwrap();
    assert_eq!(r.service.as_deref(), Some(&*format!("#{}", web + 1000)));
}

#[test]
fn a_malformed_event_reports_no_headers() {
    let ev = FlowEvent {
        flags: 0,
        reason: DropReason::Malformed as u32,
        ..denied_syn()
    };
    let r = FlowRecord::from_event(&ev, &names(), &Clock::now()).unwrap();
    assert_eq!(r.src.ip, None);
    assert_eq!(r.proto, "?");
    assert_eq!(r.tcp_flags, None);
}

#[test]
fn events_from_a_newer_program_are_skipped() {
    let ev = FlowEvent {
        reason: 999,
        ..denied_syn()
    };
    assert_eq!(FlowRecord::from_event(&ev, &names(), &Clock::now()), None);
}

#[test]
fn the_log_keeps_the_newest_numbers_them_and_tallies_per_isolating_policy() {
    let log = FlowLog::new(2);
    let base = FlowRecord::from_event(&denied_syn(), &names(), &Clock::now()).unwrap();
    for port in [1, 2, 3] {
        let mut r = base.clone();
        r.dst.port = Some(port);
        log.push(r);
    }
    let recent = log.recent(&FlowFilter::default(), None);
    let seen: Vec<(u64, Option<u16>)> = recent.iter().map(|r| (r.seq, r.dst.port)).collect();
    assert_eq!(seen, [(2, Some(2)), (3, Some(3))]);
    let tallies = log.tallies();
    assert_eq!(tallies.len(), 2);
    assert!(tallies.values().all(|n| *n == 3));
    let (snapshot, mut feed) = log.follow(&FlowFilter::default(), 1);
    assert_eq!(snapshot.len(), 1);
    log.push(base);
    assert_eq!(
        feed.try_recv().unwrap().seq,
        4,
        "later flows come through the feed"
    );
}

#[test]
fn filters_match_either_end() {
    let r = FlowRecord::from_event(&denied_syn(), &names(), &Clock::now()).unwrap();
    let f = |q: &[(&str, &str)]| {
        let params: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        FlowFilter::from_query(&params).unwrap().matches(&r)
    };
    assert!(f(&[("pod", "x/b")]));
    assert!(f(&[("pod", "x/a"), ("port", "81"), ("verdict", "dropped")]));
    assert!(f(&[("namespace", "x")]));
    assert!(!f(&[("namespace", "y")]));
    assert!(!f(&[("verdict", "allowed")]));
    assert!(!f(&[("port", "80")]));
    assert!(FlowFilter::from_query(&[("verdict".into(), "maybe".into())]).is_err());
}

#[test]
fn records_round_trip_through_json() {
    let r = FlowRecord::from_event(&denied_syn(), &names(), &Clock::now()).unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#""verdict":"dropped""#), "{json}");
    let back: FlowRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}
