//! The ABI shared by Weir's eBPF programs and its agent: map names, map keys and values,
//! verdict and drop-reason numbers, flow events.
//!
//! Conventions, for every type in this crate:
//! - `#[repr(C)]`, explicit padding fields (always written as zero: uninitialised padding in a
//!   hash key makes lookups miss silently), and a compile-time size check next to the type.
//! - Addresses are 16 bytes in network byte order. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`)
//!   so that one map and one code path serve both families.
//! - Ports are host byte order (`_h` suffix in field names where it matters).
//! - A layout change gets a new map name (`_v2`): an old pinned map is then never misread.
#![no_std]
#![warn(missing_docs)]

pub mod event;
pub mod maps;
pub mod nodeport;
pub mod reason;
pub mod service;

pub use event::*;
pub use maps::*;
pub use nodeport::*;
pub use reason::*;
pub use service::*;

/// Which way a packet crosses the pod's interface, seen from the pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the pod (TC egress on the host side of its veth).
    Ingress = 0,
    /// Leaving the pod (TC ingress on the host side of its veth).
    Egress = 1,
}

impl Direction {
    /// The direction a reply to this packet travels.
    #[must_use]
    pub const fn reverse(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }

    /// Decodes the number stored in maps; anything unknown is `None`.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// IANA protocol numbers Weir's policy understands.
pub mod proto {
    /// Matches every protocol in a policy key (a rule without `ports`).
    pub const ANY: u8 = 0;
    /// IANA protocol number of ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// IANA protocol number of TCP.
    pub const TCP: u8 = 6;
    /// IANA protocol number of UDP.
    pub const UDP: u8 = 17;
    /// IANA protocol number of ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IANA protocol number of SCTP.
    pub const SCTP: u8 = 132;
}
