//! Conntrack: one entry per connection, keyed from the local pod's side, so replies, later
//! packets and ICMP errors about the connection find it whichever way they travel.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_abi::{Addr, CtEntry, CtKey, Direction, ct_flags, ct_timeout, proto};

use crate::CONNTRACK;
use crate::parse::{Packet, tcp_flag};
use crate::service::Translation;

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

/// The key of a connection between `local`:`local_port_h` and `remote`:`remote_port_h`.
#[inline(always)]
pub fn key(local: Addr, remote: Addr, local_port_h: u16, remote_port_h: u16, proto: u8) -> CtKey {
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
#[derive(Clone, Copy)]
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

impl Tracked {
    /// The entry itself.
    #[inline(always)]
    pub fn entry(&self) -> &CtEntry {
        // SAFETY: see `lookup`.
        unsafe { &*self.entry }
    }

    /// A client's connection to a frontend: the entry names its backend.
    #[inline(always)]
    pub fn is_service(&self) -> bool {
        self.entry().flags & ct_flags::SERVICE != 0
    }

    /// The translated flow of a Service connection: replies get the frontend back as source.
    #[inline(always)]
    pub fn is_rev_nat(&self) -> bool {
        self.entry().flags & ct_flags::REV_NAT != 0
    }

    /// Written by the uplink for a connection from outside to this local pod, not yet judged
    /// by policy: its first packet is judged as a new connection's.
    #[inline(always)]
    pub fn is_unjudged(&self) -> bool {
        self.entry().flags & ct_flags::UNJUDGED != 0
    }

    /// A connection from outside the node to this local pod: its replies leave by a route
    /// lookup (`forward`).
    #[inline(always)]
    pub fn is_from_outside(&self) -> bool {
        self.entry().flags & ct_flags::FROM_OUTSIDE != 0
    }

    /// A hairpin flow: replies also get the pod itself back as destination.
    #[inline(always)]
    pub fn is_hairpin(&self) -> bool {
        self.entry().flags & ct_flags::HAIRPIN != 0
    }

    /// Sends a Service connection to another backend (its own left the set).
    #[inline(always)]
    pub fn retarget(&self, backend: &Addr, port_h: u16, id: u32) {
        // SAFETY: see `lookup`.
        let e = unsafe { &mut *self.entry };
        e.nat_addr = *backend;
        e.nat_port_h = port_h;
        e.backend = id;
    }
}

/// Keeps a Service entry alive as long as the translated flow it leads to, with the same
/// state (answered, closing) and policy generation, so that both expire together and the
/// client's next packets may take [`service_entry_suffices`]'s short way.
#[inline(always)]
pub fn follow(service: &Tracked, translated: &Tracked) {
    // SAFETY: see `lookup`.
    let (s, t) = unsafe { (&mut *service.entry, &*translated.entry) };
    let state = t.flags & (ct_flags::REPLIED | ct_flags::CLOSING);
    if s.flags & state != state {
        s.flags |= state;
    }
    if t.last_seen_ns > s.last_seen_ns {
        s.last_seen_ns = t.last_seen_ns;
    }
    if s.policy_epoch != t.policy_epoch {
        s.policy_epoch = t.policy_epoch;
    }
}

/// Whether a client's packet of a Service connection needs its Service entry only, and not
/// the translated flow's: an answered TCP connection, judged under the current policy
/// generation, and a packet that changes no state (no SYN, FIN or RST). The translated entry
/// is then kept alive by the backend's packets, which TCP makes acknowledge the client's; a
/// policy change, a teardown or UDP (one-way flows) take the whole way.
#[inline(always)]
pub fn service_entry_suffices(service: &Tracked, pkt: &Packet, policy_epoch: u32) -> bool {
    let e = service.entry();
    pkt.proto == proto::TCP
        && pkt.tcp_flags & (tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST) == 0
        && e.flags & ct_flags::REPLIED != 0
        && e.policy_epoch == policy_epoch
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
pub fn create(key: &CtKey, origin: Direction, tcp_flags: u8, policy_epoch: u32, nat: Option<&Nat>) {
    let mut entry = new_entry(origin, tcp_flags, policy_epoch);
    if let Some(nat) = nat {
        entry.flags |= ct_flags::REV_NAT;
        if nat.from_outside {
            entry.flags |= ct_flags::FROM_OUTSIDE;
        }
        entry.nat_addr = nat.frontend;
        entry.nat_port_h = nat.frontend_port_h;
        entry.service = nat.translation.service;
    }
    let _ = CONNTRACK.insert(key, entry, 0);
}

/// Starts tracking a client's connection to a frontend (`key` as the client sent it), bound
/// to the backend `nat` chose.
#[inline(always)]
pub fn create_service(key: &CtKey, tcp_flags: u8, policy_epoch: u32, nat: &Nat) {
    let mut entry = new_entry(Direction::Egress, tcp_flags, policy_epoch);
    entry.flags |= ct_flags::SERVICE;
    entry.nat_addr = nat.translation.backend;
    entry.nat_port_h = nat.translation.backend_port_h;
    entry.backend = nat.translation.backend_id;
    entry.service = nat.translation.service;
    let _ = CONNTRACK.insert(key, entry, 0);
}

/// Starts tracking the translated flow of a pod reaching a Service through itself: the pod
/// (`local`) receives it from the frontend, at its client port, on its backend port.
#[inline(always)]
pub fn create_hairpin(
    local: &Addr,
    client_port_h: u16,
    proto: u8,
    tcp_flags: u8,
    epoch: u32,
    nat: &Nat,
) {
    let key = key(
        *local,
        nat.frontend,
        nat.translation.backend_port_h,
        client_port_h,
        proto,
    );
    let mut entry = new_entry(Direction::Ingress, tcp_flags, epoch);
    entry.flags |= ct_flags::REV_NAT | ct_flags::HAIRPIN;
    entry.nat_addr = nat.frontend;
    entry.nat_port_h = nat.frontend_port_h;
    entry.service = nat.translation.service;
    let _ = CONNTRACK.insert(key, entry, 0);
}

/// A Service connection's translation, as the conntrack entries of both of its keys need it.
pub struct Nat {
    /// The frontend the client asked for.
    pub frontend: Addr,
    pub frontend_port_h: u16,
    pub translation: Translation,
    /// A connection from outside the node, translated at the uplink.
    pub from_outside: bool,
}

impl Nat {
    /// The translation the uplink made for a connection from outside to a local pod, as its
    /// `UNJUDGED` entry records it: the frontend to put back on replies.
    #[inline(always)]
    pub fn external(entry: &CtEntry, backend: &Addr, backend_port_h: u16) -> Self {
        Self {
            frontend: entry.nat_addr,
            frontend_port_h: entry.nat_port_h,
            translation: Translation {
                backend: *backend,
                backend_port_h,
                backend_id: 0,
                service: entry.service,
                new: false,
            },
            from_outside: true,
        }
    }
}

#[inline(always)]
fn new_entry(origin: Direction, tcp_flags: u8, policy_epoch: u32) -> CtEntry {
    CtEntry {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        policy_epoch,
        origin: origin as u8,
        flags: state_flags(tcp_flags),
        ..CtEntry::default()
    }
}

/// The state bits a connection's first packet sets, by its TCP flags (`SEEN_SYN`, `CLOSING`).
#[inline(always)]
pub fn state_flags(tcp_flags: u8) -> u8 {
    let mut flags = 0;
    if tcp_flags & tcp_flag::SYN != 0 {
        flags |= ct_flags::SEEN_SYN;
    }
    if tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    flags
}

/// Forgets a connection policy no longer allows.
#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}
