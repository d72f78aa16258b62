//! The Kubernetes source against a fake API server that speaks the real wire protocol
//! (`testbed::fakeapi`): lists, chunked watch streams, 410 Gone both ways, outages.
//!
//! These tests drive the source as the agent does (`version()` then `load()`) and need no
//! root. Run: `cargo test -p weir-tests --test kube_source -- --nocapture` also prints how
//! long the source took to resync after each disruption.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::TempDir;
use testbed::fakeapi::{self, FakeApi, Gone};
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
