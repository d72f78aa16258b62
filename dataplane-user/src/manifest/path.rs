//! Field paths inside a Kubernetes object, spelt as Kubernetes spells them:
//! `spec.ingress[0].ports[1].port`, `metadata.labels[app.kubernetes.io/name]`.
//!
//! A path is the only thing that links an error found in a typed object back to the YAML it came
//! from, so it is kept structured (not a string) until it is displayed.

use std::fmt;

/// A path from the root of an object to one of its fields or list items.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<Segment>);

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// A mapping key: a struct field (`spec`) or a map key (a label key).
    Key(String),
    /// A list index.
    Index(usize),
}

impl FieldPath {
    /// The object itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path followed by the mapping key `key`.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        self.with(Segment::Key(key.to_owned()))
    }

    /// This path followed by the list index `index`.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        self.with(Segment::Index(index))
    }

    /// This path followed by every segment of `rest`.
    #[must_use]
    pub fn join(&self, rest: &Self) -> Self {
        let mut joined = self.clone();
        joined.0.extend(rest.0.iter().cloned());
        joined
    }

    /// The steps from the root, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the object itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts the path serde reports for a type error. It stops at the first segment serde
    /// could not name, which leaves the nearest known parent: still a useful location.
    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as Serde;
        let segments = path
            .iter()
            .map_while(|segment| match segment {
                Serde::Seq { index } => Some(Segment::Index(*index)),
                Serde::Map { key } => Some(Segment::Key(key.clone())),
                Serde::Enum { .. } | Serde::Unknown => None,
            })
            .collect();
        Self(segments)
    }

    fn with(&self, segment: Segment) -> Self {
        let mut longer = self.clone();
        longer.0.push(segment);
        longer
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                // Keys such as `app.kubernetes.io/name` would read as several fields after a dot.
                Segment::Key(key) if !is_identifier(key) => write!(f, "[{key}]")?,
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn is_identifier(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_kubernetes() {
        let path = FieldPath::root()
            .key("spec")
            .key("ingress")
            .index(0)
            .key("ports")
            .index(1)
            .key("port");
        assert_eq!(path.to_string(), "spec.ingress[0].ports[1].port");
    }

    #[test]
    fn brackets_keys_that_contain_dots_or_slashes() {
        let path = FieldPath::root()
            .key("metadata")
            .key("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(path.to_string(), "metadata.labels[app.kubernetes.io/name]");
    }

    #[test]
    fn the_root_displays_as_nothing() {
        assert_eq!(FieldPath::root().to_string(), "");
        assert_eq!(FieldPath::root().index(2).to_string(), "[2]");
    }
}
