//! Services for the node's own processes, at the socket level, on the real kernel: the socket
//! programs, attached to a cgroup this test makes, point a process's `connect()` and
//! `sendto()` to a `ClusterIP` at a backend and give the `ClusterIP` back in `getpeername()`
//! and `recvfrom()`, over TCP and UDP, IPv4, IPv6 and IPv4-mapped IPv6; a Service without
//! endpoints refuses the call at once (`EPERM`); and a process outside the cgroup gets no
//! translation at all.
//!
//! Everything happens in a network namespace of the test: its loopback holds the backends'
//! addresses, and a decoy server answers on the `ClusterIP`s themselves, so that an
//! untranslated connection reaches it and says so instead of timing out. The clients are
//! this test binary again (a process of its own is needed to be in a cgroup), started with
//! `nsenter --net` (not `ip netns exec`, whose fresh `/sys` the test has no use for) and,
//! for one of them, placed in the cgroup before it executes anything. Each prints what it
//! observed as one JSON line, and the test asserts on that.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::fixtures::ip;
use testbed::{Cgroup, Netns, RunTag, SOCKET_HOOKS};
use weir::compile::{self, NodeView};
use weir::dataplane::Dataplane;
use weir::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, Origin, Protocol, Service, ServiceKind,
    ServicePort, TargetPort,
};

/// Set in the environment of the client processes: the test then plays the client.
const CLIENT_ROLE: &str = "WEIR_SERVICE_SOCKETS_CLIENT";
/// The test the client processes run.
const TEST_NAME: &str = "node_processes_in_the_cgroup_reach_services_and_no_other_process_does";
/// Marks the client's report among libtest's own output (which starts the same line).
const REPORT_MARK: &str = "service-sockets-report: ";

/// Every network wait of a client; what the programs do happens within the system call.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A client makes a dozen exchanges, each bounded by [`IO_TIMEOUT`].
const CLIENT_TIMEOUT: Duration = Duration::from_mins(1);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Addresses of one family: the backend (on the dummy interface), the Service's `ClusterIP`
/// (where the decoy listens) and the `ClusterIP` of a Service without endpoints (nowhere).
struct Family {
    name: &'static str,
    backend: &'static str,
    web: &'static str,
    empty: &'static str,
}

const V4: Family = Family {
    name: "ipv4",
    backend: "10.0.0.2",
    web: "10.96.0.10",
    empty: "10.96.0.11",
};
const V6: Family = Family {
    name: "ipv6",
    backend: "fd00::2",
    web: "fd00:96::10",
    empty: "fd00:96::11",
};
/// IPv4 reached from IPv6 sockets, as dual-stack programs do.
const MAPPED: Family = Family {
    name: "ipv4-mapped",
    backend: "::ffff:10.0.0.2",
    web: "::ffff:10.96.0.10",
    empty: "::ffff:10.96.0.11",
};

const HTTP: u16 = 80;
const HTTP_TARGET: u16 = 8080;
const DNS: u16 = 53;
const DNS_TARGET: u16 = 5353;

#[test]
fn node_processes_in_the_cgroup_reach_services_and_no_other_process_does() {
    if std::env::var_os(CLIENT_ROLE).is_some() {
        println!("{REPORT_MARK}{}", client());
        return;
    }
    testbed::require_root!();
    let tag = RunTag::random();
    let netns = Netns::new(&tag, "node");
    // On loopback: this kernel has no dummy interfaces, and a local address is all a
    // backend needs.
    netns.ip_batch(&format!(
        "link set lo up\n\
         address add {}/32 dev lo\n\
         address add {}/128 dev lo\n\
         address add {}/32 dev lo\n\
         address add {}/128 dev lo\n",
        V4.backend, V6.backend, V4.web, V6.web
    ));
    let servers = Servers::start(&netns);
    let cgroup = Cgroup::new(&tag, "clients");
    let mut dataplane = Dataplane::load().expect("loading the eBPF object (verifier)");
    let maps = compile::compile(&state(), &NodeView::default()).expect("compiling");
    dataplane.sync_maps(&maps).expect("writing maps");
    // The test's namespace plays the node: its processes are the ones translated.
    let node_netns = netns.run(|| weir::dataplane::netns_cookie().expect("netns cookie"));
    dataplane
        .attach_sockets(cgroup.path(), node_netns)
        .expect("attaching the socket programs to the test's cgroup");
    assert_eq!(cgroup.attached_programs(&SOCKET_HOOKS), 8, "one per hook");

    let inside = run_client(&netns, Some(&cgroup));
    let outside = run_client(&netns, None);
    let name = cgroup.path().file_name().expect("a cgroup name");
    let in_cgroup = |report: &Value| {
        report["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with(&*name.to_string_lossy()))
    };
    assert!(
        in_cgroup(&inside),
        "the first client runs in {name:?}: {inside}"
    );
    assert!(!in_cgroup(&outside), "the second runs elsewhere: {outside}");
    eprintln!(
        "in the cgroup:\n{}\noutside it:\n{}",
        serde_json::to_string_pretty(&inside).unwrap_or_default(),
        serde_json::to_string_pretty(&outside).unwrap_or_default()
    );
    for family in [V4, V6, MAPPED] {
        let f = family.name;
        expect_translated(&inside[f], &family);
        expect_untranslated(&outside[f], &family);
    }
    drop(dataplane);
    assert_eq!(
        cgroup.attached_programs(&SOCKET_HOOKS),
        0,
        "unpinned programs go with the dataplane"
    );
    drop(servers);
    let path = cgroup.path().to_path_buf();
    drop(cgroup);
    assert!(!path.exists(), "the cgroup guard left {}", path.display());
}

/// `weir run`'s default `--cgroup` names the root of this host's v2 hierarchy, on a unified
/// layout (`/sys/fs/cgroup`) as on a hybrid one (`/sys/fs/cgroup/unified`). Nothing attached.
#[test]
fn the_default_cgroup_is_the_root_of_the_v2_hierarchy() {
    let root = testbed::cgroup2_root();
    if !root.starts_with(weir::cli::DEFAULT_CGROUP) {
        eprintln!("skipped: cgroup2 is mounted at {}", root.display());
        return;
    }
    let resolved = Dataplane::socket_cgroup(Path::new(weir::cli::DEFAULT_CGROUP))
        .expect("the default names a cgroup v2 folder");
    assert_eq!(resolved, root);
    let resolved = Dataplane::socket_cgroup(&root).expect("the root is one");
    assert_eq!(resolved, root, "a cgroup v2 folder names itself");
}

/// In the cgroup: backends answer, the application sees only the `ClusterIP`, and a Service
/// without endpoints refuses at once.
fn expect_translated(seen: &Value, f: &Family) {
    let web = |port| SocketAddr::new(ip(f.web), port).to_string();
    let backend = |port| served_at(f.backend, port);
    let at = |what: &str| format!("{} {what} in the cgroup: {seen}", f.name);
    assert_eq!(seen["tcp"]["peer"], web(HTTP), "{}", at("getpeername()"));
    // An address that is no frontend is left alone, and so is its peer name.
    assert_eq!(
        seen["tcp_direct"]["peer"],
        SocketAddr::new(ip(f.backend), HTTP_TARGET).to_string(),
        "{}",
        at("getpeername() of a direct connection to the backend")
    );
    assert_eq!(
        seen["tcp_direct"]["server"],
        format!("backend {}", backend(HTTP_TARGET)),
        "{}",
        at("the direct connection's answer")
    );
    assert_eq!(
        seen["tcp"]["server"],
        format!("backend {}", backend(HTTP_TARGET)),
        "{}",
        at("the TCP answer")
    );
    assert_eq!(seen["tcp"]["echo"], true, "{}", at("the TCP echo"));
    assert_eq!(
        seen["udp"]["from"],
        web(DNS),
        "{}",
        at("recvfrom()'s source")
    );
    assert_eq!(
        seen["udp"]["server"],
        format!("backend {}", backend(DNS_TARGET)),
        "{}",
        at("the UDP answer")
    );
    assert_eq!(seen["udp"]["echo"], true, "{}", at("the UDP echo"));
    for call in ["tcp_no_endpoint", "udp_no_endpoint"] {
        assert_eq!(
            seen[call]["errno"],
            libc::EPERM,
            "{}",
            at(&format!("{call}: refused by the program"))
        );
    }
}

/// Outside the cgroup: the `ClusterIP` is just an address, where the decoy answers, and the
/// Service without endpoints an unrouted address.
fn expect_untranslated(seen: &Value, f: &Family) {
    let web = |port| SocketAddr::new(ip(f.web), port).to_string();
    let at = |what: &str| format!("{} {what} outside the cgroup: {seen}", f.name);
    assert_eq!(seen["tcp"]["peer"], web(HTTP), "{}", at("getpeername()"));
    assert_eq!(
        seen["tcp"]["server"],
        format!("decoy {}", served_at(f.web, HTTP)),
        "{}",
        at("the TCP answer")
    );
    assert_eq!(
        seen["udp"]["from"],
        web(DNS),
        "{}",
        at("recvfrom()'s source")
    );
    assert_eq!(
        seen["udp"]["server"],
        format!("decoy {}", served_at(f.web, DNS)),
        "{}",
        at("the UDP answer")
    );
    for call in ["tcp_no_endpoint", "udp_no_endpoint"] {
        assert_eq!(
            seen[call]["errno"],
            libc::ENETUNREACH,
            "{}",
            at(&format!("{call}: no route, no program"))
        );
    }
}

/// Where the server of `addr`:`port` listens: IPv4-mapped addresses reach IPv4 sockets.
fn served_at(addr: &str, port: u16) -> String {
    SocketAddr::new(ip(addr).to_canonical(), port).to_string()
}

/// Service `x/web` (`ClusterIP`s of [`V4`] and [`V6`], TCP 80 → 8080, UDP 53 → 5353) backed by
/// the namespace's own addresses, and `x/empty`, the same without endpoints.
fn state() -> DesiredState {
    let service = |name: &str, ips: [&str; 2]| Service {
        namespace: "x".into(),
        name: name.into(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: ips.iter().map(|s| ip(s)).collect(),
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: HTTP,
                target_port: TargetPort::Number(HTTP_TARGET),
                node_port: None,
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: DNS,
                target_port: TargetPort::Number(DNS_TARGET),
                node_port: None,
            },
        ],
        ..Service::default()
    };
    let slice = |family: &str, backend: &str| EndpointSlice {
        namespace: "x".into(),
        name: format!("web-{family}"),
        service: "web".into(),
        ports: vec![
            EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: HTTP_TARGET,
            },
            EndpointPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: DNS_TARGET,
            },
        ],
        endpoints: vec![Endpoint {
            addresses: vec![ip(backend)],
            ready: true,
            serving: true,
            ..Endpoint::default()
        }],
        legacy: false,
        origin: Origin::default(),
    };
    DesiredState {
        services: vec![
            Arc::new(service("web", [V4.web, V6.web])),
            Arc::new(service("empty", [V4.empty, V6.empty])),
        ],
        endpoint_slices: vec![
            Arc::new(slice("v4", V4.backend)),
            Arc::new(slice("v6", V6.backend)),
        ],
        ..DesiredState::default()
    }
}

/// Runs this test again as a client in `netns`, inside `cgroup` when given, and returns its
/// report.
fn run_client(netns: &Netns, cgroup: Option<&Cgroup>) -> Value {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(&exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CLIENT_ROLE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe, as required between fork and exec. A test killed
    // outright takes its client with it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    if let Some(cgroup) = cgroup {
        cgroup.spawn_inside(&mut command);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting the client {}: {e}", exe.display()));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the client") {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("the client did not finish within {CLIENT_TIMEOUT:?}");
        }
        thread::sleep(POLL_INTERVAL);
    };
    // A report is a few hundred bytes: it fit in the pipes while the client ran.
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .map(|mut s| s.read_to_string(&mut stdout));
    child
        .stderr
        .take()
        .map(|mut s| s.read_to_string(&mut stderr));
    assert!(
        status.success(),
        "the client failed ({status}):\n{stdout}\n{stderr}"
    );
    let report = stdout
        .lines()
        .find_map(|l| l.split_once(REPORT_MARK).map(|(_, report)| report))
        .unwrap_or_else(|| panic!("the client printed no report:\n{stdout}\n{stderr}"));
    serde_json::from_str(report).unwrap_or_else(|e| panic!("bad report {report:?}: {e}"))
}

/// The client's part: every exchange of every family, as observed.
fn client() -> Value {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroup = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
    let mut report = json!({ "cgroup": cgroup });
    for f in [V4, V6, MAPPED] {
        let web = |port| SocketAddr::new(ip(f.web), port);
        let empty = |port| SocketAddr::new(ip(f.empty), port);
        // IPv4-mapped addresses are for IPv6 sockets; the others follow their address.
        let any = if f.name == V4.name {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let any: SocketAddr = any.parse().expect("a wildcard address");
        report[f.name] = json!({
            "tcp": tcp_exchange(web(HTTP)),
            "tcp_direct": tcp_exchange(SocketAddr::new(ip(f.backend), HTTP_TARGET)),
            "udp": udp_exchange(any, web(DNS)),
            "tcp_no_endpoint": failure(|| TcpStream::connect_timeout(&empty(HTTP), IO_TIMEOUT)),
            "udp_no_endpoint": failure(|| {
                UdpSocket::bind(any).and_then(|s| s.send_to(b"anyone?", empty(DNS)))
            }),
        });
    }
    report
}

/// Connects, asks, and reports the peer `getpeername()` shows, who answered and whether the
/// request came back.
fn tcp_exchange(to: SocketAddr) -> Value {
    let exchange = || -> std::io::Result<Value> {
        let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let peer = stream.peer_addr()?;
        stream.write_all(b"hello over tcp")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer_fields(
            &answer,
            "hello over tcp",
            json!({"peer": peer.to_string()}),
        ))
    };
    exchange().unwrap_or_else(|e| error_fields(&e))
}

/// Sends one datagram from an unconnected socket bound to `from`, and reports the source
/// `recvfrom()` shows for the answer, who answered and whether the request came back.
fn udp_exchange(from: SocketAddr, to: SocketAddr) -> Value {
    let exchange = || -> std::io::Result<Value> {
        let socket = UdpSocket::bind(from)?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.send_to(b"hello over udp", to)?;
        let mut buf = [0u8; 512];
        let (len, source) = socket.recv_from(&mut buf)?;
        let answer = String::from_utf8_lossy(&buf[..len]);
        Ok(answer_fields(
            &answer,
            "hello over udp",
            json!({"from": source.to_string()}),
        ))
    };
    exchange().unwrap_or_else(|e| error_fields(&e))
}

/// The servers answer `"<who> <where>|<request>"`.
fn answer_fields(answer: &str, request: &str, mut fields: Value) -> Value {
    let (server, echo) = answer.split_once('|').unwrap_or((answer, ""));
    fields["server"] = json!(server);
    fields["echo"] = json!(echo == request);
    fields
}

/// How a call expected to fail failed, and how long it took (reported, not asserted on:
/// the error itself tells a refusal from a timeout).
fn failure<T>(call: impl FnOnce() -> std::io::Result<T>) -> Value {
    let started = Instant::now();
    let mut fields = match call() {
        Ok(_) => json!({"errno": null, "error": "none: the call succeeded"}),
        Err(e) => error_fields(&e),
    };
    fields["elapsed_us"] = json!(started.elapsed().as_micros());
    fields
}

fn error_fields(e: &std::io::Error) -> Value {
    json!({"errno": e.raw_os_error(), "error": e.to_string()})
}

/// The backends and the decoys of both families: each answers every request with who it is
/// and where it listens, then the request.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds every socket inside `netns` (sockets stay in the namespace they were made in,
    /// whichever thread then serves them) and starts serving.
    fn start(netns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for f in [V4, V6] {
            for (who, addr, tcp, udp) in [
                ("backend", f.backend, HTTP_TARGET, DNS_TARGET),
                ("decoy", f.web, HTTP, DNS),
            ] {
                let tcp_at = SocketAddr::new(ip(addr), tcp);
                let udp_at = SocketAddr::new(ip(addr), udp);
                let (listener, socket) = netns.run(|| {
                    let listener = TcpListener::bind(tcp_at)
                        .unwrap_or_else(|e| panic!("binding {tcp_at}: {e}"));
                    let socket =
                        UdpSocket::bind(udp_at).unwrap_or_else(|e| panic!("binding {udp_at}: {e}"));
                    (listener, socket)
                });
                let name = format!("{who} {tcp_at}");
                threads.push(serve_tcp(name, listener, Arc::clone(&stop)));
                let name = format!("{who} {udp_at}");
                threads.push(serve_udp(name, socket, Arc::clone(&stop)));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("warning: a server thread panicked");
            }
        }
    }
}

fn serve_tcp(name: String, listener: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                thread::sleep(POLL_INTERVAL);
                continue;
            };
            // The client sends its request and shuts its side: read to the end, answer, close.
            let mut request = String::new();
            let read = stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
                .and_then(|()| stream.read_to_string(&mut request));
            if read.is_ok() {
                stream
                    .write_all(format!("{name}|{request}").as_bytes())
                    .ok();
            }
        }
    })
}

fn serve_udp(name: String, socket: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    socket
        .set_read_timeout(Some(POLL_INTERVAL * 5))
        .expect("a read timeout");
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                let request = String::from_utf8_lossy(&buf[..len]);
                socket
                    .send_to(format!("{name}|{request}").as_bytes(), from)
                    .ok();
            }
        }
    })
}
