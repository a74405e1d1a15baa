//! LlamaConfig: both HF layouts, round trips, and one error per rejected case.

use e2llm_core::{ConfigError, LlamaConfig, RopeConfig, RopeScaling};
use serde_json::{json, Value};

/// meta-llama/Llama-2-7b-hf's config.json (hub layout, no rope_theta, rope_scaling null).
const LLAMA2_7B: &str = r#"{
  "_name_or_path": "meta-llama/Llama-2-7b-hf",
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}"#;

/// Llama-3.2-1B-style config (hub layout, llama3 rope_scaling, eos list, tied).
const LLAMA32_1B: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}"#;

/// A transformers v5-layout config: `rope_parameters` with `rope_theta` inside.
const V5_YARN: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "dtype": "float32",
  "vocab_size": 1000,
  "hidden_size": 256,
  "intermediate_size": 688,
  "num_hidden_layers": 2,
  "num_attention_heads": 8,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-6,
  "max_position_embeddings": 2048,
  "rope_parameters": {
    "rope_type": "yarn",
    "rope_theta": 250000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 512,
    "beta_fast": 16,
    "attention_factor": 1.25,
    "truncate": false
  },
  "transformers_version": "5.0.0"
}"#;

fn with(base: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(base).expect("fixture is JSON");
    edit(v.as_object_mut().expect("fixture is an object"));
    v.to_string()
}

fn err_of(text: &str) -> String {
    match LlamaConfig::from_json_str(text) {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn llama2_legacy_layout_defaults() {
    let c = LlamaConfig::from_json_str(LLAMA2_7B).expect("parses");
    assert_eq!(c.head_dim(), 128);
    assert_eq!(c.num_key_value_heads, 32);
    assert_eq!(
        c.rope,
        RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default
        }
    );
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_id, vec![2]);
    assert!(!c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    assert_eq!(c.rms_norm_eps, 1e-5);
    // The published count of Llama-2-7B.
    assert_eq!(c.num_parameters(), 6_738_415_616);
}

#[test]
fn llama3_legacy_layout_with_scaling_and_eos_list() {
    let c = LlamaConfig::from_json_str(LLAMA32_1B).expect("parses");
    assert_eq!(c.eos_token_id, vec![128001, 128008, 128009]);
    assert_eq!(c.rope.theta, 500_000.0);
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );
    // The published count of Llama-3.2-1B (tied embeddings).
    assert_eq!(c.num_parameters(), 1_235_814_400);
}

#[test]
fn v5_layout_yarn() {
    let c = LlamaConfig::from_json_str(V5_YARN).expect("parses");
    assert_eq!(c.head_dim, 32);
    assert_eq!(c.rope.theta, 250_000.0);
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: Some(512),
            beta_fast: 16.0,
            beta_slow: 1.0,
            attention_factor: Some(1.25),
            mscale: None,
            mscale_all_dim: None,
            truncate: false,
        }
    );
    assert!(c.eos_token_id.is_empty() && c.bos_token_id.is_none());
}

#[test]
fn v5_layout_default_type_when_absent() {
    let text = with(LLAMA2_7B, |m| {
        m.remove("rope_scaling");
        m.insert("rope_parameters".into(), json!({"rope_theta": 1e6}));
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(
        c.rope,
        RopeConfig {
            theta: 1e6,
            scaling: RopeScaling::Default
        }
    );
}

#[test]
fn legacy_type_key_and_int_factor() {
    let text = with(LLAMA2_7B, |m| {
        m.insert(
            "rope_scaling".into(),
            json!({"type": "linear", "factor": 4}),
        );
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 4.0 });
}

#[test]
fn round_trips_both_layouts() {
    for text in [LLAMA2_7B, LLAMA32_1B, V5_YARN] {
        let c = LlamaConfig::from_json_str(text).expect("parses");
        let out = c.to_json_value();
        assert_eq!(out["model_type"], "llama");
        assert_eq!(out["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(out["hidden_act"], "silu");
        assert_eq!(out["torch_dtype"], "float32");
        assert!(out.get("rope_theta").is_some());
        assert!(out.get("rope_parameters").is_none());
        let back = LlamaConfig::from_json_str(&out.to_string()).expect("reparses");
        assert_eq!(back, c);
    }
    let tiny = LlamaConfig::tiny();
    let back =
        LlamaConfig::from_json_str(&tiny.to_json_value().to_string()).expect("tiny reparses");
    assert_eq!(back, tiny);
}

#[test]
fn writes_both_type_keys_and_null_for_default() {
    let c = LlamaConfig::from_json_str(LLAMA32_1B).expect("parses");
    let out = c.to_json_value();
    assert_eq!(out["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(out["rope_scaling"]["type"], "llama3");
    assert_eq!(out["eos_token_id"], json!([128001, 128008, 128009]));
    let d = LlamaConfig::from_json_str(LLAMA2_7B)
        .expect("parses")
        .to_json_value();
    assert_eq!(d["rope_scaling"], Value::Null);
    assert_eq!(d["rope_theta"], json!(10000.0));
    assert_eq!(d["eos_token_id"], json!(2));
    let tiny = LlamaConfig::tiny().to_json_value();
    assert_eq!(
        tiny["bos_token_id"],
        Value::Null,
        "explicit null, or transformers would default it to 1"
    );
}

#[test]
fn every_scaling_round_trips() {
    let scalings = [
        RopeScaling::Default,
        RopeScaling::Linear { factor: 3.0 },
        RopeScaling::Dynamic { factor: 2.0 },
        RopeScaling::yarn(8.0),
        RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: Some(4096),
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: Some(0.707),
            mscale_all_dim: Some(0.707),
            truncate: false,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        },
    ];
    for scaling in scalings {
        let mut c = LlamaConfig::tiny();
        c.rope = RopeConfig::new(12345.0, scaling);
        let back = LlamaConfig::from_json_str(&c.to_json_value().to_string()).expect("reparses");
        assert_eq!(back, c);
    }
}

#[test]
fn tiny_preset() {
    let c = LlamaConfig::tiny();
    c.validate().expect("valid");
    assert_eq!(c.num_parameters(), 1_115_264);
}

#[test]
fn explicit_head_dim_is_honoured() {
    let text = with(LLAMA2_7B, |m| {
        m.insert("head_dim".into(), json!(64));
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(c.head_dim(), 64);
    assert!(c.num_parameters() < 6_738_415_616);
}

#[test]
fn mistral_without_window_is_llama() {
    let text = with(LLAMA2_7B, |m| {
        m.insert("model_type".into(), json!("mistral"));
        m.insert("sliding_window".into(), Value::Null);
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(c.to_json_value()["model_type"], "llama");
}

#[test]
fn biases_are_counted() {
    let mut c = LlamaConfig::tiny();
    let base = c.num_parameters();
    c.attention_bias = true;
    assert_eq!(c.num_parameters(), base + 4 * (128 * 4));
    c.mlp_bias = true;
    assert_eq!(
        c.num_parameters(),
        base + 4 * (128 * 4) + 4 * (512 * 2 + 128)
    );
    c.tie_word_embeddings = true;
    assert_eq!(
        c.num_parameters(),
        base + 4 * (128 * 4) + 4 * (512 * 2 + 128) - 256 * 128
    );
}

#[test]
fn rejections_say_what_and_where() {
    let cases: Vec<(String, &str)> = vec![
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "longrope", "factor": 2.0}),
                );
            }),
            "unknown RoPE type `longrope`",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!({"rope_type": "linear"}));
            }),
            "missing required key `factor` in rope_scaling",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!({"rope_type": "yarn"}));
            }),
            "missing required key `factor`",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}));
            }),
            "`original_max_position_embeddings`",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!({"factor": 2.0}));
            }),
            "missing required key `rope_type` in rope_scaling",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factr": 2.0}),
                );
            }),
            "key `factr` in rope_scaling",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "type": "dynamic", "factor": 2.0}),
                );
            }),
            "rope_type = \"linear\" but rope_scaling.type = \"dynamic\"",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": 0.0}),
                );
            }),
            "`factor` = 0",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048}));
            }),
            "transformers ignores it",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}),
                );
            }),
            "partial_rotary_factor",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_scaling".into(), json!("linear"));
            }),
            "`rope_scaling` in config.json must be an object or null",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "dynamic", "factor": 2.0}),
                );
                m.insert(
                    "rope_parameters".into(),
                    json!({"rope_type": "linear", "factor": 2.0}),
                );
            }),
            "describe different RoPE",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("rope_theta".into(), json!(10000.0));
                m.insert(
                    "rope_parameters".into(),
                    json!({"rope_type": "default", "rope_theta": 500000.0}),
                );
            }),
            "rope_theta = 10000 but",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("hidden_act".into(), json!("gelu"));
            }),
            "`hidden_act` = \"gelu\"",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("model_type".into(), json!("gpt_neox"));
            }),
            "`model_type` = \"gpt_neox\"",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("model_type".into(), json!("mistral"));
                m.insert("sliding_window".into(), json!(4096));
            }),
            "`sliding_window` = 4096",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("model_type".into(), json!("mistral"));
                m.insert("mlp_bias".into(), json!(true));
            }),
            "Mistral has no biases",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("pretraining_tp".into(), json!(2));
            }),
            "`pretraining_tp` = 2",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("num_key_value_heads".into(), json!(5));
            }),
            "num_attention_heads 32 is not divisible by num_key_value_heads 5",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("partial_rotary_factor".into(), json!(0.5));
            }),
            "`partial_rotary_factor` = 0.5",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("head_dim".into(), json!(127));
            }),
            "head_dim 127 is odd",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("hidden_size".into(), json!(4000));
                m.insert("num_attention_heads".into(), json!(3));
                m.insert("num_key_value_heads".into(), json!(3));
            }),
            "set `head_dim` explicitly",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.remove("vocab_size");
            }),
            "missing required key `vocab_size` in config.json",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.remove("rms_norm_eps");
            }),
            "missing required key `rms_norm_eps`",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("hidden_size".into(), json!("4096"));
            }),
            "`hidden_size` in config.json must be a non-negative integer, found \"4096\"",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("num_hidden_layers".into(), json!(0));
            }),
            "num_hidden_layers is 0",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("attention_dropout".into(), json!(0.1));
            }),
            "attention dropout",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("quantization_config".into(), json!({"bits": 4}));
            }),
            "quantized",
        ),
        (
            with(LLAMA2_7B, |m| {
                m.insert("eos_token_id".into(), json!(-1));
            }),
            "`eos_token_id` in config.json must be a token id",
        ),
        (
            with(LLAMA32_1B, |m| {
                m.insert("original_max_position_embeddings".into(), json!(4096));
            }),
            "top-level original_max_position_embeddings = 4096",
        ),
        ("[1, 2]".to_string(), "must be a JSON object"),
        ("{not json".to_string(), "not valid JSON"),
    ];
    for (text, want) in cases {
        let msg = err_of(&text);
        assert!(msg.contains(want), "error {msg:?} should contain {want:?}");
    }
}

#[test]
fn from_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("e2llm-core-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("config.json");
    std::fs::write(&good, LLAMA32_1B).expect("write");
    assert_eq!(
        LlamaConfig::from_file(&good).expect("reads"),
        LlamaConfig::from_json_str(LLAMA32_1B).expect("parses")
    );

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        with(LLAMA2_7B, |m| {
            m.insert("hidden_act".into(), json!("relu"));
        }),
    )
    .expect("write");
    let err = LlamaConfig::from_file(&bad).expect_err("bad act");
    assert!(matches!(err, ConfigError::InFile { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("bad.json") && msg.contains("hidden_act"),
        "{msg}"
    );

    let missing = dir.join("absent.json");
    let msg = LlamaConfig::from_file(&missing)
        .expect_err("absent")
        .to_string();
    assert!(msg.contains("absent.json"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn both_layouts_in_one_file_must_agree() {
    let text = with(LLAMA2_7B, |m| {
        m.insert("rope_theta".into(), json!(500000.0));
        m.insert(
            "rope_scaling".into(),
            json!({"type": "dynamic", "factor": 2.0}),
        );
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "dynamic", "factor": 2, "rope_theta": 500000}),
        );
    });
    let c = LlamaConfig::from_json_str(&text).expect("agreeing layouts parse");
    assert_eq!(
        c.rope,
        RopeConfig::new(500_000.0, RopeScaling::Dynamic { factor: 2.0 })
    );
    // v5 also accepts the legacy `type` key inside rope_parameters.
    let text = with(LLAMA2_7B, |m| {
        m.insert(
            "rope_parameters".into(),
            json!({"type": "linear", "factor": 8.0}),
        );
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(
        c.rope,
        RopeConfig::new(10_000.0, RopeScaling::Linear { factor: 8.0 })
    );
}

#[test]
fn yarn_zero_betas_mean_defaults_like_hf() {
    let text = with(LLAMA2_7B, |m| {
        m.insert(
            "rope_scaling".into(),
            json!({"rope_type": "yarn", "factor": 2.0, "beta_fast": 0, "beta_slow": null}),
        );
    });
    let c = LlamaConfig::from_json_str(&text).expect("parses");
    assert_eq!(c.rope.scaling, RopeScaling::yarn(2.0));
}

#[test]
fn use_logn_attn_is_read_written_only_when_true_and_checked() {
    let plain = LlamaConfig::from_json_str(LLAMA2_7B).expect("parses");
    assert!(!plain.logn_attn, "absent means off");
    assert!(plain.to_json_value().get("use_logn_attn").is_none());
    let on = LlamaConfig::from_json_str(&with(LLAMA2_7B, |m| {
        m.insert("use_logn_attn".into(), json!(true));
    }))
    .expect("parses");
    assert!(on.logn_attn);
    let out = on.to_json_value();
    assert_eq!(out["use_logn_attn"], json!(true));
    assert_eq!(
        LlamaConfig::from_json_str(&out.to_string()).expect("reparses"),
        on
    );
    let off = LlamaConfig::from_json_str(&with(LLAMA2_7B, |m| {
        m.insert("use_logn_attn".into(), json!(false));
    }))
    .expect("parses");
    assert!(!off.logn_attn);
    let err = LlamaConfig::from_json_str(&with(LLAMA2_7B, |m| {
        m.insert("use_logn_attn".into(), json!("yes"));
    }))
    .expect_err("a string is not a bool")
    .to_string();
    assert!(err.contains("use_logn_attn"), "{err}");
}
