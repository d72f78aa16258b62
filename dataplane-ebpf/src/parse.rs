//! Parse: Ethernet → IPv4/IPv6 (options, extension headers, fragments) → L4 ports.
//! Reads the linear part of the skb directly, and what lies beyond it through
//! `bpf_skb_load_bytes`, so non-linear skbs parse as well as linear ones.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use dataplane_abi::{Addr, DropReason, proto, v4_mapped};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// IPv6 extension headers walked before giving up; real traffic carries one or two.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Fragment position of a packet, and the datagram's identification when fragmented. Plain
/// words rather than an enum with a payload-less variant, for the verifier (see
/// `policy::Remote`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub position: Position,
    pub id: u32,
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A whole datagram.
    Whole,
    /// Offset 0 with more to come: carries the L4 header.
    First,
    /// Offset > 0: no L4 header; ports come from the first fragment.
    Later,
}

impl Fragment {
    #[inline(always)]
    const fn new(offset: u16, more: bool, id: u32) -> Self {
        let position = match (offset, more) {
            (0, false) => Position::Whole,
            (0, true) => Position::First,
            _ => Position::Later,
        };
        Self { position, id }
    }

    #[inline(always)]
    pub fn is_whole(self) -> bool {
        self.position == Position::Whole
    }

    #[inline(always)]
    pub fn is_first(self) -> bool {
        self.position == Position::First
    }

    /// A later fragment: it has no L4 header.
    #[inline(always)]
    pub fn is_later(self) -> bool {
        self.position == Position::Later
    }
}

/// The addresses and ports of an ICMP error's embedded packet, and where its headers are.
#[derive(Clone, Copy, Default)]
pub struct Embedded {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub src_port_h: u16,
    pub dst_port_h: u16,
    /// Offset of its IP header.
    pub ip_off: u32,
    /// Offset of its L4 header.
    pub l4_off: u32,
}

/// What the rest of the path needs to know about an IP packet. Lives in a per-CPU scratch
/// slot, not on the 512-byte BPF stack, and is filled in place.
#[derive(Clone, Copy)]
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    /// Source port, ICMP echo request identifier, or 0.
    pub src_port_h: u16,
    /// Destination port, ICMP echo reply identifier, or 0.
    pub dst_port_h: u16,
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// Set for ICMP errors (unreachable, time exceeded, ...) that quote a packet.
    pub is_icmp_error: bool,
    /// The quoted packet, when `is_icmp_error`.
    pub embedded: Embedded,
    /// Offset of the L4 header (meaningless for a later fragment, which has none).
    pub l4_off: u32,
    /// An IPv6 packet (addresses are 16 bytes on the wire), not IPv4.
    pub ipv6: bool,
}

/// Result of parsing one frame.
pub enum Parsed {
    /// An IP packet, now described by the `Packet` passed to [`parse`].
    Ip,
    /// Not IPv4 or IPv6.
    NonIp,
}

pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    // Direct packet access costs a bounds check; the helper costs a call (about 20 ns each on
    // this kernel, measured by `cargo xtask bench`), and headers are nearly always linear.
    let start = ctx.data();
    if start + off + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between data and data_end, checked just above.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn load_be16(ctx: &TcContext, off: usize) -> Result<u16, DropReason> {
    load::<u16>(ctx, off).map(u16::from_be)
}

/// Parses the frame at the start of `ctx` into `pkt`.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<Parsed, DropReason> {
    // A frame shorter than an Ethernet header is not IP either; let the stack judge it.
    let Ok(ether_type) = load_be16(ctx, 12) else {
        return Ok(Parsed::NonIp);
    };
    pkt.src_port_h = 0;
    pkt.dst_port_h = 0;
    pkt.tcp_flags = 0;
    pkt.is_icmp_error = false;
    let l4_off = match ether_type {
        ETH_P_IP => ipv4_header(ctx, ETH_HLEN, pkt)?,
        ETH_P_IPV6 => ipv6_header(ctx, ETH_HLEN, pkt)?,
        _ => return Ok(Parsed::NonIp),
    };
    pkt.ipv6 = ether_type == ETH_P_IPV6;
    // Headers end well within the first 64 KiB: the cast cannot truncate.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "bounded by the header walk"
    )]
    {
        pkt.l4_off = l4_off as u32;
    }
    if !pkt.fragment.is_later() {
        parse_l4(ctx, l4_off, pkt)?;
    }
    Ok(Parsed::Ip)
}

/// The IP-level fields shared by a packet and the packet an ICMP error quotes.
trait IpFields {
    fn set(&mut self, src: Addr, dst: Addr, proto: u8, fragment: Fragment);
}

impl IpFields for Packet {
    #[inline(always)]
    fn set(&mut self, src: Addr, dst: Addr, proto: u8, fragment: Fragment) {
        self.src = src;
        self.dst = dst;
        self.proto = proto;
        self.fragment = fragment;
    }
}

impl IpFields for Embedded {
    #[inline(always)]
    fn set(&mut self, src: Addr, dst: Addr, proto: u8, _fragment: Fragment) {
        self.src = src;
        self.dst = dst;
        self.proto = proto;
    }
}

#[inline(always)]
/// Reads an IPv4 header into `out`; returns the offset of what follows its options.
fn ipv4_header(ctx: &TcContext, off: usize, out: &mut impl IpFields) -> Result<usize, DropReason> {
    let version_ihl: u8 = load(ctx, off)?;
    if version_ihl >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    // IHL counts 32-bit words and covers options: never assume 20 bytes.
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(DropReason::Malformed);
    }
    let id = u32::from(load_be16(ctx, off + 4)?);
    let frag = load_be16(ctx, off + 6)?;
    let proto: u8 = load(ctx, off + 9)?;
    let src: [u8; 4] = load(ctx, off + 12)?;
    let dst: [u8; 4] = load(ctx, off + 16)?;
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = Fragment::new(offset, more_fragments, id);
    out.set(v4_mapped(src), v4_mapped(dst), proto, fragment);
    Ok(off + ihl)
}

#[inline(always)]
/// Reads an IPv6 header and its extension headers into `out`; returns the upper-layer offset.
fn ipv6_header(ctx: &TcContext, off: usize, out: &mut impl IpFields) -> Result<usize, DropReason> {
    let version: u8 = load(ctx, off)?;
    if version >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let mut next: u8 = load(ctx, off + 6)?;
    let src: Addr = load(ctx, off + 8)?;
    let dst: Addr = load(ctx, off + 24)?;
    let mut cur = off + 40;
    let mut fragment = Fragment::new(0, false, 0);
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, not counting
            // the first 8.
            0 | 43 | 60 => {
                let nh: u8 = load(ctx, cur)?;
                let len: u8 = load(ctx, cur + 1)?;
                next = nh;
                cur += (usize::from(len) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, not counting the first 2.
            51 => {
                let nh: u8 = load(ctx, cur)?;
                let len: u8 = load(ctx, cur + 1)?;
                next = nh;
                cur += (usize::from(len) + 2) * 4;
            }
            44 => {
                let nh: u8 = load(ctx, cur)?;
                let frag = load_be16(ctx, cur + 2)?;
                let id = u32::from_be(load::<u32>(ctx, cur + 4)?);
                next = nh;
                cur += 8;
                let offset = frag >> 3;
                let more = frag & 1 != 0;
                fragment = Fragment::new(offset, more, id);
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 60 | 51 | 44) {
        // More extension headers than we walk: refuse rather than guess the protocol.
        return Err(DropReason::Malformed);
    }
    out.set(src, dst, next, fragment);
    Ok(cur)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, pkt: &mut Packet) -> Result<(), DropReason> {
    match pkt.proto {
        proto::TCP => {
            pkt.src_port_h = load_be16(ctx, off)?;
            pkt.dst_port_h = load_be16(ctx, off + 2)?;
            // Data offset byte and flags byte: a header cut before them is malformed.
            let data_offset: u8 = load(ctx, off + 12)?;
            if usize::from(data_offset >> 4) < 5 {
                return Err(DropReason::Malformed);
            }
            pkt.tcp_flags = load(ctx, off + 13)?;
        }
        proto::UDP | proto::SCTP => {
            pkt.src_port_h = load_be16(ctx, off)?;
            pkt.dst_port_h = load_be16(ctx, off + 2)?;
        }
        proto::ICMP | proto::ICMPV6 => parse_icmp(ctx, off, pkt)?,
        _ => {}
    }
    Ok(())
}

/// Echo requests carry their identifier as source "port" and replies as destination "port",
/// so the pair lands on one connection-tracking entry, as it does for TCP and UDP.
#[inline(always)]
fn parse_icmp(ctx: &TcContext, off: usize, pkt: &mut Packet) -> Result<(), DropReason> {
    let kind: u8 = load(ctx, off)?;
    let v6 = pkt.proto == proto::ICMPV6;
    let (echo_request, echo_reply) = if v6 { (128, 129) } else { (8, 0) };
    if kind == echo_request || kind == echo_reply {
        let id = load_be16(ctx, off + 4)?;
        if kind == echo_request {
            pkt.src_port_h = id;
        } else {
            pkt.dst_port_h = id;
        }
        return Ok(());
    }
    let is_error = if v6 {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(kind, 1..=4)
    } else {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(kind, 3 | 11 | 12)
    };
    if is_error {
        // The quoted packet starts after the 8-byte ICMP header. Quoted packets are never
        // followed through their own ICMP errors: one level is all RFC 1122 allows.
        let inner = off + 8;
        let inner_l4 = if v6 {
            ipv6_header(ctx, inner, &mut pkt.embedded)?
        } else {
            ipv4_header(ctx, inner, &mut pkt.embedded)?
        };
        embedded_ports(ctx, inner_l4, &mut pkt.embedded)?;
        // Both within the first 64 KiB, as the outer headers are: the casts cannot truncate.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bounded by the header walk"
        )]
        {
            pkt.embedded.ip_off = inner as u32;
            pkt.embedded.l4_off = inner_l4 as u32;
        }
        pkt.is_icmp_error = true;
    }
    Ok(())
}

#[inline(always)]
fn embedded_ports(ctx: &TcContext, off: usize, inner: &mut Embedded) -> Result<(), DropReason> {
    let (src_port_h, dst_port_h) = match inner.proto {
        // RFC 792 guarantees 8 bytes of the quoted datagram: the ports are in them.
        proto::TCP | proto::UDP | proto::SCTP => (load_be16(ctx, off)?, load_be16(ctx, off + 2)?),
        proto::ICMP | proto::ICMPV6 => {
            let kind: u8 = load(ctx, off)?;
            let id = load_be16(ctx, off + 4)?;
            if kind == 8 || kind == 128 {
                (id, 0)
            } else {
                (0, id)
            }
        }
        _ => (0, 0),
    };
    inner.src_port_h = src_port_h;
    inner.dst_port_h = dst_port_h;
    Ok(())
}

/// Link-local, multicast, broadcast and unspecified addresses: neighbour discovery, DAD, MLD,
/// DHCP. Kubernetes policy does not govern them and blocking them breaks the pod's link.
#[inline(always)]
pub fn is_link_scope(addr: &Addr) -> bool {
    let mapped_v4 = addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if mapped_v4 {
        let a = addr[12];
        let b = addr[13];
        return a >= 224 || (a == 169 && b == 254) || (a == 0);
    }
    let unspecified = addr.iter().all(|b| *b == 0);
    unspecified || addr[0] == 0xff || (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
}
