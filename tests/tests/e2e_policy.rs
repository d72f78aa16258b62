//! End to end: the `weir` agent enforcing `NetworkPolicy` on real traffic between network
//! namespaces, checked against reachability matrices in the style of the upstream
//! Kubernetes e2e suite (`test/e2e/network/netpol`).
//!
//! The model is upstream's: namespaces x, y, z (labelled `ns: <name>` and
//! `kubernetes.io/metadata.name: <name>`), pods a, b, c in each (labelled `pod: <name>`), all
//! on one node, each serving TCP and UDP on ports 80 and 81. Every expectation below is
//! written by hand from the Kubernetes semantics of its policy; none is computed by Weir.
//!
//! Each scenario is probed for every case: IPv4 and IPv6 × TCP and UDP × ports 80 and 81,
//! from every pod to every other pod and from the node to every pod. The node row is always
//! expected to connect: Kubernetes allows a node's traffic to its own pods whatever the
//! policies (the kubelet's probes depend on it).
//!
//! Needs root; skips otherwise. Builds `weir` with cargo unless `WEIR_BIN` names a binary.
//! Run: `cargo test -p weir-tests --test e2e_policy -- --nocapture` prints one line per
//! scenario (how long the agent took to apply it, and the probes).

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use testbed::{
    Agent, Case, Family, Labels, Peer, Proto, Reachability, TempDir, Topology, manifests,
    upstream_model,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// The one policy file of the suite: each scenario replaces it, in one rename.
const POLICY_FILE: &str = "scenario.yaml";

/// One agent at a time: the two tests below would otherwise compete for the two cores,
/// and a probe timing out under load is a false negative.
static ONE_AGENT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A `NetworkPolicy` set and the connectivity it must produce.
struct Scenario {
    name: &'static str,
    /// `NetworkPolicy` manifests (several separated by `---`), or empty for none.
    /// `${x/a.v4}` and `${x/a.v6}` stand for the addresses of pod x/a.
    policy: &'static str,
    /// The expected matrix of each case.
    expect: fn(Case) -> Reachability,
}

#[test]
fn network_policy_reachability_matrix() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = model_topology();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    let mut agent = Agent::start(&topology, dir.path());
    agent.wait_ready();

    let scenarios = scenarios();
    let mut failures = Vec::new();
    let suite_started = Instant::now();
    for scenario in &scenarios {
        let started = Instant::now();
        apply_policy(&mut agent, dir.path(), &render(scenario.policy, &topology));
        let applied = started.elapsed();
        let started = Instant::now();
        let expectations: Vec<_> = Case::all()
            .into_iter()
            .map(|case| (case, (scenario.expect)(case)))
            .collect();
        let reports = topology.verify(&expectations);
        eprintln!(
            "{:<58} {:<6} applied in {applied:>8.1?}, probed in {:>8.1?}",
            scenario.name,
            if reports.is_empty() { "ok" } else { "FAILED" },
            started.elapsed()
        );
        failures.extend(
            reports
                .into_iter()
                .map(|r| format!("scenario {:?}, {r}", scenario.name)),
        );
    }
    eprintln!(
        "{} scenarios in {:.1?}",
        scenarios.len(),
        suite_started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} case(s) differ from the expected reachability:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Label changes and file removals are changes of the desired state like any other: they
/// must move pods in and out of a policy's selection while the agent runs.
#[test]
fn label_changes_and_removed_files_take_effect_while_the_agent_runs() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = model_topology();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    let mut agent = Agent::start(&topology, dir.path());
    agent.wait_ready();

    // Pods labelled `isolated: "yes"` in x accept only pods labelled `role: client`, from
    // any namespace. No pod carries either label yet.
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: clients-only
  namespace: x
spec:
  podSelector:
    matchLabels:
      isolated: "yes"
  ingress:
    - from:
        - namespaceSelector: {}
          podSelector:
            matchLabels:
              role: client
"#;
    apply_policy(&mut agent, dir.path(), policy);
    check(&topology, "policy selects no pod yet", |_| all(true));

    let x_a_isolated = |_: Case| {
        let mut r = all(true);
        r.expect_all_ingress("x/a", false);
        r
    };
    let x_a_isolated_y_b_client = |case: Case| {
        let mut r = x_a_isolated(case);
        r.expect("y/b", "x/a", true);
        r
    };
    let isolated = [("isolated", "yes")];
    let client = [("role", "client")];
    let mut relabel = |id: &str, extra: &[(&str, &str)]| {
        relabel(&mut agent, &topology, dir.path(), id, extra);
    };

    // The policy's pod selector takes x/a in, then its peer selector takes y/b in and out.
    relabel("x/a", &isolated);
    check(&topology, "x/a labelled isolated", x_a_isolated);
    relabel("y/b", &client);
    check(&topology, "y/b labelled client", x_a_isolated_y_b_client);
    relabel("y/b", &[]);
    check(&topology, "client label removed from y/b", x_a_isolated);

    // The pod selector lets x/a go, then takes it back with y/b a client again.
    relabel("x/a", &[]);
    check(&topology, "isolated label removed from x/a", |_| all(true));
    relabel("x/a", &isolated);
    relabel("y/b", &client);
    check(&topology, "both labelled again", x_a_isolated_y_b_client);

    let generation = agent.status().generation;
    manifests::remove(dir.path(), POLICY_FILE);
    agent.wait_generation_after(generation);
    check(&topology, "policy file removed", |_| all(true));
}

#[test]
fn a_bad_change_is_refused_whole_and_the_last_good_state_stays_enforced() {
    testbed::require_root!();
    let _slot = ONE_AGENT_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let topology = model_topology();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    let mut agent = Agent::start(&topology, dir.path());
    agent.wait_ready();
    let deny_x = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
  namespace: x
spec:
  podSelector: {}
";
    let x_isolated = |_: Case| {
        let mut r = all(true);
        for pod in PODS {
            r.expect_all_ingress(&format!("x/{pod}"), false);
        }
        r
    };
    apply_policy(&mut agent, dir.path(), deny_x);
    check(&topology, "deny all ingress in x", x_isolated);

    // One change set: a valid policy that would open x, and an invalid one. Applying the
    // valid half would open x; the agent must refuse both and keep x closed.
    let bad = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all
  namespace: x
spec:
  podSelector: {}
  ingress:
    - {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: broken
  namespace: x
spec:
  podSelector: {}
  ingress:
    - ports:
        - port: 0
";
    let generation = agent.status().generation;
    manifests::write_atomic(dir.path(), "bad.yaml", bad);
    let error = wait_for_error(&mut agent);
    assert!(
        error.contains("bad.yaml:21:") && error.contains("spec.ingress[0].ports[0].port"),
        "the error names the file, line and field: {error}"
    );
    assert_eq!(
        agent.status().generation,
        generation,
        "a refused change must not count as applied"
    );
    check(&topology, "bad change refused", x_isolated);

    manifests::remove(dir.path(), "bad.yaml");
    agent.wait_generation_after(generation);
    assert_eq!(
        agent.status().last_error,
        None,
        "the error clears once fixed"
    );
    check(&topology, "bad file removed", x_isolated);
}

/// Polls `/status` until the agent reports an error (bounded: 10 s).
fn wait_for_error(agent: &mut Agent<'_>) -> String {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(error) = agent.status().last_error {
            return error;
        }
        assert!(
            Instant::now() < deadline,
            "the agent reported no error within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The policies, in the order they are applied. The first has none: it checks that the
/// agent alone breaks nothing.
///
/// Namespace `y` is always quoted: YAML 1.1, which kubectl's parser follows, reads a bare
/// `y` as the boolean true, and a manifest with `namespace: y` is rejected.
#[expect(
    clippy::too_many_lines,
    reason = "a table of scenarios: each entry reads on its own, splitting them would not"
)]
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "no policy: everything connects",
            policy: "",
            expect: |_| all(true),
        },
        Scenario {
            name: "default deny ingress in x",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
            // x's pods still reach out: the replies of their own connections are let in.
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::any(), Peer::namespace("x"), false);
                r
            },
        },
        Scenario {
            name: "default deny egress in x",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
",
            // Connections into x still work: replies leave as part of them.
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::namespace("x"), Peer::any(), false);
                r
            },
        },
        Scenario {
            name: "deny all ingress and egress in x",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::namespace("x"), Peer::any(), false)
                    .expect_peer(Peer::any(), Peer::namespace("x"), false);
                r
            },
        },
        Scenario {
            name: "allow all ingress (one empty rule) beside a default deny",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: x
spec:
  podSelector: {}
  ingress:
    - {}
",
            expect: |_| all(true),
        },
        Scenario {
            name: "ingress from a pod selector: same namespace only",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - podSelector:
            matchLabels:
              pod: b
",
            // y/b and z/b are pods `b` too, but a podSelector alone means x's pods.
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect("x/b", "x/a", true);
                r
            },
        },
        Scenario {
            name: "ingress from a namespace selector",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: "y"
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false).expect_peer(
                    Peer::namespace("y"),
                    Peer::exact("x/a"),
                    true,
                );
                r
            },
        },
        Scenario {
            name: "namespace and pod selector in one peer: AND",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: "y"
          podSelector:
            matchLabels:
              pod: b
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect("y/b", "x/a", true);
                r
            },
        },
        Scenario {
            name: "namespace selector and pod selector as two peers: OR",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y-or-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: "y"
        - podSelector:
            matchLabels:
              pod: b
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect_peer(Peer::namespace("y"), Peer::exact("x/a"), true)
                    .expect("x/b", "x/a", true);
                r
            },
        },
        Scenario {
            name: "matchExpressions In",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-b-and-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - podSelector:
            matchExpressions:
              - key: pod
                operator: In
                values: [b, c]
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect("x/b", "x/a", true)
                    .expect("x/c", "x/a", true);
                r
            },
        },
        Scenario {
            name: "matchExpressions NotIn on namespaces",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-all-but-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions:
              - key: ns
                operator: NotIn
                values: ["y"]
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::namespace("y"), Peer::exact("x/a"), false);
                r
            },
        },
        Scenario {
            name: "matchExpressions Exists selects every pod; peers named a",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: y-from-pods-a
  namespace: "y"
spec:
  podSelector:
    matchExpressions:
      - key: pod
        operator: Exists
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions:
              - key: kubernetes.io/metadata.name
                operator: Exists
          podSelector:
            matchLabels:
              pod: a
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::any(), Peer::namespace("y"), false)
                    .expect_peer(Peer::pod_name("a"), Peer::namespace("y"), true);
                r
            },
        },
        Scenario {
            name: "matchExpressions DoesNotExist as pod selector selects nothing",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-unlabelled
  namespace: x
spec:
  podSelector:
    matchExpressions:
      - key: pod
        operator: DoesNotExist
  policyTypes: [Ingress, Egress]
",
            expect: |_| all(true),
        },
        Scenario {
            name: "matchExpressions DoesNotExist on namespaces, NotIn on pods",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-not-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions:
              - key: team
                operator: DoesNotExist
          podSelector:
            matchExpressions:
              - key: pod
                operator: NotIn
                values: [c]
",
            // No namespace has a `team` label: every namespace, pods other than c.
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::pod_name("c"), Peer::exact("x/a"), false);
                r
            },
        },
        Scenario {
            name: "ipBlock: one pod's IPv4 /32",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y-b-v4
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - ipBlock:
            cidr: ${y/b.v4}/32
",
            // The IPv4 block allows y/b's IPv4 address only; over IPv6 nothing gets in.
            expect: |case| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false);
                if case.family == Family::V4 {
                    r.expect("y/b", "x/a", true);
                }
                r
            },
        },
        Scenario {
            name: "ipBlock: one pod's IPv6 /128",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y-b-v6
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - ipBlock:
            cidr: ${y/b.v6}/128
",
            expect: |case| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false);
                if case.family == Family::V6 {
                    r.expect("y/b", "x/a", true);
                }
                r
            },
        },
        Scenario {
            name: "ipBlock with except, both families",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-all-but-y-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - ipBlock:
            cidr: 10.99.0.0/16
            except:
              - ${y/b.v4}/32
        - ipBlock:
            cidr: fd99::/64
            except:
              - ${y/b.v6}/128
",
            expect: |_| {
                let mut r = all(true);
                r.expect("y/b", "x/a", false);
                r
            },
        },
        Scenario {
            name: "egress to an ipBlock per family",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-to-z-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock:
            cidr: ${z/c.v4}/32
        - ipBlock:
            cidr: ${z/c.v6}/128
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_egress("x/a", false).expect("x/a", "z/c", true);
                r
            },
        },
        Scenario {
            name: "named port serve-81-tcp",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-serve-81-tcp
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: TCP
          port: serve-81-tcp
",
            expect: |case| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", is(case, Proto::Tcp, 81));
                r
            },
        },
        Scenario {
            name: "named port must match the protocol: TCP serve-80-udp is nothing",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-tcp-serve-80-udp
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: TCP
          port: serve-80-udp
",
            // x/a has no TCP port of that name: the rule allows nothing, x/a is isolated.
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false);
                r
            },
        },
        Scenario {
            name: "numeric port: TCP 80 only",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-tcp-80
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: TCP
          port: 80
",
            expect: |case| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", is(case, Proto::Tcp, 80));
                r
            },
        },
        Scenario {
            name: "endPort ranges: TCP 80-81, UDP 79-80",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-ranges
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: TCP
          port: 80
          endPort: 81
        - protocol: UDP
          port: 79
          endPort: 80
",
            expect: |case| {
                let mut r = all(true);
                let in_range = case.proto == Proto::Tcp || case.port == 80;
                r.expect_all_ingress("x/a", in_range);
                r
            },
        },
        Scenario {
            name: "UDP only: a protocol without port",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-udp
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: UDP
",
            expect: |case| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", case.proto == Proto::Udp);
                r
            },
        },
        Scenario {
            name: "an SCTP rule allows neither TCP nor UDP",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-on-sctp-80
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - ports:
        - protocol: SCTP
          port: 80
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false);
                r
            },
        },
        Scenario {
            name: "egress to a pod selector",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-to-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector:
            matchLabels:
              pod: b
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_egress("x/a", false).expect("x/a", "x/b", true);
                r
            },
        },
        Scenario {
            name: "egress on a named port: UDP serve-81-udp",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-to-serve-81-udp
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
    - ports:
        - protocol: UDP
          port: serve-81-udp
",
            // The name resolves on each destination pod; all of them name UDP 81 so.
            expect: |case| {
                let mut r = all(true);
                r.expect_all_egress("x/a", is(case, Proto::Udp, 81));
                r
            },
        },
        Scenario {
            name: "egress of a whole namespace on one port: UDP 80",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: x-out-on-udp-80
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - ports:
        - protocol: UDP
          port: 80
",
            expect: |case| {
                let mut r = all(true);
                r.expect_peer(Peer::namespace("x"), Peer::any(), is(case, Proto::Udp, 80));
                r
            },
        },
        Scenario {
            name: "ingress and egress rules in one policy",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-in-from-b-out-to-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              pod: b
  egress:
    - to:
        - namespaceSelector:
            matchLabels:
              ns: "y"
"#,
            // x/b → x/a is allowed by x/a's ingress; x/a → x/b is not in x/a's egress.
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect("x/b", "x/a", true)
                    .expect_all_egress("x/a", false)
                    .expect_peer(Peer::exact("x/a"), Peer::namespace("y"), true);
                r
            },
        },
        Scenario {
            name: "several policies on one pod add up",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: "y"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-z
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: z
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::namespace("x"), Peer::exact("x/a"), false);
                r
            },
        },
        Scenario {
            name: "a policy in y leaves x and z alone",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: y-from-y
  namespace: "y"
spec:
  podSelector: {}
  ingress:
    - from:
        - podSelector: {}
"#,
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::any(), Peer::namespace("y"), false)
                    .expect_peer(Peer::namespace("y"), Peer::namespace("y"), true);
                r
            },
        },
        Scenario {
            name: "empty pod selector: all of x accepts only namespace z",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: x-from-z
  namespace: x
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: z
",
            expect: |_| {
                let mut r = all(true);
                r.expect_peer(Peer::any(), Peer::namespace("x"), false)
                    .expect_peer(Peer::namespace("z"), Peer::namespace("x"), true);
                r
            },
        },
        Scenario {
            name: "a policy selecting no pod changes nothing",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: selects-nobody
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: nobody
  policyTypes: [Ingress, Egress]
",
            expect: |_| all(true),
        },
        Scenario {
            name: "policyTypes [Egress] without egress rules",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-no-egress
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
",
            // Ingress is not isolated: others still connect to x/a, its replies included.
            expect: |_| {
                let mut r = all(true);
                r.expect_all_egress("x/a", false);
                r
            },
        },
        Scenario {
            name: "policyTypes omitted: Ingress always, Egress since egress is set",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-egress-in-x
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  egress:
    - to:
        - podSelector: {}
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect_all_egress("x/a", false)
                    .expect_peer(Peer::exact("x/a"), Peer::namespace("x"), true);
                r
            },
        },
        Scenario {
            name: "deny all ingress in x, then allow TCP 81",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-tcp-81
  namespace: x
spec:
  podSelector: {}
  ingress:
    - ports:
        - protocol: TCP
          port: 81
",
            expect: |case| {
                let mut r = all(true);
                r.expect_peer(Peer::any(), Peer::namespace("x"), is(case, Proto::Tcp, 81));
                r
            },
        },
        Scenario {
            name: "stateful: isolated pods still get their replies",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-no-ingress
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: c-no-egress
  namespace: z
spec:
  podSelector:
    matchLabels:
      pod: c
  policyTypes: [Egress]
",
            // x/a → z/c connects: x/a's reply comes in through x/a's ingress isolation, and
            // leaves z/c through z/c's egress isolation, as part of x/a's connection.
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false)
                    .expect_all_egress("z/c", false);
                r
            },
        },
        Scenario {
            name: "deny all everywhere: only the node gets through",
            policy: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: "y"
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: z
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
            expect: |_| all(false),
        },
        Scenario {
            name: "empty namespace selector: pods b of every namespace",
            policy: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-every-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector: {}
          podSelector:
            matchLabels:
              pod: b
",
            expect: |_| {
                let mut r = all(true);
                r.expect_all_ingress("x/a", false).expect_peer(
                    Peer::pod_name("b"),
                    Peer::exact("x/a"),
                    true,
                );
                r
            },
        },
    ]
}

fn model_topology() -> Topology {
    Topology::builder()
        .pods(upstream_model(&NAMESPACES, &PODS))
        .build()
}

/// Pod ids in the model's order: the rows and columns of every matrix.
fn pod_ids() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}")))
        .collect()
}

/// Every pod pair connected (or not); the node always is.
fn all(connected: bool) -> Reachability {
    Reachability::new(&pod_ids(), connected)
}

/// Whether `case` is the traffic `proto`/`port` (of either family).
fn is(case: Case, proto: Proto, port: u16) -> bool {
    case.proto == proto && case.port == port
}

/// Replaces `${ns/pod.v4}` and `${ns/pod.v6}` with the pod's addresses.
fn render(policy: &str, topology: &Topology) -> String {
    let mut text = policy.to_owned();
    for pod in topology.pods() {
        for (family, suffix) in [(Family::V4, "v4"), (Family::V6, "v6")] {
            let placeholder = format!("${{{}.{suffix}}}", pod.id());
            text = text.replace(&placeholder, &pod.ip(family).to_string());
        }
    }
    assert!(!text.contains("${"), "unknown placeholder in:\n{text}");
    text
}

/// Makes `policy` the suite's only policy file (removes it when empty) and waits until the
/// agent has applied the change.
fn apply_policy(agent: &mut Agent<'_>, dir: &Path, policy: &str) {
    let exists = dir.join(POLICY_FILE).exists();
    if policy.is_empty() && !exists {
        return; // nothing changes, so no new generation will come
    }
    let generation = agent.status().generation;
    if policy.is_empty() {
        manifests::remove(dir, POLICY_FILE);
    } else {
        manifests::write_atomic(dir, POLICY_FILE, policy);
    }
    agent.wait_generation_after(generation);
}

/// Rewrites the manifest of pod `id` with its model labels plus `extra`, and waits until
/// the agent has applied it.
fn relabel(
    agent: &mut Agent<'_>,
    topology: &Topology,
    dir: &Path,
    id: &str,
    extra: &[(&str, &str)],
) {
    // The topology keeps the model's labels; each call starts again from them.
    let mut labels: Labels = topology.pod(id).spec().labels.clone();
    labels.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let generation = agent.status().generation;
    topology.relabel(dir, id, &labels);
    agent.wait_generation_after(generation);
}

/// Probes every case and panics with the matrices when `expect` does not hold.
fn check(topology: &Topology, step: &str, expect: impl Fn(Case) -> Reachability) {
    let expectations: Vec<_> = Case::all()
        .into_iter()
        .map(|case| (case, expect(case)))
        .collect();
    let reports = topology.verify(&expectations);
    assert!(
        reports.is_empty(),
        "after \"{step}\":\n{}",
        reports.join("\n")
    );
}
