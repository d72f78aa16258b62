//! Restarts on the uplink: the uplink program's TCX link is pinned like the pods' links, so
//! node ports keep answering while no agent runs on the node, a `kill -9` included; a new
//! agent adopts the pinned link (one link, one program on the uplink, not a second
//! attachment) and connections from outside, masqueraded or not, survive all of it;
//! `weir uninstall` removes the link, after which the node's own stack answers its node
//! ports again while the other node, whose agent still runs, serves them.
//!
//! On a two-node [`testbed::Cluster`]: pod `npr/near` on `node1`, `npr/far` on `node2`, each
//! alone behind a `NodePort` Service of `externalTrafficPolicy: Cluster` (`near` on 30090,
//! `far` on 30091), so that a connection through `node1` to `far` is masqueraded to `node1`'s
//! address and one to `near` keeps the client's. Both agents run with the host's mounts
//! (`nsenter --net`) so that their pins outlive them, each under a pin folder of this run only,
//! removed on every path, and with its socket programs on a cgroup of the test's.
//!
//! Needs root; skips otherwise. Builds `weir` with cargo unless `WEIR_BIN` names a binary.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use testbed::{
    Agent, Answer, Cgroup, Cluster, Family, Launch, PodSpec, Proto, RunTag, Session, TempDir,
    UPLINK, manifests, weir_binary,
};

/// Namespace of the Services and their pods.
const NS: &str = "npr";
/// The port of both Services, and what their pods serve.
const SERVICE_PORT: u16 = 80;

/// A `NodePort` Service selecting one pod.
#[derive(Clone, Copy)]
struct Service {
    name: &'static str,
    /// Picks the cluster IPs 10.97.0.N and `fd97::N`.
    n: u8,
    node_port: u16,
    /// The node its one backend (the pod of the same name) runs on.
    backend_node: &'static str,
}

const NEAR: Service = Service {
    name: "near",
    n: 1,
    node_port: 30090,
    backend_node: "node1",
};
const FAR: Service = Service {
    name: "far",
    n: 2,
    node_port: 30091,
    backend_node: "node2",
};
const SERVICES: [Service; 2] = [NEAR, FAR];

/// New connections per Service and family at each step.
const NEW_CONNECTIONS: usize = 4;
/// A long-lived connection exchanges this often.
const TALK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a long-lived connection waits for each answer: longer than a retransmission.
const TALK_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Exchanges each long-lived connection must make at each step (with the first agent, with
/// none, with the second).
const EXCHANGES_PER_STEP: u64 = 10;
/// Bound on every wait for the kernel or the traffic to reach a state.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

impl Service {
    fn id(&self) -> String {
        format!("{NS}/{}", self.name)
    }

    fn yaml(&self) -> String {
        let (name, n, node_port) = (self.name, self.n, self.node_port);
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
             spec:\n  type: NodePort\n  clusterIPs:\n    - 10.97.0.{n}\n    - fd97::{n}\n  \
             ipFamilyPolicy: RequireDualStack\n  selector:\n    pod: {name}\n  \
             externalTrafficPolicy: Cluster\n  ports:\n    - name: tcp\n      protocol: TCP\n      \
             port: {SERVICE_PORT}\n      targetPort: {SERVICE_PORT}\n      nodePort: {node_port}\n"
        )
    }

    /// Where the client reaches this Service through node `entry`.
    fn at(&self, cluster: &Cluster, entry: &str, family: Family) -> SocketAddr {
        SocketAddr::new(cluster.node(entry).ip(family), self.node_port)
    }

    /// The source address the backend sees for the client's first address, reaching it
    /// through `entry`: the client's own when the backend runs there, else `entry`'s
    /// (masquerade).
    fn seen(&self, cluster: &Cluster, entry: &str, family: Family) -> IpAddr {
        if self.backend_node == entry {
            cluster.client_ip(family, 0)
        } else {
            cluster.node(entry).ip(family)
        }
    }
}

fn cluster() -> Cluster {
    let pod = |name: &str| {
        PodSpec::new(NS, name)
            .label("pod", name)
            .namespace_label("kubernetes.io/metadata.name", NS)
    };
    Cluster::builder()
        .pod(NEAR.backend_node, pod(NEAR.name))
        .pod(FAR.backend_node, pod(FAR.name))
        .build()
}

// ---------------------------------------------------------------------------------------------
// Pins
// ---------------------------------------------------------------------------------------------

/// A node's pin folder and socket cgroup, of this run only. The folder is removed on every
/// path (`weir uninstall` does it on the happy path); the cgroup goes with its guard.
struct NodePins {
    root: PathBuf,
    cgroup: Cgroup,
}

impl NodePins {
    fn new(tag: &RunTag, node: &str) -> Self {
        Self {
            root: PathBuf::from(format!("/sys/fs/bpf/weir-test-{}-{node}", tag.as_str())),
            cgroup: Cgroup::new(tag, node),
        }
    }

    fn launch(&self) -> Launch {
        Launch::Pinned {
            pin_path: self.root.clone(),
            cgroup: self.cgroup.path().to_path_buf(),
        }
    }

    /// The names of the uplink links pinned (`<ifindex>-from_world`).
    fn uplink_pins(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("links"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.ends_with("-from_world"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for NodePins {
    fn drop(&mut self) {
        if self.root.exists() {
            let _ = weir::pins::Pins::new(&self.root).remove_all();
        }
    }
}

/// Starts node `node`'s agent with its pins, and waits until it is ready.
fn start_agent<'c>(cluster: &'c Cluster, node: &str, pins: &NodePins, dir: &Path) -> Agent<'c> {
    let mut agent = cluster.start_agent(node, &Agent::options().launch(pins.launch()), dir);
    agent.wait_ready();
    agent
}

/// Waits (bounded) until no program is left on TC ingress of `node`'s uplink: an unpinned
/// link is released from a kernel work queue, a moment later.
fn expect_no_uplink_program(cluster: &Cluster, node: &str, step: &str) {
    let netns = cluster.node(node).netns();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut attached = netns.tcx_ingress_programs(UPLINK);
    while attached != 0 && Instant::now() < deadline {
        thread::sleep(POLL_INTERVAL);
        attached = netns.tcx_ingress_programs(UPLINK);
    }
    assert_eq!(
        attached, 0,
        "{step}: programs on TC ingress of {node}'s {UPLINK}"
    );
}

/// Exactly one uplink link pinned, for `node`'s uplink, and exactly one program on it, now:
/// a link adopted has its program replaced in place, so a second one, even for the moment a
/// replaced link takes to go, is a second attachment.
fn expect_one_uplink_link(cluster: &Cluster, node: &str, pins: &NodePins, step: &str) {
    let netns = cluster.node(node).netns();
    let ifindex = netns.ifindex(UPLINK);
    assert_eq!(
        pins.uplink_pins(),
        [format!("{ifindex}-from_world")],
        "{step}: uplink link pins of {node} (its {UPLINK} is interface {ifindex})"
    );
    assert_eq!(
        netns.tcx_ingress_programs(UPLINK),
        1,
        "{step}: programs on TC ingress of {node}'s {UPLINK}"
    );
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

/// `weir status`, as text and as JSON, names the uplink of the agent at `agent`.
fn expect_status_lists_uplink(cluster: &Cluster, node: &str, agent: &Agent<'_>, step: &str) {
    let status = |output: &str| {
        let addr = agent.health_addr().to_string();
        let binary = weir_binary().to_str().expect("a UTF-8 path to weir");
        let out = cluster.node(node).netns().exec(
            binary,
            &["status", "--health-addr", &addr, "--output", output],
        );
        assert!(
            out.status.success(),
            "{step}: weir status --output {output}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status("text");
    assert!(
        text.lines().any(|l| l == format!("uplinks: {UPLINK}")),
        "{step}: weir status does not list the uplink:\n{text}"
    );
    let json = status("json");
    let parsed: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{step}: weir status --output json: {e}\n{json}"));
    assert_eq!(
        parsed["uplinks"],
        serde_json::json!([UPLINK]),
        "{step}: weir status --output json\n{json}"
    );
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Whether `answer` is `service`'s backend seeing `seen`.
fn check_answer(answer: &Answer, service: &Service, seen: IpAddr) -> Result<(), String> {
    if answer.pod == service.id() && answer.peer.ip() == seen {
        Ok(())
    } else {
        Err(format!(
            "answered by {} seeing {}, expected {} seeing {seen}",
            answer.pod,
            answer.peer,
            service.id()
        ))
    }
}

/// What goes wrong with [`NEW_CONNECTIONS`] new connections from the client to each Service
/// through node `entry`, each family: each must reach the Service's backend, seeing the
/// address [`Service::seen`] gives.
fn new_connection_failures(cluster: &Cluster, entry: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for family in Family::ALL {
        let client = cluster.client_ip(family, 0);
        for service in &SERVICES {
            let dst = service.at(cluster, entry, family);
            let seen = service.seen(cluster, entry, family);
            for _ in 0..NEW_CONNECTIONS {
                let outcome = cluster
                    .client()
                    .run(|| testbed::exchange_from(client, dst, Proto::Tcp))
                    .map_err(|e| e.to_string())
                    .and_then(|answer| check_answer(&answer, service, seen));
                if let Err(e) = outcome {
                    failures.push(format!("{} through {entry} at {dst}: {e}", service.id()));
                }
            }
        }
    }
    failures
}

fn expect_new_connections_served(cluster: &Cluster, entry: &str, step: &str) {
    let failures = new_connection_failures(cluster, entry);
    assert!(
        failures.is_empty(),
        "{step}: new node-port connections through {entry} failed:\n{}",
        failures.join("\n")
    );
}

/// Waits (bounded) until new connections to every node port of `entry` are refused: no
/// program translates them, and the node's own stack has nothing listening there. Every
/// attempt after the first refusal must be refused too.
fn expect_node_ports_refused(cluster: &Cluster, entry: &str, step: &str) {
    let attempt = |dst: SocketAddr, client: IpAddr| {
        cluster
            .client()
            .run(|| testbed::exchange_from(client, dst, Proto::Tcp))
    };
    for family in Family::ALL {
        let client = cluster.client_ip(family, 0);
        for service in &SERVICES {
            let dst = service.at(cluster, entry, family);
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let mut last = attempt(dst, client);
            while !is_refusal(&last) && Instant::now() < deadline {
                thread::sleep(POLL_INTERVAL);
                last = attempt(dst, client);
            }
            for n in 1..=NEW_CONNECTIONS {
                assert!(
                    is_refusal(&last),
                    "{step}: {} through {entry} at {dst}, attempt {n}: {last:?}; \
                     expected a refusal by {entry}'s own stack",
                    service.id()
                );
                last = attempt(dst, client);
            }
        }
    }
}

fn is_refusal(outcome: &std::io::Result<Answer>) -> bool {
    matches!(outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// One long-lived connection from the client through a node port, exchanging every
/// [`TALK_INTERVAL`] until stopped.
struct Talk {
    what: String,
    exchanges: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
    /// How it ended, once its thread is joined.
    ended: Option<Result<(), String>>,
}

impl Talk {
    /// How the connection ended: joins its thread when it has ended, or when `wait` (the
    /// stop flag is set, so it ends after its current exchange); `None` while it runs.
    fn ended(&mut self, wait: bool) -> Option<&Result<(), String>> {
        if self
            .thread
            .as_ref()
            .is_some_and(|t| wait || t.is_finished())
        {
            let thread = self.thread.take().expect("checked just above");
            let outcome = thread
                .join()
                .unwrap_or_else(|_| Err("its thread panicked".to_owned()));
            self.ended = Some(outcome);
        }
        self.ended.as_ref()
    }
}

/// Long-lived connections, stopped and joined on drop (their thread is in the client's
/// namespace, which must not outlive the cluster).
struct Talks {
    stop: Arc<AtomicBool>,
    talks: Vec<Talk>,
}

impl Talks {
    /// Opens one connection per family and Service through `entry`, each checked to reach
    /// the Service's backend seeing [`Service::seen`], then exchanging the same way (the same
    /// backend, the same translated source) until stopped.
    fn start(cluster: &Cluster, entry: &str) -> Self {
        let mut talks = Self {
            stop: Arc::new(AtomicBool::new(false)),
            talks: Vec::new(),
        };
        for family in Family::ALL {
            for service in &SERVICES {
                let talk = talk(cluster, entry, service, family, &talks.stop);
                talks.talks.push(talk);
            }
        }
        talks
    }

    /// The exchanges each connection has made so far.
    fn counts(&self) -> Vec<u64> {
        self.talks
            .iter()
            .map(|t| t.exchanges.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits (bounded) until every connection has made `more` exchanges past `since` (as
    /// [`Talks::counts`] gave them), or one has ended.
    fn wait_exchanges_past(&self, since: &[u64], more: u64) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let done = || {
            self.talks.iter().zip(since).all(|(t, &before)| {
                t.exchanges.load(Ordering::Relaxed) >= before + more
                    || t.thread.as_ref().is_none_or(JoinHandle::is_finished)
            })
        };
        while !done() && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits as [`Talks::wait_exchanges_past`] for [`EXCHANGES_PER_STEP`] exchanges, and
    /// panics naming every connection that made fewer, with its error if it broke. Returns
    /// the counts reached.
    fn expect_talking(&mut self, since: &[u64], step: &str) -> Vec<u64> {
        self.wait_exchanges_past(since, EXCHANGES_PER_STEP);
        let counts = self.counts();
        let mut stalled = Vec::new();
        for (talk, (before, now)) in self.talks.iter_mut().zip(since.iter().zip(&counts)) {
            if *now < before + EXCHANGES_PER_STEP {
                let state = match talk.ended(false) {
                    Some(Err(e)) => format!("broke: {e}"),
                    Some(Ok(())) => "ended".to_owned(),
                    None => "still open".to_owned(),
                };
                stalled.push(format!(
                    "{}: {} exchanges, {state}",
                    talk.what,
                    now - before
                ));
            }
        }
        assert!(
            stalled.is_empty(),
            "{step}: long-lived connections made fewer than {EXCHANGES_PER_STEP} exchanges \
             within {SETTLE_TIMEOUT:?}:\n{}",
            stalled.join("\n")
        );
        counts
    }

    /// Stops every connection and returns how each went: its description, exchanges and
    /// outcome.
    fn stop(mut self) -> Vec<(String, u64, Result<(), String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.talks
            .drain(..)
            .map(|mut t| {
                let outcome = t.ended(true).cloned().expect("joined");
                (t.what, t.exchanges.load(Ordering::Relaxed), outcome)
            })
            .collect()
    }
}

impl Drop for Talks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for talk in &mut self.talks {
            talk.ended(true);
        }
    }
}

fn talk(
    cluster: &Cluster,
    entry: &str,
    service: &Service,
    family: Family,
    stop: &Arc<AtomicBool>,
) -> Talk {
    let client = cluster.client_ip(family, 0);
    let dst = service.at(cluster, entry, family);
    let seen = service.seen(cluster, entry, family);
    let what = format!("{} through {entry} at {dst} ({family})", service.id());
    let id = service.id();
    let expected = *service;
    let exchanges = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&exchanges);
    let stop = Arc::clone(stop);
    let thread = cluster
        .client()
        .spawn(format!("talk-{id}-{family}"), move || {
            let mut session = Session::open_from(client, dst, Proto::Tcp)
                .map_err(|(local, e)| format!("connecting from {local}: {e}"))?;
            session
                .set_reply_timeout(TALK_REPLY_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let local = session.local_addr();
            let first = session
                .exchange()
                .map_err(|e| format!("from {local}: exchange 1: {e}"))?;
            check_answer(&first, &expected, seen).map_err(|e| format!("from {local}: {e}"))?;
            let mut n = 1;
            counter.store(n, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(TALK_INTERVAL);
                let answer = session
                    .exchange()
                    .map_err(|e| format!("from {local}: exchange {}: {e}", n + 1))?;
                if answer != first {
                    return Err(format!(
                        "from {local}: exchange {} reached {} seeing {}, the first {} seeing {}",
                        n + 1,
                        answer.pod,
                        answer.peer,
                        first.pod,
                        first.peer
                    ));
                }
                n += 1;
                counter.store(n, Ordering::Relaxed);
            }
            Ok(())
        });
    Talk {
        what,
        exchanges,
        thread: Some(thread),
        ended: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn node_ports_and_their_connections_survive_kill_9_and_restart_and_uninstall_removes_the_uplink_link()
 {
    testbed::require_root!();
    let cluster = cluster();
    let dir = TempDir::new("manifests");
    cluster.write_manifests(dir.path());
    let services: Vec<String> = SERVICES.iter().map(Service::yaml).collect();
    manifests::write_atomic(dir.path(), "services.yaml", &services.join("---\n"));
    let tag = RunTag::random();
    let node1_pins = NodePins::new(&tag, "node1");
    let node2_pins = NodePins::new(&tag, "node2");

    let agent = start_agent(&cluster, "node1", &node1_pins, dir.path());
    let _node2_agent = start_agent(&cluster, "node2", &node2_pins, dir.path());
    expect_status_lists_uplink(&cluster, "node1", &agent, "first agent");
    expect_one_uplink_link(&cluster, "node1", &node1_pins, "first agent");
    expect_one_uplink_link(&cluster, "node2", &node2_pins, "node2's agent");
    expect_new_connections_served(&cluster, "node1", "first agent");

    let mut talks = Talks::start(&cluster, "node1");
    let counts = talks.expect_talking(&[0; 4], "first agent");

    agent.kill_9();
    expect_one_uplink_link(
        &cluster,
        "node1",
        &node1_pins,
        "no agent (killed with SIGKILL)",
    );
    expect_new_connections_served(&cluster, "node1", "no agent (killed with SIGKILL)");
    let before_restart = talks.expect_talking(&counts, "no agent (killed with SIGKILL)");

    let agent = start_agent(&cluster, "node1", &node1_pins, dir.path());
    expect_status_lists_uplink(&cluster, "node1", &agent, "second agent");
    expect_one_uplink_link(
        &cluster,
        "node1",
        &node1_pins,
        "second agent, adopting the pinned uplink link",
    );
    expect_new_connections_served(&cluster, "node1", "second agent");
    talks.expect_talking(&before_restart, "second agent");

    let broken: Vec<String> = talks
        .stop()
        .into_iter()
        .zip(&before_restart)
        .filter_map(|((what, exchanges, outcome), before)| {
            eprintln!("{what}: {exchanges} exchanges, {before} before the restart: {outcome:?}");
            outcome.err().map(|e| format!("{what} broke: {e}"))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "long-lived connections through node1's node ports:\n{}",
        broken.join("\n")
    );

    drop(agent);
    expect_one_uplink_link(&cluster, "node1", &node1_pins, "a stopped agent");
    expect_new_connections_served(&cluster, "node1", "a stopped agent");

    testbed::uninstall(&node1_pins.root);
    assert!(
        !node1_pins.root.exists(),
        "weir uninstall left {}",
        node1_pins.root.display()
    );
    expect_no_uplink_program(&cluster, "node1", "after uninstall");
    expect_node_ports_refused(&cluster, "node1", "after uninstall");
    expect_one_uplink_link(
        &cluster,
        "node2",
        &node2_pins,
        "node2 after node1's uninstall",
    );
    expect_new_connections_served(&cluster, "node2", "node2 after node1's uninstall");
}
