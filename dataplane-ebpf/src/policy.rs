//! Policy: who is the local pod, what class is the peer, and does a rule allow the pair.
//!
//! Precedence, in the order the code applies it:
//! 1. The pod-side address must be one of the pod's own (anti-spoofing).
//! 2. Traffic between the pod and this node, or the pod and itself, is allowed.
//! 3. A pod no policy isolates in this direction allows everything.
//! 4. Otherwise the peer class and the port decide, through at most six hash lookups:
//!    exact peer class then any peer; for each, exact port, any port of the protocol, any
//!    protocol. The number of lookups never depends on the number of rules.

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_abi::{
    Addr, Direction, DropReason, EndpointInfo, PEER_CLASS_ANY, PEER_CLASS_WORLD, PORT_ANY,
    PassReason, PolicyKey, PolicyValue, SLOT_PREFIX_BITS, Slotted, endpoint_flags, proto,
};

use crate::observe::Trace;
use crate::{CIDRS, ENDPOINTS, POLICY};

/// The local pod a packet belongs to, in the generation of the policy state the packet reads.
pub struct Local {
    pub endpoint: u32,
    pub flags: u32,
    /// The slot of the policy maps this packet reads (`slot_of(policy_epoch)`), read once.
    pub slot: u32,
}

/// Finds the local pod behind `ifindex` that owns `addr`, in policy slot `slot`.
#[inline(always)]
pub fn local_endpoint(addr: &Addr, ifindex: u32, slot: u32) -> Result<Local, DropReason> {
    let key = Slotted { slot, key: *addr };
    // SAFETY: the value is copied out before the program run ends.
    let ep: EndpointInfo = match unsafe { ENDPOINTS.get(key) } {
        Some(ep) => *ep,
        None => return Err(DropReason::NotPodAddress),
    };
    if ep.flags & endpoint_flags::LOCAL_POD == 0 || ep.ifindex != ifindex {
        return Err(DropReason::NotPodAddress);
    }
    Ok(Local {
        endpoint: ep.endpoint,
        flags: ep.flags,
        slot,
    })
}

/// What the peer address is to policy. Plain words rather than an enum with a payload-less
/// variant: LLVM spills such an enum with its payload register uninitialised, which the
/// verifier refuses (`R3 !read_ok`, Linux 6.18) once the value lives across enough code.
#[derive(Clone, Copy)]
pub struct Remote {
    /// Set for the node and for the local pod itself: always allowed, for this reason.
    pub trusted: Option<PassReason>,
    /// The peer class of a pod, or [`NOT_A_POD`]: other addresses get theirs from the ipBlock
    /// trie, looked up only when a policy decision needs it, so established connections never
    /// pay for the trie walk.
    pod_class: u32,
    /// The policy slot the packet reads.
    slot: u32,
}

/// [`Remote::pod_class`] of an address that is not a pod: the wildcard is never an address's
/// class.
const NOT_A_POD: u32 = PEER_CLASS_ANY;

impl Remote {
    /// The peer class of a remote that is not trusted.
    #[inline(always)]
    pub fn class(self, addr: &Addr) -> u32 {
        if self.pod_class != NOT_A_POD {
            return self.pod_class;
        }
        let key = Key::new(
            SLOT_PREFIX_BITS + 128,
            Slotted {
                slot: self.slot,
                key: *addr,
            },
        );
        CIDRS
            .get(&key)
            .map_or(PEER_CLASS_WORLD, |info| info.peer_class)
    }
}

#[inline(always)]
pub fn remote_peer(addr: &Addr, local: &Local) -> Remote {
    let mut remote = Remote {
        trusted: None,
        pod_class: NOT_A_POD,
        slot: local.slot,
    };
    let key = Slotted {
        slot: local.slot,
        key: *addr,
    };
    // SAFETY: the value is copied out before the program run ends.
    if let Some(ep) = unsafe { ENDPOINTS.get(key) } {
        if ep.flags & endpoint_flags::HOST != 0 {
            remote.trusted = Some(PassReason::NodeTraffic);
        } else if ep.flags & endpoint_flags::LOCAL_POD != 0 && ep.endpoint == local.endpoint {
            remote.trusted = Some(PassReason::SelfTraffic);
        } else {
            remote.pod_class = ep.peer_class;
        }
    }
    remote
}

/// Whether `local` is isolated for `dir`, and if so, whether a rule allows the peer. The
/// entry that allows it is recorded in `trace`, for the flow event.
#[inline(always)]
pub fn decide(
    local: &Local,
    dir: Direction,
    peer_class: u32,
    l4_proto: u8,
    dst_port_h: u16,
    trace: &mut Trace,
) -> Result<PassReason, DropReason> {
    let isolated_bit = match dir {
        Direction::Ingress => endpoint_flags::INGRESS_ISOLATED,
        Direction::Egress => endpoint_flags::EGRESS_ISOLATED,
    };
    if local.flags & isolated_bit == 0 {
        return Ok(PassReason::NotIsolated);
    }
    let found = rule_allows(local, dir, peer_class, l4_proto, dst_port_h)
        .or_else(|| rule_allows(local, dir, PEER_CLASS_ANY, l4_proto, dst_port_h));
    match found {
        Some(value) => {
            trace.allowed_by(value);
            Ok(PassReason::PolicyAllowed)
        }
        None => Err(DropReason::PolicyDenied),
    }
}

/// The entry allowing `peer_class` on this protocol and port: exact port, then any port of the
/// protocol, then any protocol.
#[inline(always)]
fn rule_allows(
    local: &Local,
    dir: Direction,
    peer_class: u32,
    l4_proto: u8,
    port_h: u16,
) -> Option<PolicyValue> {
    let mut key = Slotted {
        slot: local.slot,
        key: PolicyKey {
            endpoint: local.endpoint,
            peer_class,
            port_h,
            proto: l4_proto,
            direction: dir as u8,
        },
    };
    // Ports only mean something to protocols that have them; ICMP and others match only
    // rules without `ports`.
    let has_ports = matches!(l4_proto, proto::TCP | proto::UDP | proto::SCTP);
    if has_ports && let Some(value) = lookup(&key) {
        return Some(value);
    }
    key.key.port_h = PORT_ANY;
    if has_ports && let Some(value) = lookup(&key) {
        return Some(value);
    }
    key.key.proto = proto::ANY;
    lookup(&key)
}

#[inline(always)]
fn lookup(key: &Slotted<PolicyKey>) -> Option<PolicyValue> {
    // SAFETY: the value is copied out before the program run ends.
    POLICY.get_ptr(key).map(|value| unsafe { *value })
}
