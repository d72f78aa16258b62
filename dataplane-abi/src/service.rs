//! Service load balancing: frontends (a VIP, node address or external IP with a port), backend
//! sets with their Maglev tables, backends, and ClientIP session affinity.
//!
//! A packet to a frontend is translated in three lookups whatever the number of Services:
//! `WEIR_SVC_V2[frontend]` gives the backend set, the set's Maglev table gives a backend id for
//! the flow's hash, `WEIR_BE_V2[backend_slot(id)]` gives the backend's address and port.
//!
//! Backends and small Maglev tables live in arrays indexed by the low bits of their ids
//! ([`backend_slot`], [`set_slot`]): no hashing, no bucket walk, and the agent writes them
//! through a memory mapping instead of one system call per entry. The agent never gives two
//! live ids the same slot; an id also stays unused for a long time after it leaves (ids grow
//! until the 32-bit space wraps), so a backend entry holds its own id, and a lookup by an id
//! that left finds another id (or none) there instead of another backend.

use core::mem::size_of;

use crate::{Addr, capacity};

/// Backend id that means "no backend": never given, and the id of a free `WEIR_BE_V2` entry.
pub const BACKEND_NONE: u32 = 0;

const _: () = assert!(capacity::BACKENDS.is_power_of_two());
const _: () = assert!(capacity::BACKEND_SETS.is_power_of_two());

/// Index of backend `id`'s entry in `WEIR_BE_V2`.
#[must_use]
pub const fn backend_slot(id: u32) -> u32 {
    id & (capacity::BACKENDS - 1)
}

/// Index of backend set `set`'s table in `WEIR_MAG_S_V2`.
#[must_use]
pub const fn set_slot(set: u32) -> u32 {
    set & (capacity::BACKEND_SETS - 1)
}

/// Which clients a frontend entry serves: Kubernetes gives internal and external traffic
/// their own traffic policy (`internalTrafficPolicy`, `externalTrafficPolicy`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceScope {
    /// Pods and processes of the cluster (a pod's interface, a socket of the node).
    Internal = 0,
    /// Clients outside the cluster, arriving on the node's own interfaces.
    External = 1,
}

/// Key of `WEIR_SVC_V2`: one frontend of one Service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// ClusterIP, LoadBalancer ingress IP, external IP, or a node address for a NodePort.
    pub addr: Addr,
    /// The Service port (or node port), host byte order.
    pub port_h: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// [`ServiceScope`] as a number.
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// Bits of [`ServiceValue::flags`].
pub mod service_flags {
    /// Translate the client's address to the node's too (`externalTrafficPolicy: Cluster` from
    /// outside), so that replies come back through this node.
    pub const MASQUERADE: u16 = 1 << 0;
    /// With no backend, drop rather than reject: the traffic policy is `Local` and this node has
    /// no endpoint, as kube-proxy does (another node may have one).
    pub const DROP_IF_EMPTY: u16 = 1 << 1;
    /// `loadBalancerSourceRanges` apply: the client must match `WEIR_LBSRC_V2` for this service.
    pub const SOURCE_RANGES: u16 = 1 << 2;
}

/// Maglev table sizes: a set takes the smallest tier that gives every backend at least ten
/// slots, so that the spread stays within 10 % while the table stays small. Each is a prime, as
/// Maglev's permutation needs.
pub mod maglev {
    /// Slots of a `WEIR_MAG_S_V2` table: sets of up to [`SMALL_BACKENDS`] backends.
    pub const SMALL: usize = 127;
    /// Backends of a set whose table is [`SMALL`]: ten slots each at least.
    pub const SMALL_BACKENDS: usize = SMALL / 10;
    /// Slots of a `WEIR_MAG_M_V2` table: sets of up to 102 backends.
    pub const MEDIUM: usize = 1021;
    /// Slots of a `WEIR_MAG_L_V2` table: larger sets (at most this many backends).
    pub const LARGE: usize = 16_381;

    /// Table tier of [`super::ServiceValue::maglev`].
    #[repr(u8)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Tier {
        /// [`SMALL`] slots.
        Small = 0,
        /// [`MEDIUM`] slots.
        Medium = 1,
        /// [`LARGE`] slots.
        Large = 2,
    }

    impl Tier {
        /// The smallest tier for `backends` backends, or `None` beyond [`LARGE`].
        #[must_use]
        pub const fn for_backends(backends: usize) -> Option<Self> {
            if backends <= SMALL_BACKENDS {
                Some(Self::Small)
            } else if backends * 10 <= MEDIUM {
                Some(Self::Medium)
            } else if backends <= LARGE {
                Some(Self::Large)
            } else {
                None
            }
        }

        /// Number of slots of a table of this tier.
        #[must_use]
        pub const fn slots(self) -> usize {
            match self {
                Self::Small => SMALL,
                Self::Medium => MEDIUM,
                Self::Large => LARGE,
            }
        }

        /// Decodes [`super::ServiceValue::maglev`].
        #[must_use]
        pub const fn from_u8(v: u8) -> Option<Self> {
            match v {
                0 => Some(Self::Small),
                1 => Some(Self::Medium),
                2 => Some(Self::Large),
                _ => None,
            }
        }
    }
}

/// Value of `WEIR_SVC_V2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceValue {
    /// Identifies the Service (for flow events, `explain` and `loadBalancerSourceRanges`).
    pub service: u32,
    /// Key of the Maglev table, in the map of tier `maglev`; shared by frontends whose
    /// backends are the same (a Service port's ClusterIP, node ports and external IPs).
    pub backend_set: u32,
    /// Backends in the table; 0: reject (or drop, with [`service_flags::DROP_IF_EMPTY`]).
    pub backend_count: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout_s: u32,
    /// [`service_flags`] bits.
    pub flags: u16,
    /// [`maglev::Tier`] as a number.
    pub maglev: u8,
    /// Padding, always zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceValue>() == 20);

/// A Maglev table of `N` slots: each slot holds a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevTable<const N: usize> {
    /// Backend ids, indexed by [`maglev_slot`].
    pub slots: [u32; N],
    /// The backend set whose table this is (the map's key). Never read by the programs; it
    /// keeps a verifier bound inside the value: LLVM folds the slot's `>> 32` and the `* 4` of
    /// its byte offset into one `>> 30`, for which the verifier (Linux 6.18) bounds the offset
    /// by `4 N - 1` rather than `4 (N - 1)`.
    pub set: u32,
}

/// Backend set id that is never given: the set of a free table entry.
pub const SET_NONE: u32 = 0;

/// Value of `WEIR_MAG_S_V2[set_slot(set)]`: the Maglev table of a set of at most
/// [`maglev::SMALL_BACKENDS`] backends. Each slot holds a backend's position in `backends`
/// rather than its id: 184 bytes instead of 512, which is what lets a preallocated array hold
/// a table for every set.
///
/// The agent rewrites a table in place while programs read it, so that any mix of old and new
/// words names a backend in use: a backend that stays keeps its position, a new one takes
/// the position of one that left (whose id stays until then), and `backends` is written
/// before `slots` (programs read a slot, then the position it names).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SmallMaglevTable {
    /// Backend ids by position; positions no slot names may hold ids that left.
    pub backends: [u32; maglev::SMALL_BACKENDS],
    /// The backend set whose table this is; [`SET_NONE`] in a free entry. For the agent,
    /// which reads the array back after a restart: the programs never read it.
    pub set: u32,
    /// Position in `backends` of each slot's backend, indexed by [`maglev_slot`].
    pub slots: [u8; maglev::SMALL],
    /// Padding, always zero.
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<SmallMaglevTable>() == 184);
const _: () = assert!(core::mem::offset_of!(SmallMaglevTable, set) == 48);
const _: () = assert!(core::mem::offset_of!(SmallMaglevTable, slots) == 52);

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The endpoint is a pod on this node.
    pub const LOCAL: u8 = 1 << 0;
}

/// Value of `WEIR_BE_V2[backend_slot(id)]`: one endpoint of one backend set.
///
/// Ids are per set and endpoint: an endpoint leaving a set gives up its id (the entry's `id`
/// becomes [`BACKEND_NONE`]), which is how a tracked flow learns that its backend is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The endpoint's address.
    pub addr: Addr,
    /// The target port, host byte order.
    pub port_h: u16,
    /// [`backend_flags`] bits.
    pub flags: u8,
    /// Padding, always zero.
    pub _pad: u8,
    /// The backend id this entry holds; [`BACKEND_NONE`] when free. Written last when the
    /// entry is filled and alone when it is freed, so that a program reading the entry while
    /// the agent writes it sees either the whole backend under its id or not that id.
    pub id: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);
const _: () = assert!(core::mem::offset_of!(Backend, id) == 20);

impl Backend {
    /// Whether this entry holds backend `id`.
    #[must_use]
    pub const fn holds(&self, id: u32) -> bool {
        id != BACKEND_NONE && self.id == id
    }
}

/// Key of `WEIR_AFF_V2`: a client of a backend set with `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// [`ServiceValue::backend_set`].
    pub backend_set: u32,
    /// The client's address.
    pub client: Addr,
}
const _: () = assert!(size_of::<AffinityKey>() == 20);

/// Value of `WEIR_AFF_V2`: the backend this client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the client's last new connection.
    pub last_used_ns: u64,
    /// Backend id.
    pub backend: u32,
    /// Padding, always zero.
    pub _pad: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// Data of a `WEIR_LBSRC_V2` LPM key: a source range of a Service's LoadBalancer IPs. The
/// prefix length covers the 32 bits of `service` plus the range's own prefix (IPv4 offset by 96,
/// as addresses are IPv4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// [`ServiceValue::service`], big-endian so that the trie matches it bit by bit first.
    pub service_be: u32,
    /// The range's address.
    pub addr: Addr,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 20);

/// Key of `WEIR_SKNAT_V1`: a backend a socket of the node was sent to instead of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// The backend's address.
    pub addr: Addr,
    /// The backend's port, host byte order.
    pub port_h: u16,
    /// Padding, always zero.
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SockNatKey>() == 32);

/// Value of `WEIR_SKNAT_V1`: the frontend the socket asked for, which `recvmsg` and
/// `getpeername` give back in place of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatValue {
    /// The frontend's address.
    pub addr: Addr,
    /// The frontend's port, host byte order.
    pub port_h: u16,
    /// Padding, always zero.
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockNatValue>() == 20);

/// Value of the single entry of `WEIR_SOCK_V1`: which sockets the socket programs translate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockConfig {
    /// Network namespace cookie (`SO_NETNS_COOKIE`) of the node's own processes. Sockets of
    /// other namespaces (pods) are left to the pod's interface, where their Service traffic is
    /// translated, judged and reported per packet; 0 (never set): none are translated.
    pub node_netns_cookie: u64,
}
const _: () = assert!(size_of::<SockConfig>() == 8);

/// Picks the Maglev slot of a flow: a hash of what stays the same for all packets of one
/// connection seen from its client (address, port, protocol). Shared by the programs and the
/// agent (`explain`, tests), so both name the same backend.
#[must_use]
pub const fn flow_hash(client: &Addr, client_port_h: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ ((client_port_h as u32) << 8 | proto as u32);
    let mut i = 0;
    while i < 4 {
        let w = u32::from_ne_bytes([
            client[4 * i],
            client[4 * i + 1],
            client[4 * i + 2],
            client[4 * i + 3],
        ]);
        h = mix(h ^ w);
        i += 1;
    }
    mix(h)
}

/// The slot of a table of `slots` slots that `hash` picks: the high half of `hash × slots`
/// (Lemire's reduction), which needs no division and which the BPF verifier can bound without
/// a check (the product's high half is below `slots`).
#[must_use]
pub const fn maglev_slot(hash: u32, slots: usize) -> usize {
    ((hash as u64 * slots as u64) >> 32) as usize
}

/// The murmur3 finaliser: every input bit affects every output bit.
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all types are `repr(C)`, plain old data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SourceRangeKey {}
    unsafe impl<const N: usize> aya::Pod for super::MaglevTable<N> {}
    unsafe impl aya::Pod for super::SmallMaglevTable {}
    unsafe impl aya::Pod for super::SockNatKey {}
    unsafe impl aya::Pod for super::SockNatValue {}
    unsafe impl aya::Pod for super::SockConfig {}
}
