//! Service, backend set and backend ids.
//!
//! An identity keeps its id from one compilation to the next: a Service by `namespace/name`
//! (its previous [`CompiledService`]), a backend set by its port, protocol, family and traffic
//! policy within the Service, a backend by its address and port within the set. A new identity
//! gets an id above every id given before, so an id that falls out of use (a backend that
//! left, whose id tracked connections still hold) goes to no other identity until the 32-bit
//! space wraps around, which at a thousand new backends a second takes seven weeks, long after
//! connections that old are gone. Id 0 is never given ([`dataplane_abi::BACKEND_NONE`],
//! [`dataplane_abi::SET_NONE`]).
//!
//! Each kind also has a number of slots, a power of two ([`Kind::slots`]): the low bits of a
//! backend id index its entry of the backends array, those of a set id its small Maglev table.
//! No two ids in use at once share a slot: a new id whose slot is taken (by an id of an earlier
//! round of the slots, still in use) is skipped. Ids in use are those of the previous
//! compilation (the kernel holds them until this one's removals) and those given in this one.
//! While the ids given so far are below the number of slots, each has a slot of its own and
//! nothing needs checking; past it, the slots taken are gathered once per compilation. When the
//! 32-bit space wraps, ids start again at the number of slots, not at 1, so that past the
//! first round the check always applies.
//!
//! After a restart the previous compilation is gone, but the kernel's maps say which frontend
//! belonged to which Service and backend set ids, and which backends each set held: those
//! [`Hints`] give identities their ids back, so an unchanged state rewrites nothing.

use std::collections::{HashMap, HashSet};

use dataplane_abi::{Addr, ServiceKey, capacity, names};

use super::units::Units;
use super::{CompiledService, NextIds};
use crate::compile::CompileError;

/// Ids a restarted agent reads back from the kernel's maps.
#[derive(Debug, Default)]
pub(super) struct Hints {
    /// Service id and backend set id of each frontend.
    frontends: HashMap<ServiceKey, (u32, u32)>,
    /// Backend id of each backend of each set.
    backends: HashMap<(u32, Addr, u16), u32>,
}

impl Hints {
    /// The ids `recovered` (what the kernel held, as one unit) used.
    pub(super) fn of(recovered: &CompiledService) -> Self {
        let mut hints = Self::default();
        for (key, value) in &recovered.frontends {
            hints
                .frontends
                .insert(*key, (value.service, value.backend_set));
        }
        for set in &recovered.sets {
            for (id, be) in &set.backends {
                hints.backends.insert((set.id, be.addr, be.port_h), *id);
            }
        }
        hints
    }

    /// Service and set ids of the first of `frontends` the kernel held.
    pub(super) fn frontend<'a>(
        &self,
        mut frontends: impl Iterator<Item = &'a ServiceKey>,
    ) -> Option<(u32, u32)> {
        frontends.find_map(|k| self.frontends.get(k).copied())
    }

    pub(super) fn backend(&self, set: u32, addr: Addr, port_h: u16) -> Option<u32> {
        self.backends.get(&(set, addr, port_h)).copied()
    }
}

/// Which id space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Service,
    Set,
    Backend,
}

impl Kind {
    /// Ids of this kind in use at once differ modulo this power of two. Backends and sets
    /// index arrays with it; Services index none, but bounding them by the frontends they need
    /// lets one rule serve all three.
    pub(super) const fn slots(self) -> u32 {
        match self {
            Self::Service => capacity::SERVICES,
            Self::Set => capacity::BACKEND_SETS,
            Self::Backend => capacity::BACKENDS,
        }
    }

    /// The map whose size [`Self::slots`] is, for errors.
    const fn map(self) -> &'static str {
        match self {
            Self::Service => names::SERVICES,
            Self::Set => names::MAGLEV_SMALL,
            Self::Backend => names::BACKENDS,
        }
    }
}

const _: () = assert!(capacity::SERVICES.is_power_of_two());

/// Hands out ids during one compilation.
pub(super) struct Ids<'a> {
    next: NextIds,
    /// `next` when the compilation started: the fresh ids given since are the ones below.
    start: NextIds,
    previous: &'a Units,
    hints: Option<Hints>,
    /// Hinted ids given this compilation, so that each goes to one identity only.
    hinted: HashSet<(Kind, u32)>,
    /// Slots taken, gathered once ids of a kind may share slots with ids in use.
    taken: HashMap<Kind, SlotSet>,
}

impl<'a> Ids<'a> {
    /// Ids above `next`; `previous` are the units of the last compilation (their ids are in
    /// use until this one replaces them).
    pub(super) fn new(next: NextIds, previous: &'a Units, hints: Option<Hints>) -> Self {
        Self {
            next,
            start: next,
            previous,
            hints,
            hinted: HashSet::new(),
            taken: HashMap::new(),
        }
    }

    pub(super) fn hints(&self) -> Option<&Hints> {
        self.hints.as_ref()
    }

    /// `kept` if the identity had an id, else `hint` if no other identity took it, else a new
    /// one.
    pub(super) fn id(
        &mut self,
        kind: Kind,
        kept: Option<u32>,
        hint: Option<u32>,
    ) -> Result<u32, CompileError> {
        // 0 is what a unit without frontends holds: no id to keep.
        if let Some(id) = kept.filter(|id| *id != 0) {
            return Ok(id);
        }
        if let Some(id) = hint.filter(|h| *h != 0)
            && self.hinted.insert((kind, id))
        {
            return Ok(id);
        }
        self.fresh(kind)
    }

    /// The next id whose slot no id in use holds. Each candidate has the slot after the
    /// previous one's (the slot count divides 2^32, and `u32::MAX` is skipped), so trying one
    /// more candidate than there are slots has tried every slot.
    fn fresh(&mut self, kind: Kind) -> Result<u32, CompileError> {
        let slots = kind.slots();
        for _ in 0..=slots {
            let cursor = self.cursor(kind);
            let id = *cursor;
            if id == u32::MAX {
                *cursor = slots;
                continue;
            }
            *cursor = id + 1;
            // The first round: every id in use is below this one, each in its own slot.
            if id < slots {
                return Ok(id);
            }
            if self.taken_slots(kind, id).insert(id) {
                return Ok(id);
            }
        }
        Err(CompileError::SlotsExhausted {
            map: kind.map(),
            capacity: slots,
        })
    }

    fn cursor(&mut self, kind: Kind) -> &mut u32 {
        match kind {
            Kind::Service => &mut self.next.service,
            Kind::Set => &mut self.next.set,
            Kind::Backend => &mut self.next.backend,
        }
    }

    /// The slots taken by ids of `kind` in use, gathered on first call: those of the previous
    /// compilation, and the fresh ones given before `id` in this one (consecutive: no
    /// candidate was skipped before the check began).
    fn taken_slots(&mut self, kind: Kind, id: u32) -> &mut SlotSet {
        let start = match kind {
            Kind::Service => self.start.service,
            Kind::Set => self.start.set,
            Kind::Backend => self.start.backend,
        };
        let previous = self.previous;
        self.taken.entry(kind).or_insert_with(|| {
            let mut taken = SlotSet::new(kind.slots());
            for unit in previous.values() {
                match kind {
                    Kind::Service => taken.insert_id(unit.id),
                    Kind::Set => unit.sets.iter().for_each(|s| taken.insert_id(s.id)),
                    Kind::Backend => unit
                        .sets
                        .iter()
                        .flat_map(|s| &s.backends)
                        .for_each(|(b, _)| taken.insert_id(*b)),
                }
            }
            if start < kind.slots() {
                (start..id).for_each(|given| taken.insert_id(given));
            }
            taken
        })
    }

    pub(super) fn finish(self) -> NextIds {
        self.next
    }
}

/// A set of slots, one bit each.
struct SlotSet {
    bits: Vec<u64>,
    mask: u32,
}

impl SlotSet {
    fn new(slots: u32) -> Self {
        Self {
            bits: vec![0; (slots as usize).div_ceil(64)],
            mask: slots - 1,
        }
    }

    /// Marks the slot of `id`; `false` if it was marked already.
    fn insert(&mut self, id: u32) -> bool {
        let slot = (id & self.mask) as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        let fresh = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        fresh
    }

    /// Marks the slot of `id`, an id in use (0 stands for none: a unit or set without one).
    fn insert_id(&mut self, id: u32) {
        if id != 0 {
            self.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use dataplane_abi::Backend;

    use std::sync::Arc;

    use super::*;
    use crate::compile::services::CompiledSet;

    /// A previous compilation holding one unit with sets `sets`, each with the backends
    /// `backends`.
    fn units(sets: &[u32], backends: &[u32]) -> Units {
        let unit = CompiledService {
            id: 1,
            frontends: Vec::new(),
            sets: sets
                .iter()
                .map(|id| CompiledSet {
                    identity: None,
                    id: *id,
                    backends: backends.iter().map(|b| (*b, Backend::default())).collect(),
                    table: None,
                })
                .collect(),
            source_ranges: Vec::new(),
            health_check: None,
            inputs: None,
        };
        let mut units = Units::default();
        units.insert(Arc::from("a/b"), Arc::new(unit));
        units
    }

    fn next(set: u32, backend: u32) -> NextIds {
        NextIds {
            service: 2,
            set,
            backend,
        }
    }

    fn fresh(ids: &mut Ids<'_>, kind: Kind, n: usize) -> Vec<u32> {
        (0..n).map(|_| ids.id(kind, None, None).unwrap()).collect()
    }

    #[test]
    fn past_the_first_round_a_new_id_skips_the_slots_of_ids_in_use() {
        let slots = capacity::BACKENDS;
        let units = units(&[7], &[1, 2, 3, 5]);
        let mut ids = Ids::new(next(8, slots - 1), &units, None);
        assert_eq!(
            fresh(&mut ids, Kind::Backend, 4),
            [slots - 1, slots, slots + 4, slots + 6],
            "the first round ends; slot 0 is free, 1 to 3 and 5 are taken"
        );
        assert_eq!(ids.id(Kind::Backend, Some(2), None).unwrap(), 2, "kept");
    }

    #[test]
    fn after_the_32_bit_space_wraps_ids_start_again_at_the_slot_count() {
        let slots = capacity::BACKEND_SETS;
        let units = units(&[u32::MAX - 1, slots + 1], &[]);
        let mut ids = Ids::new(next(u32::MAX - 1, 5), &units, None);
        // u32::MAX - 1 is in use (it is the last slot), u32::MAX is never given.
        assert_eq!(fresh(&mut ids, Kind::Set, 2), [slots, slots + 2]);
        assert_eq!(ids.finish().set, slots + 3);
    }

    #[test]
    fn new_ids_of_this_compilation_hold_their_slots_until_none_is_left() {
        let slots = capacity::BACKEND_SETS;
        let units = Units::default();
        let mut ids = Ids::new(next(1, 1), &units, None);
        let given = fresh(&mut ids, Kind::Set, slots as usize);
        assert_eq!(given.last(), Some(&slots), "slot 0 is the last one free");
        match ids.id(Kind::Set, None, None) {
            Err(CompileError::SlotsExhausted { map, capacity }) => {
                assert_eq!((map, capacity), (names::MAGLEV_SMALL, slots));
            }
            other => panic!("expected no slot left, got {other:?}"),
        }
    }
}
