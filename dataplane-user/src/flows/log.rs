//! The agent's memory of flows: the most recent ones, a feed for followers, and tallies by
//! verdict, reason and policy for `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use super::{FlowFilter, FlowRecord, Verdict};

/// Followers may fall this many flows behind before they miss some.
const FEED_CAPACITY: usize = 1024;

/// A tally's labels: flows of one verdict and reason, attributed to one policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tally {
    /// Whether the flows were allowed or dropped.
    pub verdict: Verdict,
    /// The pass or drop reason's stable name.
    pub reason: String,
    /// The policy that allowed the flow; for a drop, each policy isolating the pod (a drop
    /// isolated by two policies counts once under each). Empty when none is known.
    pub policy: String,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<Arc<FlowRecord>>,
    next_seq: u64,
    tallies: BTreeMap<Tally, u64>,
}

impl Inner {
    fn recent(&self, filter: &FlowFilter, last: Option<usize>) -> Vec<Arc<FlowRecord>> {
        let mut out: Vec<_> = self
            .recent
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(last.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Recent flows, a live feed, and tallies. Shared by the ring reader and the HTTP server.
pub struct FlowLog {
    capacity: usize,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<FlowRecord>>,
}

impl FlowLog {
    /// Keeps the `capacity` most recent flows.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                next_seq: 1,
                ..Inner::default()
            }),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Numbers `record`, keeps it, tallies it and hands it to followers.
    pub fn push(&self, mut record: FlowRecord) {
        let mut inner = self.lock();
        record.seq = inner.next_seq;
        inner.next_seq += 1;
        for tally in tallies_of(&record) {
            *inner.tallies.entry(tally).or_default() += 1;
        }
        let record = Arc::new(record);
        if inner.recent.len() == self.capacity {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record.clone());
        // Sent under the lock, so that a follower's snapshot and feed never overlap (see
        // `follow`). Having no follower is not an error.
        let _ = self.feed.send(record);
    }

    /// The last `last` kept flows matching `filter` (all of them for `None`), oldest first.
    pub fn recent(&self, filter: &FlowFilter, last: Option<usize>) -> Vec<Arc<FlowRecord>> {
        self.lock().recent(filter, last)
    }

    /// The last `last` flows matching `filter`, and a feed of every later flow: nothing lost
    /// or repeated between the two, as `push` sends under the lock taken here.
    pub fn follow(
        &self,
        filter: &FlowFilter,
        last: usize,
    ) -> (Vec<Arc<FlowRecord>>, broadcast::Receiver<Arc<FlowRecord>>) {
        let inner = self.lock();
        (inner.recent(filter, Some(last)), self.feed.subscribe())
    }

    /// Flows pushed so far.
    pub fn received(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Every tally so far.
    pub fn tallies(&self) -> BTreeMap<Tally, u64> {
        self.lock().tallies.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn tallies_of(r: &FlowRecord) -> Vec<Tally> {
    let tally = |policy: &str| Tally {
        verdict: r.verdict,
        reason: r.reason.clone(),
        policy: policy.to_owned(),
    };
    if let Some(p) = &r.policy {
        return vec![tally(p)];
    }
    if r.isolated_by.is_empty() {
        return vec![tally("")];
    }
    r.isolated_by.iter().map(|p| tally(p)).collect()
}
