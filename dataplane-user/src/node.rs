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
    Ok(interface_addresses()?
        .into_iter()
        .map(|(_, ip)| ip)
        .collect())
}

/// Every address of this network namespace with its interface's name, in the kernel's order.
fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
            // SAFETY: a node's name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
            out.push((name.to_string_lossy().into_owned(), ip));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Which interfaces are the node's uplinks, where traffic from outside arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkChoice {
    /// The interfaces of the default routes (IPv4 and IPv6), as Cilium detects its devices.
    DefaultRoutes,
    /// These interfaces, by name.
    Named(Vec<String>),
    /// None: Services are reached from inside the node only.
    Off,
}

/// The node's uplinks, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uplinks {
    /// Interface indexes and names, in the order chosen.
    pub interfaces: Vec<(u32, String)>,
    /// The first global IPv4 address of the uplinks, in that order: connections from
    /// outside to backends on other nodes come from it (masquerade).
    pub masquerade_v4: Option<Ipv4Addr>,
    /// The same for IPv6.
    pub masquerade_v6: Option<Ipv6Addr>,
}

/// Errors resolving the uplinks.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// An interface named with `--uplink` does not exist in this network namespace.
    #[error("uplink {0}: no such interface in this network namespace")]
    NoSuchInterface(String),
    /// Reading the routes or addresses failed.
    #[error("reading the uplinks' routes and addresses: {0}")]
    Io(#[from] io::Error),
}

/// Resolves `choice` in this network namespace.
pub fn uplinks(choice: &UplinkChoice) -> Result<Uplinks, UplinkError> {
    let names = match choice {
        UplinkChoice::Off => return Ok(Uplinks::default()),
        UplinkChoice::Named(names) => names.clone(),
        UplinkChoice::DefaultRoutes => default_route_interfaces()?,
    };
    let mut out = Uplinks::default();
    for name in names {
        let index = ifindex(&name).ok_or_else(|| UplinkError::NoSuchInterface(name.clone()))?;
        if !out.interfaces.iter().any(|(i, _)| *i == index) {
            out.interfaces.push((index, name));
        }
    }
    let addresses = interface_addresses()?;
    let on_uplinks = out.interfaces.iter().flat_map(|(_, uplink)| {
        addresses
            .iter()
            .filter(move |(name, _)| name == uplink)
            .map(|(_, ip)| *ip)
    });
    out.masquerade_v4 = on_uplinks.clone().find_map(|ip| match ip {
        IpAddr::V4(v4) if is_global_v4(v4) => Some(v4),
        _ => None,
    });
    out.masquerade_v6 = on_uplinks.clone().find_map(|ip| match ip {
        IpAddr::V6(v6) if is_global_v6(v6) => Some(v6),
        _ => None,
    });
    Ok(out)
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_multicast())
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_loopback() || ip.is_unicast_link_local() || ip.is_unspecified() || ip.is_multicast())
}

/// The interfaces of this namespace's default routes, IPv4 first.
fn default_route_interfaces() -> io::Result<Vec<String>> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    Ok(parse_default_routes(&v4, &v6))
}

/// Interfaces of the default routes in `/proc/net/route` (destination and mask zero) and
/// `/proc/net/ipv6_route` (`::/0`), in that order.
fn parse_default_routes(v4: &str, v6: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let v4_defaults = v4.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dev, dst, mask) = (f.first()?, f.get(1)?, f.get(7)?);
        (*dst == "00000000" && *mask == "00000000").then(|| (*dev).to_owned())
    });
    let v6_defaults = v6.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dst, len, dev) = (f.first()?, f.get(1)?, f.get(9)?);
        (dst.chars().all(|c| c == '0') && *len == "00" && *dev != "lo").then(|| (*dev).to_owned())
    });
    for dev in v4_defaults.chain(v6_defaults) {
        if !out.contains(&dev) {
            out.push(dev);
        }
    }
    out
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
    #[test]
    fn default_routes_of_both_families_name_their_interfaces_once() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth1\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(super::parse_default_routes(v4, v6), ["eth0", "eth1"]);
        assert!(super::parse_default_routes("Iface\n", "").is_empty());
    }

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
