//! Reading manifests: YAML files → validated [`crate::model::DesiredState`].
//!
//! [`convert`] turns k8s-openapi objects into the model, with Kubernetes' defaults and
//! validation; its errors are named by [`path::FieldPath`].

pub mod convert;
mod names;
pub mod path;
