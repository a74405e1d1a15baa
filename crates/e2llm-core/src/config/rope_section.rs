//! Reading and writing the RoPE part of `config.json` in both HF layouts.
//!
//! - Hub layout (transformers v4): top-level `rope_theta` (default 10000) and `rope_scaling`
//!   (`null` or an object whose type key is `type` or `rope_type`).
//! - transformers v5 layout: `rope_parameters`, an object holding `rope_type`, `rope_theta` and
//!   the variant's keys.
//!
//! A file may carry both; they must then agree. Every key inside the RoPE object changes the
//! computation, so an unknown key there is an error (a typo must not silently mean "default").

use serde_json::{json, Map, Value};

use super::json::{show, Section};
use super::ConfigError;
use crate::rope::{
    RopeConfig, RopeScaling, DEFAULT_ROPE_THETA, YARN_DEFAULT_BETA_FAST, YARN_DEFAULT_BETA_SLOW,
};

const SUPPORTED: &str = "default, linear, dynamic, yarn, llama3";
const FACTOR_HINT: &str = "the scaling factor, e.g. 2.0 for twice the context";
const ORIG_HINT: &str = "the pretraining context length, e.g. 8192 for Llama 3";

/// Reads the RoPE settings from the top-level object `top` of `config.json`.
pub(crate) fn parse_rope(top: &Section, max_pos: usize) -> Result<RopeConfig, ConfigError> {
    let top_theta = top.opt_f64("rope_theta")?;
    let legacy = object(top, "rope_scaling")?;
    let v5 = object(top, "rope_parameters")?;

    let from_legacy = match legacy {
        Some(map) => Some(parse_dict(
            &Section {
                map,
                name: "rope_scaling",
            },
            false,
            max_pos,
        )?),
        None => None,
    };
    let from_v5 = match v5 {
        Some(map) => Some(parse_dict(
            &Section {
                map,
                name: "rope_parameters",
            },
            true,
            max_pos,
        )?),
        None => None,
    };

    let (scaling, inner_theta) = match (from_legacy, from_v5) {
        (None, None) => (RopeScaling::Default, None),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (Some(a), Some(b)) => {
            if a.0 != b.0 {
                return Err(ConfigError::Conflict {
                    what: format!(
                        "`rope_scaling` ({:?}) and `rope_parameters` ({:?}) describe different RoPE",
                        a.0, b.0
                    ),
                    fix: "keep one of them (transformers v5 writes only `rope_parameters`)",
                });
            }
            (
                b.0,
                agree_theta(
                    "rope_scaling.rope_theta",
                    a.1,
                    "rope_parameters.rope_theta",
                    b.1,
                )?,
            )
        }
    };
    let theta = agree_theta(
        "rope_theta",
        top_theta,
        "the RoPE object's rope_theta",
        inner_theta,
    )?
    .unwrap_or(DEFAULT_ROPE_THETA);

    check_top_level_original_max(top, &scaling)?;
    Ok(RopeConfig { theta, scaling })
}

/// `key` as an optional JSON object (`null` = absent).
fn object<'a>(
    top: &Section<'a>,
    key: &'static str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match top.get(key) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(ConfigError::Type {
            section: top.name,
            key: key.to_string(),
            expected: "an object or null",
            found: show(other),
        }),
    }
}

fn agree_theta(
    a_name: &str,
    a: Option<f64>,
    b_name: &str,
    b: Option<f64>,
) -> Result<Option<f64>, ConfigError> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(ConfigError::Conflict {
            what: format!("{a_name} = {x} but {b_name} = {y}"),
            fix: "give rope_theta once, or the same value in both places",
        }),
        (x, y) => Ok(y.or(x)),
    }
}

/// transformers v5 moves a top-level `original_max_position_embeddings` into yarn/llama3's
/// parameters (overriding theirs); v4 ignores it. Accept it only where both readings agree.
fn check_top_level_original_max(top: &Section, scaling: &RopeScaling) -> Result<(), ConfigError> {
    let Some(top_orig) = top.opt_usize("original_max_position_embeddings")? else {
        return Ok(());
    };
    let inner = match scaling {
        RopeScaling::Yarn {
            original_max_position_embeddings,
            ..
        } => *original_max_position_embeddings,
        RopeScaling::Llama3 {
            original_max_position_embeddings,
            ..
        } => Some(*original_max_position_embeddings),
        _ => return Ok(()),
    };
    if inner == Some(top_orig) {
        return Ok(());
    }
    Err(ConfigError::Conflict {
        what: format!(
            "top-level original_max_position_embeddings = {top_orig} but the RoPE object has {}; \
             transformers v5 would use the top-level value and v4 the RoPE object's",
            inner.map_or("none".to_string(), |v| v.to_string())
        ),
        fix: "put original_max_position_embeddings only inside rope_scaling/rope_parameters",
    })
}

/// Parses one RoPE object; returns the scaling and the `rope_theta` it holds, if any.
/// `v5`: a missing type means `default` (transformers v5); in `rope_scaling` it is an error
/// (transformers v4 fails on it too).
fn parse_dict(
    s: &Section,
    v5: bool,
    max_pos: usize,
) -> Result<(RopeScaling, Option<f64>), ConfigError> {
    let rope_type = match (s.opt_str("rope_type")?, s.opt_str("type")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                what: format!(
                    "{}.rope_type = \"{a}\" but {}.type = \"{b}\"",
                    s.name, s.name
                ),
                fix: "give the RoPE type once (`rope_type`), or the same value in both keys",
            })
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) if v5 => "default",
        (None, None) => {
            return Err(ConfigError::Missing {
                section: s.name,
                key: "rope_type",
                hint:
                    "name the RoPE type (`rope_type` or legacy `type`), or set rope_scaling to null",
            })
        }
    };
    if let Some(p) = s.opt_f64("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(unsupported(
                s.name,
                "partial_rotary_factor",
                p,
                "Llama rotates the whole head; only 1.0 is supported",
            ));
        }
    }
    let allowed: &[&str] = match rope_type {
        "default" => &[],
        "linear" => &["factor"],
        "dynamic" => &["factor", "original_max_position_embeddings"],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "attention_factor",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => {
            return Err(ConfigError::UnknownRopeType {
                section: s.name,
                found: other.to_string(),
                supported: SUPPORTED,
            })
        }
    };
    for key in s.map.keys() {
        let common = matches!(
            key.as_str(),
            "rope_type" | "type" | "rope_theta" | "partial_rotary_factor"
        );
        if !common && !allowed.contains(&key.as_str()) {
            return Err(ConfigError::UnknownRopeKey {
                section: s.name,
                rope_type: rope_type.to_string(),
                key: key.clone(),
                allowed: allowed.join(", "),
            });
        }
    }

    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: s.req_f64("factor", FACTOR_HINT)?,
        },
        "dynamic" => {
            // transformers reads this key for dynamic but never uses it (it scales against
            // max_position_embeddings); accept it only where that changes nothing.
            if let Some(orig) = s.opt_usize("original_max_position_embeddings")? {
                if orig != max_pos {
                    return Err(ConfigError::Conflict {
                        what: format!(
                            "{}.original_max_position_embeddings = {orig} for dynamic RoPE, but \
                             transformers ignores it and scales against max_position_embeddings = {max_pos}",
                            s.name
                        ),
                        fix: "remove the key, or set max_position_embeddings to the pretraining length",
                    });
                }
            }
            RopeScaling::Dynamic {
                factor: s.req_f64("factor", FACTOR_HINT)?,
            }
        }
        "yarn" => RopeScaling::Yarn {
            factor: s.req_f64("factor", FACTOR_HINT)?,
            original_max_position_embeddings: s.opt_usize("original_max_position_embeddings")?,
            // HF: `get("beta_fast") or 32` — 0 and null both mean the default.
            beta_fast: s
                .opt_f64("beta_fast")?
                .filter(|&b| b != 0.0)
                .unwrap_or(YARN_DEFAULT_BETA_FAST),
            beta_slow: s
                .opt_f64("beta_slow")?
                .filter(|&b| b != 0.0)
                .unwrap_or(YARN_DEFAULT_BETA_SLOW),
            attention_factor: s.opt_f64("attention_factor")?,
            mscale: s.opt_f64("mscale")?,
            mscale_all_dim: s.opt_f64("mscale_all_dim")?,
            truncate: s.opt_bool("truncate")?.unwrap_or(true),
        },
        _ => RopeScaling::Llama3 {
            factor: s.req_f64("factor", FACTOR_HINT)?,
            low_freq_factor: s.req_f64("low_freq_factor", "1.0 in Llama 3.1")?,
            high_freq_factor: s.req_f64("high_freq_factor", "4.0 in Llama 3.1")?,
            original_max_position_embeddings: s
                .req_usize("original_max_position_embeddings", ORIG_HINT)?,
        },
    };
    Ok((scaling, s.opt_f64("rope_theta")?))
}

fn unsupported(section: &'static str, key: &str, value: f64, reason: &'static str) -> ConfigError {
    ConfigError::Unsupported {
        section,
        key: key.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// The hub-layout `(rope_theta, rope_scaling)` pair for `rope`: `rope_scaling` is `null` for
/// default RoPE, else an object with both `rope_type` and `type` (for old loaders).
pub(crate) fn to_legacy(rope: &RopeConfig) -> (Value, Value) {
    let mut m = Map::new();
    let ty = rope.scaling.rope_type();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match rope.scaling {
        RopeScaling::Default => return (json!(rope.theta), Value::Null),
        RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
            put("factor", json!(factor))
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            put("factor", json!(factor));
            put("beta_fast", json!(beta_fast));
            put("beta_slow", json!(beta_slow));
            if let Some(o) = original_max_position_embeddings {
                put("original_max_position_embeddings", json!(o));
            }
            for (k, v) in [
                ("attention_factor", attention_factor),
                ("mscale", mscale),
                ("mscale_all_dim", mscale_all_dim),
            ] {
                if let Some(v) = v {
                    put(k, json!(v));
                }
            }
            if !truncate {
                put("truncate", json!(false));
            }
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            put("factor", json!(factor));
            put("low_freq_factor", json!(low_freq_factor));
            put("high_freq_factor", json!(high_freq_factor));
            put(
                "original_max_position_embeddings",
                json!(original_max_position_embeddings),
            );
        }
    }
    put("rope_type", json!(ty));
    put("type", json!(ty));
    (json!(rope.theta), Value::Object(m))
}
