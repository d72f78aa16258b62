//! The Weir agent under test: `weir run` inside the node namespace, killed on drop.
//!
//! The contract the tests rely on:
//! - `weir run --manifests DIR --health-addr ADDR` reads every `*.yaml` of `DIR` and
//!   enforces it, re-reading when the directory changes;
//! - `GET /readyz` answers 200 once the dataplane enforces the manifests;
//! - `GET /status` answers JSON `{"generation": N, "last_error": null | "...", ...}`, where
//!   `generation` grows by one after each change of `DIR` that was applied successfully.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::tempdir::TempDir;
use crate::topology::Topology;

/// Loading and attaching the eBPF programs takes well under a second; the margin is for a
/// debug build on a busy two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Applying a change of the manifests is a re-read and a map diff.
const GENERATION_TIMEOUT: Duration = Duration::from_secs(15);
/// Time given to the agent to detach its programs after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an error must persist before it counts as the agent's answer to a change, so
/// that one failed read (a file replaced while listed) does not fail a test.
const ERROR_GRACE: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Time given to `ip netns exec` or `nsenter` to exec into `weir`.
const EXEC_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the agent's log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// What `GET /status` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub generation: u64,
    pub last_error: Option<String>,
    /// The whole answer, for messages.
    pub raw: serde_json::Value,
}

/// How the agent process enters the node namespace, and where its socket programs go: never
/// to the machine's root cgroup, `weir run`'s default, where they would translate `ClusterIP`s
/// for every process of the machine.
#[derive(Clone, Debug)]
pub enum Launch {
    /// `ip netns exec`: a private mount namespace too, so its pins die with it. Its fresh
    /// `/sys` has no cgroup hierarchy: the socket programs are off (`--no-socket-lb`).
    Private,
    /// `nsenter --net`: the host's mounts, so pins under `pin_path` outlive the process, as
    /// on a real node; the test removes them (`weir uninstall`). The socket programs attach
    /// to `cgroup`, a [`crate::Cgroup`] of the test's, pinned as well.
    Pinned { pin_path: PathBuf, cgroup: PathBuf },
}

/// How to start `weir run`: everything but the topology and the manifests, with the tests'
/// defaults. Built as a chain: `Agent::options().arg("--poll-ms").arg("50").start(..)`.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    launch: Launch,
    binary: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    ready_interval: Duration,
    stop_timeout: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            launch: Launch::Private,
            binary: None,
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            ready_interval: POLL_INTERVAL,
            stop_timeout: STOP_TIMEOUT,
        }
    }
}

impl AgentOptions {
    /// How the agent enters the node namespace (default [`Launch::Private`]).
    #[must_use]
    pub fn launch(mut self, launch: Launch) -> Self {
        self.launch = launch;
        self
    }

    /// The `weir` binary to run (default [`weir_binary`]).
    #[must_use]
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = Some(binary.to_owned());
        self
    }

    /// One more argument of `weir run`, after those the test bed passes
    /// (`--manifests`, `--health-addr`, `--pin-path`).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable of the agent (`RUST_LOG` defaults to the test's, or `info`).
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long [`Agent::wait_ready`] waits, and how often it asks.
    #[must_use]
    pub fn ready_within(mut self, timeout: Duration, interval: Duration) -> Self {
        self.ready_timeout = timeout;
        self.ready_interval = interval;
        self
    }

    /// How long the agent may take to exit after SIGTERM before it is killed: it handles
    /// signals between checks, and a check that reloads a large directory takes seconds.
    #[must_use]
    pub fn stop_within(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Starts `weir run` in the node namespace of `topology`, reading `manifests`.
    pub fn start<'t>(&self, topology: &'t Topology, manifests: &Path) -> Agent<'t> {
        Agent::spawn(topology.node(), manifests, self)
    }

    /// Starts `weir run` in the node namespace `node` (one node of a [`crate::Cluster`]),
    /// reading `manifests`. Agents of different nodes clash on nothing: each has its own
    /// network namespace for its health port, and with [`Launch::Private`] its own mount
    /// namespace for its pins; with [`Launch::Pinned`] give each its own pin path and
    /// cgroup.
    pub fn start_in<'t>(&self, node: &'t Netns, manifests: &Path) -> Agent<'t> {
        Agent::spawn(node, manifests, self)
    }
}

/// A running `weir run`. Borrows its node's namespace so that it stops before the
/// namespaces go.
#[derive(Debug)]
pub struct Agent<'t> {
    node: &'t Netns,
    child: Child,
    /// The `weir` process: the child, once `ip netns exec` or `nsenter` has exec'd into it.
    pid: u32,
    health: SocketAddr,
    started: Instant,
    ready_timeout: Duration,
    ready_interval: Duration,
    stop_timeout: Duration,
    log: PathBuf,
    _log_dir: TempDir,
}

impl<'t> Agent<'t> {
    /// Starts `weir run` in the node namespace of `topology`, reading `manifests`.
    ///
    /// `ip netns exec` also gives the agent a private mount namespace: whatever it pins in
    /// bpffs disappears when it exits, so a killed agent leaves nothing in the host's
    /// `/sys/fs/bpf`. The tests never restart an agent, so they need no pin to survive it.
    pub fn start(topology: &'t Topology, manifests: &Path) -> Self {
        Self::options().start(topology, manifests)
    }

    /// Starts `weir run` as `launch` says.
    pub fn start_with(topology: &'t Topology, manifests: &Path, launch: &Launch) -> Self {
        Self::options()
            .launch(launch.clone())
            .start(topology, manifests)
    }

    /// The defaults, to change before [`AgentOptions::start`].
    pub fn options() -> AgentOptions {
        AgentOptions::default()
    }

    fn spawn(node: &'t Netns, manifests: &Path, options: &AgentOptions) -> Self {
        let binary = options.binary.as_deref().unwrap_or_else(|| weir_binary());
        let port = node.run(free_loopback_port);
        let health = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log_dir = TempDir::new("agent-log");
        let log = log_dir.path().join("weir.log");
        let log_file = File::create(&log).expect("creating the agent log");
        let mut command = match &options.launch {
            Launch::Private => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", node.name()]);
                c
            }
            Launch::Pinned { .. } => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", node.path().display()));
                c
            }
        };
        // SAFETY: prctl is async-signal-safe, the only kind of call allowed between fork
        // and exec. The setting survives the exec of `ip` and then of `weir`.
        unsafe {
            command.pre_exec(|| {
                // A test killed outright (CI timeout, ^C) runs no Drop: the kernel then stops
                // the agent, so that no orphan keeps enforcing in a namespace. The signal
                // follows the thread that starts the agent, the test's own.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        command.arg(binary).arg("run");
        match &options.launch {
            Launch::Private => command.arg("--no-socket-lb"),
            Launch::Pinned { pin_path, cgroup } => command
                .arg("--pin-path")
                .arg(pin_path)
                .arg("--cgroup")
                .arg(cgroup),
        };
        command
            .arg("--manifests")
            .arg(manifests)
            .arg("--health-addr")
            .arg(health.to_string())
            .args(&options.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("cloning the log handle"))
            .stderr(log_file);
        let started = Instant::now();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut agent = Self {
            node,
            pid: child.id(),
            child,
            health,
            started,
            ready_timeout: options.ready_timeout,
            ready_interval: options.ready_interval,
            stop_timeout: options.stop_timeout,
            log,
            _log_dir: log_dir,
        };
        agent.pid = agent.find_weir(binary);
        agent
    }

    /// The pid of the `weir` process: the child itself once the launcher has exec'd, or a
    /// child of it if the launcher forked instead.
    fn find_weir(&mut self, binary: &Path) -> u32 {
        let binary = std::fs::canonicalize(binary)
            .unwrap_or_else(|e| panic!("resolving {}: {e}", binary.display()));
        let is_weir = |pid: u32| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary)
        };
        let deadline = Instant::now() + EXEC_TIMEOUT;
        let root = self.child.id();
        loop {
            if is_weir(root) {
                return root;
            }
            if let Some(pid) = children(root).into_iter().find(|&pid| is_weir(pid)) {
                return pid;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {} process under pid {root} after {EXEC_TIMEOUT:?}",
                binary.display()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The `weir` process's id, for `/proc/PID/...`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until `GET /readyz` answers 200; returns the time since the agent was spawned.
    /// Panics with the agent's log on timeout or when the agent exits.
    pub fn wait_ready(&mut self) -> Duration {
        let deadline = self.started + self.ready_timeout;
        loop {
            self.assert_running();
            if let Ok((200, _)) = self.get("/readyz") {
                return self.started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "weir not ready after {:?}\n{}",
                self.ready_timeout,
                self.log_tail()
            );
            thread::sleep(self.ready_interval);
        }
    }

    /// The current `/status`; panics when the agent does not answer it.
    pub fn status(&mut self) -> Status {
        self.assert_running();
        match self.get("/status") {
            Ok((200, body)) => {
                parse_status(&body).unwrap_or_else(|e| panic!("bad /status answer {body:?}: {e}"))
            }
            other => panic!("GET /status: {other:?}\n{}", self.log_tail()),
        }
    }

    /// Waits until the generation is above `generation`, that is, until a change made after
    /// reading `generation` has been applied; returns the new status.
    ///
    /// An error the agent keeps reporting for [`ERROR_GRACE`] ends the wait at once: the
    /// change was rejected, and waiting for the timeout would only hide why.
    pub fn wait_generation_after(&mut self, generation: u64) -> Status {
        self.wait_generation_after_polling(generation, POLL_INTERVAL)
    }

    /// [`Agent::wait_generation_after`], asking `/status` every `interval`: a test that
    /// times when a change took effect polls tightly, since the answer comes up to one
    /// interval late.
    pub fn wait_generation_after_polling(&mut self, generation: u64, interval: Duration) -> Status {
        let deadline = Instant::now() + GENERATION_TIMEOUT;
        let mut error_since: Option<Instant> = None;
        loop {
            let status = self.status();
            if status.generation > generation {
                return status;
            }
            if let Some(error) = &status.last_error {
                let since = *error_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < ERROR_GRACE,
                    "weir rejected the change (generation still {generation}): {error}\n{}",
                    self.log_tail()
                );
            } else {
                error_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "weir did not apply a change within {GENERATION_TIMEOUT:?} (generation still \
                 {generation}); last status {}\n{}",
                status.raw,
                self.log_tail()
            );
            thread::sleep(interval);
        }
    }

    /// Where the agent serves HTTP, on the node namespace's loopback: clients must run in
    /// that namespace (`topology.node().exec(...)`).
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// Kills the agent outright (SIGKILL): no shutdown code runs.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the agent has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the agent's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "--- weir log (last {} lines) ---\n{}",
            tail.len(),
            tail.join("\n")
        )
    }

    /// Panics with the agent's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("weir exited: {status}\n{}", self.log_tail());
        }
    }

    /// A GET to the health endpoint, from inside the node namespace where it listens.
    fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let addr = self.health;
        self.node.run(|| http_get(addr, path))
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        stop(&mut self.child, self.stop_timeout);
    }
}

/// SIGTERM, so that the agent can detach and clean up; SIGKILL if it does not exit within
/// `timeout`.
fn stop(child: &mut Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return; // already reaped (killed by the test): its pid may belong to another process
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(POLL_INTERVAL);
    }
    eprintln!("warning: weir ignored SIGTERM for {timeout:?}; killing it");
    child.kill().ok();
    child.wait().ok();
}

/// The children of `pid` (of its main thread).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A TCP port nothing listens on in the calling thread's namespace.
fn free_loopback_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral loopback port")
        .port()
}

/// A minimal HTTP/1.0 GET: the server closes the connection after the body and, for a 1.0
/// client, sends it without chunked encoding. Returns the status code and body. Runs in the
/// calling thread's network namespace.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    // One write, hence one segment: `write!` on a socket would send each piece of the format
    // separately, and a minimal server that parses its first read() would see "GET " alone.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no end of headers"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((code, body.to_owned()))
}

fn parse_status(body: &str) -> Result<Status, String> {
    let raw: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let generation = raw["generation"]
        .as_u64()
        .ok_or("no unsigned `generation`")?;
    let last_error = match &raw["last_error"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => {
            return Err(format!(
                "`last_error` is neither null nor a string: {other}"
            ));
        }
    };
    Ok(Status {
        generation,
        last_error,
        raw,
    })
}

/// Runs `weir uninstall --pin-path PIN_PATH`; panics with its error output when it fails.
pub fn uninstall(pin_path: &Path) {
    let out = Command::new(weir_binary())
        .args(["uninstall", "--pin-path"])
        .arg(pin_path)
        .output()
        .expect("running weir uninstall");
    assert!(
        out.status.success(),
        "weir uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `weir` binary: `$WEIR_BIN`, or else built once per test process with cargo.
pub fn weir_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("WEIR_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_weir(),
    })
}

/// Variables cargo sets for the package whose test runs, not for the build it asks for.
const PACKAGE_ENV_PREFIXES: [&str; 7] = [
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// `cargo build -p dataplane-user --bin weir`, reading the binary's path from cargo's JSON
/// messages (it follows `CARGO_TARGET_DIR` and build profiles without guessing).
fn build_weir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // Cargo sets these for the test binary's own package. Inherited, they would make cargo
    // rebuild the dependencies whose build scripts track them (ring reads `CARGO_PKG_NAME`
    // and `CARGO_MANIFEST_LINKS` with `rerun-if-env-changed`), and `cargo test` rebuild
    // them back next time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if PACKAGE_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
            command.env_remove(&*name);
        }
    }
    let output = command
        .current_dir(workspace)
        .args(["build", "-p", "dataplane-user", "--bin", "weir"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(output.status.success(), "cargo build of weir failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "weir")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no weir executable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_generation_and_error() {
        let ok = parse_status(r#"{"generation": 3, "last_error": null, "pods": 9}"#).unwrap();
        assert_eq!((ok.generation, ok.last_error), (3, None));
        let bad = parse_status(r#"{"generation": 4, "last_error": "x.yaml:3: bad"}"#).unwrap();
        assert_eq!(bad.last_error.as_deref(), Some("x.yaml:3: bad"));
        assert!(parse_status(r#"{"last_error": null}"#).is_err());
    }
}
