//! Reads `WEIR_FLOWS_V1`: waits for the kernel's wake-up, drains every record, names each
//! event and hands it to the [`FlowLog`].

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Clock, FlowLog, FlowRecord, event_from_bytes};
use crate::catalog::Catalog;

/// Reads flow events until the ring's descriptor fails. `names` gives the catalog in force,
/// asked once per batch so that names follow policy changes.
pub async fn read(
    ring: RingBuf<MapData>,
    log: Arc<FlowLog>,
    names: impl Fn() -> Arc<Catalog>,
) -> std::io::Result<()> {
    // SAFETY: the ring owns its map's descriptor, never replaces it, and closes it only when
    // dropped, which the `AsyncFd` does.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let clock = Clock::now();
        let names = names();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let record =
                event_from_bytes(&item).and_then(|ev| FlowRecord::from_event(&ev, &names, &clock));
            if let Some(record) = record {
                log.push(record);
            } else {
                tracing::debug!(len = item.len(), "skipping an unknown flow event");
            }
        }
        // Clears only the readiness this guard saw: a wake-up that came in while draining
        // stays, and the next loop drains again.
        guard.clear_ready();
    }
}

/// Every event waiting in `ring`, without waiting for more (tests and tools).
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<dataplane_abi::FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.extend(event_from_bytes(&item));
    }
    out
}
