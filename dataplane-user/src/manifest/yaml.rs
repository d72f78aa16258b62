//! YAML text → one located tree per document.
//!
//! The typed layers (k8s-openapi, `convert`) know nothing of YAML; they report errors by field
//! path. Keeping every node's position here is what lets the loader turn such a path back into a
//! line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::path::{FieldPath, Segment};

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl From<Location> for Position {
    fn from(location: Location) -> Self {
        Self {
            line: location.line(),
            column: location.column(),
        }
    }
}

/// A YAML value with the position it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Where the value starts; for a block mapping, its first key.
    pub position: Position,
}

/// The content of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One key of a mapping. Keys are kept as written: Kubernetes keys are strings, and reading
/// `y:` or `on:` as a YAML 1.1 boolean would turn a label key into `true`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_position: Position,
    pub value: Node,
}

/// Text that is not valid YAML (or nests too deep, or is too large: the parser's budget).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parses every document of `text`. Empty documents (only comments, or nothing between two
/// `---`) are skipped.
pub fn parse(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let options = serde_saphyr::options! {
        // The loader prints its own `file:line:column`; a snippet would repeat it.
        with_snippet: false,
        // Keys are strings (see `Entry`): a key spelt `null` is the string "null".
        null_as_string: true,
    };
    serde_saphyr::from_multiple_with_options::<Node>(text, options).map_err(|error| {
        let position = error.location().map(Position::from).unwrap_or_default();
        SyntaxError {
            message: strip_location(&error.to_string(), position),
            position,
        }
    })
}

/// serde-saphyr ends its messages with ` at line L, column C`, which the loader already shows.
fn strip_location(message: &str, position: Position) -> String {
    let suffix = format!(" at line {}, column {}", position.line, position.column);
    message.strip_suffix(&suffix).unwrap_or(message).to_owned()
}

impl Node {
    /// The value under `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|entry| &entry.value)
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// Whether this is a mapping.
    pub fn is_map(&self) -> bool {
        matches!(self.value, Value::Map(_))
    }

    /// The same tree without positions, as serde's typed deserializers (k8s-openapi's) take it.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match &self.value {
            Value::Null => Json::Null,
            Value::Bool(value) => Json::Bool(*value),
            Value::Int(value) => Json::from(*value),
            Value::UInt(value) => Json::from(*value),
            // Non-finite floats never get here (see `visit_f64`), so `from_f64` cannot fail.
            Value::Float(value) => {
                serde_json::Number::from_f64(*value).map_or(Json::Null, Json::Number)
            }
            Value::String(text) => Json::String(text.clone()),
            Value::Seq(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|entry| (entry.key.clone(), entry.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Where `path` was written. `at_key` points at the last key rather than its value (for
    /// "unknown field"). A path that leaves the tree (a missing field, a defaulted value) ends at
    /// its nearest existing parent, which is where the user has to add or fix something.
    pub fn locate(&self, path: &FieldPath, at_key: bool) -> Position {
        let mut node = self;
        let mut key_position = None;
        for segment in path.segments() {
            let (next, next_key) = match (segment, &node.value) {
                (Segment::Key(key), Value::Map(_)) => match node.entry(key) {
                    Some(entry) => (&entry.value, Some(entry.key_position)),
                    None => return node.position,
                },
                (Segment::Index(index), Value::Seq(items)) => match items.get(*index) {
                    Some(item) => (item, None),
                    None => return node.position,
                },
                _ => return node.position,
            };
            node = next;
            key_position = next_key;
        }
        match key_position {
            Some(position) if at_key => position,
            _ => node.position,
        }
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|entry| entry.key == key),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde-saphyr recognises `Spanned` and records where the value starts.
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Self {
            value: spanned.value,
            position: spanned.referenced.into(),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Builds a [`Value`] from whatever YAML scalar or collection comes next; nested values are
/// [`Node`]s, so each keeps its own position.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Int(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::UInt(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        if value.is_finite() {
            Ok(Value::Float(value))
        } else {
            // JSON, hence Kubernetes, has no infinity or NaN.
            Err(E::custom("numbers must be finite"))
        }
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push(Entry {
                key: key.value,
                key_position: key.referenced.into(),
                value: map.next_value::<Node>()?,
            });
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64, column: u64) -> Position {
        Position { line, column }
    }

    #[test]
    fn every_document_keeps_its_positions() {
        let docs = parse("a: 1\n---\n# comment\nb:\n  c: [x, y]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].position, at(4, 1));
        let path = FieldPath::root().key("b").key("c").index(1);
        assert_eq!(docs[1].locate(&path, false), at(5, 10));
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert_eq!(parse("---\n---\n# nothing\n---\n").unwrap(), vec![]);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn a_missing_field_is_located_at_its_parent() {
        let doc = &parse("spec:\n  ports: []\n").unwrap()[0];
        let path = FieldPath::root().key("spec").key("ports").index(3);
        assert_eq!(doc.locate(&path, false), at(2, 10));
    }

    #[test]
    fn unknown_fields_are_located_at_their_key() {
        let doc = &parse("spec:\n  podSelecter: {}\n").unwrap()[0];
        let path = FieldPath::root().key("spec").key("podSelecter");
        assert_eq!(doc.locate(&path, true), at(2, 3));
    }

    #[test]
    fn keys_stay_as_written() {
        let doc = &parse("y: 1\n80: 2\nnull: 3\n").unwrap()[0];
        let json = doc.to_json();
        assert_eq!(json, serde_json::json!({"y": 1, "80": 2, "null": 3}));
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let doc = &parse("a: \"80\"\nb: 80\nc: -1\nd: 1.5\ne: ~\n").unwrap()[0];
        let json = doc.to_json();
        assert_eq!(
            json,
            serde_json::json!({"a": "80", "b": 80, "c": -1, "d": 1.5, "e": null})
        );
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let error = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(error.position.line, 3);
        assert!(!error.message.contains("at line"), "{}", error.message);
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let error = parse("a:\n  b: 1\n  b: 2\n").unwrap_err();
        assert_eq!(error.position, at(3, 3));
    }

    #[test]
    fn non_finite_numbers_are_an_error() {
        assert!(parse("a: .inf\n").is_err());
    }
}
