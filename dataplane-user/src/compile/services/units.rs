//! The compiled Services by name, shared between compilations.
//!
//! A compilation that changes one Service among 10 000 must not copy the other 9 999: the
//! units live in [`SHARDS`] maps chosen by a hash of the name, each behind an `Arc`. Changing
//! a unit copies the array of shard pointers and the one shard it lives in (a few dozen
//! entries); an unchanged shard is the same `Arc` in both compilations, which is how
//! [`Units::changed`] skips it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use super::CompiledService;

/// Number of shards: at 10 000 Services, 40 units a shard.
const SHARDS: usize = 256;

type Shard = BTreeMap<Arc<str>, Arc<CompiledService>>;

/// Compiled Services by `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Units {
    shards: Arc<Vec<Arc<Shard>>>,
}

impl Default for Units {
    fn default() -> Self {
        let empty = Arc::new(Shard::new());
        Self {
            shards: Arc::new(vec![empty; SHARDS]),
        }
    }
}

/// Which shard `name` lives in. The hash is fixed (no random keys): two compilations must
/// agree, and names come from the cluster's own objects.
fn shard_of(name: &str) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
    // Truncation keeps the low bits, which is all the modulo reads.
    #[allow(clippy::cast_possible_truncation)]
    let index = hash as usize % SHARDS;
    index
}

impl Units {
    /// The unit of `name`, with the name `Arc` it is stored under.
    pub(super) fn get(&self, name: &str) -> Option<(&Arc<str>, &Arc<CompiledService>)> {
        self.shards[shard_of(name)].get_key_value(name)
    }

    /// Every unit, by shard, in name order within a shard.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<CompiledService>)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// Every unit.
    pub(super) fn values(&self) -> impl Iterator<Item = &CompiledService> {
        self.iter().map(|(_, unit)| &**unit)
    }

    /// Stores `unit` under `name`, replacing what was there; returns that.
    pub(super) fn insert(
        &mut self,
        name: Arc<str>,
        unit: Arc<CompiledService>,
    ) -> Option<Arc<CompiledService>> {
        let shard = shard_of(&name);
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard]).insert(name, unit)
    }

    /// Removes the unit of `name`; returns it.
    pub(super) fn remove(&mut self, name: &str) -> Option<Arc<CompiledService>> {
        let shard = shard_of(name);
        if !self.shards[shard].contains_key(name) {
            return None;
        }
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard]).remove(name)
    }

    /// The units that differ between `self` and `next`, as they are in each. A shard that is
    /// the same `Arc` in both is skipped whole; within the others, an unchanged unit is the
    /// same `Arc` under the same name `Arc`: one step of a walk over both in order, and two
    /// pointer comparisons.
    pub(super) fn changed<'s, 'n>(
        &'s self,
        next: &'n Self,
    ) -> (Vec<&'s CompiledService>, Vec<&'n CompiledService>) {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        if Arc::ptr_eq(&self.shards, &next.shards) {
            return (before, after);
        }
        for (old, new) in self.shards.iter().zip(next.shards.iter()) {
            if !Arc::ptr_eq(old, new) {
                changed_in_shard(old, new, &mut before, &mut after);
            }
        }
        (before, after)
    }
}

fn changed_in_shard<'s, 'n>(
    old: &'s Shard,
    new: &'n Shard,
    before: &mut Vec<&'s CompiledService>,
    after: &mut Vec<&'n CompiledService>,
) {
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) if Arc::ptr_eq(a, b) => Ordering::Equal,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        let a = (order != Ordering::Greater).then(|| old.next()).flatten();
        let b = (order != Ordering::Less).then(|| new.next()).flatten();
        match (a, b) {
            (Some((_, a)), Some((_, b))) if Arc::ptr_eq(a, b) => {}
            (a, b) => {
                before.extend(a.map(|(_, u)| &**u));
                after.extend(b.map(|(_, u)| &**u));
            }
        }
    }
}
