//! Forward: sends a translated packet straight out of the interface the node's routes choose
//! for its destination (`bpf_fib_lookup`, then a redirect), instead of handing it to the
//! node's IP input.
//!
//! Needed for the packets of connections from outside the node whose source became one of the
//! node's own addresses (a node port's replies, masqueraded connections): the IPv4 input path
//! drops a packet that arrives with a local source address as a martian (unless the node sets
//! `accept_local`, which Weir leaves alone). It also spares those packets a pass through the
//! node's stack, as Cilium's node-port path does. When the routes give no way out (a local
//! destination, forwarding off, no route), the packet goes to the stack as it is.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
};
use aya_ebpf::helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh};
use aya_ebpf::programs::TcContext;

use crate::SCRATCH;
use crate::parse::Packet;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The lookup's parameters and results: 64 bytes, in the per-CPU scratch slot.
pub type FibParams = bpf_fib_lookup;

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "64"
)]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

/// Redirects the packet being processed (its headers as the scratch slot's `pkt` holds them,
/// translated) to the interface the routes choose, with that hop's MAC addresses: whether it
/// was. The program must then return `TC_ACT_REDIRECT` ([`redirected`] tells the verdict).
#[inline(always)]
pub fn by_fib(ctx: &TcContext) -> bool {
    // SAFETY: this CPU's slot; only this program run uses it.
    let Some(work) = SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return false;
    };
    let params = &mut work.fib;
    fill(params, &work.pkt, ctx);
    // SAFETY: `params` is valid memory of the size given; the context is this program's.
    let found = unsafe { fib_lookup(ctx.skb.skb.cast(), params, FIB_PARAMS_LEN, 0) };
    let action = match u32::try_from(found).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
                return false;
            }
            // SAFETY: a helper call with no memory arguments.
            unsafe { bpf_redirect(params.ifindex, 0) }
        }
        // The next hop's address is not resolved yet: the kernel resolves it and sends.
        // SAFETY: no parameters: the helper looks the next hop up itself.
        BPF_FIB_LKUP_RET_NO_NEIGH => unsafe {
            bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0)
        },
        _ => return false,
    };
    let redirected = action == i64::from(TC_ACT_REDIRECT);
    work.redirected = redirected;
    redirected
}

/// Whether this program run redirected its packet (reset by each run's first stage).
#[inline(always)]
pub fn redirected() -> bool {
    // SAFETY: this CPU's slot; only this program run uses it.
    SCRATCH
        .get_ptr(0)
        .is_some_and(|work| unsafe { (*work).redirected })
}

#[inline(always)]
fn fill(params: &mut FibParams, pkt: &Packet, ctx: &TcContext) {
    params.family = if pkt.ipv6 { AF_INET6 } else { AF_INET };
    params.l4_protocol = pkt.proto;
    params.sport = pkt.src_port_h.to_be();
    params.dport = pkt.dst_port_h.to_be();
    // No MTU check: the stack's own checks still apply to what leaves.
    params.__bindgen_anon_1.tot_len = 0;
    // SAFETY: `skb` points at the context the kernel passed this program.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_2.flowinfo = 0;
    if pkt.ipv6 {
        params.__bindgen_anon_3.ipv6_src = words(&pkt.src);
        params.__bindgen_anon_4.ipv6_dst = words(&pkt.dst);
    } else {
        params.__bindgen_anon_3.ipv4_src = v4_word(&pkt.src);
        params.__bindgen_anon_4.ipv4_dst = v4_word(&pkt.dst);
    }
    params.__bindgen_anon_5.tbid = 0;
}

/// An address as the helper's four network-order words.
#[inline(always)]
fn words(addr: &dataplane_abi::Addr) -> [u32; 4] {
    let word = |i: usize| {
        u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ])
    };
    [word(0), word(1), word(2), word(3)]
}

/// The IPv4 address of an IPv4-mapped one, as one network-order word.
#[inline(always)]
fn v4_word(addr: &dataplane_abi::Addr) -> u32 {
    u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])
}
