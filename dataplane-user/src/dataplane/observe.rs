//! The dataplane's observability side: turning flow events on and off, handing the flow ring
//! to its reader, read-only handles on the policy maps (for `explain`, away from the sync
//! loop), and test runs on a chosen interface.

use std::num::NonZeroU32;
use std::os::fd::AsFd as _;
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use dataplane_abi::{
    Addr, CidrInfo, Config, EndpointInfo, ObserveConfig, ObserveCounter, PolicyKey, PolicyValue,
    SLOT_PREFIX_BITS, Slotted, names, observe_flags, slot_of,
};

use super::{Dataplane, DataplaneError, map_err, typed_map};

/// The flow-event ring buffer, as its one reader holds it.
pub type FlowRing = RingBuf<MapData>;

/// How many flow events the programs may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvents {
    /// None: the programs skip the event path after one branch.
    Off,
    /// At most `per_sec` events per second on each CPU, after a burst of `burst`.
    Limited {
        /// Events per second on each CPU, sustained.
        per_sec: NonZeroU32,
        /// Events a CPU may send at once after a quiet spell.
        burst: NonZeroU32,
    },
    /// Every event (tests and benchmarks: a flood of them is the point there).
    Unlimited,
}

impl FlowEvents {
    /// The map value the programs read.
    pub fn config(self) -> ObserveConfig {
        let (flags, event_cost_ns, burst_ns) = match self {
            Self::Off => (0, 0, 0),
            Self::Unlimited => (observe_flags::FLOW_EVENTS, 0, 0),
            Self::Limited { per_sec, burst } => {
                // At least 1 ns: a cost of 0 would mean "no limit" to the programs.
                let cost = (1_000_000_000 / u64::from(per_sec.get())).max(1);
                (
                    observe_flags::FLOW_EVENTS,
                    cost,
                    cost.saturating_mul(u64::from(burst.get())),
                )
            }
        };
        ObserveConfig {
            flags,
            _pad: 0,
            event_cost_ns,
            burst_ns,
        }
    }
}

impl Dataplane {
    /// Tells the programs whether, and how many, flow events to send. Turn them on only once
    /// something reads the ring (see [`Dataplane::take_flow_ring`]).
    pub fn set_flow_events(&mut self, events: FlowEvents) -> Result<(), DataplaneError> {
        let mut map: Array<&mut MapData, ObserveConfig> =
            typed_map(&mut self.ebpf, names::OBSERVE, Array::try_from)?;
        map.set(0, events.config(), 0)
            .map_err(map_err(names::OBSERVE))
    }

    /// The flow-event ring, for its one reader. A second call finds it gone.
    pub fn take_flow_ring(&mut self) -> Result<FlowRing, DataplaneError> {
        let map = self
            .ebpf
            .take_map(names::FLOWS)
            .ok_or(DataplaneError::MissingMap { name: names::FLOWS })?;
        RingBuf::try_from(map).map_err(map_err(names::FLOWS))
    }

    /// Flow events sent, held back by the rate limiter and lost to a full ring, by
    /// [`ObserveCounter`] name, summed over CPUs.
    pub fn flow_event_counters(
        &self,
    ) -> Result<std::collections::BTreeMap<&'static str, u64>, DataplaneError> {
        let sums = self.per_cpu_sums(names::OBSERVE_COUNTERS, ObserveCounter::COUNT)?;
        Ok(ObserveCounter::ALL
            .iter()
            .map(|c| c.name())
            .zip(sums)
            .collect())
    }

    /// Read-only handles on the maps, usable away from this value (another task, another
    /// thread): the descriptors are duplicated.
    pub fn reader(&self) -> Result<MapReader, DataplaneError> {
        Ok(MapReader {
            config: Array::try_from(self.dup(names::CONFIG)?).map_err(map_err(names::CONFIG))?,
            endpoints: HashMap::try_from(self.dup(names::ENDPOINTS)?)
                .map_err(map_err(names::ENDPOINTS))?,
            cidrs: LpmTrie::try_from(self.dup(names::CIDRS)?).map_err(map_err(names::CIDRS))?,
            policy: HashMap::try_from(self.dup(names::POLICY)?).map_err(map_err(names::POLICY))?,
            flow_counters: PerCpuArray::try_from(self.dup(names::OBSERVE_COUNTERS)?)
                .map_err(map_err(names::OBSERVE_COUNTERS))?,
        })
    }

    fn dup(&self, name: &'static str) -> Result<Map, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let data: &MapData = match map {
            Map::HashMap(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) | Map::Array(d) => d,
            _ => {
                return Err(DataplaneError::Map {
                    name,
                    source: MapError::InvalidMapType { map_type: u32::MAX },
                });
            }
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| map_err(name)(MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    }

    /// [`Dataplane::test_run`] with the skb on interface `ifindex` of the calling thread's
    /// network namespace, as if the packet crossed it: the anti-spoofing check then sees that
    /// interface. Needs Linux 5.10 (`ifindex` in the test run's `__sk_buff`).
    pub fn test_run_on(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> Result<(i32, Duration), DataplaneError> {
        // `struct __sk_buff` up to and including `ifindex` (offset 40); the kernel zero-fills
        // the rest and refuses any field it does not accept as input.
        const IFINDEX_OFFSET: usize = 40;
        let mut ctx = [0u8; IFINDEX_OFFSET + 4];
        ctx[IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
        self.run_program(name, frame, Some(&ctx), None, repeat)
            .map(|(action, duration, _)| (action, duration))
    }
}

/// Read-only handles on the kernel's policy maps and the flow-event counters, independent of
/// the [`Dataplane`] they came from.
pub struct MapReader {
    config: Array<MapData, Config>,
    endpoints: HashMap<MapData, Slotted<Addr>, EndpointInfo>,
    cidrs: LpmTrie<MapData, Slotted<Addr>, CidrInfo>,
    policy: HashMap<MapData, Slotted<PolicyKey>, PolicyValue>,
    flow_counters: PerCpuArray<MapData, u64>,
}

impl MapReader {
    /// The slot of the policy maps packets read now (the current generation's). A lookup
    /// sequence that must see one generation reads it once and passes it to each lookup.
    pub fn slot(&self) -> Result<u32, DataplaneError> {
        let config = self.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        Ok(slot_of(config.policy_epoch))
    }

    /// `WEIR_EP_V2[slot, addr]`.
    pub fn endpoint(&self, slot: u32, addr: &Addr) -> Result<Option<EndpointInfo>, DataplaneError> {
        let key = Slotted { slot, key: *addr };
        found(self.endpoints.get(&key, 0), names::ENDPOINTS)
    }

    /// The longest prefix of `WEIR_CIDR_V2`'s `slot` holding `addr`, as the programs look it up.
    pub fn cidr(&self, slot: u32, addr: &Addr) -> Result<Option<CidrInfo>, DataplaneError> {
        let key = Key::new(SLOT_PREFIX_BITS + 128, Slotted { slot, key: *addr });
        found(self.cidrs.get(&key, 0), names::CIDRS)
    }

    /// `WEIR_POL_V2[slot, key]`.
    pub fn policy(
        &self,
        slot: u32,
        key: &PolicyKey,
    ) -> Result<Option<PolicyValue>, DataplaneError> {
        let key = Slotted { slot, key: *key };
        found(self.policy.get(&key, 0), names::POLICY)
    }

    /// Like [`Dataplane::flow_event_counters`].
    pub fn flow_event_counters(
        &self,
    ) -> Result<std::collections::BTreeMap<&'static str, u64>, DataplaneError> {
        ObserveCounter::ALL
            .iter()
            .map(|c| {
                let sum = self
                    .flow_counters
                    .get(&(*c as u32), 0)
                    .map_err(map_err(names::OBSERVE_COUNTERS))?
                    .iter()
                    .sum();
                Ok((c.name(), sum))
            })
            .collect()
    }
}

/// A lookup's value, `None` for a missing key.
fn found<V>(result: Result<V, MapError>, name: &'static str) -> Result<Option<V>, DataplaneError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { name, source }),
    }
}
