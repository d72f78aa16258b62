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
//! state is returned, so that a half-read directory is never applied. It runs in two steps, so
//! that a caller following a directory re-reads only what changed: each file on its own
//! ([`read_file`], [`parse_file`]), then all of them together ([`assemble`]: duplicates across
//! files, namespaces nobody declares, all or nothing).

pub mod convert;
pub mod listing;
mod load_services;
mod names;
pub mod path;
pub mod service;
mod yaml;

#[cfg(test)]
mod assemble_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let listing = listing::list(dir);
    let files: Vec<FileManifests> = listing
        .files
        .iter()
        .map(|(path, _)| read_file(path))
        .collect();
    assemble(listing.errors, &files)
}

/// Loads the text of one manifest file; `file` names it in errors and origins.
///
/// # Errors
///
/// Every YAML syntax error and invalid object, all together.
pub fn load_str(file: &Path, text: &str) -> Result<Loaded, LoadError> {
    assemble(Vec::new(), [&parse_file(file, text)])
}

/// One manifest file read and validated on its own: its objects, the kinds it holds that
/// Weir ignores, and its errors. What depends on other files (an object defined twice,
/// namespaces nobody declares, all or nothing) is left to [`assemble`], so that a caller
/// following a directory can keep this per file and re-read only the files that change.
#[derive(Debug)]
pub struct FileManifests {
    state: DesiredState,
    ignored: Vec<Ignored>,
    errors: Vec<ManifestError>,
    definitions: Vec<Definition>,
    /// 1 once the file has been read, 0 when it could not be.
    files: usize,
}

impl FileManifests {
    /// Whether the file holds no error of its own (another file may still clash with it).
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads and validates one manifest file; a file that cannot be read is its error.
pub fn read_file(file: &Path) -> FileManifests {
    match fs::read_to_string(file) {
        Ok(text) => parse_file(file, &text),
        Err(error) => {
            let mut loader = Loader::default();
            loader.errors.push(file_error(file, &error));
            loader.into_file()
        }
    }
}

/// Validates the text of one manifest file; `file` names it in errors and origins.
pub fn parse_file(file: &Path, text: &str) -> FileManifests {
    let mut loader = Loader::default();
    loader.add_file(file, text);
    loader.into_file()
}

/// The desired state of several files, in the order given (path order, for a directory):
/// `errors` (of the walk that found them) first, then each file's own errors, and an object
/// defined in an earlier file too is an error of the later one.
///
/// # Errors
///
/// All those errors together: nothing is returned unless every file is valid.
pub fn assemble<'a>(
    errors: Vec<ManifestError>,
    files: impl IntoIterator<Item = &'a FileManifests>,
) -> Result<Loaded, LoadError> {
    let mut loader = Loader {
        errors,
        ..Loader::default()
    };
    // Borrowed from the files: an assembly copies no key.
    let mut defined = BTreeMap::new();
    for file in files {
        loader.merge(file, &mut defined);
    }
    loader.finish()
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

/// What identifies an object: two definitions of one are an error.
type ObjectKey = (Kind, String, String);

/// An object as defined in its file, kept for the duplicate check across files.
#[derive(Debug)]
struct Definition {
    key: ObjectKey,
    origin: Origin,
    /// Its `metadata.name`, located: where a later definition of it is reported.
    name: ManifestError,
}

/// Accumulates objects and errors: of one file ([`parse_file`]), then of all files
/// ([`assemble`]).
#[derive(Default)]
struct Loader {
    state: DesiredState,
    ignored: Vec<Ignored>,
    errors: Vec<ManifestError>,
    /// First definition in this file of each (kind, namespace, name), to report duplicates.
    seen: BTreeMap<ObjectKey, Origin>,
    /// Every object defined once so far, in order (kept by a file for [`Loader::merge`]).
    definitions: Vec<Definition>,
    /// The Services' cluster IPs and node ports in this file, to report one used twice
    /// (across files, [`Loader::finish`] checks them).
    allocations: load_services::Allocations,
    files: usize,
}

impl Loader {
    fn into_file(self) -> FileManifests {
        FileManifests {
            state: self.state,
            ignored: self.ignored,
            errors: self.errors,
            definitions: self.definitions,
            files: self.files,
        }
    }

    /// Adds one file's objects and errors. An object some earlier file defined too (in
    /// `defined`, which this adds the file's objects to) is an error of this file, placed among
    /// its own errors by line.
    fn merge<'a>(
        &mut self,
        file: &'a FileManifests,
        defined: &mut BTreeMap<&'a ObjectKey, &'a Origin>,
    ) {
        self.files += file.files;
        let mut errors = file.errors.clone();
        let own = errors.len();
        for definition in &file.definitions {
            match defined.entry(&definition.key) {
                Entry::Vacant(entry) => {
                    entry.insert(&definition.origin);
                }
                Entry::Occupied(first) => errors.push(ManifestError {
                    message: duplicate_message(&definition.key, first.get()),
                    ..definition.name.clone()
                }),
            }
        }
        if errors.len() > own {
            errors.sort_by_key(|error| (error.line, error.column));
        }
        self.errors.extend(errors);
        self.ignored.extend_from_slice(&file.ignored);
        // Once anything is wrong no state is returned: copying it would be wasted.
        if self.errors.is_empty() {
            extend_state(&mut self.state, &file.state);
        }
    }

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
            self.state.pods.push(Arc::new(pod));
        }
    }

    fn add_policy(&mut self, object: &Object<'_>) {
        let convert = convert::network_policy;
        let Some(mut policy) = self.convert(object, UnknownFields::Reject, convert) else {
            return;
        };
        if self.first_definition(object, Kind::NetworkPolicy, &policy.namespace, &policy.name) {
            policy.origin = object.origin();
            self.state.policies.push(Arc::new(policy));
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
    /// name was defined before in this file ([`Loader::merge`] checks across files).
    fn first_definition(
        &mut self,
        object: &Object<'_>,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> bool {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let path = FieldPath::root().key("metadata").key("name");
        match self.seen.entry(key.clone()) {
            Entry::Vacant(entry) => {
                entry.insert(object.origin());
                let name = object.error(FieldError {
                    path,
                    message: String::new(),
                    on_key: false,
                });
                let origin = object.origin();
                self.definitions.push(Definition { key, origin, name });
                true
            }
            Entry::Occupied(first) => {
                let message = duplicate_message(&key, first.get());
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
        self.errors = load_services::across_files(&self.state.services);
        if !self.errors.is_empty() {
            return Err(LoadError {
                errors: self.errors,
            });
        }
        let derived = crate::endpoints::derive(&self.state);
        let derived_slices = derived.len();
        self.state
            .endpoint_slices
            .extend(derived.into_iter().map(Arc::new));
        self.state.sort_services_and_slices();
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

/// `duplicate Pod default/web, first defined at web.yaml:1`.
fn duplicate_message((kind, namespace, name): &ObjectKey, first: &Origin) -> String {
    let qualified = if namespace.is_empty() {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    };
    format!(
        "duplicate {} {qualified}, first defined at {first}",
        kind.name()
    )
}

/// Adds the objects of `from` to `into`.
fn extend_state(into: &mut DesiredState, from: &DesiredState) {
    // Taken apart field by field, so that a kind added to the model cannot be forgotten here.
    let DesiredState {
        namespaces,
        pods,
        policies,
        services,
        endpoint_slices,
        nodes,
    } = from;
    into.namespaces.extend(
        namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), ns.clone())),
    );
    into.pods.extend_from_slice(pods);
    into.policies.extend_from_slice(policies);
    into.services.extend_from_slice(services);
    into.endpoint_slices.extend_from_slice(endpoint_slices);
    into.nodes.extend_from_slice(nodes);
}
