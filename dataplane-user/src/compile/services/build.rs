//! Compiling one Service: its frontends, the endpoints of each port, its backend sets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use dataplane_abi::maglev::{self, Tier};
use dataplane_abi::{
    Addr, Backend, ServiceKey, ServiceScope, ServiceValue, backend_flags, service_flags,
};
use ipnetwork::IpNetwork;

use super::ids::{Ids, Kind};
use super::{CompiledService, CompiledSet, HealthCheck, SourceRange};
use crate::compile::maglev::{Member, Table};
use crate::compile::{CompileError, NodeView, to_addr, to_prefix};
use crate::model::{EndpointSlice, Node, Protocol, Service, ServiceKind, ServicePort};

/// Which endpoints a backend set holds: a Kubernetes traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TrafficPolicy {
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

/// What a backend set of a Service is, whatever its id: one port, one address family, one
/// traffic policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SetIdentity {
    port: String,
    protocol: Protocol,
    ipv6: bool,
    policy: TrafficPolicy,
}

/// Addresses of this node where node ports answer: its `Node`'s `status.addresses` when the
/// desired state has it (as kube-proxy's `nodePortAddresses: primary`), else every address of
/// the node's network namespace; never loopback, link-local, multicast or unspecified ones.
pub(super) struct NodePortAddrs(pub(super) Vec<IpAddr>);

impl NodePortAddrs {
    pub(super) fn of(node: &NodeView, nodes: &[Node]) -> Self {
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
        let declared = nodes
            .iter()
            .find(|n| Some(&n.name) == node.node_name.as_ref())
            .map(|n| &n.addresses)
            .filter(|addresses| !addresses.is_empty());
        let mut addrs: Vec<IpAddr> = match declared {
            Some(addresses) => addresses.iter().filter(usable).copied().collect(),
            None => node.host_addrs.iter().filter(usable).copied().collect(),
        };
        addrs.sort_unstable();
        addrs.dedup();
        Self(addrs)
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
pub(super) struct ServiceCompiler<'a> {
    pub(super) service: &'a Service,
    pub(super) slices: &'a [&'a EndpointSlice],
    pub(super) node: &'a NodeView,
    pub(super) node_port_addrs: &'a [IpAddr],
}

impl ServiceCompiler<'_> {
    fn name(&self) -> String {
        format!("{}/{}", self.service.namespace, self.service.name)
    }

    /// The Service's output, with ids kept from `before` (its previous output), and whether a
    /// frontend had to be left out because an earlier Service (in `claimed`) has it.
    pub(super) fn compile(
        &self,
        before: Option<&CompiledService>,
        ids: &mut Ids<'_>,
        claimed: &dyn Fn(&ServiceKey) -> bool,
        warnings: &mut Vec<String>,
    ) -> Result<(CompiledService, bool), CompileError> {
        let (frontends, contested) = self.unclaimed(self.frontends(), claimed, warnings);
        let mut unit = CompiledService {
            id: 0,
            frontends: Vec::with_capacity(frontends.len()),
            sets: Vec::new(),
            source_ranges: Vec::new(),
            health_check: self.health_check(),
            inputs: None,
        };
        if frontends.is_empty() {
            return Ok((unit, contested));
        }
        let hint = ids
            .hints()
            .and_then(|h| h.frontend(frontends.iter().map(|f| &f.key)))
            .map(|(service, _)| service);
        unit.id = ids.id(Kind::Service, before.map(|u| u.id), hint)?;
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
            let identity = SetIdentity {
                port: self.service.ports[port].name.clone(),
                protocol: self.service.ports[port].protocol,
                ipv6,
                policy,
            };
            let kept = before.and_then(|u| {
                u.sets
                    .iter()
                    .find(|s| s.identity.as_ref() == Some(&identity))
            });
            let set = self.backend_set(port, identity, candidates, &members, kept, ids)?;
            for f in members {
                unit.frontends.push((
                    f.key,
                    ServiceValue {
                        service: unit.id,
                        backend_set: set.id,
                        backend_count: u32::try_from(set.backends.len()).unwrap_or(u32::MAX),
                        affinity_timeout_s: self.service.affinity_timeout_s.unwrap_or(0),
                        flags: f.flags,
                        maglev: set.table.as_ref().map_or(Tier::Small, |t| t.tier) as u8,
                        _pad: 0,
                    },
                ));
            }
            unit.sets.push(set);
        }
        unit.frontends.sort_unstable_by_key(|(k, _)| *k);
        if frontends
            .iter()
            .any(|f| f.flags & service_flags::SOURCE_RANGES != 0)
        {
            unit.source_ranges = self
                .service
                .load_balancer_source_ranges
                .iter()
                .flat_map(|r| source_range(unit.id, *r))
                .collect();
            unit.source_ranges.sort_unstable();
            unit.source_ranges.dedup();
        }
        Ok((unit, contested))
    }

    /// The Service's health check: its ready endpoints on this node, each address counted
    /// once whatever the ports (as kube-proxy counts them), by the rule that fills the `Local`
    /// backend sets ([`Self::endpoints`], [`Candidate::local`]). kube-proxy counts per address
    /// family; a dual-stack Service reports the larger of its two counts, so that a node where
    /// either family has an endpoint is not drained.
    fn health_check(&self) -> Option<HealthCheck> {
        let port = self.service.health_check_node_port?;
        let families: BTreeSet<bool> = self
            .service
            .cluster_ips
            .iter()
            .map(IpAddr::is_ipv6)
            .collect();
        let local_endpoints = families
            .into_iter()
            .map(|ipv6| {
                let ready: BTreeSet<Addr> = self
                    .service
                    .ports
                    .iter()
                    .flat_map(|port| self.endpoints(port, ipv6))
                    .filter(|c| c.local && c.ready)
                    .map(|c| c.addr)
                    .collect();
                ready.len()
            })
            .max()
            .unwrap_or(0);
        Some(HealthCheck {
            namespace: self.service.namespace.clone(),
            name: self.service.name.clone(),
            port,
            local_endpoints,
        })
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
                for ip in self.node_port_addrs.iter().filter(served) {
                    out.extend(both_scopes(*ip, node_port, external));
                }
            }
        }
        out
    }

    /// `frontends` without those an earlier Service (or an earlier port of this one) has
    /// claimed, each left out with a warning; and whether any was.
    fn unclaimed(
        &self,
        frontends: Vec<Frontend>,
        claimed: &dyn Fn(&ServiceKey) -> bool,
        warnings: &mut Vec<String>,
    ) -> (Vec<Frontend>, bool) {
        let mut seen = HashSet::new();
        let mut kept = Vec::with_capacity(frontends.len());
        let mut contested = false;
        for f in frontends {
            if claimed(&f.key) || !seen.insert(f.key) {
                warnings.push(format!(
                    "Service {} ({}): {} is already a frontend of another Service or port; ignored",
                    self.name(),
                    self.service.origin,
                    describe(&f.key)
                ));
                contested = true;
                continue;
            }
            kept.push(f);
        }
        (kept, contested)
    }

    /// The endpoints of Service port `port` in one family, merged over slices, sorted.
    fn endpoints(&self, port: &ServicePort, ipv6: bool) -> Vec<Candidate> {
        let mut merged: BTreeMap<(Addr, u16), Candidate> = BTreeMap::new();
        for slice in self.slices {
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

    /// The backend set of one port, family and policy, with ids kept from `kept` (the same
    /// set in the previous compilation).
    fn backend_set(
        &self,
        port: usize,
        identity: SetIdentity,
        candidates: &[Candidate],
        frontends: &[&Frontend],
        kept: Option<&CompiledSet>,
        ids: &mut Ids<'_>,
    ) -> Result<CompiledSet, CompileError> {
        let chosen = select(candidates, identity.policy);
        let Some(tier) = Tier::for_backends(chosen.len()) else {
            return Err(CompileError::TooManyBackends {
                service: self.name(),
                origin: self.service.origin.to_string(),
                port: port_name(&self.service.ports[port]),
                backends: chosen.len(),
                max: maglev::LARGE,
            });
        };
        let hint = ids
            .hints()
            .and_then(|h| h.frontend(frontends.iter().map(|f| &f.key)))
            .map(|(_, set)| set);
        let id = ids.id(Kind::Set, kept.map(|s| s.id), hint)?;
        let kept_backends: HashMap<(Addr, u16), u32> = kept
            .map(|s| {
                s.backends
                    .iter()
                    .map(|(id, be)| ((be.addr, be.port_h), *id))
                    .collect()
            })
            .unwrap_or_default();
        let mut backends = Vec::with_capacity(chosen.len());
        let mut members = Vec::with_capacity(chosen.len());
        for c in &chosen {
            let hint = ids.hints().and_then(|h| h.backend(id, c.addr, c.port_h));
            let kept = kept_backends.get(&(c.addr, c.port_h)).copied();
            let backend_id = ids.id(Kind::Backend, kept, hint)?;
            members.push(Member::new(c.addr, c.port_h, backend_id));
            backends.push((
                backend_id,
                Backend {
                    addr: c.addr,
                    port_h: c.port_h,
                    flags: if c.local { backend_flags::LOCAL } else { 0 },
                    _pad: 0,
                    id: backend_id,
                },
            ));
        }
        Ok(CompiledSet {
            identity: Some(identity),
            id,
            backends,
            table: Table::build(&members, tier),
        })
    }
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

pub(super) fn is_v4_mapped(addr: &Addr) -> bool {
    addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
}

/// The trie prefixes of one `loadBalancerSourceRanges` entry of Service `service`.
///
/// The trie holds IPv4 addresses in the IPv4-mapped block (`::ffff:0:0/96`) of its 16-byte
/// addresses, so an IPv6 range written as it is would admit the IPv4 clients of that block it
/// covers: `::/0`, meant as every IPv6 client, would admit every IPv4 one too, whatever the
/// Service's IPv4 ranges say. An IPv6 range is therefore kept out of the block: one inside it
/// matches no IPv6 client and is left out; one around it becomes the prefixes that cover it
/// without the block (one per bit between its length and the block's, at most 96).
fn source_range(service: u32, range: IpNetwork) -> Vec<SourceRange> {
    let (prefix_len, addr) = to_prefix(range);
    let prefixes = match range {
        IpNetwork::V4(_) => vec![(prefix_len, addr)],
        IpNetwork::V6(_) => outside_v4_mapped(prefix_len, addr),
    };
    prefixes
        .into_iter()
        .map(|(prefix_len, addr)| SourceRange {
            service,
            prefix_len,
            addr,
        })
        .collect()
}

/// Prefix length of the IPv4-mapped block `::ffff:0:0/96`.
const V4_MAPPED_LEN: u32 = 96;

/// The prefixes that cover what prefix `addr`/`len` covers outside the IPv4-mapped block.
fn outside_v4_mapped(len: u32, addr: Addr) -> Vec<(u32, Addr)> {
    let mut block: Addr = [0; 16];
    block[10..12].copy_from_slice(&[0xff, 0xff]);
    if (0..len.min(V4_MAPPED_LEN)).any(|i| bit(&addr, i) != bit(&block, i)) {
        return vec![(len, addr)];
    }
    // Around the block: for each bit from `len` on, the block's bits before it and the other
    // value of that bit.
    (len..V4_MAPPED_LEN)
        .map(|flipped| {
            let mut prefix: Addr = [0; 16];
            for i in 0..flipped {
                set_bit(&mut prefix, i, bit(&block, i));
            }
            set_bit(&mut prefix, flipped, !bit(&block, flipped));
            (flipped + 1, prefix)
        })
        .collect()
}

/// Bit `i` of `addr`, counted from the most significant bit of its first byte.
fn bit(addr: &Addr, i: u32) -> bool {
    addr[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
}

fn set_bit(addr: &mut Addr, i: u32, value: bool) {
    let mask = 0x80 >> (i % 8);
    if value {
        addr[(i / 8) as usize] |= mask;
    } else {
        addr[(i / 8) as usize] &= !mask;
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
pub(super) fn describe(key: &ServiceKey) -> String {
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
