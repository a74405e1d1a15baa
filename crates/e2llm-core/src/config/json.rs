//! Typed reads from one JSON object of a config file, with errors that name the section and key.

use serde_json::{Map, Value};

use super::ConfigError;

/// One JSON object (`config.json`'s top level, `rope_scaling`, `rope_parameters`) and its name
/// for error messages.
pub(crate) struct Section<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) name: &'static str,
}

/// Short printed form of a JSON value for error messages.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

impl<'a> Section<'a> {
    /// The value at `key`, with JSON `null` read as absent (HF treats `null` as "not set").
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn type_err(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::Type {
            section: self.name,
            key: key.to_string(),
            expected,
            found: show(found),
        }
    }

    /// A required non-negative integer.
    pub(crate) fn req_usize(
        &self,
        key: &'static str,
        hint: &'static str,
    ) -> Result<usize, ConfigError> {
        self.opt_usize(key)?.ok_or(ConfigError::Missing {
            section: self.name,
            key,
            hint,
        })
    }

    /// An optional non-negative integer.
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a non-negative integer", v)),
        }
    }

    /// A required number (integer or float).
    pub(crate) fn req_f64(
        &self,
        key: &'static str,
        hint: &'static str,
    ) -> Result<f64, ConfigError> {
        self.opt_f64(key)?.ok_or(ConfigError::Missing {
            section: self.name,
            key,
            hint,
        })
    }

    /// An optional number (integer or float).
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a number", v)),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "true or false", v)),
        }
    }

    /// An optional string.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a string", v)),
        }
    }

    /// An optional token id or list of token ids (HF's `eos_token_id` may be either).
    pub(crate) fn opt_token_ids(&self, key: &str) -> Result<Vec<u32>, ConfigError> {
        let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_id(v)
                        .ok_or_else(|| self.type_err(key, "a token id (u32) or a list of them", v))
                })
                .collect(),
            Some(v) => as_id(v)
                .map(|id| vec![id])
                .ok_or_else(|| self.type_err(key, "a token id (u32) or a list of them", v)),
        }
    }
}
