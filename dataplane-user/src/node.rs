//! What this node hosts, read from the kernel of the agent's network namespace: its own
//! addresses, and the pod addresses routed to a local interface (as a CNI plugin routes them).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::compile::NodeView;

/// Reads the node's addresses and host routes (the node's name is the agent's to fill in).
pub fn read() -> io::Result<NodeView> {
    Ok(NodeView {
        host_addrs: host_addresses()?,
        local_routes: host_routes()?,
        node_name: None,
    })
}

/// Every address of every interface of this network namespace.
fn host_addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
            out.insert(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// # Safety
/// `sa` is null or points at a valid sockaddr of its family's size.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "read with read_unaligned: no alignment is assumed"
)]
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Host routes (/32, /128) through an interface other than loopback, with its ifindex.
fn host_routes() -> io::Result<BTreeMap<IpAddr, u32>> {
    let mut out = BTreeMap::new();
    // `thread-self`: the namespace of the calling thread; `/proc/net` follows the process's
    // main thread, which is wrong for a thread that entered another namespace.
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    for (ip, dev) in parse_ipv4_routes(&v4) {
        if let Some(ifindex) = ifindex(&dev) {
            out.insert(IpAddr::V4(ip), ifindex);
        }
    }
    // A kernel without IPv6 has no such file: no IPv6 pods then.
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    for (ip, dev) in parse_ipv6_routes(&v6) {
        if let Some(ifindex) = ifindex(&dev) {
            out.insert(IpAddr::V6(ip), ifindex);
        }
    }
    Ok(out)
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses
/// in host-order hex. Keeps /32 routes with no gateway.
fn parse_ipv4_routes(text: &str) -> Vec<(Ipv4Addr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dst, gw, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
            if *dev == "lo" || *mask != "FFFFFFFF" || *gw != "00000000" {
                return None;
            }
            // The kernel prints the network-order word as a native integer.
            let raw = u32::from_str_radix(dst, 16).ok()?;
            Some((Ipv4Addr::from(raw.to_ne_bytes()), (*dev).to_owned()))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dst dst_len src src_len next_hop metric refcnt use flags iface`.
/// Keeps /128 routes that are neither local addresses nor via a gateway.
fn parse_ipv6_routes(text: &str) -> Vec<(Ipv6Addr, String)> {
    const RTF_GATEWAY: u32 = 0x2;
    const RTF_LOCAL: u32 = 0x8000_0000;
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dst, len, flags, dev) = (f.first()?, f.get(1)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            if *dev == "lo" || *len != "80" || flags & (RTF_GATEWAY | RTF_LOCAL) != 0 {
                return None;
            }
            let raw = u128::from_str_radix(dst, 16).ok()?;
            let ip = Ipv6Addr::from(raw);
            // Multicast and link-local host routes are the kernel's own, not pods.
            if ip.is_multicast() || ip.is_unicast_link_local() {
                return None;
            }
            Some((ip, (*dev).to_owned()))
        })
        .collect()
}

fn ifindex(dev: &str) -> Option<u32> {
    let name = std::ffi::CString::new(dev).ok()?;
    let name: &CStr = &name;
    // SAFETY: `name` is a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_host_routes_without_gateway_are_pods() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    wv1\t0200630A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    eth0\t0000630A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                    eth0\t0300630A\t0100630A\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        let routes = parse_ipv4_routes(text);
        assert_eq!(
            routes,
            vec![(Ipv4Addr::new(10, 99, 0, 2), "wv1".to_owned())]
        );
    }

    #[test]
    fn ipv6_host_routes_skip_local_and_gateway_routes() {
        let text = "fd990000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 wv1\n\
                    fd990000000000000000000000000003 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 80200001 lo\n\
                    fd990000000000000000000000000004 80 00000000000000000000000000000000 00 fd990000000000000000000000000001 00000400 00000001 00000000 00000003 wv2\n";
        let routes = parse_ipv6_routes(text);
        assert_eq!(routes, vec![("fd99::2".parse().unwrap(), "wv1".to_owned())]);
    }
}
