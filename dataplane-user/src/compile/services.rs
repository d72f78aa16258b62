//! Services → frontends (`WEIR_SVC_V1`), backend sets with their Maglev tables
//! (`WEIR_MAG_*_V1`), backends (`WEIR_BE_V1`) and load-balancer source ranges
//! (`WEIR_LBSRC_V1`), with kube-proxy's semantics:
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
//!    Service with `loadBalancerSourceRanges` check the client against them.
//! 6. Two Services claiming one frontend: the first by `namespace/name` keeps it, and the
//!    other is warned about.
//!
//! Ids are kept across compilations by identity ([`ServiceIds`]), so a change rewrites only
//! the entries it affects and a tracked connection's backend id keeps its meaning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use dataplane_abi::maglev::{self, Tier};
use dataplane_abi::{
    Addr, BACKEND_NONE, Backend, ServiceKey, ServiceScope, ServiceValue, SourceRangeKey,
    backend_flags, capacity, names, service_flags,
};
use ipnetwork::IpNetwork;

use super::maglev::{Member, Table};
use super::{CompileError, MapSet, NodeView, to_addr};
use crate::model::{DesiredState, EndpointSlice, Protocol, Service, ServiceKind, ServicePort};

/// One prefix of `WEIR_LBSRC_V1`: a `loadBalancerSourceRanges` entry of one Service.
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

/// Which endpoints a backend set holds: a Kubernetes traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TrafficPolicy {
    /// Every endpoint of the cluster.
    Cluster,
    /// Only the endpoints on this node.
    Local,
}

impl TrafficPolicy {
    fn of(local: bool) -> Self {
        if local { Self::Local } else { Self::Cluster }
    }
}

/// What a backend set is, whatever its id: one port of one Service, one address family, one
/// traffic policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SetIdentity {
    /// `namespace/name`.
    service: String,
    port: String,
    protocol: Protocol,
    ipv6: bool,
    policy: TrafficPolicy,
}

/// What a backend is, whatever its id: an endpoint address and port in one backend set.
type BackendIdentity = (u32, Addr, u16);

/// Ids of one kind, by identity, and the next one to give out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdMap<K: Eq + std::hash::Hash> {
    ids: HashMap<K, u32>,
    next: u32,
}

impl<K: Eq + std::hash::Hash> Default for IdMap<K> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            next: 1,
        }
    }
}

impl<K: Eq + std::hash::Hash> IdMap<K> {
    fn above(max_in_use: u32) -> Self {
        Self {
            ids: HashMap::new(),
            next: max_in_use.saturating_add(1).max(1),
        }
    }
}

/// What the maps held when the agent started, to give each identity back its id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Recovered {
    /// Service id and backend set id of each frontend.
    frontends: HashMap<ServiceKey, (u32, u32)>,
    /// Backend id of each backend of each set.
    backends: HashMap<BackendIdentity, u32>,
}

/// Service, backend set and backend ids by identity, carried from one compilation to the
/// next (as [`super::ClassIds`] carries peer class ids).
///
/// A new identity gets an id above every id given before, so an id that falls out of use
/// (a backend that left, whose id tracked connections still hold) is not given to another
/// identity until the 32-bit space wraps around, which at a thousand new backends a second
/// takes seven weeks, long after connections that old are gone. Id 0 is never given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIds {
    services: IdMap<String>,
    sets: IdMap<SetIdentity>,
    backends: IdMap<BackendIdentity>,
    recovered: Option<Recovered>,
}

impl ServiceIds {
    /// Each Service's id and its `namespace/name`: the Services this compilation gave ids to
    /// (after a restart, before any compilation: none).
    pub fn services(&self) -> impl Iterator<Item = (u32, &str)> {
        self.services
            .ids
            .iter()
            .map(|(name, id)| (*id, name.as_str()))
    }

    /// Ids for an agent that adopts maps it did not compile (a restart): identities whose
    /// frontends and backends are still in `maps` get their ids back, so an unchanged state
    /// rewrites nothing and tracked connections keep their backends; new ids start above
    /// every id the maps hold.
    #[must_use]
    pub fn recover(maps: &MapSet) -> Self {
        let mut recovered = Recovered::default();
        for (key, value) in &maps.services {
            recovered
                .frontends
                .insert(*key, (value.service, value.backend_set));
        }
        for (set, table) in &maps.maglev {
            for id in &table.slots {
                if let Some(be) = maps.backends.get(id) {
                    recovered.backends.insert((*set, be.addr, be.port_h), *id);
                }
            }
        }
        let max_of = |ids: &mut dyn Iterator<Item = u32>| ids.max().unwrap_or(0);
        Self {
            services: IdMap::above(max_of(&mut maps.services.values().map(|v| v.service))),
            sets: IdMap::above(max_of(
                &mut maps
                    .services
                    .values()
                    .map(|v| v.backend_set)
                    .chain(maps.maglev.keys().copied()),
            )),
            backends: IdMap::above(max_of(&mut maps.backends.keys().copied())),
            recovered: Some(recovered),
        }
    }
}

/// Hands out the ids of one kind during one compilation.
struct Allocator<'a, K: Eq + std::hash::Hash> {
    previous: &'a IdMap<K>,
    given: HashMap<K, u32>,
    /// Ids given this compilation, so that a recovered id goes to one identity only.
    taken: HashSet<u32>,
    next: u32,
    /// After the id space wrapped: every id the previous compilation gave, to skip them.
    wrapped: Option<HashSet<u32>>,
}

impl<'a, K: Clone + Eq + std::hash::Hash> Allocator<'a, K> {
    fn new(previous: &'a IdMap<K>) -> Self {
        Self {
            previous,
            given: HashMap::with_capacity(previous.ids.len()),
            taken: HashSet::with_capacity(previous.ids.len()),
            next: previous.next.max(1),
            wrapped: None,
        }
    }

    /// The id of `key`: the one it had, else `hint` (what the maps held at a restart) if no
    /// other identity has it, else a new one.
    fn id(&mut self, key: &K, hint: Option<u32>) -> u32 {
        if let Some(id) = self.given.get(key) {
            return *id;
        }
        let id = match self.previous.ids.get(key) {
            Some(id) => *id,
            None => match hint.filter(|h| *h != BACKEND_NONE && !self.taken.contains(h)) {
                Some(id) => id,
                None => self.fresh(),
            },
        };
        self.taken.insert(id);
        self.given.insert(key.clone(), id);
        id
    }

    fn fresh(&mut self) -> u32 {
        loop {
            let id = self.next;
            if id == u32::MAX {
                self.next = 1;
                self.wrapped = Some(self.previous.ids.values().copied().collect());
                continue;
            }
            self.next += 1;
            let in_use = self.taken.contains(&id)
                || self.wrapped.as_ref().is_some_and(|ids| ids.contains(&id));
            if !in_use {
                return id;
            }
        }
    }

    fn finish(self) -> IdMap<K> {
        IdMap {
            ids: self.given,
            next: self.next,
        }
    }
}

/// The id allocators of one compilation.
struct IdBook<'a> {
    services: Allocator<'a, String>,
    sets: Allocator<'a, SetIdentity>,
    backends: Allocator<'a, BackendIdentity>,
    recovered: Option<&'a Recovered>,
}

impl<'a> IdBook<'a> {
    fn new(previous: &'a ServiceIds) -> Self {
        Self {
            services: Allocator::new(&previous.services),
            sets: Allocator::new(&previous.sets),
            backends: Allocator::new(&previous.backends),
            recovered: previous.recovered.as_ref(),
        }
    }

    /// What the maps held for the first of `frontends` they knew, at a restart.
    fn recovered_frontend(&self, frontends: &[&Frontend]) -> Option<(u32, u32)> {
        let recovered = self.recovered?;
        frontends
            .iter()
            .find_map(|f| recovered.frontends.get(&f.key).copied())
    }

    fn backend(&mut self, set: u32, addr: Addr, port_h: u16) -> u32 {
        let identity = (set, addr, port_h);
        let hint = self
            .recovered
            .and_then(|r| r.backends.get(&identity).copied());
        self.backends.id(&identity, hint)
    }

    fn finish(self) -> ServiceIds {
        ServiceIds {
            services: self.services.finish(),
            sets: self.sets.finish(),
            backends: self.backends.finish(),
            recovered: None,
        }
    }
}

/// One frontend of a Service, before ids are known.
#[derive(Clone, Debug)]
struct Frontend {
    key: ServiceKey,
    /// Index of the Service port in `spec.ports`.
    port: usize,
    policy: TrafficPolicy,
    flags: u16,
}

/// Compiles every Service of `state` into `out`'s Service maps, with ids kept from
/// `previous`.
pub(super) fn compile(
    state: &DesiredState,
    node: &NodeView,
    previous: &ServiceIds,
    out: &mut MapSet,
) -> Result<(), CompileError> {
    let slices = SliceIndex::new(&state.endpoint_slices);
    let node_addrs = NodePortAddrs::of(node);
    let mut ids = IdBook::new(previous);
    let mut services: Vec<&Service> = state.services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for service in services {
        let compiler = ServiceCompiler {
            service,
            slices: slices.of(service),
            node,
            node_addrs: &node_addrs,
        };
        compiler.compile(&mut ids, out)?;
    }
    out.service_ids = ids.finish();
    check_capacity(out)
}

/// `EndpointSlices` by the Service they belong to.
struct SliceIndex<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: &'a [EndpointSlice]) -> Self {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            by_service
                .entry((slice.namespace.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        Self { by_service }
    }

    /// The slices of `service`: legacy ones only when it has no other.
    fn of(&self, service: &Service) -> Vec<&'a EndpointSlice> {
        let Some(all) = self
            .by_service
            .get(&(service.namespace.as_str(), service.name.as_str()))
        else {
            return Vec::new();
        };
        let current: Vec<&EndpointSlice> = all.iter().copied().filter(|s| !s.legacy).collect();
        if current.is_empty() {
            all.clone()
        } else {
            current
        }
    }
}

/// Addresses of this node where node ports answer: all but loopback, link-local, multicast
/// and unspecified ones.
struct NodePortAddrs(Vec<IpAddr>);

impl NodePortAddrs {
    fn of(node: &NodeView) -> Self {
        let usable = |ip: &&IpAddr| match ip {
            IpAddr::V4(v4) => {
                !(v4.is_loopback()
                    || v4.is_link_local()
                    || v4.is_multicast()
                    || v4.is_unspecified())
            }
            IpAddr::V6(v6) => {
                !(v6.is_loopback()
                    || v6.is_unicast_link_local()
                    || v6.is_multicast()
                    || v6.is_unspecified())
            }
        };
        Self(node.host_addrs.iter().filter(usable).copied().collect())
    }
}

/// An endpoint of one Service port, merged over the slices that list it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    addr: Addr,
    port_h: u16,
    ready: bool,
    /// Serving and terminating: used only when no endpoint of the set is ready.
    fallback: bool,
    local: bool,
}

/// Compiles one Service.
struct ServiceCompiler<'a> {
    service: &'a Service,
    slices: Vec<&'a EndpointSlice>,
    node: &'a NodeView,
    node_addrs: &'a NodePortAddrs,
}

impl ServiceCompiler<'_> {
    fn name(&self) -> String {
        format!("{}/{}", self.service.namespace, self.service.name)
    }

    fn compile(&self, ids: &mut IdBook<'_>, out: &mut MapSet) -> Result<(), CompileError> {
        let frontends = self.unclaimed(self.frontends(), out);
        if frontends.is_empty() {
            return Ok(());
        }
        let all: Vec<&Frontend> = frontends.iter().collect();
        let hint = ids.recovered_frontend(&all).map(|(service, _)| service);
        let service_id = ids.services.id(&self.name(), hint);
        let mut groups: BTreeMap<(usize, bool, TrafficPolicy), Vec<&Frontend>> = BTreeMap::new();
        for f in &frontends {
            let ipv6 = !is_v4_mapped(&f.key.addr);
            groups.entry((f.port, ipv6, f.policy)).or_default().push(f);
        }
        let mut endpoints: BTreeMap<(usize, bool), Vec<Candidate>> = BTreeMap::new();
        for ((port, ipv6, policy), members) in groups {
            let candidates = endpoints
                .entry((port, ipv6))
                .or_insert_with(|| self.endpoints(&self.service.ports[port], ipv6));
            let set = self.backend_set(ids, port, ipv6, policy, candidates, &members, out)?;
            for f in members {
                out.services.insert(
                    f.key,
                    ServiceValue {
                        service: service_id,
                        backend_set: set.id,
                        backend_count: set.backends,
                        affinity_timeout_s: self.service.affinity_timeout_s.unwrap_or(0),
                        flags: f.flags,
                        maglev: set.tier as u8,
                        _pad: 0,
                    },
                );
            }
        }
        if frontends
            .iter()
            .any(|f| f.flags & service_flags::SOURCE_RANGES != 0)
        {
            for range in &self.service.load_balancer_source_ranges {
                out.source_ranges.insert(source_range(service_id, *range));
            }
        }
        Ok(())
    }

    /// Every frontend of the Service, in a fixed order: ports in `spec.ports` order, then
    /// cluster IPs, external IPs, load-balancer IPs, node addresses.
    fn frontends(&self) -> Vec<Frontend> {
        let svc = self.service;
        let mut out = Vec::new();
        let families: Vec<bool> = svc.cluster_ips.iter().map(IpAddr::is_ipv6).collect();
        let served = |ip: &&IpAddr| families.contains(&ip.is_ipv6());
        let node_ports = matches!(svc.kind, ServiceKind::NodePort | ServiceKind::LoadBalancer);
        let external = Scoped::external(svc);
        let ranges = Scoped {
            flags: external.flags
                | if svc.load_balancer_source_ranges.is_empty() {
                    0
                } else {
                    service_flags::SOURCE_RANGES
                },
            ..external
        };
        for (idx, port) in svc.ports.iter().enumerate() {
            let frontend = |addr: IpAddr, port_h: u16, scope: ServiceScope, how: Scoped| Frontend {
                key: ServiceKey {
                    addr: to_addr(addr),
                    port_h,
                    proto: port.protocol.number(),
                    scope: scope as u8,
                },
                port: idx,
                policy: how.policy,
                flags: how.flags,
            };
            for ip in &svc.cluster_ips {
                out.push(frontend(
                    *ip,
                    port.port,
                    ServiceScope::Internal,
                    Scoped::internal(svc),
                ));
            }
            let both_scopes = |ip: IpAddr, port_h: u16, how: Scoped| {
                [
                    frontend(ip, port_h, ServiceScope::External, how),
                    frontend(
                        ip,
                        port_h,
                        ServiceScope::Internal,
                        Scoped::short_circuit(how),
                    ),
                ]
            };
            for ip in svc.external_ips.iter().filter(served) {
                out.extend(both_scopes(*ip, port.port, external));
            }
            for ip in svc.load_balancer_ips.iter().filter(served) {
                out.extend(both_scopes(*ip, port.port, ranges));
            }
            if let (true, Some(node_port)) = (node_ports, port.node_port) {
                for ip in self.node_addrs.0.iter().filter(served) {
                    out.extend(both_scopes(*ip, node_port, external));
                }
            }
        }
        out
    }

    /// `frontends` without those an earlier Service (or an earlier port of this one) has
    /// claimed, each left out with a warning.
    fn unclaimed(&self, frontends: Vec<Frontend>, out: &mut MapSet) -> Vec<Frontend> {
        let mut seen = HashSet::new();
        let mut kept = Vec::with_capacity(frontends.len());
        for f in frontends {
            if out.services.contains_key(&f.key) || !seen.insert(f.key) {
                out.warnings.push(format!(
                    "Service {} ({}): {} is already a frontend of another Service or port; ignored",
                    self.name(),
                    self.service.origin,
                    describe(&f.key)
                ));
                continue;
            }
            kept.push(f);
        }
        kept
    }

    /// The endpoints of Service port `port` in one family, merged over slices, sorted.
    fn endpoints(&self, port: &ServicePort, ipv6: bool) -> Vec<Candidate> {
        let mut merged: BTreeMap<(Addr, u16), Candidate> = BTreeMap::new();
        for slice in &self.slices {
            let Some(ep_port) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let on_node = ep.node_name.is_some() && ep.node_name == self.node.node_name;
                for ip in ep.addresses.iter().filter(|ip| ip.is_ipv6() == ipv6) {
                    let candidate = Candidate {
                        addr: to_addr(*ip),
                        port_h: ep_port.port,
                        ready: ep.ready,
                        fallback: ep.serving && ep.terminating,
                        local: on_node || self.node.local_routes.contains_key(ip),
                    };
                    merged
                        .entry((candidate.addr, candidate.port_h))
                        .and_modify(|c| {
                            c.ready |= candidate.ready;
                            c.fallback |= candidate.fallback;
                            c.local |= candidate.local;
                        })
                        .or_insert(candidate);
                }
            }
        }
        merged.into_values().collect()
    }

    /// Writes the backend set of one port, family and policy (its backends and table) and
    /// returns what its frontends point at.
    #[expect(
        clippy::too_many_arguments,
        reason = "one set's identity, inputs and output; a struct would only rename them"
    )]
    fn backend_set(
        &self,
        ids: &mut IdBook<'_>,
        port: usize,
        ipv6: bool,
        policy: TrafficPolicy,
        candidates: &[Candidate],
        frontends: &[&Frontend],
        out: &mut MapSet,
    ) -> Result<SetRef, CompileError> {
        let service_port = &self.service.ports[port];
        let chosen = select(candidates, policy);
        let Some(tier) = Tier::for_backends(chosen.len()) else {
            return Err(CompileError::TooManyBackends {
                service: self.name(),
                origin: self.service.origin.to_string(),
                port: port_name(service_port),
                backends: chosen.len(),
                max: maglev::LARGE,
            });
        };
        let identity = SetIdentity {
            service: self.name(),
            port: service_port.name.clone(),
            protocol: service_port.protocol,
            ipv6,
            policy,
        };
        let hint = ids.recovered_frontend(frontends).map(|(_, set)| set);
        let set_id = ids.sets.id(&identity, hint);
        let mut members = Vec::with_capacity(chosen.len());
        for c in &chosen {
            let id = ids.backend(set_id, c.addr, c.port_h);
            members.push(Member::new(c.addr, c.port_h, id));
            out.backends.insert(
                id,
                Backend {
                    addr: c.addr,
                    port_h: c.port_h,
                    flags: if c.local { backend_flags::LOCAL } else { 0 },
                    _pad: 0,
                },
            );
        }
        if let Some(table) = Table::build(&members, tier) {
            out.maglev.insert(set_id, table);
        }
        Ok(SetRef {
            id: set_id,
            backends: u32::try_from(chosen.len()).unwrap_or(u32::MAX),
            tier,
        })
    }
}

/// What a frontend needs to know of its backend set.
struct SetRef {
    id: u32,
    backends: u32,
    tier: Tier,
}

/// The traffic policy and flags of one frontend entry.
#[derive(Clone, Copy)]
struct Scoped {
    policy: TrafficPolicy,
    flags: u16,
}

impl Scoped {
    /// A cluster IP, for clients inside the cluster.
    fn internal(svc: &Service) -> Self {
        let policy = TrafficPolicy::of(svc.internal_traffic_local);
        Self {
            policy,
            flags: drop_if_empty(policy),
        }
    }

    /// An external, load-balancer or node address, for clients outside the cluster.
    fn external(svc: &Service) -> Self {
        let policy = TrafficPolicy::of(svc.external_traffic_local);
        let masquerade = match policy {
            TrafficPolicy::Cluster => service_flags::MASQUERADE,
            TrafficPolicy::Local => 0,
        };
        Self {
            policy,
            flags: masquerade | drop_if_empty(policy),
        }
    }

    /// The same address for clients inside the cluster: every endpoint, no masquerade, but
    /// the source ranges still apply.
    fn short_circuit(external: Self) -> Self {
        Self {
            policy: TrafficPolicy::Cluster,
            flags: external.flags & service_flags::SOURCE_RANGES,
        }
    }
}

fn drop_if_empty(policy: TrafficPolicy) -> u16 {
    match policy {
        TrafficPolicy::Cluster => 0,
        TrafficPolicy::Local => service_flags::DROP_IF_EMPTY,
    }
}

/// The endpoints a set of `policy` sends new connections to: ready ones, else serving and
/// terminating ones.
fn select(candidates: &[Candidate], policy: TrafficPolicy) -> Vec<Candidate> {
    let eligible = |c: &&Candidate| policy == TrafficPolicy::Cluster || c.local;
    let ready: Vec<Candidate> = candidates
        .iter()
        .filter(eligible)
        .filter(|c| c.ready)
        .copied()
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(eligible)
        .filter(|c| c.fallback)
        .copied()
        .collect()
}

fn is_v4_mapped(addr: &Addr) -> bool {
    addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
}

fn source_range(service: u32, range: IpNetwork) -> SourceRange {
    let (prefix_len, addr) = super::to_prefix(range);
    SourceRange {
        service,
        prefix_len,
        addr,
    }
}

fn port_name(port: &ServicePort) -> String {
    if port.name.is_empty() {
        format!("{}/{}", port.port, port.protocol)
    } else {
        format!("{} ({}/{})", port.name, port.port, port.protocol)
    }
}

/// A frontend for messages: `10.96.0.1:80/TCP (internal)`.
fn describe(key: &ServiceKey) -> String {
    let ip = if is_v4_mapped(&key.addr) {
        IpAddr::from([key.addr[12], key.addr[13], key.addr[14], key.addr[15]])
    } else {
        IpAddr::from(key.addr)
    };
    let proto = match key.proto {
        dataplane_abi::proto::TCP => "TCP".to_owned(),
        dataplane_abi::proto::UDP => "UDP".to_owned(),
        dataplane_abi::proto::SCTP => "SCTP".to_owned(),
        other => other.to_string(),
    };
    let scope = if key.scope == ServiceScope::Internal as u8 {
        "internal"
    } else {
        "external"
    };
    let addr = match ip {
        IpAddr::V4(v4) => format!("{v4}:{}", key.port_h),
        IpAddr::V6(v6) => format!("[{v6}]:{}", key.port_h),
    };
    format!("{addr}/{proto} ({scope})")
}

fn check_capacity(out: &MapSet) -> Result<(), CompileError> {
    let mut tiers = [0usize; 3];
    for table in out.maglev.values() {
        tiers[table.tier as usize] += 1;
    }
    for (map, needed, cap) in [
        (names::SERVICES, out.services.len(), capacity::SERVICES),
        (names::BACKENDS, out.backends.len(), capacity::BACKENDS),
        (names::MAGLEV_SMALL, tiers[0], capacity::MAGLEV_SMALL),
        (names::MAGLEV_MEDIUM, tiers[1], capacity::MAGLEV_MEDIUM),
        (names::MAGLEV_LARGE, tiers[2], capacity::MAGLEV_LARGE),
        (
            names::SOURCE_RANGES,
            out.source_ranges.len(),
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
