//! Each training method as a rule for the positions and RoPE scale of a batch's rows.

use e2llm_core::positions::{contiguous_positions, E2LlmSampler, Granularity, PoseSampler};
use e2llm_core::{LlamaConfig, RopeScaling};
use e2llm_model::Positions;
use rand::Rng;

use crate::config::Method;
use crate::error::{Result, TrainError};

/// Positions of a batch plus what was sampled (for logs and histograms).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Positions and per-row scale.
    pub positions: Positions,
    /// Scale `g` of each row.
    pub g: Vec<u32>,
    /// Offset `t` (E²-LLM) or skip (PoSE) of each row; 0 otherwise.
    pub t: Vec<usize>,
    /// Leading tokens of each row that keep their positions (E²-LLM's sinks, PoSE's first
    /// chunk); 0 otherwise.
    pub sinks: Vec<usize>,
}

/// A method bound to its lengths, ready to place batches.
#[derive(Debug, Clone)]
pub enum Placer {
    /// Contiguous positions `0..R`, scale 1 (any scaling lives in the model config).
    Plain,
    /// PoSE skips.
    Pose(PoseSampler),
    /// E²-LLM (and its ablations).
    E2(E2LlmSampler, Granularity),
}

impl Placer {
    /// Binds `method` to the base context `orig_len` (L) and window `train_len` (R).
    pub fn new(method: Method, orig_len: usize, train_len: usize) -> Result<Self> {
        let bad = |e: e2llm_core::positions::PositionError| TrainError::Config {
            file: "<run config>".into(),
            reason: format!("method {method}: {e}"),
        };
        Ok(match method {
            // PI and YaRN carry their scaling in the model config (written to config.json, so
            // inference applies it too); positions stay plain here or it would apply twice.
            Method::None | Method::Yarn { .. } | Method::Pi { .. } => Placer::Plain,
            Method::Pose { s } => {
                Placer::Pose(PoseSampler::new(orig_len, train_len, s).map_err(bad)?)
            }
            Method::E2llm {
                g_max,
                per_batch,
                sinks,
                sinks_max,
            } => Placer::E2(
                E2LlmSampler::with_sinks(g_max, orig_len, train_len, sinks)
                    .and_then(|s| s.with_sinks_max(sinks_max))
                    .map_err(bad)?,
                if per_batch {
                    Granularity::PerBatch
                } else {
                    Granularity::PerExample
                },
            ),
            Method::E2llmNoT { g_max } => Placer::E2(
                E2LlmSampler::without_t(g_max, orig_len, train_len).map_err(bad)?,
                Granularity::PerExample,
            ),
            Method::E2llmNoG {
                g,
                sinks,
                sinks_max,
            } => Placer::E2(
                E2LlmSampler::without_g_with_sinks(g, orig_len, train_len, sinks)
                    .and_then(|s| s.with_sinks_max(sinks_max))
                    .map_err(bad)?,
                Granularity::PerExample,
            ),
        })
    }

    /// Positions for `batch` rows of `len` tokens.
    pub fn place<R: Rng + ?Sized>(&self, batch: usize, len: usize, rng: &mut R) -> Placement {
        let mut pos = Vec::with_capacity(batch * len);
        let (mut g, mut t) = (Vec::with_capacity(batch), Vec::with_capacity(batch));
        let mut sinks = Vec::with_capacity(batch);
        match self {
            Placer::Plain => {
                for _ in 0..batch {
                    pos.extend(contiguous_positions(len));
                    g.push(1);
                    t.push(0);
                    sinks.push(0);
                }
            }
            Placer::Pose(p) => {
                for _ in 0..batch {
                    let s = p.sample(rng);
                    pos.extend(p.positions(s));
                    g.push(1);
                    t.push(s.skip);
                    sinks.push(s.split);
                }
            }
            Placer::E2(sampler, gran) => {
                for s in sampler.sample_batch(batch, *gran, rng) {
                    pos.extend(sampler.positions(len, s));
                    g.push(s.g);
                    t.push(s.t);
                    sinks.push(s.sinks);
                }
            }
        }
        Placement {
            positions: Positions {
                pos,
                scale: g.iter().map(|&x| x as f32).collect(),
                batch,
            },
            g,
            t,
            sinks,
        }
    }
}

/// The RoPE scaling a model trained with `method` uses — during training (yarn trains with
/// its factor) and, written into the checkpoint's `config.json`, at inference.
pub fn rope_scaling_for(method: Method, orig_len: usize) -> RopeScaling {
    match method {
        Method::Pi { g } => RopeScaling::Linear { factor: g as f64 },
        Method::Yarn { factor } => {
            let mut y = RopeScaling::yarn(factor);
            if let RopeScaling::Yarn {
                original_max_position_embeddings,
                ..
            } = &mut y
            {
                *original_max_position_embeddings = Some(orig_len);
            }
            y
        }
        _ => RopeScaling::Default,
    }
}

/// The model config for a run: its shape, `L` as `max_position_embeddings`, the method's RoPE.
pub fn model_config(
    shape: &crate::config::ModelShape,
    orig_len: usize,
    method: Method,
    vocab_size: usize,
) -> LlamaConfig {
    let mut c = LlamaConfig::tiny();
    c.vocab_size = vocab_size;
    c.hidden_size = shape.hidden_size;
    c.num_hidden_layers = shape.num_hidden_layers;
    c.num_attention_heads = shape.num_attention_heads;
    c.num_key_value_heads = shape.num_key_value_heads;
    c.head_dim = shape.hidden_size / shape.num_attention_heads;
    c.intermediate_size = shape.intermediate_size;
    c.max_position_embeddings = orig_len;
    c.rope.theta = shape.rope_theta;
    c.rope.scaling = rope_scaling_for(method, orig_len);
    c.tie_word_embeddings = false;
    c.bos_token_id = None;
    c.eos_token_id = Vec::new();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Every method divides positions by its scale exactly once: PI and YaRN through the model
    /// config (which inference reads too), E²-LLM and its ablations through the placement.
    #[test]
    fn each_method_applies_its_scale_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cases = [
            (Method::None, 1.0, 1.0),
            (Method::Pi { g: 4 }, 4.0, 1.0),
            (Method::Yarn { factor: 4.0 }, 4.0, 1.0),
            (Method::Pose { s: 4 }, 1.0, 1.0),
            (
                Method::E2llmNoG {
                    g: 4,
                    sinks: 4,
                    sinks_max: 0,
                },
                1.0,
                4.0,
            ),
        ];
        for (m, config_factor, placed) in cases {
            let p = Placer::new(m, 32, 32)
                .expect("placer")
                .place(3, 32, &mut rng);
            assert!(
                p.positions.scale.iter().all(|&s| s == placed),
                "{m:?}: {:?}",
                p.positions.scale
            );
            let f = rope_scaling_for(m, 32).factor().unwrap_or(1.0);
            assert_eq!(f, config_factor, "{m:?}");
        }
        let e2 = Placer::new(Method::e2llm(8), 32, 32).expect("placer");
        let p = e2.place(64, 32, &mut rng);
        assert!(p.positions.scale.iter().any(|&s| s > 1.0));
        assert_eq!(rope_scaling_for(Method::e2llm(8), 32).factor(), None);
    }

    /// `sinks` moves the split: the first `sinks` tokens of a row keep `0..sinks`, the rest
    /// move by the row's `t`, so the gap between the two chunks is `t` (at density `1/g`), and
    /// a split past `R` is refused with the field named.
    #[test]
    fn e2llm_sinks_split_each_row_at_that_token() {
        let full = Method::E2llm {
            g_max: 8,
            per_batch: false,
            sinks: 16,
            sinks_max: 0,
        };
        // The no-g ablation of the same variant: g fixed at 8, the same split.
        let no_g = Method::E2llmNoG {
            g: 8,
            sinks: 16,
            sinks_max: 0,
        };
        for m in [full, no_g] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let p = Placer::new(m, 32, 32)
                .expect("placer")
                .place(64, 32, &mut rng);
            for (row, (&g, &t)) in p.g.iter().zip(&p.t).enumerate() {
                let pos = &p.positions.pos[row * 32..(row + 1) * 32];
                for (i, &x) in pos.iter().enumerate() {
                    let want = if i < 16 { i } else { i + t };
                    assert_eq!(x, want as f32, "{m}: row {row} token {i}");
                }
                assert!(t <= g as usize * 32 - 32, "t {t} within g·L − R for g {g}");
            }
            assert!(
                p.t.iter().any(|&t| t > 32),
                "{m}: some gap longer than R: {:?}",
                p.t
            );
            if m == no_g {
                assert!(p.g.iter().all(|&g| g == 8), "{m}: g fixed: {:?}", p.g);
            }
        }
        assert_eq!(full.to_string(), "E²-LLM (g ~ U{1..8}, per row, 16 sinks)");
        assert_eq!(no_g.to_string(), "E²-LLM without g (g = 8, 16 sinks)");
        assert_eq!(
            Method::e2llm(8).to_string(),
            "E²-LLM (g ~ U{1..8}, per row)"
        );
        let err = Placer::new(
            Method::E2llm {
                g_max: 8,
                per_batch: false,
                sinks: 33,
                sinks_max: 0,
            },
            32,
            32,
        )
        .expect_err("33 sinks in a 32-token window");
        assert!(err.to_string().contains("sinks = 33"), "{err}");
    }

    /// `sinks_max` draws each row's kept count from `U{sinks..=sinks_max}`: every row splits at
    /// its own count, the counts cover the range, the config says so in words and TOML, a
    /// config without the field keeps the fixed count, and a bad range is refused before any
    /// training.
    #[test]
    fn e2llm_kept_count_drawn_per_row() {
        let ranged = Method::E2llm {
            g_max: 8,
            per_batch: false,
            sinks: 4,
            sinks_max: 28,
        };
        // The no-g ablation with the same range (the paper preset's since session 28).
        let no_g = Method::E2llmNoG {
            g: 8,
            sinks: 4,
            sinks_max: 28,
        };
        for m in [ranged, no_g] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let p = Placer::new(m, 32, 32)
                .expect("placer")
                .place(400, 32, &mut rng);
            for (row, (&k, &t)) in p.sinks.iter().zip(&p.t).enumerate() {
                assert!((4..=28).contains(&k), "{m}: row {row}: {k}");
                let pos = &p.positions.pos[row * 32..(row + 1) * 32];
                for (i, &x) in pos.iter().enumerate() {
                    let want = if i < k { i } else { i + t };
                    assert_eq!(x, want as f32, "{m}: row {row} token {i}");
                }
            }
            let seen: std::collections::BTreeSet<_> = p.sinks.iter().copied().collect();
            assert_eq!(seen.len(), 25, "{m}: every count in 4..=28 drawn: {seen:?}");
            if m == no_g {
                assert!(p.g.iter().all(|&g| g == 8), "{m}: g fixed: {:?}", p.g);
            }
        }
        assert_eq!(
            ranged.to_string(),
            "E²-LLM (g ~ U{1..8}, per row, sinks ~ U{4..28})"
        );
        assert_eq!(
            no_g.to_string(),
            "E²-LLM without g (g = 8, sinks ~ U{4..28})"
        );
        for (text, want) in [
            ("name = \"e2llm\", g_max = 8", ranged),
            ("name = \"e2llm-no-g\", g = 8", no_g),
        ] {
            let cfg: crate::config::TrainConfig = toml::from_str(&format!(
                "method = {{ {text}, sinks = 4, sinks_max = 28 }}\norig_len = 32\ntrain_len = 32"
            ))
            .expect("toml");
            assert_eq!(cfg.method, want);
            assert_eq!(cfg.validate(), Ok(()));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        // Without the field: the fixed count, and nothing new written back.
        let fixed = Method::e2llm(8);
        let text = toml::to_string(&crate::config::TrainConfig {
            method: fixed,
            ..Default::default()
        })
        .expect("toml");
        assert!(!text.contains("sinks_max"), "{text}");
        let p = Placer::new(fixed, 32, 32)
            .expect("placer")
            .place(8, 32, &mut rng);
        assert!(p.sinks.iter().all(|&k| k == 4), "{:?}", p.sinks);
        // A range below its bottom or past R: the config check names it.
        for (lo, hi, says) in [
            (8, 6, "sinks_max = 6 is below sinks = 8"),
            (4, 40, "sinks = 40 exceeds train_len = 32"),
        ] {
            let bad = crate::config::TrainConfig {
                method: Method::E2llm {
                    g_max: 8,
                    per_batch: false,
                    sinks: lo,
                    sinks_max: hi,
                },
                orig_len: 32,
                train_len: 32,
                ..Default::default()
            };
            let err = bad.validate().expect_err("bad range");
            assert!(err.contains(says), "{err}");
        }
    }
}
