//! The objects of every watched kind, shared between the watcher tasks that write them and
//! the agent that reads them, with the version number and health the agent polls.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::kind::{Entry, Kind, ObjectKey, object_error};
use crate::manifest::{LoadError, Loaded, ManifestError};
use crate::model::{DesiredState, Namespace};

/// The objects of one kind, by namespace and name.
pub(super) type Objects = BTreeMap<ObjectKey, Entry>;

/// Everything the watchers know, behind one lock per kind so that one watcher storing a
/// relist does not hold up the others.
#[derive(Debug)]
pub(super) struct Store {
    /// Bumped by every change of an object.
    changes: AtomicU64,
    kinds: [Mutex<KindState>; Kind::ALL.len()],
}

#[derive(Debug, Default)]
struct KindState {
    objects: Objects,
    health: KindHealth,
}

/// How the watcher of one kind is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindHealth {
    /// A complete list has been stored: the kind's objects are known.
    pub synced: bool,
    /// No error since the last event. A watch resumed after an error reports no event until
    /// an object changes (or the next relist), so this stays false until then.
    pub connected: bool,
    /// Complete lists stored so far: 1 after the initial list, one more per relist.
    pub lists: u64,
    /// When the last complete list was stored.
    pub last_list: Option<SystemTime>,
    /// The last error and when it happened; kept after recovery, for the record.
    pub last_error: Option<(SystemTime, String)>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            changes: AtomicU64::new(0),
            kinds: Default::default(),
        }
    }
}

impl Store {
    /// 0 until every kind has been listed once; then a number that changes with every
    /// change of the desired state (never 0 again).
    pub fn version(&self) -> u64 {
        if self.unsynced().is_empty() {
            self.changes.load(Ordering::Acquire) + 1
        } else {
            0
        }
    }

    /// Replaces the objects of `kind` with a complete list, in one step: readers see either
    /// the old list or the new one, never an empty or partial store.
    pub fn replace(&self, kind: Kind, objects: Objects) {
        let mut state = self.lock(kind);
        let changed = state.objects != objects;
        state.objects = objects;
        let health = &mut state.health;
        health.synced = true;
        health.connected = true;
        health.lists += 1;
        health.last_list = Some(SystemTime::now());
        self.changed(changed);
    }

    /// Stores an added or modified object.
    pub fn upsert(&self, kind: Kind, key: ObjectKey, entry: Entry) {
        let mut state = self.lock(kind);
        state.health.connected = true;
        let changed = state.objects.get(&key) != Some(&entry);
        if changed {
            state.objects.insert(key, entry);
        }
        self.changed(changed);
    }

    /// Forgets a deleted object.
    pub fn remove(&self, kind: Kind, key: &ObjectKey) {
        let mut state = self.lock(kind);
        state.health.connected = true;
        let changed = state.objects.remove(key).is_some();
        self.changed(changed);
    }

    /// Notes that the watcher of `kind` received an event that changes no object (the start
    /// of a relist): it is connected.
    pub fn connected(&self, kind: Kind) {
        self.lock(kind).health.connected = true;
    }

    /// Notes an error of the watcher of `kind`; its objects stay as they are. Returns
    /// whether it is news: the first error since the watcher was connected, or another
    /// error than the last.
    pub fn error(&self, kind: Kind, error: String) -> bool {
        let health = &mut self.lock(kind).health;
        let repeated = health
            .last_error
            .as_ref()
            .is_some_and(|(_, last)| *last == error);
        let news = health.connected || !repeated;
        health.connected = false;
        health.last_error = Some((SystemTime::now(), error));
        news
    }

    /// The health of every kind's watcher.
    pub fn health(&self) -> Health {
        let kinds = Kind::ALL.map(|kind| (kind, self.lock(kind).health.clone()));
        Health {
            kinds: kinds.to_vec(),
        }
    }

    /// The desired state from every kind's objects, or every error of every invalid object;
    /// before every kind has been listed once, an error that says which are missing.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let unsynced = self.unsynced();
        if !unsynced.is_empty() {
            return Err(waiting(&unsynced));
        }
        let mut state = DesiredState::default();
        let mut errors = Vec::new();
        for kind in Kind::ALL {
            for entry in self.lock(kind).objects.values() {
                match entry {
                    Entry::Namespace(namespace) => {
                        state
                            .namespaces
                            .insert(namespace.name.clone(), namespace.clone());
                    }
                    Entry::Pod(pod) => state.pods.push(pod.clone()),
                    Entry::Policy(policy) => state.policies.push(policy.clone()),
                    Entry::Service(service) => state.services.push(service.clone()),
                    Entry::EndpointSlice(slice) => state.endpoint_slices.push(slice.clone()),
                    Entry::Node(node) => state.nodes.push(node.clone()),
                    Entry::Invalid(invalid) => errors.extend(invalid.iter().cloned()),
                    Entry::Ignored => {}
                }
            }
        }
        if !errors.is_empty() {
            return Err(LoadError { errors });
        }
        add_implied_namespaces(&mut state);
        state.sort_services_and_slices();
        Ok(Loaded {
            state,
            ignored: Vec::new(),
            files: 0,
            derived_slices: 0,
        })
    }

    /// The kinds not listed yet, with their last error if any.
    fn unsynced(&self) -> Vec<(Kind, Option<String>)> {
        Kind::ALL
            .into_iter()
            .filter_map(|kind| {
                let health = &self.lock(kind).health;
                let error = health.last_error.as_ref().map(|(_, text)| text.clone());
                (!health.synced).then_some((kind, error))
            })
            .collect()
    }

    fn changed(&self, changed: bool) {
        if changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn lock(&self, kind: Kind) -> MutexGuard<'_, KindState> {
        // No code path panics while holding the lock; if one ever did, the map it left is
        // still a map of whole entries.
        self.kinds[kind as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An object in a namespace that is not listed (yet: the namespace watcher may lag behind the
/// others) belongs to a namespace with no labels, as in a manifests directory.
fn add_implied_namespaces(state: &mut DesiredState) {
    let used = state.pods.iter().map(|pod| &pod.namespace);
    let used = used.chain(state.policies.iter().map(|policy| &policy.namespace));
    let used = used.chain(state.services.iter().map(|service| &service.namespace));
    let used = used.chain(state.endpoint_slices.iter().map(|slice| &slice.namespace));
    let missing: Vec<String> = used
        .filter(|name| !state.namespaces.contains_key(*name))
        .cloned()
        .collect();
    for name in missing {
        let namespace = Namespace {
            name: name.clone(),
            labels: BTreeMap::new(),
        };
        state.namespaces.insert(name, namespace);
    }
}

/// The refusal `load` answers before every kind is listed: applying a state without the
/// policies would open the node.
fn waiting(unsynced: &[(Kind, Option<String>)]) -> LoadError {
    let errors = unsynced.iter().map(|(kind, error)| {
        let mut message = format!("waiting for the initial list of {}", kind.resource());
        if let Some(error) = error {
            message = format!("{message} (last error: {error})");
        }
        object_error(&PathBuf::from("kubernetes"), "", message)
    });
    LoadError {
        errors: errors.collect::<Vec<ManifestError>>(),
    }
}

/// The health of every watcher, as `/status` and logs show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Each watched kind with its watcher's health, in [`Kind::ALL`] order.
    pub kinds: Vec<(Kind, KindHealth)>,
}

impl Health {
    /// Whether every kind has been listed and no watcher is in error.
    pub fn healthy(&self) -> bool {
        self.kinds
            .iter()
            .all(|(_, health)| health.synced && health.connected)
    }
}

impl fmt::Display for Health {
    /// `pods: connected, 2 lists, last 3s ago; nodes: retrying since 1s: <error>; ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = SystemTime::now();
        let ago = |time: SystemTime| now.duration_since(time).unwrap_or_default().as_secs();
        for (i, (kind, health)) in self.kinds.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: ", kind.resource())?;
            f.write_str(match (health.synced, health.connected) {
                (false, _) => "not listed yet",
                (true, true) => "connected",
                (true, false) => "retrying",
            })?;
            if let Some(last) = health.last_list {
                write!(f, ", {} lists, last {}s ago", health.lists, ago(last))?;
            }
            if let Some((at, error)) = &health.last_error {
                write!(f, ", last error {}s ago: {error}", ago(*at))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Node, Pod};

    fn key(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn pod(namespace: &str, name: &str) -> Entry {
        Entry::Pod(Arc::new(Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ..Pod::default()
        }))
    }

    fn list_all_empty(store: &Store) {
        for kind in Kind::ALL {
            store.replace(kind, Objects::new());
        }
    }

    #[test]
    fn nothing_loads_before_every_kind_is_listed() {
        let store = Store::default();
        store.replace(Kind::Namespace, Objects::new());
        store.error(Kind::Pod, "connection refused".to_owned());
        assert_eq!(store.version(), 0);
        let error = store.load().unwrap_err().to_string();
        assert!(
            error.contains("waiting for the initial list of pods (last error: connection refused)"),
            "{error}"
        );
        assert!(error.contains("networkpolicies"), "{error}");
        assert!(!error.contains("namespaces"), "{error}");
    }

    #[test]
    fn versions_move_only_with_changes_of_the_desired_state() {
        let store = Store::default();
        list_all_empty(&store);
        let listed = store.version();
        assert_ne!(listed, 0);
        store.upsert(Kind::Pod, key("x", "a"), pod("x", "a"));
        let added = store.version();
        assert_ne!(added, listed);
        store.upsert(Kind::Pod, key("x", "a"), pod("x", "a"));
        assert_eq!(store.version(), added, "an update that changes nothing");
        store.replace(Kind::Node, Objects::new());
        assert_eq!(store.version(), added, "a relist that changes nothing");
        store.upsert(Kind::Node, key("", "n1"), Entry::Node(Node::default()));
        let node_added = store.version();
        assert_ne!(node_added, added, "nodes are part of the desired state");
        store.remove(Kind::Pod, &key("x", "a"));
        assert_ne!(store.version(), added);
    }

    #[test]
    fn only_new_errors_are_news() {
        let store = Store::default();
        assert!(store.error(Kind::Pod, "forbidden".to_owned()));
        assert!(!store.error(Kind::Pod, "forbidden".to_owned()));
        assert!(store.error(Kind::Pod, "connection refused".to_owned()));
        store.replace(Kind::Pod, Objects::new());
        assert!(store.error(Kind::Pod, "connection refused".to_owned()));
    }

    #[test]
    fn implied_namespaces_exist_without_labels() {
        let store = Store::default();
        list_all_empty(&store);
        store.upsert(Kind::Pod, key("x", "a"), pod("x", "a"));
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state.namespaces["x"].labels, BTreeMap::new());
    }

    #[test]
    fn an_error_keeps_the_objects_and_shows_in_health() {
        let store = Store::default();
        list_all_empty(&store);
        store.upsert(Kind::Pod, key("x", "a"), pod("x", "a"));
        store.error(Kind::Pod, "connection refused".to_owned());
        assert_eq!(store.load().unwrap().state.pods.len(), 1);
        let health = store.health();
        assert!(!health.healthy());
        assert!(
            health.to_string().contains("pods: retrying, 1 lists"),
            "{health}"
        );
    }
}
