//! Reject: a new connection to a Service with no endpoint gets an answer, as kube-proxy's
//! REJECT rules give one: a TCP reset, or an ICMP port unreachable for UDP and SCTP, so that the
//! client fails at once instead of waiting out a timeout. The packet itself becomes the answer
//! and goes back out of the interface it came in by, towards the pod.
//!
//! Only packets without IP options or IPv6 extension headers are answered (the answer is built
//! over a fixed-size header); others, and TCP resets (never answered, RFC 793), are dropped.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use dataplane_abi::proto;

use crate::parse::{ETH_HLEN, Packet, tcp_flag};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// Bytes of the offending datagram's transport header an ICMP error quotes (RFC 792).
const QUOTED_L4: usize = 8;

/// The helper's view of where the quoted datagram starts and how much of it is quoted.
#[expect(clippy::cast_possible_truncation, reason = "a small constant")]
const QUOTE_FROM: u32 = ETH_HLEN as u32;
#[expect(clippy::cast_possible_truncation, reason = "a small constant")]
const QUOTE_V4: u32 = (IPV4_HLEN + QUOTED_L4) as u32;
#[expect(clippy::cast_possible_truncation, reason = "a small constant")]
const QUOTE_V6: u32 = (IPV6_HLEN + QUOTED_L4) as u32;

/// Scratch space to build an answer in: the BPF stack has no room left for it.
pub struct Answer {
    ip: [u8; IPV6_HLEN],
    /// TCP header, or ICMP header followed by the quoted IP header and 8 transport bytes.
    l4: [u8; ICMP_HLEN + IPV6_HLEN + QUOTED_L4],
    pseudo: [u8; 40],
}

/// Turns the client's packet into its answer and sends it back to the pod: the TC action,
/// or `None` when the packet is not answered (then dropped).
#[inline(always)]
pub fn answer(ctx: &TcContext, pkt: &Packet, buf: &mut Answer) -> Option<i32> {
    if !pkt.fragment.is_whole() {
        return None;
    }
    let ip_hlen = if pkt.ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    if pkt.l4_off as usize != ETH_HLEN + ip_hlen {
        return None;
    }
    swap_macs(ctx)?;
    match pkt.proto {
        proto::TCP => reset(ctx, pkt, buf)?,
        proto::UDP | proto::SCTP => unreachable(ctx, pkt, buf)?,
        _ => return None,
    }
    // SAFETY: `skb` points at the context the kernel passed this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper call with no memory arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    #[expect(clippy::cast_possible_truncation, reason = "TC actions are small")]
    (action == i64::from(TC_ACT_REDIRECT)).then_some(action as i32)
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Option<()> {
    let dst: [u8; 6] = ctx.load(0).ok()?;
    let src: [u8; 6] = ctx.load(6).ok()?;
    ctx.store(0, &src, 0).ok()?;
    ctx.store(6, &dst, 0).ok()
}

/// A TCP reset from the frontend, acknowledging what the client sent (RFC 793, "Reset
/// Generation": `<SEQ=SEG.ACK>` when the segment had ACK, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN>`).
#[inline(always)]
fn reset(ctx: &TcContext, pkt: &Packet, buf: &mut Answer) -> Option<()> {
    if pkt.tcp_flags & tcp_flag::RST != 0 {
        return None;
    }
    let l4 = pkt.l4_off as usize;
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4).ok()?);
    let ack = u32::from_be(ctx.load::<u32>(l4 + 8).ok()?);
    let data_off = usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4;
    let seg_len = segment_len(ctx, pkt, data_off)?;
    let consumed = seg_len
        + u32::from(pkt.tcp_flags & tcp_flag::SYN != 0)
        + u32::from(pkt.tcp_flags & tcp_flag::FIN != 0);
    let had_ack = pkt.tcp_flags & tcp_flag::ACK != 0;
    let t = &mut buf.l4;
    t[..TCP_HLEN].fill(0);
    t[0..2].copy_from_slice(&pkt.dst_port_h.to_be_bytes());
    t[2..4].copy_from_slice(&pkt.src_port_h.to_be_bytes());
    let (rst_seq, rst_flags) = if had_ack {
        (ack, tcp_flag::RST)
    } else {
        (0, tcp_flag::RST | tcp_flag::ACK)
    };
    t[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(consumed).to_be_bytes());
    t[12] = 0x50;
    t[13] = rst_flags;
    write_ip(pkt, buf, proto::TCP, TCP_HLEN);
    let sum = l4_checksum(pkt, buf, proto::TCP, TCP_HLEN)?;
    buf.l4[16..18].copy_from_slice(&sum.to_ne_bytes());
    resize(ctx, pkt, TCP_HLEN)?;
    store_headers(ctx, pkt, buf, TCP_HLEN)
}

/// Bytes of TCP payload in the segment.
#[inline(always)]
fn segment_len(ctx: &TcContext, pkt: &Packet, data_off: usize) -> Option<u32> {
    let ip_len = if pkt.ipv6 {
        u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?))
    } else {
        u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?)).checked_sub(20)?
    };
    ip_len.checked_sub(u32::try_from(data_off).ok()?)
}

/// ICMP destination unreachable, port unreachable (`ICMPv6`: type 1, code 4), quoting the
/// client's IP header and the first 8 bytes of its transport header.
#[inline(always)]
fn unreachable(ctx: &TcContext, pkt: &Packet, buf: &mut Answer) -> Option<()> {
    let ip_hlen = if pkt.ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    let icmp_len = ICMP_HLEN + ip_hlen + QUOTED_L4;
    let t = &mut buf.l4;
    t[..ICMP_HLEN].fill(0);
    let quote = t[ICMP_HLEN..].as_mut_ptr().cast();
    // SAFETY (both arms): `quote` has room for `IPV6_HLEN + QUOTED_L4` bytes; the length is a
    // constant, as the verifier wants (aya's `load_bytes` clamps it to the packet, which the
    // verifier sees as possibly zero).
    let loaded = if pkt.ipv6 {
        t[0] = 1;
        t[1] = 4;
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), QUOTE_FROM, quote, QUOTE_V6) }
    } else {
        t[0] = 3;
        t[1] = 3;
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), QUOTE_FROM, quote, QUOTE_V4) }
    };
    if loaded != 0 {
        return None;
    }
    // Every byte after the Ethernet header is rewritten from `buf`: only the length matters.
    let answer_len = u32::try_from(ETH_HLEN + ip_hlen + icmp_len).ok()?;
    // SAFETY: `skb` is this program's context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, answer_len, 0) } != 0 {
        return None;
    }
    write_ip(pkt, buf, icmp_proto(pkt), icmp_len);
    let sum = if pkt.ipv6 {
        l4_checksum(pkt, buf, proto::ICMPV6, icmp_len)?
    } else {
        !fold(csum(&buf.l4[..ICMP_HLEN + IPV4_HLEN + QUOTED_L4], 0)?)
    };
    buf.l4[2..4].copy_from_slice(&sum.to_ne_bytes());
    store_headers(ctx, pkt, buf, icmp_len)
}

#[inline(always)]
fn icmp_proto(pkt: &Packet) -> u8 {
    if pkt.ipv6 { proto::ICMPV6 } else { proto::ICMP }
}

/// The answer's IP header, from the frontend (the client's destination) to the client.
#[inline(always)]
fn write_ip(pkt: &Packet, buf: &mut Answer, l4_proto: u8, l4_len: usize) {
    let h = &mut buf.ip;
    if pkt.ipv6 {
        h.fill(0);
        h[0] = 0x60;
        #[expect(clippy::cast_possible_truncation, reason = "at most 56 bytes")]
        h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        h[6] = l4_proto;
        h[7] = 64;
        h[8..24].copy_from_slice(&pkt.dst);
        h[24..40].copy_from_slice(&pkt.src);
    } else {
        h[..IPV4_HLEN].fill(0);
        h[0] = 0x45;
        #[expect(clippy::cast_possible_truncation, reason = "at most 56 bytes")]
        h[2..4].copy_from_slice(&((IPV4_HLEN + l4_len) as u16).to_be_bytes());
        h[6] = 0x40;
        h[8] = 64;
        h[9] = l4_proto;
        h[12..16].copy_from_slice(&pkt.dst[12..16]);
        h[16..20].copy_from_slice(&pkt.src[12..16]);
        if let Some(sum) = csum(&h[..IPV4_HLEN], 0) {
            let sum = !fold(sum);
            h[10..12].copy_from_slice(&sum.to_ne_bytes());
        }
    }
}

/// The checksum of the answer's transport header (`len` bytes of `buf.l4`) with the IP
/// pseudo-header.
#[inline(always)]
fn l4_checksum(pkt: &Packet, buf: &mut Answer, l4_proto: u8, len: usize) -> Option<u16> {
    let p = &mut buf.pseudo;
    p.fill(0);
    #[expect(clippy::cast_possible_truncation, reason = "at most 56 bytes")]
    let len16 = (len as u16).to_be_bytes();
    let pseudo_len = if pkt.ipv6 {
        p[..16].copy_from_slice(&pkt.dst);
        p[16..32].copy_from_slice(&pkt.src);
        p[34..36].copy_from_slice(&len16);
        p[39] = l4_proto;
        40
    } else {
        p[0..4].copy_from_slice(&pkt.dst[12..16]);
        p[4..8].copy_from_slice(&pkt.src[12..16]);
        p[9] = l4_proto;
        p[10..12].copy_from_slice(&len16);
        12
    };
    let seed = csum(&buf.pseudo[..pseudo_len], 0)?;
    let sum = if len == TCP_HLEN {
        csum(&buf.l4[..TCP_HLEN], seed)?
    } else {
        csum(&buf.l4[..ICMP_HLEN + IPV6_HLEN + QUOTED_L4], seed)?
    };
    Some(!fold(sum))
}

/// Cuts a TCP answer to its headers.
#[inline(always)]
fn resize(ctx: &TcContext, pkt: &Packet, l4_len: usize) -> Option<()> {
    let ip_hlen = if pkt.ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    let len = u32::try_from(ETH_HLEN + ip_hlen + l4_len).ok()?;
    // SAFETY: `skb` is this program's context.
    (unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } == 0).then_some(())
}

#[inline(always)]
fn store_headers(ctx: &TcContext, pkt: &Packet, buf: &Answer, l4_len: usize) -> Option<()> {
    if pkt.ipv6 {
        ctx.store(ETH_HLEN, &buf.ip, 0).ok()?;
        store_l4(ctx, ETH_HLEN + IPV6_HLEN, buf, l4_len)
    } else {
        let ip: &[u8; IPV4_HLEN] = buf.ip[..IPV4_HLEN].try_into().ok()?;
        ctx.store(ETH_HLEN, ip, 0).ok()?;
        store_l4(ctx, ETH_HLEN + IPV4_HLEN, buf, l4_len)
    }
}

#[inline(always)]
fn store_l4(ctx: &TcContext, offset: usize, buf: &Answer, l4_len: usize) -> Option<()> {
    // Fixed sizes: the verifier wants constant lengths for stores from the stack or a map.
    if l4_len == TCP_HLEN {
        let tcp: &[u8; TCP_HLEN] = buf.l4[..TCP_HLEN].try_into().ok()?;
        ctx.store(offset, tcp, 0).ok()
    } else if l4_len == ICMP_HLEN + IPV4_HLEN + QUOTED_L4 {
        let icmp: &[u8; ICMP_HLEN + IPV4_HLEN + QUOTED_L4] = buf.l4
            [..ICMP_HLEN + IPV4_HLEN + QUOTED_L4]
            .try_into()
            .ok()?;
        ctx.store(offset, icmp, 0).ok()
    } else {
        ctx.store(offset, &buf.l4, 0).ok()
    }
}

/// One's-complement sum of `data` (a multiple of 4 bytes) added to `seed`, unfolded.
#[inline(always)]
fn csum(data: &[u8], seed: u32) -> Option<u32> {
    let len = u32::try_from(data.len()).ok()?;
    // SAFETY: `data` is valid for `len` bytes; the helper only reads it.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            data.as_ptr().cast_mut().cast(),
            len,
            seed,
        )
    };
    u32::try_from(sum).ok()
}

#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "folded to 16 bits just above"
    )]
    let folded = sum as u16;
    folded
}
