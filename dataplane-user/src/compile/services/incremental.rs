//! Compiling only the Services that changed.
//!
//! A source passes the objects that did not change on to the next state as they are (the
//! same `Arc`), in key order. One walk over the Services and one over the slices, each beside
//! the list the previous compilation read, then finds what changed: an unchanged object costs
//! a pointer comparison, a changed one a comparison of keys. The Services compiled again are
//! those whose object or slices changed, those that lost a frontend to another (they may take
//! it back), and those a recompiled Service takes a frontend from. They are compiled in key
//! order, so that a frontend two Services want goes to the first, as when compiling
//! everything ([`super::compile_all`]); the tests hold the two to the same output.
//!
//! The walks are linear in the number of objects, but at a few nanoseconds an object; the rest
//! costs what changed: the units live in shards ([`super::units`]), and the index of which
//! Service has which frontend is copied only when a Service's frontends change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use dataplane_abi::ServiceKey;

use super::chunked::Chunked;
use super::ids::Ids;
use super::{CompiledService, Context, Reuse, Seen, ServiceMaps, check_capacity};
use crate::compile::CompileError;
use crate::model::{DesiredState, EndpointSlice, Service};

/// One difference between two lists sorted by key.
#[derive(Debug)]
pub(super) enum Change<'a, T> {
    Added(&'a Arc<T>),
    Removed(&'a Arc<T>),
    /// Another object under the same key, equal or not; the index of both.
    Replaced(&'a Arc<T>, &'a Arc<T>, usize),
}

/// How `new` differs from `old`, or `None` when `new` is not strictly sorted by `key`.
///
/// `old` must be strictly sorted (it is what a previous walk accepted). Order is checked with
/// keys only where `new` leaves `old`: an object that is the next one of `old` comes after the
/// previous object of `new`, whichever way that one was found.
pub(super) fn diff_sorted<'a, T, K: Ord>(
    old: &'a Chunked<T>,
    new: &'a [Arc<T>],
    key: impl Fn(&'a T) -> K,
) -> Option<Vec<Change<'a, T>>> {
    let mut changes = Vec::new();
    let mut next_old = 0;
    for (i, item) in new.iter().enumerate() {
        if old.get(next_old).is_some_and(|o| Arc::ptr_eq(o, item)) {
            next_old += 1;
            continue;
        }
        let item_key = key(item);
        if i > 0 && key(&new[i - 1]) >= item_key {
            return None;
        }
        let mut replaced = false;
        while let Some(o) = old.get(next_old) {
            match key(o).cmp(&item_key) {
                std::cmp::Ordering::Less => changes.push(Change::Removed(o)),
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(o, item) {
                        changes.push(Change::Replaced(o, item, i));
                    }
                    replaced = true;
                    next_old += 1;
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
            next_old += 1;
        }
        if !replaced {
            changes.push(Change::Added(item));
        }
    }
    changes.extend(old.iter_from(next_old).map(Change::Removed));
    Some(changes)
}

/// `old` turned into `new`, which differs from it by `changes`: shared when nothing changed,
/// chunks copied where objects were only replaced, and built again otherwise.
fn updated<T>(old: &Chunked<T>, changes: &[Change<'_, T>], new: &[Arc<T>]) -> Chunked<T> {
    let replaced: Option<Vec<(usize, &Arc<T>)>> = changes
        .iter()
        .map(|change| match change {
            Change::Replaced(_, item, at) => Some((*at, *item)),
            Change::Added(_) | Change::Removed(_) => None,
        })
        .collect();
    match replaced {
        Some(replaced) => old.with_replaced(replaced),
        None => new.iter().cloned().collect(),
    }
}

/// The slices that left (by key) and arrived (by the Service they name).
struct SliceChanges<'a> {
    gone: HashSet<(&'a str, &'a str, bool)>,
    arrived: HashMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>>,
}

impl<'a> SliceChanges<'a> {
    fn new(changes: &[Change<'a, EndpointSlice>]) -> Self {
        let mut out = Self {
            gone: HashSet::new(),
            arrived: HashMap::new(),
        };
        for change in changes {
            let (gone, arrived) = match change {
                Change::Added(new) => (None, Some(*new)),
                Change::Removed(old) => (Some(*old), None),
                Change::Replaced(old, new, _) => (Some(*old), Some(*new)),
            };
            if let Some(old) = gone {
                out.gone.insert(old.key());
            }
            if let Some(new) = arrived {
                out.arrived
                    .entry((new.namespace.as_str(), new.service.as_str()))
                    .or_default()
                    .push(new);
            }
        }
        out
    }
}

/// Namespace and name of a `namespace/name`: no namespace holds a `/`.
fn key(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or(("", name))
}

/// [`key`], owned: an entry of the set of Services to compile again.
fn split(name: &str) -> (String, String) {
    let (namespace, name) = key(name);
    (namespace.to_owned(), name.to_owned())
}

/// Whether Service `a` comes before Service `b` (both `namespace/name`) in key order, which
/// is not the order of the joined strings (`a-b/x` sorts before `a/x`).
fn earlier(a: &str, b: &str) -> bool {
    key(a) < key(b)
}

/// Compiles what changed between `previous` and `state`; `None` when the walks cannot tell
/// (no previous walk, or an input out of key order): then everything is compiled.
pub(super) fn compile(
    state: &DesiredState,
    context: &Context<'_>,
    previous: &ServiceMaps,
) -> Option<Result<(ServiceMaps, Vec<String>), CompileError>> {
    let seen = previous.seen.as_ref()?;
    let service_changes = diff_sorted(&seen.services, &state.services, Service::key)?;
    let slice_changes = diff_sorted(&seen.slices, &state.endpoint_slices, EndpointSlice::key)?;
    let mut dirty: BTreeSet<(String, String)> = BTreeSet::new();
    for change in &service_changes {
        let service = match change {
            Change::Added(s) | Change::Removed(s) | Change::Replaced(s, _, _) => s,
        };
        dirty.insert((service.namespace.clone(), service.name.clone()));
    }
    let slices = SliceChanges::new(&slice_changes);
    for old in &slice_changes {
        if let Change::Removed(s) | Change::Replaced(s, _, _) = old {
            dirty.insert((s.namespace.clone(), s.service.clone()));
        }
    }
    for (namespace, service) in slices.arrived.keys() {
        dirty.insert(((*namespace).to_owned(), (*service).to_owned()));
    }
    dirty.extend(previous.contested.iter().map(|name| split(name)));

    let mut next = previous.clone();
    next.seen = Some(Seen {
        services: updated(&seen.services, &service_changes, &state.services),
        slices: updated(&seen.slices, &slice_changes, &state.endpoint_slices),
    });
    let mut pass = Pass {
        state,
        context,
        previous,
        slices,
        ids: Ids::new(previous.next, &previous.units, None),
        next,
        warnings: Vec::new(),
    };
    while let Some((namespace, name)) = dirty.pop_first() {
        if let Err(err) = pass.service(&namespace, &name, &mut dirty) {
            return Some(Err(err));
        }
    }
    let Pass {
        mut next,
        ids,
        warnings,
        ..
    } = pass;
    next.next = ids.finish();
    Some(check_capacity(&next.counts).map(|()| (next, warnings)))
}

/// One incremental compilation under way.
struct Pass<'a> {
    state: &'a DesiredState,
    context: &'a Context<'a>,
    previous: &'a ServiceMaps,
    slices: SliceChanges<'a>,
    ids: Ids<'a>,
    next: ServiceMaps,
    warnings: Vec<String>,
}

impl Pass<'_> {
    /// Compiles Service `namespace/name` again, or removes it; adds to `dirty` the Services
    /// it takes a frontend from.
    fn service(
        &mut self,
        namespace: &str,
        name: &str,
        dirty: &mut BTreeSet<(String, String)>,
    ) -> Result<(), CompileError> {
        let full = format!("{namespace}/{name}");
        let before = self.previous.units.get(&full);
        let found = self
            .state
            .services
            .binary_search_by(|s| s.key().cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.state.services[i]);
        let Some(service) = found else {
            if let Some((name, old)) = before {
                self.claim(name, Some(old), None, dirty);
                self.next.counts.remove(old);
                self.next.units.remove(name);
            }
            return Ok(());
        };
        let before_unit = before.map(|(_, unit)| &**unit);
        let slices = self.slices_of(service, before_unit);
        let reuse = Reuse {
            facts: self.context.facts,
            previous: &self.previous.node,
            node: self.context.node,
        };
        let owners = &self.next.owners;
        let claimed = |key: &ServiceKey| {
            owners
                .get(key)
                .is_some_and(|owner| **owner != *full && earlier(owner, &full))
        };
        let unit = match before {
            Some((_, unit)) if reuse.allows(unit, service, &slices, &claimed) => unit.clone(),
            _ => self.context.compile_unit(
                service,
                slices,
                before_unit,
                &mut self.ids,
                &claimed,
                &mut self.warnings,
            )?,
        };
        if let Some((_, old)) = before
            && Arc::ptr_eq(old, &unit)
        {
            // Kept as it was (its inputs are equal objects under new addresses): its shard
            // need not be copied.
            return Ok(());
        }
        let name = before.map_or_else(|| Arc::from(full.as_str()), |(name, _)| name.clone());
        self.claim(&name, before_unit, Some(&unit), dirty);
        if let Some(old) = before_unit {
            self.next.counts.remove(old);
        }
        self.next.counts.add(&unit);
        self.next.units.insert(name, unit);
        Ok(())
    }

    /// Every slice of `service`: those of its previous inputs that are still there, and
    /// those that arrived for it.
    fn slices_of(
        &self,
        service: &Service,
        before: Option<&CompiledService>,
    ) -> Vec<Arc<EndpointSlice>> {
        let Some(inputs) = before.and_then(|unit| unit.inputs.as_ref()) else {
            return self
                .state
                .endpoint_slices
                .iter()
                .filter(|s| s.namespace == service.namespace && s.service == service.name)
                .cloned()
                .collect();
        };
        let mut out: Vec<Arc<EndpointSlice>> = inputs
            .slices
            .iter()
            .filter(|s| !self.slices.gone.contains(&s.key()))
            .cloned()
            .collect();
        if let Some(arrived) = self
            .slices
            .arrived
            .get(&(service.namespace.as_str(), service.name.as_str()))
        {
            out.extend(arrived.iter().map(|s| Arc::clone(s)));
            out.sort_by(|a, b| a.key().cmp(&b.key()));
        }
        out
    }

    /// Moves the frontends of Service `name` from `before` to `after` in the index of who has
    /// which, and its place among the contested; a Service that had one of them (later in key
    /// order, or it would have kept it) goes to `dirty`.
    fn claim(
        &mut self,
        name: &Arc<str>,
        before: Option<&CompiledService>,
        after: Option<&CompiledService>,
        dirty: &mut BTreeSet<(String, String)>,
    ) {
        let contested = after
            .and_then(|unit| unit.inputs.as_ref())
            .is_some_and(|inputs| inputs.contested);
        if contested != self.next.contested.contains(name) {
            let set = Arc::make_mut(&mut self.next.contested);
            if contested {
                set.insert(name.clone());
            } else {
                set.remove(name);
            }
        }
        let keys = |unit: Option<&CompiledService>| -> Vec<ServiceKey> {
            unit.map(|u| u.frontends.iter().map(|(k, _)| *k).collect())
                .unwrap_or_default()
        };
        let (old, new) = (keys(before), keys(after));
        if old == new {
            return;
        }
        let owners = Arc::make_mut(&mut self.next.owners);
        for key in &old {
            if owners.get(key).is_some_and(|owner| owner == name) {
                owners.remove(key);
            }
        }
        for key in new {
            if let Some(owner) = owners.insert(key, name.clone())
                && owner != *name
            {
                dirty.insert(split(&owner));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arcs(keys: &[u32]) -> Vec<Arc<u32>> {
        keys.iter().map(|k| Arc::new(*k)).collect()
    }

    fn chunked(items: &[Arc<u32>]) -> Chunked<u32> {
        items.iter().cloned().collect()
    }

    /// The changes as `+k`, `-k`, `~k`.
    fn describe(changes: &[Change<'_, u32>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Added(k) => format!("+{k}"),
                Change::Removed(k) => format!("-{k}"),
                Change::Replaced(old, _, at) => format!("~{old}@{at}"),
            })
            .collect()
    }

    #[test]
    fn a_walk_finds_added_removed_and_replaced_objects_by_pointer_then_key() {
        let old = arcs(&[1, 3, 5, 7]);
        let mut new = vec![old[0].clone(), Arc::new(2), Arc::new(3), old[2].clone()];
        new.push(Arc::new(8));
        let list = chunked(&old);
        let changes = diff_sorted(&list, &new, |k| *k).unwrap();
        assert_eq!(describe(&changes), ["+2", "~3@2", "-7", "+8"]);
        assert!(diff_sorted(&list, &old, |k| *k).unwrap().is_empty());
        assert_eq!(
            describe(&diff_sorted(&list, &[], |k| *k).unwrap()),
            ["-1", "-3", "-5", "-7"]
        );
    }

    #[test]
    fn a_walk_refuses_a_list_out_of_order_or_with_a_key_twice() {
        let old = arcs(&[1, 2, 3]);
        let list = chunked(&old);
        let swapped = vec![old[1].clone(), old[0].clone(), old[2].clone()];
        assert!(diff_sorted(&list, &swapped, |k| *k).is_none());
        let twice = vec![old[0].clone(), old[0].clone(), old[2].clone()];
        assert!(diff_sorted(&list, &twice, |k| *k).is_none());
        let same_key = vec![old[0].clone(), Arc::new(1), old[2].clone()];
        assert!(diff_sorted(&list, &same_key, |k| *k).is_none());
        let fresh_out_of_order = arcs(&[4, 2]);
        assert!(diff_sorted(&list, &fresh_out_of_order, |k| *k).is_none());
    }

    #[test]
    fn a_list_whose_objects_were_only_replaced_shares_its_other_chunks() {
        let old = arcs(&(0..600).collect::<Vec<u32>>());
        let list = chunked(&old);
        let mut new = old.clone();
        new[300] = Arc::new(300);
        let changes = diff_sorted(&list, &new, |k| *k).unwrap();
        let next = updated(&list, &changes, &new);
        assert!(Arc::ptr_eq(next.get(300).unwrap(), &new[300]));
        assert_eq!(next, chunked(&new));
        new.remove(10);
        let changes = diff_sorted(&next, &new, |k| *k).unwrap();
        assert_eq!(updated(&next, &changes, &new), chunked(&new));
    }

    #[test]
    fn service_order_is_by_namespace_then_name_not_by_the_joined_string() {
        assert!("a-b/x" < "a/x");
        assert!(earlier("a/x", "a-b/x"));
        assert!(!earlier("a-b/x", "a/x"));
        assert!(earlier("a/x", "a/y"));
    }
}
