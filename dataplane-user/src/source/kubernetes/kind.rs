//! The kinds Weir watches, and what it keeps of each object: the model, converted when the
//! object arrives.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::{ApiResource, DynamicObject};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manifest::ManifestError;
use crate::manifest::convert::{self, FieldError, UnknownFields};
use crate::manifest::service::{self, Conversion};
use crate::model::{EndpointSlice, Namespace, Node, Origin, Pod, PodCondition, Policy, Service};

/// A kind of Kubernetes object that Weir watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` `Namespace`: its labels select policy peers.
    Namespace,
    /// `v1` `Pod`.
    Pod,
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
    /// `v1` `Service`.
    Service,
    /// `discovery.k8s.io/v1` `EndpointSlice`: the endpoints the cluster's controllers keep
    /// (legacy `Endpoints` are not watched: every supported Kubernetes mirrors them into
    /// slices).
    EndpointSlice,
    /// `v1` `Node`.
    Node,
}

impl Kind {
    /// Every watched kind, in the order objects are assembled and reported.
    pub const ALL: [Self; 6] = [
        Self::Namespace,
        Self::Pod,
        Self::NetworkPolicy,
        Self::Service,
        Self::EndpointSlice,
        Self::Node,
    ];

    /// The `kind` field's spelling (`NetworkPolicy`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    /// The resource name (`networkpolicies`), as RBAC rules and URLs spell it.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::Pod => "pods",
            Self::NetworkPolicy => "networkpolicies",
            Self::Service => "services",
            Self::EndpointSlice => "endpointslices",
            Self::Node => "nodes",
        }
    }

    /// Group, version and resource, for a watcher of untyped objects.
    pub(super) fn api_resource(self) -> ApiResource {
        match self {
            Self::Namespace => ApiResource::erase::<core::Namespace>(&()),
            Self::Pod => ApiResource::erase::<core::Pod>(&()),
            Self::NetworkPolicy => ApiResource::erase::<networking::NetworkPolicy>(&()),
            Self::Service => ApiResource::erase::<core::Service>(&()),
            Self::EndpointSlice => ApiResource::erase::<discovery::EndpointSlice>(&()),
            Self::Node => ApiResource::erase::<core::Node>(&()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Namespace (empty for cluster-scoped kinds) and name: an object's identity within its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of(object: &DynamicObject) -> Self {
        Self {
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// `kubernetes:NetworkPolicy/shop/deny`: what errors and origins name the object by, in
    /// place of a file.
    pub fn label(&self, kind: Kind) -> PathBuf {
        let mut label = format!("kubernetes:{kind}/");
        if !self.namespace.is_empty() {
            label.push_str(&self.namespace);
            label.push('/');
        }
        label.push_str(&self.name);
        PathBuf::from(label)
    }
}

/// What the store keeps of one object.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Entry {
    Namespace(Namespace),
    Pod(Arc<Pod>),
    Policy(Arc<Policy>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Node),
    /// A valid object that plays no part in the desired state: an `ExternalName` Service, an
    /// `FQDN` `EndpointSlice`.
    Ignored,
    /// An object Weir refuses: while it is there, no change set is applied.
    Invalid(Vec<ManifestError>),
}

/// Converts an object as it arrives, so that `load` only assembles, and so that an update
/// that changes nothing Weir enforces (most pod status updates) compares equal to the entry
/// it replaces and does not make the agent recompile.
pub(super) fn convert(kind: Kind, key: &ObjectKey, mut object: DynamicObject) -> Entry {
    // Server-side apply bookkeeping: often the largest part of an object, never read here.
    object.metadata.managed_fields = None;
    let label = key.label(kind);
    let json = match serde_json::to_value(&object) {
        Ok(json) => json,
        Err(error) => return Entry::Invalid(vec![object_error(&label, "", error.to_string())]),
    };
    let origin = Origin {
        file: label.clone(),
        line: 0,
    };
    let converted = match kind {
        Kind::Namespace => {
            decode(&json, UnknownFields::Ignore, convert::namespace).map(Entry::Namespace)
        }
        // Readiness is left out: the cluster's `EndpointSlices` carry it, and a pod's
        // readiness changing (often) must not make every node's agent recompile.
        Kind::Pod => decode(&json, UnknownFields::Ignore, convert::pod).map(|pod| {
            let condition = PodCondition::Ready;
            Entry::Pod(Arc::new(Pod {
                condition,
                origin,
                ..pod
            }))
        }),
        // Unknown fields are refused as in a file: a field this version of Weir does not know
        // (one a newer API server added) could change what the policy selects or allows, or
        // where a Service sends its traffic.
        Kind::NetworkPolicy => decode(&json, UnknownFields::Reject, convert::network_policy)
            .map(|policy| Entry::Policy(Arc::new(Policy { origin, ..policy }))),
        Kind::Service => decode(&json, UnknownFields::Reject, api_service).map(|converted| {
            model(converted, |service| {
                Entry::Service(Arc::new(Service { origin, ..service }))
            })
        }),
        Kind::EndpointSlice => {
            decode(&json, UnknownFields::Reject, service::endpoint_slice).map(|converted| {
                model(converted, |slice| {
                    Entry::EndpointSlice(Arc::new(EndpointSlice { origin, ..slice }))
                })
            })
        }
        // A node's spec and status have many fields Weir does not read.
        Kind::Node => decode(&json, UnknownFields::Ignore, service::node)
            .map(|node| Entry::Node(Node { origin, ..node })),
    };
    converted.unwrap_or_else(|errors| {
        let errors = errors
            .into_iter()
            .map(|error| object_error(&label, &error.path.to_string(), error.message));
        Entry::Invalid(errors.collect())
    })
}

/// A Service from the API server, whose node ports it has checked against its own range.
fn api_service(
    service: &k8s_openapi::api::core::v1::Service,
) -> Result<Conversion<Service>, Vec<FieldError>> {
    service::service_in(service, &service::ANY_NODE_PORT)
}

/// The entry of a converted object, or [`Entry::Ignored`].
fn model<T>(converted: Conversion<T>, entry: impl FnOnce(T) -> Entry) -> Entry {
    match converted {
        Conversion::Model(model) => entry(model),
        Conversion::Ignored { .. } => Entry::Ignored,
    }
}

/// Decodes `json` into the k8s-openapi type `K`, then converts it to the model.
fn decode<K, M>(
    json: &serde_json::Value,
    unknown: UnknownFields,
    convert: fn(&K) -> Result<M, Vec<FieldError>>,
) -> Result<M, Vec<FieldError>>
where
    K: DeserializeOwned + Serialize,
{
    convert::decode::<K>(json, unknown).and_then(|typed| convert(&typed))
}

/// An error about an object from the API: no line or column, the field path as it is.
pub(super) fn object_error(label: &Path, field: &str, message: String) -> ManifestError {
    ManifestError {
        file: label.to_owned(),
        line: 0,
        column: 0,
        field: field.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_policy_converts_with_its_origin() {
        let policy = object(json!({
            "metadata": {"namespace": "shop", "name": "deny", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }));
        let key = ObjectKey::of(&policy);
        let Entry::Policy(converted) = convert(Kind::NetworkPolicy, &key, policy) else {
            panic!("not converted");
        };
        assert_eq!(
            converted.origin.to_string(),
            "kubernetes:NetworkPolicy/shop/deny"
        );
        assert_eq!(converted.ingress, Some(vec![]));
    }

    #[test]
    fn an_invalid_policy_names_the_object_and_field() {
        let policy = object(json!({
            "metadata": {"namespace": "shop", "name": "bad"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
        }));
        let key = ObjectKey::of(&policy);
        let Entry::Invalid(errors) = convert(Kind::NetworkPolicy, &key, policy) else {
            panic!("accepted");
        };
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(
            texts[0]
                .starts_with("kubernetes:NetworkPolicy/shop/bad: spec.ingress[0].ports[0].port: "),
            "{texts:?}"
        );
    }

    #[test]
    fn an_unknown_policy_field_is_refused_but_not_an_unknown_pod_field() {
        let policy = object(json!({
            "metadata": {"namespace": "shop", "name": "typo"},
            "spec": {"podSelecter": {}},
        }));
        let key = ObjectKey::of(&policy);
        let Entry::Invalid(errors) = convert(Kind::NetworkPolicy, &key, policy) else {
            panic!("accepted");
        };
        assert_eq!(errors[0].field, "spec.podSelecter");
        let pod = object(json!({
            "metadata": {"namespace": "shop", "name": "a"},
            "spec": {"containers": [], "futureField": true},
        }));
        let key = ObjectKey::of(&pod);
        assert!(matches!(convert(Kind::Pod, &key, pod), Entry::Pod(_)));
    }

    #[test]
    fn a_pod_status_change_that_policy_ignores_converts_to_an_equal_entry() {
        let pod = |phase: &str| {
            object(json!({
                "metadata": {"namespace": "shop", "name": "a", "labels": {"app": "web"}},
                "spec": {"containers": []},
                "status": {"phase": phase, "podIPs": [{"ip": "10.0.0.1"}]},
            }))
        };
        let key = ObjectKey::of(&pod("Pending"));
        assert_eq!(
            convert(Kind::Pod, &key, pod("Pending")),
            convert(Kind::Pod, &key, pod("Running"))
        );
    }

    #[test]
    fn a_health_check_node_port_from_the_api_is_kept_in_the_servers_range() {
        let service = object(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 9000,
                     "ports": [{"port": 80, "nodePort": 9001}]},
        }));
        let key = ObjectKey::of(&service);
        let Entry::Service(converted) = convert(Kind::Service, &key, service) else {
            panic!("not converted");
        };
        // Outside the default node port range: the API server allocated it from its own.
        assert_eq!(converted.health_check_node_port, Some(9000));
    }

    #[test]
    fn services_slices_and_nodes_convert_with_their_origin() {
        let service = object(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": "http", "nodePort": 8080}]},
        }));
        let key = ObjectKey::of(&service);
        let Entry::Service(converted) = convert(Kind::Service, &key, service) else {
            panic!("not converted");
        };
        assert_eq!(converted.origin.to_string(), "kubernetes:Service/shop/web");
        // Outside the default node port range: the API server checked its own.
        assert_eq!(converted.ports[0].node_port, Some(8080));

        let slice = object(json!({
            "metadata": {"namespace": "shop", "name": "web-abcde",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}],
            "ports": [{"port": 8080}],
        }));
        let key = ObjectKey::of(&slice);
        let Entry::EndpointSlice(converted) = convert(Kind::EndpointSlice, &key, slice) else {
            panic!("not converted");
        };
        assert_eq!(
            (converted.service.as_str(), converted.endpoints[0].ready),
            ("web", false)
        );

        let node = object(json!({
            "metadata": {"name": "n1"},
            "status": {"images": [{"names": ["app"]}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                     {"type": "Hostname", "address": "n1"}]},
        }));
        let key = ObjectKey::of(&node);
        let Entry::Node(converted) = convert(Kind::Node, &key, node) else {
            panic!("not converted");
        };
        assert_eq!(
            converted.addresses,
            ["192.168.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(converted.origin.to_string(), "kubernetes:Node/n1");
    }

    #[test]
    fn external_name_services_and_fqdn_slices_are_ignored_and_bad_services_refused() {
        let alias = object(json!({
            "metadata": {"namespace": "shop", "name": "db"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        }));
        let key = ObjectKey::of(&alias);
        assert_eq!(convert(Kind::Service, &key, alias), Entry::Ignored);

        let typo = object(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"ports": [{"port": 80, "targetport": 8080}]},
        }));
        let key = ObjectKey::of(&typo);
        let Entry::Invalid(errors) = convert(Kind::Service, &key, typo) else {
            panic!("accepted");
        };
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            ["kubernetes:Service/shop/web: spec.ports[0].targetport: unknown field \"targetport\""]
        );
    }

    #[test]
    fn cluster_scoped_labels_have_no_namespace() {
        let key = ObjectKey {
            namespace: String::new(),
            name: "shop".to_owned(),
        };
        assert_eq!(
            key.label(Kind::Namespace),
            PathBuf::from("kubernetes:Namespace/shop")
        );
    }
}
