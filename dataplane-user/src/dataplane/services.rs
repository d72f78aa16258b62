//! Writing the Service maps as a difference, in an order that keeps every lookup chain whole:
//! a frontend never points at a missing table, a table never at a missing backend.
//!
//! Upserts: backends → Maglev tables → source ranges → frontends.
//! Removals: frontends → source ranges → Maglev tables → backends.
//!
//! A backend set that changes tier (its table grows from 127 to 1 021 slots) is written to the
//! new tier's map first, its frontends then name the new tier, and the old tier's table goes
//! last.
//!
//! Backends and small tables are arrays written through a memory mapping ([`mapped`]); a
//! release fence between the two keeps the order above for readers on other CPUs. The maps
//! written by system call come after both, and the kernel publishes their entries with
//! release stores, which order the mapped stores before them.
//!
//! [`mapped`]: super::mapped

mod small_table;

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet};
use std::mem::offset_of;
use std::os::fd::AsFd as _;
use std::sync::atomic::{Ordering, fence};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError};
use aya::sys::SyscallError;
use dataplane_abi::maglev::{LARGE, MEDIUM, SMALL, SMALL_BACKENDS, Tier};
use dataplane_abi::{
    Backend, MaglevTable, ServiceKey, ServiceValue, SmallMaglevTable, SourceRangeKey, backend_slot,
    capacity, names, set_slot,
};

use super::mapped::{MappedArray, Tagged};
use super::{Dataplane, DataplaneError, Diff, batch, map_err, remove_existing, typed_map};
use crate::compile::maglev::Table;
use crate::compile::{CompiledService, FlatServices, MapSet, ServiceMaps, SourceRange};

/// Maglev map names by [`Tier`] number.
const TABLE_MAPS: [&str; 3] = [
    names::MAGLEV_SMALL,
    names::MAGLEV_MEDIUM,
    names::MAGLEV_LARGE,
];

/// What to write to the Service maps to go from one [`MapSet`] to another.
pub(super) struct ServiceDiff<'a> {
    frontends: Diff<ServiceKey, ServiceValue>,
    backends: Diff<u32, Backend>,
    /// By [`Tier`] number.
    tables: [TableDiff<'a>; 3],
    ranges: RangeDiff,
}

/// The Maglev tables of one tier to write (backend set id, slots) and to remove.
#[derive(Default)]
struct TableDiff<'a> {
    upserts: Vec<(u32, &'a [u32])>,
    removals: Vec<u32>,
}

/// Source ranges to add and to remove (their value never changes).
#[derive(Default)]
struct RangeDiff {
    additions: Vec<SourceRange>,
    removals: Vec<SourceRange>,
}

/// Keys the new state holds, to find those only the old one had.
#[derive(Default)]
struct Present {
    frontends: HashSet<ServiceKey>,
    backends: HashSet<u32>,
    tables: StdHashMap<u32, Tier>,
    ranges: HashSet<SourceRange>,
}

impl<'a> ServiceDiff<'a> {
    /// The difference, over the Services that changed only (see
    /// [`ServiceMaps::changed_units`]). An entry may move from one Service to another (a
    /// contested frontend; ids a restarted agent gives back), so entries are compared by key
    /// across all changed Services, not Service by Service.
    pub(super) fn new(from: &MapSet, to: &'a MapSet) -> Self {
        let (old, new) = from.services.changed_units(&to.services);
        let mut before = FlatServices::default();
        for unit in old {
            before.add(unit);
        }
        let mut out = Self {
            frontends: Diff {
                upserts: Vec::new(),
                removals: Vec::new(),
            },
            backends: Diff {
                upserts: Vec::new(),
                removals: Vec::new(),
            },
            tables: Default::default(),
            ranges: RangeDiff::default(),
        };
        // From scratch there is nothing to remove, and no need to remember what is new.
        let track = before != FlatServices::default();
        let mut present = Present::default();
        for unit in new {
            out.add_unit(unit, &before, track.then_some(&mut present));
        }
        if track {
            out.add_removals(&before, &present);
        }
        out
    }

    fn add_unit(
        &mut self,
        unit: &'a CompiledService,
        before: &FlatServices,
        mut present: Option<&mut Present>,
    ) {
        for (key, value) in &unit.frontends {
            if before.frontends.get(key) != Some(value) {
                self.frontends.upserts.push((*key, *value));
            }
            if let Some(p) = present.as_mut() {
                p.frontends.insert(*key);
            }
        }
        for set in &unit.sets {
            for (id, backend) in &set.backends {
                if before.backends.get(id) != Some(backend) {
                    self.backends.upserts.push((*id, *backend));
                }
                if let Some(p) = present.as_mut() {
                    p.backends.insert(*id);
                }
            }
            if let Some(table) = &set.table {
                if before.tables.get(&set.id) != Some(table) {
                    self.tables[table.tier as usize]
                        .upserts
                        .push((set.id, &table.slots));
                }
                if let Some(p) = present.as_mut() {
                    p.tables.insert(set.id, table.tier);
                }
            }
        }
        for range in &unit.source_ranges {
            if !before.source_ranges.contains(range) {
                self.ranges.additions.push(*range);
            }
            if let Some(p) = present.as_mut() {
                p.ranges.insert(*range);
            }
        }
    }

    fn add_removals(&mut self, before: &FlatServices, present: &Present) {
        self.frontends.removals = before
            .frontends
            .keys()
            .filter(|k| !present.frontends.contains(k))
            .copied()
            .collect();
        self.backends.removals = before
            .backends
            .keys()
            .filter(|k| !present.backends.contains(k))
            .copied()
            .collect();
        for (set, table) in &before.tables {
            // A set that changed tier leaves its old tier's map.
            if present.tables.get(set) != Some(&table.tier) {
                self.tables[table.tier as usize].removals.push(*set);
            }
        }
        self.ranges.removals = before
            .source_ranges
            .iter()
            .filter(|r| !present.ranges.contains(r))
            .copied()
            .collect();
    }

    /// Entries added or changed.
    pub(super) fn upserts(&self) -> usize {
        self.frontends.upserts.len()
            + self.backends.upserts.len()
            + self.tables.iter().map(|t| t.upserts.len()).sum::<usize>()
            + self.ranges.additions.len()
    }

    /// Entries deleted.
    pub(super) fn removals(&self) -> usize {
        self.frontends.removals.len()
            + self.backends.removals.len()
            + self.tables.iter().map(|t| t.removals.len()).sum::<usize>()
            + self.ranges.removals.len()
    }
}

impl Dataplane {
    /// Backends, tables, source ranges, then frontends.
    pub(super) fn write_service_upserts(
        &mut self,
        diff: &ServiceDiff<'_>,
    ) -> Result<(), DataplaneError> {
        let arrays = &self.service_arrays;
        for (id, backend) in &diff.backends.upserts {
            arrays
                .backends
                .write(backend_slot(*id), backend)
                .map_err(|e| array_err(names::BACKENDS, e))?;
        }
        fence(Ordering::Release);
        for (set, slots) in &diff.tables[Tier::Small as usize].upserts {
            let current = arrays.small_tables.get(set_slot(*set), *set);
            let table = small_table::lay_out(*set, slots, current.as_ref())
                .map_err(|e| layout_err(*set, &e))?;
            arrays
                .small_tables
                .write(set_slot(*set), &table)
                .map_err(|e| array_err(names::MAGLEV_SMALL, e))?;
        }
        self.write_tables::<MEDIUM>(Tier::Medium, &diff.tables[Tier::Medium as usize].upserts)?;
        self.write_tables::<LARGE>(Tier::Large, &diff.tables[Tier::Large as usize].upserts)?;
        {
            let mut map = self.source_range_map()?;
            for range in &diff.ranges.additions {
                map.insert(&Key::new(range.key_prefix_len(), range.key()), 0, 0)
                    .map_err(map_err(names::SOURCE_RANGES))?;
            }
        }
        let (keys, values): (Vec<ServiceKey>, Vec<ServiceValue>) =
            diff.frontends.upserts.iter().copied().unzip();
        self.update_batch(names::SERVICES, &keys, &values)
    }

    /// Frontends, source ranges, tables, then backends.
    pub(super) fn write_service_removals(
        &mut self,
        diff: &ServiceDiff<'_>,
    ) -> Result<(), DataplaneError> {
        self.delete_batch::<ServiceKey, ServiceValue>(names::SERVICES, &diff.frontends.removals)?;
        {
            let mut map = self.source_range_map()?;
            for range in &diff.ranges.removals {
                remove_existing(map.remove(&Key::new(range.key_prefix_len(), range.key())))
                    .map_err(map_err(names::SOURCE_RANGES))?;
            }
        }
        self.remove_tables::<MEDIUM>(Tier::Medium, &diff.tables[Tier::Medium as usize].removals)?;
        self.remove_tables::<LARGE>(Tier::Large, &diff.tables[Tier::Large as usize].removals)?;
        let arrays = &self.service_arrays;
        for set in &diff.tables[Tier::Small as usize].removals {
            arrays
                .small_tables
                .free(set_slot(*set), *set)
                .map_err(|e| array_err(names::MAGLEV_SMALL, e))?;
        }
        for id in &diff.backends.removals {
            arrays
                .backends
                .free(backend_slot(*id), *id)
                .map_err(|e| array_err(names::BACKENDS, e))?;
        }
        Ok(())
    }

    fn write_tables<const N: usize>(
        &self,
        tier: Tier,
        tables: &[(u32, &[u32])],
    ) -> Result<(), DataplaneError> {
        let mut sets = Vec::with_capacity(tables.len());
        let mut values: Vec<MaglevTable<N>> = Vec::with_capacity(tables.len());
        for (set, slots) in tables {
            sets.push(*set);
            values.push(MaglevTable {
                slots: table_slots(*set, slots)?,
                set: *set,
            });
        }
        self.update_batch(TABLE_MAPS[tier as usize], &sets, &values)
    }

    fn remove_tables<const N: usize>(
        &self,
        tier: Tier,
        sets: &[u32],
    ) -> Result<(), DataplaneError> {
        self.delete_batch::<u32, MaglevTable<N>>(TABLE_MAPS[tier as usize], sets)
    }

    /// Writes `keys[i]` → `values[i]` into hash map `name`, in one system call.
    fn update_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[K],
        values: &[V],
    ) -> Result<(), DataplaneError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.hash_map::<K, V>(name)?;
        batch::update(map.map().fd().as_fd(), keys, values)
            .map_err(|e| syscall_err(name, "bpf_map_update_batch", e))
    }

    /// Deletes `keys` from hash map `name` (of `K` to `V`), in one system call; keys already
    /// gone are skipped.
    fn delete_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[K],
    ) -> Result<(), DataplaneError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.hash_map::<K, V>(name)?;
        batch::delete(map.map().fd().as_fd(), keys)
            .map_err(|e| syscall_err(name, "bpf_map_delete_batch", e))
    }

    /// Map `name` as a hash map of `K` to `V` (aya checks the key and value sizes).
    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    /// Reads the Service maps into `out.services`, as one recovered unit whose ids the next
    /// compilation gives back (see [`ServiceMaps::recovered`]).
    pub(super) fn read_back_services(&mut self, out: &mut MapSet) -> Result<(), DataplaneError> {
        let mut flat = FlatServices::default();
        for entry in &self.frontend_map()? {
            let (k, v) = entry.map_err(map_err(names::SERVICES))?;
            flat.frontends.insert(k, v);
        }
        let arrays = &self.service_arrays;
        // An entry outside its id's slot was never written by an agent: left out.
        flat.backends.extend(
            arrays
                .backends
                .tagged()
                .filter(|(slot, be)| *slot == backend_slot(be.id))
                .map(|(_, be)| (be.id, be)),
        );
        flat.tables.extend(
            arrays
                .small_tables
                .tagged()
                .filter(|(slot, t)| *slot == set_slot(t.set))
                .filter_map(|(_, t)| {
                    let slots = small_table::expand(&t)?;
                    Some((
                        t.set,
                        Table {
                            tier: Tier::Small,
                            slots,
                        },
                    ))
                }),
        );
        flat.tables
            .extend(self.read_tables::<MEDIUM>(Tier::Medium)?);
        flat.tables.extend(self.read_tables::<LARGE>(Tier::Large)?);
        flat.source_ranges = self.read_source_ranges()?;
        out.services = ServiceMaps::recovered(flat);
        Ok(())
    }

    fn read_tables<const N: usize>(
        &mut self,
        tier: Tier,
    ) -> Result<BTreeMap<u32, Table>, DataplaneError> {
        let name = TABLE_MAPS[tier as usize];
        let map: HashMap<&mut MapData, u32, MaglevTable<N>> =
            typed_map(&mut self.ebpf, name, HashMap::try_from)?;
        let mut out = BTreeMap::new();
        for entry in &map {
            let (set, table) = entry.map_err(map_err(name))?;
            out.insert(
                set,
                Table {
                    tier,
                    slots: table.slots.to_vec(),
                },
            );
        }
        Ok(out)
    }

    fn read_source_ranges(&mut self) -> Result<BTreeSet<SourceRange>, DataplaneError> {
        let map = self.source_range_map()?;
        let mut out = BTreeSet::new();
        for entry in &map {
            let (key, _) = entry.map_err(map_err(names::SOURCE_RANGES))?;
            // A prefix shorter than the service id was never written by an agent: leave it
            // out, and the next write does not know it (it stays until uninstall).
            out.extend(SourceRange::from_key(key.prefix_len(), &key.data()));
        }
        Ok(out)
    }

    fn frontend_map(
        &mut self,
    ) -> Result<HashMap<&mut MapData, ServiceKey, ServiceValue>, DataplaneError> {
        typed_map(&mut self.ebpf, names::SERVICES, HashMap::try_from)
    }

    fn source_range_map(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, SourceRangeKey, u32>, DataplaneError> {
        typed_map(&mut self.ebpf, names::SOURCE_RANGES, LpmTrie::try_from)
    }
}

/// The backends and small Maglev tables, mapped into the agent.
pub(super) struct ServiceArrays {
    backends: MappedArray<Backend>,
    small_tables: MappedArray<SmallMaglevTable>,
}

impl Tagged for Backend {
    const TAG_OFFSET: usize = offset_of!(Backend, id);
}

impl Tagged for SmallMaglevTable {
    const TAG_OFFSET: usize = offset_of!(SmallMaglevTable, set);
}

impl ServiceArrays {
    /// Maps the arrays of `ebpf` (aya checks their value sizes).
    pub(super) fn map(ebpf: &aya::Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            backends: map_array::<Backend>(ebpf, names::BACKENDS, capacity::BACKENDS)?,
            small_tables: map_array::<SmallMaglevTable>(
                ebpf,
                names::MAGLEV_SMALL,
                capacity::BACKEND_SETS,
            )?,
        })
    }
}

fn map_array<T: Tagged>(
    ebpf: &aya::Ebpf,
    name: &'static str,
    entries: u32,
) -> Result<MappedArray<T>, DataplaneError> {
    let map = ebpf.map(name).ok_or(DataplaneError::MissingMap { name })?;
    let array: Array<&MapData, T> = Array::try_from(map).map_err(map_err(name))?;
    if array.len() != entries {
        return Err(array_err(
            name,
            std::io::Error::other(format!("{} entries, expected {entries}", array.len())),
        ));
    }
    MappedArray::map(array.map().fd().as_fd(), entries).map_err(|e| array_err(name, e))
}

/// The slots of a compiled table as its tier's array, or the compiler bug it reveals.
fn table_slots<const N: usize>(set: u32, slots: &[u32]) -> Result<[u32; N], DataplaneError> {
    slots.try_into().map_err(|_| DataplaneError::TableSize {
        set,
        slots: slots.len(),
        expected: N,
    })
}

fn layout_err(set: u32, error: &small_table::LayoutError) -> DataplaneError {
    match *error {
        small_table::LayoutError::Slots(slots) => DataplaneError::TableSize {
            set,
            slots,
            expected: SMALL,
        },
        small_table::LayoutError::TooManyBackends => DataplaneError::TableBackends {
            set,
            max: SMALL_BACKENDS,
        },
    }
}

fn array_err(name: &'static str, source: std::io::Error) -> DataplaneError {
    DataplaneError::MappedArray { name, source }
}

fn syscall_err(name: &'static str, call: &'static str, io_error: std::io::Error) -> DataplaneError {
    DataplaneError::Map {
        name,
        source: MapError::SyscallError(SyscallError { call, io_error }),
    }
}
