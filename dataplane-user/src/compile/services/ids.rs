//! Service, backend set and backend ids.
//!
//! An identity keeps its id from one compilation to the next: a Service by `namespace/name`
//! (its previous [`CompiledService`]), a backend set by its port, protocol, family and traffic
//! policy within the Service, a backend by its address and port within the set. A new identity
//! gets an id above every id given before, so an id that falls out of use (a backend that
//! left, whose id tracked connections still hold) goes to no other identity until the 32-bit
//! space wraps around, which at a thousand new backends a second takes seven weeks, long after
//! connections that old are gone. On wrapping, ids still in use are skipped. Id 0 is never
//! given ([`dataplane_abi::BACKEND_NONE`] for backends).
//!
//! After a restart the previous compilation is gone, but the kernel's maps say which frontend
//! belonged to which Service and backend set ids, and which backends each set held: those
//! [`Hints`] give identities their ids back, so an unchanged state rewrites nothing.

use std::collections::{HashMap, HashSet};

use dataplane_abi::{Addr, ServiceKey};

use super::{CompiledService, NextIds};

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

/// Hands out ids during one compilation.
pub(super) struct Ids<'a> {
    next: NextIds,
    previous: &'a [&'a CompiledService],
    hints: Option<Hints>,
    /// Hinted ids given this compilation, so that each goes to one identity only.
    hinted: HashSet<(Kind, u32)>,
    /// After an id space wrapped: the ids in use in it, to skip.
    in_use: HashMap<Kind, HashSet<u32>>,
}

impl<'a> Ids<'a> {
    /// Ids above `next`; `previous` are the units of the last compilation (their ids are in
    /// use until this one replaces them).
    pub(super) fn new(
        next: NextIds,
        previous: &'a [&'a CompiledService],
        hints: Option<Hints>,
    ) -> Self {
        Self {
            next,
            previous,
            hints,
            hinted: HashSet::new(),
            in_use: HashMap::new(),
        }
    }

    pub(super) fn hints(&self) -> Option<&Hints> {
        self.hints.as_ref()
    }

    /// `kept` if the identity had an id, else `hint` if no other identity took it, else a new
    /// one.
    pub(super) fn id(&mut self, kind: Kind, kept: Option<u32>, hint: Option<u32>) -> u32 {
        if let Some(id) = kept {
            return id;
        }
        if let Some(id) = hint.filter(|h| *h != 0)
            && self.hinted.insert((kind, id))
        {
            return id;
        }
        self.fresh(kind)
    }

    fn fresh(&mut self, kind: Kind) -> u32 {
        loop {
            let next = match kind {
                Kind::Service => &mut self.next.service,
                Kind::Set => &mut self.next.set,
                Kind::Backend => &mut self.next.backend,
            };
            let id = *next;
            if id == u32::MAX {
                *next = 1;
                let in_use = ids_of(self.previous, kind);
                self.in_use.insert(kind, in_use);
                continue;
            }
            *next = id + 1;
            // Before wrapping nothing is tracked: every id below `next` was given before.
            let in_use = self
                .in_use
                .get_mut(&kind)
                .is_some_and(|in_use| !in_use.insert(id));
            if !in_use {
                return id;
            }
        }
    }

    pub(super) fn finish(self) -> NextIds {
        self.next
    }
}

/// Every id of `kind` the units hold.
fn ids_of(units: &[&CompiledService], kind: Kind) -> HashSet<u32> {
    let mut out = HashSet::new();
    for unit in units {
        match kind {
            Kind::Service => {
                out.insert(unit.id);
            }
            Kind::Set => out.extend(unit.sets.iter().map(|s| s.id)),
            Kind::Backend => {
                out.extend(
                    unit.sets
                        .iter()
                        .flat_map(|s| s.backends.iter().map(|(id, _)| *id)),
                );
            }
        }
    }
    out
}
