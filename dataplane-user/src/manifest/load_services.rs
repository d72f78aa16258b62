//! The loader's part for the kinds Services need: Services, `EndpointSlices`, legacy
//! `Endpoints` and Nodes. Conversion is in [`super::service`]; this files each object in the
//! state once, as the other kinds are.

use super::convert::UnknownFields;
use super::service::{self, Conversion};
use super::{Ignored, Kind, Loader, Object};
use crate::model::{DesiredState, EndpointSlice, Origin, Service};

impl Loader {
    pub(super) fn add_service(&mut self, object: &Object<'_>) {
        // Unknown fields are refused as in a policy: `targetport` would silently be `port`.
        let convert = service::service;
        let Some(converted) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        let keep = |state: &mut DesiredState, service, origin| {
            state.services.push(Service { origin, ..service });
        };
        self.add_conversion(object, Kind::Service, converted, service_identity, keep);
    }

    pub(super) fn add_endpoint_slice(&mut self, object: &Object<'_>) {
        let convert = service::endpoint_slice;
        let Some(converted) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        let keep = |state: &mut DesiredState, slice, origin| {
            state
                .endpoint_slices
                .push(EndpointSlice { origin, ..slice });
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
            let slices = slices.map(|slice| EndpointSlice {
                origin: origin.clone(),
                ..slice
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
        keep: impl FnOnce(&mut DesiredState, T, Origin),
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
            Conversion::Model(model) => keep(&mut self.state, model, object.origin()),
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
