//! Reading the JSON that Nacos sends, field by field out of a [`Value`], and writing
//! JSON strings.
//!
//! Hand-written instead of `#[derive(Deserialize)]`: every derived type added its
//! own 1.5–3 KB deserializer to the plugin, and their error paths linked float
//! formatting (16 KB more), while `Value` is linked for the configuration anyway.
//! The rules are the ones the derived types had: an absent field takes its default,
//! `null` counts as absent only for fields Nacos may leave empty (the `Option`
//! ones), unknown fields are ignored, and a field of another type makes the whole
//! answer malformed, so a half-understood answer is never taken.

use serde_json::{Map, Value};

pub type Object = Map<String, Value>;

/// `bytes` as JSON; the error is serde_json's (what, at which line and column).
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|error| error.to_string())
}

/// `value` as an object; `what` names it in the error.
pub fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Object, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{what}: expected an object"))
}

/// `key`'s value, `None` when it is absent or `null`.
pub fn present<'a>(object: &'a Object, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

/// `key`'s value read by `cast`: `None` when absent (or `null`, if `nullable`), an
/// error naming the field when it holds another type.
fn field<'a, T>(
    object: &'a Object,
    key: &str,
    nullable: bool,
    expected: &str,
    cast: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(None),
        Some(value) => cast(value)
            .map(Some)
            .ok_or_else(|| format!("invalid type for `{key}`, expected {expected}")),
    }
}

/// An optional string field.
pub fn string(object: &Object, key: &str) -> Result<Option<String>, String> {
    field(object, key, true, "a string", |v| {
        v.as_str().map(str::to_string)
    })
}

/// An optional integer field.
pub fn int(object: &Object, key: &str) -> Result<Option<i64>, String> {
    field(object, key, true, "i64", Value::as_i64)
}

/// An optional non-negative integer field.
pub fn uint(object: &Object, key: &str) -> Result<Option<u64>, String> {
    field(object, key, true, "u64", Value::as_u64)
}

/// An optional array field.
pub fn array<'a>(object: &'a Object, key: &str) -> Result<Option<&'a Vec<Value>>, String> {
    field(object, key, true, "an array", Value::as_array)
}

/// An optional object field.
pub fn object_field<'a>(object: &'a Object, key: &str) -> Result<Option<&'a Object>, String> {
    field(object, key, true, "an object", Value::as_object)
}

/// A string field that is `""` when absent; `null` is an error.
pub fn str_or_empty<'a>(object: &'a Object, key: &str) -> Result<&'a str, String> {
    Ok(field(object, key, false, "a string", Value::as_str)?.unwrap_or_default())
}

/// An integer field with a default for when it is absent; `null` is an error.
pub fn int_or(object: &Object, key: &str, default: i64) -> Result<i64, String> {
    Ok(field(object, key, false, "i64", Value::as_i64)?.unwrap_or(default))
}

/// A number field with a default for when it is absent; `null` is an error.
pub fn float_or(object: &Object, key: &str, default: f64) -> Result<f64, String> {
    Ok(field(object, key, false, "f64", Value::as_f64)?.unwrap_or(default))
}

/// A boolean field with a default for when it is absent; `null` is an error.
pub fn bool_or(object: &Object, key: &str, default: bool) -> Result<bool, String> {
    Ok(field(object, key, false, "a boolean", Value::as_bool)?.unwrap_or(default))
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

    fn fields(json: &str) -> Object {
        parse(json.as_bytes()).unwrap().as_object().unwrap().clone()
    }

    #[test]
    fn absent_fields_take_defaults_and_null_counts_as_absent_only_where_allowed() {
        let o = fields(r#"{"s":null,"n":null,"b":null}"#);
        assert_eq!(string(&o, "s"), Ok(None));
        assert_eq!(string(&o, "absent"), Ok(None));
        assert_eq!(int(&o, "n"), Ok(None));
        assert_eq!(bool_or(&o, "absent", true), Ok(true));
        assert_eq!(float_or(&o, "absent", 1.0), Ok(1.0));
        assert_eq!(int_or(&o, "absent", 7), Ok(7));
        assert_eq!(str_or_empty(&o, "absent"), Ok(""));
        assert!(bool_or(&o, "b", true).is_err());
        assert!(int_or(&o, "n", 0).is_err());
        assert!(str_or_empty(&o, "s").is_err());
        assert!(present(&o, "s").is_none());
    }

    #[test]
    fn fields_of_another_type_are_errors_naming_the_field() {
        let o = fields(r#"{"s":1,"n":1.5,"u":-1,"b":"true","a":{},"o":[],"f":"1"}"#);
        assert_eq!(
            string(&o, "s"),
            Err("invalid type for `s`, expected a string".into())
        );
        assert!(int(&o, "n").is_err());
        assert!(uint(&o, "u").is_err());
        assert!(bool_or(&o, "b", false).is_err());
        assert!(array(&o, "a").is_err());
        assert!(object_field(&o, "o").is_err());
        assert!(float_or(&o, "f", 0.0).is_err());
        assert!(object(&Value::Null, "answer").is_err());
    }

    #[test]
    fn values_of_the_right_type_are_read() {
        let o = fields(r#"{"s":"x","n":-3,"u":5,"w":2,"b":false,"a":[1],"o":{"k":"v"}}"#);
        assert_eq!(string(&o, "s"), Ok(Some("x".into())));
        assert_eq!(str_or_empty(&o, "s"), Ok("x"));
        assert_eq!(int(&o, "n"), Ok(Some(-3)));
        assert_eq!(int_or(&o, "n", 0), Ok(-3));
        assert_eq!(uint(&o, "u"), Ok(Some(5)));
        assert_eq!(float_or(&o, "w", 1.0), Ok(2.0));
        assert_eq!(bool_or(&o, "b", true), Ok(false));
        assert_eq!(array(&o, "a").unwrap().map(Vec::len), Some(1));
        assert_eq!(object_field(&o, "o").unwrap().map(Map::len), Some(1));
    }

    #[test]
    fn quoted_escapes() {
        assert_eq!(quoted("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
