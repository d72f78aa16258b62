//! Loader tests for Services, `EndpointSlices`, legacy `Endpoints` and Nodes: manifests in,
//! model or located errors out.

use std::net::IpAddr;
use std::path::Path;

use super::tests::yaml;
use super::*;
use crate::model::{
    Endpoint, EndpointPort, EndpointSlice, Labels, Node, Protocol, Service, ServiceKind,
    ServicePort, TargetPort,
};

fn load(text: &str) -> Loaded {
    load_str(Path::new("test.yaml"), &yaml(text)).unwrap_or_else(|error| panic!("{error}"))
}

fn errors(text: &str) -> Vec<String> {
    let error = load_str(Path::new("test.yaml"), &yaml(text)).expect_err("the manifest loaded");
    error.errors.iter().map(ToString::to_string).collect()
}

/// A Service `web` in namespace `shop` whose `spec` is `spec`, indented by two spaces: the
/// first line of `spec` is line 7 of the file.
fn service_yaml(spec: &str) -> String {
    let spec: String = yaml(spec)
        .lines()
        .flat_map(|line| ["  ", line, "\n"])
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n{spec}"
    )
}

fn service(spec: &str) -> Service {
    let loaded = load_str(Path::new("test.yaml"), &service_yaml(spec));
    let loaded = loaded.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.state.services.len(), 1);
    Service::clone(&loaded.state.services[0])
}

fn service_errors(spec: &str) -> Vec<String> {
    let error = load_str(Path::new("test.yaml"), &service_yaml(spec)).expect_err("loaded");
    error.errors.iter().map(ToString::to_string).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| ip(text)).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn tcp(name: &str, port: u16, target_port: TargetPort) -> ServicePort {
    ServicePort {
        name: name.to_owned(),
        protocol: Protocol::Tcp,
        port,
        target_port,
        node_port: None,
    }
}

#[test]
fn a_minimal_service_gets_kubernetes_defaults() {
    let service = service("ports: [{port: 80}]");
    let expected = Service {
        namespace: "shop".to_owned(),
        name: "web".to_owned(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![],
        ports: vec![tcp("", 80, TargetPort::Number(80))],
        selector: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        affinity_timeout_s: None,
        external_traffic_local: false,
        internal_traffic_local: false,
        health_check_node_port: None,
        origin: Origin {
            file: "test.yaml".into(),
            line: 1,
        },
    };
    assert_eq!(service, expected);
}

#[test]
fn target_port_zero_or_empty_means_the_port_itself() {
    let service = service(
        "
        ports:
        - {name: a, port: 80, targetPort: 0}
        - {name: b, port: 81, targetPort: ''}
        - {name: c, port: 82, targetPort: http}
        - {name: d, port: 83, targetPort: 8083, protocol: UDP}
        ",
    );
    let targets: Vec<(u16, Protocol, TargetPort)> = service
        .ports
        .iter()
        .map(|port| (port.port, port.protocol, port.target_port.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (80, Protocol::Tcp, TargetPort::Number(80)),
            (81, Protocol::Tcp, TargetPort::Number(81)),
            (82, Protocol::Tcp, TargetPort::Named("http".to_owned())),
            (83, Protocol::Udp, TargetPort::Number(8083)),
        ]
    );
}

#[test]
fn a_load_balancer_keeps_every_address_it_answers_on() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: shop, namespace: lb}
        spec:
          type: LoadBalancer
          clusterIP: 10.96.0.20
          clusterIPs: [10.96.0.20, 'fd00:96::20']
          ipFamilies: [IPv4, IPv6]
          ipFamilyPolicy: PreferDualStack
          selector: {app: shop}
          ports:
          - {name: http, port: 80, targetPort: web, nodePort: 30080}
          - {name: https, port: 443, nodePort: 30443}
          externalIPs: [192.0.2.10]
          loadBalancerSourceRanges: [' 203.0.113.7/24', '2001:db8::/32']
          sessionAffinity: ClientIP
          externalTrafficPolicy: Local
          internalTrafficPolicy: Local
        status:
          loadBalancer:
            ingress: [{ip: 198.51.100.1}, {hostname: lb.example.com}, {ip: '2001:db8::1'}]
        ",
    );
    let service = &loaded.state.services[0];
    assert_eq!(service.kind, ServiceKind::LoadBalancer);
    assert_eq!(service.cluster_ips, ips(&["10.96.0.20", "fd00:96::20"]));
    assert_eq!(service.selector, Some(labels(&[("app", "shop")])));
    let node_ports: Vec<Option<u16>> = service.ports.iter().map(|p| p.node_port).collect();
    assert_eq!(node_ports, [Some(30080), Some(30443)]);
    assert_eq!(service.ports[1].target_port, TargetPort::Number(443));
    assert_eq!(service.external_ips, ips(&["192.0.2.10"]));
    assert_eq!(
        service.load_balancer_ips,
        ips(&["198.51.100.1", "2001:db8::1"])
    );
    let ranges: Vec<String> = service
        .load_balancer_source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["203.0.113.0/24", "2001:db8::/32"]);
    assert_eq!(service.affinity_timeout_s, Some(10_800));
    assert!(service.external_traffic_local && service.internal_traffic_local);
}

#[test]
fn headless_and_selectorless_services_load() {
    let headless = service("clusterIP: None\nselector: {}");
    assert_eq!((headless.cluster_ips, headless.ports), (vec![], vec![]));
    assert_eq!(headless.selector, None, "an empty selector is no selector");
    let listed = service("clusterIPs: [None]");
    assert_eq!(listed.cluster_ips, Vec::<IpAddr>::new());
}

#[test]
fn an_unknown_type_is_an_error_and_its_rules_are_not_guessed() {
    let errors = service_errors("type: NodPort\nports: [{port: 80, nodePort: 30080}]");
    assert_eq!(
        errors,
        [
            "test.yaml:7:9: spec.type: unknown type \"NodPort\": must be ClusterIP, NodePort, \
             LoadBalancer or ExternalName"
        ]
    );
}

#[test]
fn cluster_ips_must_be_addresses_one_per_family_and_agree() {
    let errors = service_errors(
        "
        clusterIP: 10.96.0.300
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:7:14: spec.clusterIP: \"10.96.0.300\" is not an IP address"]
    );
    let errors = service_errors(
        "
        clusterIP: 10.96.0.1
        clusterIPs: [10.96.0.2]
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:8:16: spec.clusterIPs[0]: must equal clusterIP (10.96.0.1), got 10.96.0.2"]
    );
    let errors = service_errors(
        "
        clusterIPs: [10.96.0.1, 10.96.0.2]
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:7:27: spec.clusterIPs[1]: may hold at most one address of each IP family"]
    );
    let errors = service_errors(
        "
        clusterIPs: [10.96.0.1, None]
        ipFamilies: [IPv6]
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:7:16: spec.clusterIPs[0]: 10.96.0.1 is not an IPv6 address, as \
             ipFamilies[0] says",
            "test.yaml:7:27: spec.clusterIPs[1]: None must be the first and only value",
        ]
    );
    let errors = service_errors(
        "
        ipFamilies: [IPv4, IPv5, IPv4]
        ipFamilyPolicy: DualStack
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:7:22: spec.ipFamilies[1]: unknown IP family \"IPv5\": must be IPv4 or IPv6",
            "test.yaml:7:28: spec.ipFamilies[2]: IPv4 is listed twice",
            "test.yaml:8:19: spec.ipFamilyPolicy: unknown IP family policy \"DualStack\": must be \
             SingleStack, PreferDualStack or RequireDualStack",
        ]
    );
}

#[test]
fn a_single_cluster_ip_is_checked_against_the_first_family() {
    let errors = service_errors("clusterIP: 10.96.0.1\nipFamilies: [IPv6]\nports: [{port: 80}]");
    assert_eq!(
        errors,
        ["test.yaml:7:14: spec.clusterIP: 10.96.0.1 is not an IPv6 address, as ipFamilies[0] says"]
    );
}

#[test]
fn a_node_port_service_cannot_be_headless() {
    let errors = service_errors(
        "
        type: NodePort
        clusterIP: None
        ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:8:14: spec.clusterIP: may not be None for a NodePort or LoadBalancer Service"]
    );
}

#[test]
fn ports_are_checked_like_kubernetes_does() {
    let errors = service_errors(
        "
        ports:
        - {port: 0}
        - {name: b, protocol: ICMP, port: 70000, targetPort: 70000}
        - {name: c, port: 82, targetPort: '8080'}
        - {name: Web, port: 83, targetPort: Http}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:8:5: spec.ports[0].name: name is required when there is more than one port",
            "test.yaml:8:12: spec.ports[0].port: port must be between 1 and 65535, got 0",
            "test.yaml:9:25: spec.ports[1].protocol: unknown protocol \"ICMP\": must be TCP, UDP \
             or SCTP",
            "test.yaml:9:37: spec.ports[1].port: port must be between 1 and 65535, got 70000",
            "test.yaml:9:56: spec.ports[1].targetPort: targetPort must be between 1 and 65535, \
             got 70000",
            "test.yaml:10:37: spec.ports[2].targetPort: port name \"8080\" must contain a \
             letter; write a port number without quotes",
            "test.yaml:11:12: spec.ports[3].name: \"Web\" must consist of lowercase letters, \
             digits and '-', and start and end with a letter or digit",
            "test.yaml:11:39: spec.ports[3].targetPort: port name \"Http\" must consist of \
             lowercase letters, digits and '-'",
        ]
    );
}

#[test]
fn port_names_numbers_and_node_ports_must_be_unique() {
    let errors = service_errors(
        "
        type: NodePort
        ports:
        - {name: a, port: 80, nodePort: 30080}
        - {name: a, port: 81}
        - {name: c, port: 80}
        - {name: d, port: 80, protocol: UDP, nodePort: 30080}
        - {name: e, port: 85, nodePort: 30080}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:10:12: spec.ports[1].name: duplicate port name \"a\", also used by \
             ports[0]",
            "test.yaml:11:21: spec.ports[2].port: duplicate port 80/TCP, also used by ports[0]",
            "test.yaml:13:35: spec.ports[4].nodePort: duplicate node port 30080/TCP, also used \
             by ports[0]",
        ]
    );
}

#[test]
fn node_ports_need_a_node_port_type_and_the_node_port_range() {
    let errors = service_errors("ports: [{port: 80, nodePort: 30080}]");
    assert_eq!(
        errors,
        [
            "test.yaml:7:32: spec.ports[0].nodePort: nodePort may only be set when type is \
             NodePort or LoadBalancer"
        ]
    );
    let errors = service_errors("type: NodePort\nports: [{port: 80, nodePort: 8080}]");
    assert_eq!(
        errors,
        [
            "test.yaml:8:32: spec.ports[0].nodePort: node port 8080 is outside the node port \
             range 30000-32767"
        ]
    );
    // 0 is "not allocated", as for the API server.
    let service = service("type: NodePort\nports: [{port: 80, nodePort: 0}]");
    assert_eq!(service.ports[0].node_port, None);
}

#[test]
fn a_service_needs_a_port_unless_headless() {
    let errors = service_errors("selector: {app: web}");
    assert_eq!(
        errors,
        [
            "test.yaml:7:3: spec.ports: a Service needs at least one port (unless it is headless \
             or ExternalName)"
        ]
    );
}

#[test]
fn selectors_are_label_sets() {
    let errors = service_errors("selector: {-app: web}\nports: [{port: 80}]");
    assert_eq!(
        errors,
        [
            "test.yaml:7:14: spec.selector.-app: label key \"-app\" must be at most 63 letters, \
             digits, '-', '_' or '.' (after an optional DNS prefix and '/'), and start and end \
             with a letter or digit"
        ]
    );
}

#[test]
fn external_and_load_balancer_addresses_must_be_addresses() {
    let loaded = load_str(
        Path::new("test.yaml"),
        &(service_yaml(
            "
            type: LoadBalancer
            ports: [{port: 80}]
            externalIPs: [192.0.2.300, 127.0.0.1, '::', 169.254.1.1]
            ",
        ) + "status:\n  loadBalancer:\n    ingress: [{ip: lb.example.com}]\n"),
    );
    let errors: Vec<String> = loaded
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "test.yaml:9:17: spec.externalIPs[0]: \"192.0.2.300\" is not an IP address",
            "test.yaml:9:30: spec.externalIPs[1]: 127.0.0.1 may not be in the loopback range \
             (127.0.0.0/8, ::1/128)",
            "test.yaml:9:41: spec.externalIPs[2]: :: may not be unspecified (0.0.0.0 or ::)",
            "test.yaml:9:47: spec.externalIPs[3]: 169.254.1.1 may not be in the link-local \
             range (169.254.0.0/16, fe80::/10)",
            "test.yaml:13:20: status.loadBalancer.ingress[0].ip: \"lb.example.com\" is not an IP \
             address",
        ]
    );
}

#[test]
fn source_ranges_are_cidrs_of_a_load_balancer() {
    let errors = service_errors(
        "
        type: LoadBalancer
        ports: [{port: 80}]
        loadBalancerSourceRanges: [10.0.0.0/33, 10.0.0.1]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:30: spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a CIDR \
             such as 10.0.0.0/16 or fd00::/64",
            "test.yaml:9:43: spec.loadBalancerSourceRanges[1]: \"10.0.0.1\" is not a CIDR such \
             as 10.0.0.0/16 or fd00::/64",
        ]
    );
    let errors = service_errors(
        "
        type: NodePort
        ports: [{port: 80}]
        loadBalancerSourceRanges: [10.0.0.0/8]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:29: spec.loadBalancerSourceRanges: loadBalancerSourceRanges may only be \
             set when type is LoadBalancer"
        ]
    );
}

#[test]
fn client_ip_affinity_has_a_bounded_timeout() {
    let affinity = |config: &str| {
        let spec = format!("ports: [{{port: 80}}]\nsessionAffinity: ClientIP\n{config}");
        service(&spec).affinity_timeout_s
    };
    assert_eq!(affinity(""), Some(10_800));
    assert_eq!(
        affinity("sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
        Some(60)
    );
    assert_eq!(
        affinity("sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}"),
        Some(86_400)
    );
    let errors = service_errors(
        "
        ports: [{port: 80}]
        sessionAffinity: ClientIP
        sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:54: spec.sessionAffinityConfig.clientIP.timeoutSeconds: timeoutSeconds \
             must be between 1 and 86400, got 86401"
        ]
    );
    let errors = service_errors(
        "
        ports: [{port: 80}]
        sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:8:26: spec.sessionAffinityConfig: sessionAffinityConfig may only be set \
             when sessionAffinity is ClientIP"
        ]
    );
    let errors = service_errors("ports: [{port: 80}]\nsessionAffinity: Cookie");
    assert_eq!(
        errors,
        [
            "test.yaml:8:20: spec.sessionAffinity: unknown session affinity \"Cookie\": must be \
             None or ClientIP"
        ]
    );
}

#[test]
fn external_traffic_policy_needs_an_external_address() {
    let errors = service_errors("ports: [{port: 80}]\nexternalTrafficPolicy: Local");
    assert_eq!(
        errors,
        [
            "test.yaml:8:26: spec.externalTrafficPolicy: externalTrafficPolicy may only be set on \
             a Service reachable from outside (NodePort, LoadBalancer, or with externalIPs)"
        ]
    );
    // As in Kubernetes, external IPs make a ClusterIP Service reachable from outside.
    let service = service(
        "
        ports: [{port: 80}]
        externalIPs: [192.0.2.10]
        externalTrafficPolicy: Local
        ",
    );
    assert!(service.external_traffic_local);
    let errors = service_errors(
        "
        type: NodePort
        ports: [{port: 80}]
        externalTrafficPolicy: local
        internalTrafficPolicy: Node
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:26: spec.externalTrafficPolicy: unknown externalTrafficPolicy \"local\": \
             must be Cluster or Local",
            "test.yaml:10:26: spec.internalTrafficPolicy: unknown internalTrafficPolicy \"Node\": \
             must be Cluster or Local",
        ]
    );
}

#[test]
fn a_misspelt_service_field_is_an_error() {
    let errors = service_errors(
        "
        selecter: {app: web}
        ports:
        - port: 80
          targetport: 8080
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:7:3: spec.selecter: unknown field \"selecter\"",
            "test.yaml:10:5: spec.ports[0].targetport: unknown field \"targetport\"",
        ]
    );
}

#[test]
fn a_service_name_is_a_dns_1035_label() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: 1web}
        spec: {ports: [{port: 80}]}
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:3:18: metadata.name: \"1web\" must start with a lowercase letter"]
    );
}

#[test]
fn external_name_services_are_ignored_with_a_note() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {type: ExternalName, externalName: db.example.com.}
        ",
    );
    assert_eq!(loaded.state.services, vec![]);
    let ignored: Vec<String> = loaded.ignored.iter().map(ToString::to_string).collect();
    assert_eq!(
        ignored,
        [
            "ignored: Service default/db (test.yaml:1): an ExternalName Service is a DNS alias \
             (a CNAME); there is nothing to load-balance"
        ]
    );
    let errors = service_errors("type: ExternalName\nclusterIP: 10.96.0.1");
    assert_eq!(
        errors,
        [
            // Missing: located at its parent.
            "test.yaml:7:3: spec.externalName: an ExternalName Service needs an externalName",
            "test.yaml:8:14: spec.clusterIP: may not be set for ExternalName services",
        ]
    );
}

#[test]
fn the_same_service_twice_is_an_error() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: default}
        spec: {type: ExternalName, externalName: example.com}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:8:18: metadata.name: duplicate Service default/web, first defined at \
             test.yaml:1"
        ]
    );
}

/// An `EndpointSlice` `web-1` of Service `web` in `shop` whose body (after `metadata`) is
/// `body`: its first line is line 8 of the file.
fn slice_yaml(body: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: shop\n  labels:\n    kubernetes.io/service-name: web\n{}",
        yaml(body)
    )
}

fn slice_errors(body: &str) -> Vec<String> {
    let error = load_str(Path::new("test.yaml"), &slice_yaml(body)).expect_err("loaded");
    error.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn endpoint_slices_get_the_conditions_defaults() {
    let loaded = load_str(
        Path::new("test.yaml"),
        &slice_yaml(
            "
            addressType: IPv4
            ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
            endpoints:
            - addresses: [10.0.0.1]
              nodeName: node-1
              zone: zone-a
            - addresses: [10.0.0.2]
              conditions: {ready: false}
            - addresses: [10.0.0.3]
              conditions: {ready: false, serving: true, terminating: true}
            ",
        ),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let slice = &loaded.state.endpoint_slices[0];
    assert_eq!(
        (
            slice.namespace.as_str(),
            slice.name.as_str(),
            slice.service.as_str()
        ),
        ("shop", "web-1", "web")
    );
    assert!(!slice.legacy);
    assert_eq!(slice.origin.to_string(), "test.yaml:1");
    let port = |name: &str, protocol, port| EndpointPort {
        name: name.to_owned(),
        protocol,
        port,
    };
    assert_eq!(
        slice.ports,
        [
            port("http", Protocol::Tcp, 8080),
            port("dns", Protocol::Udp, 53)
        ]
    );
    let first = Endpoint {
        addresses: ips(&["10.0.0.1"]),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("node-1".to_owned()),
        zone: Some("zone-a".to_owned()),
    };
    assert_eq!(slice.endpoints[0], first);
    let conditions: Vec<(bool, bool, bool)> = slice
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conditions,
        [
            (true, true, false),
            (false, false, false),
            (false, true, true)
        ]
    );
    assert_eq!(loaded.derived_slices, 0);
}

#[test]
fn an_endpoint_slice_must_name_its_service() {
    let errors = errors(
        "
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-1
          labels: {app: web}
        addressType: IPv4
        endpoints: []
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:5:11: metadata.labels: label kubernetes.io/service-name is required: it \
             names the Service of these endpoints"
        ]
    );
}

#[test]
fn endpoint_addresses_must_be_of_the_address_type() {
    let errors = slice_errors(
        "
        addressType: IPv6
        endpoints:
        - addresses: ['fd00::1', 10.0.0.1, fd00::zz]
        - addresses: []
        - addresses: ['fd00::2']
          nodeName: Node_1
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:10:26: endpoints[0].addresses[1]: 10.0.0.1 is not an IPv6 address, as \
             addressType says",
            "test.yaml:10:36: endpoints[0].addresses[2]: \"fd00::zz\" is not an IP address",
            "test.yaml:11:14: endpoints[1].addresses: an endpoint needs at least one address",
            "test.yaml:13:13: endpoints[2].nodeName: \"Node_1\" must consist of lowercase \
             letters, digits, '-' and '.', and start and end with a letter or digit",
        ]
    );
    let errors = slice_errors("addressType: IPX");
    assert_eq!(
        errors,
        ["test.yaml:8:14: addressType: unknown addressType \"IPX\": must be IPv4, IPv6 or FQDN"]
    );
}

#[test]
fn endpoint_slice_ports_need_a_number_and_unique_names() {
    let errors = slice_errors(
        "
        addressType: IPv4
        ports:
        - {name: http}
        - {name: http, port: 80, protocol: tcp}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:10:3: ports[0].port: port is required",
            "test.yaml:11:10: ports[1].name: duplicate port name \"http\", also used by ports[0]",
            "test.yaml:11:36: ports[1].protocol: unknown protocol \"tcp\": must be TCP, UDP or \
             SCTP",
        ]
    );
}

#[test]
fn fqdn_slices_are_ignored_with_a_note() {
    let loaded = load_str(
        Path::new("test.yaml"),
        &slice_yaml("addressType: FQDN\nendpoints: [{addresses: [db.example.com]}]"),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.state.endpoint_slices, vec![]);
    assert_eq!(
        loaded.ignored[0].to_string(),
        "ignored: EndpointSlice shop/web-1 (test.yaml:1): an FQDN EndpointSlice lists host \
         names, not addresses; there is nothing to load-balance"
    );
}

#[test]
fn a_misspelt_endpoint_slice_field_is_an_error() {
    let errors = slice_errors("addressType: IPv4\nendpoints: [{adresses: [10.0.0.1]}]");
    assert_eq!(
        errors,
        ["test.yaml:9:14: endpoints[0].adresses: unknown field \"adresses\""]
    );
}

#[test]
fn legacy_endpoints_become_one_slice_per_subset() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Endpoints
        metadata: {name: legacy, namespace: shop}
        subsets:
        - addresses: [{ip: 10.0.0.1, nodeName: node-1}]
          notReadyAddresses: [{ip: 10.0.0.2}]
          ports: [{port: 8080}]
        - addresses: [{ip: 'fd00::1'}]
          ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
        ",
    );
    let slices = &loaded.state.endpoint_slices;
    assert_eq!(slices.len(), 2);
    assert!(slices.iter().all(|slice| slice.legacy
        && slice.name == "legacy"
        && slice.service == "legacy"
        && slice.origin.to_string() == "test.yaml:1"));
    let endpoint = |ip_text: &str, ready, node: Option<&str>| Endpoint {
        addresses: vec![ip(ip_text)],
        ready,
        serving: ready,
        terminating: false,
        node_name: node.map(str::to_owned),
        zone: None,
    };
    assert_eq!(
        *slices[0],
        EndpointSlice {
            namespace: "shop".to_owned(),
            name: "legacy".to_owned(),
            service: "legacy".to_owned(),
            ports: vec![EndpointPort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 8080
            }],
            endpoints: vec![
                endpoint("10.0.0.1", true, Some("node-1")),
                endpoint("10.0.0.2", false, None)
            ],
            legacy: true,
            origin: Origin {
                file: "test.yaml".into(),
                line: 1
            },
        }
    );
    assert_eq!(slices[1].ports.len(), 2);
}

#[test]
fn invalid_legacy_endpoints_are_errors() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Endpoints
        metadata: {name: legacy}
        subsets:
        - addresses: [{ip: 10.0.0.300}, {ip: 127.0.0.1}]
          ports: [{port: 80}, {port: 81}]
        - ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:5:20: subsets[0].addresses[0].ip: \"10.0.0.300\" is not an IP address",
            "test.yaml:5:38: subsets[0].addresses[1].ip: 127.0.0.1 may not be in the loopback \
             range (127.0.0.0/8, ::1/128)",
            "test.yaml:6:11: subsets[0].ports[0].name: name is required when there is more than \
             one port",
            "test.yaml:6:23: subsets[0].ports[1].name: name is required when there is more than \
             one port",
            "test.yaml:7:3: subsets[1]: a subset needs addresses or notReadyAddresses",
        ]
    );
}

#[test]
fn nodes_keep_their_addresses_and_pod_cidrs() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Node
        metadata: {name: node-1, labels: {topology.kubernetes.io/zone: a}}
        spec:
          podCIDR: 10.244.1.0/24
          podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']
          taints: [{key: x, effect: NoSchedule}]
        status:
          addresses:
          - {type: InternalIP, address: 192.168.0.11}
          - {type: Hostname, address: node-1}
          - {type: ExternalIP, address: 203.0.113.11}
          - {type: InternalIP, address: 'fd00::11'}
          images: [{names: [nginx]}]
        ",
    );
    let expected = Node {
        name: "node-1".to_owned(),
        addresses: ips(&["192.168.0.11", "203.0.113.11", "fd00::11"]),
        pod_cidrs: vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap(),
        ],
        origin: Origin {
            file: "test.yaml".into(),
            line: 1,
        },
    };
    assert_eq!(loaded.state.nodes, vec![expected]);
}

#[test]
fn invalid_nodes_are_errors() {
    let found = errors(
        "
        apiVersion: v1
        kind: Node
        metadata: {name: node-1}
        spec:
          podCIDR: 10.244.1.0/24
          podCIDRs: [10.244.2.0/24, 10.244.1.0/24]
        status:
          addresses: [{type: InternalIP, address: node-1.example.com}]
        ",
    );
    assert_eq!(
        found,
        [
            "test.yaml:6:14: spec.podCIDRs[0]: must equal podCIDR (10.244.1.0/24), got \
             10.244.2.0/24",
            "test.yaml:8:43: status.addresses[0].address: \"node-1.example.com\" is not an IP \
             address",
        ]
    );
    let two_v4 = errors(
        "
        apiVersion: v1
        kind: Node
        metadata: {name: node-1}
        spec: {podCIDRs: [10.244.1.0/24, 10.244.2.0/24]}
        ",
    );
    assert_eq!(
        two_v4,
        ["test.yaml:4:34: spec.podCIDRs[1]: may hold at most one CIDR of each IP family"]
    );
}

const SELECTED_PODS: &str = "
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      clusterIPs: [10.96.0.10, 'fd00:96::10']
      selector: {app: web}
      ports: [{name: http, port: 80, targetPort: http}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: a, namespace: shop, labels: {app: web}}
    spec:
      containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
    status:
      podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: b, namespace: shop, labels: {app: web}}
    spec:
      containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
    status:
      podIPs: [{ip: 10.0.0.2}]
      conditions: [{type: Ready, status: 'False'}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: c, namespace: shop, labels: {app: web}}
    status:
      phase: Succeeded
      podIPs: [{ip: 10.0.0.3}]
";

#[test]
fn a_directory_derives_the_endpoints_of_services_that_select_pods() {
    let loaded = load(SELECTED_PODS);
    assert_eq!(loaded.derived_slices, 2);
    // Per slice: its name, each endpoint's address and readiness, the resolved port.
    let slices: Vec<String> = loaded
        .state
        .endpoint_slices
        .iter()
        .map(|slice| {
            let endpoints: Vec<String> = slice
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e.addresses[0],
                        if e.ready { "ready" } else { "not ready" }
                    )
                })
                .collect();
            format!(
                "{}: {} -> {}",
                slice.name,
                endpoints.join(", "),
                slice.ports[0].port
            )
        })
        .collect();
    assert_eq!(
        slices,
        [
            "web-ipv4-1: 10.0.0.1 ready, 10.0.0.2 not ready -> 8080",
            "web-ipv6-1: fd00::1 ready -> 8080",
        ]
    );
}

#[test]
fn written_endpoints_take_the_place_of_derived_ones() {
    let text = format!(
        "{SELECTED_PODS}
    ---
    apiVersion: v1
    kind: Endpoints
    metadata: {{name: web, namespace: shop}}
    subsets: [{{addresses: [{{ip: 10.0.0.9}}], ports: [{{name: http, port: 9}}]}}]
"
    );
    let loaded = load(&text);
    assert_eq!(loaded.derived_slices, 0);
    assert_eq!(loaded.state.endpoint_slices.len(), 1);
    assert!(loaded.state.endpoint_slices[0].legacy);
}

#[test]
fn an_unknown_pod_phase_is_an_error() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Pod
        metadata: {name: a}
        status: {phase: Runing}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:4:17: status.phase: unknown phase \"Runing\": must be Pending, Running, \
             Succeeded, Failed or Unknown"
        ]
    );
}

#[test]
fn no_service_input_makes_the_loader_panic() {
    let text = yaml(SELECTED_PODS)
        + "---\n"
        + &service_yaml(
            "
            type: LoadBalancer
            clusterIPs: [10.96.0.1, 'fd00::1', None]
            ports: [{name: a, port: 80, nodePort: 30080, targetPort: x}]
            loadBalancerSourceRanges: [10.0.0.0/8]
            sessionAffinity: ClientIP
            sessionAffinityConfig: {clientIP: {timeoutSeconds: -1}}
            ",
        )
        + "---\n"
        + &slice_yaml("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{}]");
    for end in (0..=text.len()).filter(|end| text.is_char_boundary(*end)) {
        let _ = load_str(Path::new("test.yaml"), &text[..end]);
    }
    for odd in [
        "apiVersion: v1\nkind: Service\nspec: []",
        "apiVersion: v1\nkind: Service\nspec: {ports: [null]}",
        "apiVersion: v1\nkind: Service\nspec: {clusterIPs: []}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: -1}]}",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: 7",
        "apiVersion: v1\nkind: Endpoints\nsubsets: [{}]",
        "apiVersion: v1\nkind: Node\nstatus: {addresses: [{}]}",
    ] {
        let _ = load_str(Path::new("test.yaml"), odd);
    }
}

#[test]
fn two_services_may_not_share_a_cluster_ip_or_node_port() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec:
          type: NodePort
          clusterIPs: [10.96.0.10, 'fd00::10']
          ports: [{port: 80, nodePort: 30080}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec:
          type: NodePort
          clusterIP: 10.96.0.10
          ports: [{name: u, port: 80, nodePort: 30080, protocol: UDP}, {name: x, port: 81, nodePort: 30080}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: c}
        spec:
          clusterIPs: [10.96.0.12, 'fd00::10']
          ports: [{port: 80}]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:14:14: spec.clusterIP: cluster IP 10.96.0.10 is already allocated to \
             Service default/a (test.yaml:1)",
            // The same number over UDP is another port.
            "test.yaml:15:94: spec.ports[1].nodePort: node port 30080/TCP is already allocated \
             to Service default/a (test.yaml:1)",
            "test.yaml:21:28: spec.clusterIPs[1]: cluster IP fd00::10 is already allocated to \
             Service default/a (test.yaml:1)",
        ]
    );
}

#[test]
fn a_local_load_balancer_keeps_its_health_check_node_port() {
    let local = service(
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 32000\n\
         ports: [{port: 80, nodePort: 30080}]",
    );
    assert_eq!(local.health_check_node_port, Some(32000));
    // 0 is "not allocated", as for nodePort.
    let unallocated = service(
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 0\n\
         ports: [{port: 80}]",
    );
    assert_eq!(unallocated.health_check_node_port, None);
}

#[test]
fn a_health_check_node_port_needs_a_local_load_balancer() {
    let message = "spec.healthCheckNodePort: healthCheckNodePort may only be set when type is \
                   LoadBalancer and externalTrafficPolicy is Local";
    let errors =
        service_errors("type: LoadBalancer\nhealthCheckNodePort: 32000\nports: [{port: 80}]");
    assert_eq!(errors, [format!("test.yaml:8:24: {message}")]);
    let errors = service_errors(
        "type: NodePort\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 32000\n\
         ports: [{port: 80}]",
    );
    assert_eq!(errors, [format!("test.yaml:9:24: {message}")]);
    let errors = service_errors("healthCheckNodePort: 32000\nports: [{port: 80}]");
    assert_eq!(errors, [format!("test.yaml:7:24: {message}")]);
}

#[test]
fn a_health_check_node_port_is_a_node_port_of_its_own() {
    let errors = service_errors(
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 8080\n\
         ports: [{port: 80}]",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:24: spec.healthCheckNodePort: health check node port 8080 is outside \
             the node port range 30000-32767"
        ]
    );
    let errors = service_errors(
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 70000\n\
         ports: [{port: 80}]",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("test.yaml:9:24: spec.healthCheckNodePort: "),
        "{errors:?}"
    );
    let errors = service_errors(
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 30080\n\
         ports: [{name: u, port: 53, protocol: UDP, nodePort: 30053}, {name: t, port: 80, nodePort: 30080}]",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:24: spec.healthCheckNodePort: health check node port 30080 is also the \
             nodePort of ports[1]"
        ]
    );
}

#[test]
fn a_health_check_node_port_may_not_be_another_services_node_port() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec:
          type: NodePort
          clusterIP: 10.96.0.10
          ports: [{port: 80, nodePort: 30080}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec:
          type: LoadBalancer
          externalTrafficPolicy: Local
          healthCheckNodePort: 30080
          clusterIP: 10.96.0.11
          ports: [{port: 80, nodePort: 30081}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: c}
        spec:
          type: NodePort
          clusterIP: 10.96.0.12
          ports: [{name: g, port: 80, nodePort: 30081}, {name: h, port: 81, nodePort: 30082, protocol: UDP}]
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:15:24: spec.healthCheckNodePort: health check node port 30080/TCP is \
             already allocated to Service default/a (test.yaml:1)",
            "test.yaml:25:41: spec.ports[0].nodePort: node port 30081/TCP is already allocated \
             to Service default/b (test.yaml:9)",
        ]
    );
}
