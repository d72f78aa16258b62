//! The desired state: validated Kubernetes objects reduced to what the dataplane enforces.
//!
//! Everything here has already been checked (by `manifest`), so the compiler that turns it into
//! map contents cannot fail on bad input, only on capacity.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnetwork::IpNetwork;

/// Labels of a namespace or pod.
pub type Labels = BTreeMap<String, String>;

/// Where an object was read from, for messages that point the user at it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The manifest file, or a description such as `kubernetes API`.
    pub file: PathBuf,
    /// 1-based line of the object's first line in that file (0 when unknown).
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// Everything the dataplane enforces, as one value: the compiler's only input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Namespaces by name. A namespace referenced by a pod or policy but never declared exists
    /// with no labels, as `kubectl apply` of a pod in `default` would assume.
    pub namespaces: BTreeMap<String, Namespace>,
    /// All pods of the cluster, local or not: remote pods are peers that selectors match.
    /// Shared, as `services`: a compilation whose pods, policies and namespaces are the
    /// previous one's keeps its policy maps.
    pub pods: Vec<Arc<Pod>>,
    /// All network policies, shared as `pods`.
    pub policies: Vec<Arc<Policy>>,
    /// All Services (`ExternalName` Services are not load-balanced and are left out).
    ///
    /// Shared: a source hands the objects that did not change to the next state as they are,
    /// and the compiler recognises them by address. Sorted by namespace and name
    /// ([`Self::sort_services_and_slices`]), the compiler finds what changed in one pass; in another
    /// order it compiles every Service again.
    pub services: Vec<Arc<Service>>,
    /// All `EndpointSlices`, and legacy `Endpoints` objects converted to slices; shared and
    /// best sorted by namespace and name, as `services`.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// All nodes of the cluster.
    pub nodes: Vec<Node>,
}

impl DesiredState {
    /// Puts Services and `EndpointSlices` in the order the compiler reads fastest: by
    /// namespace and name ([`Service::key`], [`EndpointSlice::key`]).
    pub fn sort_services_and_slices(&mut self) {
        self.services.sort_by(|a, b| a.key().cmp(&b.key()));
        self.endpoint_slices.sort_by(|a, b| a.key().cmp(&b.key()));
    }
}

/// A Kubernetes namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
}

/// A Kubernetes pod, reduced to what policy matching needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); a pod without an address cannot be matched yet.
    pub ips: Vec<IpAddr>,
    /// Named container ports, for rules that name a port.
    pub ports: Vec<NamedPort>,
    /// Whether the pod takes Service traffic; read only where Weir derives a Service's
    /// endpoints itself (a manifests directory), as the `EndpointSlice` controller would. The
    /// Kubernetes source leaves it [`PodCondition::Ready`]: there the cluster's
    /// `EndpointSlices` carry readiness.
    pub condition: PodCondition,
    /// Where the pod was read from.
    pub origin: Origin,
}

/// What a pod's status says about Service traffic to it, as the `EndpointSlice` controller
/// reads it (`status.phase`, the `Ready` condition, `metadata.deletionTimestamp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodCondition {
    /// Running and ready: its `Ready` condition is `True`, or (a manifest written by hand)
    /// its status says nothing against it.
    #[default]
    Ready,
    /// Not ready (the `Ready` condition is `False`, or the pod is `Pending`): an endpoint that
    /// is neither ready nor serving.
    NotReady,
    /// Being deleted: an endpoint that is terminating, serving while its `Ready` condition
    /// still holds.
    Terminating {
        /// The `Ready` condition, as for a pod that is not being deleted.
        serving: bool,
    },
    /// `Succeeded` or `Failed`: its containers have stopped for good; not an endpoint.
    Finished,
}

/// A container port that has a name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The container port's `name`.
    pub name: String,
    /// The container port's `protocol`.
    pub protocol: Protocol,
    /// The container port's `containerPort`.
    pub port: u16,
}

/// Transport protocols a `NetworkPolicy` port can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP`, the default when a port names no protocol.
    #[default]
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as the dataplane keys it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => dataplane_abi::proto::TCP,
            Self::Udp => dataplane_abi::proto::UDP,
            Self::Sctp => dataplane_abi::proto::SCTP,
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A `networking.k8s.io/v1` `NetworkPolicy`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Pods of `namespace` this policy applies to.
    pub pod_selector: LabelSelector,
    /// `Some` when the policy isolates selected pods for ingress (`policyTypes` has Ingress);
    /// the rules (possibly none: deny all) that allow traffic in.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates selected pods for egress.
    pub egress: Option<Vec<Rule>>,
    /// Where the policy was read from.
    pub origin: Origin,
}

/// One ingress or egress rule: traffic matching any peer and any port is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Empty means every peer.
    pub peers: Vec<Peer>,
    /// Empty means every port of every protocol.
    pub ports: Vec<PortMatch>,
}

/// A `from` or `to` entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods chosen by labels, in namespaces chosen by labels (or the policy's own namespace).
    Pods {
        /// Namespaces the pods may live in.
        namespaces: NamespaceScope,
        /// Pods of those namespaces, by labels (`podSelector`; empty: every pod).
        pods: LabelSelector,
    },
    /// Addresses in `cidr` but not in any of `except`.
    IpBlock {
        /// `ipBlock.cidr`, with host bits cleared.
        cidr: IpNetwork,
        /// `ipBlock.except`: each a strict subnet of `cidr`.
        except: Vec<IpNetwork>,
    },
}

/// Which namespaces a pod peer may live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Only the namespace of the policy (a peer with a `podSelector` alone).
    Own(String),
    /// Namespaces whose labels match (a peer with a `namespaceSelector`).
    Selected(LabelSelector),
}

/// A `ports` entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    /// `protocol` (TCP when the entry names none).
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PortSpec>,
}

/// A port number, range or name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// `port` alone (`first == last`) or `port`..=`endPort`.
    Range {
        /// First port of the range.
        first: u16,
        /// Last port of the range, inclusive.
        last: u16,
    },
    /// A container port name, resolved on each destination pod.
    Named(String),
}

/// A Kubernetes label selector. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    /// `matchLabels`: each key must have exactly this value.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`: each must hold.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key tested.
    pub key: String,
    /// How the label is tested.
    pub operator: Operator,
    /// Non-empty for `In` and `NotIn`, empty for `Exists` and `DoesNotExist`.
    pub values: BTreeSet<String>,
}

/// Operators of `matchExpressions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The label is set to one of `values`.
    In,
    /// The label is unset, or set to none of `values`.
    NotIn,
    /// The label is set, to any value.
    Exists,
    /// The label is unset.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` pair and every expression.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// The selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }
}

impl Requirement {
    /// Kubernetes semantics: `NotIn` and `DoesNotExist` match pods without the key.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A `v1` `Service`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub kind: ServiceKind,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for a headless Service (`None`), which
    /// is not load-balanced.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` for a Service without one, whose endpoints are managed by hand.
    pub selector: Option<Labels>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (a `LoadBalancer` Service).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, with host bits cleared; empty: every client.
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, 10 800 by default).
    pub affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local`: external traffic only to endpoints on the node it
    /// arrived at, with the client's address preserved.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`: traffic from inside the cluster only to endpoints on the
    /// client's node.
    pub internal_traffic_local: bool,
    /// `spec.healthCheckNodePort` (a `LoadBalancer` Service with `externalTrafficPolicy:
    /// Local`): the TCP port every node answers load balancers' health checks on, with 200
    /// when it has a local endpoint and 503 when not.
    pub health_check_node_port: Option<u16>,
    /// Where the Service was read from.
    pub origin: Origin,
}

impl Service {
    /// Namespace and name: what identifies the Service, and its place in a sorted list.
    #[must_use]
    pub fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    /// `ClusterIP`, the default.
    #[default]
    ClusterIp,
    /// `NodePort`: also reachable on every node's addresses at `nodePort`.
    NodePort,
    /// `LoadBalancer`: a `NodePort` Service with load-balancer ingress IPs.
    LoadBalancer,
}

/// A `spec.ports` entry of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// `name`; empty when the Service has a single unnamed port.
    pub name: String,
    /// `protocol` (TCP by default).
    pub protocol: Protocol,
    /// `port`: what clients connect to on the `ClusterIP`, external and load-balancer IPs.
    pub port: u16,
    /// `targetPort` (defaults to `port`).
    pub target_port: TargetPort,
    /// `nodePort`, for `NodePort` and `LoadBalancer` Services.
    pub node_port: Option<u16>,
}

#[cfg(test)]
impl ServicePort {
    /// The single unnamed TCP port `port` → `target`: the most common Service in tests.
    pub(crate) fn tcp(port: u16, target: u16) -> Self {
        Self {
            name: String::new(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(target),
            node_port: None,
        }
    }
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name: each endpoint's own number for it (`EndpointSlice` `ports[].name`
    /// carries the Service port's name, and `port` the resolved number).
    Named(String),
}

/// A `discovery.k8s.io/v1` `EndpointSlice` (or a legacy `v1` `Endpoints` object, converted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The Service it belongs to: label `kubernetes.io/service-name` (or, for `Endpoints`, its
    /// own name).
    pub service: String,
    /// `ports`: each names the Service port (`name`) it serves and the endpoints' port number.
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
    /// Read from a legacy `Endpoints` object: used only for a Service that has no slice.
    pub legacy: bool,
    /// Where the slice was read from.
    pub origin: Origin,
}

impl EndpointSlice {
    /// Namespace, name and whether converted from `Endpoints` (whose name may be a slice's
    /// too): what identifies the slice, and its place in a sorted list.
    #[must_use]
    pub fn key(&self) -> (&str, &str, bool) {
        (&self.namespace, &self.name, self.legacy)
    }
}

/// A `ports` entry of an `EndpointSlice`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// `name`: the Service port's name (empty for a single unnamed port).
    pub name: String,
    /// `protocol` (TCP by default).
    pub protocol: Protocol,
    /// `port`: the number endpoints listen on.
    pub port: u16,
}

/// An `endpoints` entry of an `EndpointSlice`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `addresses` (Kubernetes uses only the first; all are kept, all are backends).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
    /// `conditions.serving` (unset means as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (unset means not terminating).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
}

/// A `v1` `Node`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type `InternalIP` and `ExternalIP`: where node ports answer.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Where the node was read from.
    pub origin: Origin,
}
