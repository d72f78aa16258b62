//! Writing the Service maps as a difference, in an order that keeps every lookup chain whole:
//! a frontend never points at a missing table, a table never at a missing backend.
//!
//! Upserts: backends → Maglev tables → source ranges → frontends.
//! Removals: frontends → source ranges → Maglev tables → backends.
//!
//! A backend set that changes tier (its table grows from 127 to 1 021 slots) is written to the
//! new tier's map first, its frontends then name the new tier, and the old tier's table goes
//! last.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use dataplane_abi::MaglevTable;
use dataplane_abi::maglev::{LARGE, MEDIUM, SMALL, Tier};
use dataplane_abi::{Backend, ServiceKey, ServiceValue, SourceRangeKey, names};

use super::{Dataplane, DataplaneError, Diff, diff, map_err, remove_existing, typed_map};
use crate::compile::maglev::Table;
use crate::compile::{MapSet, ServiceIds, SourceRange};

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
struct RangeDiff {
    additions: Vec<SourceRange>,
    removals: Vec<SourceRange>,
}

impl<'a> ServiceDiff<'a> {
    pub(super) fn new(from: &MapSet, to: &'a MapSet) -> Self {
        let mut tables: [TableDiff<'a>; 3] = Default::default();
        for (set, table) in &to.maglev {
            if from.maglev.get(set) != Some(table) {
                tables[table.tier as usize]
                    .upserts
                    .push((*set, &table.slots));
            }
        }
        for (set, table) in &from.maglev {
            if to.maglev.get(set).is_none_or(|t| t.tier != table.tier) {
                tables[table.tier as usize].removals.push(*set);
            }
        }
        Self {
            frontends: diff(&from.services, &to.services),
            backends: diff(&from.backends, &to.backends),
            tables,
            ranges: RangeDiff {
                additions: to
                    .source_ranges
                    .difference(&from.source_ranges)
                    .copied()
                    .collect(),
                removals: from
                    .source_ranges
                    .difference(&to.source_ranges)
                    .copied()
                    .collect(),
            },
        }
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
        {
            let mut map = self.backend_map()?;
            for (id, backend) in &diff.backends.upserts {
                map.insert(id, backend, 0)
                    .map_err(map_err(names::BACKENDS))?;
            }
        }
        self.write_tables::<SMALL>(Tier::Small, &diff.tables[Tier::Small as usize].upserts)?;
        self.write_tables::<MEDIUM>(Tier::Medium, &diff.tables[Tier::Medium as usize].upserts)?;
        self.write_tables::<LARGE>(Tier::Large, &diff.tables[Tier::Large as usize].upserts)?;
        {
            let mut map = self.source_range_map()?;
            for range in &diff.ranges.additions {
                map.insert(&Key::new(range.key_prefix_len(), range.key()), 0, 0)
                    .map_err(map_err(names::SOURCE_RANGES))?;
            }
        }
        let mut map = self.frontend_map()?;
        for (key, value) in &diff.frontends.upserts {
            map.insert(key, value, 0)
                .map_err(map_err(names::SERVICES))?;
        }
        Ok(())
    }

    /// Frontends, source ranges, tables, then backends.
    pub(super) fn write_service_removals(
        &mut self,
        diff: &ServiceDiff<'_>,
    ) -> Result<(), DataplaneError> {
        {
            let mut map = self.frontend_map()?;
            for key in &diff.frontends.removals {
                remove_existing(map.remove(key)).map_err(map_err(names::SERVICES))?;
            }
        }
        {
            let mut map = self.source_range_map()?;
            for range in &diff.ranges.removals {
                remove_existing(map.remove(&Key::new(range.key_prefix_len(), range.key())))
                    .map_err(map_err(names::SOURCE_RANGES))?;
            }
        }
        self.remove_tables::<SMALL>(Tier::Small, &diff.tables[Tier::Small as usize].removals)?;
        self.remove_tables::<MEDIUM>(Tier::Medium, &diff.tables[Tier::Medium as usize].removals)?;
        self.remove_tables::<LARGE>(Tier::Large, &diff.tables[Tier::Large as usize].removals)?;
        let mut map = self.backend_map()?;
        for id in &diff.backends.removals {
            remove_existing(map.remove(id)).map_err(map_err(names::BACKENDS))?;
        }
        Ok(())
    }

    fn write_tables<const N: usize>(
        &mut self,
        tier: Tier,
        tables: &[(u32, &[u32])],
    ) -> Result<(), DataplaneError> {
        let name = TABLE_MAPS[tier as usize];
        let mut map: HashMap<&mut MapData, u32, MaglevTable<N>> =
            typed_map(&mut self.ebpf, name, HashMap::try_from)?;
        for (set, slots) in tables {
            let slots: &[u32; N] = (*slots).try_into().map_err(|_| DataplaneError::TableSize {
                set: *set,
                slots: slots.len(),
                expected: N,
            })?;
            let table = MaglevTable {
                slots: *slots,
                _guard: 0,
            };
            map.insert(set, table, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn remove_tables<const N: usize>(
        &mut self,
        tier: Tier,
        sets: &[u32],
    ) -> Result<(), DataplaneError> {
        let name = TABLE_MAPS[tier as usize];
        let mut map: HashMap<&mut MapData, u32, MaglevTable<N>> =
            typed_map(&mut self.ebpf, name, HashMap::try_from)?;
        for set in sets {
            remove_existing(map.remove(set)).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Reads the Service maps into `out`, and the ids they use into `out.service_ids`.
    pub(super) fn read_back_services(&mut self, out: &mut MapSet) -> Result<(), DataplaneError> {
        for entry in &self.frontend_map()? {
            let (k, v) = entry.map_err(map_err(names::SERVICES))?;
            out.services.insert(k, v);
        }
        for entry in &self.backend_map()? {
            let (k, v) = entry.map_err(map_err(names::BACKENDS))?;
            out.backends.insert(k, v);
        }
        out.maglev.extend(self.read_tables::<SMALL>(Tier::Small)?);
        out.maglev.extend(self.read_tables::<MEDIUM>(Tier::Medium)?);
        out.maglev.extend(self.read_tables::<LARGE>(Tier::Large)?);
        out.source_ranges = self.read_source_ranges()?;
        out.service_ids = ServiceIds::recover(out);
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

    fn backend_map(&mut self) -> Result<HashMap<&mut MapData, u32, Backend>, DataplaneError> {
        typed_map(&mut self.ebpf, names::BACKENDS, HashMap::try_from)
    }

    fn source_range_map(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, SourceRangeKey, u32>, DataplaneError> {
        typed_map(&mut self.ebpf, names::SOURCE_RANGES, LpmTrie::try_from)
    }
}
