//! Map names, keys and values. The agent writes every map but the connection-tracking and
//! fragment tables, which the programs own.

use core::mem::size_of;

/// Names of the maps, exactly as the eBPF object declares them (kernel limit: 15 characters).
pub mod names {
    /// Hash of [`crate::Slotted`] [`crate::Addr`] to [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "WEIR_EP_V2";
    /// LPM trie of [`crate::Slotted`] [`crate::Addr`] to [`crate::CidrInfo`].
    pub const CIDRS: &str = "WEIR_CIDR_V2";
    /// Hash of [`crate::Slotted`] [`crate::PolicyKey`] to [`crate::PolicyValue`].
    pub const POLICY: &str = "WEIR_POL_V2";
    /// Names of earlier layouts, whose pins a new agent removes. The `_V1` Service maps went
    /// together: backends and small Maglev tables became arrays indexed by id, which changed
    /// how backend and set ids are given, and every map holding such ids starts afresh.
    pub const RETIRED: [&str; 12] = [
        "WEIR_EP_V1",
        "WEIR_CIDR_V1",
        "WEIR_POL_V1",
        "WEIR_CT_V1",
        "WEIR_PASS_V1",
        "WEIR_SVC_V1",
        "WEIR_BE_V1",
        "WEIR_MAG_S_V1",
        "WEIR_MAG_M_V1",
        "WEIR_MAG_L_V1",
        "WEIR_AFF_V1",
        "WEIR_LBSRC_V1",
    ];
    /// LRU hash of [`crate::CtKey`] to [`crate::CtEntry`]; the programs own it.
    pub const CONNTRACK: &str = "WEIR_CT_V2";
    /// LRU hash of [`crate::FragKey`] to [`crate::FragPorts`]; the programs own it.
    pub const FRAGMENTS: &str = "WEIR_FRAG_V1";
    /// The single [`crate::Config`] entry.
    pub const CONFIG: &str = "WEIR_CFG_V1";
    /// Per-CPU packet counters indexed by [`crate::PassReason`].
    pub const PASS_COUNTERS: &str = "WEIR_PASS_V2";
    /// Per-CPU packet counters indexed by [`crate::DropReason`].
    pub const DROP_COUNTERS: &str = "WEIR_DROP_V1";
    /// Ring buffer of [`crate::FlowEvent`]s.
    pub const FLOWS: &str = "WEIR_FLOWS_V2";
    /// The single [`crate::ObserveConfig`] entry.
    pub const OBSERVE: &str = "WEIR_OBS_V1";
    /// Per-CPU [`crate::TokenBucket`] of the flow-event rate limiter.
    pub const OBSERVE_BUCKETS: &str = "WEIR_OBS_TB_V1";
    /// Per-CPU counters indexed by [`crate::ObserveCounter`].
    pub const OBSERVE_COUNTERS: &str = "WEIR_OBS_CNT_V1";
    /// Hash of [`crate::ServiceKey`] to [`crate::ServiceValue`]: Service frontends.
    pub const SERVICES: &str = "WEIR_SVC_V2";
    /// Array of [`crate::Backend`] indexed by [`crate::backend_slot`] of the backend id,
    /// written by the agent through a memory mapping (`BPF_F_MMAPABLE`).
    pub const BACKENDS: &str = "WEIR_BE_V2";
    /// Array of [`crate::SmallMaglevTable`] indexed by [`crate::set_slot`] of the backend set
    /// id, written through a memory mapping.
    pub const MAGLEV_SMALL: &str = "WEIR_MAG_S_V2";
    /// Hash of a backend set id to its Maglev table of [`crate::maglev::MEDIUM`] slots.
    pub const MAGLEV_MEDIUM: &str = "WEIR_MAG_M_V2";
    /// Hash of a backend set id to its Maglev table of [`crate::maglev::LARGE`] slots.
    pub const MAGLEV_LARGE: &str = "WEIR_MAG_L_V2";
    /// LRU hash of [`crate::AffinityKey`] to [`crate::AffinityValue`]; the programs own it.
    pub const AFFINITY: &str = "WEIR_AFF_V2";
    /// LPM trie of [`crate::SourceRangeKey`] to `u32` (unused, 0): `loadBalancerSourceRanges`.
    pub const SOURCE_RANGES: &str = "WEIR_LBSRC_V2";
    /// LRU hash of [`crate::SockNatKey`] to [`crate::SockNatValue`]; the socket programs own it.
    pub const SOCK_NAT: &str = "WEIR_SKNAT_V1";
    /// The single [`crate::SockConfig`] entry.
    pub const SOCK_CONFIG: &str = "WEIR_SOCK_V1";
    /// LRU hash of [`crate::CtKey`] to [`crate::NodePortEntry`]: connections from outside the
    /// node to its Services; the uplink program owns it.
    pub const NODEPORT_NAT: &str = "WEIR_NPNAT_V1";
    /// The single [`crate::UplinkConfig`] entry.
    pub const UPLINK_CONFIG: &str = "WEIR_UPLINK_V1";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// Attached to TC ingress of a pod's host-side veth: packets the pod sends.
    pub const FROM_POD: &str = "weir_from_pod";
    /// Attached to TC egress of a pod's host-side veth: packets delivered to the pod.
    pub const TO_POD: &str = "weir_to_pod";
    /// Returns "pass" and nothing else: the benchmark's floor, measured in the same run.
    pub const FLOOR: &str = "weir_floor";
    /// Attached to TC ingress of the node's uplinks: packets from outside the node to its
    /// node ports, load-balancer and external IPs, and the replies of masqueraded ones.
    pub const FROM_WORLD: &str = "weir_from_world";
    /// `connect()` of an IPv4 socket of the node: a frontend becomes a backend.
    pub const CONNECT4: &str = "weir_connect4";
    /// `connect()` of an IPv6 socket of the node.
    pub const CONNECT6: &str = "weir_connect6";
    /// `sendmsg()` of an unconnected IPv4 UDP socket of the node.
    pub const SENDMSG4: &str = "weir_sendmsg4";
    /// `sendmsg()` of an unconnected IPv6 UDP socket of the node.
    pub const SENDMSG6: &str = "weir_sendmsg6";
    /// `recvmsg()` of an IPv4 UDP socket: a backend's datagram comes from the frontend.
    pub const RECVMSG4: &str = "weir_recvmsg4";
    /// `recvmsg()` of an IPv6 UDP socket.
    pub const RECVMSG6: &str = "weir_recvmsg6";
    /// `getpeername()` of an IPv4 socket: the peer is the frontend it connected to.
    pub const GETPEERNAME4: &str = "weir_peername4";
    /// `getpeername()` of an IPv6 socket.
    pub const GETPEERNAME6: &str = "weir_peername6";
    /// Every socket program, attached to the node's cgroup together.
    pub const SOCKETS: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}

/// Capacities the agent checks a compiled state against before it touches the kernel.
pub mod capacity {
    /// Entries of one generation of `WEIR_EP_V2` (the map holds two).
    pub const ENDPOINTS: u32 = 131_072;
    /// Entries of one generation of `WEIR_CIDR_V2` (the map holds two).
    pub const CIDRS: u32 = 65_536;
    /// Entries of one generation of `WEIR_POL_V2` (the map holds two).
    pub const POLICY: u32 = 1_048_576;
    /// Entries of `WEIR_CT_V2` (least recently used entries are evicted beyond it).
    pub const CONNTRACK: u32 = 262_144;
    /// Entries of `WEIR_FRAG_V1` (least recently used entries are evicted beyond it).
    pub const FRAGMENTS: u32 = 8_192;
    /// Bytes of the flow-event ring buffer (a power of two, a multiple of the page size):
    /// 5 957 events of 88 bytes (the event and the ring's own 8-byte header).
    pub const FLOW_RING_BYTES: u32 = 512 * 1024;
    /// Entries of `WEIR_SVC_V2`: frontends (a Service port's ClusterIP, node ports, external
    /// and load-balancer IPs, for each scope).
    pub const SERVICES: u32 = 262_144;
    /// Entries of `WEIR_BE_V2`, preallocated (24 MiB): 100 000 Services of 10 endpoints, and
    /// room to spare. A power of two: a backend id's low bits are its index.
    pub const BACKENDS: u32 = 1 << 20;
    /// Backend sets, and entries of `WEIR_MAG_S_V2`, preallocated (23 MiB: 184 bytes a
    /// table). A power of two: a set id's low bits are the index of its small table.
    pub const BACKEND_SETS: u32 = 1 << 17;
    /// Entries of `WEIR_MAG_M_V2` (allocated on use).
    pub const MAGLEV_MEDIUM: u32 = 16_384;
    /// Entries of `WEIR_MAG_L_V2` (allocated on use).
    pub const MAGLEV_LARGE: u32 = 256;
    /// Entries of `WEIR_AFF_V2` (least recently used entries are evicted beyond it).
    pub const AFFINITY: u32 = 65_536;
    /// Entries of `WEIR_LBSRC_V2`.
    pub const SOURCE_RANGES: u32 = 16_384;
    /// Entries of `WEIR_SKNAT_V1` (least recently used entries are evicted beyond it).
    pub const SOCK_NAT: u32 = 65_536;
    /// Entries of `WEIR_NPNAT_V1` (least recently used entries are evicted beyond it): two
    /// per masqueraded connection from outside, one per other.
    pub const NODEPORT_NAT: u32 = 262_144;
}

/// An IPv6 address, or an IPv4 address mapped into IPv6, in network byte order.
pub type Addr = [u8; 16];

/// Maps an IPv4 address (network byte order) into the shared 16-byte form.
#[must_use]
pub const fn v4_mapped(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Peer class of an address no selector or ipBlock matches.
pub const PEER_CLASS_WORLD: u32 = 0;
/// Peer class in a [`PolicyKey`] that stands for every peer (a rule with no `from`/`to`).
pub const PEER_CLASS_ANY: u32 = u32::MAX;
/// Port in a [`PolicyKey`] that stands for every port of its protocol.
pub const PORT_ANY: u16 = 0;

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// A pod on this node, behind the interface `EndpointInfo::ifindex`.
    pub const LOCAL_POD: u32 = 1 << 0;
    /// An address of this node itself: traffic with its own pods is always allowed.
    pub const HOST: u32 = 1 << 1;
    /// Some policy selects this pod for Ingress.
    pub const INGRESS_ISOLATED: u32 = 1 << 2;
    /// Some policy selects this pod for Egress.
    pub const EGRESS_ISOLATED: u32 = 1 << 3;
}

/// A key of the policy maps (`WEIR_EP_V2`, `WEIR_CIDR_V2`, `WEIR_POL_V2`), which hold two
/// generations of the policy state side by side.
///
/// A packet reads [`Config::policy_epoch`] once and looks up every key in the slot
/// `policy_epoch & 1`: it sees one whole generation, never a mix. The agent writes a change
/// into the other slot, which no packet reads, then flips the epoch with one write (see
/// `docs/design.md`, "Atomic changes"). For the trie, `slot` comes first and the prefix
/// length counts its 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slotted<K> {
    /// 0 or 1: the generation's slot.
    pub slot: u32,
    /// The key within the slot.
    pub key: K,
}
const _: () = assert!(size_of::<Slotted<Addr>>() == 20);
const _: () = assert!(size_of::<Slotted<PolicyKey>>() == 16);

/// Bits a [`Slotted`] key adds in front of an LPM trie key's own prefix.
pub const SLOT_PREFIX_BITS: u32 = 32;

/// The slot packets read under `policy_epoch`.
#[must_use]
pub const fn slot_of(policy_epoch: u32) -> u32 {
    policy_epoch & 1
}

/// What Weir knows about one address: `WEIR_EP_V2[slot, Addr]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Identifies a local pod across its addresses (IPv4 and IPv6) in [`PolicyKey::endpoint`];
    /// 0 for remote pods and host addresses.
    pub endpoint: u32,
    /// The class this address has as a peer of policy rules.
    pub peer_class: u32,
    /// [`endpoint_flags`] bits.
    pub flags: u32,
    /// Host-side interface of a local pod (anti-spoofing: a pod may only use its own addresses).
    pub ifindex: u32,
}
const _: () = assert!(size_of::<EndpointInfo>() == 16);

/// Value of `WEIR_CIDR_V2`, an LPM trie over [`Addr`] for addresses that are not pods (ipBlocks).
/// IPv4 prefix lengths are offset by 96, as the addresses are IPv4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrInfo {
    /// The class addresses in this prefix have as a peer of policy rules.
    pub peer_class: u32,
}
const _: () = assert!(size_of::<CidrInfo>() == 4);

/// Key of `WEIR_POL_V2` (within a slot): is traffic of this local pod, in this direction, with this peer class,
/// on this protocol and port, allowed? Wildcards: [`PEER_CLASS_ANY`], [`crate::proto::ANY`],
/// [`PORT_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// [`EndpointInfo::endpoint`] of the local pod.
    pub endpoint: u32,
    /// [`EndpointInfo::peer_class`] or [`CidrInfo::peer_class`] of the peer, or [`PEER_CLASS_ANY`].
    pub peer_class: u32,
    /// Destination port of the connection's first packet, host byte order.
    pub port_h: u16,
    /// IANA protocol number, or [`crate::proto::ANY`].
    pub proto: u8,
    /// [`crate::Direction`] as a number.
    pub direction: u8,
}
const _: () = assert!(size_of::<PolicyKey>() == 12);

/// Value of `WEIR_POL_V2`: which rule allowed it, for observability (flow events, `explain`).
///
/// `rule` took the slot that was padding, always written as zero, in the same layout: the map
/// keeps its name because no reader ever gave those bytes a meaning, and the agent rewrites
/// every entry of a map it did not fill itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// Index of the policy in the agent's compiled state (stable for one generation).
    pub policy: u32,
    /// Index of the rule in that policy's `ingress` or `egress` list (the key's direction).
    pub rule: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 8);

/// Key of `WEIR_CT_V2`, oriented from the local pod: whichever way a packet travels, the same
/// connection gives the same key at the same pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Address of the local pod.
    pub local: Addr,
    /// Address of the peer.
    pub remote: Addr,
    /// For ICMP echo, the identifier; 0 for protocols without ports.
    pub local_port_h: u16,
    /// The peer's port, host byte order; like `local_port_h` for ICMP echo and portless protocols.
    pub remote_port_h: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// Bits of [`CtEntry::flags`].
pub mod ct_flags {
    /// A TCP FIN or RST was seen: the connection is closing and gets the short timeout.
    pub const CLOSING: u8 = 1 << 0;
    /// The first packet was a TCP SYN (not a mid-stream pickup).
    pub const SEEN_SYN: u8 = 1 << 1;
    /// A packet went the other way: the peer answered (TCP past SYN-SENT, UDP a dialogue).
    pub const REPLIED: u8 = 1 << 2;
    /// A Service entry: the key's remote end is a frontend, `nat_*` the backend it was sent
    /// to. Only the client's packets use it (to translate the destination); policy and replies
    /// use the entry of the translated flow.
    pub const SERVICE: u8 = 1 << 3;
    /// The translated flow of a Service connection: `nat_*` is the frontend the client asked
    /// for, written back as the source of replies (packets going against `origin`).
    pub const REV_NAT: u8 = 1 << 4;
    /// With [`REV_NAT`]: a pod reaching a Service through itself (hairpin). The translated
    /// flow came in from the frontend (`origin` ingress); the pod's replies get the frontend as
    /// source and the pod itself as destination, and go back in.
    pub const HAIRPIN: u8 = 1 << 5;
    /// With [`REV_NAT`]: written by the uplink program for a connection from outside the node
    /// to a local backend, not yet judged by policy. The pod's programs judge its first packet
    /// as a new connection's, and rewrite the entry as their own once policy allows it.
    pub const UNJUDGED: u8 = 1 << 6;
    /// With [`REV_NAT`]: a connection from outside the node to a local backend. The frontend
    /// written back on replies may be one of the node's own addresses (a node port), which the
    /// node's IP input would drop as a martian source: replies leave by a route lookup instead
    /// (a redirect).
    pub const FROM_OUTSIDE: u8 = 1 << 7;
}

/// Value of `WEIR_CT_V2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// [`Config::policy_epoch`] when policy last allowed this connection; older means recheck.
    pub policy_epoch: u32,
    /// [`crate::Direction`] of the first packet.
    pub origin: u8,
    /// [`ct_flags`] bits.
    pub flags: u8,
    /// With [`ct_flags::SERVICE`] or [`ct_flags::REV_NAT`]: the other side of the translation's
    /// port, host byte order.
    pub nat_port_h: u16,
    /// With [`ct_flags::SERVICE`]: the backend's address; with [`ct_flags::REV_NAT`]: the
    /// frontend's.
    pub nat_addr: Addr,
    /// With [`ct_flags::SERVICE`]: the backend id, to notice that the backend left its set.
    pub backend: u32,
    /// With [`ct_flags::SERVICE`] or [`ct_flags::REV_NAT`]: [`crate::ServiceValue::service`].
    pub service: u32,
}
const _: () = assert!(size_of::<CtEntry>() == 40);

/// Key of `WEIR_FRAG_V1`: identifies the fragments of one IP datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address of the datagram.
    pub src: Addr,
    /// Destination address of the datagram.
    pub dst: Addr,
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits), host byte order.
    pub id: u32,
    /// IANA protocol number of the datagram's payload.
    pub proto: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// Value of `WEIR_FRAG_V1`: the ports of the datagram's first fragment, allowed by policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    /// Source port of the first fragment, host byte order.
    pub src_port_h: u16,
    /// Destination port of the first fragment, host byte order.
    pub dst_port_h: u16,
}
const _: () = assert!(size_of::<FragPorts>() == 4);

/// Value of the single entry of `WEIR_CFG_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// The policy generation: bumped by one after each change, its low bit selects the slot
    /// of the policy maps packets read ([`slot_of`]); connections tracked under an older
    /// epoch are checked against policy again on their next packet. One word, so that the
    /// generation and its slot flip together.
    pub policy_epoch: u32,
    /// [`config_flags`] bits. This took the slot that was padding, always written as zero: the
    /// map keeps its name, as for [`PolicyValue::rule`].
    pub flags: u32,
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// The programs write debug logs (aya-log) for every packet: for debugging only, it costs.
    pub const DEBUG_LOG: u32 = 1 << 0;
}
const _: () = assert!(size_of::<Config>() == 8);

/// Connection-tracking timeouts, in nanoseconds.
pub mod ct_timeout {
    /// TCP connection the peer has answered: 6 hours.
    pub const TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
    /// TCP connection after a FIN or RST ([`super::ct_flags::CLOSING`]): 10 seconds.
    pub const TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
    /// TCP connection not yet answered ([`super::ct_flags::REPLIED`] unset): 60 seconds.
    pub const TCP_SYN_NS: u64 = 60 * 1_000_000_000;
    /// UDP flow, answered or not: 60 seconds.
    pub const UDP_NS: u64 = 60 * 1_000_000_000;
    /// Any other protocol (ICMP, SCTP, ...): 60 seconds.
    pub const OTHER_NS: u64 = 60 * 1_000_000_000;
    /// A connection's timestamp is rewritten at most this often, to spare a map write per packet.
    pub const REFRESH_NS: u64 = 1_000_000_000;

    /// How long an entry of protocol `proto` with `ct_flags` bits `flags` lives after its
    /// last packet. Shared by the programs (lazy expiry) and the agent (collection).
    #[must_use]
    pub const fn for_entry(proto: u8, flags: u8) -> u64 {
        use super::ct_flags::{CLOSING, REPLIED};
        match proto {
            crate::proto::TCP if flags & CLOSING != 0 => TCP_CLOSING_NS,
            crate::proto::TCP if flags & REPLIED == 0 => TCP_SYN_NS,
            crate::proto::TCP => TCP_ESTABLISHED_NS,
            crate::proto::UDP => UDP_NS,
            _ => OTHER_NS,
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all types are `repr(C)`, plain old data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::CidrInfo {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl<K: aya::Pod> aya::Pod for super::Slotted<K> {}
}
