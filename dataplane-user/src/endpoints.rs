//! The endpoints of Services that select pods, derived from the pods as Kubernetes'
//! `EndpointSlice` controller would (`pkg/controller/endpointslice`), for a manifests
//! directory, where no controller runs. (From the Kubernetes API, the cluster's own
//! `EndpointSlices` are used as they are.)
//!
//! What the controller does, and so what this does:
//! - a Service with a selector gets the pods of its namespace whose labels match it, except
//!   pods that have finished (`Succeeded`, `Failed`) or have no address yet;
//! - one set of slices per IP family of the Service (its cluster IPs' families; both for a
//!   Service without cluster IPs), each endpoint with the pod's addresses of that family;
//! - each Service port's `targetPort` is resolved on each pod: a number as it is, a name by the
//!   pod's container port of that name and protocol. A pod without such a port is no endpoint
//!   for that Service port. Pods whose ports resolve alike share slices; pods whose numbers
//!   differ go to different slices, since a slice has one number per port;
//! - at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice;
//! - readiness from the pod's [`PodCondition`].
//!
//! Not done: `publishNotReadyAddresses` (not in the model), `nodeName` and `zone` (the pod
//! model carries no node).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, Labels, Pod, PodCondition, Service,
    ServicePort, TargetPort,
};

/// The controller's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The slices of every Service that has a selector and no `EndpointSlice` or `Endpoints`
/// object of its own, made from the pods of `state`. Each slice's origin is its Service's.
///
/// Slices and pods are indexed first: a cluster of 10 000 Services, slices and pods would
/// otherwise cost 10^8 comparisons at every load.
pub fn derive(state: &DesiredState) -> Vec<EndpointSlice> {
    let with_slices: HashSet<(&str, &str)> = state
        .endpoint_slices
        .iter()
        .map(|slice| (slice.namespace.as_str(), slice.service.as_str()))
        .collect();
    // Endpoints written for a Service are the truth, as a controller's slices would be.
    let wanting: Vec<(&Arc<Service>, &Labels)> = state
        .services
        .iter()
        .filter(|service| {
            !with_slices.contains(&(service.namespace.as_str(), service.name.as_str()))
        })
        .filter_map(|service| Some((service, service.selector.as_ref()?)))
        .collect();
    if wanting.is_empty() {
        return Vec::new();
    }
    let mut pods_by_namespace: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for pod in &state.pods {
        pods_by_namespace
            .entry(pod.namespace.as_str())
            .or_default()
            .push(pod);
    }
    wanting
        .into_iter()
        .flat_map(|(service, selector)| {
            let pods = pods_by_namespace
                .get(service.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|pod| selects(selector, pod));
            slices_for(service, pods)
        })
        .collect()
}

/// A Service selector is `matchLabels` alone: every pair must be on the pod.
fn selects(selector: &Labels, pod: &Pod) -> bool {
    selector
        .iter()
        .all(|(key, value)| pod.labels.get(key) == Some(value))
}

/// The IP families a Service's slices are made for: its cluster IPs', or both when it has
/// none (headless, or not allocated in a manifest), as the controller does for a Service
/// whose families are not known.
fn families(service: &Service) -> Vec<bool> {
    let mut families: Vec<bool> = service.cluster_ips.iter().map(IpAddr::is_ipv6).collect();
    families.dedup();
    if families.is_empty() {
        families = vec![false, true];
    }
    families
}

/// The slices of one Service from the pods it selects: per family, grouped by how the pods'
/// ports resolve, in pod order.
fn slices_for<'a>(service: &Service, pods: impl Iterator<Item = &'a Pod>) -> Vec<EndpointSlice> {
    let pods: Vec<&Pod> = pods
        .filter(|pod| pod.condition != PodCondition::Finished)
        .collect();
    let mut slices = Vec::new();
    for ipv6 in families(service) {
        // Groups in order of first appearance, so that slice names follow the pods' order.
        let mut groups: Vec<(Vec<EndpointPort>, Vec<Endpoint>)> = Vec::new();
        for pod in &pods {
            let addresses: Vec<IpAddr> = pod
                .ips
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == ipv6)
                .collect();
            if addresses.is_empty() {
                continue;
            }
            let ports = resolve_ports(&service.ports, pod);
            let endpoint = endpoint(addresses, pod.condition);
            match groups.iter_mut().find(|(group, _)| *group == ports) {
                Some((_, endpoints)) => endpoints.push(endpoint),
                None => groups.push((ports, vec![endpoint])),
            }
        }
        let family = if ipv6 { "ipv6" } else { "ipv4" };
        let chunks = groups.into_iter().flat_map(|(ports, endpoints)| {
            let chunks: Vec<Vec<Endpoint>> = endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect();
            chunks.into_iter().map(move |chunk| (ports.clone(), chunk))
        });
        for (index, (ports, endpoints)) in chunks.enumerate() {
            slices.push(EndpointSlice {
                namespace: service.namespace.clone(),
                name: format!("{}-{family}-{}", service.name, index + 1),
                service: service.name.clone(),
                ports,
                endpoints,
                legacy: false,
                origin: service.origin.clone(),
            });
        }
    }
    slices
}

/// Each Service port as served by `pod`; ports whose named `targetPort` the pod lacks are
/// left out.
fn resolve_ports(ports: &[ServicePort], pod: &Pod) -> Vec<EndpointPort> {
    ports
        .iter()
        .filter_map(|port| {
            let number = match &port.target_port {
                TargetPort::Number(number) => *number,
                TargetPort::Named(name) => {
                    pod.ports
                        .iter()
                        .find(|named| named.name == *name && named.protocol == port.protocol)?
                        .port
                }
            };
            Some(EndpointPort {
                name: port.name.clone(),
                protocol: port.protocol,
                port: number,
            })
        })
        .collect()
}

/// The conditions the controller gives a pod's endpoint: ready only when serving and not
/// terminating.
fn endpoint(addresses: Vec<IpAddr>, condition: PodCondition) -> Endpoint {
    let (ready, serving, terminating) = match condition {
        PodCondition::Ready => (true, true, false),
        PodCondition::NotReady | PodCondition::Finished => (false, false, false),
        PodCondition::Terminating { serving } => (false, serving, true),
    };
    Endpoint {
        addresses,
        ready,
        serving,
        terminating,
        node_name: None,
        zone: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamedPort, Origin, Protocol, ServiceKind};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(name: &str, app: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            labels: labels(&[("app", app)]),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..Pod::default()
        }
    }

    fn with_port(mut pod: Pod, name: &str, port: u16) -> Pod {
        pod.ports.push(NamedPort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
        });
        pod
    }

    fn port(name: &str, port: u16, target: TargetPort) -> ServicePort {
        ServicePort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
            target_port: target,
            node_port: None,
        }
    }

    fn service(cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
        Service {
            namespace: "shop".to_owned(),
            name: "web".to_owned(),
            kind: ServiceKind::ClusterIp,
            cluster_ips: cluster_ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ports,
            selector: Some(labels(&[("app", "web")])),
            origin: Origin {
                file: "web.yaml".into(),
                line: 3,
            },
            ..Service::default()
        }
    }

    fn state(services: Vec<Service>, pods: Vec<Pod>) -> DesiredState {
        DesiredState {
            pods: pods.into_iter().map(Arc::new).collect(),
            services: services.into_iter().map(Arc::new).collect(),
            ..DesiredState::default()
        }
    }

    /// Port names and numbers, and addresses, of a slice.
    type SliceSummary = (Vec<(String, u16)>, Vec<String>);

    fn addresses(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .flat_map(|endpoint| endpoint.addresses.iter().map(ToString::to_string))
            .collect()
    }

    #[test]
    fn selected_pods_of_the_namespace_become_endpoints_of_the_cluster_ip_family() {
        let mut elsewhere = pod("other-ns", "web", &["10.0.0.9"]);
        elsewhere.namespace = "ops".to_owned();
        let state = state(
            vec![service(
                &["10.96.0.10"],
                vec![port("", 80, TargetPort::Number(9376))],
            )],
            vec![
                pod("a", "web", &["10.0.0.1", "fd00::1"]),
                pod("b", "db", &["10.0.0.2"]),
                elsewhere,
                pod("c", "web", &["10.0.0.3"]),
                pod("pending", "web", &[]),
            ],
        );
        let slices = derive(&state);
        assert_eq!(slices.len(), 1, "{slices:?}");
        let slice = &slices[0];
        assert_eq!(slice.name, "web-ipv4-1");
        assert_eq!(slice.service, "web");
        assert_eq!(slice.origin.to_string(), "web.yaml:3");
        assert!(!slice.legacy);
        assert_eq!(addresses(slice), ["10.0.0.1", "10.0.0.3"]);
        let expected = EndpointPort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 9376,
        };
        assert_eq!(slice.ports, [expected]);
    }

    #[test]
    fn a_service_without_cluster_ips_gets_slices_of_both_families() {
        let state = state(
            vec![service(&[], vec![port("", 80, TargetPort::Number(80))])],
            vec![pod("a", "web", &["10.0.0.1", "fd00::1"])],
        );
        let slices = derive(&state);
        let found: Vec<(&str, Vec<String>)> = slices
            .iter()
            .map(|slice| (slice.name.as_str(), addresses(slice)))
            .collect();
        assert_eq!(
            found,
            [
                ("web-ipv4-1", vec!["10.0.0.1".to_owned()]),
                ("web-ipv6-1", vec!["fd00::1".to_owned()])
            ]
        );
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_split_slices() {
        let ports = vec![
            port("http", 80, TargetPort::Named("web".to_owned())),
            port("metrics", 9090, TargetPort::Number(9090)),
        ];
        let state = state(
            vec![service(&["10.96.0.10"], ports)],
            vec![
                with_port(pod("a", "web", &["10.0.0.1"]), "web", 8080),
                with_port(pod("b", "web", &["10.0.0.2"]), "web", 8081),
                with_port(pod("c", "web", &["10.0.0.3"]), "web", 8080),
                pod("d", "web", &["10.0.0.4"]),
            ],
        );
        let slices = derive(&state);
        let found: Vec<SliceSummary> = slices
            .iter()
            .map(|slice| {
                let ports = slice.ports.iter().map(|p| (p.name.clone(), p.port));
                (ports.collect(), addresses(slice))
            })
            .collect();
        let port = |name: &str, number| (name.to_owned(), number);
        let ips = |ips: &[&str]| ips.iter().map(|ip| (*ip).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            found,
            [
                (
                    vec![port("http", 8080), port("metrics", 9090)],
                    ips(&["10.0.0.1", "10.0.0.3"])
                ),
                (
                    vec![port("http", 8081), port("metrics", 9090)],
                    ips(&["10.0.0.2"])
                ),
                // No container port named `web`: no endpoint for `http`, still one for
                // `metrics`.
                (vec![port("metrics", 9090)], ips(&["10.0.0.4"])),
            ]
        );
        let names: Vec<&str> = slices.iter().map(|slice| slice.name.as_str()).collect();
        assert_eq!(names, ["web-ipv4-1", "web-ipv4-2", "web-ipv4-3"]);
    }

    #[test]
    fn a_named_port_must_match_the_protocol_too() {
        let mut udp = port("dns", 53, TargetPort::Named("dns".to_owned()));
        udp.protocol = Protocol::Udp;
        let state = state(
            vec![service(&["10.96.0.10"], vec![udp])],
            vec![with_port(pod("a", "web", &["10.0.0.1"]), "dns", 5353)],
        );
        assert_eq!(derive(&state)[0].ports, []);
    }

    #[test]
    fn readiness_follows_the_pod_condition_and_finished_pods_are_left_out() {
        let condition = |name: &str, condition| Pod {
            condition,
            ..pod(name, "web", &["10.0.0.1"])
        };
        let state = state(
            vec![service(
                &["10.96.0.10"],
                vec![port("", 80, TargetPort::Number(80))],
            )],
            vec![
                condition("ready", PodCondition::Ready),
                condition("starting", PodCondition::NotReady),
                condition("draining", PodCondition::Terminating { serving: true }),
                condition("done", PodCondition::Finished),
            ],
        );
        let found: Vec<(bool, bool, bool)> = derive(&state)[0]
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            found,
            [
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
    }

    #[test]
    fn services_with_slices_or_without_selector_get_nothing() {
        let mut manual = service(&["10.96.0.11"], vec![port("", 80, TargetPort::Number(80))]);
        manual.name = "manual".to_owned();
        manual.selector = None;
        let mut state = state(
            vec![
                service(&["10.96.0.10"], vec![port("", 80, TargetPort::Number(80))]),
                manual,
            ],
            vec![pod("a", "web", &["10.0.0.1"])],
        );
        assert_eq!(derive(&state).len(), 1);
        state.endpoint_slices.push(Arc::new(EndpointSlice {
            namespace: "shop".to_owned(),
            name: "web".to_owned(),
            service: "web".to_owned(),
            legacy: true,
            ..EndpointSlice::default()
        }));
        assert_eq!(derive(&state), []);
    }

    #[test]
    fn large_groups_are_cut_into_slices_of_at_most_a_hundred() {
        let pods = (0..250u16)
            .map(|i| {
                let [high, low] = i.to_be_bytes();
                pod(&format!("p{i}"), "web", &[&format!("10.0.{high}.{low}")])
            })
            .collect();
        let state = state(
            vec![service(
                &["10.96.0.10"],
                vec![port("", 80, TargetPort::Number(80))],
            )],
            pods,
        );
        let sizes: Vec<usize> = derive(&state).iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
