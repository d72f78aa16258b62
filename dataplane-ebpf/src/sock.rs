//! Sockets of the node: its own processes reach Services too (kube-proxy does it with NAT in
//! the OUTPUT chain). Here `connect()` and `sendmsg()` to a frontend are pointed at a backend
//! before any packet exists, so the node's packets need no translation at all; `recvmsg()` and
//! `getpeername()` give the frontend back, so the application never sees the backend.
//!
//! Only sockets of the node's own network namespace are translated: a pod's connection is
//! translated at its interface, where policy judges it and flow events name its Service (and
//! where `ClientIP` affinity sees the pod's address). The backend is chosen as for a pod's
//! packet (affinity, then Maglev), with the socket's cookie as the hash; the node is one
//! client for `ClientIP` affinity. A connection to a
//! Service with no endpoint fails at once (`EPERM`), as kube-proxy's REJECT makes it fail.

use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::programs::SockAddrContext;
use dataplane_abi::{Addr, SockNatKey, SockNatValue, proto, v4_mapped};

use crate::service;
use crate::{SOCK_CONFIG, SOCK_NAT};

/// Let the call go on (translated or not).
pub const PROCEED: i32 = 1;
/// Refuse the call (`EPERM`).
pub const REFUSE: i32 = 0;

/// Address family of the socket a program runs for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// `connect()` or `sendmsg()`: a frontend as destination becomes a backend.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext, family: Family) -> i32 {
    if !of_the_node(ctx) {
        return PROCEED;
    }
    // SAFETY: the context the kernel passed this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let l4_proto = match sa.protocol {
        6 => proto::TCP,
        17 => proto::UDP,
        132 => proto::SCTP,
        _ => return PROCEED,
    };
    let frontend_addr = user_addr(sa, family);
    let frontend_port_h = user_port_h(sa);
    let Some(frontend) = service::frontend(&frontend_addr, frontend_port_h, l4_proto) else {
        return PROCEED;
    };
    // SAFETY: a helper taking this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "folding the cookie into a hash"
    )]
    let hash = (cookie ^ (cookie >> 32)) as u32;
    let node = [0; 16];
    let Ok((_, backend)) = service::choose(&frontend, &node, hash) else {
        return REFUSE;
    };
    set_user_addr(sa, family, &backend.addr);
    sa.user_port = u32::from(backend.port_h.to_be());
    let key = SockNatKey {
        cookie,
        addr: backend.addr,
        port_h: backend.port_h,
        _pad: [0; 6],
    };
    let value = SockNatValue {
        addr: frontend_addr,
        port_h: frontend_port_h,
        _pad: 0,
    };
    let _ = SOCK_NAT.insert(key, value, 0);
    PROCEED
}

/// `recvmsg()` or `getpeername()`: a backend as peer shows as the frontend the socket asked for.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext, family: Family) -> i32 {
    if !of_the_node(ctx) {
        return PROCEED;
    }
    // SAFETY: the context the kernel passed this program.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: a helper taking this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockNatKey {
        cookie,
        addr: user_addr(sa, family),
        port_h: user_port_h(sa),
        _pad: [0; 6],
    };
    // SAFETY: the value is copied out before the program run ends.
    if let Some(frontend) = unsafe { SOCK_NAT.get(key) }.copied() {
        set_user_addr(sa, family, &frontend.addr);
        sa.user_port = u32::from(frontend.port_h.to_be());
    }
    PROCEED
}

/// Whether the socket belongs to the node's own network namespace.
#[inline(always)]
fn of_the_node(ctx: &SockAddrContext) -> bool {
    let Some(config) = SOCK_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: a helper taking this program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    config.node_netns_cookie != 0 && netns == config.node_netns_cookie
}

#[inline(always)]
fn user_addr(sa: &aya_ebpf::bindings::bpf_sock_addr, family: Family) -> Addr {
    match family {
        Family::V4 => v4_mapped(sa.user_ip4.to_ne_bytes()),
        Family::V6 => {
            let mut addr = [0; 16];
            for (i, word) in sa.user_ip6.iter().enumerate() {
                addr[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            addr
        }
    }
}

#[inline(always)]
fn set_user_addr(sa: &mut aya_ebpf::bindings::bpf_sock_addr, family: Family, addr: &Addr) {
    match family {
        Family::V4 => sa.user_ip4 = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
        Family::V6 => {
            // Word by word: the verifier allows only 4-byte stores to these context fields.
            sa.user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
            sa.user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
            sa.user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
            sa.user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
        }
    }
}

/// The port of a socket address: network byte order in the low 16 bits of `user_port`.
#[inline(always)]
fn user_port_h(sa: &aya_ebpf::bindings::bpf_sock_addr) -> u16 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits"
    )]
    u16::from_be(sa.user_port as u16)
}
