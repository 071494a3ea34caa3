//! Reading typed fields out of a JSON object, each error naming the field's path.

use std::fmt;

use serde_json::{Map, Value};

/// A configuration the plugin refuses, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `_rules_[1].nacos.timeoutMs`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// A JSON object being read, with the path that leads to it.
pub struct Fields<'a> {
    path: String,
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(path: impl Into<String>, value: &'a Value) -> Result<Self, ConfigError> {
        let path = path.into();
        match value {
            Value::Object(object) => Ok(Self { path, object }),
            other => Err(ConfigError {
                field: if path.is_empty() {
                    "(root)".into()
                } else {
                    path
                },
                reason: format!("expected an object, got {}", kind(other)),
            }),
        }
    }

    /// Path of a field of this object.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: self.path_of(key),
            reason: reason.into(),
        }
    }

    /// Refuse keys this object does not know, so a misspelled field is not silently
    /// ignored.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self
            .object
            .keys()
            .find(|key| !known.contains(&key.as_str()))
        {
            Some(key) => Err(self.error(
                key,
                format!("unknown field; expected one of: {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.object.get(key).is_some_and(|value| !value.is_null())
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key).filter(|value| !value.is_null())
    }

    pub fn object(&self, key: &str) -> Result<Option<Fields<'a>>, ConfigError> {
        self.raw(key)
            .map(|value| Fields::new(self.path_of(key), value))
            .transpose()
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.error(key, format!("expected a string, got {}", kind(other)))),
        }
    }

    /// A string that must not be empty or blank.
    pub fn non_empty_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            Some(text) if text.trim().is_empty() => Err(self.error(key, "must not be empty")),
            other => Ok(other),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => {
                Err(self.error(key, format!("expected true or false, got {}", kind(other))))
            }
        }
    }

    /// A whole number within `range`; `unit` words the error (e.g. "milliseconds").
    pub fn integer_in(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        unit: &str,
    ) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        let out_of_range = || {
            self.error(
                key,
                format!(
                    "expected a whole number of {unit} from {} to {}, got {value}",
                    range.start(),
                    range.end()
                ),
            )
        };
        let number = value.as_u64().ok_or_else(out_of_range)?;
        if range.contains(&number) {
            Ok(Some(number))
        } else {
            Err(out_of_range())
        }
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let Some(word) = self.string(key)? else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|(name, _)| *name == word)
            .map(|(_, choice)| Some(*choice))
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                self.error(
                    key,
                    format!("expected one of {}, got \"{word}\"", names.join(", ")),
                )
            })
    }

    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.error(
                key,
                format!("expected a list of strings, got {}", kind(value)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
                _ => Err(ConfigError {
                    field: format!("{}[{index}]", self.path_of(key)),
                    reason: format!("expected a non-empty string, got {}", kind(item)),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn string_map(&self, key: &str) -> Result<Option<Vec<(String, String)>>, ConfigError> {
        let Some(map) = self.object(key)? else {
            return Ok(None);
        };
        map.object
            .iter()
            .map(|(name, value)| match value {
                Value::String(text) => Ok((name.clone(), text.clone())),
                other => Err(map.error(name, format!("expected a string, got {}", kind(other)))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
