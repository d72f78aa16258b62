//! `healthCheckNodePort`: what cloud load balancers probe to send a `LoadBalancer` Service
//! with `externalTrafficPolicy: Local` only to nodes that have one of its endpoints. On a
//! two-node cluster ([`testbed::Cluster`]) with a `weir` agent on each node, both reading one
//! manifests directory, the outside client asks each node's address for the port, over IPv4
//! and IPv6, as a load balancer's prober would.
//!
//! Pods of namespace `hc`: `h1` on `node1` (`app: first`), `h2` on `node2` (`app: second`).
//! The Service `hc/web` selects `app: first`, then nothing (`h1`'s manifest removed), then
//! `app: second` (its endpoint moved to `node2`), then is removed. kube-proxy's answers are
//! expected: 200 with `localEndpoints: N` on a node with N ready local endpoints, 503 with
//! `localEndpoints: 0` on the others, and the port closed once no Service has it.
//!
//! Every probe has a timeout, every wait a bound; the namespaces are the test's own and go
//! away on every path. Needs root; skips otherwise. Builds `weir` with cargo unless `WEIR_BIN`
//! names a binary.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use testbed::{Agent, Cluster, Family, PodSpec, TempDir, http_get, manifests};

/// Namespace of the Service and its pods.
const NS: &str = "hc";
/// The Service's health check node port.
const HEALTH_PORT: u16 = 32100;
/// The Service's node port.
const NODE_PORT: u16 = 30090;
/// How long an answer may take to follow a change the agents have applied.
const SETTLE: Duration = Duration::from_secs(5);

fn pod(name: &str, app: &str) -> PodSpec {
    PodSpec::new(NS, name)
        .label("app", app)
        .namespace_label("kubernetes.io/metadata.name", NS)
}

/// The Service, selecting pods labelled `app`.
fn service_yaml(app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  \
         type: LoadBalancer\n  clusterIPs:\n    - 10.97.0.40\n    - fd97::40\n  \
         ipFamilyPolicy: RequireDualStack\n  selector:\n    app: {app}\n  \
         externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n  ports:\n    \
         - port: 80\n      nodePort: {NODE_PORT}\nstatus:\n  loadBalancer:\n    ingress:\n      \
         - ip: 10.100.1.40\n"
    )
}

/// What a node's health check port answers: the status code and `localEndpoints`, or the
/// connection error.
type Answer = Result<(u16, u64), String>;

/// Asks `node`'s address of `family` for the health check, from the client, as a prober.
fn ask(cluster: &Cluster, node: &str, family: Family) -> Answer {
    let dst = SocketAddr::new(cluster.node(node).ip(family), HEALTH_PORT);
    let (code, body) = cluster
        .client()
        .run(|| http_get(dst, "/healthz"))
        .map_err(|e| e.kind().to_string())?;
    let body: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{dst}: body {body:?}: {e}"))?;
    let service = &body["service"];
    if service["namespace"] != NS || service["name"] != "web" {
        return Err(format!("{dst}: names another Service: {body}"));
    }
    let count = body["localEndpoints"]
        .as_u64()
        .ok_or_else(|| format!("{dst}: no localEndpoints in {body}"))?;
    Ok((code, count))
}

/// Waits (at most [`SETTLE`]) until every node answers as `expected` says over both families;
/// panics with what each answered otherwise.
fn expect(cluster: &Cluster, agents: &mut [Agent<'_>], expected: &[(&str, Answer); 2], when: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let answers: Vec<(&str, Family, Answer, &Answer)> = expected
            .iter()
            .flat_map(|(node, want)| {
                Family::ALL.map(|family| (*node, family, ask(cluster, node, family), want))
            })
            .collect();
        if answers.iter().all(|(_, _, got, want)| got == *want) {
            return;
        }
        if Instant::now() > deadline {
            let mut report = format!("{when}:\n");
            for (node, family, got, want) in &answers {
                let _ = writeln!(report, "  {node} {family:?}: got {got:?}, want {want:?}");
            }
            for agent in agents.iter_mut() {
                let _ = writeln!(report, "  /status: {}", agent.status().raw);
            }
            panic!("{report}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replaces (or with `None` removes) manifest `name` and waits until every agent applied it.
fn change(agents: &mut [Agent<'_>], dir: &Path, name: &str, yaml: Option<&str>) {
    let generations: Vec<u64> = agents.iter_mut().map(|a| a.status().generation).collect();
    match yaml {
        Some(yaml) => manifests::write_atomic(dir, name, yaml),
        None => manifests::remove(dir, name),
    }
    for (agent, generation) in agents.iter_mut().zip(generations) {
        agent.wait_generation_after(generation);
    }
}

fn refused() -> Answer {
    Err(std::io::ErrorKind::ConnectionRefused.to_string())
}

#[test]
fn health_check_node_port_answers_by_the_nodes_local_endpoints_and_follows_them() {
    testbed::require_root!();
    let cluster = Cluster::builder()
        .pod("node1", pod("h1", "first"))
        .pod("node2", pod("h2", "second"))
        .build();
    let dir = TempDir::new("manifests");
    cluster.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "service.yaml", &service_yaml("first"));
    let mut agents = cluster.start_agents(&Agent::options(), dir.path());

    expect(
        &cluster,
        &mut agents,
        &[("node1", Ok((200, 1))), ("node2", Ok((503, 0)))],
        "the endpoint on node1",
    );
    for agent in &mut agents {
        let status = agent.status().raw;
        let ports = &status["health_check_node_ports"];
        assert_eq!(ports[0]["port"], HEALTH_PORT, "{status}");
        assert_eq!(ports[0]["service"], "hc/web", "{status}");
        assert_eq!(ports[0]["serving"], true, "{status}");
    }

    change(&mut agents, dir.path(), "pod-hc-h1.yaml", None);
    expect(
        &cluster,
        &mut agents,
        &[("node1", Ok((503, 0))), ("node2", Ok((503, 0)))],
        "h1 removed: no endpoint anywhere",
    );

    let moved = service_yaml("second");
    change(&mut agents, dir.path(), "service.yaml", Some(&moved));
    expect(
        &cluster,
        &mut agents,
        &[("node1", Ok((503, 0))), ("node2", Ok((200, 1)))],
        "the endpoint moved to node2",
    );

    change(&mut agents, dir.path(), "service.yaml", None);
    expect(
        &cluster,
        &mut agents,
        &[("node1", refused()), ("node2", refused())],
        "the Service removed: its port closed",
    );
}

#[test]
fn the_health_check_manifest_passes_weir_check() {
    let dir = TempDir::new("manifests");
    manifests::write_atomic(dir.path(), "service.yaml", &service_yaml("first"));
    let output = std::process::Command::new(testbed::weir_binary())
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("running weir check");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = report
        .lines()
        .find(|l| l.starts_with("service hc/web: "))
        .unwrap_or_else(|| panic!("no line for hc/web in\n{report}"));
    assert!(
        line.contains(&format!("health check node port {HEALTH_PORT}")),
        "{line}"
    );
}
