//! Flow visibility end to end: real connections between network namespaces, then what
//! `weir flows`, `weir explain`, `weir status` and `/metrics` say about them, through the CLI
//! a person would use, run in the node namespace where the agent listens.
//!
//! The model: namespaces x and y, pods a and b in each; one policy, `x/b-to-a`, lets only x/b
//! reach x/a, on TCP 80. Needs root; skips otherwise. `--nocapture` shows each command's
//! output.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Agent, Family, Proto, TempDir, Topology, manifests, upstream_model, weir_binary};
use weir::flows::{FlowRecord, Verdict};

const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-to-a
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
      ports:
        - port: 80
";

/// Flow events reach the agent within milliseconds; the margin is for a loaded machine.
const FLOW_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `weir ARGS` in the node namespace; panics unless it exits 0. Returns stdout.
fn weir(topology: &Topology, agent: &Agent<'_>, args: &[&str]) -> String {
    let addr = agent.health_addr().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--health-addr", &addr]);
    let binary = weir_binary().to_str().expect("UTF-8 path");
    let out = topology.node().exec(binary, &all);
    assert!(
        out.status.success(),
        "weir {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_tail()
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    // Shown with `--nocapture`: what a person running these commands sees.
    eprintln!("$ weir {}\n{stdout}", args.join(" "));
    stdout
}

fn flows(topology: &Topology, agent: &Agent<'_>, args: &[&str]) -> Vec<FlowRecord> {
    let mut all = vec!["flows", "-o", "json"];
    all.extend(args);
    weir(topology, agent, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `weir flows` until `pick` finds a flow.
fn wait_for_flow(
    topology: &Topology,
    agent: &Agent<'_>,
    args: &[&str],
    what: &str,
    pick: impl Fn(&FlowRecord) -> bool,
) -> FlowRecord {
    let deadline = Instant::now() + FLOW_TIMEOUT;
    loop {
        let all = flows(topology, agent, args);
        if let Some(found) = all.iter().find(|r| pick(r)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow {what} after {FLOW_TIMEOUT:?}; flows: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn flows_explain_status_and_metrics_describe_real_traffic() {
    testbed::require_root!();
    let topology = Topology::builder()
        .pods(upstream_model(&["x", "y"], &["a", "b"]))
        .build();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "policy.yaml", POLICY);
    let mut agent = Agent::start(&topology, dir.path());
    agent.wait_ready();

    assert!(topology.probe("x/b", "x/a", 80, Proto::Tcp, Family::V4));
    assert!(!topology.probe("y/b", "x/a", 80, Proto::Tcp, Family::V4));

    let denied = wait_for_flow(
        &topology,
        &agent,
        &["--verdict", "dropped"],
        "y/b → x/a",
        |r| r.src.name.as_deref() == Some("y/b"),
    );
    assert_eq!(denied.dst.name.as_deref(), Some("x/a"));
    assert_eq!(denied.dst.port, Some(80));
    assert_eq!(denied.reason, "policy_denied");
    assert_eq!(denied.direction, "ingress");
    assert_eq!(denied.pod.as_deref(), Some("x/a"));
    assert_eq!(denied.isolated_by, ["x/b-to-a"]);
    assert_eq!(
        denied.summary,
        "isolated by policy x/b-to-a and nothing allows it"
    );
    assert_eq!(denied.tcp_flags.as_deref(), Some("SYN"));

    let allowed = wait_for_flow(&topology, &agent, &["--pod", "x/b"], "x/b → x/a", |r| {
        r.verdict == Verdict::Allowed && r.direction == "ingress"
    });
    assert_eq!(allowed.reason, "policy_allowed");
    assert_eq!(allowed.policy.as_deref(), Some("x/b-to-a"));
    assert_eq!(allowed.rule.as_deref(), Some("spec.ingress[0]"));
    // x/b is not isolated for egress: its first packet is a new connection there too.
    assert!(
        flows(&topology, &agent, &["--pod", "x/b", "--verdict", "allowed"])
            .iter()
            .any(|r| r.direction == "egress" && r.reason == "not_isolated")
    );
    // Only the first packet of a connection is reported: one allowed ingress flow per
    // connection, however many packets it carried.
    let ingress_allowed = flows(&topology, &agent, &["--pod", "x/a", "--verdict", "allowed"])
        .into_iter()
        .filter(|r| r.direction == "ingress")
        .count();
    assert_eq!(ingress_allowed, 1, "one connection, one allowed flow");
    // Filters keep what they should and only that.
    let of_y = flows(&topology, &agent, &["--namespace", "y"]);
    assert!(!of_y.is_empty());
    assert!(of_y.iter().all(|r| {
        [&r.src, &r.dst]
            .iter()
            .any(|p| p.name.as_deref().is_some_and(|n| n.starts_with("y/")))
    }));
    assert!(flows(&topology, &agent, &["--port", "81"]).is_empty());

    let text = weir(
        &topology,
        &agent,
        &["flows", "--verdict", "dropped", "--last", "1"],
    );
    assert!(
        text.contains("y/b:") && text.contains("-> x/a:80") && text.contains("DROPPED"),
        "{text}"
    );

    let why_not = weir(&topology, &agent, &["explain", "y/b", "x/a", "80/tcp"]);
    assert!(why_not.contains(": dropped"), "{why_not}");
    assert!(
        why_not.contains("isolated by policy x/b-to-a and nothing allows it"),
        "{why_not}"
    );
    let why = weir(&topology, &agent, &["explain", "x/b", "x/a", "80/tcp"]);
    assert!(
        why.contains("allowed by policy x/b-to-a, rule spec.ingress[0]"),
        "{why}"
    );
    assert!(
        why.contains("not isolated: no policy selects x/b for egress"),
        "{why}"
    );

    let status = weir(&topology, &agent, &["status"]);
    for expected in [
        "ready",
        "x/a",
        "isolated",
        "WEIR_POL_V2",
        "policy_denied",
        "flow events",
    ] {
        assert!(status.contains(expected), "no {expected:?} in:\n{status}");
    }

    let metrics = agent_metrics(&topology, &agent);
    assert!(
        metrics.contains(
            "weir_flows_total{verdict=\"dropped\",reason=\"policy_denied\",policy=\"x/b-to-a\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_flow_events_total{result=\"emitted\"}"),
        "{metrics}"
    );

    follow_sees_a_new_flow(&topology, &agent);
}

/// `weir flows --follow` prints a flow that happens after it started.
fn follow_sees_a_new_flow(topology: &Topology, agent: &Agent<'_>) {
    let addr = agent.health_addr().to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", topology.node().name()])
        .arg(weir_binary())
        .args([
            "flows",
            "--follow",
            "-o",
            "json",
            "--pod",
            "y/a",
            "--verdict",
            "dropped",
        ])
        .args(["--health-addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting weir flows --follow");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower may connect after the first probe: probe until it reports one.
    let deadline = Instant::now() + FLOW_TIMEOUT;
    let line = loop {
        assert!(!topology.probe("y/a", "x/a", 80, Proto::Tcp, Family::V6));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "weir flows --follow printed nothing"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    let record: FlowRecord = serde_json::from_str(&line).expect("a flow");
    assert_eq!(record.src.name.as_deref(), Some("y/a"));
    assert_eq!(record.verdict, Verdict::Dropped);
    assert!(record.src.ip.is_some_and(|ip| ip.is_ipv6()));
}

fn agent_metrics(topology: &Topology, agent: &Agent<'_>) -> String {
    let addr = agent.health_addr();
    let (code, body) = topology
        .node()
        .run(move || testbed::http_get(addr, "/metrics"))
        .expect("GET /metrics");
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}
