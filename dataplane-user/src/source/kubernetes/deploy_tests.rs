//! `deploy/` agrees with this source: the `ClusterRole` grants exactly what the watchers
//! read, the objects carry no misspelt field, and the names that tie them together match.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;

use super::Kind;
use crate::manifest::convert::{self, UnknownFields};

const RBAC: &str = include_str!("../../../../deploy/rbac.yaml");
const DAEMONSET: &str = include_str!("../../../../deploy/daemonset.yaml");

/// The object of `kind` in the YAML documents of `text`, refusing unknown fields.
fn object<K: DeserializeOwned + serde::Serialize>(text: &str, kind: &str) -> K {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
    let json = documents
        .into_iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    convert::decode(&json, UnknownFields::Reject).unwrap_or_else(|e| panic!("{kind}: {e:?}"))
}

#[test]
fn the_cluster_role_grants_get_list_watch_on_every_watched_kind_and_nothing_else() {
    let role: ClusterRole = object(RBAC, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut needed = BTreeSet::new();
    for kind in Kind::ALL {
        let resource = kind.api_resource();
        assert_eq!(resource.plural, kind.resource());
        for verb in ["get", "list", "watch"] {
            needed.insert((
                resource.group.clone(),
                resource.plural.clone(),
                verb.to_owned(),
            ));
        }
    }
    assert_eq!(granted, needed);
}

#[test]
fn the_daemon_set_runs_in_cluster_as_the_bound_service_account() {
    let binding: ClusterRoleBinding = object(RBAC, "ClusterRoleBinding");
    let subject = &binding.subjects.as_deref().unwrap()[0];
    let daemon_set: DaemonSet = object(DAEMONSET, "DaemonSet");
    let pod = daemon_set.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_ref(), Some(&subject.name));
    assert_eq!(daemon_set.metadata.namespace, subject.namespace);
    assert_eq!(binding.role_ref.name, "weir");
    assert_eq!(pod.host_network, Some(true));
    let container = &pod.containers[0];
    let args = container.args.as_deref().unwrap();
    assert!(args.iter().any(|arg| arg == "--in-cluster"), "{args:?}");
    // The probes reach the agent where `--health-addr` makes it listen.
    assert!(
        args.iter().any(|arg| arg == "--health-addr=127.0.0.1:9876"),
        "{args:?}"
    );
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(get.port, convert_port(9876));
    }
}

fn convert_port(port: i32) -> k8s_openapi::apimachinery::pkg::util::intstr::IntOrString {
    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)
}
