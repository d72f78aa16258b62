//! Service: a client's packet to a frontend gets a backend. A tracked connection keeps the one
//! it has (its conntrack Service entry); a new one takes its client's affinity, or the Maglev
//! table's slot for its hash. Three lookups for a new connection whatever the number of
//! Services (frontend, table, backend), none beyond conntrack for later packets.
//!
//! Backend liveness (kube-proxy parity, without its stale-UDP bug): a TCP connection keeps a
//! backend that left its set (it ends when the pod does); a UDP or SCTP flow whose backend left
//! moves to a live one on its next packet, with no conntrack flush.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::maps::lpm_trie::Key;
use dataplane_abi::{
    Addr, AffinityKey, AffinityValue, Backend, CtKey, DropReason, ServiceKey, ServiceScope,
    ServiceValue, SourceRangeKey, backend_slot, flow_hash, maglev, maglev_slot, proto,
    service_flags, set_slot,
};

use crate::conntrack::Tracked;
use crate::observe::Trace;
use crate::parse::Packet;
use crate::{
    AFFINITY, BACKENDS, MAGLEV_LARGE, MAGLEV_MEDIUM, MAGLEV_SMALL, SERVICES, SOURCE_RANGES,
};

/// Where a client's connection to a frontend goes.
pub struct Translation {
    pub backend: Addr,
    pub backend_port_h: u16,
    pub backend_id: u32,
    pub service: u32,
    /// No conntrack Service entry exists yet: create one once policy allows the connection.
    pub new: bool,
}

/// The translation of a packet a local pod sends, or `None` when it goes to no frontend.
/// `tracked` is the conntrack entry of the packet as sent (`key`), if any.
#[inline(always)]
pub fn for_client(
    pkt: &Packet,
    key: &CtKey,
    tracked: Option<&Tracked>,
    trace: &mut Trace,
) -> Result<Option<Translation>, DropReason> {
    if !matches!(pkt.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return Ok(None);
    }
    if let Some(tracked) = tracked {
        // A tracked flow that is not a Service connection never needs the frontend lookup.
        if !tracked.is_service() {
            return Ok(None);
        }
        let entry = tracked.entry();
        trace.service = entry.service;
        if pkt.proto == proto::TCP || backend_alive(entry.backend, &entry.nat_addr) {
            return Ok(Some(Translation {
                backend: entry.nat_addr,
                backend_port_h: entry.nat_port_h,
                backend_id: entry.backend,
                service: entry.service,
                new: false,
            }));
        }
        // The backend left: pick again, as for a new flow, and record the new choice.
        let Some(frontend) = frontend(&pkt.dst, pkt.dst_port_h, pkt.proto) else {
            return Ok(None);
        };
        let translation = select(&frontend, key, trace)?;
        tracked.retarget(
            &translation.backend,
            translation.backend_port_h,
            translation.backend_id,
        );
        return Ok(Some(translation));
    }
    let Some(frontend) = frontend(&pkt.dst, pkt.dst_port_h, pkt.proto) else {
        return Ok(None);
    };
    trace.service = frontend.service;
    let mut translation = select(&frontend, key, trace)?;
    translation.new = true;
    Ok(Some(translation))
}

/// The frontend `addr`:`port_h` of protocol `l4_proto`, for clients inside the cluster.
#[inline(always)]
pub fn frontend(addr: &Addr, port_h: u16, l4_proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: *addr,
        port_h,
        proto: l4_proto,
        scope: ServiceScope::Internal as u8,
    };
    // SAFETY: the value is copied out before the program run ends.
    unsafe { SERVICES.get(key) }.copied()
}

/// Picks the backend of a new flow of `key`'s client to `frontend`.
#[inline(always)]
fn select(
    frontend: &ServiceValue,
    key: &CtKey,
    trace: &mut Trace,
) -> Result<Translation, DropReason> {
    trace.service = frontend.service;
    if frontend.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed(frontend, &key.local) {
        return Err(DropReason::SourceRange);
    }
    let hash = flow_hash(&key.local, key.local_port_h, key.proto);
    let (id, backend) = choose(frontend, &key.local, hash)?;
    Ok(translation(frontend, id, &backend))
}

/// The backend of a new connection of `client` to `frontend`: the client's last one while its
/// affinity lasts, else the Maglev table's slot for `hash`. Shared with the socket programs.
#[inline(always)]
pub fn choose(
    frontend: &ServiceValue,
    client: &Addr,
    hash: u32,
) -> Result<(u32, Backend), DropReason> {
    if frontend.backend_count == 0 {
        return Err(if frontend.flags & service_flags::DROP_IF_EMPTY != 0 {
            DropReason::NoLocalEndpoints
        } else {
            DropReason::NoEndpoints
        });
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if frontend.affinity_timeout_s != 0
        && let Some(chosen) = affine_backend(frontend, client, now)
    {
        return Ok(chosen);
    }
    let id = maglev_pick(frontend, hash).ok_or(DropReason::NoEndpoints)?;
    let backend = backend(id).ok_or(DropReason::NoEndpoints)?;
    if frontend.affinity_timeout_s != 0 {
        remember_affinity(frontend, client, id, now);
    }
    Ok((id, backend))
}

#[inline(always)]
fn translation(frontend: &ServiceValue, id: u32, backend: &Backend) -> Translation {
    Translation {
        backend: backend.addr,
        backend_port_h: backend.port_h,
        backend_id: id,
        service: frontend.service,
        new: false,
    }
}

/// The backend id in slot `hash` of the frontend's Maglev table.
#[inline(always)]
fn maglev_pick(frontend: &ServiceValue, hash: u32) -> Option<u32> {
    let set = &frontend.backend_set;
    // SAFETY (each arm): the table is copied from before the program run ends.
    match maglev::Tier::from_u8(frontend.maglev)? {
        // No check that the entry is the set's: the agent writes a set's table before any
        // frontend names it, and gives its slot to another set only long after.
        maglev::Tier::Small => {
            let table = MAGLEV_SMALL.get(set_slot(*set))?;
            let position = *table.slots.get(maglev_slot(hash, maglev::SMALL))?;
            table.backends.get(usize::from(position)).copied()
        }
        maglev::Tier::Medium => unsafe { MAGLEV_MEDIUM.get(set) }
            .and_then(|t| t.slots.get(maglev_slot(hash, maglev::MEDIUM)).copied()),
        maglev::Tier::Large => unsafe { MAGLEV_LARGE.get(set) }
            .and_then(|t| t.slots.get(maglev_slot(hash, maglev::LARGE)).copied()),
    }
}

/// The backend this client used last, if within the affinity timeout and still in the set.
#[inline(always)]
fn affine_backend(frontend: &ServiceValue, client: &Addr, now: u64) -> Option<(u32, Backend)> {
    let key = AffinityKey {
        backend_set: frontend.backend_set,
        client: *client,
    };
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: valid for this program run; a torn read of a concurrent refresh only picks the
    // other of two recent backends of the same client.
    let entry = unsafe { &mut *entry };
    let timeout_ns = u64::from(frontend.affinity_timeout_s) * 1_000_000_000;
    if now.saturating_sub(entry.last_used_ns) > timeout_ns {
        return None;
    }
    let id = entry.backend;
    let backend = backend(id)?;
    entry.last_used_ns = now;
    Some((id, backend))
}

#[inline(always)]
fn remember_affinity(frontend: &ServiceValue, client: &Addr, backend: u32, now: u64) {
    let key = AffinityKey {
        backend_set: frontend.backend_set,
        client: *client,
    };
    let value = AffinityValue {
        last_used_ns: now,
        backend,
        _pad: 0,
    };
    let _ = AFFINITY.insert(key, value, 0);
}

/// Backend `id`, if it is still in its set: its entry holds that id. The agent fills an
/// entry before it writes the id, and frees it by writing the id alone, so an entry that
/// holds the id holds that backend.
#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    BACKENDS
        .get(backend_slot(id))
        .filter(|b| b.holds(id))
        .copied()
}

/// Whether backend `id` is still in its set at `addr` (ids are per set and endpoint).
#[inline(always)]
pub fn backend_alive(id: u32, addr: &Addr) -> bool {
    backend(id).is_some_and(|b| b.addr == *addr)
}

/// Whether `client` lies in the `loadBalancerSourceRanges` of `frontend`'s Service.
#[inline(always)]
pub fn source_allowed(frontend: &ServiceValue, client: &Addr) -> bool {
    let key = Key::new(
        160,
        SourceRangeKey {
            service_be: frontend.service.to_be(),
            addr: *client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}
