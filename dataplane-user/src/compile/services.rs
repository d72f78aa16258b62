//! Services → frontends (`WEIR_SVC_V2`), backend sets with their Maglev tables
//! (`WEIR_MAG_*_V2`), backends (`WEIR_BE_V2`) and load-balancer source ranges
//! (`WEIR_LBSRC_V2`), with kube-proxy's semantics:
//!
//! 1. A Service without a cluster IP (headless) is not load-balanced at all, and a Service
//!    serves only the address families of its cluster IPs: external, load-balancer and node
//!    addresses of another family are left out, as kube-proxy's per-family proxiers do.
//! 2. Its endpoints come from its `EndpointSlices`; slices converted from legacy `Endpoints`
//!    count only when the Service has no other slice. A Service port's endpoint port is the
//!    slice port of the same name and protocol. An address listed twice counts once, ready if
//!    any listing says so.
//! 3. A backend set holds the endpoints of one Service port, one family and one traffic policy
//!    (`Cluster`: all of them; `Local`: those on this node): the ready ones, or, when none is
//!    ready, the serving and terminating ones (kube-proxy's fallback, so that a rollout's last
//!    connections still land somewhere).
//! 4. Frontends, each for one scope (who the client is):
//!    - every cluster IP × port: Internal, with `internalTrafficPolicy`;
//!    - every external IP and load-balancer IP × port, and for `NodePort` and `LoadBalancer`
//!      Services every address of this node (but loopback and link-local) × node port:
//!      External with `externalTrafficPolicy`, and Internal with `Cluster` (kube-proxy sends
//!      in-cluster clients of those addresses to every endpoint).
//! 5. Flags: External entries with policy `Cluster` masquerade; entries with policy `Local`
//!    drop when the set is empty (another node may have endpoints); load-balancer IPs of a
//!    Service with `loadBalancerSourceRanges` check the client against them (an IPv6 range
//!    never admits an IPv4 client, `::/0` included).
//! 6. Two Services claiming one frontend: the first by namespace, then name, keeps it, and
//!    the other is warned about.
//!
//! Each Service compiles to one [`CompiledService`], shared (`Arc`) from one compilation to
//! the next while its inputs stay the same: the Service, its slices, and what it uses of the
//! node. A change to one Service among 10 000 compiles that one: the Services and slices a
//! source passed on unchanged are the same `Arc`s, so one walk beside the previous lists
//! finds what changed (`incremental`), and the agent finds what to write by comparing
//! pointers, not entries ([`ServiceMaps::changes`]). Ids are kept by identity (see `ids`).

mod build;
mod chunked;
mod ids;
mod incremental;
mod units;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_abi::{Addr, Backend, ServiceKey, ServiceValue, SourceRangeKey, capacity, names};

use self::build::{NodePortAddrs, ServiceCompiler, SetIdentity};
use self::chunked::Chunked;
use self::ids::{Hints, Ids};
use self::units::Units;
use super::maglev::Table;
use super::{CompileError, NodeView, same_objects};
use crate::model::{DesiredState, EndpointSlice, Node, Service};

/// One prefix of `WEIR_LBSRC_V2`: a `loadBalancerSourceRanges` entry of one Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    /// [`ServiceValue::service`] of the Service.
    pub service: u32,
    /// Prefix length over the 16-byte address (IPv4 ranges offset by 96).
    pub prefix_len: u32,
    /// The range's first address.
    pub addr: Addr,
}

impl SourceRange {
    /// Prefix length of the trie key: the 32 bits of the service id come first.
    #[must_use]
    pub fn key_prefix_len(&self) -> u32 {
        32 + self.prefix_len
    }

    /// Data of the trie key.
    #[must_use]
    pub fn key(&self) -> SourceRangeKey {
        SourceRangeKey {
            service_be: self.service.to_be(),
            addr: self.addr,
        }
    }

    /// The range a trie key stands for; `None` for a prefix shorter than the service id.
    #[must_use]
    pub fn from_key(key_prefix_len: u32, key: &SourceRangeKey) -> Option<Self> {
        Some(Self {
            service: u32::from_be(key.service_be),
            prefix_len: key_prefix_len.checked_sub(32)?,
            addr: key.addr,
        })
    }
}

/// The Service maps' contents as plain ordered maps: for diffs, tests and read-back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlatServices {
    /// Contents of `WEIR_SVC_V2`.
    pub frontends: BTreeMap<ServiceKey, ServiceValue>,
    /// Contents of `WEIR_BE_V2`.
    pub backends: BTreeMap<u32, Backend>,
    /// Contents of the three `WEIR_MAG_*_V2` maps, by backend set id (the table says its tier).
    pub tables: BTreeMap<u32, Table>,
    /// Contents of `WEIR_LBSRC_V2`.
    pub source_ranges: BTreeSet<SourceRange>,
}

impl FlatServices {
    /// Adds the entries of `unit`.
    pub fn add(&mut self, unit: &CompiledService) {
        self.frontends.extend(unit.frontends.iter().copied());
        for set in &unit.sets {
            self.backends.extend(set.backends.iter().copied());
            if let Some(table) = &set.table {
                self.tables.insert(set.id, table.clone());
            }
        }
        self.source_ranges
            .extend(unit.source_ranges.iter().copied());
    }
}

/// A Service's `healthCheckNodePort` and what it answers on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service's `metadata.namespace`.
    pub namespace: String,
    /// The Service's `metadata.name`.
    pub name: String,
    /// The TCP port.
    pub port: u16,
    /// Its ready endpoints on this node, by the rule that fills its `Local` backend sets.
    pub local_endpoints: usize,
}

/// What one Service compiles to.
#[derive(Debug, PartialEq, Eq)]
pub struct CompiledService {
    /// [`ServiceValue::service`].
    pub id: u32,
    /// Its frontends, sorted.
    pub frontends: Vec<(ServiceKey, ServiceValue)>,
    /// Its backend sets.
    pub sets: Vec<CompiledSet>,
    /// Its `loadBalancerSourceRanges`, when a load-balancer IP uses them.
    pub source_ranges: Vec<SourceRange>,
    /// Its health check, when it has a `healthCheckNodePort`.
    pub health_check: Option<HealthCheck>,
    /// What it was compiled from; `None` for what a restarted agent read from the kernel.
    inputs: Option<Inputs>,
}

/// A backend set of one Service.
#[derive(Debug, PartialEq, Eq)]
pub struct CompiledSet {
    /// Which port, protocol, family and policy; `None` when read from the kernel.
    identity: Option<SetIdentity>,
    /// [`ServiceValue::backend_set`].
    pub id: u32,
    /// Its backends by id, sorted by address and port.
    pub backends: Vec<(u32, Backend)>,
    /// Its Maglev table; `None` for a set without backends.
    pub table: Option<Table>,
}

/// What a [`CompiledService`] depends on: when these are the same, so is the output.
#[derive(Debug, PartialEq, Eq)]
struct Inputs {
    service: Arc<Service>,
    /// Every slice that names the Service, legacy ones included, sorted by key.
    slices: Vec<Arc<EndpointSlice>>,
    /// Endpoint addresses local because a route leads to one of this node's interfaces.
    routed: Vec<IpAddr>,
    /// Some frontend went to another Service (or twice to this one): recompiled every time,
    /// so that it takes the frontend back when the other lets go.
    contested: bool,
}

impl Inputs {
    /// Whether `service` and `slices` are what the unit was compiled from: the same objects
    /// (a source passes unchanged ones on as they are), or equal ones.
    fn same(&self, service: &Arc<Service>, slices: &[Arc<EndpointSlice>]) -> bool {
        same_objects(
            std::slice::from_ref(&self.service),
            std::slice::from_ref(service),
        ) && same_objects(&self.slices, slices)
    }
}

/// Where the next new id of each kind starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NextIds {
    service: u32,
    set: u32,
    backend: u32,
}

impl Default for NextIds {
    fn default() -> Self {
        Self {
            service: 1,
            set: 1,
            backend: 1,
        }
    }
}

/// What Services use of the node view, to know whether a change of it touches them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeFacts {
    name: Option<String>,
    node_port_addrs: Vec<IpAddr>,
    routed: BTreeSet<IpAddr>,
}

impl NodeFacts {
    fn of(node: &NodeView, nodes: &[Node]) -> Self {
        Self {
            name: node.node_name.clone(),
            node_port_addrs: NodePortAddrs::of(node, nodes).0,
            routed: node.local_routes.keys().copied().collect(),
        }
    }
}

/// The Service part of a compilation: one [`CompiledService`] per Service, the ids to
/// continue from, the node facts they were compiled with, and what the next compilation
/// needs to compile only what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMaps {
    /// By `namespace/name`, one per Service, one that compiles to nothing included (it
    /// remembers what it was compiled from); the empty name holds what a restarted agent read
    /// from the kernel. Shared, so that keeping a copy (the agent keeps what it applied) costs
    /// nothing.
    units: Units,
    next: NextIds,
    node: NodeFacts,
    /// The Services and slices compiled, sorted by key: the next compilation finds what
    /// changed against them. `None` when no pass found them in strict order (a restarted
    /// agent's recovered maps, or two objects with one key): the next one compiles them all.
    seen: Option<Seen>,
    /// Which Service (`namespace/name`) has each frontend.
    owners: Arc<HashMap<ServiceKey, Arc<str>>>,
    /// The Services that lost a frontend to another, compiled every time.
    contested: Arc<BTreeSet<Arc<str>>>,
    /// The maps' sizes, kept up to date unit by unit.
    counts: Counts,
}

/// What a compilation read, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    services: Chunked<Service>,
    slices: Chunked<EndpointSlice>,
}

/// Key of the unit that holds what the kernel held at start: no Service name is empty.
const RECOVERED: &str = "";

impl ServiceMaps {
    /// The maps as a restarted agent finds them: everything in one unit whose ids the next
    /// compilation gives back to the identities that had them; new ids start above them.
    #[must_use]
    pub fn recovered(flat: FlatServices) -> Self {
        let max = |ids: &mut dyn Iterator<Item = u32>| ids.max().unwrap_or(0).saturating_add(1);
        let next = NextIds {
            service: max(&mut flat.frontends.values().map(|v| v.service)),
            set: max(&mut flat
                .frontends
                .values()
                .map(|v| v.backend_set)
                .chain(flat.tables.keys().copied())),
            backend: max(&mut flat.backends.keys().copied()),
        };
        let mut orphans = flat.backends;
        let mut sets = Vec::new();
        for (id, table) in flat.tables {
            let members: BTreeSet<u32> = table.slots.iter().copied().collect();
            let backends = members
                .iter()
                .filter_map(|b| orphans.remove(b).map(|be| (*b, be)))
                .collect();
            sets.push(CompiledSet {
                identity: None,
                id,
                backends,
                table: Some(table),
            });
        }
        // Backends no table names: kept so that the next write removes them.
        sets.push(CompiledSet {
            identity: None,
            id: 0,
            backends: orphans.into_iter().collect(),
            table: None,
        });
        let unit = CompiledService {
            id: 0,
            frontends: flat.frontends.into_iter().collect(),
            sets,
            source_ranges: flat.source_ranges.into_iter().collect(),
            health_check: None,
            inputs: None,
        };
        let mut counts = Counts::default();
        counts.add(&unit);
        let mut units = Units::default();
        units.insert(Arc::from(RECOVERED), Arc::new(unit));
        Self {
            units,
            next: NextIds {
                service: next.service.max(1),
                set: next.set.max(1),
                backend: next.backend.max(1),
            },
            counts,
            ..Self::default()
        }
    }

    /// Everything, as plain maps.
    #[must_use]
    pub fn flatten(&self) -> FlatServices {
        let mut out = FlatServices::default();
        for unit in self.units.values() {
            out.add(unit);
        }
        out
    }

    /// The Services that differ between `self` and `next`, as they are in each: writing the
    /// entries of `next`'s and removing those only `self`'s have turns one into the other.
    /// Costs what changed: unchanged Services are skipped by pointer, most of them a shard
    /// at a time.
    #[must_use]
    pub fn changed_units<'s, 'n>(
        &'s self,
        next: &'n Self,
    ) -> (Vec<&'s CompiledService>, Vec<&'n CompiledService>) {
        self.units.changed(&next.units)
    }

    /// [`Self::changed_units`] as plain maps.
    #[must_use]
    pub fn changes(&self, next: &Self) -> (FlatServices, FlatServices) {
        let (old, new) = self.changed_units(next);
        let (mut before, mut after) = (FlatServices::default(), FlatServices::default());
        for unit in old {
            before.add(unit);
        }
        for unit in new {
            after.add(unit);
        }
        (before, after)
    }

    /// The compiled Services, by `namespace/name`, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = (&str, &CompiledService)> {
        self.units
            .iter()
            .filter(|(name, _)| &***name != RECOVERED)
            .map(|(name, unit)| (&**name, &**unit))
    }

    /// The health checks of the compiled Services, by namespace and name.
    #[must_use]
    pub fn health_checks(&self) -> Vec<&HealthCheck> {
        let mut checks: Vec<&HealthCheck> = self
            .units
            .values()
            .filter_map(|unit| unit.health_check.as_ref())
            .collect();
        checks.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        checks
    }

    /// Number of frontends, backends, Maglev tables (by tier) and source ranges.
    #[must_use]
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts.frontends == 0 && self.counts.backends == 0
    }
}

/// Sizes of the Service maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries of `WEIR_SVC_V2`.
    pub frontends: usize,
    /// Entries of `WEIR_BE_V2`.
    pub backends: usize,
    /// Entries of `WEIR_MAG_S_V2`, `WEIR_MAG_M_V2`, `WEIR_MAG_L_V2`.
    pub tables: [usize; 3],
    /// Entries of `WEIR_LBSRC_V2`.
    pub source_ranges: usize,
}

impl Counts {
    /// Counts the entries of `unit` in.
    fn add(&mut self, unit: &CompiledService) {
        self.frontends += unit.frontends.len();
        self.source_ranges += unit.source_ranges.len();
        for set in &unit.sets {
            self.backends += set.backends.len();
            if let Some(table) = &set.table {
                self.tables[table.tier as usize] += 1;
            }
        }
    }

    /// Counts the entries of `unit`, counted in before, out.
    fn remove(&mut self, unit: &CompiledService) {
        self.frontends -= unit.frontends.len();
        self.source_ranges -= unit.source_ranges.len();
        for set in &unit.sets {
            self.backends -= set.backends.len();
            if let Some(table) = &set.table {
                self.tables[table.tier as usize] -= 1;
            }
        }
    }
}

/// Compiles every Service of `state`, reusing what `previous` compiled from the same inputs
/// and keeping its ids. Returns the Service maps and the warnings.
///
/// When `state` lists its Services and slices in key order and the node facts Services use
/// are as before, only what changed is compiled ([`incremental`]); otherwise every Service
/// is looked at, and those whose inputs are unchanged keep their output.
pub(super) fn compile(
    state: &DesiredState,
    node: &NodeView,
    previous: &ServiceMaps,
) -> Result<(ServiceMaps, Vec<String>), CompileError> {
    let facts = NodeFacts::of(node, &state.nodes);
    let context = Context {
        node,
        facts: &facts,
    };
    if facts == previous.node {
        if let Some(compiled) = incremental::compile(state, &context, previous) {
            return compiled;
        }
        if previous.seen.is_some() {
            // Correct, but every Service is looked at: a source that hands Services or slices
            // over out of key order, or two under one key, should be told.
            tracing::debug!("Services or EndpointSlices out of key order: compiling them all");
        }
    }
    compile_all(state, &context, previous)
}

/// What every Service of one compilation is compiled against.
struct Context<'a> {
    node: &'a NodeView,
    facts: &'a NodeFacts,
}

impl Context<'_> {
    /// The output of `service` from `slices` (all its slices, sorted by key), with the ids of
    /// `before`; `claimed` says which frontends an earlier Service has.
    fn compile_unit(
        &self,
        service: &Arc<Service>,
        slices: Vec<Arc<EndpointSlice>>,
        before: Option<&CompiledService>,
        ids: &mut Ids<'_>,
        claimed: &dyn Fn(&ServiceKey) -> bool,
        warnings: &mut Vec<String>,
    ) -> Result<Arc<CompiledService>, CompileError> {
        let chosen = chosen(&slices);
        let compiler = ServiceCompiler {
            service,
            slices: &chosen,
            node: self.node,
            node_port_addrs: &self.facts.node_port_addrs,
        };
        let routed = routed(&chosen, self.node);
        let (unit, contested) = compiler.compile(before, ids, claimed, warnings)?;
        Ok(Arc::new(CompiledService {
            inputs: Some(Inputs {
                service: service.clone(),
                slices,
                routed,
                contested,
            }),
            ..unit
        }))
    }
}

/// Compiles every Service: the first compilation, one after the node changed, or one whose
/// input is not in key order.
fn compile_all(
    state: &DesiredState,
    context: &Context<'_>,
    previous: &ServiceMaps,
) -> Result<(ServiceMaps, Vec<String>), CompileError> {
    let index = SliceIndex::new(&state.endpoint_slices);
    let hints = previous.units.get(RECOVERED).map(|(_, u)| Hints::of(u));
    let mut ids = Ids::new(previous.next, &previous.units, hints);
    let reuse = Reuse {
        facts: context.facts,
        previous: &previous.node,
        node: context.node,
    };
    let services = sorted(&state.services, Service::key);
    let mut out = ServiceMaps {
        node: context.facts.clone(),
        ..ServiceMaps::default()
    };
    let mut owners = HashMap::new();
    let mut contested = BTreeSet::new();
    let mut warnings = Vec::new();
    for service in &services {
        let name = format!("{}/{}", service.namespace, service.name);
        if out.units.get(&name).is_some() {
            warnings.push(format!(
                "Service {name} ({}) is defined twice; the first is used",
                service.origin
            ));
            continue;
        }
        let slices = index.of(service);
        let (name, before) = match previous.units.get(&name) {
            // The same name `Arc`: `changes` then compares pointers, not names.
            Some((name, unit)) => (name.clone(), Some(unit)),
            None => (Arc::from(name), None),
        };
        let claimed = |key: &ServiceKey| owners.contains_key(key);
        let unit = match before {
            Some(unit) if reuse.allows(unit, service, &slices, &claimed) => unit.clone(),
            _ => context.compile_unit(
                service,
                slices,
                before.map(|u| &**u),
                &mut ids,
                &claimed,
                &mut warnings,
            )?,
        };
        for (key, _) in &unit.frontends {
            owners.insert(*key, name.clone());
        }
        if unit.inputs.as_ref().is_some_and(|i| i.contested) {
            contested.insert(name.clone());
        }
        out.counts.add(&unit);
        out.units.insert(name, unit);
    }
    let slices = sorted(&state.endpoint_slices, EndpointSlice::key);
    out.seen = (strictly_sorted(&services, Service::key)
        && strictly_sorted(&slices, EndpointSlice::key))
    .then(|| Seen {
        services: services.into_iter().cloned().collect(),
        slices: slices.into_iter().cloned().collect(),
    });
    out.next = ids.finish();
    out.owners = Arc::new(owners);
    out.contested = Arc::new(contested);
    check_capacity(&out.counts)?;
    Ok((out, warnings))
}

/// `items` sorted by `key`, borrowed.
fn sorted<'a, T, K: Ord>(items: &'a [Arc<T>], key: impl Fn(&'a T) -> K) -> Vec<&'a Arc<T>> {
    let mut out: Vec<&Arc<T>> = items.iter().collect();
    out.sort_by_key(|item| key(item));
    out
}

fn strictly_sorted<'a, T, K: Ord>(items: &[&'a Arc<T>], key: impl Fn(&'a T) -> K) -> bool {
    items.windows(2).all(|w| key(w[0]) < key(w[1]))
}

/// Decides whether a Service's previous output still holds.
struct Reuse<'a> {
    facts: &'a NodeFacts,
    previous: &'a NodeFacts,
    node: &'a NodeView,
}

impl Reuse<'_> {
    fn allows(
        &self,
        unit: &CompiledService,
        service: &Arc<Service>,
        slices: &[Arc<EndpointSlice>],
        claimed: &dyn Fn(&ServiceKey) -> bool,
    ) -> bool {
        let Some(inputs) = &unit.inputs else {
            return false;
        };
        if inputs.contested
            || !inputs.same(service, slices)
            || self.facts.name != self.previous.name
        {
            return false;
        }
        let uses_node_ports = service.ports.iter().any(|p| p.node_port.is_some());
        if uses_node_ports && self.facts.node_port_addrs != self.previous.node_port_addrs {
            return false;
        }
        if self.facts.routed != self.previous.routed
            && routed(&chosen(slices), self.node) != inputs.routed
        {
            return false;
        }
        unit.frontends.iter().all(|(k, _)| !claimed(k))
    }
}

/// The slices of a Service that count: legacy ones only when it has no other.
fn chosen(all: &[Arc<EndpointSlice>]) -> Vec<&EndpointSlice> {
    let modern: Vec<&EndpointSlice> = all.iter().map(|s| &**s).filter(|s| !s.legacy).collect();
    if modern.is_empty() {
        all.iter().map(|s| &**s).collect()
    } else {
        modern
    }
}

/// Endpoint addresses of `slices` that a route leads to a local interface for, sorted.
fn routed(slices: &[&EndpointSlice], node: &NodeView) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| &e.addresses)
        .filter(|ip| node.local_routes.contains_key(ip))
        .copied()
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `EndpointSlices` by the Service they belong to.
struct SliceIndex<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: &'a [Arc<EndpointSlice>]) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> = HashMap::new();
        for slice in slices {
            by_service
                .entry((slice.namespace.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        Self { by_service }
    }

    /// Every slice of `service`, sorted by key.
    fn of(&self, service: &Service) -> Vec<Arc<EndpointSlice>> {
        let Some(all) = self
            .by_service
            .get(&(service.namespace.as_str(), service.name.as_str()))
        else {
            return Vec::new();
        };
        let mut out: Vec<Arc<EndpointSlice>> = all.iter().map(|s| Arc::clone(s)).collect();
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        out
    }
}

fn check_capacity(counts: &Counts) -> Result<(), CompileError> {
    for (map, needed, cap) in [
        (names::SERVICES, counts.frontends, capacity::SERVICES),
        (names::BACKENDS, counts.backends, capacity::BACKENDS),
        (
            names::MAGLEV_SMALL,
            counts.tables[0],
            capacity::BACKEND_SETS,
        ),
        (
            names::MAGLEV_MEDIUM,
            counts.tables[1],
            capacity::MAGLEV_MEDIUM,
        ),
        (
            names::MAGLEV_LARGE,
            counts.tables[2],
            capacity::MAGLEV_LARGE,
        ),
        (
            names::SOURCE_RANGES,
            counts.source_ranges,
            capacity::SOURCE_RANGES,
        ),
    ] {
        if needed > cap as usize {
            return Err(CompileError::MapOverflow {
                map,
                needed,
                capacity: cap,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
