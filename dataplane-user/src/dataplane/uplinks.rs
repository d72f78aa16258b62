//! The uplink program: attached to TC ingress of the node's uplinks (the interfaces its
//! traffic from outside arrives on), it gives node ports, load-balancer and external IPs their
//! backends, and masqueraded connections their replies back (see the eBPF `nodeport` module).
//!
//! Like the pods' links, these are pinned, adopted by the next agent and removed by
//! `weir uninstall`; an uplink no longer named is detached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, MapData};
use dataplane_abi::{UplinkConfig, names};

use super::{Dataplane, DataplaneError, interface_name, map_err, typed_map};
use crate::compile::to_addr;
use crate::pins::Hook;

impl Dataplane {
    /// Makes the uplink program run on exactly the interfaces `ifindexes`: attached where it
    /// is missing, detached where it is no longer wanted. The first error stops it (what was
    /// done stays done: a later call finishes it).
    pub fn attach_uplinks(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        let gone: Vec<u32> = self
            .uplinks
            .keys()
            .filter(|i| !ifindexes.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            if let Some(held) = self.uplinks.remove(&ifindex) {
                held.detach();
            }
        }
        for &ifindex in ifindexes {
            if self.uplinks.contains_key(&ifindex) {
                continue;
            }
            let name = interface_name(ifindex).ok_or(DataplaneError::NoInterface { ifindex })?;
            let held = self.attach_one(ifindex, &name, Hook::FromWorld)?;
            self.uplinks.insert(ifindex, held);
        }
        Ok(())
    }

    /// Interfaces the uplink program is attached to.
    pub fn uplinks(&self) -> impl Iterator<Item = u32> + '_ {
        self.uplinks.keys().copied()
    }

    /// Sets the addresses connections from outside to backends on other nodes come from
    /// (masquerade), one per family; `None`: that family's are dropped (`nat_failed`).
    pub fn set_masquerade(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DataplaneError> {
        let or_zero = |ip: Option<IpAddr>| ip.map_or([0; 16], to_addr);
        let config = UplinkConfig {
            masquerade_v4: or_zero(v4.map(IpAddr::V4)),
            masquerade_v6: or_zero(v6.map(IpAddr::V6)),
        };
        let mut map: Array<&mut MapData, UplinkConfig> =
            typed_map(&mut self.ebpf, names::UPLINK_CONFIG, Array::try_from)?;
        map.set(0, config, 0).map_err(map_err(names::UPLINK_CONFIG))
    }
}
