//! The Kubernetes source against a fake API server that speaks the real wire protocol
//! (`testbed::fakeapi`): lists, chunked watch streams, 410 Gone both ways, outages.
//!
//! These tests drive the source as the agent does (`version()` then `load()`) and need no
//! root; the last one runs the agent in network namespaces and needs root. Run: `cargo test -p weir-tests --test kube_source -- --nocapture` also prints how
//! long the source took to resync after each disruption.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::fakeapi::{self, FakeApi, Gone};
use testbed::{Family, PodSpec, Proto, TempDir, Topology};
use weir::manifest::{LoadError, Loaded};
use weir::source::Source as _;
use weir::source::kubernetes::{Kubernetes, Target};

/// Every disruption below resolves within the source's 2 s backoff cap plus a list; the
/// margin is for a debug build on a busy two-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
const KINDS: [&str; 6] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
    "Node",
];

/// A fake API server and a source following it.
struct Fixture {
    api: FakeApi,
    source: Kubernetes,
    // Dropped after the source, whose watcher tasks run on it.
    _runtime: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl Fixture {
    /// Starts a source reading `api` through a kubeconfig file.
    fn connect(api: FakeApi) -> Self {
        let dir = TempDir::new("kubeconfig");
        let kubeconfig = api.write_kubeconfig(dir.path());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("starting a runtime");
        let target = Target::Kubeconfig(kubeconfig);
        let source = runtime
            .block_on(Kubernetes::connect(&target, "node-1".to_owned()))
            .expect("connecting to the fake API server");
        Self {
            api,
            source,
            _runtime: runtime,
            _dir: dir,
        }
    }

    /// Polls `check` with the source until it answers `Some`; panics with the source's
    /// health and last load on timeout.
    fn wait<T>(&mut self, what: &str, mut check: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(answer) = check(self) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}\nhealth: {}\nlast load: {:?}",
                self.source.health(),
                self.source.load().map(|loaded| summary(&loaded))
            );
            thread::sleep(POLL);
        }
    }

    /// Waits until a load succeeds with `pods` (`namespace/name`, sorted), and returns it.
    fn wait_pods(&mut self, pods: &[&str]) -> Loaded {
        self.wait(&format!("pods {pods:?}"), |fixture| {
            let loaded = fixture.source.load().ok()?;
            (names(&loaded).0 == pods).then_some(loaded)
        })
    }

    /// Waits until a load fails, and returns the error.
    fn wait_error(&mut self) -> LoadError {
        self.wait("a refused change set", |fixture| {
            fixture.source.load().err()
        })
    }

    /// Waits until every kind has asked for its list `count` times (answered or held).
    fn wait_lists(&mut self, count: u64) {
        self.wait(&format!("{count} list(s) of every kind"), |fixture| {
            KINDS
                .iter()
                .all(|kind| fixture.api.lists(kind) >= count)
                .then_some(())
        });
    }

    fn version(&mut self) -> u64 {
        self.source.version().expect("version never fails")
    }
}

/// Pod and policy names, `namespace/name`, sorted.
fn names(loaded: &Loaded) -> (Vec<String>, Vec<String>) {
    let mut pods: Vec<String> = loaded
        .state
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut policies: Vec<String> = loaded
        .state
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    pods.sort();
    policies.sort();
    (pods, policies)
}

fn summary(loaded: &Loaded) -> String {
    let (pods, policies) = names(loaded);
    format!("pods {pods:?}, policies {policies:?}")
}

/// A namespace `shop`, pod `shop/a` and a policy isolating the namespace for ingress.
fn shop() -> FakeApi {
    let api = FakeApi::start();
    api.apply(fakeapi::namespace("shop", &[("team", "a")]));
    api.apply(web_pod("a", "10.0.0.1"));
    api.apply(fakeapi::network_policy(
        "shop",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    api
}

fn web_pod(name: &str, ip: &str) -> serde_json::Value {
    fakeapi::pod("shop", name, &[("app", "web")], &[ip])
}

#[test]
fn the_initial_list_is_loaded_and_nothing_before_it() {
    let api = shop();
    api.hold_lists();
    let mut fixture = Fixture::connect(api);
    fixture.wait_lists(1);
    // Every watcher is inside its first list: applying now would drop the policies.
    assert_eq!(fixture.version(), 0);
    let waiting = fixture.source.load().unwrap_err().to_string();
    assert!(
        waiting.contains("waiting for the initial list of namespaces")
            && waiting.contains("networkpolicies"),
        "{waiting}"
    );

    fixture.api.release_lists();
    let loaded = fixture.wait_pods(&["shop/a"]);
    assert_ne!(fixture.version(), 0);
    assert_eq!(names(&loaded).1, ["shop/deny"]);
    let namespace = &loaded.state.namespaces["shop"];
    assert_eq!(namespace.labels.get("team").map(String::as_str), Some("a"));
    let pod = &loaded.state.pods[0];
    assert_eq!(pod.ips, ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(pod.ports[0].name, "http");
    assert_eq!(pod.origin.to_string(), "kubernetes:Pod/shop/a");
    assert!(
        fixture.source.health().healthy(),
        "{}",
        fixture.source.health()
    );
    assert_eq!(fixture.source.node_name(), "node-1");
}

#[test]
fn added_modified_and_deleted_objects_are_reflected() {
    let mut fixture = Fixture::connect(shop());
    fixture.wait_pods(&["shop/a"]);
    let listed = fixture.version();

    fixture.api.apply(web_pod("b", "10.0.0.2"));
    fixture.wait_pods(&["shop/a", "shop/b"]);
    assert_ne!(fixture.version(), listed);

    let relabelled = fakeapi::pod("shop", "b", &[("app", "db")], &["10.0.0.2"]);
    fixture.api.apply(relabelled);
    fixture.wait("pod shop/b relabelled", |fixture| {
        let loaded = fixture.source.load().ok()?;
        let pod = loaded.state.pods.iter().find(|p| p.name == "b")?;
        (pod.labels.get("app").map(String::as_str) == Some("db")).then_some(())
    });

    fixture.api.delete("Pod", "shop", "a");
    fixture.api.delete("NetworkPolicy", "shop", "deny");
    let loaded = fixture.wait_pods(&["shop/b"]);
    // The policy was deleted before the pod watcher's event arrived, or it shows up soon.
    if !loaded.state.policies.is_empty() {
        fixture.wait("the policy deleted", |fixture| {
            let loaded = fixture.source.load().ok()?;
            loaded.state.policies.is_empty().then_some(())
        });
    }
}

/// An expired watch makes every watcher list again. While the new list is in progress the
/// old state stays loaded; the complete list then replaces it, objects deleted meanwhile
/// included, and the watch that follows delivers changes again.
fn a_relist_keeps_the_state_until_it_is_complete(gone: Gone) {
    let mut fixture = Fixture::connect(shop());
    let before = fixture.wait_pods(&["shop/a"]);
    let version = fixture.version();

    fixture.api.hold_lists();
    let started = Instant::now();
    fixture.api.expire_watches(gone);
    fixture.wait_lists(2);
    assert_eq!(
        fixture.source.load().unwrap(),
        before,
        "state changed mid-relist"
    );
    assert_eq!(fixture.version(), version);

    fixture.api.apply(web_pod("b", "10.0.0.2"));
    fixture.api.delete("Pod", "shop", "a");
    fixture.api.release_lists();
    fixture.wait_pods(&["shop/b"]);
    eprintln!("{gone:?}: relisted in {:.1?}", started.elapsed());

    fixture.api.apply(web_pod("c", "10.0.0.3"));
    fixture.wait_pods(&["shop/b", "shop/c"]);
}

#[test]
fn a_410_error_event_in_the_watch_stream_relists_without_dropping_state() {
    a_relist_keeps_the_state_until_it_is_complete(Gone::ErrorEvent);
}

/// kube-rs 5 alone would retry the expired version for ever here (see `watch.rs`).
#[test]
fn a_watch_answered_410_gone_relists_without_dropping_state() {
    a_relist_keeps_the_state_until_it_is_complete(Gone::HttpStatus);
}

#[test]
fn an_outage_keeps_the_state_and_changes_flow_when_the_server_returns() {
    let mut fixture = Fixture::connect(shop());
    let before = fixture.wait_pods(&["shop/a"]);
    let version = fixture.version();

    fixture.api.stop();
    fixture.wait("every watcher to see the outage", |fixture| {
        let health = fixture.source.health();
        health
            .kinds
            .iter()
            .all(|(_, kind)| !kind.connected && kind.last_error.is_some())
            .then_some(())
    });
    assert_eq!(fixture.source.load().unwrap(), before);
    assert_eq!(fixture.version(), version);
    let health = fixture.source.health().to_string();
    assert!(health.contains("pods: retrying"), "{health}");

    // The cluster changed meanwhile, and the restart expired every watch, as a real API
    // server's restart does.
    fixture.api.apply(web_pod("b", "10.0.0.2"));
    fixture.api.expire_watches(Gone::ErrorEvent);
    let back = Instant::now();
    fixture.api.resume();
    fixture.wait_pods(&["shop/a", "shop/b"]);
    eprintln!("resynced {:.1?} after the server came back", back.elapsed());
    fixture.wait("every watcher to be healthy", |fixture| {
        fixture.source.health().healthy().then_some(())
    });

    fixture.api.apply(web_pod("c", "10.0.0.3"));
    fixture.wait_pods(&["shop/a", "shop/b", "shop/c"]);
}

#[test]
fn an_invalid_policy_from_the_api_refuses_the_change_set_naming_object_and_field() {
    let mut fixture = Fixture::connect(shop());
    fixture.wait_pods(&["shop/a"]);

    let bad_spec = json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]});
    fixture
        .api
        .apply(fakeapi::network_policy("shop", "bad", bad_spec));
    let error = fixture.wait_error();
    assert_eq!(error.errors.len(), 1, "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("kubernetes:NetworkPolicy/shop/bad: spec.ingress[0].ports[0].port: "),
        "{text}"
    );

    let fixed = json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]});
    fixture
        .api
        .apply(fakeapi::network_policy("shop", "bad", fixed));
    let loaded = fixture.wait("the fixed policy", |fixture| fixture.source.load().ok());
    assert_eq!(names(&loaded).1, ["shop/bad", "shop/deny"]);
}

/// `(name, [address ready?])` of each `EndpointSlice` of `shop/web`, in name order.
fn web_slices(loaded: &Loaded) -> Vec<(String, Vec<(String, bool)>)> {
    let mut slices: Vec<(String, Vec<(String, bool)>)> = loaded
        .state
        .endpoint_slices
        .iter()
        .filter(|slice| slice.namespace == "shop" && slice.service == "web")
        .map(|slice| {
            let endpoints = slice
                .endpoints
                .iter()
                .map(|e| (e.addresses[0].to_string(), e.ready))
                .collect();
            (slice.name.clone(), endpoints)
        })
        .collect();
    slices.sort();
    slices
}

fn web_slice(endpoints: serde_json::Value) -> serde_json::Value {
    let mut body = json!({
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    });
    body["endpoints"] = endpoints;
    fakeapi::endpoint_slice("shop", "web-x7k2p", "web", body)
}

#[test]
fn services_endpoint_slices_and_nodes_arrive_and_change() {
    let mut fixture = Fixture::connect(shop());
    fixture.wait_pods(&["shop/a"]);
    let before = fixture.version();

    let spec = json!({
        "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    });
    fixture.api.apply(fakeapi::service("shop", "web", spec));
    fixture.api.apply(web_slice(json!([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "node-1"},
    ])));
    fixture.api.apply(fakeapi::node("node-1", &["192.168.0.1"]));
    let loaded = fixture.wait("the Service, its slice and the node", |fixture| {
        let loaded = fixture.source.load().ok()?;
        let arrived = !loaded.state.services.is_empty()
            && !web_slices(&loaded).is_empty()
            && !loaded.state.nodes.is_empty();
        arrived.then_some(loaded)
    });
    assert_ne!(
        fixture.version(),
        before,
        "Services shape the desired state"
    );
    let service = &loaded.state.services[0];
    assert_eq!(service.origin.to_string(), "kubernetes:Service/shop/web");
    assert_eq!(
        service.cluster_ips,
        ["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        web_slices(&loaded),
        [("web-x7k2p".to_owned(), vec![("10.0.0.1".to_owned(), true)])]
    );
    let slice = &loaded.state.endpoint_slices[0];
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-1"));
    assert_eq!(loaded.state.nodes[0].name, "node-1");

    // A second pod starts: the controller adds it, not ready yet, then ready.
    fixture.api.apply(web_slice(json!([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
    ])));
    let starting = vec![
        ("10.0.0.1".to_owned(), true),
        ("10.0.0.2".to_owned(), false),
    ];
    fixture.wait("the new endpoint, not ready", |fixture| {
        let loaded = fixture.source.load().ok()?;
        (web_slices(&loaded) == [("web-x7k2p".to_owned(), starting.clone())]).then_some(())
    });
    fixture.api.apply(web_slice(json!([
        {"addresses": ["10.0.0.1"]},
        {"addresses": ["10.0.0.2"]},
    ])));
    fixture.wait("the new endpoint ready (unset means ready)", |fixture| {
        let loaded = fixture.source.load().ok()?;
        let slices = web_slices(&loaded);
        let ready = slices.first()?.1.iter().all(|(_, ready)| *ready);
        (slices.len() == 1 && slices[0].1.len() == 2 && ready).then_some(())
    });

    // The Service becomes a NodePort; its node port comes from the API server's range,
    // whatever that range is.
    let spec = json!({
        "type": "NodePort", "clusterIP": "10.96.0.10",
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 8080}],
    });
    fixture.api.apply(fakeapi::service("shop", "web", spec));
    fixture.wait("the Service as a NodePort", |fixture| {
        let loaded = fixture.source.load().ok()?;
        let port = loaded.state.services.first()?.ports.first()?.node_port;
        (port == Some(8080)).then_some(())
    });

    fixture.api.delete("EndpointSlice", "shop", "web-x7k2p");
    fixture.api.delete("Service", "shop", "web");
    fixture.wait("the Service and its slice deleted", |fixture| {
        let loaded = fixture.source.load().ok()?;
        (loaded.state.services.is_empty() && loaded.state.endpoint_slices.is_empty()).then_some(())
    });
}

#[test]
fn an_invalid_service_from_the_api_refuses_the_change_set_until_it_is_fixed() {
    let mut fixture = Fixture::connect(shop());
    fixture.wait_pods(&["shop/a"]);

    let typo = json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetport": 8080}]});
    fixture.api.apply(fakeapi::service("shop", "web", typo));
    let error = fixture.wait_error();
    assert_eq!(
        error.to_string(),
        "kubernetes:Service/shop/web: spec.ports[0].targetport: unknown field \"targetport\""
    );

    let fixed = json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]});
    fixture.api.apply(fakeapi::service("shop", "web", fixed));
    let loaded = fixture.wait("the fixed Service", |fixture| fixture.source.load().ok());
    assert_eq!(
        loaded.state.services[0].ports[0].target_port,
        weir::model::TargetPort::Number(8080)
    );

    // An ExternalName Service is valid, and plays no part.
    let alias = json!({"type": "ExternalName", "externalName": "db.example.com"});
    fixture.api.apply(fakeapi::service("shop", "db", alias));
    fixture.api.apply(fakeapi::service(
        "shop",
        "marker",
        json!({"ports": [{"port": 1}]}),
    ));
    let loaded = fixture.wait("the marker Service after the alias", |fixture| {
        let loaded = fixture.source.load().ok()?;
        let names: Vec<&str> = loaded
            .state
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        names.contains(&"marker").then_some(loaded)
    });
    let names: Vec<&str> = loaded
        .state
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["marker", "web"]);
}

/// End to end: `weir run --kubeconfig` in a node namespace, reading pods and a policy from
/// the fake API server (listening inside that namespace, where the agent connects), enforces
/// the policy on real traffic and lifts it when the policy is deleted. Needs root.
#[test]
fn the_agent_enforces_a_policy_from_the_api_server() {
    testbed::require_root!();
    let topology = Topology::builder()
        .pods(["a", "b", "c"].map(|pod| PodSpec::new("x", pod).label("pod", pod)))
        .build();
    let listener = topology
        .node()
        .run(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("binding the fake API server in the node namespace");
    let api = FakeApi::start_on(listener);
    api.apply(fakeapi::namespace("x", &[]));
    for pod in topology.pods() {
        api.apply(pod_object(pod));
    }
    let mut agent = KubeAgent::start(&topology, &api);
    let ready = agent.wait_ready();
    let open = [("x/c", "x/a", 80, true)];
    assert_eq!(probe(&topology, &open), open, "before any policy");

    // Pod a admits pod b on its port named `http` (80), and nothing else.
    let policy = json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                     "ports": [{"port": "http"}]}],
    });
    api.apply(fakeapi::network_policy("x", "a-from-b", policy));
    let applied = agent.wait_generation_after(ready);
    let isolated = [
        ("x/b", "x/a", 80, true),
        ("x/b", "x/a", 81, false),
        ("x/c", "x/a", 80, false),
        ("x/c", "x/b", 80, true),
    ];
    assert_eq!(probe(&topology, &isolated), isolated, "with the policy");

    api.delete("NetworkPolicy", "x", "a-from-b");
    agent.wait_generation_after(applied);
    assert_eq!(probe(&topology, &open), open, "after the policy's deletion");
}

/// A pod of the topology as the API server shows it.
fn pod_object(pod: &testbed::Pod) -> serde_json::Value {
    let spec = pod.spec();
    let labels: Vec<(&str, &str)> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let ips = pod.ips().map(|ip| ip.to_string());
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    fakeapi::pod(&spec.namespace, &spec.name, &labels, &ips)
}

/// Probes `(from, to, port, expected)` over TCP, IPv4 and IPv6, and returns what was observed
/// (`true` only when both families connected). An expected connection that failed is tried
/// again, since an allowed probe can lose a race with a busy machine; a denied one never
/// passes by accident.
fn probe<'a>(
    topology: &Topology,
    cases: &[(&'a str, &'a str, u16, bool)],
) -> Vec<(&'a str, &'a str, u16, bool)> {
    cases
        .iter()
        .map(|&(from, to, port, expected)| {
            let tries = if expected { 3 } else { 1 };
            let connected = (0..tries).any(|_| {
                [Family::V4, Family::V6]
                    .into_iter()
                    .all(|family| topology.probe(from, to, port, Proto::Tcp, family))
            });
            (from, to, port, connected)
        })
        .collect()
}

/// `weir run --kubeconfig` in the node namespace of a topology; stopped on drop.
struct KubeAgent<'t> {
    topology: &'t Topology,
    child: Child,
    health: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl<'t> KubeAgent<'t> {
    fn start(topology: &'t Topology, api: &FakeApi) -> Self {
        let dir = TempDir::new("kube-agent");
        let kubeconfig = api.write_kubeconfig(dir.path());
        let port = topology.node().run(|| {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
            listener
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        });
        let health = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = dir.path().join("weir.log");
        let log_file = File::create(&log).expect("creating the agent log");
        let mut command = Command::new("ip");
        // SAFETY: prctl is async-signal-safe, as required between fork and exec. The agent
        // then dies with the test's thread, even when the test is killed outright.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = command
            .args(["netns", "exec", topology.node().name()])
            .arg(testbed::weir_binary())
            .arg("run")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--node-name=node-1")
            .arg(format!("--health-addr={health}"))
            // `ip netns exec` gives it a fresh `/sys` without cgroups (and the machine's root
            // cgroup is no place for a test's programs).
            .arg("--no-socket-lb")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("cloning the log handle"))
            .stderr(log_file)
            .spawn()
            .expect("starting weir");
        Self {
            topology,
            child,
            health,
            log,
            _dir: dir,
        }
    }

    /// Waits until `/readyz` answers 200, and returns the generation then.
    fn wait_ready(&mut self) -> u64 {
        self.wait("/readyz to answer 200", |agent| {
            let (code, _) = agent.get("/readyz")?;
            (code == 200).then(|| agent.generation()).flatten()
        })
    }

    /// Waits until a change after `generation` has been applied, and returns the new one.
    fn wait_generation_after(&mut self, generation: u64) -> u64 {
        self.wait(&format!("a generation after {generation}"), |agent| {
            agent.generation().filter(|now| *now > generation)
        })
    }

    fn generation(&self) -> Option<u64> {
        let (code, body) = self.get("/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200)
            .then(|| status["generation"].as_u64())
            .flatten()
    }

    fn wait<T>(&mut self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weir exited ({status})\n{}", self.log_tail());
            }
            if let Some(answer) = check(self) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}; /status: {:?}\n{}",
                self.get("/status"),
                self.log_tail()
            );
            thread::sleep(POLL);
        }
    }

    /// A GET to the health endpoint, from the node namespace where it listens.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.health;
        let path = path.to_owned();
        self.topology
            .node()
            .run(move || testbed::http_get(addr, &path).ok())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- weir log ---\n{tail}")
    }
}

impl Drop for KubeAgent<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        // SIGTERM first, so that the agent detaches its programs; SIGKILL if it lingers.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
