//! Flow events: what the programs tell the agent about a drop or a new connection, through the
//! `WEIR_FLOWS_V2` ring buffer, and the rate limiter that keeps their cost bounded.
//!
//! An event is sent for every dropped packet and for the first packet of every connection
//! policy lets through (never for packets of established connections), at most
//! [`ObserveConfig`]'s rate per CPU; what the limiter or a full ring holds back is counted in
//! `WEIR_OBS_CNT_V1`. Nothing is sent, at the cost of one branch, until the agent sets
//! [`observe_flags::FLOW_EVENTS`]: it does once it reads the ring.

use core::mem::{offset_of, size_of};

use crate::Addr;

/// [`FlowEvent::policy`] and [`FlowEvent::peer_class`] when the program did not learn them
/// (no rule allowed the packet, or it left before the peer was classified).
pub const FLOW_UNKNOWN: u32 = u32::MAX;

/// The programs wake the ring's reader once this many bytes wait (about 200 events): a
/// wake-up costs far more than an event. The reader also drains the ring on a timer, for the
/// events of a quiet node.
pub const FLOW_WAKEUP_BYTES: u64 = 16 * 1024;

/// [`FlowEvent::verdict`]: which enum [`FlowEvent::reason`] is a number of.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowVerdict {
    /// Passed: `reason` is a [`crate::PassReason`].
    Passed = 0,
    /// Dropped: `reason` is a [`crate::DropReason`].
    Dropped = 1,
}

impl FlowVerdict {
    /// Decodes the number in an event; anything unknown is `None`.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Passed),
            1 => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// Bits of [`FlowEvent::flags`].
pub mod flow_flags {
    /// Addresses, ports and protocol were parsed: unset for `malformed` drops, whose headers
    /// cannot be trusted (the fields are then zero).
    pub const HEADERS: u8 = 1 << 0;
}

/// One entry of `WEIR_FLOWS_V2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns`: `CLOCK_MONOTONIC`, nanoseconds since boot.
    pub time_ns: u64,
    /// Source address of the packet (see [`Addr`]).
    pub src: Addr,
    /// Destination address of the packet (see [`Addr`]).
    pub dst: Addr,
    /// Source port, ICMP echo request identifier, or 0.
    pub src_port_h: u16,
    /// Destination port, ICMP echo reply identifier, or 0.
    pub dst_port_h: u16,
    /// IANA protocol number (see [`crate::proto`]).
    pub proto: u8,
    /// [`crate::Direction`] as a number: which program saw the packet.
    pub direction: u8,
    /// [`FlowVerdict`] as a number.
    pub verdict: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    /// A [`crate::PassReason`] or [`crate::DropReason`] number, per `verdict`.
    pub reason: u32,
    /// Host-side interface the packet crossed: the local pod's endpoint id.
    pub ifindex: u32,
    /// The peer's class, or [`FLOW_UNKNOWN`].
    pub peer_class: u32,
    /// [`crate::PolicyValue::policy`] of the entry that allowed the packet, or [`FLOW_UNKNOWN`].
    pub policy: u32,
    /// [`crate::PolicyValue::rule`] of that entry (meaningless without `policy`).
    pub rule: u32,
    /// TCP flags of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
    /// [`crate::ServiceValue::service`] of the Service the packet went through (its
    /// destination, as sent, was a frontend), or [`FLOW_UNKNOWN`].
    pub service: u32,
    /// Padding, always zero.
    pub _pad2: u32,
}
const _: () = assert!(size_of::<FlowEvent>() == 80);
const _: () = assert!(offset_of!(FlowEvent, service) == 72);
const _: () = assert!(offset_of!(FlowEvent, src) == 8);
const _: () = assert!(offset_of!(FlowEvent, src_port_h) == 40);
const _: () = assert!(offset_of!(FlowEvent, reason) == 48);
const _: () = assert!(offset_of!(FlowEvent, tcp_flags) == 68);

/// Bits of [`ObserveConfig::flags`].
pub mod observe_flags {
    /// Someone reads `WEIR_FLOWS_V2`: send flow events.
    pub const FLOW_EVENTS: u32 = 1 << 0;
}

/// Value of the single entry of `WEIR_OBS_V1`, written by the agent.
///
/// The rate limiter is a token bucket per CPU counted in nanoseconds of credit: a CPU earns one
/// nanosecond of credit per nanosecond of time, an event costs `event_cost_ns`, and no more
/// than `burst_ns` is ever saved up. The agent does the divisions, the program only adds and
/// compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObserveConfig {
    /// [`observe_flags`] bits.
    pub flags: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// Credit one event costs: 10⁹ / (events per second per CPU). 0 means no limit.
    pub event_cost_ns: u64,
    /// Most credit a CPU holds: burst × `event_cost_ns`.
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<ObserveConfig>() == 24);

/// Value of `WEIR_OBS_TB_V1`, one per CPU; the programs own it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    /// Credit saved up, in nanoseconds (see [`ObserveConfig`]).
    pub credit_ns: u64,
    /// `bpf_ktime_get_ns` when the credit was last brought up to date.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 16);

/// What happened to a flow event the programs wanted to send. Indexes `WEIR_OBS_CNT_V1`;
/// numbers are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObserveCounter {
    /// Written to the ring.
    Emitted = 0,
    /// Held back by the rate limiter.
    RateLimited = 1,
    /// The ring was full: the reader is behind.
    RingFull = 2,
}

impl ObserveCounter {
    /// Every variant, in number order; the length of the counter array.
    pub const ALL: [Self; 3] = [Self::Emitted, Self::RateLimited, Self::RingFull];
    /// Size of the counter array indexed by this enum.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable lower-case name, for metrics and CLI output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Emitted => "emitted",
            Self::RateLimited => "rate_limited",
            Self::RingFull => "ring_full",
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: `repr(C)` plain old data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::ObserveConfig {}
    unsafe impl aya::Pod for super::TokenBucket {}
}
