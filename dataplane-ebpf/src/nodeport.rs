//! Node ports: connections from outside the node to its Services (node ports, load-balancer IPs,
//! external IPs), as they arrive on an uplink (TC ingress). The frontend gets its backend here,
//! once per connection; policy judges the connection where the backend runs.
//!
//! - A backend on this node: the destination is translated, the client's address kept. The
//!   pod's conntrack entry is written here, `UNJUDGED`, naming the frontend: the pod's
//!   interface judges the first packet by policy, and puts the frontend back on the replies,
//!   which leave through it.
//! - A backend on another node (`externalTrafficPolicy: Cluster`): the source is masqueraded
//!   to this node's address, at a port this program claims for the connection (a reply entry
//!   inserted only if absent), so that the backend's replies come back here and name one
//!   connection; they are translated back here.
//! - `Local` frontends list this node's backends only; with none, the connection is dropped
//!   (`no_local_endpoints`). A frontend without any endpoint rejects (`no_endpoints`).
//!
//! Everything else on the uplink (the node's own traffic, pod traffic between nodes) passes
//! untouched and uncounted, after one frontend lookup.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use dataplane_abi::{
    Addr, Backend, CtEntry, CtKey, Direction, DropReason, NodePortEntry, PassReason, ServiceKey,
    ServiceScope, ServiceValue, backend_flags, ct_flags, ct_timeout, flow_hash, masquerade_ports,
    nodeport_kind, proto, service_flags,
};

use crate::nat::{self, End};
use crate::observe::Trace;
use crate::parse::{self, Packet, Parsed, tcp_flag};
use crate::{CONNTRACK, NODEPORT_NAT, SCRATCH, SERVICES, UPLINK_CONFIG, fragment, service};
use crate::{conntrack, forward};

/// The outcome of a packet on the uplink: `Ok(None)` for a packet that is none of Weir's
/// business (passed untouched, not counted).
pub type Outcome = Result<Option<PassReason>, DropReason>;

/// The uplink's working space, in the per-CPU scratch slot: the BPF stack has no room for it
/// next to the packet's path.
pub struct Scratch {
    /// A key being looked up or written.
    key: CtKey,
    /// A connection-table entry being written.
    entry: NodePortEntry,
    /// The pod's conntrack entry of a new connection to a local backend.
    pod_entry: CtEntry,
}

/// Translates a packet arriving on an uplink, when it belongs to a Service connection.
#[inline(always)]
pub fn process(ctx: &TcContext, trace: &mut Trace) -> Outcome {
    // SAFETY: slot 0 always exists; only this program run on this CPU uses it.
    let Some(work) = SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return Ok(None);
    };
    work.redirected = false;
    let crate::Work {
        pkt,
        nodeport: scratch,
        ..
    } = work;
    // Whatever the uplink carries that Weir cannot read is the node's business.
    let Ok(Parsed::Ip) = parse::parse(ctx, pkt) else {
        return Ok(None);
    };
    if parse::is_link_scope(&pkt.src) || parse::is_link_scope(&pkt.dst) {
        return Ok(None);
    }
    let masquerade = masquerade_addr(pkt);
    if pkt.is_icmp_error {
        return icmp_error(ctx, pkt, masquerade, &mut scratch.key);
    }
    if !matches!(pkt.proto, proto::TCP | proto::UDP | proto::SCTP)
        || fragment::resolve_ports(pkt).is_err()
    {
        return Ok(None);
    }
    // The masquerade address may also be a node port's: a miss here is not the end.
    if masquerade.is_some_and(|m| *m == pkt.dst) {
        scratch.key = reply_key(pkt);
        if let Some(reply) = live_entry(&scratch.key, nodeport_kind::REPLY) {
            return from_backend(ctx, pkt, reply);
        }
    }
    let Some(frontend) = external_frontend(pkt) else {
        return Ok(None);
    };
    trace.service = frontend.service;
    scratch.key = forward_key(pkt);
    if let Some(forward) = live_entry(&scratch.key, nodeport_kind::FORWARD)
        && (pkt.proto == proto::TCP || service::backend_alive(forward.backend, &forward.addr_a))
    {
        touch(forward, pkt.tcp_flags, Direction::Egress);
        translate(ctx, pkt, forward)?;
        return Ok(Some(PassReason::Established));
    }
    connect(ctx, pkt, frontend, masquerade, scratch)?;
    Ok(Some(PassReason::ExternalService))
}

/// A new connection to `frontend` (or a UDP flow whose backend left): picks its backend,
/// records the connection and translates its first packet.
#[inline(always)]
fn connect(
    ctx: &TcContext,
    pkt: &mut Packet,
    frontend: &ServiceValue,
    masquerade: Option<&Addr>,
    scratch: &mut Scratch,
) -> Result<(), DropReason> {
    if frontend.flags & service_flags::SOURCE_RANGES != 0
        && !service::source_allowed(frontend, &pkt.src)
    {
        return Err(DropReason::SourceRange);
    }
    let hash = flow_hash(&pkt.src, pkt.src_port_h, pkt.proto);
    let (id, backend) = service::choose(frontend, &pkt.src, hash)?;
    let (node, port_h) = if backend.flags & backend_flags::LOCAL != 0 {
        admit_to_pod(pkt, &backend, frontend.service, scratch);
        ([0; 16], 0)
    } else {
        let node = masquerade.ok_or(DropReason::NatFailed)?;
        let port_h = claim_port(pkt, &backend, node, hash, frontend.service, scratch)?;
        (*node, port_h)
    };
    scratch.entry = NodePortEntry {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        kind: nodeport_kind::FORWARD,
        flags: conntrack::state_flags(pkt.tcp_flags),
        port_a_h: backend.port_h,
        port_b_h: port_h,
        _pad: 0,
        service: frontend.service,
        backend: id,
        addr_a: backend.addr,
        addr_b: node,
    };
    scratch.key = forward_key(pkt);
    let (key, entry) = (&scratch.key, &scratch.entry);
    let _ = NODEPORT_NAT.insert(key, entry, 0);
    if pkt.fragment.is_first() {
        fragment::remember(pkt, &pkt.dst);
    }
    translate(ctx, pkt, &scratch.entry)
}

/// Rewrites a client's packet as its connection's forward entry says: to the backend, and
/// from this node when masqueraded (then sent out by a route lookup: the node's IP input would
/// drop a packet from its own address).
#[inline(always)]
fn translate(ctx: &TcContext, pkt: &mut Packet, forward: &NodePortEntry) -> Result<(), DropReason> {
    nat::rewrite(
        ctx,
        pkt,
        End::Destination,
        &forward.addr_a,
        forward.port_a_h,
    )?;
    if forward.port_b_h != 0 {
        nat::rewrite(ctx, pkt, End::Source, &forward.addr_b, forward.port_b_h)?;
        forward::by_fib(ctx);
    }
    Ok(())
}

/// Writes the local backend's conntrack entry of a new connection from outside, for its pod's
/// interface to judge. A new connection owns its tuple at the pod, as on the pods' own path
/// (`main.rs`, `to_backend`): an entry already there belongs to an earlier flow of the client's
/// source port to another frontend with the same backend (clients reuse source ports across
/// destinations), and its frontend would answer this connection from the wrong address. When
/// it is this very connection's (its forward entry was lost), the pod judges it once more.
#[inline(always)]
fn admit_to_pod(pkt: &Packet, backend: &Backend, service: u32, scratch: &mut Scratch) {
    scratch.key = conntrack::key(
        backend.addr,
        pkt.src,
        backend.port_h,
        pkt.src_port_h,
        pkt.proto,
    );
    scratch.pod_entry = CtEntry {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        origin: Direction::Ingress as u8,
        flags: ct_flags::REV_NAT | ct_flags::UNJUDGED | conntrack::state_flags(pkt.tcp_flags),
        nat_addr: pkt.dst,
        nat_port_h: pkt.dst_port_h,
        service,
        ..CtEntry::default()
    };
    // Passed by reference: a copy would go on the stack.
    let (key, entry) = (&scratch.key, &scratch.pod_entry);
    let _ = CONNTRACK.insert(key, entry, 0);
}

/// Claims a port of this node for a masqueraded connection to `backend`: the first candidate
/// whose reply entry is free, or already this connection's (its forward entry was lost).
#[inline(always)]
fn claim_port(
    pkt: &Packet,
    backend: &Backend,
    node: &Addr,
    hash: u32,
    service: u32,
    scratch: &mut Scratch,
) -> Result<u16, DropReason> {
    scratch.entry = NodePortEntry {
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        kind: nodeport_kind::REPLY,
        flags: 0,
        port_a_h: pkt.src_port_h,
        port_b_h: pkt.dst_port_h,
        _pad: 0,
        service,
        backend: 0,
        addr_a: pkt.src,
        addr_b: pkt.dst,
    };
    scratch.key = conntrack::key(*node, backend.addr, 0, backend.port_h, pkt.proto);
    for attempt in 0..masquerade_ports::TRIES {
        scratch.key.local_port_h = masquerade_ports::candidate(hash, attempt);
        let (key, reply) = (&scratch.key, &scratch.entry);
        let claimed = NODEPORT_NAT.insert(key, reply, u64::from(BPF_NOEXIST));
        if claimed.is_ok()
            || live_entry(&scratch.key, nodeport_kind::REPLY)
                .is_some_and(|taken| same_connection(taken, &scratch.entry))
        {
            return Ok(scratch.key.local_port_h);
        }
    }
    Err(DropReason::NatFailed)
}

#[inline(always)]
fn same_connection(a: &NodePortEntry, b: &NodePortEntry) -> bool {
    a.addr_a == b.addr_a
        && a.port_a_h == b.port_a_h
        && a.addr_b == b.addr_b
        && a.port_b_h == b.port_b_h
}

/// A backend's reply to a masqueraded connection: it goes back to the client, from the
/// frontend the client asked for.
#[inline(always)]
fn from_backend(ctx: &TcContext, pkt: &mut Packet, reply: &mut NodePortEntry) -> Outcome {
    touch(reply, pkt.tcp_flags, Direction::Ingress);
    nat::rewrite(ctx, pkt, End::Source, &reply.addr_b, reply.port_b_h)?;
    nat::rewrite(ctx, pkt, End::Destination, &reply.addr_a, reply.port_a_h)?;
    // From the frontend, which may be the node's own address: by a route lookup.
    forward::by_fib(ctx);
    Ok(Some(PassReason::Established))
}

/// An ICMP error about a connection from outside, made to read as about the connection each
/// end knows (as on the pods' side, `translate_icmp_error`): from a masqueraded backend's side
/// (it quotes the packet this node sent it), it goes to the client, about the client's packet
/// to the frontend; from the client's side (it quotes a reply from the frontend: a
/// fragmentation-needed about it is how path MTU discovery reaches the backend), it goes to the
/// backend, about the backend's own reply. Any other error is the node's.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    pkt: &mut Packet,
    masquerade: Option<&Addr>,
    key: &mut CtKey,
) -> Outcome {
    let inner = pkt.embedded;
    if masquerade.is_some_and(|m| *m == inner.src) {
        *key = conntrack::key(
            inner.src,
            inner.dst,
            inner.src_port_h,
            inner.dst_port_h,
            inner.proto,
        );
        // The masquerade address may be the frontend too: a miss here is not the end.
        if let Some(reply) = live_entry(key, nodeport_kind::REPLY) {
            nat::rewrite_icmp_error(ctx, pkt, End::Source, &reply.addr_a, reply.port_a_h)?;
            nat::rewrite_icmp_error(ctx, pkt, End::Destination, &reply.addr_b, reply.port_b_h)?;
            forward::by_fib(ctx);
            return Ok(Some(PassReason::Established));
        }
    }
    *key = conntrack::key(
        inner.dst,
        inner.src,
        inner.dst_port_h,
        inner.src_port_h,
        inner.proto,
    );
    let Some(forward) = live_entry(key, nodeport_kind::FORWARD) else {
        return Ok(None);
    };
    nat::rewrite_icmp_error(ctx, pkt, End::Source, &forward.addr_a, forward.port_a_h)?;
    if forward.port_b_h != 0 {
        nat::rewrite_icmp_error(
            ctx,
            pkt,
            End::Destination,
            &forward.addr_b,
            forward.port_b_h,
        )?;
        forward::by_fib(ctx);
    }
    Ok(Some(PassReason::Established))
}

/// The key of a masqueraded backend's reply: this node's end first.
#[inline(always)]
fn reply_key(pkt: &Packet) -> CtKey {
    conntrack::key(pkt.dst, pkt.src, pkt.dst_port_h, pkt.src_port_h, pkt.proto)
}

/// The external frontend the packet is addressed to, if any.
#[inline(always)]
fn external_frontend(pkt: &Packet) -> Option<&'static ServiceValue> {
    let key = ServiceKey {
        addr: pkt.dst,
        port_h: pkt.dst_port_h,
        proto: pkt.proto,
        scope: ServiceScope::External as u8,
    };
    // SAFETY: the reference is used within this program run, while the element lives.
    unsafe { SERVICES.get(key) }
}

/// The key of the client's packets of a connection: client first, frontend second.
#[inline(always)]
fn forward_key(pkt: &Packet) -> CtKey {
    conntrack::key(pkt.src, pkt.dst, pkt.src_port_h, pkt.dst_port_h, pkt.proto)
}

/// The entry of `key`, if it is of `kind` and has not expired (an expired one is removed).
#[inline(always)]
fn live_entry(key: &CtKey, kind: u8) -> Option<&'static mut NodePortEntry> {
    let entry = NODEPORT_NAT.get_ptr_mut(key)?;
    // SAFETY: valid for this program run; concurrent writers only refresh timestamps and state
    // bits, which a torn read cannot turn into a wrong translation.
    let entry = unsafe { &mut *entry };
    let now = unsafe { bpf_ktime_get_ns() };
    if entry.kind != kind
        || now.saturating_sub(entry.last_seen_ns) > ct_timeout::for_entry(key.proto, entry.flags)
    {
        if entry.kind == kind {
            let _ = NODEPORT_NAT.remove(key);
        }
        return None;
    }
    Some(entry)
}

/// Records a packet of a connection. The client's side sees no replies: its TCP connection is
/// taken as answered once the client acknowledges without SYN (the handshake got through).
#[inline(always)]
fn touch(entry: &mut NodePortEntry, tcp_flags: u8, dir: Direction) {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = entry.flags | conntrack::state_flags(tcp_flags);
    let answered =
        dir == Direction::Ingress || tcp_flags & (tcp_flag::ACK | tcp_flag::SYN) == tcp_flag::ACK;
    if answered {
        flags |= ct_flags::REPLIED;
    }
    if flags != entry.flags {
        entry.flags = flags;
    }
    if now.saturating_sub(entry.last_seen_ns) > ct_timeout::REFRESH_NS {
        entry.last_seen_ns = now;
    }
}

/// This node's masquerade address of the packet's family, when the agent set one.
#[inline(always)]
fn masquerade_addr(pkt: &Packet) -> Option<&'static Addr> {
    let config = UPLINK_CONFIG.get(0)?;
    // Read as a plain byte: from a `bool`, LLVM turns the choice into `config + 16 * ipv6`,
    // which the verifier bounds by the byte's 255, beyond the value (Linux 6.18).
    // SAFETY: a `bool` is one initialised byte.
    let ipv6 = unsafe { core::ptr::read_volatile((&raw const pkt.ipv6).cast::<u8>()) };
    let addr = if ipv6 == 0 {
        &config.masquerade_v4
    } else {
        &config.masquerade_v6
    };
    (*addr != [0; 16]).then_some(addr)
}
