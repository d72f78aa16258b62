//! Reading manifests: YAML files → validated [`crate::model::DesiredState`].
