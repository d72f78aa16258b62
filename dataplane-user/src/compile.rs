//! The compiler: desired state + what this node hosts → the contents of every map the agent
//! writes. Pure: no I/O, no clock, deterministic (ordered maps), so two outputs diff cleanly.
//!
//! How `NetworkPolicy` becomes O(1) lookups:
//! - Every distinct `from`/`to` peer of every policy is a *peer atom*.
//! - Every address gets a *peer class*: the set of atoms it matches (plus, for pods, the
//!   numbers of the named ports egress rules mention). Addresses with the same set share a class.
//!   Pod addresses carry their class in `WEIR_EP_V2`; other addresses get theirs from the
//!   ipBlock prefixes in `WEIR_CIDR_V2`.
//! - A rule becomes entries `(local pod, peer class, protocol, port, direction)` in
//!   `WEIR_POL_V2`, only for pods on this node; a rule with no peers uses the wildcard class.
//!
//! Services are compiled in [`services`], their Maglev tables in [`maglev`].

pub mod maglev;
mod services;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_abi::{
    Addr, CidrInfo, Direction, EndpointInfo, PEER_CLASS_ANY, PEER_CLASS_WORLD, PORT_ANY, PolicyKey,
    PolicyValue, capacity, endpoint_flags, proto, v4_mapped,
};
use ipnetwork::IpNetwork;

use crate::model::{
    DesiredState, Labels, Namespace, NamespaceScope, Peer, Pod, Policy, PortMatch, PortSpec,
    Protocol, Rule,
};

pub use self::services::{
    CompiledService, CompiledSet, Counts, FlatServices, HealthCheck, ServiceMaps, SourceRange,
};

/// What this node hosts, read from the kernel by `node`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Addresses of the node itself.
    pub host_addrs: BTreeSet<IpAddr>,
    /// Pod addresses routed to a local interface (a /32 or /128 route), with its ifindex.
    pub local_routes: BTreeMap<IpAddr, u32>,
    /// This node's name (`weir run --node-name`): endpoints whose `nodeName` it is are local.
    pub node_name: Option<String>,
}

/// A pod this node hosts, and where its programs attach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalPod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Host-side interface of the pod, which is also its endpoint id.
    pub ifindex: u32,
    /// Some policy selects the pod for Ingress.
    pub ingress_isolated: bool,
    /// Some policy selects the pod for Egress.
    pub egress_isolated: bool,
}

/// A key of the CIDR trie: prefix length over the 16-byte address, and the address.
pub type CidrPrefix = (u32, Addr);

/// The contents of every map the agent writes, for one desired state.
///
/// The policy part is shared (`Arc`): a compilation whose pods, policies, namespaces and
/// node are those of the previous one keeps its output as it is, and a copy of the set (the
/// agent keeps what it applied) copies pointers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSet {
    /// Contents of `WEIR_EP_V2`.
    pub endpoints: Arc<BTreeMap<Addr, EndpointInfo>>,
    /// Contents of `WEIR_CIDR_V2`.
    pub cidrs: Arc<BTreeMap<CidrPrefix, CidrInfo>>,
    /// Contents of `WEIR_POL_V2`.
    pub policy: Arc<BTreeMap<PolicyKey, PolicyValue>>,
    /// Local pods by ifindex: the interfaces to attach to.
    pub local_pods: Arc<BTreeMap<u32, LocalPod>>,
    /// Number of distinct peer classes (for `weir check` and metrics).
    pub peer_classes: usize,
    /// The class ids this compilation gave out; the next compilation keeps them.
    pub class_ids: Arc<ClassIds>,
    /// Contents of the Service maps (`WEIR_SVC_V2`, `WEIR_BE_V2`, `WEIR_MAG_*_V2`,
    /// `WEIR_LBSRC_V2`), one compiled unit per Service, with the ids the next compilation
    /// keeps.
    pub services: ServiceMaps,
    /// Things worth a warning that do not stop compilation (duplicate pod addresses).
    pub warnings: Vec<String>,
    /// What the policy part was compiled from, to know when it holds for the next state.
    policy_inputs: Option<Arc<PolicyInputs>>,
}

/// The inputs of the policy part of a [`MapSet`], and the warnings it gave.
#[derive(Debug, PartialEq, Eq)]
struct PolicyInputs {
    namespaces: BTreeMap<String, Namespace>,
    pods: Vec<Arc<Pod>>,
    policies: Vec<Arc<Policy>>,
    host_addrs: BTreeSet<IpAddr>,
    local_routes: BTreeMap<IpAddr, u32>,
    warnings: Vec<String>,
}

impl PolicyInputs {
    /// Whether `state` and `node` are what the policy part was compiled from: the same
    /// objects (a source passes unchanged ones on as they are) or equal ones, in the same
    /// order (the order decides which of two pods with one address keeps it).
    fn hold_for(&self, state: &DesiredState, node: &NodeView) -> bool {
        same_objects(&self.pods, &state.pods)
            && same_objects(&self.policies, &state.policies)
            && self.namespaces == state.namespaces
            && self.host_addrs == node.host_addrs
            && self.local_routes == node.local_routes
    }
}

/// Whether `a` and `b` hold the same objects in the same order: the same `Arc`s (a source
/// passes unchanged objects on as they are), or equal ones.
fn same_objects<T: PartialEq>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
}

/// The policy part of a compilation, as it is built.
#[derive(Default)]
struct PolicyOutput {
    endpoints: BTreeMap<Addr, EndpointInfo>,
    cidrs: BTreeMap<CidrPrefix, CidrInfo>,
    policy: BTreeMap<PolicyKey, PolicyValue>,
    local_pods: BTreeMap<u32, LocalPod>,
    peer_classes: usize,
    class_ids: ClassIds,
    warnings: Vec<String>,
}

/// The compiled state does not fit the maps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "policy {policy} ({origin}) overflows map {map}: it needs {needed} entries, {capacity} fit"
    )]
    /// One policy alone pushes a map past its capacity.
    PolicyOverflow {
        /// `namespace/name` of the policy.
        policy: String,
        /// Where the policy was read from.
        origin: String,
        /// Name of the map (see [`dataplane_abi::names`]).
        map: &'static str,
        /// Entries this policy adds to the map.
        needed: usize,
        /// Entries the map holds.
        capacity: u32,
    },
    /// One backend set has more endpoints than the largest Maglev table has slots.
    #[error(
        "Service {service} ({origin}) port {port} has {backends} endpoints; at most {max} are supported"
    )]
    TooManyBackends {
        /// `namespace/name` of the Service.
        service: String,
        /// Where the Service was read from.
        origin: String,
        /// The Service port (name, number and protocol).
        port: String,
        /// Endpoints the backend set would hold.
        backends: usize,
        /// The most a backend set holds ([`dataplane_abi::maglev::LARGE`]).
        max: usize,
    },
    /// A map indexed by id has no free entry for a new one: the entries of the state, with
    /// those it replaces (removed only once their replacements are written), fill it.
    #[error(
        "map {map} has no free entry: its {capacity} entries hold the state and the entries it replaces"
    )]
    SlotsExhausted {
        /// Name of the map (see [`dataplane_abi::names`]).
        map: &'static str,
        /// Entries the map holds.
        capacity: u32,
    },
    /// The whole state needs more entries than a map holds.
    #[error("map {map} would need {needed} entries, {capacity} fit")]
    MapOverflow {
        /// Name of the map (see [`dataplane_abi::names`]).
        map: &'static str,
        /// Entries the state needs in the map.
        needed: usize,
        /// Entries the map holds.
        capacity: u32,
    },
}

/// Compiles `state` for the node described by `node`.
pub fn compile(state: &DesiredState, node: &NodeView) -> Result<MapSet, CompileError> {
    compile_with(state, node, &MapSet::default())
}

/// Compiles `state`, keeping the ids `previous` (the last compilation, or what the maps held
/// at start) gave out: peer classes ([`MapSet::class_ids`]), Services, backend sets and
/// backends ([`MapSet::services`]), for every one whose identity still exists. A change then
/// rewrites only the entries it affects, and an id never changes meaning while entries may
/// still use it. A Service whose inputs did not change is not compiled again.
pub fn compile_with(
    state: &DesiredState,
    node: &NodeView,
    previous: &MapSet,
) -> Result<MapSet, CompileError> {
    let mut out = match &previous.policy_inputs {
        Some(inputs) if inputs.hold_for(state, node) => MapSet {
            warnings: inputs.warnings.clone(),
            services: ServiceMaps::default(),
            ..previous.clone()
        },
        _ => {
            let policy = compile_policies(state, node, &previous.class_ids)?;
            MapSet {
                endpoints: Arc::new(policy.endpoints),
                cidrs: Arc::new(policy.cidrs),
                policy: Arc::new(policy.policy),
                local_pods: Arc::new(policy.local_pods),
                peer_classes: policy.peer_classes,
                class_ids: Arc::new(policy.class_ids),
                services: ServiceMaps::default(),
                warnings: policy.warnings.clone(),
                policy_inputs: Some(Arc::new(PolicyInputs {
                    namespaces: state.namespaces.clone(),
                    pods: state.pods.clone(),
                    policies: state.policies.clone(),
                    host_addrs: node.host_addrs.clone(),
                    local_routes: node.local_routes.clone(),
                    warnings: policy.warnings,
                })),
            }
        }
    };
    let (services, warnings) = services::compile(state, node, &previous.services)?;
    out.services = services;
    out.warnings.extend(warnings);
    Ok(out)
}

/// The policy part of `state`: endpoints, CIDRs, rules and local pods.
fn compile_policies(
    state: &DesiredState,
    node: &NodeView,
    class_ids: &ClassIds,
) -> Result<PolicyOutput, CompileError> {
    let atoms = PeerAtoms::collect(&state.policies);
    let egress_names = egress_port_names(&state.policies);
    let pods = PodIndex::new(state);
    let mut classes = Classes::new(&atoms, class_ids);
    let mut out = PolicyOutput::default();

    let pod_atoms = atoms.match_pods(state, &pods);
    let local = local_pods(state, node);
    for (pod_idx, pod) in state.pods.iter().enumerate() {
        for ip in &pod.ips {
            let mut set = pod_atoms[pod_idx].clone();
            set.extend(atoms.ip_blocks_containing(*ip));
            set.sort_unstable();
            set.dedup();
            let ports = named_ports_for(pod, &egress_names);
            let class = classes.intern(set, ports);
            let addr = to_addr(*ip);
            if let Some(previous) = out.endpoints.get(&addr) {
                let _ = previous;
                out.warnings.push(format!(
                    "address {ip} of pod {}/{} is already used by another pod; ignored",
                    pod.namespace, pod.name
                ));
                continue;
            }
            out.endpoints
                .insert(addr, endpoint_info(class, local.get(&pod_idx)));
        }
    }
    for ip in &node.host_addrs {
        out.endpoints.insert(
            to_addr(*ip),
            EndpointInfo {
                flags: endpoint_flags::HOST,
                ..EndpointInfo::default()
            },
        );
    }
    for prefix in atoms.prefixes() {
        let set = atoms.ip_blocks_covering(prefix);
        let class = classes.intern(set, Vec::new());
        out.cidrs
            .insert(to_prefix(prefix), CidrInfo { peer_class: class });
    }

    let members = classes.members_by_atom();
    for (pod_idx, lp) in &local {
        let pod = &state.pods[*pod_idx];
        let ctx = RuleContext {
            local: pod,
            endpoint: lp.ifindex,
            atoms: &atoms,
            classes: &classes,
            members: &members,
        };
        for (policy_idx, policy) in selecting(state, pod) {
            let before = out.policy.len();
            ctx.compile_policy(policy_idx, policy, &mut out.policy);
            check_policy_capacity(policy, before, out.policy.len())?;
        }
        out.local_pods.insert(lp.ifindex, lp.clone());
    }
    out.peer_classes = classes.len();
    out.class_ids = classes.into_ids();
    check_capacity(&out)?;
    Ok(out)
}

/// The local pods of `state` by index: pods with an address routed to a local interface.
fn local_pods(state: &DesiredState, node: &NodeView) -> BTreeMap<usize, LocalPod> {
    let mut out = BTreeMap::new();
    for (idx, pod) in state.pods.iter().enumerate() {
        let Some(ifindex) = pod.ips.iter().find_map(|ip| node.local_routes.get(ip)) else {
            continue;
        };
        let mut ingress_isolated = false;
        let mut egress_isolated = false;
        for (_, policy) in selecting(state, pod) {
            ingress_isolated |= policy.ingress.is_some();
            egress_isolated |= policy.egress.is_some();
        }
        out.insert(
            idx,
            LocalPod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ifindex: *ifindex,
                ingress_isolated,
                egress_isolated,
            },
        );
    }
    out
}

/// Policies of the pod's namespace whose `podSelector` selects it.
pub fn selecting<'a>(
    state: &'a DesiredState,
    pod: &'a Pod,
) -> impl Iterator<Item = (usize, &'a Policy)> + 'a {
    state
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
        .map(|(i, p)| (i, &**p))
}

fn endpoint_info(class: u32, local: Option<&LocalPod>) -> EndpointInfo {
    let Some(lp) = local else {
        return EndpointInfo {
            peer_class: class,
            ..EndpointInfo::default()
        };
    };
    let mut flags = endpoint_flags::LOCAL_POD;
    if lp.ingress_isolated {
        flags |= endpoint_flags::INGRESS_ISOLATED;
    }
    if lp.egress_isolated {
        flags |= endpoint_flags::EGRESS_ISOLATED;
    }
    EndpointInfo {
        // The ifindex doubles as the endpoint id: unique on the node, and stable across
        // recompilations, so a change elsewhere does not rewrite this pod's entries.
        endpoint: lp.ifindex,
        peer_class: class,
        flags,
        ifindex: lp.ifindex,
    }
}

/// Converts an address to the dataplane's 16-byte form.
pub fn to_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn to_prefix(net: IpNetwork) -> CidrPrefix {
    match net {
        IpNetwork::V4(v4) => (
            u32::from(v4.prefix()) + 96,
            to_addr(IpAddr::V4(v4.network())),
        ),
        IpNetwork::V6(v6) => (u32::from(v6.prefix()), to_addr(IpAddr::V6(v6.network()))),
    }
}

/// Whether `inner` lies entirely inside `outer`.
fn covers(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

/// Every distinct peer of every rule, numbered.
struct PeerAtoms {
    atoms: Vec<Peer>,
    index: HashMap<PeerKey, u32>,
    /// The ipBlock atoms by their CIDR, so that the atoms around an address or prefix are
    /// found with one lookup per prefix length in use rather than a scan of every atom
    /// (10 000 policies make thousands of ipBlocks, and every pod address asks).
    by_cidr: HashMap<(IpAddr, u8), Vec<u32>>,
    /// The prefix lengths of those CIDRs, by family (`true`: IPv4).
    cidr_lengths: BTreeSet<(bool, u8)>,
}

/// A hashable identity for a peer (selectors compare by value).
#[derive(Clone, PartialEq, Eq, Hash)]
struct PeerKey(String);

fn peer_key(peer: &Peer) -> PeerKey {
    PeerKey(format!("{peer:?}"))
}

impl PeerAtoms {
    fn collect(policies: &[Arc<Policy>]) -> Self {
        let mut atoms = Self {
            atoms: Vec::new(),
            index: HashMap::new(),
            by_cidr: HashMap::new(),
            cidr_lengths: BTreeSet::new(),
        };
        for rule in policies.iter().flat_map(|p| all_rules(p)) {
            for peer in &rule.peers {
                atoms.id_of(peer);
            }
        }
        let blocks: Vec<(u32, IpNetwork)> = atoms.ip_blocks().map(|(id, c, _)| (id, *c)).collect();
        for (id, cidr) in blocks {
            atoms.cidr_lengths.insert((cidr.is_ipv4(), cidr.prefix()));
            let key = (cidr.network(), cidr.prefix());
            atoms.by_cidr.entry(key).or_default().push(id);
        }
        atoms
    }

    /// The ipBlock atoms whose CIDR contains `addr` with a prefix of at most `max_len`, in
    /// id order, with their excepts.
    fn ip_blocks_around(&self, addr: IpAddr, max_len: u8) -> Vec<(u32, &Vec<IpNetwork>)> {
        let mut out = Vec::new();
        for &(v4, len) in &self.cidr_lengths {
            if v4 != addr.is_ipv4() || len > max_len {
                continue;
            }
            let Ok(cidr) = IpNetwork::new(addr, len) else {
                continue;
            };
            for &id in self
                .by_cidr
                .get(&(cidr.network(), len))
                .into_iter()
                .flatten()
            {
                if let Peer::IpBlock { except, .. } = &self.atoms[id as usize] {
                    out.push((id, except));
                }
            }
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    fn id_of(&mut self, peer: &Peer) -> u32 {
        let key = peer_key(peer);
        if let Some(id) = self.index.get(&key) {
            return *id;
        }
        let id = u32::try_from(self.atoms.len()).unwrap_or(u32::MAX);
        self.atoms.push(peer.clone());
        self.index.insert(key, id);
        id
    }

    fn lookup(&self, peer: &Peer) -> Option<u32> {
        self.index.get(&peer_key(peer)).copied()
    }

    /// For each pod (by index), the sorted pod-selector atoms it matches.
    fn match_pods(&self, state: &DesiredState, pods: &PodIndex) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); state.pods.len()];
        for (id, atom) in (0u32..).zip(&self.atoms) {
            let Peer::Pods {
                namespaces,
                pods: selector,
            } = atom
            else {
                continue;
            };
            for &idx in pods.candidates(selector) {
                let pod = &state.pods[idx];
                if selector.matches(&pod.labels)
                    && namespace_matches(state, namespaces, &pod.namespace)
                {
                    out[idx].push(id);
                }
            }
        }
        out
    }

    fn ip_blocks(&self) -> impl Iterator<Item = (u32, &IpNetwork, &Vec<IpNetwork>)> {
        (0u32..)
            .zip(&self.atoms)
            .filter_map(|(id, atom)| match atom {
                Peer::IpBlock { cidr, except } => Some((id, cidr, except)),
                Peer::Pods { .. } => None,
            })
    }

    fn ip_blocks_containing(&self, ip: IpAddr) -> Vec<u32> {
        let host = if ip.is_ipv4() { 32 } else { 128 };
        self.ip_blocks_around(ip, host)
            .into_iter()
            .filter(|(_, except)| !except.iter().any(|e| e.contains(ip)))
            .map(|(id, _)| id)
            .collect()
    }

    /// Atoms every address of `prefix` matches, when `prefix` is the longest prefix of the
    /// trie that contains the address: then any atom CIDR or except containing the address
    /// is either `prefix` itself or a shorter prefix covering it.
    fn ip_blocks_covering(&self, prefix: IpNetwork) -> Vec<u32> {
        self.ip_blocks_around(prefix.network(), prefix.prefix())
            .into_iter()
            .filter(|(_, except)| !except.iter().any(|e| covers(e, &prefix)))
            .map(|(id, _)| id)
            .collect()
    }

    /// Every CIDR and except of every ipBlock: the trie's prefixes.
    fn prefixes(&self) -> BTreeSet<IpNetwork> {
        self.ip_blocks()
            .flat_map(|(_, cidr, except)| std::iter::once(*cidr).chain(except.iter().copied()))
            .collect()
    }
}

fn namespace_matches(state: &DesiredState, scope: &NamespaceScope, namespace: &str) -> bool {
    match scope {
        NamespaceScope::Own(own) => own == namespace,
        NamespaceScope::Selected(selector) => {
            let empty = Labels::new();
            let labels = state
                .namespaces
                .get(namespace)
                .map_or(&empty, |ns| &ns.labels);
            selector.matches(labels)
        }
    }
}

fn all_rules(policy: &Policy) -> impl Iterator<Item = &Rule> {
    policy.ingress.iter().chain(policy.egress.iter()).flatten()
}

/// Pods indexed by label pair, so a selector visits the pods that can match it, not all pods.
struct PodIndex {
    all: Vec<usize>,
    by_label: HashMap<(String, String), Vec<usize>>,
}

impl PodIndex {
    fn new(state: &DesiredState) -> Self {
        let mut by_label: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (idx, pod) in state.pods.iter().enumerate() {
            for (k, v) in &pod.labels {
                by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(idx);
            }
        }
        Self {
            all: (0..state.pods.len()).collect(),
            by_label,
        }
    }

    /// A superset of the pods `selector` matches: the smallest posting list of its
    /// `matchLabels`, or every pod.
    fn candidates(&self, selector: &crate::model::LabelSelector) -> &[usize] {
        selector
            .match_labels
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(k.clone(), v.clone()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|list| list.len())
            .unwrap_or(&self.all)
    }
}

/// Named ports egress rules mention: they are resolved on the destination, so they are part
/// of the destination's class.
fn egress_port_names(policies: &[Arc<Policy>]) -> BTreeSet<(String, Protocol)> {
    policies
        .iter()
        .flat_map(|p| p.egress.iter().flatten())
        .flat_map(|r| &r.ports)
        .filter_map(|m| match &m.port {
            Some(PortSpec::Named(name)) => Some((name.clone(), m.protocol)),
            _ => None,
        })
        .collect()
}

type ResolvedPorts = Vec<(String, Protocol, u16)>;

fn named_ports_for(pod: &Pod, names: &BTreeSet<(String, Protocol)>) -> ResolvedPorts {
    let mut out: ResolvedPorts = pod
        .ports
        .iter()
        .filter(|p| names.contains(&(p.name.clone(), p.protocol)))
        .map(|p| (p.name.clone(), p.protocol, p.port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A class in terms that survive recompilation: the peers (by content, not by their index in
/// one compilation) and the resolved named ports.
type Signature = (Vec<String>, ResolvedPorts);

/// Peer class ids by signature, carried from one compilation to the next. Ids only grow: one
/// that falls out of use is never given to another class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassIds {
    by_signature: BTreeMap<Signature, u32>,
    next: u32,
}

impl ClassIds {
    /// Ids starting above `max_in_use`: for an agent that adopts maps it did not compile (a
    /// restart), so that no new id takes the meaning of one the maps still hold.
    pub fn above(max_in_use: u32) -> Self {
        Self {
            by_signature: BTreeMap::new(),
            next: max_in_use.saturating_add(1),
        }
    }

    fn next_id(&self) -> u32 {
        // Ids start at 1: 0 is the world, u32::MAX the wildcard.
        self.next.max(1)
    }
}

/// The peer classes of one compilation. Class 0 is the world: no atom, no named port.
struct Classes<'a> {
    atom_keys: Vec<String>,
    previous: &'a ClassIds,
    next: u32,
    by_atoms: HashMap<(Vec<u32>, ResolvedPorts), u32>,
    /// Id → the atoms (indices of this compilation) and resolved ports.
    list: BTreeMap<u32, (Vec<u32>, ResolvedPorts)>,
}

impl<'a> Classes<'a> {
    fn new(atoms: &PeerAtoms, previous: &'a ClassIds) -> Self {
        Self {
            atom_keys: atoms.atoms.iter().map(|p| peer_key(p).0).collect(),
            previous,
            next: previous.next_id(),
            by_atoms: HashMap::new(),
            list: BTreeMap::new(),
        }
    }

    fn signature(&self, atoms: &[u32], ports: &ResolvedPorts) -> Signature {
        let mut keys: Vec<String> = atoms
            .iter()
            .map(|a| self.atom_keys[*a as usize].clone())
            .collect();
        keys.sort_unstable();
        (keys, ports.clone())
    }

    fn intern(&mut self, atoms: Vec<u32>, ports: ResolvedPorts) -> u32 {
        if atoms.is_empty() && ports.is_empty() {
            return PEER_CLASS_WORLD;
        }
        let local = (atoms, ports);
        if let Some(id) = self.by_atoms.get(&local) {
            return *id;
        }
        let signature = self.signature(&local.0, &local.1);
        let id = if let Some(id) = self.previous.by_signature.get(&signature) {
            *id
        } else {
            let id = self.next.min(PEER_CLASS_ANY - 1);
            self.next = self.next.saturating_add(1);
            id
        };
        self.list.insert(id, local.clone());
        self.by_atoms.insert(local, id);
        id
    }

    fn len(&self) -> usize {
        self.list.len() + 1
    }

    /// For each atom, the classes that contain it.
    fn members_by_atom(&self) -> HashMap<u32, Vec<u32>> {
        let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
        for (id, (atoms, _)) in &self.list {
            for atom in atoms {
                out.entry(*atom).or_default().push(*id);
            }
        }
        out
    }

    /// Every class but the world, with its resolved named ports.
    fn all(&self) -> impl Iterator<Item = (u32, &ResolvedPorts)> {
        self.list.iter().map(|(id, (_, ports))| (*id, ports))
    }

    fn ports(&self, class: u32) -> &[(String, Protocol, u16)] {
        self.list
            .get(&class)
            .map_or(&[][..], |(_, ports)| ports.as_slice())
    }

    /// The ids to carry into the next compilation.
    fn into_ids(self) -> ClassIds {
        let by_signature = self
            .list
            .values()
            .map(|(atoms, ports)| self.signature(atoms, ports))
            .zip(self.list.keys().copied())
            .collect();
        ClassIds {
            by_signature,
            next: self.next,
        }
    }
}

/// Everything needed to turn the rules of the policies selecting one local pod into entries.
struct RuleContext<'a> {
    local: &'a Pod,
    endpoint: u32,
    atoms: &'a PeerAtoms,
    classes: &'a Classes<'a>,
    members: &'a HashMap<u32, Vec<u32>>,
}

impl RuleContext<'_> {
    fn compile_policy(
        &self,
        policy_idx: usize,
        policy: &Policy,
        out: &mut BTreeMap<PolicyKey, PolicyValue>,
    ) {
        let policy_idx = u32::try_from(policy_idx).unwrap_or(u32::MAX);
        for (dir, rules) in [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ] {
            for (rule_idx, rule) in (0u32..).zip(rules.iter().flatten()) {
                let value = PolicyValue {
                    policy: policy_idx,
                    rule: rule_idx,
                };
                for key in self.rule_keys(dir, rule) {
                    // The first rule (policies in manifest order, rules in policy order) to
                    // allow a key is the one reported.
                    out.entry(key).or_insert(value);
                }
            }
        }
    }

    fn rule_keys(&self, dir: Direction, rule: &Rule) -> Vec<PolicyKey> {
        let mut keys = Vec::new();
        for class in self.peer_classes(dir, rule) {
            for (l4, port) in self.ports(dir, rule, class) {
                keys.push(PolicyKey {
                    endpoint: self.endpoint,
                    peer_class: class,
                    port_h: port,
                    proto: l4,
                    direction: dir as u8,
                });
            }
        }
        keys
    }

    /// Classes a rule's peers cover. A rule without peers covers every peer: the wildcard
    /// class, except for egress named ports, which resolve per destination class.
    fn peer_classes(&self, dir: Direction, rule: &Rule) -> Vec<u32> {
        if rule.peers.is_empty() {
            let named_egress = dir == Direction::Egress
                && rule
                    .ports
                    .iter()
                    .any(|m| matches!(m.port, Some(PortSpec::Named(_))));
            if named_egress {
                return self.classes.all().map(|(id, _)| id).collect();
            }
            return vec![PEER_CLASS_ANY];
        }
        let mut out: Vec<u32> = rule
            .peers
            .iter()
            .filter_map(|peer| self.atoms.lookup(peer))
            .filter_map(|atom| self.members.get(&atom))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `(protocol, port)` pairs of a rule towards `class`.
    fn ports(&self, dir: Direction, rule: &Rule, class: u32) -> Vec<(u8, u16)> {
        if rule.ports.is_empty() {
            return vec![(proto::ANY, PORT_ANY)];
        }
        let mut out = Vec::new();
        for m in &rule.ports {
            self.port_match(dir, m, class, &mut out);
        }
        out
    }

    fn port_match(&self, dir: Direction, m: &PortMatch, class: u32, out: &mut Vec<(u8, u16)>) {
        let l4 = m.protocol.number();
        match &m.port {
            None => out.push((l4, PORT_ANY)),
            Some(PortSpec::Range { first, last }) if *first <= 1 && *last == u16::MAX => {
                out.push((l4, PORT_ANY));
            }
            Some(PortSpec::Range { first, last }) => {
                out.extend((*first..=*last).map(|p| (l4, p)));
            }
            Some(PortSpec::Named(name)) => {
                // Ingress: the destination is the local pod. Egress: the peer's class.
                let resolved = match dir {
                    Direction::Ingress => self
                        .local
                        .ports
                        .iter()
                        .find(|p| &p.name == name && p.protocol == m.protocol)
                        .map(|p| p.port),
                    Direction::Egress => self
                        .classes
                        .ports(class)
                        .iter()
                        .find(|(n, p, _)| n == name && *p == m.protocol)
                        .map(|(_, _, port)| *port),
                };
                out.extend(resolved.map(|p| (l4, p)));
            }
        }
    }
}

fn check_policy_capacity(policy: &Policy, before: usize, after: usize) -> Result<(), CompileError> {
    if after > capacity::POLICY as usize {
        return Err(CompileError::PolicyOverflow {
            policy: format!("{}/{}", policy.namespace, policy.name),
            origin: policy.origin.to_string(),
            map: dataplane_abi::names::POLICY,
            needed: after - before,
            capacity: capacity::POLICY,
        });
    }
    Ok(())
}

fn check_capacity(out: &PolicyOutput) -> Result<(), CompileError> {
    for (map, needed, cap) in [
        (
            dataplane_abi::names::ENDPOINTS,
            out.endpoints.len(),
            capacity::ENDPOINTS,
        ),
        (
            dataplane_abi::names::CIDRS,
            out.cidrs.len(),
            capacity::CIDRS,
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

impl fmt::Display for MapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} endpoint addresses, {} ipBlock prefixes, {} peer classes, {} policy entries",
            self.endpoints.len(),
            self.cidrs.len(),
            self.peer_classes,
            self.policy.len()
        )?;
        if !self.services.is_empty() {
            let counts = self.services.counts();
            writeln!(
                f,
                "{} Service frontends, {} backends, {} Maglev tables, {} source ranges",
                counts.frontends,
                counts.backends,
                counts.tables.iter().sum::<usize>(),
                counts.source_ranges
            )?;
        }
        for lp in self.local_pods.values() {
            let iso = |b: bool| if b { "isolated" } else { "open" };
            let entries = self
                .policy
                .keys()
                .filter(|k| k.endpoint == lp.ifindex)
                .count();
            writeln!(
                f,
                "  pod {}/{}: ingress {}, egress {}, {} policy entries",
                lp.namespace,
                lp.name,
                iso(lp.ingress_isolated),
                iso(lp.egress_isolated),
                entries
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{
        LabelSelector, NamedPort, Namespace, Operator, Origin, Requirement, Service, ServicePort,
    };

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(pairs),
            ..LabelSelector::default()
        }
    }

    /// A cluster: namespaces x and y; pods x/a (10.0.0.1, named port http=8080), x/b
    /// (10.0.0.2), y/c (10.0.1.3). Every pod is local (ifindex 1, 2, 3).
    struct Cluster {
        state: DesiredState,
    }

    impl Cluster {
        fn new() -> Self {
            let mut state = DesiredState::default();
            for ns in ["x", "y"] {
                state.namespaces.insert(
                    ns.into(),
                    Namespace {
                        name: ns.into(),
                        labels: labels(&[("ns", ns)]),
                    },
                );
            }
            let pod = |ns: &str, name: &str, addr: &str| Pod {
                namespace: ns.into(),
                name: name.into(),
                labels: labels(&[("pod", name)]),
                ips: vec![ip(addr)],
                ports: vec![],
                origin: Origin::default(),
                ..Pod::default()
            };
            let mut a = pod("x", "a", "10.0.0.1");
            a.ports.push(NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            });
            state.pods = [a, pod("x", "b", "10.0.0.2"), pod("y", "c", "10.0.1.3")]
                .map(Arc::new)
                .into();
            Self { state }
        }

        fn with_policy(mut self, ns: &str, name: &str, policy: Policy) -> Self {
            self.state.policies.push(Arc::new(Policy {
                namespace: ns.into(),
                name: name.into(),
                ..policy
            }));
            self
        }

        /// A node hosting every pod, pod i behind ifindex i + 1.
        fn node(&self) -> NodeView {
            let mut node = NodeView::default();
            for (ifindex, pod) in (1u32..).zip(&self.state.pods) {
                node.local_routes.insert(pod.ips[0], ifindex);
            }
            node
        }

        fn compile(&self) -> MapSet {
            compile(&self.state, &self.node()).unwrap()
        }
    }

    fn ingress_only(pod_selector: LabelSelector, rules: Vec<Rule>) -> Policy {
        Policy {
            pod_selector,
            ingress: Some(rules),
            ..Policy::default()
        }
    }

    fn tcp(first: u16, last: u16) -> PortMatch {
        PortMatch {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Range { first, last }),
        }
    }

    fn pods_in_own_ns(ns: &str, sel: LabelSelector) -> Peer {
        Peer::Pods {
            namespaces: NamespaceScope::Own(ns.into()),
            pods: sel,
        }
    }

    fn entries_of(maps: &MapSet, ifindex: u32) -> Vec<PolicyKey> {
        maps.policy
            .keys()
            .filter(|k| k.endpoint == ifindex)
            .copied()
            .collect()
    }

    fn class_of(maps: &MapSet, addr: &str) -> u32 {
        maps.endpoints[&to_addr(ip(addr))].peer_class
    }

    #[test]
    fn isolation_follows_policy_types_and_namespace() {
        let maps = Cluster::new()
            .with_policy(
                "x",
                "deny-a",
                ingress_only(selector(&[("pod", "a")]), vec![]),
            )
            .compile();
        let a = maps.local_pods[&1].clone();
        assert!(a.ingress_isolated && !a.egress_isolated);
        assert!(!maps.local_pods[&2].ingress_isolated, "b is not selected");
        assert!(
            !maps.local_pods[&3].ingress_isolated,
            "policies of x never select y/c"
        );
        assert!(maps.policy.is_empty(), "deny-all has no allow entries");
        let flags = maps.endpoints[&to_addr(ip("10.0.0.1"))].flags;
        assert_eq!(
            flags,
            endpoint_flags::LOCAL_POD | endpoint_flags::INGRESS_ISOLATED
        );
    }

    #[test]
    fn rule_without_peers_or_ports_is_one_wildcard_entry() {
        let maps = Cluster::new()
            .with_policy(
                "x",
                "allow-all",
                ingress_only(LabelSelector::everything(), vec![Rule::default()]),
            )
            .compile();
        let keys = entries_of(&maps, 1);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].peer_class, PEER_CLASS_ANY);
        assert_eq!((keys[0].proto, keys[0].port_h), (proto::ANY, PORT_ANY));
    }

    #[test]
    fn pod_selector_peer_covers_only_matching_pods_of_own_namespace() {
        let rule = Rule {
            peers: vec![pods_in_own_ns("x", selector(&[("pod", "b")]))],
            ports: vec![tcp(80, 80)],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "p",
                ingress_only(selector(&[("pod", "a")]), vec![rule]),
            )
            .compile();
        let b = class_of(&maps, "10.0.0.2");
        assert_ne!(b, PEER_CLASS_WORLD);
        assert_eq!(class_of(&maps, "10.0.1.3"), PEER_CLASS_WORLD);
        let keys = entries_of(&maps, 1);
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].peer_class, keys[0].port_h), (b, 80));
    }

    #[test]
    fn namespace_and_pod_selector_in_one_peer_are_anded() {
        let peer = Peer::Pods {
            namespaces: NamespaceScope::Selected(selector(&[("ns", "y")])),
            pods: LabelSelector {
                match_expressions: vec![Requirement {
                    key: "pod".into(),
                    operator: Operator::In,
                    values: ["b".to_owned(), "c".to_owned()].into(),
                }],
                ..LabelSelector::default()
            },
        };
        let rule = Rule {
            peers: vec![peer],
            ports: vec![],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "p",
                ingress_only(selector(&[("pod", "a")]), vec![rule]),
            )
            .compile();
        assert_ne!(
            class_of(&maps, "10.0.1.3"),
            PEER_CLASS_WORLD,
            "y/c matches both"
        );
        assert_eq!(class_of(&maps, "10.0.0.2"), PEER_CLASS_WORLD, "x/b is in x");
    }

    #[test]
    fn end_port_expands_and_full_range_is_a_wildcard() {
        let rule = |m| Rule {
            peers: vec![],
            ports: vec![m],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "p",
                ingress_only(
                    selector(&[("pod", "a")]),
                    vec![rule(tcp(1000, 1009)), rule(tcp(1, 65535))],
                ),
            )
            .compile();
        let ports: Vec<u16> = entries_of(&maps, 1).iter().map(|k| k.port_h).collect();
        assert_eq!(ports.len(), 11);
        assert!(ports.contains(&PORT_ANY));
        assert!((1000..=1009).all(|p| ports.contains(&p)));
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let named = PortMatch {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Named("http".into())),
        };
        let ingress = Rule {
            peers: vec![],
            ports: vec![named.clone()],
        };
        let egress = Rule {
            peers: vec![],
            ports: vec![named],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "p",
                Policy {
                    pod_selector: LabelSelector::everything(),
                    ingress: Some(vec![ingress]),
                    egress: Some(vec![egress]),
                    ..Policy::default()
                },
            )
            .compile();
        // Ingress: only a declares http, so only a gets an entry (8080); b gets none.
        let a_in: Vec<_> = entries_of(&maps, 1)
            .into_iter()
            .filter(|k| k.direction == Direction::Ingress as u8)
            .collect();
        assert_eq!(a_in.len(), 1);
        assert_eq!(a_in[0].port_h, 8080);
        assert!(
            entries_of(&maps, 2)
                .iter()
                .all(|k| k.direction == Direction::Egress as u8)
        );
        // Egress from b: towards a's class only, on 8080.
        let b_out = entries_of(&maps, 2);
        assert_eq!(b_out.len(), 1);
        assert_eq!(b_out[0].peer_class, class_of(&maps, "10.0.0.1"));
        assert_eq!(b_out[0].port_h, 8080);
    }

    #[test]
    fn ip_block_except_gets_its_own_prefix_and_pods_inside_match() {
        let block = Peer::IpBlock {
            cidr: "10.0.0.0/16".parse().unwrap(),
            except: vec!["10.0.1.0/24".parse().unwrap()],
        };
        let rule = Rule {
            peers: vec![block],
            ports: vec![],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "p",
                ingress_only(selector(&[("pod", "a")]), vec![rule]),
            )
            .compile();
        let cidr = maps.cidrs[&(96 + 16, to_addr(ip("10.0.0.0")))].peer_class;
        let except = maps.cidrs[&(96 + 24, to_addr(ip("10.0.1.0")))].peer_class;
        assert_ne!(cidr, PEER_CLASS_WORLD);
        assert_eq!(except, PEER_CLASS_WORLD);
        assert_eq!(class_of(&maps, "10.0.0.2"), cidr, "x/b is inside the block");
        assert_eq!(
            class_of(&maps, "10.0.1.3"),
            PEER_CLASS_WORLD,
            "y/c is excepted"
        );
    }

    /// The ipBlocks around an address or a prefix, found by prefix length, are those a scan
    /// of every block finds: both families, nested and overlapping CIDRs, excepts, /0.
    #[test]
    fn ip_blocks_found_by_prefix_length_are_those_a_scan_finds() {
        let block = |cidr: &str, except: &[&str]| Peer::IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        };
        let peers = vec![
            block("0.0.0.0/0", &["10.0.0.0/8"]),
            block("10.0.0.0/8", &["10.1.0.0/16"]),
            block("10.1.0.0/16", &[]),
            block("10.1.2.0/24", &["10.1.2.128/25"]),
            block("10.1.2.0/24", &[]),
            block("192.168.0.0/16", &[]),
            block("::/0", &["fd00::/8"]),
            block("fd00::/8", &["fd00:1::/32"]),
            block("fd00:1::/32", &[]),
        ];
        let policy = Policy {
            ingress: Some(vec![Rule {
                peers,
                ports: vec![],
            }]),
            ..Policy::default()
        };
        let atoms = PeerAtoms::collect(&[Arc::new(policy)]);
        let scan_containing = |ip: IpAddr| -> Vec<u32> {
            atoms
                .ip_blocks()
                .filter(|(_, c, ex)| c.contains(ip) && !ex.iter().any(|e| e.contains(ip)))
                .map(|(id, ..)| id)
                .collect()
        };
        let scan_covering = |p: IpNetwork| -> Vec<u32> {
            atoms
                .ip_blocks()
                .filter(|(_, c, ex)| covers(c, &p) && !ex.iter().any(|e| covers(e, &p)))
                .map(|(id, ..)| id)
                .collect()
        };
        for addr in [
            "1.2.3.4",
            "10.0.0.1",
            "10.1.0.1",
            "10.1.2.3",
            "10.1.2.200",
            "192.168.9.9",
            "::1",
            "fd00::1",
            "fd00:1::1",
            "fe80::1",
        ] {
            let ip = ip(addr);
            assert_eq!(
                atoms.ip_blocks_containing(ip),
                scan_containing(ip),
                "{addr}"
            );
        }
        for prefix in atoms.prefixes() {
            assert_eq!(
                atoms.ip_blocks_covering(prefix),
                scan_covering(prefix),
                "{prefix}"
            );
        }
    }

    #[test]
    fn policies_are_unioned_and_the_first_one_is_reported() {
        let rule = |port| Rule {
            peers: vec![],
            ports: vec![tcp(port, port)],
        };
        let maps = Cluster::new()
            .with_policy(
                "x",
                "one",
                ingress_only(selector(&[("pod", "a")]), vec![rule(80)]),
            )
            .with_policy(
                "x",
                "two",
                ingress_only(selector(&[("pod", "a")]), vec![rule(80), rule(81)]),
            )
            .compile();
        let keys = entries_of(&maps, 1);
        assert_eq!(keys.len(), 2);
        let by_port: BTreeMap<u16, (u32, u32)> = maps
            .policy
            .iter()
            .map(|(k, v)| (k.port_h, (v.policy, v.rule)))
            .collect();
        // Port 80: policy "one", its rule 0. Port 81: policy "two", its second rule.
        assert_eq!(by_port[&80], (0, 0));
        assert_eq!(by_port[&81], (1, 1));
    }

    #[test]
    fn compiling_is_deterministic() {
        let cluster = Cluster::new().with_policy(
            "x",
            "p",
            ingress_only(
                LabelSelector::everything(),
                vec![Rule {
                    peers: vec![pods_in_own_ns("x", LabelSelector::everything())],
                    ports: vec![tcp(80, 90)],
                }],
            ),
        );
        assert_eq!(cluster.compile(), cluster.compile());
    }

    #[test]
    fn a_change_that_leaves_pods_policies_namespaces_and_node_keeps_the_policy_maps() {
        let cluster =
            Cluster::new().with_policy("x", "in", ingress_only(LabelSelector::default(), vec![]));
        let node = cluster.node();
        let first = compile(&cluster.state, &node).unwrap();
        let same_policy = |a: &MapSet, b: &MapSet| {
            Arc::ptr_eq(&a.policy, &b.policy)
                && Arc::ptr_eq(&a.endpoints, &b.endpoints)
                && Arc::ptr_eq(&a.cidrs, &b.cidrs)
                && Arc::ptr_eq(&a.local_pods, &b.local_pods)
        };

        // A Service arrives: the policy part is kept, not compiled again.
        let mut with_service = cluster.state.clone();
        with_service.services.push(Arc::new(Service {
            namespace: "x".into(),
            name: "web".into(),
            cluster_ips: vec![ip("10.96.0.1")],
            ports: vec![ServicePort::tcp(80, 8080)],
            ..Service::default()
        }));
        let second = compile_with(&with_service, &node, &first).unwrap();
        assert!(same_policy(&first, &second));
        assert_eq!(second.services.counts().frontends, 1);

        // Equal pods under new addresses (a source that rebuilt them): kept too.
        let mut rebuilt = with_service.clone();
        rebuilt.pods = rebuilt
            .pods
            .iter()
            .map(|p| Arc::new(Pod::clone(p)))
            .collect();
        let third = compile_with(&rebuilt, &node, &second).unwrap();
        assert!(same_policy(&second, &third));

        // A pod's labels, a policy, a namespace's labels, or the node's routes change: each
        // compiles the policy part again, to what compiling from scratch gives.
        let mut relabelled = rebuilt.clone();
        Arc::make_mut(&mut relabelled.pods[1])
            .labels
            .insert("pod".into(), "z".into());
        let mut fewer_policies = rebuilt.clone();
        fewer_policies.policies.clear();
        let mut namespace_relabelled = rebuilt.clone();
        if let Some(ns) = namespace_relabelled.namespaces.get_mut("x") {
            ns.labels.insert("team".into(), "a".into());
        }
        for (what, state, node) in [
            ("pod labels", &relabelled, node.clone()),
            ("policies", &fewer_policies, node.clone()),
            ("namespace labels", &namespace_relabelled, node.clone()),
            ("routes", &rebuilt, NodeView::default()),
        ] {
            let next = compile_with(state, &node, &third).unwrap();
            assert!(!same_policy(&third, &next), "{what}");
            let scratch = compile(state, &node).unwrap();
            assert_eq!(
                (&next.policy, &next.endpoints, &next.local_pods),
                (&scratch.policy, &scratch.endpoints, &scratch.local_pods),
                "{what}"
            );
        }
    }

    #[test]
    fn a_state_that_does_not_fit_names_the_policy() {
        // 10 local pods × 3 protocols × 65 533 ports each exceed the 1M entries of the map.
        let mut cluster = Cluster::new();
        for i in 0..8u8 {
            let mut extra = Pod::clone(&cluster.state.pods[1]);
            extra.name = format!("extra-{i}");
            extra.ips = vec![IpAddr::from([10, 0, 2, i])];
            cluster.state.pods.push(Arc::new(extra));
        }
        for (name, protocol) in [
            ("p-tcp", Protocol::Tcp),
            ("p-udp", Protocol::Udp),
            ("p-sctp", Protocol::Sctp),
        ] {
            let rule = Rule {
                peers: vec![],
                ports: vec![PortMatch {
                    protocol,
                    port: Some(PortSpec::Range {
                        first: 2,
                        last: 65534,
                    }),
                }],
            };
            cluster = cluster.with_policy(
                "x",
                name,
                ingress_only(LabelSelector::everything(), vec![rule]),
            );
        }
        let Err(err) = compile(&cluster.state, &cluster.node()) else {
            panic!("a state of over 1M entries compiled");
        };
        let text = err.to_string();
        assert!(text.contains("policy x/p-"), "{text}");
        assert!(text.contains("WEIR_POL_V2"), "{text}");
    }

    #[test]
    fn a_change_keeps_the_class_ids_of_classes_that_remain() {
        let to_b = Rule {
            peers: vec![pods_in_own_ns("x", selector(&[("pod", "b")]))],
            ports: vec![tcp(80, 80)],
        };
        let cluster = Cluster::new().with_policy(
            "x",
            "p",
            ingress_only(selector(&[("pod", "a")]), vec![to_b]),
        );
        let first = cluster.compile();
        // A new policy whose peer sorts before the old one, and matches another pod.
        let to_c = Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(LabelSelector::everything()),
                pods: selector(&[("pod", "c")]),
            }],
            ports: vec![tcp(81, 81)],
        };
        let mut changed = cluster.with_policy(
            "x",
            "p0",
            ingress_only(selector(&[("pod", "a")]), vec![to_c]),
        );
        changed.state.policies.rotate_right(1);
        let second = compile_with(&changed.state, &changed.node(), &first).unwrap();
        assert_eq!(
            class_of(&first, "10.0.0.2"),
            class_of(&second, "10.0.0.2"),
            "x/b keeps its class id"
        );
        assert!(
            class_of(&second, "10.0.1.3") > class_of(&first, "10.0.0.2"),
            "a new class gets a new id, never a reused one"
        );
        let unchanged = first
            .endpoints
            .iter()
            .filter(|(k, v)| second.endpoints.get(*k) == Some(*v))
            .count();
        assert_eq!(unchanged, 2, "only y/c's endpoint entry changes");
    }

    #[test]
    fn host_addresses_are_marked() {
        let cluster = Cluster::new();
        let mut node = NodeView::default();
        node.host_addrs.insert(ip("10.0.255.1"));
        let maps = compile(&cluster.state, &node).unwrap();
        assert_eq!(
            maps.endpoints[&to_addr(ip("10.0.255.1"))].flags,
            endpoint_flags::HOST
        );
        assert!(maps.local_pods.is_empty(), "no routes: no local pods");
    }
}
