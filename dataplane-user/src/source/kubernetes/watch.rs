//! One task per kind: a kube-rs watcher whose events go into the [`Store`], with a fast
//! backoff after errors and a fresh list after an expired watch.

use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::Api;
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, Event};

use super::kind::{self, Kind, ObjectKey};
use super::store::{Objects, Store};

/// First delay after an error. kube-rs' default (0.8 s doubling to 30 s) delayed a relist by
/// more than 20 s after an API server restart (shared GUIDE, section 2): a node agent that
/// enforces policy must resync within seconds.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two attempts, so that a returning API server is seen within it.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// An error after this long without one starts again from [`FIRST_DELAY`].
const QUIET: Duration = Duration::from_secs(10);

/// Watches `kind` for ever (until the task is aborted), keeping its objects in `store`.
pub(super) async fn follow(kind: Kind, api: Api<DynamicObject>, store: Arc<Store>) {
    let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY, QUIET);
    // Each turn is one watcher: it starts with a complete list.
    loop {
        let mut events = watcher::watcher(api.clone(), watcher_config()).boxed();
        let mut relist = Relist::default();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => relist.handle(kind, event, &store),
                Err(error) => {
                    // A warning for each new error; the same one again (every 2 s of an
                    // outage) is for debugging.
                    if store.error(kind, error.to_string()) {
                        tracing::warn!(kind = %kind, "watch: {error}; retrying");
                    } else {
                        tracing::debug!(kind = %kind, "watch: {error}; retrying");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    if expired_at_start(&error) {
                        break;
                    }
                }
            }
        }
    }
}

fn watcher_config() -> watcher::Config {
    // `MostRecent` (the default) lists from etcd, not from the API server's cache: after a
    // relist the agent never goes back in time to a stale cache's view of the policies.
    // Bookmarks (on by default) keep the resume point fresh, so fewer watches expire.
    watcher::Config::default()
}

/// kube-rs 5 relists after a 410 Gone sent as an ERROR event inside a watch stream, but when
/// a watch request itself is answered with HTTP 410, it keeps asking for the same expired
/// version (`WatchStartFailed`, state `InitListed`). Only a new watcher lists again.
fn expired_at_start(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410
    )
}

/// The objects of a list in progress. They replace the store's only when the list is
/// complete (`InitDone`): clearing the store at `Init` would drop every policy, and open the
/// node, for as long as the list takes, or for the whole outage if it fails.
#[derive(Default)]
struct Relist {
    objects: Objects,
}

impl Relist {
    fn handle(&mut self, kind: Kind, event: Event<DynamicObject>, store: &Store) {
        match event {
            Event::Init => {
                self.objects.clear();
                store.connected(kind);
            }
            Event::InitApply(object) => {
                let key = ObjectKey::of(&object);
                let entry = kind::convert(kind, &key, object);
                self.objects.insert(key, entry);
            }
            Event::InitDone => {
                tracing::debug!(kind = %kind, objects = self.objects.len(), "listed");
                store.replace(kind, std::mem::take(&mut self.objects));
            }
            Event::Apply(object) => {
                let key = ObjectKey::of(&object);
                let entry = kind::convert(kind, &key, object);
                store.upsert(kind, key, entry);
            }
            Event::Delete(object) => store.remove(kind, &ObjectKey::of(&object)),
        }
    }
}

/// Exponential backoff with jitter: `first`, doubling up to `max`, each delay drawn from its
/// upper half so that the agents of many nodes do not relist in step after an API server
/// restart.
///
/// It starts again from `first` after `quiet` without an error, not after any successful
/// event: a server that lists fine but expires every watch at once (a misbehaving proxy)
/// would otherwise be sent a full list ten times a second per kind.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    quiet: Duration,
    next: Duration,
    last_error: Option<Instant>,
}

impl Backoff {
    fn new(first: Duration, max: Duration, quiet: Duration) -> Self {
        Self {
            first,
            max,
            quiet,
            next: first,
            last_error: None,
        }
    }

    /// The delay before retrying after an error that happens now.
    fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self.last_error.is_some_and(|last| now - last > self.quiet) {
            self.next = self.first;
        }
        self.last_error = Some(now);
        let full = self.next;
        self.next = (full * 2).min(self.max);
        let half = full / 2;
        // Jitter needs no better randomness than this: std seeds each thread's hasher keys
        // from the OS and changes them for every `RandomState`, so each call draws anew.
        let random = RandomState::new().hash_one(());
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(random % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY, QUIET);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = backoff.next;
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for {ceiling:?}"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn backoff_starts_again_after_a_quiet_period() {
        // Long enough that no stall of a busy machine between two calls resets it.
        let quiet = Duration::from_millis(500);
        let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY, quiet);
        for _ in 0..4 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() > FIRST_DELAY);
        std::thread::sleep(quiet + quiet / 5);
        assert!(backoff.next_delay() <= FIRST_DELAY);
    }

    #[test]
    fn only_an_http_410_at_watch_start_needs_a_new_watcher() {
        let status = |code| {
            Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            })
        };
        let gone = watcher::Error::WatchStartFailed(kube::Error::Api(status(410)));
        assert!(expired_at_start(&gone));
        let forbidden = watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        assert!(!expired_at_start(&forbidden));
        // kube-rs relists by itself after this one.
        assert!(!expired_at_start(&watcher::Error::WatchError(status(410))));
    }
}
