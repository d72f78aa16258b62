//! The compact form of a small Maglev table ([`SmallMaglevTable`]): slots name positions in a
//! list of at most [`SMALL_BACKENDS`] backend ids, laid out over what the entry holds so that a
//! program reading it during the rewrite finds a backend in use whatever mix it reads.

use dataplane_abi::maglev::{SMALL, SMALL_BACKENDS};
use dataplane_abi::{BACKEND_NONE, SmallMaglevTable};

/// What a compiled table cannot be in the compact form (a compiler bug).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LayoutError {
    /// Not [`SMALL`] slots.
    Slots(usize),
    /// More than [`SMALL_BACKENDS`] backends.
    TooManyBackends,
}

/// The table of backend set `set` whose slots name backend ids `slots`, laid out over
/// `current` (the entry as it is, when it is this set's): a backend that stays keeps its
/// position, a new one takes a position no backend of the new table keeps, and positions left
/// over keep their ids, which a program that read an old slot may still follow until the
/// backends are removed.
pub(super) fn lay_out(
    set: u32,
    slots: &[u32],
    current: Option<&SmallMaglevTable>,
) -> Result<SmallMaglevTable, LayoutError> {
    if slots.len() != SMALL {
        return Err(LayoutError::Slots(slots.len()));
    }
    let mut positions = Positions::default();
    let mut members = 0;
    for id in slots {
        if positions.add(*id) {
            members += 1;
            if members > SMALL_BACKENDS {
                return Err(LayoutError::TooManyBackends);
            }
        }
    }
    let mut table = SmallMaglevTable {
        backends: current.map_or([BACKEND_NONE; SMALL_BACKENDS], |c| c.backends),
        set,
        slots: [0; SMALL],
        _pad: [0; 5],
    };
    let mut kept = [false; SMALL_BACKENDS];
    for (position, id) in table.backends.iter().enumerate() {
        // `place` refuses an id placed already, should `current` list one twice.
        kept[position] = positions.place(*id, position);
    }
    for id in positions.unplaced() {
        // At most SMALL_BACKENDS members, each keeping at most one position: one is free.
        let free = kept.iter().position(|k| !k).unwrap_or_default();
        table.backends[free] = id;
        kept[free] = positions.place(id, free);
    }
    for (slot, id) in table.slots.iter_mut().zip(slots) {
        *slot = positions.of(*id);
    }
    Ok(table)
}

/// The backend ids of `table`'s slots.
pub(super) fn expand(table: &SmallMaglevTable) -> Option<Vec<u32>> {
    table
        .slots
        .iter()
        .map(|p| {
            table
                .backends
                .get(usize::from(*p))
                .copied()
                .filter(|id| *id != BACKEND_NONE)
        })
        .collect()
}

/// Buckets of [`Positions`]: more than twice [`SMALL_BACKENDS`], a power of two.
const BUCKETS: usize = 32;
const _: () = assert!(BUCKETS.is_power_of_two() && BUCKETS > 2 * SMALL_BACKENDS);

/// Marks a bucket's id without a position yet.
const UNPLACED: u8 = u8::MAX;

/// The backends of one table and their positions: open addressing by the id's low bits, so
/// that each of the table's 127 slots finds its position in a probe or two (a set's ids are
/// mostly consecutive, and rarely share low bits). Holds fewer ids than buckets.
struct Positions {
    ids: [u32; BUCKETS],
    positions: [u8; BUCKETS],
}

impl Default for Positions {
    fn default() -> Self {
        Self {
            ids: [BACKEND_NONE; BUCKETS],
            positions: [UNPLACED; BUCKETS],
        }
    }
}

impl Positions {
    /// The bucket of `id`, or the empty one where it would go.
    fn bucket(&self, id: u32) -> usize {
        let mut b = id as usize % BUCKETS;
        // Fewer ids than buckets are ever added: an empty bucket ends every probe.
        while self.ids[b] != id && self.ids[b] != BACKEND_NONE {
            b = (b + 1) % BUCKETS;
        }
        b
    }

    /// Adds `id` (never [`BACKEND_NONE`]); `true` if it is new. The caller stops before
    /// `BUCKETS - 1` ids.
    fn add(&mut self, id: u32) -> bool {
        let b = self.bucket(id);
        let new = self.ids[b] != id;
        self.ids[b] = id;
        new
    }

    /// Gives `id` position `position` if it is a backend without one; whether it did.
    fn place(&mut self, id: u32, position: usize) -> bool {
        let b = self.bucket(id);
        let placed = id != BACKEND_NONE && self.ids[b] == id && self.positions[b] == UNPLACED;
        if placed {
            // Below SMALL_BACKENDS.
            self.positions[b] = u8::try_from(position).unwrap_or(UNPLACED);
        }
        placed
    }

    /// Backends without a position.
    fn unplaced(&self) -> Vec<u32> {
        self.ids
            .iter()
            .zip(&self.positions)
            .filter(|(id, p)| **id != BACKEND_NONE && **p == UNPLACED)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The position of `id`, a placed backend.
    fn of(&self, id: u32) -> u8 {
        self.positions[self.bucket(id)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `SMALL` slots cycling over `ids`.
    fn slots(ids: &[u32]) -> Vec<u32> {
        ids.iter().copied().cycle().take(SMALL).collect()
    }

    #[test]
    fn a_laid_out_table_expands_to_its_slots() {
        let ids = slots(&[7, 9, 4]);
        let table = lay_out(3, &ids, None).unwrap();
        assert_eq!(table.set, 3);
        assert_eq!(expand(&table), Some(ids));
    }

    #[test]
    fn backends_that_stay_keep_their_positions_and_new_ones_take_the_positions_of_those_that_left()
    {
        let before = lay_out(3, &slots(&[1, 2, 3, 4]), None).unwrap();
        let after_ids = slots(&[4, 2, 5]);
        let after = lay_out(3, &after_ids, Some(&before)).unwrap();
        for id in [2, 4] {
            let at = |t: &SmallMaglevTable| t.backends.iter().position(|b| *b == id);
            assert_eq!(at(&before), at(&after), "backend {id} keeps its position");
        }
        let five = after.backends.iter().position(|b| *b == 5).unwrap();
        assert!(
            [1, 3].contains(&before.backends[five]),
            "5 takes the position of a backend that left"
        );
        // Every position an old or a new slot names holds an old or a new backend: a reader
        // of any mix of the two tables finds a backend in use.
        let in_use = [1, 2, 3, 4, 5];
        for p in before.slots.iter().chain(&after.slots) {
            let p = usize::from(*p);
            assert!(in_use.contains(&before.backends[p]) && in_use.contains(&after.backends[p]));
        }
        assert_eq!(expand(&after), Some(after_ids));
    }

    #[test]
    fn a_table_that_is_not_small_is_refused() {
        assert_eq!(lay_out(1, &[1; 10], None), Err(LayoutError::Slots(10)));
        let many: Vec<u32> = (1..=13).collect();
        assert_eq!(
            lay_out(1, &slots(&many), None),
            Err(LayoutError::TooManyBackends)
        );
    }
}
