//! Loader tests: manifests in, model or located errors out.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::*;
use crate::model::{
    LabelSelector, NamedPort, NamespaceScope, Operator, Peer, Policy, PortMatch, PortSpec,
    Protocol, Requirement, Rule, Service, ServiceKind, ServicePort,
};

/// Removes the first newline and the indentation common to all lines, so that fixtures can be
/// written indented in the test. Line 1 is the first line after the opening quote.
pub(super) fn yaml(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn load(text: &str) -> Loaded {
    load_str(Path::new("test.yaml"), &yaml(text)).unwrap_or_else(|error| panic!("{error}"))
}

fn errors(text: &str) -> Vec<String> {
    let error = load_str(Path::new("test.yaml"), &yaml(text)).expect_err("the manifest loaded");
    error.errors.iter().map(ToString::to_string).collect()
}

/// A `NetworkPolicy` `web` in namespace `shop` whose `spec` is `spec`, indented by two spaces:
/// the first line of `spec` is line 7 of the file.
fn policy_yaml(spec: &str) -> String {
    let spec: String = yaml(spec)
        .lines()
        .flat_map(|line| ["  ", line, "\n"])
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  \
         namespace: shop\nspec:\n{spec}"
    )
}

fn policy(spec: &str) -> Policy {
    let loaded = load_str(Path::new("test.yaml"), &policy_yaml(spec));
    let loaded = loaded.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.state.policies.len(), 1);
    Policy::clone(&loaded.state.policies[0])
}

fn policy_errors(spec: &str) -> Vec<String> {
    let error = load_str(Path::new("test.yaml"), &policy_yaml(spec)).expect_err("policy loaded");
    error.errors.iter().map(ToString::to_string).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortSpec::Range {
            first: port,
            last: port,
        }),
    }
}

fn cidr(text: &str) -> ipnetwork::IpNetwork {
    text.parse().unwrap()
}

use crate::model::Labels;

const COURSE_EXAMPLE: &str = "
    apiVersion: v1
    kind: Pod
    metadata:
      name: mon-pod
      labels:
        app: mon-app
    spec:
      containers:
      - name: nginx
        image: nginx:1.17
        ports:
        - containerPort: 80
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: mon-service
    spec:
      selector:
        app: mon-app
      ports:
      - protocol: TCP
        port: 80
        targetPort: 80
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata:
      name: policy-exemple
    spec:
      podSelector:
        matchLabels:
          app: mon-app
      policyTypes:
      - Ingress
      - Egress
      ingress:
      - from:
        - ipBlock:
            cidr: 172.17.0.0/16
        ports:
        - protocol: TCP
          port: 80
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata:
      name: mon-ingress
      namespace: default
    spec:
      rules:
      - http:
          paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: mon-service
                port:
                  number: 80
";

#[test]
fn the_course_example_loads() {
    let loaded = load(COURSE_EXAMPLE);

    let pod = &loaded.state.pods[0];
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str()),
        ("default", "mon-pod")
    );
    assert_eq!(pod.labels, labels(&[("app", "mon-app")]));
    assert_eq!(pod.ports, vec![], "port 80 has no name");
    assert_eq!(pod.origin.to_string(), "test.yaml:1");

    let expected = Policy {
        namespace: "default".to_owned(),
        name: "policy-exemple".to_owned(),
        pod_selector: match_labels(&[("app", "mon-app")]),
        ingress: Some(vec![Rule {
            peers: vec![Peer::IpBlock {
                cidr: cidr("172.17.0.0/16"),
                except: vec![],
            }],
            ports: vec![tcp(80)],
        }]),
        // Egress is listed without rules: all egress of the selected pods is denied.
        egress: Some(vec![]),
        origin: Origin {
            file: "test.yaml".into(),
            line: 26,
        },
    };
    assert_eq!(loaded.state.policies, vec![Arc::new(expected)]);

    let expected = Service {
        namespace: "default".to_owned(),
        name: "mon-service".to_owned(),
        kind: ServiceKind::ClusterIp,
        ports: vec![ServicePort::tcp(80, 80)],
        selector: Some(labels(&[("app", "mon-app")])),
        origin: Origin {
            file: "test.yaml".into(),
            line: 14,
        },
        ..Service::default()
    };
    assert_eq!(loaded.state.services, vec![Arc::new(expected)]);
    // mon-pod has no address yet, so it is no endpoint.
    assert_eq!(loaded.state.endpoint_slices, vec![]);

    let ignored: Vec<String> = loaded.ignored.iter().map(ToString::to_string).collect();
    assert_eq!(
        ignored,
        ["ignored: Ingress default/mon-ingress (test.yaml:45)"]
    );
    assert_eq!(
        loaded.state.namespaces.keys().collect::<Vec<_>>(),
        ["default"]
    );
    assert_eq!(loaded.files, 1);
}

#[test]
fn empty_documents_and_comments_are_skipped() {
    let loaded = load(
        "
        # policies of the shop
        ---
        ---
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
        ---
        # nothing here
        ",
    );
    assert_eq!(loaded.state.namespaces.len(), 1);
}

#[test]
fn an_origin_is_the_first_line_of_its_document() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        # the web pod
        kind: Pod
        apiVersion: v1
        metadata: {name: web}
        ",
    );
    assert_eq!(loaded.state.pods[0].origin.line, 6);
}

#[test]
fn lists_are_flattened_and_their_errors_name_the_item() {
    let text = "
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Namespace
          metadata:
            name: shop
            labels: {team: web}
        - apiVersion: v1
          kind: List
          items:
          - apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: shop}
        ";
    let loaded = load(text);
    assert_eq!(
        loaded.state.namespaces["shop"].labels,
        labels(&[("team", "web")])
    );
    assert_eq!(loaded.state.pods[0].origin.line, 12);

    let errors = errors(&text.replace("name: web", "name: Web"));
    assert_eq!(
        errors,
        [
            "test.yaml:14:22: items[1].items[0].metadata.name: \"Web\" must consist of lowercase \
             letters, digits, '-' and '.', and start and end with a letter or digit"
        ]
    );
}

#[test]
fn other_kinds_are_ignored_not_rejected() {
    let loaded = load(
        "
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: shop}
        spec: {anything: [goes, here]}
        ",
    );
    assert_eq!(
        loaded.ignored[0].to_string(),
        "ignored: Deployment shop/web (test.yaml:1)"
    );
    assert_eq!(loaded.state, DesiredState::default());
}

#[test]
fn every_object_needs_api_version_and_kind() {
    let errors = errors(
        "
        kind: Pod
        metadata: {name: web}
        ---
        apiVersion: v1
        metadata: {name: web}
        ---
        - just
        - a list
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:1:1: apiVersion: apiVersion is required",
            "test.yaml:4:1: kind: kind is required",
            "test.yaml:7:1: a Kubernetes object must be a mapping with apiVersion and kind",
        ]
    );
}

#[test]
fn a_known_kind_with_another_api_version_is_an_error() {
    let errors = errors(
        "
        apiVersion: extensions/v1beta1
        kind: NetworkPolicy
        metadata: {name: web}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:1:13: apiVersion: NetworkPolicy must have apiVersion networking.k8s.io/v1, \
          got extensions/v1beta1"
        ]
    );
}

#[test]
fn a_misspelt_policy_field_is_an_error() {
    let errors = policy_errors(
        "
        podSelecter:
          matchLabels: {app: web}
        ingress:
        - from:
          - podSelector: {}
            namespaceSelecter: {}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:7:3: spec.podSelecter: unknown field \"podSelecter\"",
            "test.yaml:12:7: spec.ingress[0].from[0].namespaceSelecter: unknown field \
             \"namespaceSelecter\"",
        ]
    );
}

#[test]
fn unknown_fields_of_pods_and_status_of_policies_are_fine() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Pod
        metadata: {name: web, creationTimestamp: null}
        spec:
          containers: [{name: c, image: nginx, futureField: 1}]
        futureField: true
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web, creationTimestamp: null}
        spec: {}
        status: {conditions: []}
        ",
    );
    assert_eq!(loaded.state.policies.len(), 1);
}

#[test]
fn a_type_error_names_its_field() {
    let errors = policy_errors(
        "
        ingress:
        - ports:
          - port: [80]
        ",
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("test.yaml:9:13: spec.ingress[0].ports[0].port: invalid type"),
        "{}",
        errors[0]
    );
}

#[test]
fn policy_types_default_to_ingress_and_to_egress_when_there_are_egress_rules() {
    let ingress_only = policy("podSelector: {}");
    assert_eq!(
        (ingress_only.ingress, ingress_only.egress),
        (Some(vec![]), None)
    );

    let both = policy("egress: [{}]");
    assert_eq!(both.ingress, Some(vec![]));
    assert_eq!(both.egress, Some(vec![Rule::default()]));

    // As in Kubernetes (`len(spec.Egress) != 0`): an empty list is no rule.
    let empty_egress = policy("egress: []");
    assert_eq!(empty_egress.egress, None);

    let listed = policy("policyTypes: [Egress]\ningress: [{}]");
    assert_eq!((listed.ingress, listed.egress), (None, Some(vec![])));
}

#[test]
fn policy_types_must_be_ingress_or_egress() {
    let errors = policy_errors("policyTypes: [Ingress, Outgress]");
    assert_eq!(
        errors,
        [
            "test.yaml:7:26: spec.policyTypes[1]: unknown policy type \"Outgress\": must be Ingress \
          or Egress"
        ]
    );
    let errors = policy_errors("policyTypes: [Ingress, Egress, Ingress]");
    assert_eq!(
        errors,
        ["test.yaml:7:16: spec.policyTypes: may list at most two policy types, got 3"]
    );
}

#[test]
fn peers_select_pods_namespaces_or_addresses() {
    let policy = policy(
        "
        ingress:
        - from:
          - podSelector: {matchLabels: {app: shop}}
          - namespaceSelector: {matchLabels: {team: ops}}
          - namespaceSelector: {matchLabels: {team: ops}}
            podSelector: {matchLabels: {app: probe}}
          - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
        ",
    );
    let ops = || NamespaceScope::Selected(match_labels(&[("team", "ops")]));
    let expected = vec![
        Peer::Pods {
            namespaces: NamespaceScope::Own("shop".to_owned()),
            pods: match_labels(&[("app", "shop")]),
        },
        Peer::Pods {
            namespaces: ops(),
            pods: LabelSelector::everything(),
        },
        Peer::Pods {
            namespaces: ops(),
            pods: match_labels(&[("app", "probe")]),
        },
        Peer::IpBlock {
            cidr: cidr("10.0.0.0/8"),
            except: vec![cidr("10.1.0.0/16")],
        },
    ];
    assert_eq!(policy.ingress.unwrap()[0].peers, expected);
}

#[test]
fn a_peer_needs_exactly_one_kind_of_selection() {
    let errors = policy_errors(
        "
        egress:
        - to:
          - {}
          - ipBlock: {cidr: 10.0.0.0/8}
            podSelector: {}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:7: spec.egress[0].to[0]: a peer needs a podSelector, a namespaceSelector \
             or an ipBlock",
            "test.yaml:10:16: spec.egress[0].to[1].ipBlock: ipBlock may not be combined with a \
             podSelector or namespaceSelector",
        ]
    );
}

#[test]
fn ip_blocks_are_normalised_and_exceptions_must_be_strict_subnets() {
    let policy = policy(
        "
        egress:
        - to:
          - ipBlock: {cidr: 10.0.0.1/24}
          - ipBlock: {cidr: 'fd00::/64', except: ['fd00::/80']}
        ",
    );
    let peers = &policy.egress.unwrap()[0].peers;
    assert_eq!(
        peers[0],
        Peer::IpBlock {
            cidr: cidr("10.0.0.0/24"),
            except: vec![]
        }
    );
    assert!(matches!(&peers[1], Peer::IpBlock { except, .. } if except.len() == 1));

    let errors = policy_errors(
        "
        egress:
        - to:
          - ipBlock:
              cidr: 10.0.0.0/16
              except: [10.0.0.0/16, 10.1.0.0/24, 'fd00::/80', 10.0.0.0/40, '']
          - ipBlock: {cidr: 10.0.0.0}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:11:18: spec.egress[0].to[0].ipBlock.except[0]: 10.0.0.0/16 must be a \
             strict subnet of cidr 10.0.0.0/16",
            "test.yaml:11:31: spec.egress[0].to[0].ipBlock.except[1]: 10.1.0.0/24 must be a \
             strict subnet of cidr 10.0.0.0/16",
            "test.yaml:11:44: spec.egress[0].to[0].ipBlock.except[2]: fd00::/80 must be a strict \
             subnet of cidr 10.0.0.0/16",
            "test.yaml:11:57: spec.egress[0].to[0].ipBlock.except[3]: \"10.0.0.0/40\" is not a \
             CIDR such as 10.0.0.0/16 or fd00::/64",
            "test.yaml:11:70: spec.egress[0].to[0].ipBlock.except[4]: cidr is required",
            "test.yaml:12:23: spec.egress[0].to[1].ipBlock.cidr: \"10.0.0.0\" is not a CIDR such \
             as 10.0.0.0/16 or fd00::/64",
        ]
    );
}

#[test]
fn ports_default_to_tcp_and_may_be_ranges_or_names() {
    let policy = policy(
        "
        ingress:
        - ports:
          - port: 443
          - {protocol: UDP, port: 30000, endPort: 32767}
          - {protocol: SCTP}
          - port: metrics
        ",
    );
    let expected = vec![
        tcp(443),
        PortMatch {
            protocol: Protocol::Udp,
            port: Some(PortSpec::Range {
                first: 30000,
                last: 32767,
            }),
        },
        PortMatch {
            protocol: Protocol::Sctp,
            port: None,
        },
        PortMatch {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Named("metrics".to_owned())),
        },
    ];
    assert_eq!(policy.ingress.unwrap()[0].ports, expected);
}

#[test]
fn invalid_ports_are_errors() {
    let errors = policy_errors(
        "
        ingress:
        - ports:
          - port: 80
          - port: 0
          - {protocol: ICMP, port: 70000}
          - {port: '80'}
          - {port: Metrics}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:10:13: spec.ingress[0].ports[1].port: port must be between 1 and 65535, \
             got 0",
            "test.yaml:11:18: spec.ingress[0].ports[2].protocol: unknown protocol \"ICMP\": must \
             be TCP, UDP or SCTP",
            "test.yaml:11:30: spec.ingress[0].ports[2].port: port must be between 1 and 65535, \
             got 70000",
            "test.yaml:12:14: spec.ingress[0].ports[3].port: port name \"80\" must contain a \
             letter; write a port number without quotes",
            "test.yaml:13:14: spec.ingress[0].ports[4].port: port name \"Metrics\" must consist \
             of lowercase letters, digits and '-'",
        ]
    );
}

#[test]
fn end_port_needs_a_numeric_port_below_it() {
    let errors = policy_errors(
        "
        ingress:
        - ports:
          - {port: 8080, endPort: 8000}
          - {port: 8080, endPort: 65536}
          - {port: http, endPort: 8000}
          - {endPort: 8000}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:29: spec.ingress[0].ports[0].endPort: endPort must be at least port \
             (8080), got 8000",
            "test.yaml:10:29: spec.ingress[0].ports[1].endPort: endPort must be between 1 and \
             65535, got 65536",
            "test.yaml:11:29: spec.ingress[0].ports[2].endPort: endPort may not be used with a \
             named port",
            "test.yaml:12:17: spec.ingress[0].ports[3].endPort: endPort requires a port",
        ]
    );
}

#[test]
fn match_expressions_become_requirements() {
    let policy = policy(
        "
        podSelector:
          matchExpressions:
          - {key: tier, operator: In, values: [web, api, web]}
          - {key: canary, operator: DoesNotExist}
        ",
    );
    let values = |v: &[&str]| v.iter().map(|v| (*v).to_owned()).collect::<BTreeSet<_>>();
    let expected = vec![
        Requirement {
            key: "tier".to_owned(),
            operator: Operator::In,
            values: values(&["api", "web"]),
        },
        Requirement {
            key: "canary".to_owned(),
            operator: Operator::DoesNotExist,
            values: values(&[]),
        },
    ];
    assert_eq!(policy.pod_selector.match_expressions, expected);
}

#[test]
fn match_expressions_need_values_exactly_when_their_operator_does() {
    let errors = policy_errors(
        "
        podSelector:
          matchExpressions:
          - {key: tier, operator: In, values: []}
          - {key: tier, operator: Exists, values: [web]}
          - {key: tier, operator: Like, values: [web]}
          - {key: '', operator: NotIn, values: [-web]}
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:9:41: spec.podSelector.matchExpressions[0].values: operator In needs at \
             least one value",
            "test.yaml:10:45: spec.podSelector.matchExpressions[1].values: operator Exists takes \
             no values",
            "test.yaml:11:29: spec.podSelector.matchExpressions[2].operator: unknown operator \
             \"Like\": must be In, NotIn, Exists or DoesNotExist",
            "test.yaml:12:13: spec.podSelector.matchExpressions[3].key: label key \"\" has an \
             empty name",
            "test.yaml:12:43: spec.podSelector.matchExpressions[3].values[0]: label value \"-web\" \
             must be at most 63 letters, digits, '-', '_' or '.', and start and end with a letter \
             or digit",
        ]
    );
}

#[test]
fn a_bad_label_key_is_located_at_the_key() {
    let errors = policy_errors(
        "
        podSelector:
          matchLabels:
            app.kubernetes.io/name: web
            -app: web
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:10:7: spec.podSelector.matchLabels.-app: label key \"-app\" must be at most \
          63 letters, digits, '-', '_' or '.' (after an optional DNS prefix and '/'), and start \
          and end with a letter or digit"
        ]
    );
}

#[test]
fn pods_keep_their_named_ports_and_addresses() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop}
        spec:
          containers:
          - name: app
            ports:
            - {name: http, containerPort: 8080}
            - {containerPort: 9090}
          - name: dns
            ports:
            - {name: dns, containerPort: 53, protocol: UDP}
        status:
          podIP: 10.0.0.7
          podIPs: [{ip: 10.0.0.7}, {ip: 'fd00::7'}]
        ",
    );
    let pod = &loaded.state.pods[0];
    let named = |name: &str, protocol, port| NamedPort {
        name: name.to_owned(),
        protocol,
        port,
    };
    let expected = vec![
        named("http", Protocol::Tcp, 8080),
        named("dns", Protocol::Udp, 53),
    ];
    assert_eq!(pod.ports, expected);
    let ips: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
    assert_eq!(pod.ips, ips);
}

#[test]
fn invalid_pods_are_errors() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        spec:
          containers:
          - ports:
            - {name: http, containerPort: 80}
            - {name: http, containerPort: 81}
            - {containerPort: 0, protocol: tcp}
        status:
          podIP: 10.0.0.300
        ",
    );
    assert_eq!(
        errors,
        [
            "test.yaml:8:14: spec.containers[0].ports[1].name: duplicate port name \"http\", also \
             used at spec.containers[0].ports[0]",
            "test.yaml:9:23: spec.containers[0].ports[2].containerPort: containerPort must be \
             between 1 and 65535, got 0",
            "test.yaml:9:36: spec.containers[0].ports[2].protocol: unknown protocol \"tcp\": must \
             be TCP, UDP or SCTP",
            "test.yaml:11:10: status.podIP: \"10.0.0.300\" is not an IP address",
        ]
    );
}

#[test]
fn a_duplicate_object_names_both_definitions() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: default}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop}
        ",
    );
    assert_eq!(
        errors,
        ["test.yaml:7:18: metadata.name: duplicate Pod default/web, first defined at test.yaml:1"]
    );
}

#[test]
fn namespaces_in_use_exist_even_when_not_declared() {
    let loaded = load(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {team: web}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: ops}
        ",
    );
    let namespaces = &loaded.state.namespaces;
    assert_eq!(namespaces.keys().collect::<Vec<_>>(), ["ops", "shop"]);
    assert_eq!(namespaces["shop"].labels, labels(&[("team", "web")]));
    assert_eq!(namespaces["ops"].labels, Labels::new());
}

#[test]
fn a_yaml_syntax_error_reports_its_line() {
    let errors = errors(
        "
        apiVersion: v1
        kind: Pod
        metadata:
          name: web
         labels: {}
        ",
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("test.yaml:5:"), "{}", errors[0]);
}

#[test]
fn errors_of_all_objects_are_reported_together() {
    let text = policy_yaml("ingress: [{ports: [{port: 0}]}]")
        + "---\n"
        + &policy_yaml("egress: [{to: [{}]}]");
    let error = load_str(Path::new("test.yaml"), &text).unwrap_err();
    assert_eq!(error.errors.len(), 2);
    assert_eq!(error.to_string().lines().count(), 2);
}

#[test]
fn no_input_makes_the_loader_panic() {
    // Every prefix of a real manifest: truncated documents, half keys, open brackets.
    let text = yaml(COURSE_EXAMPLE);
    for end in (0..=text.len()).filter(|end| text.is_char_boundary(*end)) {
        let _ = load_str(Path::new("test.yaml"), &text[..end]);
    }
    for odd in [
        "42",
        "~",
        "[]",
        "kind: [Pod]",
        "apiVersion: v1\nkind: Pod\nmetadata: 5",
        "apiVersion: v1\nkind: List\nitems: {a: b}",
        "apiVersion: v1\nkind: List\nitems: [1, null]",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: []",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {ingress: [{from: [null]}]}",
        "a: &x [*x]",
        "? [a]\n: b",
        "a: !!binary aGk=",
        &"[".repeat(10_000),
    ] {
        let _ = load_str(Path::new("test.yaml"), odd);
    }
}

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("weir-manifest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.0.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, yaml(text)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const NAMESPACE_B: &str = "
    apiVersion: v1
    kind: Namespace
    metadata: {name: b}
";

#[test]
fn a_directory_is_read_recursively_in_path_order() {
    let dir = TempDir::new("walk");
    dir.write("z.yaml", &NAMESPACE_B.replace("name: b", "name: z"));
    dir.write("a/b.yml", NAMESPACE_B);
    dir.write("a/notes.txt", "not yaml");
    dir.write(".hidden.yaml", "not: [valid");
    dir.write(".git/x.yaml", "not: [valid");
    dir.write("a/.b.yaml.swp", "not: [valid");

    let loaded = load_dir(&dir.0).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.files, 2);
    assert_eq!(
        loaded.state.namespaces.keys().collect::<Vec<_>>(),
        ["b", "z"]
    );
}

#[test]
fn a_directory_reports_the_errors_of_every_file() {
    let dir = TempDir::new("errors");
    dir.write("1.yaml", "kind: Pod");
    dir.write(
        "2/2.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}",
    );
    dir.write("3.yaml", NAMESPACE_B);

    let errors = load_dir(&dir.0).unwrap_err().errors;
    let places: Vec<_> = errors
        .iter()
        .map(|e| (e.file.strip_prefix(&dir.0).unwrap(), e.line))
        .collect();
    assert_eq!(
        places,
        [(Path::new("1.yaml"), 1), (Path::new("2/2.yaml"), 3)]
    );
}

#[test]
fn a_missing_directory_is_an_error() {
    let error = load_dir(Path::new("/nonexistent/weir")).unwrap_err();
    assert_eq!(error.errors.len(), 1);
    assert!(
        error.to_string().starts_with("/nonexistent/weir: "),
        "{error}"
    );
}
