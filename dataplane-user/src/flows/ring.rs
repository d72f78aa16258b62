//! Reads `WEIR_FLOWS_V2`: drains every record when the kernel wakes the reader, or after
//! [`DRAIN_INTERVAL`] without a wake-up, names each event and hands it to the [`FlowLog`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Clock, FlowLog, FlowRecord, event_from_bytes};
use crate::catalog::Catalog;
use crate::dataplane::FlowRing;

/// The programs wake the reader only once `FLOW_WAKEUP_BYTES` wait (a wake-up costs more than
/// many events): this bounds how late the events of a quiet node are seen.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Reads flow events until the ring's descriptor fails. `names` gives the catalog in force,
/// asked once per batch so that names follow policy changes.
pub async fn read(
    ring: FlowRing,
    log: Arc<FlowLog>,
    names: impl Fn() -> Arc<Catalog>,
) -> std::io::Result<()> {
    // SAFETY: the ring owns its map's descriptor, never replaces it, and closes it only when
    // dropped, which the `AsyncFd` does.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        match tokio::time::timeout(DRAIN_INTERVAL, fd.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                push_all(guard.get_inner_mut(), &log, &names());
                // Clears only the readiness this guard saw: a wake-up that came in while
                // draining stays, and the next loop drains again.
                guard.clear_ready();
            }
            Err(_) => push_all(fd.get_mut(), &log, &names()),
        }
    }
}

/// Names and logs every event waiting in `ring`.
fn push_all(ring: &mut FlowRing, log: &FlowLog, names: &Catalog) {
    let clock = Clock::now();
    while let Some(item) = ring.next() {
        let record =
            event_from_bytes(&item).and_then(|ev| FlowRecord::from_event(&ev, names, &clock));
        if let Some(record) = record {
            log.push(record);
        } else {
            tracing::debug!(len = item.len(), "skipping an unknown flow event");
        }
    }
}

/// Every event waiting in `ring`, without waiting for more (tests and tools).
pub fn drain(ring: &mut FlowRing) -> Vec<dataplane_abi::FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.extend(event_from_bytes(&item));
    }
    out
}
