//! Reading manifests: YAML files → validated [`crate::model::DesiredState`].
//!
//! Three layers, each ignorant of the one above:
//! - `yaml`: text → one tree per document, every node with its line and column;
//! - [`convert`]: k8s-openapi objects → model, with Kubernetes' defaults and validation, errors
//!   named by [`path::FieldPath`] (so that objects from the Kubernetes API can use it too);
//! - this module: walks files and documents, dispatches on `apiVersion`/`kind`, and turns each
//!   error's field path back into a line and column of the tree.
//!
//! Loading is all or nothing: every error of every file is collected, and if there is one, no
//! state is returned, so that a half-read directory is never applied.

pub mod convert;
mod load_services;
mod names;
pub mod path;
pub mod service;
mod yaml;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use self::convert::{FieldError, UnknownFields};
use self::path::FieldPath;
use self::yaml::Node;
use crate::model::{DesiredState, Namespace, Origin};

/// The result of a successful load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// Everything the manifests declare.
    pub state: DesiredState,
    /// Objects of kinds Weir does not enforce (Deployments, Ingresses, ...) and valid objects
    /// it has no use for (`ExternalName` Services), for the user to see.
    pub ignored: Vec<Ignored>,
    /// How many manifest files were read.
    pub files: usize,
    /// How many of `state.endpoint_slices` Weir made from the pods a Service selects (see
    /// [`crate::endpoints`]), for Services no manifest gives endpoints to.
    pub derived_slices: usize,
}

/// An object skipped because it plays no part in what Weir enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The object's `kind`.
    pub kind: String,
    /// `metadata.namespace` as written (not defaulted: the kind may be cluster-scoped).
    pub namespace: Option<String>,
    /// `metadata.name`, empty when absent.
    pub name: String,
    /// Where the object was read from.
    pub origin: Origin,
    /// Why, when the kind alone does not say (an `ExternalName` Service).
    pub note: Option<&'static str>,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ignored: {} ", self.kind)?;
        if let Some(namespace) = &self.namespace {
            write!(f, "{namespace}/")?;
        }
        write!(f, "{} ({})", self.name, self.origin)?;
        if let Some(note) = self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}

/// Why a load failed: every error found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(errors))]
pub struct LoadError {
    /// The mistakes, one per entry.
    pub errors: Vec<ManifestError>,
}

fn lines(errors: &[ManifestError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// One mistake in one manifest, displayed as
/// `policies/x.yaml:12:9: spec.ingress[0].ports[1].port: port must be between 1 and 65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole (it cannot be read).
    pub line: u64,
    /// 1-based; 0 when `line` is.
    pub column: u64,
    /// Path of the field at fault (`spec.ingress[0].ports[1].port`), empty for the whole document.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line != 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Loads every `*.yaml` and `*.yml` file under `dir`, recursively, in path order. Hidden files
/// and directories (editors' temporary files, the `..data` of a mounted `ConfigMap`) are skipped;
/// symbolic links are followed. `dir` may also be a single file.
///
/// # Errors
///
/// Every unreadable file, YAML syntax error and invalid object, all together.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let mut loader = Loader::default();
    let mut files = Vec::new();
    if dir.is_file() {
        files.push(dir.to_owned());
    } else {
        find_manifests(dir, &mut HashSet::new(), &mut files, &mut loader.errors);
    }
    files.sort();
    for file in &files {
        match fs::read_to_string(file) {
            Ok(text) => loader.add_file(file, &text),
            Err(error) => loader.errors.push(file_error(file, &error)),
        }
    }
    loader.finish()
}

/// Loads the text of one manifest file; `file` names it in errors and origins.
///
/// # Errors
///
/// Every YAML syntax error and invalid object, all together.
pub fn load_str(file: &Path, text: &str) -> Result<Loaded, LoadError> {
    let mut loader = Loader::default();
    loader.add_file(file, text);
    loader.finish()
}

/// Collects manifest files under `dir`. `visited` holds canonical directories already walked,
/// so that a symbolic link to a parent cannot loop.
fn find_manifests(
    dir: &Path,
    visited: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<ManifestError>,
) {
    match fs::canonicalize(dir) {
        Ok(canonical) => {
            if !visited.insert(canonical) {
                return;
            }
        }
        Err(error) => return errors.push(file_error(dir, &error)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => return errors.push(file_error(dir, &error)),
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => return errors.push(file_error(dir, &error)),
        };
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        // `fs::metadata` follows links: ConfigMap volumes are links to files.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => find_manifests(&path, visited, files, errors),
            Ok(meta) => {
                if meta.is_file() && is_manifest(&path) {
                    files.push(path);
                }
            }
            // A dangling link named like a manifest is worth a word; other names are not ours.
            Err(error) => {
                if is_manifest(&path) {
                    errors.push(file_error(&path, &error));
                }
            }
        }
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

fn file_error(file: &Path, error: &std::io::Error) -> ManifestError {
    ManifestError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: String::new(),
        message: error.to_string(),
    }
}

/// How an object is handled, by its `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    /// Legacy `v1` `Endpoints`.
    Endpoints,
    Node,
    /// `kubectl get -o yaml` output: objects under `items`.
    List,
    /// Anything else (Deployment, Ingress, ...): reported as [`Ignored`].
    Other,
}

/// The kinds Weir reads, with the only `apiVersion` it accepts for each.
const KINDS: [(&str, &str, Kind); 8] = [
    ("Namespace", "v1", Kind::Namespace),
    ("Pod", "v1", Kind::Pod),
    ("NetworkPolicy", "networking.k8s.io/v1", Kind::NetworkPolicy),
    ("Service", "v1", Kind::Service),
    ("EndpointSlice", "discovery.k8s.io/v1", Kind::EndpointSlice),
    ("Endpoints", "v1", Kind::Endpoints),
    ("Node", "v1", Kind::Node),
    ("List", "v1", Kind::List),
];

impl Kind {
    fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(.., kind)| *kind == self)
            .map_or("object", |(name, ..)| name)
    }
}

/// One object in its file: the tree to locate errors in, and the path from its document's root
/// (`items[2]` inside a List), which prefixes every field it reports.
struct Object<'a> {
    file: &'a Path,
    node: &'a Node,
    prefix: FieldPath,
}

impl Object<'_> {
    fn origin(&self) -> Origin {
        Origin {
            file: self.file.to_owned(),
            line: self.node.position.line,
        }
    }

    fn error(&self, error: FieldError) -> ManifestError {
        let position = self.node.locate(&error.path, error.on_key);
        ManifestError {
            file: self.file.to_owned(),
            line: position.line,
            column: position.column,
            field: self.prefix.join(&error.path).to_string(),
            message: error.message,
        }
    }

    fn string_field(&self, key: &str) -> Option<&str> {
        self.node.get(key).and_then(Node::as_str)
    }

    fn metadata_field(&self, key: &str) -> Option<&str> {
        self.node.get("metadata")?.get(key)?.as_str()
    }
}

/// Accumulates objects and errors over files.
#[derive(Default)]
struct Loader {
    state: DesiredState,
    ignored: Vec<Ignored>,
    errors: Vec<ManifestError>,
    /// First definition of each (kind, namespace, name), to report duplicates.
    seen: BTreeMap<(Kind, String, String), Origin>,
    /// The Services' cluster IPs and node ports, to report one used twice.
    allocations: load_services::Allocations,
    files: usize,
}

impl Loader {
    fn add_file(&mut self, file: &Path, text: &str) {
        self.files += 1;
        match yaml::parse(text) {
            Ok(documents) => {
                for node in &documents {
                    let prefix = FieldPath::root();
                    self.add_object(&Object { file, node, prefix });
                }
            }
            Err(error) => self.errors.push(ManifestError {
                file: file.to_owned(),
                line: error.position.line,
                column: error.position.column,
                field: String::new(),
                message: error.message,
            }),
        }
    }

    fn add_object(&mut self, object: &Object<'_>) {
        let Some(kind) = self.kind(object) else {
            return;
        };
        match kind {
            Kind::Namespace => self.add_namespace(object),
            Kind::Pod => self.add_pod(object),
            Kind::NetworkPolicy => self.add_policy(object),
            Kind::Service => self.add_service(object),
            Kind::EndpointSlice => self.add_endpoint_slice(object),
            Kind::Endpoints => self.add_endpoints(object),
            Kind::Node => self.add_node(object),
            Kind::List => self.add_items(object),
            Kind::Other => self.ignored.push(Ignored {
                kind: object.string_field("kind").unwrap_or_default().to_owned(),
                namespace: object.metadata_field("namespace").map(str::to_owned),
                name: object.metadata_field("name").unwrap_or_default().to_owned(),
                origin: object.origin(),
                note: None,
            }),
        }
    }

    /// How to handle the object, or `None` (with an error recorded) if it has no usable
    /// `apiVersion` and `kind`, or a known kind with another `apiVersion`.
    fn kind(&mut self, object: &Object<'_>) -> Option<Kind> {
        if !object.node.is_map() {
            let message = "a Kubernetes object must be a mapping with apiVersion and kind";
            self.reject(object, FieldPath::root(), message);
            return None;
        }
        let api_version = self.type_field(object, "apiVersion")?;
        let kind = self.type_field(object, "kind")?;
        match KINDS.iter().find(|(name, ..)| *name == kind) {
            None => Some(Kind::Other),
            Some((_, expected, known)) if *expected == api_version => Some(*known),
            Some((_, expected, _)) => {
                let message = format!("{kind} must have apiVersion {expected}, got {api_version}");
                self.reject(object, FieldPath::root().key("apiVersion"), message);
                None
            }
        }
    }

    /// `apiVersion` or `kind`: a non-empty string.
    fn type_field<'a>(&mut self, object: &Object<'a>, key: &str) -> Option<&'a str> {
        let message = match object.node.get(key).map(Node::as_str) {
            Some(Some(value)) if !value.is_empty() => return Some(value),
            Some(_) => format!("{key} must be a non-empty string"),
            None => format!("{key} is required"),
        };
        self.reject(object, FieldPath::root().key(key), message);
        None
    }

    fn add_namespace(&mut self, object: &Object<'_>) {
        let Some(namespace) = self.convert(object, UnknownFields::Ignore, convert::namespace)
        else {
            return;
        };
        if self.first_definition(object, Kind::Namespace, "", &namespace.name) {
            self.state
                .namespaces
                .insert(namespace.name.clone(), namespace);
        }
    }

    fn add_pod(&mut self, object: &Object<'_>) {
        let Some(mut pod) = self.convert(object, UnknownFields::Ignore, convert::pod) else {
            return;
        };
        if self.first_definition(object, Kind::Pod, &pod.namespace, &pod.name) {
            pod.origin = object.origin();
            self.state.pods.push(pod);
        }
    }

    fn add_policy(&mut self, object: &Object<'_>) {
        let convert = convert::network_policy;
        let Some(mut policy) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        if self.first_definition(object, Kind::NetworkPolicy, &policy.namespace, &policy.name) {
            policy.origin = object.origin();
            self.state.policies.push(policy);
        }
    }

    fn add_items(&mut self, list: &Object<'_>) {
        let items_path = FieldPath::root().key("items");
        let items = match list.node.get("items").map(|items| &items.value) {
            None | Some(yaml::Value::Null) => return,
            Some(yaml::Value::Seq(items)) => items,
            Some(_) => return self.reject(list, items_path, "items must be a list"),
        };
        for (index, node) in items.iter().enumerate() {
            let prefix = list.prefix.join(&items_path.index(index));
            let file = list.file;
            self.add_object(&Object { file, node, prefix });
        }
    }

    /// Decodes the object into `K` and converts it with `convert`, recording any error.
    fn convert<K, M>(
        &mut self,
        object: &Object<'_>,
        unknown: UnknownFields,
        convert: fn(&K) -> Result<M, Vec<FieldError>>,
    ) -> Option<M>
    where
        K: serde::de::DeserializeOwned + serde::Serialize,
    {
        let json = object.node.to_json();
        let converted = convert::decode::<K>(&json, unknown).and_then(|typed| convert(&typed));
        match converted {
            Ok(model) => Some(model),
            Err(errors) => {
                let mut errors: Vec<_> = errors
                    .into_iter()
                    .map(|error| object.error(error))
                    .collect();
                // Top to bottom, as the user reads the file (checks run in another order).
                errors.sort_by_key(|error| (error.line, error.column));
                self.errors.extend(errors);
                None
            }
        }
    }

    /// Records the object as defined, or an error if an object of the same kind, namespace and
    /// name was defined before.
    fn first_definition(
        &mut self,
        object: &Object<'_>,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> bool {
        let key = (kind, namespace.to_owned(), name.to_owned());
        match self.seen.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(object.origin());
                true
            }
            Entry::Occupied(first) => {
                let qualified = if namespace.is_empty() {
                    name.to_owned()
                } else {
                    format!("{namespace}/{name}")
                };
                let kind = kind.name();
                let message = format!(
                    "duplicate {kind} {qualified}, first defined at {}",
                    first.get()
                );
                let path = FieldPath::root().key("metadata").key("name");
                self.reject(object, path, message);
                false
            }
        }
    }

    fn reject(&mut self, object: &Object<'_>, path: FieldPath, message: impl Into<String>) {
        let message = message.into();
        let error = FieldError {
            path,
            message,
            on_key: false,
        };
        self.errors.push(object.error(error));
    }

    fn finish(mut self) -> Result<Loaded, LoadError> {
        if !self.errors.is_empty() {
            return Err(LoadError {
                errors: self.errors,
            });
        }
        let derived = crate::endpoints::derive(&self.state);
        let derived_slices = derived.len();
        self.state.endpoint_slices.extend(derived);
        // Objects may live in namespaces no manifest declares (see `DesiredState`).
        let state = &self.state;
        let used = state.pods.iter().map(|pod| &pod.namespace);
        let used = used.chain(state.policies.iter().map(|policy| &policy.namespace));
        let used = used.chain(state.services.iter().map(|service| &service.namespace));
        let used = used.chain(state.endpoint_slices.iter().map(|slice| &slice.namespace));
        let used: Vec<String> = used.cloned().collect();
        for name in used {
            self.state
                .namespaces
                .entry(name.clone())
                .or_insert_with(|| Namespace {
                    name,
                    labels: BTreeMap::new(),
                });
        }
        Ok(Loaded {
            state: self.state,
            ignored: self.ignored,
            files: self.files,
            derived_slices,
        })
    }
}
