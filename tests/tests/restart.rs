//! Restarts: maps and TCX links are pinned, so enforcement outlives the agent, a `kill -9`
//! included; a new agent adopts them, replaces the programs inside the links atomically and
//! reconciles; established connections survive all of it; `weir uninstall` removes
//! everything the agent pinned.
//!
//! The agent runs with the host's mounts (`nsenter --net`) so that its pins outlive it, under
//! a pin folder of this run only, removed on every path. Its socket programs attach to a
//! cgroup of the test's: pinned too, they stay one per hook through the restart and go with
//! `weir uninstall`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use testbed::{
    Agent, Cgroup, Family, Launch, PodSpec, Proto, RunTag, SOCKET_HOOKS, TempDir, Topology,
    manifests,
};

/// The port of the long-lived connection.
const LONG_LIVED_PORT: u16 = 7000;

/// Removes the run's pin folder on every path (`weir uninstall` does it on the happy path).
struct PinFolder(PathBuf);

impl Drop for PinFolder {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = weir::pins::Pins::new(&self.0).remove_all();
        }
    }
}

const POLICY: &str = "
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
";

/// The change made after the restart: x/a now accepts y/c only (`"y"` quoted: YAML 1.1, as
/// kubectl reads it, takes a bare `y` for true).
const POLICY_AFTER: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: \"y\"
          podSelector:
            matchLabels:
              pod: c
";

/// A line echo server in pod x/a that keeps its connections open.
fn serve_long_lived(topology: &Topology, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let addr = SocketAddr::new(topology.pod("x/a").ip(Family::V4), LONG_LIVED_PORT);
    let stop = Arc::clone(stop);
    topology
        .pod("x/a")
        .netns()
        .spawn("long-lived-server".into(), move || {
            let listener = TcpListener::bind(addr).expect("binding the long-lived server");
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        thread::spawn(move || echo_lines(conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })
}

fn echo_lines(conn: TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut writer = conn.try_clone().expect("cloning the connection");
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if writeln!(writer, "{line}").is_err() {
            return;
        }
    }
}

/// One connection from x/b to x/a, exchanging a line every 50 ms until stopped; counts the
/// exchanges that worked and panics (in its thread) at the first that did not.
fn keep_talking(
    topology: &Topology,
    stop: &Arc<AtomicBool>,
    exchanges: &Arc<AtomicU64>,
) -> JoinHandle<Result<(), String>> {
    let to = SocketAddr::new(topology.pod("x/a").ip(Family::V4), LONG_LIVED_PORT);
    let stop = Arc::clone(stop);
    let exchanges = Arc::clone(exchanges);
    topology
        .pod("x/b")
        .netns()
        .spawn("long-lived-client".into(), move || {
            let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map_err(|e| format!("connecting: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                writeln!(writer, "ping {n}").map_err(|e| format!("write {n}: {e}"))?;
                line.clear();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("reply {n}: {e}"))?;
                if line.trim() != format!("ping {n}") {
                    return Err(format!("reply {n} was {line:?}"));
                }
                n += 1;
                exchanges.store(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
}

/// Probes y/c → x/a (denied by the policy) over and over until stopped; returns how many
/// got through.
fn keep_probing_denied(topology: &Topology, stop: &Arc<AtomicBool>) -> JoinHandle<u64> {
    let to = SocketAddr::new(topology.pod("x/a").ip(Family::V4), 80);
    let stop = Arc::clone(stop);
    topology
        .pod("y/c")
        .netns()
        .spawn("denied-prober".into(), move || {
            let mut wrongly_allowed = 0;
            while !stop.load(Ordering::Relaxed) {
                if TcpStream::connect_timeout(&to, Duration::from_millis(100)).is_ok() {
                    wrongly_allowed += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            wrongly_allowed
        })
}

fn expect_enforced(topology: &Topology, step: &str) {
    assert!(
        topology.probe("x/b", "x/a", 80, Proto::Tcp, Family::V4),
        "{step}: x/b → x/a must connect"
    );
    assert!(
        !topology.probe("y/c", "x/a", 80, Proto::Tcp, Family::V4),
        "{step}: y/c → x/a must be denied"
    );
}

/// Waits (bounded) until `expected` socket programs are attached to `cgroup`: a replaced or
/// unpinned link is released from a kernel work queue, a moment later.
fn expect_socket_programs(cgroup: &Cgroup, expected: u32, step: &str) {
    let mut attached = cgroup.attached_programs(&SOCKET_HOOKS);
    for _ in 0..50 {
        if attached == expected {
            return;
        }
        thread::sleep(Duration::from_millis(20));
        attached = cgroup.attached_programs(&SOCKET_HOOKS);
    }
    assert_eq!(attached, expected, "{step}: socket programs on the cgroup");
}

#[test]
fn enforcement_and_connections_survive_kill_9_and_restart_and_uninstall_removes_everything() {
    testbed::require_root!();
    let topology = Topology::builder()
        .pods([
            PodSpec::new("x", "a")
                .label("pod", "a")
                .namespace_label("ns", "x"),
            PodSpec::new("x", "b")
                .label("pod", "b")
                .namespace_label("ns", "x"),
            PodSpec::new("y", "c")
                .label("pod", "c")
                .namespace_label("ns", "y"),
        ])
        .build();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    manifests::write_atomic(dir.path(), "policy.yaml", POLICY);
    let tag = RunTag::random();
    let pins = PinFolder(PathBuf::from(format!(
        "/sys/fs/bpf/weir-test-{}",
        tag.as_str()
    )));
    let cgroup = Cgroup::new(&tag, "agent");
    let launch = Launch::Pinned {
        pin_path: pins.0.clone(),
        cgroup: cgroup.path().to_path_buf(),
    };

    let mut agent = Agent::start_with(&topology, dir.path(), &launch);
    agent.wait_ready();
    expect_enforced(&topology, "first agent");
    expect_socket_programs(&cgroup, 8, "first agent");

    let stop = Arc::new(AtomicBool::new(false));
    let exchanges = Arc::new(AtomicU64::new(0));
    let server = serve_long_lived(&topology, &stop);
    thread::sleep(Duration::from_millis(100));
    let client = keep_talking(&topology, &stop, &exchanges);
    let prober = keep_probing_denied(&topology, &stop);
    thread::sleep(Duration::from_millis(500));

    agent.kill_9();
    assert!(
        pins.0
            .join("links")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
    thread::sleep(Duration::from_millis(500));
    expect_enforced(&topology, "no agent (killed with SIGKILL)");
    expect_socket_programs(&cgroup, 8, "no agent (killed with SIGKILL)");

    let before_restart = exchanges.load(Ordering::Relaxed);
    let mut agent = Agent::start_with(&topology, dir.path(), &launch);
    agent.wait_ready();
    thread::sleep(Duration::from_millis(500));
    expect_enforced(&topology, "second agent, adopting the pins");
    expect_socket_programs(
        &cgroup,
        8,
        "second agent, its links pinned over the first's",
    );

    stop.store(true, Ordering::Relaxed);
    let talked = client.join().expect("client thread");
    let wrongly_allowed = prober.join().expect("prober thread");
    server.join().expect("server thread");
    talked.unwrap_or_else(|e| panic!("the long-lived connection broke: {e}"));
    assert!(
        exchanges.load(Ordering::Relaxed) > before_restart,
        "the connection exchanged nothing after the restart"
    );
    assert_eq!(
        wrongly_allowed, 0,
        "denied connections went through during the kill and restart"
    );

    // The restarted agent still follows changes: allow y/c too.
    let generation = agent.status().generation;
    manifests::write_atomic(dir.path(), "policy.yaml", POLICY_AFTER);
    let status = agent.wait_generation_after(generation);
    assert!(
        topology.probe("y/c", "x/a", 80, Proto::Tcp, Family::V4),
        "a change applied by the restarted agent takes effect; status {}\n{}",
        status.raw,
        agent.log_tail()
    );

    drop(agent);
    assert!(
        !topology.probe("x/b", "x/a", 80, Proto::Tcp, Family::V4),
        "a stopped agent leaves enforcement in place"
    );
    expect_socket_programs(&cgroup, 8, "a stopped agent");
    testbed::uninstall(&pins.0);
    assert!(!pins.0.exists(), "weir uninstall left {}", pins.0.display());
    expect_socket_programs(&cgroup, 0, "after uninstall");
    // Unpinning releases a link from a kernel work queue: give it a moment (bounded).
    let open = (0..20).any(|_| {
        let ok = topology.probe("x/b", "x/a", 80, Proto::Tcp, Family::V4);
        if !ok {
            thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(open, "after uninstall nothing filters any more");
}
