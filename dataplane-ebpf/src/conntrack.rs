//! Conntrack: one entry per connection, keyed from the local pod's side, so replies, later
//! packets and ICMP errors about the connection find it whichever way they travel.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_abi::{Addr, CtEntry, CtKey, Direction, ct_flags, ct_timeout};

use crate::CONNTRACK;
use crate::parse::{Packet, tcp_flag};

/// The connection as the local pod sees it.
#[derive(Clone, Copy)]
pub struct Flow {
    pub key: CtKey,
    /// Destination port of the connection's first packet, were this packet the first.
    pub dst_port_h: u16,
    /// The way this packet travels.
    pub dir: Direction,
}

impl Flow {
    /// The flow of `pkt`, oriented from the local pod (`local` is its address in the packet).
    #[inline(always)]
    pub fn of_packet(pkt: &Packet, dir: Direction) -> Self {
        let (local, remote, local_port_h, remote_port_h) = match dir {
            Direction::Egress => (pkt.src, pkt.dst, pkt.src_port_h, pkt.dst_port_h),
            Direction::Ingress => (pkt.dst, pkt.src, pkt.dst_port_h, pkt.src_port_h),
        };
        Self {
            key: key(local, remote, local_port_h, remote_port_h, pkt.proto),
            dst_port_h: pkt.dst_port_h,
            dir,
        }
    }

    /// The connection an ICMP error (`pkt.is_icmp_error`) quotes, oriented from `local`: the quoted packet was sent
    /// by one end of the connection, so `local` is either its source or its destination.
    #[inline(always)]
    pub fn of_icmp_error(pkt: &Packet, dir: Direction) -> Self {
        let inner = &pkt.embedded;
        let local = match dir {
            Direction::Egress => pkt.src,
            Direction::Ingress => pkt.dst,
        };
        let key = if inner.src == local {
            key(
                inner.src,
                inner.dst,
                inner.src_port_h,
                inner.dst_port_h,
                inner.proto,
            )
        } else {
            key(
                inner.dst,
                inner.src,
                inner.dst_port_h,
                inner.src_port_h,
                inner.proto,
            )
        };
        Self {
            key,
            dst_port_h: inner.dst_port_h,
            dir,
        }
    }
}

#[inline(always)]
fn key(local: Addr, remote: Addr, local_port_h: u16, remote_port_h: u16, proto: u8) -> CtKey {
    CtKey {
        local,
        remote,
        local_port_h,
        remote_port_h,
        proto,
        _pad: [0; 3],
    }
}

/// A live entry, found by [`lookup`].
pub struct Tracked {
    entry: *mut CtEntry,
    pub origin: Direction,
    pub policy_epoch: u32,
}

/// Finds the live entry of `key`, collecting it instead when it has expired.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<Tracked> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; concurrent writers only refresh
    // timestamps and flags, which a torn read cannot turn into a wrong verdict.
    let e = unsafe { &*entry };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(e.last_seen_ns) > ct_timeout::for_entry(key.proto, e.flags) {
        let _ = CONNTRACK.remove(key);
        return None;
    }
    Some(Tracked {
        entry,
        origin: Direction::from_u8(e.origin).unwrap_or(Direction::Egress),
        policy_epoch: e.policy_epoch,
    })
}

/// Records a packet of a tracked connection: refreshes its timestamp (at most once a second,
/// to spare cache lines), notes the first reply and TCP teardown.
#[inline(always)]
pub fn touch(tracked: &Tracked, dir: Direction, tcp_flags: u8, policy_epoch: u32) {
    // SAFETY: see `lookup`.
    let e = unsafe { &mut *tracked.entry };
    let now = unsafe { bpf_ktime_get_ns() };
    if tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        e.flags |= ct_flags::CLOSING;
    }
    if dir != tracked.origin && e.flags & ct_flags::REPLIED == 0 {
        e.flags |= ct_flags::REPLIED;
    }
    if now.saturating_sub(e.last_seen_ns) > ct_timeout::REFRESH_NS {
        e.last_seen_ns = now;
    }
    if e.policy_epoch != policy_epoch {
        e.policy_epoch = policy_epoch;
    }
}

/// Starts tracking a connection policy has just allowed. A full table evicts the least
/// recently used entry (LRU map): the connection is then re-checked against policy.
#[inline(always)]
pub fn create(key: &CtKey, origin: Direction, tcp_flags: u8, policy_epoch: u32) {
    let mut flags = 0;
    if tcp_flags & tcp_flag::SYN != 0 {
        flags |= ct_flags::SEEN_SYN;
    }
    if tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    let entry = CtEntry {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        policy_epoch,
        origin: origin as u8,
        flags,
        ..CtEntry::default()
    };
    let _ = CONNTRACK.insert(key, entry, 0);
}

/// Forgets a connection policy no longer allows.
#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}
