//! Services reached from outside the node (node ports, load-balancer IPs, external IPs): the
//! uplink program's connection table and configuration.
//!
//! A client's connection to an external frontend gets a backend once, at the node it
//! reaches. A backend on this node is reached with the client's address kept: its reply leaves
//! through the pod's interface, where the pod's conntrack entry (written here, judged there)
//! puts the frontend back. A backend on another node is reached from this node's address
//! (masquerade), at a port chosen so that its reply, which comes back here, names one
//! connection.

use crate::Addr;

/// [`NodePortEntry::kind`] values.
pub mod nodeport_kind {
    /// Keyed by the client's packet (client, frontend): where it goes.
    pub const FORWARD: u8 = 1;
    /// Keyed by a masqueraded backend's reply (node address and port, backend): who asked.
    pub const REPLY: u8 = 2;
}

/// Value of `WEIR_NPNAT_V1`, keyed by a [`crate::CtKey`] whose `local` end is the client
/// (a [`nodeport_kind::FORWARD`] entry) or this node's masquerade address (a
/// [`nodeport_kind::REPLY`] entry), and whose `remote` end is the frontend or the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodePortEntry {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// [`nodeport_kind`].
    pub kind: u8,
    /// [`crate::ct_flags`] state bits (`CLOSING`, `SEEN_SYN`, `REPLIED`): the timeouts are
    /// conntrack's.
    pub flags: u8,
    /// Forward: the backend's port; reply: the client's. Host byte order.
    pub port_a_h: u16,
    /// Forward: the masquerade port (0 without masquerade); reply: the frontend's port.
    pub port_b_h: u16,
    /// Padding, always zero.
    pub _pad: u16,
    /// [`crate::ServiceValue::service`].
    pub service: u32,
    /// Forward: the backend id, to notice that the backend left its set; reply: 0.
    pub backend: u32,
    /// Forward: the backend; reply: the client.
    pub addr_a: Addr,
    /// Forward: this node's masquerade address, or zero when the backend is local (no
    /// masquerade); reply: the frontend.
    pub addr_b: Addr,
}
const _: () = assert!(size_of::<NodePortEntry>() == 56);

/// Value of the single entry of `WEIR_UPLINK_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UplinkConfig {
    /// The node's IPv4 address connections to backends on other nodes come from (IPv4-mapped);
    /// zero: none, such connections are dropped (`nat_failed`).
    pub masquerade_v4: Addr,
    /// The same for IPv6.
    pub masquerade_v6: Addr,
}
const _: () = assert!(size_of::<UplinkConfig>() == 32);

/// Ports masqueraded connections come from: above Linux's default ephemeral range
/// (`ip_local_port_range` 32768-60999), so that they never take a port a socket of the node
/// could be using towards the same backend.
pub mod masquerade_ports {
    /// First port of the range.
    pub const FIRST: u16 = 61_000;
    /// Number of ports: up to 65535.
    pub const COUNT: u16 = 4_536;
    /// Ports tried for one new connection before it is dropped (`nat_failed`): each try is one
    /// map insert; a clash needs every tried port of that backend taken.
    pub const TRIES: u32 = 8;

    /// The `attempt`-th candidate port for a connection whose hash is `hash`: a stride coprime
    /// with the range's size walks distinct ports.
    #[must_use]
    pub const fn candidate(hash: u32, attempt: u32) -> u16 {
        let offset = (hash.wrapping_add(attempt.wrapping_mul(STRIDE))) % COUNT as u32;
        #[expect(clippy::cast_possible_truncation, reason = "below COUNT")]
        let offset = offset as u16;
        FIRST + offset
    }

    /// Coprime with [`COUNT`] (4 536 = 2³·3⁴·7).
    const STRIDE: u32 = 2_741;
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: `repr(C)` plain old data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::NodePortEntry {}
    unsafe impl aya::Pod for super::UplinkConfig {}
}

#[cfg(test)]
mod tests {
    use super::masquerade_ports::{COUNT, FIRST, TRIES, candidate};

    #[test]
    fn masquerade_candidates_are_distinct_and_in_range() {
        for hash in [0, 1, 4_535, 4_536, 0xdead_beef, u32::MAX] {
            let mut ports = [0u16; TRIES as usize];
            for (attempt, port) in (0..TRIES).zip(ports.iter_mut()) {
                *port = candidate(hash, attempt);
                assert!(*port >= FIRST && u32::from(*port) < u32::from(FIRST) + u32::from(COUNT));
            }
            ports.sort_unstable();
            assert!(
                ports.windows(2).all(|w| w[0] != w[1]),
                "hash {hash}: {ports:?}"
            );
        }
    }
}
