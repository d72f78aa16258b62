//! NAT: rewrites one end (address and port) of a packet in place, with the IPv4 header
//! checksum and the TCP/UDP checksum fixed incrementally, and the parsed [`Packet`] updated to
//! match so that later stages see the wire as it now is.
//!
//! The L4 checksum covers a pseudo-header with both addresses, so an address change is folded
//! into it too (`BPF_F_PSEUDO_HDR`, which also keeps `CHECKSUM_PARTIAL` packets of local
//! senders right). SCTP's `CRC32c` covers no addresses; its ports are rewritten without a checksum
//! update, which is right for packets whose CRC is left to offload (every local sender on a
//! veth) and is the limit of translating SCTP ports at packet level.
//!
//! An ICMP error about a translated connection is rewritten too ([`rewrite_icmp_error`]): the
//! packet it quotes, and its own address where that is the translated one, so that the error
//! reaches the socket that knows the other address (the client's, connected to the frontend).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use dataplane_abi::{Addr, DropReason, proto};

use crate::parse::{ETH_HLEN, Packet};

const IPV4_CHECKSUM: usize = ETH_HLEN + 10;
const IPV4_SRC: usize = ETH_HLEN + 12;
const IPV4_DST: usize = ETH_HLEN + 16;
const IPV6_SRC: usize = ETH_HLEN + 8;
const IPV6_DST: usize = ETH_HLEN + 24;

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites `end` of the packet to `addr`:`port_h`.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &mut Packet,
    end: End,
    addr: &Addr,
    port_h: u16,
) -> Result<(), DropReason> {
    let (old_addr, old_port_h) = match end {
        End::Source => (pkt.src, pkt.src_port_h),
        End::Destination => (pkt.dst, pkt.dst_port_h),
    };
    let checksum = l4_checksum(pkt);
    if pkt.ipv6 {
        rewrite_v6_addr(ctx, end, &old_addr, addr, checksum)?;
    } else {
        rewrite_v4_addr(ctx, end, &old_addr, addr, checksum)?;
    }
    if old_port_h != port_h && !pkt.fragment.is_later() {
        rewrite_port(ctx, pkt, end, old_port_h, port_h, checksum)?;
    }
    match end {
        End::Source => {
            pkt.src = *addr;
            pkt.src_port_h = port_h;
        }
        End::Destination => {
            pkt.dst = *addr;
            pkt.dst_port_h = port_h;
        }
    }
    Ok(())
}

/// Rewrites an ICMP error (`pkt.is_icmp_error`) about a translated connection: `quoted` end
/// of the packet it quotes becomes `addr`:`port_h`, and the error's own opposite end (its
/// source when the quoted destination changes, and the other way round) too when it was that
/// same address: the backend that sends the error, or the frontend the client's error is
/// addressed to. An error from a router on the way keeps the router's address.
///
/// Checksums: a quoted IPv4 header's own checksum absorbs its address change, and so leaves the
/// ICMP checksum (which covers it) unchanged; the `ICMPv6` checksum covers the quoted addresses
/// and, through its pseudo-header, the outer ones; both cover the quoted port. The quoted
/// datagram's L4 checksum is left as it is: receivers never verify it (the quote is often cut
/// short of the datagram it covers; Linux matches the error to a socket by addresses and ports
/// alone).
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    pkt: &mut Packet,
    quoted: End,
    addr: &Addr,
    port_h: u16,
) -> Result<(), DropReason> {
    let inner = &pkt.embedded;
    let (old_addr, old_port_h, addr_field, port_field) = match quoted {
        End::Source => (inner.src, inner.src_port_h, 0, 0),
        End::Destination => (inner.dst, inner.dst_port_h, 1, 2),
    };
    let icmp_checksum = Checksum {
        offset: pkt.l4_off as usize + 2,
        flags: 0,
    };
    let ip_off = inner.ip_off as usize;
    let l4_off = inner.l4_off as usize;
    if pkt.ipv6 {
        fold_v6_addr(ctx, &old_addr, addr, icmp_checksum)?;
        ctx.store(ip_off + 8 + 16 * addr_field, addr, 0)
            .map_err(|_| DropReason::NatFailed)?;
    } else {
        let (from, to) = (v4_word(&old_addr), v4_word(addr));
        ctx.l3_csum_replace(ip_off + 10, u64::from(from), u64::from(to), 4)
            .map_err(|_| DropReason::NatFailed)?;
        ctx.store(ip_off + 12 + 4 * addr_field, &to, 0)
            .map_err(|_| DropReason::NatFailed)?;
    }
    if old_port_h != port_h {
        let (from, to) = (old_port_h.to_be(), port_h.to_be());
        ctx.l4_csum_replace(icmp_checksum.offset, u64::from(from), u64::from(to), 2)
            .map_err(|_| DropReason::NatFailed)?;
        ctx.store(l4_off + port_field, &to, 0)
            .map_err(|_| DropReason::NatFailed)?;
    }
    let inner = &mut pkt.embedded;
    match quoted {
        End::Source => (inner.src, inner.src_port_h) = (*addr, port_h),
        End::Destination => (inner.dst, inner.dst_port_h) = (*addr, port_h),
    }
    let (outer, outer_addr) = match quoted {
        End::Source => (End::Destination, &mut pkt.dst),
        End::Destination => (End::Source, &mut pkt.src),
    };
    if *outer_addr != old_addr {
        return Ok(());
    }
    *outer_addr = *addr;
    if pkt.ipv6 {
        rewrite_v6_addr(ctx, outer, &old_addr, addr, Some(icmp_checksum))
    } else {
        rewrite_v4_addr(ctx, outer, &old_addr, addr, None)
    }
}

/// Where the L4 checksum is and the flags its updates need; `None` when there is none to
/// update (SCTP, or a later fragment, whose datagram's checksum sits in the first fragment).
#[derive(Clone, Copy)]
struct Checksum {
    offset: usize,
    flags: u64,
}

#[inline(always)]
fn l4_checksum(pkt: &Packet) -> Option<Checksum> {
    if pkt.fragment.is_later() {
        return None;
    }
    let l4 = pkt.l4_off as usize;
    match pkt.proto {
        proto::TCP => Some(Checksum {
            offset: l4 + 16,
            flags: 0,
        }),
        // A zero UDP checksum (IPv4) means "none" and must stay zero.
        proto::UDP => Some(Checksum {
            offset: l4 + 6,
            flags: u64::from(BPF_F_MARK_MANGLED_0),
        }),
        _ => None,
    }
}

#[inline(always)]
fn rewrite_v4_addr(
    ctx: &TcContext,
    end: End,
    old: &Addr,
    new: &Addr,
    checksum: Option<Checksum>,
) -> Result<(), DropReason> {
    let from = v4_word(old);
    let to = v4_word(new);
    if let Some(c) = checksum {
        let flags = c.flags | u64::from(BPF_F_PSEUDO_HDR) | 4;
        ctx.l4_csum_replace(c.offset, u64::from(from), u64::from(to), flags)
            .map_err(|_| DropReason::NatFailed)?;
    }
    ctx.l3_csum_replace(IPV4_CHECKSUM, u64::from(from), u64::from(to), 4)
        .map_err(|_| DropReason::NatFailed)?;
    let offset = match end {
        End::Source => IPV4_SRC,
        End::Destination => IPV4_DST,
    };
    store(ctx, offset, &to)
}

#[inline(always)]
fn rewrite_v6_addr(
    ctx: &TcContext,
    end: End,
    old: &Addr,
    new: &Addr,
    checksum: Option<Checksum>,
) -> Result<(), DropReason> {
    if let Some(c) = checksum {
        let pseudo = Checksum {
            offset: c.offset,
            flags: c.flags | u64::from(BPF_F_PSEUDO_HDR),
        };
        fold_v6_addr(ctx, old, new, pseudo)?;
    }
    let offset = match end {
        End::Source => IPV6_SRC,
        End::Destination => IPV6_DST,
    };
    store(ctx, offset, new)
}

/// Folds the change of an IPv6 address from `old` to `new` into `checksum`.
#[inline(always)]
fn fold_v6_addr(
    ctx: &TcContext,
    old: &Addr,
    new: &Addr,
    checksum: Checksum,
) -> Result<(), DropReason> {
    let mut from = *old;
    let mut to = *new;
    // SAFETY: both buffers are 16 bytes on this program's stack, as the sizes say.
    let diff =
        unsafe { bpf_csum_diff(from.as_mut_ptr().cast(), 16, to.as_mut_ptr().cast(), 16, 0) };
    if diff < 0 {
        return Err(DropReason::NatFailed);
    }
    #[expect(clippy::cast_sign_loss, reason = "checked non-negative just above")]
    let diff = diff as u64;
    ctx.l4_csum_replace(checksum.offset, 0, diff, checksum.flags)
        .map_err(|_| DropReason::NatFailed)
}

#[inline(always)]
fn rewrite_port(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    old_h: u16,
    new_h: u16,
    checksum: Option<Checksum>,
) -> Result<(), DropReason> {
    let from = old_h.to_be();
    let to = new_h.to_be();
    if let Some(c) = checksum {
        ctx.l4_csum_replace(c.offset, u64::from(from), u64::from(to), c.flags | 2)
            .map_err(|_| DropReason::NatFailed)?;
    }
    let offset = pkt.l4_off as usize
        + match end {
            End::Source => 0,
            End::Destination => 2,
        };
    store(ctx, offset, &to)
}

/// Header fields beyond this offset are written through the helper.
const MAX_DIRECT_OFFSET: usize = 512;

/// Writes `value` at `offset` of the packet: straight into the linear data when it lies there
/// (the verifier makes the head writable first), else through `bpf_skb_store_bytes`. A helper
/// call costs about 20 ns here, as the parse stage's loads measured, and a translated packet
/// writes two or four fields each way.
#[inline(always)]
fn store<T: Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), DropReason> {
    let start = ctx.data();
    // The verifier needs the offset bounded to let it move a packet pointer; headers end
    // well within it.
    if offset < MAX_DIRECT_OFFSET && start + offset + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between data and data_end, checked just above; read back
        // through the context by every later stage.
        unsafe { core::ptr::write_unaligned((start + offset) as *mut T, *value) };
        return Ok(());
    }
    ctx.store(offset, value, 0)
        .map_err(|_| DropReason::NatFailed)
}

/// The IPv4 address of a mapped [`Addr`], as the 32-bit word the packet holds.
#[inline(always)]
fn v4_word(addr: &Addr) -> u32 {
    u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])
}
