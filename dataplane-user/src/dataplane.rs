//! The thin syscall layer: loads the eBPF object, writes the difference between what the maps
//! hold and a new [`MapSet`], and attaches the programs to local pods' interfaces.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfError, EbpfLoader};
use dataplane_abi::{
    Addr, CidrInfo, Config, CtEntry, CtKey, DropReason, EndpointInfo, NodePortEntry, PassReason,
    PolicyKey, PolicyValue, SLOT_PREFIX_BITS, Slotted, capacity, ct_timeout, names, programs,
    slot_of,
};

use crate::compile::MapSet;
use crate::pins::{Hook, Pins};

mod batch;
mod debug_log;
mod mapped;
mod observe;
mod services;
mod sockets;
mod uplinks;
pub use debug_log::{DebugLog, TracingLog};
pub use observe::{FlowEvents, FlowRing, MapReader};
use services::{ServiceArrays, ServiceDiff};
pub use sockets::netns_cookie;

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));

/// Errors of the kernel layer.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel refused the eBPF object.
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    /// A program is missing from the object, or could not be loaded or attached.
    #[error("program {name}")]
    Program {
        /// Name of the program (see [`dataplane_abi::programs`]).
        name: &'static str,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// The eBPF object lacks a map the agent needs (an object of another version).
    #[error("map {name} is missing from the eBPF object")]
    MissingMap {
        /// Name of the map (see [`dataplane_abi::names`]).
        name: &'static str,
    },
    /// A map could not be opened, read or written.
    #[error("map {name}")]
    Map {
        /// Name of the map (see [`dataplane_abi::names`]).
        name: &'static str,
        /// The cause.
        #[source]
        source: MapError,
    },
    /// A local pod's interface has no name: it is gone.
    #[error("interface {ifindex} has no name (was the pod deleted?)")]
    NoInterface {
        /// The interface's index.
        ifindex: u32,
    },
    /// A pin in bpffs could not be created, read or removed.
    #[error("pin {path}")]
    Pin {
        /// Path of the pin.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The link attaching a program could not be made a file-descriptor link, to be pinned.
    #[error("link of program {name}")]
    Link {
        /// Name of the program (see [`dataplane_abi::programs`]).
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// An array the agent writes through a memory mapping could not be mapped or written.
    #[error("mapped array {name}")]
    MappedArray {
        /// Name of the map (see [`dataplane_abi::names`]).
        name: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A compiled Maglev table does not have its tier's number of slots (a compiler bug).
    #[error("Maglev table of backend set {set} has {slots} slots, its map {expected}")]
    TableSize {
        /// The backend set id.
        set: u32,
        /// Slots of the compiled table.
        slots: usize,
        /// Slots of a table of its tier.
        expected: usize,
    },
    /// A compiled small Maglev table names more backends than its compact form holds (a
    /// compiler bug).
    #[error("Maglev table of backend set {set} names more than the {max} backends of its map")]
    TableBackends {
        /// The backend set id.
        set: u32,
        /// Backends a small table holds.
        max: usize,
    },
    /// The programs' debug log could not be opened.
    #[error("eBPF debug log")]
    DebugLog {
        /// The cause.
        #[source]
        source: aya_log::Error,
    },
    /// The cgroup to attach the socket programs to could not be opened.
    #[error("cgroup {path}")]
    Cgroup {
        /// The cgroup's folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A link pinned by an earlier agent could not be taken over.
    #[error("adopting the pinned link {path}")]
    Adopt {
        /// Path of the pinned link.
        path: PathBuf,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
}

/// What one [`Dataplane::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries added or changed, over the policy, CIDR, endpoint and Service maps.
    pub upserts: usize,
    /// Entries deleted, over the same maps.
    pub removals: usize,
    /// Interfaces the programs were newly attached to.
    pub attached: usize,
    /// Interfaces the programs were detached from.
    pub detached: usize,
}

/// Connection tracking after a collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Entries still live.
    pub live: usize,
    /// Expired entries this collection deleted.
    pub collected: usize,
    /// Entries the table holds; past it, the least recently used connection is evicted and
    /// judged as new on its next packet.
    pub capacity: u32,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter for a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Per-reason packet counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets passed, by [`dataplane_abi::PassReason::name`].
    pub passed: BTreeMap<&'static str, u64>,
    /// Packets dropped, by [`dataplane_abi::DropReason::name`].
    pub dropped: BTreeMap<&'static str, u64>,
}

/// One attached program, held open by the agent; pinned links also stay after it exits.
struct Held {
    link: FdLink,
    pin: Option<PathBuf>,
}

impl Held {
    /// Detaches: removing the pin and closing the last descriptor destroys a TCX link.
    fn detach(self) {
        if let Some(pin) = &self.pin
            && let Err(e) = std::fs::remove_file(pin)
        {
            tracing::warn!(path = %pin.display(), error = %e, "removing a link pin");
        }
        drop(self.link);
    }
}

/// How long after a flip the slot it left may still be read by a program run that started
/// before it (runs last microseconds; this is the margin).
const FLIP_GRACE: Duration = Duration::from_millis(20);

/// The loaded programs and maps, and what the agent last wrote to them.
pub struct Dataplane {
    /// The Service arrays, mapped into this process; declared before `ebpf`, whose maps they
    /// map (a mapping keeps its map alive anyway).
    service_arrays: ServiceArrays,
    ebpf: Ebpf,
    /// What the maps hold: the Service maps, and the policy maps' active slot.
    applied: MapSet,
    /// What the policy maps' other slot holds (the generation before; only the `endpoints`,
    /// `cidrs` and `policy` fields mean anything): the base the next change is written over.
    standby: MapSet,
    /// When the last flip happened: packets that read the epoch just before it may still be
    /// reading the slot it left, which is not rewritten before `FLIP_GRACE` has passed.
    last_flip: Option<Instant>,
    links: BTreeMap<u32, [Held; 2]>,
    /// The uplink program's links, by interface.
    uplinks: BTreeMap<u32, Held>,
    /// Cgroup links of the socket programs, when attached with pins.
    sockets: Vec<Held>,
    epoch: u32,
    /// [`dataplane_abi::config_flags`] bits, written with every epoch.
    config_flags: u32,
    pins: Option<Pins>,
}

impl Dataplane {
    /// Loads the programs with fresh, unpinned maps: everything goes away with this value.
    /// For tests and benchmarks.
    pub fn load() -> Result<Self, DataplaneError> {
        let ebpf = Ebpf::load(OBJECT).map_err(DataplaneError::Load)?;
        let mut dp = Self::with_programs(ebpf, None)?;
        dp.bump_epoch()?;
        Ok(dp)
    }

    /// Loads the programs on the maps pinned under `pins` (creating and pinning them on first
    /// start), reads back what the maps hold, and takes over the pinned links: the new
    /// programs replace the old ones inside each link atomically, so enforcement never stops.
    pub fn load_pinned(pins: &Pins) -> Result<Self, DataplaneError> {
        pins.prepare().map_err(|source| DataplaneError::Pin {
            path: pins.root().to_path_buf(),
            source,
        })?;
        let mut loader = EbpfLoader::new();
        for name in crate::pins::PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
        let ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let mut dp = Self::with_programs(ebpf, Some(pins.clone()))?;
        dp.epoch = dp.read_epoch()?;
        (dp.applied, dp.standby) = dp.read_back(dp.epoch)?;
        dp.adopt_links(pins)?;
        // A new generation (the same state, in the other slot): connections are checked
        // again by this agent's programs.
        let current = dp.applied.clone();
        dp.write_maps(&current, true)?;
        Ok(dp)
    }

    fn with_programs(mut ebpf: Ebpf, pins: Option<Pins>) -> Result<Self, DataplaneError> {
        for name in [
            programs::FROM_POD,
            programs::TO_POD,
            programs::FROM_WORLD,
            programs::FLOOR,
        ] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(Self {
            service_arrays: ServiceArrays::map(&ebpf)?,
            ebpf,
            applied: MapSet::default(),
            standby: MapSet::default(),
            last_flip: None,
            links: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            sockets: Vec::new(),
            epoch: 0,
            config_flags: 0,
            pins,
        })
    }

    /// The contents of the maps the agent writes, as the kernel holds them: the active state
    /// (the Service maps, and the policy maps' slot of the current epoch) and the standby slot.
    fn read_back(&mut self, epoch: u32) -> Result<(MapSet, MapSet), DataplaneError> {
        let mut slots = [MapSet::default(), MapSet::default()];
        for entry in &self.endpoint_map()? {
            let (k, v) = entry.map_err(map_err(names::ENDPOINTS))?;
            if let Some(slot) = slots.get_mut(k.slot as usize) {
                Arc::make_mut(&mut slot.endpoints).insert(k.key, v);
            }
        }
        for entry in &self.cidr_map()? {
            let (k, v) = entry.map_err(map_err(names::CIDRS))?;
            let data = k.data();
            if let Some(slot) = slots.get_mut(data.slot as usize) {
                let len = k.prefix_len().saturating_sub(SLOT_PREFIX_BITS);
                Arc::make_mut(&mut slot.cidrs).insert((len, data.key), v);
            }
        }
        for entry in &self.policy_map()? {
            let (k, v) = entry.map_err(map_err(names::POLICY))?;
            if let Some(slot) = slots.get_mut(k.slot as usize) {
                Arc::make_mut(&mut slot.policy).insert(k.key, v);
            }
        }
        let [zero, one] = slots;
        let (mut out, standby) = if slot_of(epoch) == 0 {
            (zero, one)
        } else {
            (one, zero)
        };
        // The signatures behind these ids are not in the maps: new ids start above them.
        let max_class = [&out, &standby]
            .into_iter()
            .flat_map(|set| {
                set.endpoints
                    .values()
                    .map(|e| e.peer_class)
                    .chain(set.cidrs.values().map(|c| c.peer_class))
                    .chain(
                        set.policy
                            .keys()
                            .map(|k| k.peer_class)
                            .filter(|c| *c != dataplane_abi::PEER_CLASS_ANY),
                    )
            })
            .max()
            .unwrap_or(0);
        out.class_ids = Arc::new(crate::compile::ClassIds::above(max_class));
        self.read_back_services(&mut out)?;
        Ok((out, standby))
    }

    fn read_epoch(&mut self) -> Result<u32, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .ok_or(DataplaneError::MissingMap {
                name: names::CONFIG,
            })?;
        let config: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(map_err(names::CONFIG))?;
        Ok(config
            .get(&0, 0)
            .map_err(map_err(names::CONFIG))?
            .policy_epoch)
    }

    /// Puts this process's programs into every pinned link. A link whose interface is gone
    /// (the kernel destroyed it) is unpinned.
    fn adopt_links(&mut self, pins: &Pins) -> Result<(), DataplaneError> {
        let pinned = pins.pinned_links().map_err(|source| DataplaneError::Pin {
            path: pins.root().to_path_buf(),
            source,
        })?;
        let mut by_ifindex: BTreeMap<u32, Vec<(Hook, Held)>> = BTreeMap::new();
        for (ifindex, hook, path) in pinned {
            match self.adopt_link(hook, &path) {
                Ok(held) if hook == Hook::FromWorld => {
                    self.uplinks.insert(ifindex, held);
                }
                Ok(held) => by_ifindex.entry(ifindex).or_default().push((hook, held)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "dropping a stale link pin");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for (ifindex, mut held) in by_ifindex {
            held.sort_by_key(|(hook, _)| *hook);
            let mut it = held.into_iter();
            match (it.next(), it.next()) {
                (Some((Hook::FromPod, from)), Some((Hook::ToPod, to))) => {
                    self.links.insert(ifindex, [from, to]);
                }
                // Half a pair: attach afresh on the next sync.
                (a, b) => a.into_iter().chain(b).for_each(|(_, h)| h.detach()),
            }
        }
        Ok(())
    }

    fn adopt_link(&mut self, hook: Hook, path: &std::path::Path) -> Result<Held, DataplaneError> {
        let adopt_err = |source| DataplaneError::Adopt {
            path: path.to_path_buf(),
            source,
        };
        let fd_link: FdLink = PinnedLink::from_pin(path).map_err(adopt_err)?.into();
        let link = SchedClassifierLink::try_from(fd_link).map_err(adopt_err)?;
        let name = match hook {
            Hook::FromPod => programs::FROM_POD,
            Hook::ToPod => programs::TO_POD,
            Hook::FromWorld => programs::FROM_WORLD,
        };
        let prog = program(&mut self.ebpf, name)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link = FdLink::try_from(link).map_err(adopt_err)?;
        Ok(Held {
            link,
            pin: Some(path.to_path_buf()),
        })
    }

    /// What the maps hold now, as last written.
    pub fn applied(&self) -> &MapSet {
        &self.applied
    }

    /// Interfaces the programs are attached to.
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    /// Makes the maps hold `desired`, then attaches to new local pods and detaches from gone
    /// ones. Maps are written before attaching, so a new pod's first packet finds its entries.
    pub fn apply(&mut self, desired: &MapSet) -> Result<ApplyStats, DataplaneError> {
        let mut stats = self.sync_maps(desired)?;
        let (attached, detached) = self.sync_attachments(desired);
        stats.attached = attached;
        stats.detached = detached;
        Ok(stats)
    }

    /// Makes the maps hold `desired`, atomically for policy: the new generation is written
    /// into the policy maps' standby slot, which no packet reads, then one write of the epoch
    /// flips every packet to it; a packet sees the old state or the new, never a mix. The
    /// Service maps, read in one chain per packet (frontend, table, backend), get their
    /// additions before the flip and their removals after it. When the policy maps do not
    /// change (Services only), there is no new generation: no flip.
    ///
    /// On failure nothing a packet reads has changed (Service additions are undone) and the
    /// standby slot is read back, to be the base of the next attempt.
    pub fn sync_maps(&mut self, desired: &MapSet) -> Result<ApplyStats, DataplaneError> {
        // A change of Services only (an endpoint moving) leaves the policy slots alone: no
        // flip to wait for, and established connections are not judged again.
        let flip = !same_policy(&self.applied, desired);
        self.write_maps(desired, flip)
    }

    /// [`Self::sync_maps`], flipping to the other policy slot when `flip` says so.
    fn write_maps(&mut self, desired: &MapSet, flip: bool) -> Result<ApplyStats, DataplaneError> {
        if flip {
            self.wait_for_readers_of_standby();
        }
        let applied = std::mem::take(&mut self.applied);
        let standby = std::mem::take(&mut self.standby);
        let services = ServiceDiff::new(&applied, desired);
        let written = self.write_service_upserts(&services).and_then(|()| {
            if flip {
                self.write_policy_slot(&standby, desired)
            } else {
                Ok(ApplyStats::default())
            }
        });
        let stats = match written {
            Ok(stats) => stats,
            Err(err) => {
                // Best effort: entries that failed to write in one direction rarely fail back.
                let undo = ServiceDiff::new(desired, &applied);
                let _ = self.write_service_upserts(&undo);
                let _ = self.write_service_removals(&undo);
                self.applied = applied;
                self.standby = self.read_back(self.epoch.wrapping_add(1))?.0;
                return Err(err);
            }
        };
        if flip {
            self.bump_epoch()?;
            self.last_flip = Some(Instant::now());
        }
        let removed = self.write_service_removals(&services);
        let stats = ApplyStats {
            upserts: stats.upserts + services.upserts(),
            removals: stats.removals + services.removals(),
            ..ApplyStats::default()
        };
        self.standby = if flip { applied } else { standby };
        self.applied = desired.clone();
        removed.map(|()| stats)
    }

    /// A program run lasts microseconds; one that read the epoch just before the last flip
    /// may still be looking up the slot it left. Changes come far apart (debounced), so this
    /// rarely waits at all.
    fn wait_for_readers_of_standby(&self) {
        if let Some(rest) = self
            .last_flip
            .and_then(|flip| FLIP_GRACE.checked_sub(flip.elapsed()))
        {
            std::thread::sleep(rest);
        }
    }

    /// Writes `to`'s policy state into the standby slot, which holds `from`.
    fn write_policy_slot(
        &mut self,
        from: &MapSet,
        to: &MapSet,
    ) -> Result<ApplyStats, DataplaneError> {
        let slot = slot_of(self.epoch.wrapping_add(1));
        let policy = diff(&from.policy, &to.policy);
        let cidrs = diff(&from.cidrs, &to.cidrs);
        let endpoints = diff(&from.endpoints, &to.endpoints);
        let stats = ApplyStats {
            upserts: policy.upserts.len() + cidrs.upserts.len() + endpoints.upserts.len(),
            removals: policy.removals.len() + cidrs.removals.len() + endpoints.removals.len(),
            ..ApplyStats::default()
        };
        let prefix = |len: u32, key: Addr| Key::new(SLOT_PREFIX_BITS + len, Slotted { slot, key });
        {
            let mut map = self.policy_map()?;
            for (k, v) in &policy.upserts {
                map.insert(Slotted { slot, key: *k }, *v, 0)
                    .map_err(map_err(names::POLICY))?;
            }
            for k in &policy.removals {
                remove_existing(map.remove(&Slotted { slot, key: *k }))
                    .map_err(map_err(names::POLICY))?;
            }
        }
        {
            let mut map = self.cidr_map()?;
            for ((len, addr), v) in &cidrs.upserts {
                map.insert(&prefix(*len, *addr), *v, 0)
                    .map_err(map_err(names::CIDRS))?;
            }
            for (len, addr) in &cidrs.removals {
                remove_existing(map.remove(&prefix(*len, *addr))).map_err(map_err(names::CIDRS))?;
            }
        }
        let mut map = self.endpoint_map()?;
        for (k, v) in &endpoints.upserts {
            map.insert(Slotted { slot, key: *k }, *v, 0)
                .map_err(map_err(names::ENDPOINTS))?;
        }
        for k in &endpoints.removals {
            remove_existing(map.remove(&Slotted { slot, key: *k }))
                .map_err(map_err(names::ENDPOINTS))?;
        }
        Ok(stats)
    }

    /// Flips the programs to the next generation (and its slot): tracked connections are
    /// checked again.
    fn bump_epoch(&mut self) -> Result<(), DataplaneError> {
        // Always by one, so that the slot alternates; 0 (what programs read when the config
        // entry is missing) is skipped for 2, of the same parity.
        self.epoch = match self.epoch.wrapping_add(1) {
            0 => 2,
            next => next,
        };
        self.write_config()
    }

    /// Writes the epoch and the flags: one array entry, the one word packets need together
    /// (the epoch and its slot) written whole.
    fn write_config(&mut self) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .ok_or(DataplaneError::MissingMap {
                name: names::CONFIG,
            })?;
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(map_err(names::CONFIG))?;
        config
            .set(
                0,
                Config {
                    policy_epoch: self.epoch,
                    flags: self.config_flags,
                },
                0,
            )
            .map_err(map_err(names::CONFIG))
    }

    /// Attaches both programs to every local pod's interface not yet attached, and detaches
    /// from interfaces no longer hosting a pod. An interface that vanished meanwhile (pod
    /// deleted) is skipped: the next sync sees the routes without it.
    pub fn sync_attachments(&mut self, desired: &MapSet) -> (usize, usize) {
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|ifindex| !desired.local_pods.contains_key(ifindex))
            .copied()
            .collect();
        for ifindex in &gone {
            if let Some([from, to]) = self.links.remove(ifindex) {
                from.detach();
                to.detach();
            }
        }
        let mut attached = 0;
        for ifindex in desired.local_pods.keys() {
            if self.links.contains_key(ifindex) {
                continue;
            }
            match self.attach(*ifindex) {
                Ok(links) => {
                    self.links.insert(*ifindex, links);
                    attached += 1;
                }
                Err(err) => tracing::warn!(ifindex, error = %err, "cannot attach"),
            }
        }
        (attached, gone.len())
    }

    fn attach(&mut self, ifindex: u32) -> Result<[Held; 2], DataplaneError> {
        let name = interface_name(ifindex).ok_or(DataplaneError::NoInterface { ifindex })?;
        let from = self.attach_one(ifindex, &name, Hook::FromPod)?;
        // On failure `from` drops here and detaches: never half a pair.
        let to = self.attach_one(ifindex, &name, Hook::ToPod)?;
        Ok([from, to])
    }

    fn attach_one(
        &mut self,
        ifindex: u32,
        iface: &str,
        hook: Hook,
    ) -> Result<Held, DataplaneError> {
        let (name, attach_type) = match hook {
            Hook::FromPod => (programs::FROM_POD, TcAttachType::Ingress),
            Hook::ToPod => (programs::TO_POD, TcAttachType::Egress),
            Hook::FromWorld => (programs::FROM_WORLD, TcAttachType::Ingress),
        };
        let prog = program(&mut self.ebpf, name)?;
        let id = prog
            .attach(iface, attach_type)
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link =
            FdLink::try_from(link).map_err(|source| DataplaneError::Link { name, source })?;
        let Some(pins) = &self.pins else {
            return Ok(Held { link, pin: None });
        };
        let path = pins.link(ifindex, hook);
        // A pin left by a link the kernel destroyed (the interface was deleted and its index
        // reused) is stale: replace it.
        let _ = std::fs::remove_file(&path);
        let pinned = link.pin(&path).map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok(Held {
            link: pinned.into(),
            pin: Some(path),
        })
    }

    /// Runs `name` once per `repeat` on `frame` with `BPF_PROG_TEST_RUN`: the TC action and
    /// the kernel's mean time per run. The skb's interface is loopback (ifindex 1).
    pub fn test_run(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(i32, Duration), DataplaneError> {
        self.run_program(name, frame, None, None, repeat)
            .map(|(action, duration, _)| (action, duration))
    }

    /// Runs `name` once on `frame` with `BPF_PROG_TEST_RUN`: the TC action and the frame as the
    /// program left it (translated, for a packet to a Service).
    pub fn test_run_output(
        &mut self,
        name: &'static str,
        frame: &[u8],
    ) -> Result<(i32, Vec<u8>), DataplaneError> {
        // Room for what a program may add (the reply it builds to reject a connection).
        let mut out = vec![0; frame.len() + 256];
        let (action, _, len) = self.run_program(name, frame, None, Some(&mut out), 1)?;
        out.truncate(len);
        Ok((action, out))
    }

    /// `BPF_PROG_TEST_RUN` of `name` on `frame`, with `ctx` as the input `__sk_buff` if any,
    /// the output frame written to `out` if given: the action, the mean time per run, and the
    /// output frame's length.
    fn run_program(
        &mut self,
        name: &'static str,
        frame: &[u8],
        ctx: Option<&[u8]>,
        out: Option<&mut [u8]>,
        repeat: u32,
    ) -> Result<(i32, Duration, usize), DataplaneError> {
        let prog = program(&mut self.ebpf, name)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: out,
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::default()
        };
        let result = prog
            .test_run(opts)
            .map_err(|source| DataplaneError::Program { name, source })?;
        #[expect(
            clippy::cast_possible_wrap,
            reason = "TC actions are small signed numbers the kernel returns as u32"
        )]
        Ok((
            result.return_value as i32,
            result.duration,
            result.data_size_out as usize,
        ))
    }

    /// Deletes the connection-tracking entries whose timeout has passed (the programs only
    /// notice expiry when a connection's next packet comes, which for most never does), and
    /// those of the uplink's table of connections from outside (same timeouts; they are not
    /// counted in the figures, which are conntrack's).
    pub fn collect_conntrack(&mut self) -> Result<ConntrackStats, DataplaneError> {
        let now = monotonic_ns();
        let (live, collected) =
            collect_expired::<CtEntry>(&mut self.ebpf, names::CONNTRACK, |key, entry| {
                now.saturating_sub(entry.last_seen_ns)
                    > ct_timeout::for_entry(key.proto, entry.flags)
            })?;
        collect_expired::<NodePortEntry>(&mut self.ebpf, names::NODEPORT_NAT, |key, entry| {
            now.saturating_sub(entry.last_seen_ns) > ct_timeout::for_entry(key.proto, entry.flags)
        })?;
        Ok(ConntrackStats {
            live,
            collected,
            capacity: capacity::CONNTRACK,
        })
    }

    /// Packet counters by reason, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let mut out = Counters::default();
        let pass = self.per_cpu_sums(names::PASS_COUNTERS, PassReason::COUNT)?;
        for (reason, n) in PassReason::ALL.iter().zip(pass) {
            out.passed.insert(reason.name(), n);
        }
        let drop = self.per_cpu_sums(names::DROP_COUNTERS, DropReason::COUNT)?;
        for (reason, n) in DropReason::ALL.iter().zip(drop) {
            out.dropped.insert(reason.name(), n);
        }
        Ok(out)
    }

    fn per_cpu_sums(&self, name: &'static str, len: u32) -> Result<Vec<u64>, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err(name))?;
        (0..len)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(name))
            })
            .collect()
    }

    fn endpoint_map(
        &mut self,
    ) -> Result<HashMap<&mut MapData, Slotted<Addr>, EndpointInfo>, DataplaneError> {
        typed_map(&mut self.ebpf, names::ENDPOINTS, HashMap::try_from)
    }

    fn policy_map(
        &mut self,
    ) -> Result<HashMap<&mut MapData, Slotted<PolicyKey>, PolicyValue>, DataplaneError> {
        typed_map(&mut self.ebpf, names::POLICY, HashMap::try_from)
    }

    fn cidr_map(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, Slotted<Addr>, CidrInfo>, DataplaneError> {
        typed_map(&mut self.ebpf, names::CIDRS, LpmTrie::try_from)
    }
}

/// Deletes the entries of connection table `name` that `expired` says are: the live and the
/// deleted entries' counts.
fn collect_expired<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    expired: impl Fn(&CtKey, &V) -> bool,
) -> Result<(usize, usize), DataplaneError> {
    let mut map: HashMap<&mut MapData, CtKey, V> = typed_map(ebpf, name, HashMap::try_from)?;
    let mut live = 0;
    let mut gone = Vec::new();
    // Entries may vanish while we walk (LRU eviction, the programs' own expiry).
    for (key, entry) in map.iter().flatten() {
        if expired(&key, &entry) {
            gone.push(key);
        } else {
            live += 1;
        }
    }
    for key in &gone {
        remove_existing(map.remove(key)).map_err(map_err(name))?;
    }
    Ok((live, gone.len()))
}

fn typed_map<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(&'a mut aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(DataplaneError::MissingMap { name })?;
    convert(map).map_err(map_err(name))
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A removal of a key that is already gone is not an error (a rollback may repeat one).
fn remove_existing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

struct Diff<K, V> {
    upserts: Vec<(K, V)>,
    removals: Vec<K>,
}

/// Whether `a` and `b` put the same entries in a policy slot.
fn same_policy(a: &MapSet, b: &MapSet) -> bool {
    a.endpoints == b.endpoints && a.cidrs == b.cidrs && a.policy == b.policy
}

fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    from: &BTreeMap<K, V>,
    to: &BTreeMap<K, V>,
) -> Diff<K, V> {
    Diff {
        upserts: to
            .iter()
            .filter(|(k, v)| from.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect(),
        removals: from
            .keys()
            .filter(|k| !to.contains_key(k))
            .copied()
            .collect(),
    }
}

/// `if_indextoname`, for attaching by interface name.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..len].to_vec()).ok()
}
