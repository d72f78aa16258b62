//! A stand-in for the Kubernetes API server, speaking its wire protocol over plain HTTP/1.1 on
//! a loopback address: no real API server can run here (shared GUIDE, section 4).
//!
//! What it serves, for Namespaces, Pods, `NetworkPolicies`, Services, `EndpointSlices` and
//! Nodes, cluster-wide:
//! - lists: `GET /api/v1/pods` answers a `PodList` with `metadata.resourceVersion`;
//! - watches: `GET /api/v1/pods?watch=true&resourceVersion=N` answers a chunked stream of
//!   newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK` when
//!   `allowWatchBookmarks=true`), replaying what happened after `N` first;
//! - expiry: after [`FakeApi::expire_watches`], a watch from a version before the expiry is
//!   answered `410 Gone`, as an HTTP status or as an `ERROR` event carrying a `Status`
//!   (how a real API server answers an expired watch), as chosen.
//!
//! Resource versions are one counter for the whole cluster, as etcd's revision is. The
//! server runs on its own tokio runtime, so tests stay synchronous; [`FakeApi::stop`] and
//! [`FakeApi::resume`] make an outage (connection refused, open watches cut).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

/// The kinds served: kind, `apiVersion`, URL path of the cluster-wide collection.
const KINDS: [(&str, &str, &str); 6] = [
    ("Namespace", "v1", "/api/v1/namespaces"),
    ("Pod", "v1", "/api/v1/pods"),
    (
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ),
    ("Service", "v1", "/api/v1/services"),
    (
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    ("Node", "v1", "/api/v1/nodes"),
];

/// How an expired watch is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// `200 OK` and an `ERROR` event with a `Status` of code 410, then the end of the
    /// stream: what a real API server sends. Open watches get the event too.
    ErrorEvent,
    /// `410 Gone` as the HTTP status of the watch request. Open watches are cut.
    HttpStatus,
}

/// A fake API server. Stops (and cuts every connection) on drop.
pub struct FakeApi {
    runtime: Option<tokio::runtime::Runtime>,
    cluster: Arc<Mutex<Cluster>>,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
    /// `true` while lists are held back (see [`FakeApi::hold_lists`]).
    lists_held: tokio::sync::watch::Sender<bool>,
}

/// What etcd would hold, and who is watching.
#[derive(Default)]
struct Cluster {
    /// The last resource version given out.
    revision: u64,
    /// Watches from a version before this one are answered 410 Gone.
    expired_before: u64,
    gone: Option<Gone>,
    collections: BTreeMap<&'static str, Collection>,
}

/// One kind's objects, its history since the last expiry, and its open watches.
#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    history: Vec<(u64, &'static str, Value)>,
    watchers: Vec<UnboundedSender<Line>>,
    lists: u64,
    watches: u64,
}

/// What a watch connection writes next.
enum Line {
    Event(Value),
    End,
}

impl FakeApi {
    /// Listens on an ephemeral port of 127.0.0.1 in the calling thread's network namespace.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding the fake API server");
        Self::start_on(listener)
    }

    /// Serves on `listener`, which may belong to another network namespace (bound inside
    /// one with `Netns::run`): sockets stay in the namespace they were made in.
    pub fn start_on(listener: std::net::TcpListener) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-api")
            .enable_all()
            .build()
            .expect("starting the fake API server's runtime");
        let addr = listener.local_addr().expect("listener address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let mut cluster = Cluster::default();
        for (_, _, path) in KINDS {
            cluster.collections.insert(path, Collection::default());
        }
        let mut api = Self {
            runtime: Some(runtime),
            cluster: Arc::new(Mutex::new(cluster)),
            addr,
            server: None,
            lists_held: tokio::sync::watch::Sender::new(false),
        };
        let listener = {
            let _entered = api.runtime().enter();
            TcpListener::from_std(listener).expect("registering the listener")
        };
        api.serve(listener);
        api
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: weir\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: weir\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`); its `kind` says where it goes.
    pub fn apply(&self, mut object: Value) {
        let (kind, api_version, path) = kind_of(&object);
        object["apiVersion"] = json!(api_version);
        let key = key_of(&object);
        let mut cluster = self.lock();
        cluster.revision += 1;
        let revision = cluster.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{kind}-{}-{}", key.0, key.1));
        let collection = cluster.collection(path);
        let previous = collection.objects.insert(key, object.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.publish(revision, kind, object);
    }

    /// Deletes an object (`DELETED`); panics if it does not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let path = path_of(kind);
        let mut cluster = self.lock();
        cluster.revision += 1;
        let revision = cluster.revision;
        let collection = cluster.collection(path);
        let key = (namespace.to_owned(), name.to_owned());
        let mut object = collection
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"));
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        collection.publish(revision, "DELETED", object);
    }

    /// Expires every watch, as an API server restart or etcd compaction does: open watches
    /// end (with an `ERROR` event for [`Gone::ErrorEvent`]), and a watch from any version
    /// given out so far is answered 410 Gone, so clients must list again.
    pub fn expire_watches(&self, gone: Gone) {
        let mut cluster = self.lock();
        cluster.revision += 1;
        cluster.expired_before = cluster.revision;
        cluster.gone = Some(gone);
        let message = format!(
            "too old resource version (expired before {})",
            cluster.revision
        );
        for collection in cluster.collections.values_mut() {
            collection.history.clear();
            for watcher in collection.watchers.drain(..) {
                if gone == Gone::ErrorEvent {
                    let _ = watcher.send(Line::Event(error_event(&message)));
                }
                let _ = watcher.send(Line::End);
            }
        }
    }

    /// Stops answering: the port refuses connections and open watches are cut, as when the
    /// API server goes down. Objects and history are kept, as etcd keeps them.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // The accept loop owns the listener and every connection: wait until they are
            // closed, so that the outage has begun when this returns.
            let _ = self.runtime().block_on(server);
        }
        let mut cluster = self.lock();
        for collection in cluster.collections.values_mut() {
            collection.watchers.clear();
        }
    }

    /// Listens again on the same address after [`FakeApi::stop`], in the calling thread's
    /// network namespace.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "the fake API server is running");
        let listener = {
            let _entered = self.runtime().enter();
            let socket = TcpSocket::new_v4().expect("socket");
            // The old connections may linger in TIME_WAIT on this port.
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket
                .bind(self.addr)
                .expect("binding the fake API server again");
            socket.listen(128).expect("listen")
        };
        self.serve(listener);
    }

    /// Holds every list request until [`FakeApi::release_lists`], so that a test can look at
    /// a client while its relist is in progress. The answer is made at release, with the
    /// objects of that moment.
    pub fn hold_lists(&self) {
        self.lists_held.send_replace(true);
    }

    /// Answers the held list requests.
    pub fn release_lists(&self) {
        self.lists_held.send_replace(false);
    }

    /// How many list requests of `kind` were received (answered or held).
    pub fn lists(&self, kind: &str) -> u64 {
        self.lock().collection(path_of(kind)).lists
    }

    /// How many watch requests of `kind` were received.
    pub fn watches(&self, kind: &str) -> u64 {
        self.lock().collection(path_of(kind)).watches
    }

    fn serve(&mut self, listener: TcpListener) {
        let cluster = self.cluster.clone();
        let held = self.lists_held.subscribe();
        let server = self.runtime().spawn(accept(listener, cluster, held));
        self.server = Some(server);
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        lock(&self.cluster)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Does not block, so a test may drop the server anywhere, even inside a runtime.
            runtime.shutdown_background();
        }
    }
}

impl Cluster {
    fn collection(&mut self, path: &str) -> &mut Collection {
        self.collections
            .get_mut(path)
            .unwrap_or_else(|| panic!("no collection at {path}"))
    }
}

impl Collection {
    fn publish(&mut self, revision: u64, kind: &'static str, object: Value) {
        let event = json!({"type": kind, "object": object});
        self.watchers
            .retain(|watcher| watcher.send(Line::Event(event.clone())).is_ok());
        self.history.push((revision, kind, object));
    }
}

fn lock(cluster: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    // A test that panicked while holding the lock has already failed; the rest can go on.
    cluster.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake's `(kind, apiVersion, path)` for an object, by its `kind` field.
fn kind_of(object: &Value) -> (&'static str, &'static str, &'static str) {
    let kind = object["kind"].as_str().expect("objects need a kind");
    KINDS
        .into_iter()
        .find(|(name, ..)| *name == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {kind}"))
}

fn path_of(kind: &str) -> &'static str {
    kind_of(&json!({ "kind": kind })).2
}

fn key_of(object: &Value) -> (String, String) {
    let metadata = &object["metadata"];
    let text = |field: &str| metadata[field].as_str().unwrap_or_default().to_owned();
    (text("namespace"), text("name"))
}

fn error_event(message: &str) -> Value {
    json!({"type": "ERROR", "object": gone_status(message)})
}

fn gone_status(message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Expired", "code": 410,
    })
}

/// Accepts connections until aborted; aborting drops the listener and, with the join set,
/// every connection.
async fn accept(
    listener: TcpListener,
    cluster: Arc<Mutex<Cluster>>,
    held: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(handle(stream, cluster.clone(), held.clone()));
                }
            }
            // Reaps finished connections, so that the set does not grow for ever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One request per connection: every answer says `Connection: close`.
async fn handle(
    mut stream: TcpStream,
    cluster: Arc<Mutex<Cluster>>,
    mut lists_held: tokio::sync::watch::Receiver<bool>,
) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let Some((kind, api_version, path)) = KINDS.into_iter().find(|(.., p)| *p == path) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404});
        return respond(&mut stream, "404 Not Found", &status).await;
    };
    if query.get("watch") == Some(&"true") {
        let since = query.get("resourceVersion").and_then(|v| v.parse().ok());
        let bookmarks = query.get("allowWatchBookmarks") == Some(&"true");
        watch(
            &mut stream,
            &cluster,
            (kind, api_version, path),
            since,
            bookmarks,
        )
        .await;
    } else {
        // Counted on arrival, so that a test sees a relist begin while lists are held.
        lock(&cluster).collection(path).lists += 1;
        // Held lists wait here; a closed channel (server dropped) ends the wait too.
        let _ = lists_held.wait_for(|held| !*held).await;
        let list = list(&cluster, kind, api_version, path);
        respond(&mut stream, "200 OK", &list).await;
    }
}

/// Reads up to the end of the request head; GET requests have no body.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1024];
        let n = stream.read(&mut byte).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&byte[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// A list as the API server answers it: items without `apiVersion` and `kind` (the list
/// carries them), `metadata.resourceVersion` the cluster's current revision.
fn list(cluster: &Mutex<Cluster>, kind: &str, api_version: &str, path: &str) -> Value {
    let mut cluster = lock(cluster);
    let revision = cluster.revision;
    let collection = cluster.collection(path);
    let items: Vec<Value> = collection
        .objects
        .values()
        .map(|object| {
            let mut item = object.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            item
        })
        .collect();
    json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })
}

/// Serves a watch: 410 if `since` has expired, else the events after `since`, a bookmark if
/// asked for, then live events until the watch is cut.
async fn watch(
    stream: &mut TcpStream,
    cluster: &Mutex<Cluster>,
    (kind, api_version, path): (&str, &str, &'static str),
    since: Option<u64>,
    bookmarks: bool,
) {
    let (sender, mut events) = mpsc::unbounded_channel();
    let expired = {
        let mut cluster = lock(cluster);
        let revision = cluster.revision;
        let (expired_before, gone) = (cluster.expired_before, cluster.gone);
        let collection = cluster.collection(path);
        collection.watches += 1;
        let since = since.unwrap_or(revision);
        if since < expired_before {
            gone
        } else {
            // Replayed and subscribed under one lock, so that no event falls between.
            for (_, event_kind, object) in collection.history.iter().filter(|(r, ..)| *r > since) {
                let event = json!({"type": event_kind, "object": object});
                let _ = sender.send(Line::Event(event));
            }
            if bookmarks {
                let metadata = json!({"resourceVersion": revision.to_string()});
                let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
                let _ = sender.send(Line::Event(json!({"type": "BOOKMARK", "object": object})));
            }
            collection.watchers.push(sender.clone());
            None
        }
    };
    let message = format!("too old resource version: {}", since.unwrap_or_default());
    match expired {
        Some(Gone::HttpStatus) => {
            return respond(stream, "410 Gone", &gone_status(&message)).await;
        }
        Some(Gone::ErrorEvent) => {
            let _ = sender.send(Line::Event(error_event(&message)));
            let _ = sender.send(Line::End);
        }
        None => {}
    }
    drop(sender);
    stream_events(stream, &mut events).await;
}

/// Writes each event as one chunk of newline-terminated JSON, until the end.
async fn stream_events(stream: &mut TcpStream, events: &mut UnboundedReceiver<Line>) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(Line::Event(event)) = events.recv().await {
        let line = format!("{event}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
}

/// A `v1` Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    json!({"kind": "Namespace", "metadata": {"name": name, "labels": labels_json(labels)}})
}

/// A running `v1` Pod with labels and addresses, and a named container port `http` (80/TCP).
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], ips: &[&str]) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels_json(labels)},
        "spec": {"containers": [{"name": "app", "image": "app",
                                 "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ips.first(), "podIPs": pod_ips},
    })
}

/// A `networking.k8s.io/v1` `NetworkPolicy` with `spec`.
pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    let mut policy = json!({
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
    });
    policy["spec"] = spec;
    policy
}

/// A `v1` Service with `spec`.
pub fn service(namespace: &str, name: &str, spec: Value) -> Value {
    let mut service = json!({
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
    });
    service["spec"] = spec;
    service
}

/// A `discovery.k8s.io/v1` `EndpointSlice` of Service `service`, labelled as the
/// `EndpointSlice` controller labels its slices, with `body` (`addressType`, `endpoints`,
/// `ports`).
pub fn endpoint_slice(namespace: &str, name: &str, service: &str, body: Value) -> Value {
    let mut slice = json!({
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace, "name": name,
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
    });
    if let (Some(slice), Value::Object(body)) = (slice.as_object_mut(), body) {
        slice.extend(body);
    }
    slice
}

/// A `v1` Node with `InternalIP` addresses.
pub fn node(name: &str, addresses: &[&str]) -> Value {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|address| json!({"type": "InternalIP", "address": address}))
        .collect();
    json!({
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": addresses},
    })
}

fn labels_json(labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    Value::Object(labels)
}
