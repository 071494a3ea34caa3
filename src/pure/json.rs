//! The one way JSON is read in this crate: straight from the bytes into
//! `#[derive(Deserialize)]` types (no `Value` tree), by the rules below; and writing
//! JSON strings.
//!
//! The rules, the same for the configuration, Nacos's answers and push bodies:
//! - **`null` is absent.** A field whose value is `null` reads exactly as if it were
//!   left out. So every field read from JSON is an `Option` (serde reads `null` as
//!   `None`), and its default, where it has one, is applied after reading. Items of a
//!   list and values of a map are not fields: `null` there is a value like any other,
//!   refused where a string is expected.
//! - **Objects only from objects.** A derived struct would also read a JSON array as
//!   its fields in order; no sender means that, so [`objects_only!`] reads them from
//!   JSON objects alone.
//! - **Unknown fields** are refused in the configuration (`deny_unknown_fields`: a
//!   misspelled field must not be silently ignored) and ignored in what servers send
//!   (Nacos adds fields from version to version).
//! - **A field of another type** makes the whole document unreadable, so a
//!   half-understood answer is never taken.

use serde::de::DeserializeOwned;

/// Implements `Deserialize` for structs derived with `#[serde(remote = "Self")]`
/// (which gives them an inherent `deserialize` instead) so that only a JSON object
/// is read as one; anything else is "invalid type: ..., expected an object".
macro_rules! objects_only {
    ($($name:ident),+ $(,)?) => {$(
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Object;
                impl<'de> ::serde::de::Visitor<'de> for Object {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(self, map: A) -> Result<$name, A::Error> {
                        // The derived reader, over the same entries (and, in the
                        // configuration, the same path tracking).
                        $name::deserialize(::serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(Object)
            }
        }
    )+};
}
pub(crate) use objects_only;

/// `bytes` read as a `T`; the error is serde_json's (what, at which line and column).
pub fn read<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|error| error.to_string())
}

/// Why [`read_at_path`] could not read a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misread {
    /// The field at fault, as `a.b[2].c`; empty for the document itself, and when
    /// the bytes are not JSON at all.
    pub path: String,
    /// The bytes are not JSON (bad syntax, cut short), rather than JSON of another
    /// shape.
    pub not_json: bool,
    /// serde's words; for a document of another shape without the line and column,
    /// which `path` says better.
    pub reason: String,
}

/// `bytes` read as a `T`, an error naming the path of the field at fault. Tracking
/// the path costs an allocation per key, so this is for the configuration, not
/// for Nacos's answers.
pub fn read_at_path<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Misread> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        misread(if path == "." { String::new() } else { path }, &error)
    })?;
    deserializer
        .end()
        .map_err(|error| misread(String::new(), &error))?;
    Ok(value)
}

fn misread(path: String, error: &serde_json::Error) -> Misread {
    let text = error.to_string();
    if error.is_syntax() || error.is_eof() || error.is_io() {
        return Misread {
            path: String::new(),
            not_json: true,
            reason: text,
        };
    }
    let position = format!(" at line {} column {}", error.line(), error.column());
    Misread {
        path,
        not_json: false,
        reason: text
            .strip_suffix(&position)
            .map_or_else(|| text.clone(), str::to_string),
    }
}

/// `text` as a JSON string, quotes and escapes included.
pub fn quoted(text: &str) -> String {
    // Serializing a `str` cannot fail; the fallback is the empty string, still JSON.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(remote = "Self", rename_all = "camelCase")]
    struct Outer {
        name: Option<String>,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Inner {
        count: Option<u64>,
    }

    objects_only!(Outer, Inner);

    #[test]
    fn null_reads_as_absent() {
        let absent: Outer = read(b"{}").unwrap();
        let null: Outer = read(br#"{"name":null,"inner":null,"list":null}"#).unwrap();
        assert_eq!(null, absent);
        assert_eq!(null.name, None);
        // In a list, null is an item of the wrong type, not an absent one.
        assert!(read::<Outer>(br#"{"list":[null]}"#).is_err());
    }

    #[test]
    fn structs_are_read_from_objects_only() {
        // Derived without `objects_only!`, `["x"]` would be an `Outer` named "x".
        let error = read::<Outer>(br#"["x"]"#).unwrap_err();
        assert!(error.contains("expected an object"), "{error}");
        assert!(read::<Outer>(br#"{"inner":[1]}"#).is_err());
        assert_eq!(
            read::<Outer>(br#"{"inner":{"count":2}}"#).unwrap().inner,
            Some(Inner { count: Some(2) })
        );
    }

    #[test]
    fn unknown_fields_are_ignored_unless_denied() {
        assert!(read::<Outer>(br#"{"other":[1,{"a":null}]}"#).is_ok());
        let error = read_at_path::<Outer>(br#"{"inner":{"count":1,"cuont":2}}"#).unwrap_err();
        assert_eq!(error.path, "inner.cuont");
        assert!(
            error.reason.starts_with("unknown field `cuont`"),
            "{error:?}"
        );
    }

    #[test]
    fn the_path_names_the_field_and_the_reason_has_no_position() {
        let error = read_at_path::<Outer>(br#"{"list":[{},{"count":"2"}]}"#).unwrap_err();
        assert_eq!(
            error,
            Misread {
                path: "list[1].count".into(),
                not_json: false,
                reason: "invalid type: string \"2\", expected u64".into(),
            }
        );
        let root = read_at_path::<Outer>(b"[]").unwrap_err();
        assert_eq!((root.path.as_str(), root.not_json), ("", false));
    }

    #[test]
    fn bytes_that_are_not_json_are_told_apart_from_json_of_another_shape() {
        for bytes in [&b"{\"name\":"[..], b"{} x", b"nope", b""] {
            let error = read_at_path::<Outer>(bytes).unwrap_err();
            assert!(error.not_json, "{error:?}");
            assert_eq!(error.path, "");
            assert!(error.reason.contains("line 1"), "{error:?}");
        }
    }

    #[test]
    fn quoted_escapes() {
        assert_eq!(quoted("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
