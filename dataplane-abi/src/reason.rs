//! Why a packet passed or was dropped. Numbers are stable: never renumber, retire a slot instead.
//! Each enum indexes its own per-CPU counter array (`WEIR_PASS_V1`, `WEIR_DROP_V1`).

/// Why the dataplane let a packet through.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PassReason {
    /// Part of a connection already allowed (either direction), or an ICMP error about one.
    Established = 0,
    /// A new connection a policy rule allows.
    PolicyAllowed = 1,
    /// A new connection of a pod no policy isolates in that direction.
    NotIsolated = 2,
    /// Between the node and its own pods: Kubernetes always allows it.
    NodeTraffic = 3,
    /// Not IPv4 or IPv6 (ARP and the like): never blocked.
    NonIp = 4,
    /// Link-local and multicast control traffic (IPv6 neighbour discovery, DAD, MLD).
    LinkLocal = 5,
    /// A pod reaching itself (through an address of its own): a pod cannot block itself.
    SelfTraffic = 6,
    /// A new connection from outside the node to one of its Services (node port,
    /// load-balancer or external IP), translated at the uplink; policy judges it where its
    /// backend runs.
    ExternalService = 7,
}

impl PassReason {
    /// Every variant, in number order; the length of the counter array.
    pub const ALL: [Self; 8] = [
        Self::Established,
        Self::PolicyAllowed,
        Self::NotIsolated,
        Self::NodeTraffic,
        Self::NonIp,
        Self::LinkLocal,
        Self::SelfTraffic,
        Self::ExternalService,
    ];
    /// Size of the counter array indexed by this enum.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable lower-case name, for metrics and CLI output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::PolicyAllowed => "policy_allowed",
            Self::NotIsolated => "not_isolated",
            Self::NodeTraffic => "node_traffic",
            Self::NonIp => "non_ip",
            Self::LinkLocal => "link_local",
            Self::SelfTraffic => "self_traffic",
            Self::ExternalService => "external_service",
        }
    }
}

/// Why the dataplane dropped a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The pod is isolated in this direction and no rule allows the peer, port and protocol.
    PolicyDenied = 0,
    /// An established connection whose policy changed and no longer allows it.
    PolicyRevoked = 1,
    /// Headers cut short or inconsistent (bad IHL, truncated L4 header).
    Malformed = 2,
    /// A non-first IP fragment whose first fragment was never seen (or was denied).
    FragmentUnknown = 3,
    /// On a pod's interface, the pod-side address (source leaving, destination entering) is not
    /// one of that pod's addresses: spoofing, or a pod the agent does not know yet.
    NotPodAddress = 4,
    /// A new connection to a Service frontend with no endpoint at all: rejected (TCP reset,
    /// ICMP unreachable to the client), as kube-proxy does, rather than left to time out.
    NoEndpoints = 5,
    /// A new connection to a frontend whose traffic policy is `Local` on a node with no local
    /// endpoint: dropped, as kube-proxy does.
    NoLocalEndpoints = 6,
    /// A client outside the Service's `loadBalancerSourceRanges`.
    SourceRange = 7,
    /// The kernel refused to rewrite the packet's addresses (a helper failed).
    NatFailed = 8,
}

impl DropReason {
    /// Every variant, in number order; the length of the counter array.
    pub const ALL: [Self; 9] = [
        Self::PolicyDenied,
        Self::PolicyRevoked,
        Self::Malformed,
        Self::FragmentUnknown,
        Self::NotPodAddress,
        Self::NoEndpoints,
        Self::NoLocalEndpoints,
        Self::SourceRange,
        Self::NatFailed,
    ];
    /// Size of the counter array indexed by this enum.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable lower-case name, for metrics and CLI output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PolicyDenied => "policy_denied",
            Self::PolicyRevoked => "policy_revoked",
            Self::Malformed => "malformed",
            Self::FragmentUnknown => "fragment_unknown",
            Self::NotPodAddress => "not_pod_address",
            Self::NoEndpoints => "no_endpoints",
            Self::NoLocalEndpoints => "no_local_endpoints",
            Self::SourceRange => "source_range",
            Self::NatFailed => "nat_failed",
        }
    }
}
