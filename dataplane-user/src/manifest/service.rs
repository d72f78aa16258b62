//! Services, `EndpointSlices`, legacy `Endpoints` and Nodes (k8s-openapi objects) → model, with
//! Kubernetes' defaults (`pkg/apis/core/v1/defaults.go`) and the parts of its validation
//! (`pkg/apis/core/validation`, `pkg/apis/discovery/validation`) that matter to a dataplane.
//!
//! As in [`super::convert`], nothing here knows about files: errors name a [`FieldPath`], every
//! part of an object is checked before giving up, and an object converts only when nothing at
//! all was wrong with it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::convert::{
    Checked, Errors, FieldError, check_all, check_labels, last_key, object_labels, object_name,
    object_namespace, parse_cidr, port_number, protocol,
};
use super::names;
use super::path::FieldPath;
use crate::model::{
    Endpoint, EndpointPort, EndpointSlice, Labels, Node, Origin, Protocol, Service, ServiceKind,
    ServicePort, TargetPort,
};

/// The API server's default `--service-node-port-range`: where a manifest's `nodePort` must
/// fall, as nothing else allocates node ports for a manifests directory.
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// Every port number: the node port range for objects from an API server, which has already
/// checked them against its own `--service-node-port-range` (perhaps not the default).
pub const ANY_NODE_PORT: RangeInclusive<u16> = 1..=65535;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when `sessionAffinity` is `ClientIP` and
/// no timeout is given: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// The longest `ClientIP` affinity Kubernetes accepts: one day.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// The label that ties an `EndpointSlice` to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The most endpoints an `EndpointSlice` may hold (`maxEndpoints` in Kubernetes).
const MAX_SLICE_ENDPOINTS: usize = 1000;
/// The most addresses one endpoint may have (`maxAddresses`).
const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// The most ports an `EndpointSlice` may list (`maxPorts`).
const MAX_SLICE_PORTS: usize = 20_000;

/// Why an `ExternalName` Service is left out.
pub const EXTERNAL_NAME_NOTE: &str =
    "an ExternalName Service is a DNS alias (a CNAME); there is nothing to load-balance";

/// Why an `FQDN` `EndpointSlice` is left out.
pub const FQDN_NOTE: &str =
    "an FQDN EndpointSlice lists host names, not addresses; there is nothing to load-balance";

/// A valid object, and whether the dataplane has a use for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conversion<T> {
    /// The object in the model.
    Model(T),
    /// A valid object that plays no part in load balancing, and why.
    Ignored {
        /// `metadata.namespace` (defaulted).
        namespace: String,
        /// `metadata.name`.
        name: String,
        /// Why it plays no part, for the user.
        why: &'static str,
    },
}

/// A legacy `v1` `Endpoints` object: one [`EndpointSlice`] per subset, each named after the
/// object (which is what the user can look up), with [`EndpointSlice::legacy`] set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyEndpoints {
    /// `metadata.namespace` (defaulted).
    pub namespace: String,
    /// `metadata.name`: also the name of the Service they belong to.
    pub name: String,
    /// One per `subsets` entry.
    pub slices: Vec<EndpointSlice>,
}

/// Converts a `v1` Service whose node ports must fall within [`DEFAULT_NODE_PORTS`].
///
/// # Errors
///
/// Anything the Kubernetes API server would reject, reported per field.
pub fn service(service: &core::Service) -> Result<Conversion<Service>, Vec<FieldError>> {
    service_in(service, &DEFAULT_NODE_PORTS)
}

/// Converts a `v1` Service whose node ports must fall within `node_ports`.
///
/// # Errors
///
/// Anything the Kubernetes API server would reject, reported per field.
pub fn service_in(
    service: &core::Service,
    node_ports: &RangeInclusive<u16>,
) -> Result<Conversion<Service>, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_service(service, node_ports, &mut errors);
    errors.finish(converted)
}

/// `spec.type`, `ExternalName` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceType {
    Balanced(ServiceKind),
    ExternalName,
}

const LOAD_BALANCER: ServiceType = ServiceType::Balanced(ServiceKind::LoadBalancer);

impl ServiceType {
    /// Node ports exist for this type.
    fn has_node_ports(self) -> bool {
        matches!(
            self,
            Self::Balanced(ServiceKind::NodePort | ServiceKind::LoadBalancer)
        )
    }
}

fn check_service(
    service: &core::Service,
    node_ports: &RangeInclusive<u16>,
    errors: &mut Errors,
) -> Checked<Conversion<Service>> {
    let meta = &service.metadata;
    let namespace = object_namespace(meta, errors);
    // Service names become DNS labels and environment variable names: DNS-1035.
    let name = object_name(meta, names::dns1035_label, errors);
    let labels = object_labels(meta, errors);
    let empty = core::ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&empty);
    let path = FieldPath::root().key("spec");
    // A bad type leaves the rules that depend on it unchecked (`None`), rather than checked
    // against a guess.
    let service_type = service_type(spec, &path, errors);
    let kind = service_type.ok();
    let cluster_ips = cluster_ips(spec, kind, &path, errors);
    let headless = cluster_ips.as_ref().is_ok_and(|ips| ips.headless);
    let ports = service_ports(spec, kind, headless, node_ports, &path, errors);
    let selector = selector(spec.selector.as_ref(), &path.key("selector"), errors);
    let external_ips = external_ips(spec, &path, errors);
    // The status of a Service that is no longer a LoadBalancer may lag behind its spec: its
    // addresses are checked, and kept only for a LoadBalancer.
    let ingress_ips = load_balancer_ips(service.status.as_ref(), errors).map(|ips| {
        if kind == Some(LOAD_BALANCER) {
            ips
        } else {
            Vec::new()
        }
    });
    let source_ranges = source_ranges(spec, kind, &path, errors);
    let affinity = affinity_timeout(spec, &path, errors);
    let external_local = external_traffic_local(spec, kind, &path, errors);
    let internal_local = traffic_policy(
        spec.internal_traffic_policy.as_deref(),
        &path.key("internalTrafficPolicy"),
        errors,
    );
    let external_name = external_name(spec, kind, &path, errors);
    let health_check = health_check_node_port(spec, kind, ports.as_ref().ok(), node_ports, errors);
    labels?;
    let kind = match service_type? {
        ServiceType::Balanced(kind) => kind,
        ServiceType::ExternalName => {
            external_name?;
            return Ok(Conversion::Ignored {
                namespace: namespace?,
                name: name?,
                why: EXTERNAL_NAME_NOTE,
            });
        }
    };
    Ok(Conversion::Model(Service {
        namespace: namespace?,
        name: name?,
        kind,
        cluster_ips: cluster_ips?.ips,
        ports: ports?,
        selector: selector?,
        external_ips: external_ips?,
        load_balancer_ips: ingress_ips?,
        load_balancer_source_ranges: source_ranges?,
        affinity_timeout_s: affinity?,
        external_traffic_local: external_local?,
        internal_traffic_local: internal_local?,
        health_check_node_port: health_check?,
        origin: Origin::default(),
    }))
}

fn service_type(
    spec: &core::ServiceSpec,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<ServiceType> {
    match spec.type_.as_deref() {
        None | Some("" | "ClusterIP") => Ok(ServiceType::Balanced(ServiceKind::ClusterIp)),
        Some("NodePort") => Ok(ServiceType::Balanced(ServiceKind::NodePort)),
        Some("LoadBalancer") => Ok(ServiceType::Balanced(ServiceKind::LoadBalancer)),
        Some("ExternalName") => Ok(ServiceType::ExternalName),
        Some(other) => {
            let message = format!(
                "unknown type \"{other}\": must be ClusterIP, NodePort, LoadBalancer or \
                 ExternalName"
            );
            Err(errors.reject(path.key("type"), message))
        }
    }
}

/// The Service's virtual IPs.
struct ClusterIps {
    /// Empty when headless or not allocated (a manifest may leave `clusterIP` out).
    ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    headless: bool,
}

/// `clusterIP` and `clusterIPs` (the first is the second's first entry, kept for old
/// clients), checked against each other, `ipFamilies` and the type.
fn cluster_ips(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<ClusterIps> {
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let listed = spec.cluster_ips.as_deref().unwrap_or_default();
    let families = ip_families(spec, path, errors);
    if kind == Some(ServiceType::ExternalName) {
        families?;
        return match (single, listed.is_empty()) {
            (None, true) => Ok(ClusterIps {
                ips: Vec::new(),
                headless: false,
            }),
            (Some(_), _) => Err(errors.reject(
                path.key("clusterIP"),
                "may not be set for ExternalName services",
            )),
            (None, false) => Err(errors.reject(
                path.key("clusterIPs"),
                "may not be set for ExternalName services",
            )),
        };
    }
    let single_path = path.key("clusterIP");
    let listed_path = path.key("clusterIPs");
    // The i-th cluster IP must be of the i-th listed family.
    let of_family = |ip: IpAddr, i: usize, path: &FieldPath, errors: &mut Errors| match families
        .as_ref()
        .ok()
        .and_then(|families| families.get(i))
    {
        Some(family) if *family != family_of(ip) => {
            let message = format!("{ip} is not an {family} address, as ipFamilies[{i}] says");
            Err(errors.reject(path.clone(), message))
        }
        _ => Ok(Some(ip)),
    };
    let single_checked = single.map(|text| {
        if text == "None" {
            return Ok(None);
        }
        let ip = parse_ip(text, &single_path, errors)?;
        // When both are given, `clusterIPs[0]` is checked instead.
        if listed.is_empty() {
            of_family(ip, 0, &single_path, errors)
        } else {
            Ok(Some(ip))
        }
    });
    let listed_checked = check_all(listed, |i, text| {
        let item_path = listed_path.index(i);
        if text == "None" {
            if i == 0 && listed.len() == 1 {
                return Ok(None);
            }
            return Err(errors.reject(item_path, "None must be the first and only value"));
        }
        let ip = parse_ip(text, &item_path, errors)?;
        of_family(ip, i, &item_path, errors)
    });
    if let (Some(single), Some(first)) = (single, listed.first())
        && single != first
    {
        let message = format!("must equal clusterIP ({single}), got {first}");
        return Err(errors.reject(listed_path.index(0), message));
    }
    let single = single_checked.transpose()?;
    let listed = listed_checked?;
    let headless = single == Some(None) || listed.first() == Some(&None);
    let ips: Vec<IpAddr> = if listed.is_empty() {
        single.flatten().into_iter().collect()
    } else {
        listed.into_iter().flatten().collect()
    };
    if ips.len() > 2 {
        let message = format!("may hold at most two addresses, got {}", ips.len());
        return Err(errors.reject(listed_path, message));
    }
    if let [first, second] = ips[..]
        && family_of(first) == family_of(second)
    {
        let message = "may hold at most one address of each IP family";
        return Err(errors.reject(listed_path.index(1), message));
    }
    if headless && kind.is_some_and(ServiceType::has_node_ports) {
        let field = if spec.cluster_ips.as_deref().unwrap_or_default().is_empty() {
            single_path
        } else {
            listed_path.index(0)
        };
        let message = "may not be None for a NodePort or LoadBalancer Service";
        return Err(errors.reject(field, message));
    }
    families?;
    Ok(ClusterIps { ips, headless })
}

/// `IPv4` or `IPv6`, as `ipFamilies` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// `ipFamilies` and `ipFamilyPolicy`: only what `clusterIPs` is checked against.
fn ip_families(
    spec: &core::ServiceSpec,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Vec<Family>> {
    let families_path = path.key("ipFamilies");
    let listed = spec.ip_families.as_deref().unwrap_or_default();
    let mut seen = Vec::new();
    let families = check_all(listed, |i, family| {
        let family = match family.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => {
                let message = format!("unknown IP family \"{other}\": must be IPv4 or IPv6");
                return Err(errors.reject(families_path.index(i), message));
            }
        };
        if seen.contains(&family) {
            let message = format!("{family} is listed twice");
            return Err(errors.reject(families_path.index(i), message));
        }
        seen.push(family);
        Ok(family)
    });
    let policy_path = path.key("ipFamilyPolicy");
    let policy = match spec.ip_family_policy.as_deref() {
        Some("SingleStack") if listed.len() > 1 => {
            let message = "a SingleStack Service may list one IP family only";
            Err(errors.reject(families_path.clone(), message))
        }
        None | Some("" | "SingleStack" | "PreferDualStack" | "RequireDualStack") => Ok(()),
        Some(other) => {
            let message = format!(
                "unknown IP family policy \"{other}\": must be SingleStack, PreferDualStack or \
                 RequireDualStack"
            );
            Err(errors.reject(policy_path, message))
        }
    };
    policy?;
    families
}

/// `spec.ports`, each with Kubernetes' defaults, unique by name, by number and protocol, and
/// by node port and protocol.
fn service_ports(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    headless: bool,
    node_ports: &RangeInclusive<u16>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Vec<ServicePort>> {
    let ports_path = path.key("ports");
    let listed = spec.ports.as_deref().unwrap_or_default();
    // A headless Service may exist for DNS alone; an ExternalName one is a DNS alias.
    let may_be_portless = headless || kind == Some(ServiceType::ExternalName);
    if listed.is_empty() && !may_be_portless {
        let message = "a Service needs at least one port (unless it is headless or ExternalName)";
        return Err(errors.reject(ports_path, message));
    }
    let name_required = listed.len() > 1;
    let mut names = BTreeMap::<&str, usize>::new();
    let mut numbers = BTreeMap::<(u16, Protocol), usize>::new();
    let mut node_numbers = BTreeMap::<(u16, Protocol), usize>::new();
    check_all(listed, |i, port| {
        let port_path = ports_path.index(i);
        let converted = service_port(port, kind, name_required, node_ports, &port_path, errors)?;
        if !converted.name.is_empty()
            && let Some(first) = first_use(&mut names, port.name.as_deref().unwrap_or_default(), i)
        {
            let message = format!(
                "duplicate port name \"{}\", also used by ports[{first}]",
                converted.name
            );
            return Err(errors.reject(port_path.key("name"), message));
        }
        let number = (converted.port, converted.protocol);
        if let Some(first) = first_use(&mut numbers, number, i) {
            let message = format!(
                "duplicate port {}/{}, also used by ports[{first}]",
                converted.port, converted.protocol
            );
            return Err(errors.reject(port_path.key("port"), message));
        }
        if let Some(node_port) = converted.node_port
            && let Some(first) = first_use(&mut node_numbers, (node_port, converted.protocol), i)
        {
            let message = format!(
                "duplicate node port {node_port}/{}, also used by ports[{first}]",
                converted.protocol
            );
            return Err(errors.reject(port_path.key("nodePort"), message));
        }
        Ok(converted)
    })
}

fn service_port(
    port: &core::ServicePort,
    kind: Option<ServiceType>,
    name_required: bool,
    node_ports: &RangeInclusive<u16>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<ServicePort> {
    let name = port_name(
        port.name.as_deref(),
        name_required,
        &path.key("name"),
        errors,
    );
    let protocol = protocol(port.protocol.as_deref(), &path.key("protocol"), errors);
    let number = port_number(port.port, &path.key("port"), errors);
    let target = target_port(port.target_port.as_ref(), &path.key("targetPort"), errors);
    let node_port = node_port(
        port.node_port,
        kind,
        node_ports,
        &path.key("nodePort"),
        errors,
    );
    let number = number?;
    Ok(ServicePort {
        name: name?,
        protocol: protocol?,
        port: number,
        // defaults.go: an absent, 0 or "" targetPort is the port itself.
        target_port: target?.unwrap_or(TargetPort::Number(number)),
        node_port: node_port?,
    })
}

/// A port's `name`: a DNS label, required when there are several ports (each `EndpointSlice`
/// port is matched to the Service's by it).
fn port_name(
    name: Option<&str>,
    required: bool,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<String> {
    match name.unwrap_or_default() {
        "" if required => Err(errors.reject(
            path.clone(),
            "name is required when there is more than one port",
        )),
        "" => Ok(String::new()),
        name => errors
            .check(path, names::dns_label(name))
            .map(|()| name.to_owned()),
    }
}

/// `targetPort`, `None` when it is to default to the port.
fn target_port(
    target: Option<&IntOrString>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<TargetPort>> {
    match target {
        None | Some(IntOrString::Int(0)) => Ok(None),
        Some(IntOrString::String(name)) if name.is_empty() => Ok(None),
        Some(IntOrString::Int(number)) => {
            port_number(*number, path, errors).map(|port| Some(TargetPort::Number(port)))
        }
        Some(IntOrString::String(name)) => errors
            .check(path, names::port_name(name))
            .map(|()| Some(TargetPort::Named(name.clone()))),
    }
}

/// `nodePort`: 0 or absent is "not allocated"; otherwise only for types that have node ports,
/// and within `range`.
fn node_port(
    node_port: Option<i32>,
    kind: Option<ServiceType>,
    range: &RangeInclusive<u16>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<u16>> {
    let Some(number) = node_port.filter(|number| *number != 0) else {
        return Ok(None);
    };
    if kind.is_some_and(|kind| !kind.has_node_ports()) {
        let message = "nodePort may only be set when type is NodePort or LoadBalancer";
        return Err(errors.reject(path.clone(), message));
    }
    let port = port_number(number, path, errors)?;
    if !range.contains(&port) {
        let message = format!(
            "node port {port} is outside the node port range {}-{}",
            range.start(),
            range.end()
        );
        return Err(errors.reject(path.clone(), message));
    }
    Ok(Some(port))
}

/// `spec.selector`: absent or empty means the Service has none (its endpoints are managed by
/// hand), not that it selects every pod.
fn selector(
    selector: Option<&BTreeMap<String, String>>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<Labels>> {
    let labels = check_labels(selector, path, errors)?;
    Ok((!labels.is_empty()).then_some(labels))
}

fn external_ips(
    spec: &core::ServiceSpec,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Vec<IpAddr>> {
    let listed = spec.external_ips.iter().flatten();
    check_all(listed, |i, text| {
        let path = path.key("externalIPs").index(i);
        let ip = parse_ip(text, &path, errors)?;
        errors.check(&path, non_special(ip)).map(|()| ip)
    })
}

/// `status.loadBalancer.ingress[].ip`; entries with only a `hostname` have no address to
/// answer on.
fn load_balancer_ips(
    status: Option<&core::ServiceStatus>,
    errors: &mut Errors,
) -> Checked<Vec<IpAddr>> {
    let path = FieldPath::root()
        .key("status")
        .key("loadBalancer")
        .key("ingress");
    let ingress = status
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|balancer| balancer.ingress.as_deref())
        .unwrap_or_default();
    let ips = check_all(ingress, |i, ingress| {
        let text = ingress.ip.as_deref().unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        parse_ip(text, &path.index(i).key("ip"), errors).map(Some)
    })?;
    Ok(ips.into_iter().flatten().collect())
}

/// `loadBalancerSourceRanges`: only for a `LoadBalancer` Service; surrounding spaces are
/// allowed, as Kubernetes trims them.
fn source_ranges(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Vec<IpNetwork>> {
    let path = path.key("loadBalancerSourceRanges");
    let listed = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    let ranges = check_all(listed, |i, text| {
        parse_cidr(text.trim(), &path.index(i), errors)
    });
    if !listed.is_empty() && kind.is_some_and(|kind| kind != LOAD_BALANCER) {
        let message = "loadBalancerSourceRanges may only be set when type is LoadBalancer";
        return Err(errors.reject(path, message));
    }
    ranges
}

/// `sessionAffinity` and `sessionAffinityConfig`: the `ClientIP` timeout, or `None`.
fn affinity_timeout(
    spec: &core::ServiceSpec,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<u32>> {
    let config_path = path.key("sessionAffinityConfig");
    match spec.session_affinity.as_deref() {
        None | Some("" | "None") => {
            if spec.session_affinity_config.is_some() {
                let message = "sessionAffinityConfig may only be set when sessionAffinity is \
                               ClientIP";
                return Err(errors.reject(config_path, message));
            }
            Ok(None)
        }
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            let Some(timeout) = timeout else {
                return Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S));
            };
            match u32::try_from(timeout) {
                Ok(seconds) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&seconds) => Ok(Some(seconds)),
                _ => {
                    let path = config_path.key("clientIP").key("timeoutSeconds");
                    let message = format!(
                        "timeoutSeconds must be between 1 and {MAX_AFFINITY_TIMEOUT_S}, got \
                         {timeout}"
                    );
                    Err(errors.reject(path, message))
                }
            }
        }
        Some(other) => {
            let message = format!("unknown session affinity \"{other}\": must be None or ClientIP");
            Err(errors.reject(path.key("sessionAffinity"), message))
        }
    }
}

/// `externalTrafficPolicy`: as Kubernetes, refused on a Service that has no external address
/// (a `ClusterIP` Service without `externalIPs`), where it would mean nothing.
fn external_traffic_local(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<bool> {
    let path = path.key("externalTrafficPolicy");
    let policy = spec.external_traffic_policy.as_deref();
    let local = traffic_policy(policy, &path, errors)?;
    let has_external_ips = spec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty());
    let external = match kind {
        None => return Ok(local),
        Some(ServiceType::Balanced(ServiceKind::ClusterIp)) => has_external_ips,
        Some(ServiceType::ExternalName) => false,
        Some(ServiceType::Balanced(_)) => true,
    };
    if !external && policy.is_some_and(|policy| !policy.is_empty()) {
        let message = "externalTrafficPolicy may only be set on a Service reachable from \
                       outside (NodePort, LoadBalancer, or with externalIPs)";
        return Err(errors.reject(path, message));
    }
    Ok(local)
}

/// `healthCheckNodePort`: 0 or absent is "not allocated"; otherwise, as the API server
/// checks, only for a `LoadBalancer` Service with `externalTrafficPolicy: Local` (the only
/// kind load balancers must steer to nodes with endpoints), within `range`, and not one of the
/// Service's own TCP node ports (node ports and health check ports share one allocator).
fn health_check_node_port(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    ports: Option<&Vec<ServicePort>>,
    range: &RangeInclusive<u16>,
    errors: &mut Errors,
) -> Checked<Option<u16>> {
    let Some(number) = spec.health_check_node_port.filter(|number| *number != 0) else {
        return Ok(None);
    };
    let path = FieldPath::root().key("spec").key("healthCheckNodePort");
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    if kind.is_some_and(|kind| kind != LOAD_BALANCER) || !local {
        let message = "healthCheckNodePort may only be set when type is LoadBalancer and \
                       externalTrafficPolicy is Local";
        return Err(errors.reject(path, message));
    }
    let port = port_number(number, &path, errors)?;
    if !range.contains(&port) {
        let message = format!(
            "health check node port {port} is outside the node port range {}-{}",
            range.start(),
            range.end()
        );
        return Err(errors.reject(path, message));
    }
    let own = ports
        .into_iter()
        .flatten()
        .position(|p| p.node_port == Some(port) && p.protocol == Protocol::Tcp);
    if let Some(i) = own {
        let message = format!("health check node port {port} is also the nodePort of ports[{i}]");
        return Err(errors.reject(path, message));
    }
    Ok(Some(port))
}

/// `Cluster` (the default) or `Local`: whether the policy is `Local`.
fn traffic_policy(policy: Option<&str>, path: &FieldPath, errors: &mut Errors) -> Checked<bool> {
    match policy {
        None | Some("" | "Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => {
            let field = last_key(path);
            let message = format!("unknown {field} \"{other}\": must be Cluster or Local");
            Err(errors.reject(path.clone(), message))
        }
    }
}

/// `externalName` of an `ExternalName` Service: a DNS name (a trailing dot marks it fully
/// qualified).
fn external_name(
    spec: &core::ServiceSpec,
    kind: Option<ServiceType>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<()> {
    if kind != Some(ServiceType::ExternalName) {
        return Ok(());
    }
    let path = path.key("externalName");
    let name = spec.external_name.as_deref().unwrap_or_default();
    match name.strip_suffix('.').unwrap_or(name) {
        "" => Err(errors.reject(path, "an ExternalName Service needs an externalName")),
        name => errors.check(&path, names::dns_subdomain(name)),
    }
}

/// Converts a `discovery.k8s.io/v1` `EndpointSlice`, applying the conditions' defaults.
///
/// # Errors
///
/// Anything the Kubernetes API server would reject, and a slice that names no Service.
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<Conversion<EndpointSlice>, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_slice(slice, &mut errors);
    errors.finish(converted)
}

fn check_slice(
    slice: &discovery::EndpointSlice,
    errors: &mut Errors,
) -> Checked<Conversion<EndpointSlice>> {
    let meta = &slice.metadata;
    let namespace = object_namespace(meta, errors);
    let name = object_name(meta, names::dns_subdomain, errors);
    let labels = object_labels(meta, errors);
    let service = slice_service(meta.labels.as_ref(), errors);
    let family = address_type(&slice.address_type, errors);
    let ports = slice_ports(slice.ports.as_deref().unwrap_or_default(), errors);
    let endpoints_path = FieldPath::root().key("endpoints");
    let listed = slice.endpoints.as_deref().unwrap_or_default();
    let endpoints = if listed.len() > MAX_SLICE_ENDPOINTS {
        let message = format!(
            "may list at most {MAX_SLICE_ENDPOINTS} endpoints, got {}",
            listed.len()
        );
        Err(errors.reject(endpoints_path, message))
    } else if let Ok(Some(family)) = family {
        check_all(listed, |i, endpoint| {
            let path = endpoints_path.index(i);
            slice_endpoint(endpoint, family, &path, errors)
        })
    } else {
        // An FQDN slice is ignored whole, and its addresses are names: nothing to check. With
        // an unknown address type, what the addresses should be is not known.
        Ok(Vec::new())
    };
    labels?;
    let Some(_) = family? else {
        return Ok(Conversion::Ignored {
            namespace: namespace?,
            name: name?,
            why: FQDN_NOTE,
        });
    };
    Ok(Conversion::Model(EndpointSlice {
        namespace: namespace?,
        name: name?,
        service: service?,
        ports: ports?,
        endpoints: endpoints?,
        legacy: false,
        origin: Origin::default(),
    }))
}

/// The label `kubernetes.io/service-name`, which must name a Service.
fn slice_service(
    labels: Option<&BTreeMap<String, String>>,
    errors: &mut Errors,
) -> Checked<String> {
    let path = FieldPath::root().key("metadata").key("labels");
    match labels.and_then(|labels| labels.get(SERVICE_NAME_LABEL)) {
        None => {
            let message = format!(
                "label {SERVICE_NAME_LABEL} is required: it names the Service of these endpoints"
            );
            Err(errors.reject(path, message))
        }
        Some(service) => {
            let path = path.key(SERVICE_NAME_LABEL);
            let named =
                names::dns1035_label(service).map_err(|why| format!("must name a Service: {why}"));
            errors.check(&path, named).map(|()| service.clone())
        }
    }
}

/// `addressType`: the family every address must be of, or `None` for `FQDN`.
fn address_type(address_type: &str, errors: &mut Errors) -> Checked<Option<Family>> {
    match address_type {
        "IPv4" => Ok(Some(Family::V4)),
        "IPv6" => Ok(Some(Family::V6)),
        "FQDN" => Ok(None),
        other => {
            let message = format!("unknown addressType \"{other}\": must be IPv4, IPv6 or FQDN");
            Err(errors.reject(FieldPath::root().key("addressType"), message))
        }
    }
}

fn slice_ports(
    ports: &[discovery::EndpointPort],
    errors: &mut Errors,
) -> Checked<Vec<EndpointPort>> {
    let path = FieldPath::root().key("ports");
    if ports.len() > MAX_SLICE_PORTS {
        let message = format!(
            "may list at most {MAX_SLICE_PORTS} ports, got {}",
            ports.len()
        );
        return Err(errors.reject(path, message));
    }
    let mut names = BTreeMap::<&str, usize>::new();
    check_all(ports, |i, port| {
        let path = path.index(i);
        let name = port_name(port.name.as_deref(), false, &path.key("name"), errors);
        let protocol = protocol(port.protocol.as_deref(), &path.key("protocol"), errors);
        // Kubernetes allows no number ("every port"), which kube-proxy skips; a dataplane
        // cannot forward to it either.
        let number = match port.port {
            Some(number) => port_number(number, &path.key("port"), errors),
            None => Err(errors.reject(path.key("port"), "port is required")),
        };
        let name = name?;
        if let Some(first) = first_use(&mut names, port.name.as_deref().unwrap_or_default(), i) {
            let message = format!("duplicate port name \"{name}\", also used by ports[{first}]");
            return Err(errors.reject(path.key("name"), message));
        }
        Ok(EndpointPort {
            name,
            protocol: protocol?,
            port: number?,
        })
    })
}

fn slice_endpoint(
    endpoint: &discovery::Endpoint,
    family: Family,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Endpoint> {
    let addresses_path = path.key("addresses");
    let addresses = match endpoint.addresses.len() {
        0 => Err(errors.reject(addresses_path, "an endpoint needs at least one address")),
        n if n > MAX_ENDPOINT_ADDRESSES => {
            let message = format!("may list at most {MAX_ENDPOINT_ADDRESSES} addresses, got {n}");
            Err(errors.reject(addresses_path, message))
        }
        _ => check_all(&endpoint.addresses, |i, text| {
            let path = addresses_path.index(i);
            let ip = parse_ip(text, &path, errors)?;
            if family_of(ip) == family {
                Ok(ip)
            } else {
                let message = format!("{ip} is not an {family} address, as addressType says");
                Err(errors.reject(path, message))
            }
        }),
    };
    let node_name = node_name(endpoint.node_name.as_deref(), &path.key("nodeName"), errors);
    // The defaults of `EndpointConditions`: ready unless said otherwise, serving as ready,
    // terminating only when said.
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    Ok(Endpoint {
        addresses: addresses?,
        ready,
        serving,
        terminating,
        node_name: node_name?,
        zone: endpoint.zone.clone().filter(|zone| !zone.is_empty()),
    })
}

fn node_name(name: Option<&str>, path: &FieldPath, errors: &mut Errors) -> Checked<Option<String>> {
    match name {
        None | Some("") => Ok(None),
        Some(name) => errors
            .check(path, names::dns_subdomain(name))
            .map(|()| Some(name.to_owned())),
    }
}

/// Converts a legacy `v1` `Endpoints` object.
///
/// # Errors
///
/// Anything the Kubernetes API server would reject.
pub fn endpoints(endpoints: &core::Endpoints) -> Result<LegacyEndpoints, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_endpoints(endpoints, &mut errors);
    errors.finish(converted)
}

fn check_endpoints(endpoints: &core::Endpoints, errors: &mut Errors) -> Checked<LegacyEndpoints> {
    let meta = &endpoints.metadata;
    let namespace = object_namespace(meta, errors);
    let name = object_name(meta, names::dns_subdomain, errors);
    let labels = object_labels(meta, errors);
    let subsets = check_all(endpoints.subsets.iter().flatten(), |i, subset| {
        let path = FieldPath::root().key("subsets").index(i);
        check_subset(subset, &path, errors)
    });
    labels?;
    let (namespace, name) = (namespace?, name?);
    let slices = subsets?
        .into_iter()
        .map(|(ports, endpoints)| EndpointSlice {
            namespace: namespace.clone(),
            name: name.clone(),
            service: name.clone(),
            ports,
            endpoints,
            legacy: true,
            origin: Origin::default(),
        })
        .collect();
    Ok(LegacyEndpoints {
        namespace,
        name,
        slices,
    })
}

fn check_subset(
    subset: &core::EndpointSubset,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let ready = subset.addresses.as_deref().unwrap_or_default();
    let not_ready = subset.not_ready_addresses.as_deref().unwrap_or_default();
    if ready.is_empty() && not_ready.is_empty() {
        let message = "a subset needs addresses or notReadyAddresses";
        return Err(errors.reject(path.clone(), message));
    }
    let ready = check_all(ready, |i, address| {
        legacy_address(address, true, &path.key("addresses").index(i), errors)
    });
    let not_ready = check_all(not_ready, |i, address| {
        legacy_address(
            address,
            false,
            &path.key("notReadyAddresses").index(i),
            errors,
        )
    });
    let ports = legacy_ports(subset.ports.as_deref().unwrap_or_default(), path, errors);
    let mut endpoints = ready?;
    endpoints.extend(not_ready?);
    Ok((ports?, endpoints))
}

fn legacy_address(
    address: &core::EndpointAddress,
    ready: bool,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Endpoint> {
    let ip_path = path.key("ip");
    let ip = parse_ip(&address.ip, &ip_path, errors)
        .and_then(|ip| errors.check(&ip_path, non_special(ip)).map(|()| ip));
    let node_name = node_name(address.node_name.as_deref(), &path.key("nodeName"), errors);
    Ok(Endpoint {
        addresses: vec![ip?],
        ready,
        serving: ready,
        terminating: false,
        node_name: node_name?,
        zone: None,
    })
}

fn legacy_ports(
    ports: &[core::EndpointPort],
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Vec<EndpointPort>> {
    let name_required = ports.len() > 1;
    let mut names = BTreeMap::<&str, usize>::new();
    check_all(ports, |i, port| {
        let path = path.key("ports").index(i);
        let name = port_name(
            port.name.as_deref(),
            name_required,
            &path.key("name"),
            errors,
        );
        let protocol = protocol(port.protocol.as_deref(), &path.key("protocol"), errors);
        let number = port_number(port.port, &path.key("port"), errors);
        let name = name?;
        if !name.is_empty()
            && let Some(first) = first_use(&mut names, port.name.as_deref().unwrap_or_default(), i)
        {
            let message = format!("duplicate port name \"{name}\", also used by ports[{first}]");
            return Err(errors.reject(path.key("name"), message));
        }
        Ok(EndpointPort {
            name,
            protocol: protocol?,
            port: number?,
        })
    })
}

/// Converts a `v1` Node: its name, the addresses node ports answer on, its pod CIDRs.
///
/// # Errors
///
/// An invalid name, label, address or CIDR.
pub fn node(node: &core::Node) -> Result<Node, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_node(node, &mut errors);
    errors.finish(converted)
}

fn check_node(node: &core::Node, errors: &mut Errors) -> Checked<Node> {
    let name = object_name(&node.metadata, names::dns_subdomain, errors);
    let labels = object_labels(&node.metadata, errors);
    let addresses = node_addresses(node.status.as_ref(), errors);
    let pod_cidrs = pod_cidrs(node.spec.as_ref(), errors);
    labels?;
    Ok(Node {
        name: name?,
        addresses: addresses?,
        pod_cidrs: pod_cidrs?,
        origin: Origin::default(),
    })
}

/// `status.addresses` of type `InternalIP` and `ExternalIP`, without repeats; host names are
/// not addresses.
fn node_addresses(status: Option<&core::NodeStatus>, errors: &mut Errors) -> Checked<Vec<IpAddr>> {
    let path = FieldPath::root().key("status").key("addresses");
    let listed = status
        .and_then(|status| status.addresses.as_deref())
        .unwrap_or_default();
    let parsed = check_all(listed, |i, address| match address.type_.as_str() {
        "InternalIP" | "ExternalIP" => {
            parse_ip(&address.address, &path.index(i).key("address"), errors).map(Some)
        }
        _ => Ok(None),
    })?;
    let mut addresses = Vec::new();
    for ip in parsed.into_iter().flatten() {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    Ok(addresses)
}

/// `spec.podCIDRs`, or `spec.podCIDR` (its first entry, kept for old clients): at most one per
/// family.
fn pod_cidrs(spec: Option<&core::NodeSpec>, errors: &mut Errors) -> Checked<Vec<IpNetwork>> {
    let path = FieldPath::root().key("spec");
    let single = spec
        .and_then(|spec| spec.pod_cidr.as_deref())
        .filter(|cidr| !cidr.is_empty());
    let listed = spec
        .and_then(|spec| spec.pod_cidrs.as_deref())
        .unwrap_or_default();
    let single_checked = single.map(|text| parse_cidr(text, &path.key("podCIDR"), errors));
    let listed_path = path.key("podCIDRs");
    let listed_checked = check_all(listed, |i, text| {
        parse_cidr(text, &listed_path.index(i), errors)
    });
    if let (Some(single), Some(first)) = (single, listed.first())
        && single != first
    {
        let message = format!("must equal podCIDR ({single}), got {first}");
        return Err(errors.reject(listed_path.index(0), message));
    }
    let single = single_checked.transpose()?;
    let listed = listed_checked?;
    let cidrs: Vec<IpNetwork> = if listed.is_empty() {
        single.into_iter().collect()
    } else {
        listed
    };
    if cidrs.len() > 2 {
        let message = format!("may hold at most two CIDRs, got {}", cidrs.len());
        return Err(errors.reject(listed_path, message));
    }
    if let [first, second] = cidrs[..]
        && first.is_ipv4() == second.is_ipv4()
    {
        let message = "may hold at most one CIDR of each IP family";
        return Err(errors.reject(listed_path.index(1), message));
    }
    Ok(cidrs)
}

/// The index `key` was first seen at, or `None` (and `index` recorded) if this is the first.
fn first_use<K: Ord>(seen: &mut BTreeMap<K, usize>, key: K, index: usize) -> Option<usize> {
    match seen.entry(key) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(entry) => {
            entry.insert(index);
            None
        }
    }
}

fn parse_ip(text: &str, path: &FieldPath, errors: &mut Errors) -> Checked<IpAddr> {
    text.parse::<IpAddr>().map_err(|_| {
        let message = if text.is_empty() {
            "an IP address is required".to_owned()
        } else {
            format!("\"{text}\" is not an IP address")
        };
        errors.reject(path.clone(), message)
    })
}

/// Kubernetes' `ValidateNonSpecialIP`: addresses no client could mean as a Service's or an
/// endpoint's (they would capture the node's own loopback or link-local traffic).
fn non_special(ip: IpAddr) -> Result<(), String> {
    let why = match ip {
        _ if ip.is_unspecified() => "may not be unspecified (0.0.0.0 or ::)",
        _ if ip.is_loopback() => "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        IpAddr::V4(v4) if v4.is_link_local() => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        }
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)"
        }
        IpAddr::V6(v6) if v6.segments()[0] == 0xff02 => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)"
        }
        _ => return Ok(()),
    };
    Err(format!("{ip} {why}"))
}
