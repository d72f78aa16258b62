//! Weir's TC programs: entry points and maps. The path of every packet:
//! parse → fragment → conntrack → service (→ nat) → policy → verdict (→ observe), one module
//! each. Connections from outside the node to its Services meet `nodeport` first, on the
//! uplink, and then the same path at their backend's interface.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF: every helper is inlined into its program, so the verifier sees one function"
)]

mod conntrack;
mod forward;
mod fragment;
mod nat;
mod nodeport;
mod observe;
mod parse;
mod policy;
mod reject;
mod service;
mod sock;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, TcContext},
};
use dataplane_abi::{
    Addr, AffinityKey, AffinityValue, Backend, CidrInfo, Config, CtEntry, CtKey, Direction,
    DropReason, EndpointInfo, FragKey, FragPorts, MaglevTable, NodePortEntry, ObserveConfig,
    ObserveCounter, PassReason, PolicyKey, PolicyValue, ServiceKey, ServiceValue, Slotted,
    SmallMaglevTable, SockConfig, SockNatKey, SockNatValue, SourceRangeKey, TokenBucket,
    UplinkConfig, capacity, maglev, slot_of,
};

use conntrack::{Flow, Nat};
use nat::End;
use observe::Trace;
use parse::{Packet, Parsed};
use policy::{Local, Remote};

// The policy maps hold two generations (`Slotted` keys): twice one generation's capacity.
#[map(name = "WEIR_EP_V2")]
static ENDPOINTS: HashMap<Slotted<Addr>, EndpointInfo> =
    HashMap::with_max_entries(2 * capacity::ENDPOINTS, NO_PREALLOC);

#[map(name = "WEIR_CIDR_V2")]
static CIDRS: LpmTrie<Slotted<Addr>, CidrInfo> =
    LpmTrie::with_max_entries(2 * capacity::CIDRS, NO_PREALLOC);

#[map(name = "WEIR_POL_V2")]
static POLICY: HashMap<Slotted<PolicyKey>, PolicyValue> =
    HashMap::with_max_entries(2 * capacity::POLICY, NO_PREALLOC);

#[map(name = "WEIR_CT_V2")]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

#[map(name = "WEIR_FRAG_V1")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

#[map(name = "WEIR_CFG_V1")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "WEIR_PASS_V2")]
static PASS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PassReason::COUNT, 0);

/// Per-CPU working space for the packet being processed: the BPF stack is 512 bytes, and a
/// translated packet needs two flows and its translation besides its headers.
pub struct Work {
    pub pkt: Packet,
    /// The flow as the packet arrived.
    pub wire: Flow,
    /// The flow after translation.
    pub translated: Flow,
    pub nat: Nat,
    /// Where a rejected connection's answer is built.
    pub answer: reject::Answer,
    /// The uplink program's own.
    pub nodeport: nodeport::Scratch,
    /// The route lookup of a packet sent out by [`forward::by_fib`].
    pub fib: forward::FibParams,
    /// This run redirected its packet ([`forward::by_fib`]); reset by each run's first stage.
    pub redirected: bool,
}

#[map]
static SCRATCH: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WEIR_DROP_V1")]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[map(name = "WEIR_FLOWS_V2")]
static FLOWS: RingBuf = RingBuf::with_byte_size(capacity::FLOW_RING_BYTES, 0);

#[map(name = "WEIR_OBS_V1")]
static OBSERVE: Array<ObserveConfig> = Array::with_max_entries(1, 0);

#[map(name = "WEIR_OBS_TB_V1")]
static OBSERVE_BUCKETS: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WEIR_OBS_CNT_V1")]
static OBSERVE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ObserveCounter::COUNT, 0);

/// Maps the agent allocates entry by entry: their capacity is a ceiling, not a reservation.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// Arrays the agent writes through a memory mapping rather than one system call per entry.
const MMAPABLE: u32 = aya_ebpf::bindings::BPF_F_MMAPABLE;

#[map(name = "WEIR_SVC_V2")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(capacity::SERVICES, NO_PREALLOC);

#[map(name = "WEIR_BE_V2")]
static BACKENDS: Array<Backend> = Array::with_max_entries(capacity::BACKENDS, MMAPABLE);

#[map(name = "WEIR_MAG_S_V2")]
static MAGLEV_SMALL: Array<SmallMaglevTable> =
    Array::with_max_entries(capacity::BACKEND_SETS, MMAPABLE);

#[map(name = "WEIR_MAG_M_V2")]
static MAGLEV_MEDIUM: HashMap<u32, MaglevTable<{ maglev::MEDIUM }>> =
    HashMap::with_max_entries(capacity::MAGLEV_MEDIUM, NO_PREALLOC);

#[map(name = "WEIR_MAG_L_V2")]
static MAGLEV_LARGE: HashMap<u32, MaglevTable<{ maglev::LARGE }>> =
    HashMap::with_max_entries(capacity::MAGLEV_LARGE, NO_PREALLOC);

#[map(name = "WEIR_AFF_V2")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);

#[map(name = "WEIR_LBSRC_V2")]
static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::with_max_entries(capacity::SOURCE_RANGES, NO_PREALLOC);

#[map(name = "WEIR_SOCK_V1")]
static SOCK_CONFIG: Array<SockConfig> = Array::with_max_entries(1, 0);

#[map(name = "WEIR_SKNAT_V1")]
static SOCK_NAT: LruHashMap<SockNatKey, SockNatValue> =
    LruHashMap::with_max_entries(capacity::SOCK_NAT, 0);

#[map(name = "WEIR_NPNAT_V1")]
static NODEPORT_NAT: LruHashMap<CtKey, NodePortEntry> =
    LruHashMap::with_max_entries(capacity::NODEPORT_NAT, 0);

#[map(name = "WEIR_UPLINK_V1")]
static UPLINK_CONFIG: Array<UplinkConfig> = Array::with_max_entries(1, 0);

/// Packets the pod sends (TC ingress of its host-side veth).
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro passes the context by value"
)]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    let mut trace = Trace::new();
    let outcome = process(&ctx, Direction::Egress, &mut trace);
    verdict::finish(
        &ctx,
        Direction::Egress,
        outcome,
        &trace,
        verdict::Rejects::Answer,
    )
}

/// Packets delivered to the pod (TC egress of its host-side veth).
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro passes the context by value"
)]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    let mut trace = Trace::new();
    let outcome = process(&ctx, Direction::Ingress, &mut trace);
    verdict::finish(
        &ctx,
        Direction::Ingress,
        outcome,
        &trace,
        verdict::Rejects::Drop,
    )
}

/// Packets arriving from outside the node (TC ingress of an uplink).
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro passes the context by value"
)]
pub fn weir_from_world(ctx: TcContext) -> i32 {
    let mut trace = Trace::new();
    let outcome = match nodeport::process(&ctx, &mut trace) {
        Ok(None) => return aya_ebpf::bindings::TC_ACT_OK,
        Ok(Some(reason)) => Ok(reason),
        Err(reason) => Err(reason),
    };
    verdict::finish(
        &ctx,
        Direction::Ingress,
        outcome,
        &trace,
        verdict::Rejects::Answer,
    )
}

/// An empty classifier: the cost of running any TC program at all, for the benchmark.
#[classifier]
pub fn weir_floor(_ctx: TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_OK
}

/// `connect()` of an IPv4 socket of the node (cgroup hook).
#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, sock::Family::V4)
}

/// `connect()` of an IPv6 socket of the node (cgroup hook).
#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_connect6(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, sock::Family::V6)
}

/// `sendmsg()` of an unconnected IPv4 UDP socket of the node (cgroup hook).
#[cgroup_sock_addr(sendmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, sock::Family::V4)
}

/// `sendmsg()` of an unconnected IPv6 UDP socket of the node (cgroup hook).
#[cgroup_sock_addr(sendmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, sock::Family::V6)
}

/// `recvmsg()` of an IPv4 UDP socket of the node (cgroup hook).
#[cgroup_sock_addr(recvmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx, sock::Family::V4)
}

/// `recvmsg()` of an IPv6 UDP socket of the node (cgroup hook).
#[cgroup_sock_addr(recvmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx, sock::Family::V6)
}

/// `getpeername()` of an IPv4 socket of the node (cgroup hook).
#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_peername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx, sock::Family::V4)
}

/// `getpeername()` of an IPv6 socket of the node (cgroup hook).
#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the macro passes the context by value"
)]
pub fn weir_peername6(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx, sock::Family::V6)
}

#[inline(always)]
fn process(ctx: &TcContext, dir: Direction, trace: &mut Trace) -> Result<PassReason, DropReason> {
    // SAFETY: slot 0 always exists; only this program run on this CPU uses it.
    let Some(work) = SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return Err(DropReason::Malformed);
    };
    work.redirected = false;
    let Work {
        pkt,
        wire,
        translated,
        nat,
        ..
    } = work;
    if let Parsed::NonIp = parse::parse(ctx, pkt)? {
        return Ok(PassReason::NonIp);
    }
    if parse::is_link_scope(&pkt.src) || parse::is_link_scope(&pkt.dst) {
        return Ok(PassReason::LinkLocal);
    }
    let (local_addr, wire_remote) = match dir {
        Direction::Egress => (pkt.src, pkt.dst),
        Direction::Ingress => (pkt.dst, pkt.src),
    };
    // SAFETY: `skb` points at the context the kernel passed this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Read once: every policy lookup of this packet uses this generation's slot.
    let epoch = policy_epoch();
    let local = policy::local_endpoint(&local_addr, ifindex, slot_of(epoch))?;
    let wire_peer = policy::remote_peer(&wire_remote, &local);
    if let Err(unknown) = fragment::resolve_ports(pkt) {
        // Trusted traffic never has its first fragment remembered: it needs no ports.
        return wire_peer.trusted.ok_or(unknown);
    }

    // An error about a tracked connection passes (translated, when it is about a Service
    // connection); any other is judged as ICMP itself.
    if pkt.is_icmp_error
        && let Some(tracked) = conntrack::lookup(&Flow::of_icmp_error(pkt, dir).key)
    {
        translate_icmp_error(ctx, pkt, dir, &tracked)?;
        return Ok(PassReason::Established);
    }

    *wire = Flow::of_packet(pkt, dir);
    let mut wire_tracked = conntrack::lookup(&wire.key);
    if let Some(tracked) = wire_tracked.as_ref().filter(|t| t.is_unjudged()) {
        if dir == Direction::Ingress {
            *nat = Nat::external(tracked.entry(), &pkt.dst, pkt.dst_port_h);
            return from_outside(ctx, pkt, wire, &local, &wire_peer, nat, epoch, trace);
        }
        // The pod speaks first on that flow: its own new connection.
        wire_tracked = None;
    }
    let translation = match dir {
        Direction::Egress => service::for_client(pkt, &wire.key, wire_tracked.as_ref(), trace)?,
        Direction::Ingress => None,
    };
    let Some(translation) = translation else {
        return judge(
            ctx,
            pkt,
            wire,
            wire_tracked,
            &local,
            &wire_peer,
            None,
            epoch,
            trace,
        );
    };
    *nat = Nat {
        frontend: pkt.dst,
        frontend_port_h: pkt.dst_port_h,
        translation,
        from_outside: false,
    };
    nat::rewrite(
        ctx,
        pkt,
        End::Destination,
        &nat.translation.backend,
        nat.translation.backend_port_h,
    )?;
    if nat.translation.backend == pkt.src {
        return hairpin(ctx, pkt, wire, nat, epoch);
    }
    to_backend(
        ctx,
        pkt,
        wire,
        wire_tracked.as_ref(),
        translated,
        &local,
        nat,
        epoch,
        trace,
    )
}

/// A pod's packet to a frontend, now addressed to the backend: judged as the translated flow,
/// which a new connection tracks under both keys (as sent, and as translated).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one program: a struct would only move the same values through the stack"
)]
fn to_backend(
    ctx: &TcContext,
    pkt: &mut Packet,
    wire: &Flow,
    wire_tracked: Option<&conntrack::Tracked>,
    translated: &mut Flow,
    local: &Local,
    nat: &Nat,
    epoch: u32,
    trace: &mut Trace,
) -> Result<PassReason, DropReason> {
    if let Some(service_entry) = wire_tracked
        && conntrack::service_entry_suffices(service_entry, pkt, epoch)
    {
        conntrack::touch(service_entry, Direction::Egress, pkt.tcp_flags, epoch);
        return Ok(PassReason::Established);
    }
    *translated = Flow::of_packet(pkt, Direction::Egress);
    // A new Service connection owns its translated tuple: an entry already there belongs to an
    // earlier connection of the client's source port to another Service with the same backend
    // (the kernel reuses source ports across destinations), closing or gone; left alone, its
    // reverse translation would answer this connection from the other Service's address.
    let tracked = if nat.translation.new {
        None
    } else {
        conntrack::lookup(&translated.key)
    };
    let peer = policy::remote_peer(&pkt.dst, local);
    let outcome = judge(
        ctx,
        pkt,
        translated,
        tracked,
        local,
        &peer,
        Some(nat),
        epoch,
        trace,
    );
    if outcome.is_ok() {
        if let (Some(service_entry), Some(translated_entry)) = (wire_tracked, &tracked) {
            conntrack::follow(service_entry, translated_entry);
        }
        if nat.translation.new {
            conntrack::create_service(&wire.key, pkt.tcp_flags, epoch, nat);
        }
        if pkt.fragment.is_first() {
            fragment::remember(pkt, &nat.frontend);
        }
    }
    outcome
}

/// The first packet of a connection from outside the node that the uplink sent to this pod (a
/// backend of the Service it reached): judged by policy as a new connection from its client,
/// and tracked with the frontend to put back on the replies.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one program: a struct would only move the same values through the stack"
)]
fn from_outside(
    ctx: &TcContext,
    pkt: &mut Packet,
    wire: &Flow,
    local: &Local,
    peer: &Remote,
    nat: &Nat,
    epoch: u32,
    trace: &mut Trace,
) -> Result<PassReason, DropReason> {
    trace.service = nat.translation.service;
    let outcome = judge(ctx, pkt, wire, None, local, peer, Some(nat), epoch, trace);
    if outcome.is_ok() && pkt.fragment.is_first() {
        fragment::remember(pkt, &pkt.dst);
    }
    outcome
}

/// A pod reaching a Service whose chosen backend is the pod itself. Its packet cannot come
/// back from its own address (the pod's stack drops a packet from itself as a martian), so it
/// comes from the frontend instead; the replies are turned around the same way (`judge`).
/// A pod may always reach itself: policy is not asked.
#[inline(always)]
fn hairpin(
    ctx: &TcContext,
    pkt: &mut Packet,
    wire: &Flow,
    nat: &Nat,
    epoch: u32,
) -> Result<PassReason, DropReason> {
    let client = pkt.src;
    let client_port_h = pkt.src_port_h;
    nat::rewrite(ctx, pkt, End::Source, &nat.frontend, client_port_h)?;
    if nat.translation.new {
        conntrack::create_service(&wire.key, pkt.tcp_flags, epoch, nat);
        conntrack::create_hairpin(&client, client_port_h, pkt.proto, pkt.tcp_flags, epoch, nat);
    }
    Ok(PassReason::SelfTraffic)
}

/// An ICMP error about a Service connection, made to read as about the connection each end
/// knows: sent to the client about its packet to the backend, it becomes about its packet to the
/// frontend (and comes from the frontend when the backend sent it); sent by the client about the
/// reply it received from the frontend, it becomes about the backend's reply, and goes to the
/// backend. So a backend's port unreachable fails the client's socket, and a client's reaches
/// the backend. A hairpin connection's errors pass as they are.
#[inline(always)]
fn translate_icmp_error(
    ctx: &TcContext,
    pkt: &mut Packet,
    dir: Direction,
    tracked: &conntrack::Tracked,
) -> Result<(), DropReason> {
    if tracked.is_hairpin() {
        return Ok(());
    }
    let entry = tracked.entry();
    let (addr, port_h) = (entry.nat_addr, entry.nat_port_h);
    if tracked.is_rev_nat() && dir != tracked.origin {
        nat::rewrite_icmp_error(ctx, pkt, End::Destination, &addr, port_h)?;
        if tracked.is_from_outside() {
            forward::by_fib(ctx);
        }
        Ok(())
    } else if tracked.is_service() && dir == Direction::Egress {
        nat::rewrite_icmp_error(ctx, pkt, End::Source, &addr, port_h)
    } else {
        Ok(())
    }
}

/// Judges a packet as it now is on the wire (translated, for a client's packet to a
/// frontend): as part of its tracked connection, or as a new one, by policy.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one program: a struct would only move the same values through the stack"
)]
fn judge(
    ctx: &TcContext,
    pkt: &mut Packet,
    flow: &Flow,
    tracked: Option<conntrack::Tracked>,
    local: &Local,
    remote: &Remote,
    nat: Option<&Nat>,
    epoch: u32,
    trace: &mut Trace,
) -> Result<PassReason, DropReason> {
    let remote_addr = flow.key.remote;
    if let Some(tracked) = tracked {
        let reason = established(
            pkt,
            flow,
            &tracked,
            local,
            remote,
            &remote_addr,
            epoch,
            trace,
        )?;
        // A backend's reply to a client of this node: the client sees the frontend answer.
        if tracked.is_rev_nat() && flow.dir != tracked.origin {
            let entry = tracked.entry();
            trace.service = entry.service;
            let (frontend, port_h) = (entry.nat_addr, entry.nat_port_h);
            let (hairpin, from_outside) = (tracked.is_hairpin(), tracked.is_from_outside());
            nat::rewrite(ctx, pkt, End::Source, &frontend, port_h)?;
            if hairpin {
                let client_port_h = pkt.dst_port_h;
                nat::rewrite(ctx, pkt, End::Destination, &flow.key.local, client_port_h)?;
            }
            if from_outside {
                forward::by_fib(ctx);
            }
        }
        return Ok(reason);
    }
    let reason = match remote.trusted {
        // Node and self traffic needs no conntrack entry, unless it was translated.
        Some(reason) if nat.is_none() => return Ok(reason),
        Some(reason) => reason,
        None => {
            let class = remote.class(&remote_addr);
            trace.peer_class = class;
            policy::decide(local, flow.dir, class, pkt.proto, flow.dst_port_h, trace)?
        }
    };
    conntrack::create(&flow.key, flow.dir, pkt.tcp_flags, epoch, nat);
    if nat.is_none() {
        fragment::remember(pkt, &pkt.dst);
    }
    Ok(reason)
}

/// A packet of a tracked connection. When policy changed since the connection was last
/// allowed, its first packet is judged again, as it would be now: a connection the new policy
/// denies is cut (see README, "Policy changes and established connections").
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one program: a struct would only move the same values through the stack"
)]
fn established(
    pkt: &Packet,
    flow: &Flow,
    tracked: &conntrack::Tracked,
    local: &Local,
    remote: &Remote,
    remote_addr: &Addr,
    epoch: u32,
    trace: &mut Trace,
) -> Result<PassReason, DropReason> {
    // Trusted peers (the node, the pod itself) are tracked only when translated; policy never
    // judges them.
    if tracked.policy_epoch != epoch && remote.trusted.is_none() {
        let remote = remote.class(remote_addr);
        trace.peer_class = remote;
        let origin_dst_port = match tracked.origin {
            Direction::Egress => flow.key.remote_port_h,
            Direction::Ingress => flow.key.local_port_h,
        };
        if policy::decide(
            local,
            tracked.origin,
            remote,
            pkt.proto,
            origin_dst_port,
            trace,
        )
        .is_err()
        {
            conntrack::remove(&flow.key);
            return Err(DropReason::PolicyRevoked);
        }
    }
    conntrack::touch(tracked, flow.dir, pkt.tcp_flags, epoch);
    if pkt.fragment.is_first() {
        fragment::remember(pkt, &pkt.dst);
    }
    Ok(PassReason::Established)
}

#[inline(always)]
fn policy_epoch() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.policy_epoch)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
