//! Names for what the dataplane reports as numbers: interfaces, addresses, policy and rule
//! indexes, Service ids. Built from one generation's desired state and compiled maps, so that a flow event
//! or an `explain` answer reads `x/a-policy spec.ingress[1]` rather than `policy 0 rule 1`.
//!
//! Policy indexes are those of the generation the catalog was built from: an event sent just
//! before an apply and read just after it may be named after the new generation's policies.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use dataplane_abi::{Addr, Direction, DropReason, PassReason, PolicyValue, endpoint_flags};

use crate::compile::{self, MapSet};
use crate::model::DesiredState;

/// A policy, as people name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyName {
    /// `namespace/name`.
    pub name: String,
    /// Where it was read from (`file:line`).
    pub origin: String,
}

/// A pod this node hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LocalEntry {
    /// `namespace/name`.
    pod: Arc<str>,
    /// Policies selecting the pod for ingress, by index.
    ingress_isolating: Vec<u32>,
    /// Policies selecting the pod for egress, by index.
    egress_isolating: Vec<u32>,
}

/// Names of one generation.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pods_by_addr: HashMap<IpAddr, Arc<str>>,
    addrs_by_pod: HashMap<Arc<str>, Vec<IpAddr>>,
    host_addrs: Vec<IpAddr>,
    local: BTreeMap<u32, LocalEntry>,
    policies: Vec<PolicyName>,
    /// `namespace/name` of each Service, by its id in the Service maps.
    services: HashMap<u32, Arc<str>>,
}

/// Why a packet got its verdict, in words and names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Because {
    /// One sentence: `isolated by policy x/p and nothing allows it`.
    pub summary: String,
    /// The policy that allowed it (`namespace/name`).
    pub policy: Option<String>,
    /// Its rule, as a field path: `spec.ingress[1]`.
    pub rule: Option<String>,
    /// The policies that isolate the local pod in the packet's direction.
    pub isolated_by: Vec<String>,
}

impl Catalog {
    /// The names of the generation compiled from `state` into `maps`.
    pub fn new(state: &DesiredState, maps: &MapSet) -> Self {
        let mut pods_by_addr = HashMap::new();
        let mut addrs_by_pod: HashMap<Arc<str>, Vec<IpAddr>> = HashMap::new();
        for pod in &state.pods {
            let name: Arc<str> = format!("{}/{}", pod.namespace, pod.name).into();
            for ip in &pod.ips {
                // The compiler keeps the first pod of a duplicate address; so does this.
                pods_by_addr.entry(*ip).or_insert_with(|| name.clone());
            }
            addrs_by_pod.insert(name, pod.ips.clone());
        }
        let host_addrs = maps
            .endpoints
            .iter()
            .filter(|(_, ep)| ep.flags & endpoint_flags::HOST != 0)
            .map(|(addr, _)| to_ip(addr))
            .collect();
        let mut local = BTreeMap::new();
        for (ifindex, lp) in maps.local_pods.iter() {
            let Some(pod) = state
                .pods
                .iter()
                .find(|p| p.namespace == lp.namespace && p.name == lp.name)
            else {
                continue;
            };
            let isolating = |ingress: bool| {
                compile::selecting(state, pod)
                    .filter(|(_, p)| {
                        if ingress {
                            p.ingress.is_some()
                        } else {
                            p.egress.is_some()
                        }
                    })
                    .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
                    .collect()
            };
            local.insert(
                *ifindex,
                LocalEntry {
                    pod: format!("{}/{}", lp.namespace, lp.name).into(),
                    ingress_isolating: isolating(true),
                    egress_isolating: isolating(false),
                },
            );
        }
        let policies = state
            .policies
            .iter()
            .map(|p| PolicyName {
                name: format!("{}/{}", p.namespace, p.name),
                origin: p.origin.to_string(),
            })
            .collect();
        // A Service without frontends (headless, or every frontend taken by another) has no
        // id; no flow names it.
        let services = maps
            .services
            .services()
            .filter(|(_, unit)| unit.id != 0)
            .map(|(name, unit)| (unit.id, name.into()))
            .collect();
        Self {
            pods_by_addr,
            addrs_by_pod,
            host_addrs,
            local,
            policies,
            services,
        }
    }

    /// `namespace/name` of the pod that has `ip`, or `node` for the node's own addresses.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        if let Some(pod) = self.pods_by_addr.get(&ip) {
            return Some(pod.to_string());
        }
        self.host_addrs.contains(&ip).then(|| "node".to_owned())
    }

    /// `namespace/name` of the pod behind interface `ifindex`.
    pub fn local_pod(&self, ifindex: u32) -> Option<&str> {
        self.local.get(&ifindex).map(|e| &*e.pod)
    }

    /// Addresses of pod `namespace/name`.
    pub fn addresses(&self, pod: &str) -> Option<&[IpAddr]> {
        self.addrs_by_pod.get(pod).map(Vec::as_slice)
    }

    /// `namespace/name` of the Service with id `id` (`ServiceValue::service`).
    pub fn service(&self, id: u32) -> Option<&str> {
        self.services.get(&id).map(|name| &**name)
    }

    /// Policy number `index`.
    pub fn policy(&self, index: u32) -> Option<&PolicyName> {
        self.policies.get(usize::try_from(index).ok()?)
    }

    /// Names of the policies isolating the pod behind `ifindex` for `dir`.
    pub fn isolated_by(&self, ifindex: u32, dir: Direction) -> Vec<String> {
        let Some(entry) = self.local.get(&ifindex) else {
            return Vec::new();
        };
        let indexes = match dir {
            Direction::Ingress => &entry.ingress_isolating,
            Direction::Egress => &entry.egress_isolating,
        };
        indexes
            .iter()
            .filter_map(|i| self.policy(*i))
            .map(|p| p.name.clone())
            .collect()
    }

    /// Why the pod behind `ifindex` got `outcome` for a packet going `dir`, allowed by the
    /// policy entry `allowed_by` when a rule allowed it.
    pub fn because(
        &self,
        ifindex: u32,
        dir: Direction,
        outcome: Result<PassReason, DropReason>,
        allowed_by: Option<PolicyValue>,
    ) -> Because {
        let pod = self.local_pod(ifindex).unwrap_or("the pod");
        let way = direction_name(dir);
        let mut because = Because::default();
        because.summary = match outcome {
            Ok(PassReason::PolicyAllowed) => {
                let value = allowed_by.unwrap_or_default();
                let policy = self.policy(value.policy).map(|p| p.name.clone());
                let rule = format!("spec.{way}[{}]", value.rule);
                let summary = match &policy {
                    Some(name) => format!("allowed by policy {name}, rule {rule}"),
                    None => format!(
                        "allowed by policy #{} (unknown to this agent)",
                        value.policy
                    ),
                };
                because.policy = policy;
                because.rule = Some(rule);
                summary
            }
            Ok(PassReason::NotIsolated) => {
                format!("not isolated: no policy selects {pod} for {way}")
            }
            Ok(PassReason::Established) => "part of an allowed connection".to_owned(),
            Ok(PassReason::NodeTraffic) => "node traffic: always allowed".to_owned(),
            Ok(PassReason::SelfTraffic) => "a pod reaching itself: always allowed".to_owned(),
            Ok(PassReason::LinkLocal) => "link-local or multicast: never blocked".to_owned(),
            Ok(PassReason::NonIp) => "not IP: never blocked".to_owned(),
            Ok(PassReason::ExternalService) => {
                "from outside the node to a Service: translated to a backend, judged where it runs"
                    .to_owned()
            }
            Err(DropReason::PolicyDenied) => {
                because.isolated_by = self.isolated_by(ifindex, dir);
                format!(
                    "isolated by {} and nothing allows it",
                    policy_list(&because.isolated_by)
                )
            }
            Err(DropReason::PolicyRevoked) => {
                because.isolated_by = self.isolated_by(ifindex, dir);
                format!(
                    "policy changed: isolated by {} and nothing allows it any more; connection cut",
                    policy_list(&because.isolated_by)
                )
            }
            Err(DropReason::Malformed) => "headers cut short or inconsistent".to_owned(),
            Err(DropReason::FragmentUnknown) => {
                "a later fragment whose first fragment was never seen or was denied".to_owned()
            }
            Err(DropReason::NotPodAddress) => format!(
                "the pod-side address is not one of {pod}'s (spoofed, or a pod not known yet)"
            ),
            Err(DropReason::NoEndpoints) => {
                "the Service has no endpoint: connection rejected".to_owned()
            }
            Err(DropReason::NoLocalEndpoints) => {
                "the Service's traffic policy is Local and this node has no endpoint".to_owned()
            }
            Err(DropReason::SourceRange) => {
                "the client is outside the Service's loadBalancerSourceRanges".to_owned()
            }
            Err(DropReason::NatFailed) => "the kernel refused the address translation".to_owned(),
        };
        because
    }
}

/// `policy x/p`, `policy x/p (and x/q, x/r)`, or `a policy` when none is known.
fn policy_list(names: &[String]) -> String {
    match names {
        [] => "a policy".to_owned(),
        [one] => format!("policy {one}"),
        [first, rest @ ..] => format!("policy {first} (and {})", rest.join(", ")),
    }
}

/// `ingress` or `egress`: the Kubernetes field the direction's rules live in.
pub fn direction_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The address a 16-byte dataplane address stands for (IPv4-mapped addresses as IPv4).
pub fn to_ip(addr: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Names of IANA protocol numbers, as flows and `explain` print them.
pub fn proto_name(number: u8) -> String {
    use dataplane_abi::proto;
    match number {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::SCTP => "SCTP".into(),
        proto::ICMP => "ICMP".into(),
        proto::ICMPV6 => "ICMPv6".into(),
        other => format!("proto-{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::NodeView;
    use crate::model::{LabelSelector, Pod, Policy, Rule, Service, ServicePort};

    fn state() -> DesiredState {
        let labels = |v: &str| [("app".to_owned(), v.to_owned())].into();
        let pod = |name: &str, ip: &str| Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: labels(name),
            ips: vec![ip.parse().unwrap()],
            ..Pod::default()
        };
        let policy = |name: &str, ingress: Option<Vec<Rule>>, egress: Option<Vec<Rule>>| Policy {
            namespace: "x".into(),
            name: name.into(),
            pod_selector: LabelSelector {
                match_labels: labels("a"),
                ..LabelSelector::default()
            },
            ingress,
            egress,
            ..Policy::default()
        };
        DesiredState {
            pods: vec![
                Arc::new(pod("a", "10.0.0.1")),
                Arc::new(pod("b", "10.0.0.2")),
            ],
            policies: vec![
                Arc::new(policy("deny-in", Some(vec![]), None)),
                Arc::new(policy("web", Some(vec![Rule::default()]), None)),
                Arc::new(policy("deny-out", None, Some(vec![]))),
            ],
            ..DesiredState::default()
        }
    }

    fn catalog() -> Catalog {
        let state = state();
        let node = NodeView {
            host_addrs: ["10.0.255.1".parse().unwrap()].into(),
            local_routes: [("10.0.0.1".parse().unwrap(), 7)].into(),
            ..NodeView::default()
        };
        let maps = compile::compile(&state, &node).unwrap();
        Catalog::new(&state, &maps)
    }

    #[test]
    fn a_service_without_frontends_names_no_id() {
        let mut state = state();
        let service = |name: &str, ip: Option<&str>| {
            Arc::new(Service {
                namespace: "x".into(),
                name: name.into(),
                cluster_ips: ip.iter().map(|ip| ip.parse().unwrap()).collect(),
                ports: vec![ServicePort::tcp(80, 80)],
                ..Service::default()
            })
        };
        state.services = vec![service("headless", None), service("web", Some("10.96.0.1"))];
        let maps = compile::compile(&state, &NodeView::default()).unwrap();
        let c = Catalog::new(&state, &maps);
        let web = maps
            .services
            .services()
            .find(|(n, _)| *n == "x/web")
            .unwrap()
            .1
            .id;
        assert_eq!(c.service(web), Some("x/web"));
        assert_eq!(c.service(0), None, "the headless Service has no id");
    }

    #[test]
    fn names_pods_the_node_and_local_interfaces() {
        let c = catalog();
        assert_eq!(
            c.name_of("10.0.0.2".parse().unwrap()).as_deref(),
            Some("x/b")
        );
        assert_eq!(
            c.name_of("10.0.255.1".parse().unwrap()).as_deref(),
            Some("node")
        );
        assert_eq!(c.name_of("192.0.2.1".parse().unwrap()), None);
        assert_eq!(c.local_pod(7), Some("x/a"));
        assert_eq!(c.local_pod(8), None);
    }

    #[test]
    fn a_denied_packet_names_every_policy_isolating_its_direction() {
        let c = catalog();
        let denied = c.because(7, Direction::Ingress, Err(DropReason::PolicyDenied), None);
        assert_eq!(
            denied.summary,
            "isolated by policy x/deny-in (and x/web) and nothing allows it"
        );
        let out = c.because(7, Direction::Egress, Err(DropReason::PolicyDenied), None);
        assert_eq!(
            out.summary,
            "isolated by policy x/deny-out and nothing allows it"
        );
    }

    #[test]
    fn an_allowed_packet_names_its_policy_and_rule() {
        let c = catalog();
        let value = PolicyValue { policy: 1, rule: 0 };
        let allowed = c.because(
            7,
            Direction::Ingress,
            Ok(PassReason::PolicyAllowed),
            Some(value),
        );
        assert_eq!(
            allowed.summary,
            "allowed by policy x/web, rule spec.ingress[0]"
        );
        assert_eq!(allowed.policy.as_deref(), Some("x/web"));
    }

    #[test]
    fn mapped_addresses_read_back_as_ipv4() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(to_ip(&compile::to_addr(ip)), ip);
        let ip6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(to_ip(&compile::to_addr(ip6)), ip6);
    }
}
