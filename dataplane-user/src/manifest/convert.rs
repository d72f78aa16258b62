//! Kubernetes objects (k8s-openapi types) → [`crate::model`], with Kubernetes' defaulting and
//! validation (`pkg/apis/networking/v1/defaults.go`, `pkg/apis/networking/validation`).
//!
//! Nothing here knows about files: errors name a [`FieldPath`], which the manifest loader turns
//! into a line and column, and which a client of the Kubernetes API can print as it is.
//!
//! Every function checks all of its input before giving up, so that one run reports every
//! mistake. A part that fails returns `Invalid` after recording why in `Errors`; an object is
//! converted only when nothing was recorded, so no rule is ever dropped or widened silently.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::names;
use super::path::{FieldPath, Segment};
use crate::model::{
    LabelSelector, Labels, NamedPort, Namespace, NamespaceScope, Operator, Origin, Peer, Pod,
    PodCondition, Policy, PortMatch, PortSpec, Protocol, Requirement, Rule,
};

/// What is wrong with an object, and where in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault, from the object's root.
    pub path: FieldPath,
    /// What is wrong, in words.
    pub message: String,
    /// The fault is the key at `path` itself (an unknown field, a bad label key), not its value.
    pub on_key: bool,
}

/// Whether [`decode`] rejects fields the typed object does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownFields {
    /// For `NetworkPolicy` objects: a misspelt field (`podSelecter`) would otherwise be dropped and the
    /// policy would select something else than its author meant.
    Reject,
    /// For objects Weir only reads a few fields of (pods, namespaces).
    Ignore,
}

/// Deserializes `json` into a k8s-openapi object, reporting type errors with their path.
///
/// # Errors
///
/// A value of the wrong type, or (with [`UnknownFields::Reject`]) a field the type does not have.
pub fn decode<T>(json: &serde_json::Value, unknown: UnknownFields) -> Result<T, Vec<FieldError>>
where
    T: DeserializeOwned + Serialize,
{
    let typed: T = serde_path_to_error::deserialize(json).map_err(|error| {
        let path = FieldPath::from_serde(error.path());
        vec![FieldError::value(path, error.into_inner().to_string())]
    })?;
    if unknown == UnknownFields::Reject {
        let errors = unknown_fields(json, &typed);
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok(typed)
}

/// Keys of `json` that did not survive the round trip through the typed object.
fn unknown_fields(json: &serde_json::Value, typed: &impl Serialize) -> Vec<FieldError> {
    let known = match serde_json::to_value(typed) {
        Ok(known) => known,
        // Cannot happen with k8s-openapi types; if it did, not checking would fail open.
        Err(error) => {
            let message = format!("cannot check for unknown fields: {error}");
            return vec![FieldError::value(FieldPath::root(), message)];
        }
    };
    let mut errors = Vec::new();
    if let serde_json::Value::Object(fields) = json {
        // `status` is written by the cluster (`kubectl get -o yaml` keeps it), not by the author.
        for (key, value) in fields.iter().filter(|(key, _)| *key != "status") {
            compare(
                value,
                known.get(key),
                &FieldPath::root().key(key),
                &mut errors,
            );
        }
    }
    errors
}

fn compare(
    json: &serde_json::Value,
    known: Option<&serde_json::Value>,
    path: &FieldPath,
    errors: &mut Vec<FieldError>,
) {
    use serde_json::Value as Json;
    match (json, known) {
        // `field: null` (`creationTimestamp: null` in kubectl output) is the same as no field.
        (Json::Null, _) => {}
        (_, None) => {
            let Some(Segment::Key(key)) = path.segments().last() else {
                return;
            };
            let message = format!("unknown field \"{key}\"");
            errors.push(FieldError::key(path.clone(), message));
        }
        (Json::Object(fields), Some(Json::Object(known))) => {
            for (key, value) in fields {
                compare(value, known.get(key), &path.key(key), errors);
            }
        }
        (Json::Array(items), Some(Json::Array(known))) => {
            for (index, (item, known)) in items.iter().zip(known).enumerate() {
                compare(item, Some(known), &path.index(index), errors);
            }
        }
        _ => {}
    }
}

/// Converts a `v1` Namespace.
///
/// # Errors
///
/// An invalid name or label.
pub fn namespace(namespace: &core::Namespace) -> Result<Namespace, Vec<FieldError>> {
    let mut errors = Errors::default();
    let meta = &namespace.metadata;
    let name = object_name(meta, names::dns_label, &mut errors);
    let labels = object_labels(meta, &mut errors);
    let converted = match (name, labels) {
        (Ok(name), Ok(labels)) => Ok(Namespace { name, labels }),
        _ => Err(Invalid),
    };
    errors.finish(converted)
}

/// Converts a `v1` Pod: identity, labels, addresses and named container ports.
///
/// # Errors
///
/// An invalid name, label, address or container port.
pub fn pod(pod: &core::Pod) -> Result<Pod, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_pod(pod, &mut errors);
    errors.finish(converted)
}

fn check_pod(pod: &core::Pod, errors: &mut Errors) -> Checked<Pod> {
    // Every part is checked before the first `?`, so that all errors are reported.
    let namespace = object_namespace(&pod.metadata, errors);
    let name = object_name(&pod.metadata, names::dns_subdomain, errors);
    let labels = object_labels(&pod.metadata, errors);
    let ips = pod_ips(pod.status.as_ref(), errors);
    let ports = named_ports(pod.spec.as_ref(), errors);
    let condition = pod_condition(pod, errors);
    Ok(Pod {
        namespace: namespace?,
        name: name?,
        labels: labels?,
        ips: ips?,
        ports: ports?,
        condition: condition?,
        origin: Origin::default(),
    })
}

/// Readiness as the `EndpointSlice` controller sees it, except that a pod whose status has no
/// `Ready` condition is taken at its phase: a manifest written by hand rarely lists conditions,
/// and a pod written with its addresses is meant to be running.
fn pod_condition(pod: &core::Pod, errors: &mut Errors) -> Checked<PodCondition> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|status| status.phase.as_deref());
    let running = match phase {
        None | Some("Running") => true,
        Some("Pending" | "Unknown") => false,
        Some("Succeeded" | "Failed") => return Ok(PodCondition::Finished),
        Some(other) => {
            let message = format!(
                "unknown phase \"{other}\": must be Pending, Running, Succeeded, Failed or Unknown"
            );
            return Err(errors.reject(FieldPath::root().key("status").key("phase"), message));
        }
    };
    let ready_condition = status
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
    // As `podutil.IsPodReady`: only `True` is ready (`False` and `Unknown` are not).
    let ready = ready_condition.map_or(running, |condition| condition.status == "True");
    Ok(if pod.metadata.deletion_timestamp.is_some() {
        PodCondition::Terminating { serving: ready }
    } else if ready {
        PodCondition::Ready
    } else {
        PodCondition::NotReady
    })
}

/// `status.podIPs`, then `status.podIP` (normally the first of `podIPs`), without repeats.
fn pod_ips(status: Option<&core::PodStatus>, errors: &mut Errors) -> Checked<Vec<IpAddr>> {
    let Some(status) = status else {
        return Ok(Vec::new());
    };
    let path = FieldPath::root().key("status");
    let listed = status.pod_ips.iter().flatten().enumerate();
    let listed = listed.map(|(i, ip)| (ip.ip.as_str(), path.key("podIPs").index(i).key("ip")));
    // A pending pod may carry `podIP: ""`: no address yet.
    let single = status.pod_ip.iter().filter(|ip| !ip.is_empty());
    let single = single.map(|ip| (ip.as_str(), path.key("podIP")));
    let parsed = check_all(listed.chain(single), |_, (text, path)| {
        text.parse::<IpAddr>()
            .map_err(|_| errors.reject(path, format!("\"{text}\" is not an IP address")))
    })?;
    let mut ips = Vec::with_capacity(parsed.len());
    for ip in parsed {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The named ports of the pod's containers; unnamed ones are checked, then not needed.
fn named_ports(spec: Option<&core::PodSpec>, errors: &mut Errors) -> Checked<Vec<NamedPort>> {
    let containers = spec.map_or(&[][..], |spec| spec.containers.as_slice());
    let ports = containers.iter().enumerate().flat_map(|(c, container)| {
        let path = FieldPath::root()
            .key("spec")
            .key("containers")
            .index(c)
            .key("ports");
        let ports = container.ports.iter().flatten().enumerate();
        ports.map(move |(p, port)| (port, path.index(p)))
    });
    // A name must mean one port, or a rule naming it would be ambiguous.
    let mut first_use = BTreeMap::<String, FieldPath>::new();
    let ports = check_all(ports, |_, (port, path)| {
        let named = container_port(port, &path, errors)?;
        let Some(named) = named else {
            return Ok(None);
        };
        if let Some(first) = first_use.get(&named.name) {
            let message = format!(
                "duplicate port name \"{}\", also used at {first}",
                named.name
            );
            return Err(errors.reject(path.key("name"), message));
        }
        first_use.insert(named.name.clone(), path);
        Ok(Some(named))
    })?;
    Ok(ports.into_iter().flatten().collect())
}

fn container_port(
    port: &core::ContainerPort,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<NamedPort>> {
    let protocol = protocol(port.protocol.as_deref(), &path.key("protocol"), errors);
    let number = port_number(port.container_port, &path.key("containerPort"), errors);
    let name = port.name.as_deref().filter(|name| !name.is_empty());
    let name = name.map(|name| {
        errors
            .check(&path.key("name"), names::port_name(name))
            .map(|()| name)
    });
    let (protocol, port) = (protocol?, number?);
    let name = name.transpose()?;
    Ok(name.map(|name| NamedPort {
        name: name.to_owned(),
        protocol,
        port,
    }))
}

/// Converts a `networking.k8s.io/v1` `NetworkPolicy`, applying Kubernetes' defaults.
///
/// # Errors
///
/// Anything the Kubernetes API server would reject, reported per field.
pub fn network_policy(policy: &networking::NetworkPolicy) -> Result<Policy, Vec<FieldError>> {
    let mut errors = Errors::default();
    let converted = check_policy(policy, &mut errors);
    errors.finish(converted)
}

fn check_policy(policy: &networking::NetworkPolicy, errors: &mut Errors) -> Checked<Policy> {
    let namespace = object_namespace(&policy.metadata, errors);
    let name = object_name(&policy.metadata, names::dns_subdomain, errors);
    // A policy without `spec` is the zero spec: all pods of the namespace, no ingress allowed.
    let empty = networking::NetworkPolicySpec::default();
    let spec = policy.spec.as_ref().unwrap_or(&empty);
    let path = FieldPath::root().key("spec");
    let own = namespace.as_deref().unwrap_or_default();
    let pod_selector =
        optional_selector(spec.pod_selector.as_ref(), &path.key("podSelector"), errors);
    let types = policy_types(spec, &path, errors);
    // Like Kubernetes, check every rule, even those the policy types make it ignore.
    let ingress = check_all(spec.ingress.iter().flatten(), |i, rule| {
        let path = path.key("ingress").index(i);
        check_rule(
            rule.from.as_deref(),
            "from",
            rule.ports.as_deref(),
            &path,
            own,
            errors,
        )
    });
    let egress = check_all(spec.egress.iter().flatten(), |i, rule| {
        let path = path.key("egress").index(i);
        check_rule(
            rule.to.as_deref(),
            "to",
            rule.ports.as_deref(),
            &path,
            own,
            errors,
        )
    });
    let types = types?;
    Ok(Policy {
        namespace: namespace?,
        name: name?,
        pod_selector: pod_selector?,
        ingress: if types.ingress { Some(ingress?) } else { None },
        egress: if types.egress { Some(egress?) } else { None },
        origin: Origin::default(),
    })
}

/// Which directions a policy isolates.
struct PolicyTypes {
    ingress: bool,
    egress: bool,
}

fn policy_types(
    spec: &networking::NetworkPolicySpec,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<PolicyTypes> {
    let listed = spec.policy_types.as_deref().unwrap_or_default();
    if listed.is_empty() {
        // defaults.go: Ingress always, Egress when there is an egress rule. `egress: []` has none,
        // so it does not isolate egress (Kubernetes tests `len(Egress) != 0`, not presence).
        let egress = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
        return Ok(PolicyTypes {
            ingress: true,
            egress,
        });
    }
    let path = path.key("policyTypes");
    if listed.len() > 2 {
        let message = format!("may list at most two policy types, got {}", listed.len());
        return Err(errors.reject(path, message));
    }
    let types = check_all(listed, |i, listed| match listed.as_str() {
        "Ingress" | "Egress" => Ok(listed.as_str()),
        other => {
            let message = format!("unknown policy type \"{other}\": must be Ingress or Egress");
            Err(errors.reject(path.index(i), message))
        }
    })?;
    Ok(PolicyTypes {
        ingress: types.contains(&"Ingress"),
        egress: types.contains(&"Egress"),
    })
}

/// An ingress rule (`from`) or egress rule (`to`): the two differ only in the peers' key.
fn check_rule(
    peers: Option<&[networking::NetworkPolicyPeer]>,
    peers_key: &str,
    ports: Option<&[networking::NetworkPolicyPort]>,
    path: &FieldPath,
    own_namespace: &str,
    errors: &mut Errors,
) -> Checked<Rule> {
    let peers = check_all(peers.unwrap_or_default(), |i, peer| {
        check_peer(peer, &path.key(peers_key).index(i), own_namespace, errors)
    });
    let ports = check_all(ports.unwrap_or_default(), |i, port| {
        check_port(port, &path.key("ports").index(i), errors)
    });
    Ok(Rule {
        peers: peers?,
        ports: ports?,
    })
}

fn check_peer(
    peer: &networking::NetworkPolicyPeer,
    path: &FieldPath,
    own_namespace: &str,
    errors: &mut Errors,
) -> Checked<Peer> {
    let pods = peer.pod_selector.as_ref();
    let namespaces = peer.namespace_selector.as_ref();
    match (pods, namespaces, &peer.ip_block) {
        (None, None, None) => {
            let message = "a peer needs a podSelector, a namespaceSelector or an ipBlock";
            Err(errors.reject(path.clone(), message))
        }
        (None, None, Some(block)) => check_ip_block(block, &path.key("ipBlock"), errors),
        (_, _, Some(_)) => {
            let message = "ipBlock may not be combined with a podSelector or namespaceSelector";
            Err(errors.reject(path.key("ipBlock"), message))
        }
        (pods, namespaces, None) => {
            let pods = optional_selector(pods, &path.key("podSelector"), errors);
            let namespaces = match namespaces {
                None => Ok(NamespaceScope::Own(own_namespace.to_owned())),
                Some(selector) => check_selector(selector, &path.key("namespaceSelector"), errors)
                    .map(NamespaceScope::Selected),
            };
            Ok(Peer::Pods {
                namespaces: namespaces?,
                pods: pods?,
            })
        }
    }
}

fn check_ip_block(
    block: &networking::IPBlock,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Peer> {
    let cidr = parse_cidr(&block.cidr, &path.key("cidr"), errors);
    let except = check_all(block.except.iter().flatten(), |i, text| {
        let path = path.key("except").index(i);
        let except = parse_cidr(text, &path, errors)?;
        match cidr {
            Ok(cidr) if !is_strict_subnet(except, cidr) => {
                let message = format!("{except} must be a strict subnet of cidr {cidr}");
                Err(errors.reject(path, message))
            }
            _ => Ok(except),
        }
    });
    Ok(Peer::IpBlock {
        cidr: cidr?,
        except: except?,
    })
}

/// Parses `address/prefix`, IPv4 or IPv6. Host bits are cleared (`10.0.0.1/24` is
/// `10.0.0.0/24`), as Kubernetes, which accepts such values, matches against the network.
pub(super) fn parse_cidr(text: &str, path: &FieldPath, errors: &mut Errors) -> Checked<IpNetwork> {
    let parsed = text.split_once('/').and_then(|(address, prefix)| {
        let address = address.parse::<IpAddr>().ok()?;
        // `u8::from_str` would accept `+24`.
        let prefix = prefix
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| prefix.parse().ok())??;
        let network = IpNetwork::new(address, prefix).ok()?;
        IpNetwork::new(network.network(), prefix).ok()
    });
    parsed.ok_or_else(|| {
        let message = if text.is_empty() {
            "cidr is required".to_owned()
        } else {
            format!("\"{text}\" is not a CIDR such as 10.0.0.0/16 or fd00::/64")
        };
        errors.reject(path.clone(), message)
    })
}

/// Whether `inner` is inside `outer` and smaller (which also means: of the same family).
fn is_strict_subnet(inner: IpNetwork, outer: IpNetwork) -> bool {
    outer.contains(inner.network()) && inner.prefix() > outer.prefix()
}

fn check_port(
    port: &networking::NetworkPolicyPort,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<PortMatch> {
    let protocol = protocol(port.protocol.as_deref(), &path.key("protocol"), errors);
    let spec = port_spec(port, path, errors);
    Ok(PortMatch {
        protocol: protocol?,
        port: spec?,
    })
}

/// `port` (a number or a container port name) and `endPort` (only after a number).
fn port_spec(
    port: &networking::NetworkPolicyPort,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Option<PortSpec>> {
    let end_path = path.key("endPort");
    match (&port.port, port.end_port) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(errors.reject(end_path, "endPort requires a port")),
        (Some(IntOrString::String(name)), end) => {
            let named = errors.check(&path.key("port"), names::port_name(name));
            if end.is_some() {
                let message = "endPort may not be used with a named port";
                return Err(errors.reject(end_path, message));
            }
            named.map(|()| Some(PortSpec::Named(name.clone())))
        }
        (Some(IntOrString::Int(first)), end) => {
            let first = port_number(*first, &path.key("port"), errors);
            let last = end.map(|end| port_number(end, &end_path, errors));
            let first = first?;
            let last = last.transpose()?.unwrap_or(first);
            if last < first {
                let message = format!("endPort must be at least port ({first}), got {last}");
                return Err(errors.reject(end_path, message));
            }
            Ok(Some(PortSpec::Range { first, last }))
        }
    }
}

pub(super) fn port_number(number: i32, path: &FieldPath, errors: &mut Errors) -> Checked<u16> {
    match u16::try_from(number) {
        Ok(port) if port != 0 => Ok(port),
        _ => {
            let field = last_key(path);
            let message = format!("{field} must be between 1 and 65535, got {number}");
            Err(errors.reject(path.clone(), message))
        }
    }
}

/// `TCP` when absent, as Kubernetes defaults it.
pub(super) fn protocol(
    name: Option<&str>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Protocol> {
    let Some(name) = name else {
        return Ok(Protocol::Tcp);
    };
    Protocol::from_k8s(name).ok_or_else(|| {
        let message = format!("unknown protocol \"{name}\": must be TCP, UDP or SCTP");
        errors.reject(path.clone(), message)
    })
}

/// An absent selector selects everything, like an empty one.
fn optional_selector(
    selector: Option<&meta::LabelSelector>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<LabelSelector> {
    selector.map_or_else(
        || Ok(LabelSelector::everything()),
        |selector| check_selector(selector, path, errors),
    )
}

pub(super) fn check_selector(
    selector: &meta::LabelSelector,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<LabelSelector> {
    let labels = check_labels(
        selector.match_labels.as_ref(),
        &path.key("matchLabels"),
        errors,
    );
    let expressions = check_all(
        selector.match_expressions.iter().flatten(),
        |i, requirement| {
            let path = path.key("matchExpressions").index(i);
            check_requirement(requirement, &path, errors)
        },
    );
    Ok(LabelSelector {
        match_labels: labels?,
        match_expressions: expressions?,
    })
}

fn check_requirement(
    requirement: &meta::LabelSelectorRequirement,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Requirement> {
    let key = errors.check(&path.key("key"), names::label_key(&requirement.key));
    let values = requirement.values.as_deref().unwrap_or_default();
    let values_path = path.key("values");
    let checked_values = check_all(values, |i, value| {
        errors.check(&values_path.index(i), names::label_value(value))
    });
    let name = requirement.operator.as_str();
    let operator = match name {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        _ => {
            let message =
                format!("unknown operator \"{name}\": must be In, NotIn, Exists or DoesNotExist");
            return Err(errors.reject(path.key("operator"), message));
        }
    };
    let wants_values = matches!(operator, Operator::In | Operator::NotIn);
    if wants_values && values.is_empty() {
        return Err(errors.reject(
            values_path,
            format!("operator {name} needs at least one value"),
        ));
    }
    if !wants_values && !values.is_empty() {
        return Err(errors.reject(values_path, format!("operator {name} takes no values")));
    }
    key?;
    checked_values?;
    Ok(Requirement {
        key: requirement.key.clone(),
        operator,
        values: values.iter().cloned().collect(),
    })
}

/// `metadata.name`, which every object needs, checked with `syntax`.
pub(super) fn object_name(
    meta: &meta::ObjectMeta,
    syntax: fn(&str) -> Result<(), String>,
    errors: &mut Errors,
) -> Checked<String> {
    let path = FieldPath::root().key("metadata").key("name");
    match meta.name.as_deref() {
        None | Some("") => Err(errors.reject(path, "name is required")),
        Some(name) => errors.check(&path, syntax(name)).map(|()| name.to_owned()),
    }
}

/// `metadata.namespace`, `default` when absent as for `kubectl apply`.
pub(super) fn object_namespace(meta: &meta::ObjectMeta, errors: &mut Errors) -> Checked<String> {
    let path = FieldPath::root().key("metadata").key("namespace");
    match meta.namespace.as_deref() {
        None | Some("") => Ok("default".to_owned()),
        Some(name) => errors
            .check(&path, names::dns_label(name))
            .map(|()| name.to_owned()),
    }
}

pub(super) fn object_labels(meta: &meta::ObjectMeta, errors: &mut Errors) -> Checked<Labels> {
    let path = FieldPath::root().key("metadata").key("labels");
    check_labels(meta.labels.as_ref(), &path, errors)
}

/// Labels of an object or `matchLabels` of a selector: the same syntax.
pub(super) fn check_labels(
    labels: Option<&BTreeMap<String, String>>,
    path: &FieldPath,
    errors: &mut Errors,
) -> Checked<Labels> {
    let labels = labels.into_iter().flatten();
    let checked = check_all(labels, |_, (key, value)| {
        let path = path.key(key);
        let key_ok = names::label_key(key).map_err(|why| errors.reject_key(path.clone(), why));
        let value_ok = errors.check(&path, names::label_value(value));
        key_ok.and(value_ok).map(|()| (key.clone(), value.clone()))
    })?;
    Ok(checked.into_iter().collect())
}

pub(super) fn last_key(path: &FieldPath) -> &str {
    match path.segments().last() {
        Some(Segment::Key(key)) => key,
        _ => "value",
    }
}

/// Checks every item, so that every error is reported, then succeeds only if all did.
pub(super) fn check_all<I, T, U>(
    items: I,
    mut check: impl FnMut(usize, T) -> Checked<U>,
) -> Checked<Vec<U>>
where
    I: IntoIterator<Item = T>,
{
    let results: Vec<Checked<U>> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| check(i, item))
        .collect();
    results.into_iter().collect()
}

/// A part of an object was invalid; why is recorded in [`Errors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Invalid;

pub(super) type Checked<T> = Result<T, Invalid>;

/// The errors found in one object so far.
#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn reject(&mut self, path: FieldPath, message: impl Into<String>) -> Invalid {
        self.0.push(FieldError::value(path, message.into()));
        Invalid
    }

    pub(super) fn reject_key(&mut self, path: FieldPath, message: impl Into<String>) -> Invalid {
        self.0.push(FieldError::key(path, message.into()));
        Invalid
    }

    pub(super) fn check(&mut self, path: &FieldPath, result: Result<(), String>) -> Checked<()> {
        result.map_err(|message| self.reject(path.clone(), message))
    }

    /// The converted object, if nothing was wrong with it.
    pub(super) fn finish<T>(self, converted: Checked<T>) -> Result<T, Vec<FieldError>> {
        match (converted, self.0.is_empty()) {
            (Ok(converted), true) => Ok(converted),
            (Err(Invalid), true) => {
                // Every `Invalid` is made by `reject`; stay closed if that ever stops being true.
                let message = "invalid object (no detail recorded: this is a bug in Weir)";
                Err(vec![FieldError::value(
                    FieldPath::root(),
                    message.to_owned(),
                )])
            }
            (_, false) => Err(self.0),
        }
    }
}

impl FieldError {
    pub(super) fn value(path: FieldPath, message: String) -> Self {
        Self {
            path,
            message,
            on_key: false,
        }
    }

    pub(super) fn key(path: FieldPath, message: String) -> Self {
        Self {
            path,
            message,
            on_key: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;

    /// What a Kubernetes API client would hand over: a typed object, no YAML, no file.
    #[test]
    fn a_policy_from_the_api_converts_without_yaml() {
        let policy = networking::NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("deny".to_owned()),
                namespace: Some("shop".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(networking::NetworkPolicySpec {
                policy_types: Some(vec!["Egress".to_owned()]),
                ..networking::NetworkPolicySpec::default()
            }),
        };
        let converted = network_policy(&policy).unwrap();
        assert_eq!((converted.ingress, converted.egress), (None, Some(vec![])));
        assert_eq!(converted.pod_selector, LabelSelector::everything());
    }

    #[test]
    fn errors_name_their_field() {
        let policy = networking::NetworkPolicy {
            spec: Some(networking::NetworkPolicySpec {
                policy_types: Some(vec!["Sideways".to_owned()]),
                ..networking::NetworkPolicySpec::default()
            }),
            ..networking::NetworkPolicy::default()
        };
        let errors = network_policy(&policy).unwrap_err();
        let paths: Vec<String> = errors.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["metadata.name", "spec.policyTypes[0]"]);
    }

    #[test]
    fn decoding_reports_unknown_fields_at_their_key() {
        let json = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "web", "creationTimestamp": null},
            "spec": {"podSelecter": {}, "ingress": [{"form": []}]},
            "status": {},
        });
        let errors = decode::<networking::NetworkPolicy>(&json, UnknownFields::Reject).unwrap_err();
        let found: Vec<(String, bool)> = errors
            .iter()
            .map(|e| (e.path.to_string(), e.on_key))
            .collect();
        assert_eq!(
            found,
            [
                ("spec.ingress[0].form".to_owned(), true),
                ("spec.podSelecter".to_owned(), true)
            ]
        );
        assert!(decode::<networking::NetworkPolicy>(&json, UnknownFields::Ignore).is_ok());
    }

    #[test]
    fn decoding_reports_type_errors_with_their_path() {
        let json = json!({"metadata": {"labels": {"app": 7}}});
        let errors = decode::<core::Pod>(&json, UnknownFields::Ignore).unwrap_err();
        assert_eq!(errors[0].path.to_string(), "metadata.labels.app");
    }
}
