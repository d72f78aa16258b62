//! The loader's part for the kinds Services need: Services, `EndpointSlices`, legacy
//! `Endpoints` and Nodes. Conversion is in [`super::service`]; this files each object in the
//! state once, as the other kinds are.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::convert::UnknownFields;
use super::path::FieldPath;
use super::service::{self, Conversion};
use super::{Ignored, Kind, Loader, ManifestError, Object};
use crate::model::{EndpointSlice, Origin, Protocol, Service};

/// The cluster IPs and node ports of the Services loaded so far, with the Service that has
/// each.
#[derive(Debug, Default)]
pub(super) struct Allocations {
    cluster_ips: BTreeMap<IpAddr, Owner>,
    node_ports: BTreeMap<(u16, Protocol), Owner>,
}

/// The Service an address or port is allocated to.
#[derive(Clone, Debug)]
struct Owner {
    /// `namespace/name`.
    service: String,
    origin: Origin,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {} ({})", self.service, self.origin)
    }
}

/// Cluster IPs and node ports that Services of different files share: each file was checked
/// on its own when it was read, so only pairs across files remain. An error points at the
/// later Service (its file and line) and names the field.
pub(super) fn across_files(services: &[Arc<Service>]) -> Vec<ManifestError> {
    let mut cluster_ips: BTreeMap<IpAddr, &Service> = BTreeMap::new();
    let mut node_ports: BTreeMap<(u16, Protocol), &Service> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut clash = |later: &Service, first: &Service, field: String, what: String| {
        if later.origin.file != first.origin.file {
            let owner = Owner {
                service: format!("{}/{}", first.namespace, first.name),
                origin: first.origin.clone(),
            };
            errors.push(ManifestError {
                file: later.origin.file.clone(),
                line: later.origin.line,
                // The Service's first line: the model keeps no position per field.
                column: 1,
                field,
                message: format!("{what} is already allocated to {owner}"),
            });
        }
    };
    for service in services {
        for (i, ip) in service.cluster_ips.iter().enumerate() {
            if let Some(first) = cluster_ips.get(ip) {
                clash(
                    service,
                    first,
                    format!("spec.clusterIPs[{i}]"),
                    format!("cluster IP {ip}"),
                );
            } else {
                cluster_ips.insert(*ip, service);
            }
        }
        for (i, port) in service.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let key = (node_port, port.protocol);
            if let Some(first) = node_ports.get(&key) {
                let what = format!("node port {node_port}/{}", port.protocol);
                clash(service, first, format!("spec.ports[{i}].nodePort"), what);
            } else {
                node_ports.insert(key, service);
            }
        }
        if let Some(port) = service.health_check_node_port {
            let key = (port, Protocol::Tcp);
            if let Some(first) = node_ports.get(&key) {
                let what = format!("health check node port {port}/TCP");
                clash(service, first, "spec.healthCheckNodePort".to_owned(), what);
            } else {
                node_ports.insert(key, service);
            }
        }
    }
    errors
}

impl Loader {
    pub(super) fn add_service(&mut self, object: &Object<'_>) {
        // Unknown fields are refused as in a policy: `targetport` would silently be `port`.
        let convert = service::service;
        let Some(converted) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        let keep = |loader: &mut Self, service| {
            let service = Service {
                origin: object.origin(),
                ..service
            };
            loader.allocate(object, &service);
            loader.state.services.push(Arc::new(service));
        };
        self.add_conversion(object, Kind::Service, converted, service_identity, keep);
    }

    /// Records the cluster IPs and node ports of `service`, or an error for each that another
    /// Service of the directory has: in a cluster, the API server's allocators keep them
    /// apart; here nothing else would, and two Services on one address and port would each
    /// get half of the connections.
    fn allocate(&mut self, object: &Object<'_>, service: &Service) {
        let owner = Owner {
            service: format!("{}/{}", service.namespace, service.name),
            origin: service.origin.clone(),
        };
        let spec = FieldPath::root().key("spec");
        let listed = object
            .node
            .get("spec")
            .and_then(|spec| spec.get("clusterIPs"));
        for (i, ip) in service.cluster_ips.iter().enumerate() {
            let path = match listed {
                Some(_) => spec.key("clusterIPs").index(i),
                None => spec.key("clusterIP"),
            };
            if let Some(first) = self.allocations.cluster_ips.get(ip) {
                let message = format!("cluster IP {ip} is already allocated to {first}");
                self.reject(object, path, message);
            } else {
                self.allocations.cluster_ips.insert(*ip, owner.clone());
            }
        }
        for (i, port) in service.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let key = (node_port, port.protocol);
            if let Some(first) = self.allocations.node_ports.get(&key) {
                let path = spec.key("ports").index(i).key("nodePort");
                let message = format!(
                    "node port {node_port}/{} is already allocated to {first}",
                    port.protocol
                );
                self.reject(object, path, message);
            } else {
                self.allocations.node_ports.insert(key, owner.clone());
            }
        }
        // The health check port is a TCP port of the same node port space: a Service's node
        // port there would answer the load balancer's checks instead.
        if let Some(port) = service.health_check_node_port {
            let key = (port, Protocol::Tcp);
            if let Some(first) = self.allocations.node_ports.get(&key) {
                let path = spec.key("healthCheckNodePort");
                let message =
                    format!("health check node port {port}/TCP is already allocated to {first}");
                self.reject(object, path, message);
            } else {
                self.allocations.node_ports.insert(key, owner);
            }
        }
    }

    pub(super) fn add_endpoint_slice(&mut self, object: &Object<'_>) {
        let convert = service::endpoint_slice;
        let Some(converted) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        let keep = |loader: &mut Self, slice| {
            let origin = object.origin();
            let slice = EndpointSlice { origin, ..slice };
            loader.state.endpoint_slices.push(Arc::new(slice));
        };
        self.add_conversion(object, Kind::EndpointSlice, converted, slice_identity, keep);
    }

    pub(super) fn add_endpoints(&mut self, object: &Object<'_>) {
        let convert = service::endpoints;
        let Some(endpoints) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        let (namespace, name) = (&endpoints.namespace, &endpoints.name);
        if self.first_definition(object, Kind::Endpoints, namespace, name) {
            let slices = endpoints.slices.into_iter();
            let origin = object.origin();
            let slices = slices.map(|slice| {
                Arc::new(EndpointSlice {
                    origin: origin.clone(),
                    ..slice
                })
            });
            self.state.endpoint_slices.extend(slices);
        }
    }

    pub(super) fn add_node(&mut self, object: &Object<'_>) {
        // A node's spec and status have many fields Weir does not read.
        let Some(mut node) = self.convert(object, UnknownFields::Ignore, service::node) else {
            return;
        };
        if self.first_definition(object, Kind::Node, "", &node.name) {
            node.origin = object.origin();
            self.state.nodes.push(node);
        }
    }

    /// Keeps a converted object with `keep`, or lists it as ignored; either way once per
    /// namespace and name.
    fn add_conversion<T>(
        &mut self,
        object: &Object<'_>,
        kind: Kind,
        converted: Conversion<T>,
        identity: fn(&T) -> (&str, &str),
        keep: impl FnOnce(&mut Self, T),
    ) {
        let (namespace, name) = match &converted {
            Conversion::Model(model) => identity(model),
            Conversion::Ignored {
                namespace, name, ..
            } => (namespace.as_str(), name.as_str()),
        };
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        if !self.first_definition(object, kind, &namespace, &name) {
            return;
        }
        match converted {
            Conversion::Model(model) => keep(self, model),
            Conversion::Ignored { why, .. } => self.ignored.push(Ignored {
                kind: kind.name().to_owned(),
                namespace: Some(namespace),
                name,
                origin: object.origin(),
                note: Some(why),
            }),
        }
    }
}

fn service_identity(service: &Service) -> (&str, &str) {
    (&service.namespace, &service.name)
}

fn slice_identity(slice: &EndpointSlice) -> (&str, &str) {
    (&slice.namespace, &slice.name)
}
