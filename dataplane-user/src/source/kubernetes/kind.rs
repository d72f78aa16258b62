//! The kinds Weir watches, and what it keeps of each object: the model for the kinds that
//! shape the desired state, converted when the object arrives; the object itself for the kinds
//! kept for the Services feature.

use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::{ApiResource, DynamicObject};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manifest::ManifestError;
use crate::manifest::convert::{self, FieldError, UnknownFields};
use crate::model::{Namespace, Origin, Pod, Policy};

/// A kind of Kubernetes object that Weir watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` `Namespace`: its labels select policy peers.
    Namespace,
    /// `v1` `Pod`.
    Pod,
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
    /// `v1` `Service`: watched, not yet part of the desired state.
    Service,
    /// `discovery.k8s.io/v1` `EndpointSlice`: watched, not yet part of the desired state.
    EndpointSlice,
    /// `v1` `Node`: watched, not yet part of the desired state.
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

    /// Whether objects of this kind are part of the desired state. The others are watched
    /// and kept so that the Services feature finds them listed (and `deploy/` RBAC is
    /// final), but their changes do not make the agent recompile.
    pub fn shapes_policy(self) -> bool {
        match self {
            Self::Namespace | Self::Pod | Self::NetworkPolicy => true,
            Self::Service | Self::EndpointSlice | Self::Node => false,
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
    Pod(Pod),
    Policy(Policy),
    /// An object of a kind that does not shape the desired state, as the API sent it.
    Kept(Box<DynamicObject>),
    /// An object Weir refuses: while it is there, no change set is applied.
    Invalid(Vec<ManifestError>),
}

/// Converts an object as it arrives, so that `load` only assembles, and so that an update
/// that changes nothing Weir enforces (most pod status updates) compares equal to the entry
/// it replaces and does not make the agent recompile.
pub(super) fn convert(kind: Kind, key: &ObjectKey, mut object: DynamicObject) -> Entry {
    // Server-side apply bookkeeping: often the largest part of an object, never read here.
    object.metadata.managed_fields = None;
    if !kind.shapes_policy() {
        return Entry::Kept(Box::new(slim(object)));
    }
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
        Kind::Pod => decode(&json, UnknownFields::Ignore, convert::pod)
            .map(|pod| Entry::Pod(Pod { origin, ..pod })),
        // Unknown fields are refused as in a file: a field this version of Weir does not know
        // (one a newer API server added) could change what the policy selects or allows.
        Kind::NetworkPolicy => decode(&json, UnknownFields::Reject, convert::network_policy)
            .map(|policy| Entry::Policy(Policy { origin, ..policy })),
        Kind::Service | Kind::EndpointSlice | Kind::Node => {
            return Entry::Kept(Box::new(slim(object)));
        }
    };
    converted.unwrap_or_else(|errors| {
        let errors = errors
            .into_iter()
            .map(|error| object_error(&label, &error.path.to_string(), error.message));
        Entry::Invalid(errors.collect())
    })
}

/// Drops the parts of a kept object that no feature reads and that make up most of its size,
/// since every node's agent keeps every Service, `EndpointSlice` and Node of the cluster.
fn slim(mut object: DynamicObject) -> DynamicObject {
    if let Some(annotations) = &mut object.metadata.annotations {
        // A copy of the whole object as last applied by `kubectl apply`.
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    // A Node's `status.images` lists every image on the node with its size: often tens of
    // kilobytes per node.
    if let Some(status) = object
        .data
        .get_mut("status")
        .and_then(|s| s.as_object_mut())
    {
        status.remove("images");
    }
    object
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
pub(super) fn object_error(label: &std::path::Path, field: &str, message: String) -> ManifestError {
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
    fn kept_objects_lose_what_no_feature_reads() {
        let node = object(json!({
            "metadata": {"name": "n1", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}", "zone": "a"}},
            "status": {"images": [{"names": ["app"]}], "addresses": [{"type": "InternalIP"}]},
        }));
        let key = ObjectKey::of(&node);
        let Entry::Kept(kept) = convert(Kind::Node, &key, node) else {
            panic!("not kept");
        };
        let annotations = kept.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["zone"]);
        assert_eq!(
            kept.data["status"],
            json!({"addresses": [{"type": "InternalIP"}]})
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
