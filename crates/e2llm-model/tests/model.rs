//! Model behaviour that needs no outside reference: KV cache vs full forward, chunked
//! prefill, sampling reproducibility, save → load round trip, and clear errors on bad files.

use e2llm_core::{LlamaConfig, RopeScaling};
use e2llm_model::generate::{generate, GenerateOptions, Sampler, SamplingConfig};
use e2llm_model::{checkpoint, weights, Device, KvCache, Llama, ModelError, Positions};

fn small_config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny();
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.max_position_embeddings = 64;
    c
}

fn model(cfg: LlamaConfig) -> Llama {
    weights::init_random(cfg, 0.2, 7, &Device::flex())
}

fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 64) as u32).collect()
}

/// Logits of one decode step per token `ids[i]`, `i` in `range`, at `pos[i] / g`, through
/// `cache` (each step appends to it).
fn decode_steps(
    m: &Llama,
    ids: &[u32],
    pos: &[f32],
    g: f32,
    range: std::ops::Range<usize>,
    cache: &mut KvCache,
) -> Vec<f32> {
    range
        .flat_map(|i| {
            let l = m
                .forward(&ids[i..=i], &Positions::row(vec![pos[i]], g), Some(cache))
                .expect("step");
            to_vec(l)
        })
        .collect()
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    let m = model(small_config());
    let ids = ids(20);
    let g = 2.5;
    let full = to_vec(
        m.forward(&ids, &Positions::contiguous(1, 20, 0, g), None)
            .expect("forward"),
    );
    let mut cache = KvCache::new(m.layers.len());
    let mut stepwise = to_vec(
        m.forward(
            &ids[..7],
            &Positions::contiguous(1, 7, 0, g),
            Some(&mut cache),
        )
        .expect("prefill"),
    );
    for (i, &t) in ids.iter().enumerate().skip(7) {
        let l = m
            .forward(&[t], &Positions::row(vec![i as f32], g), Some(&mut cache))
            .expect("step");
        stepwise.extend(to_vec(l));
    }
    assert_eq!(cache.len(), 20);
    let d = max_diff(&full, &stepwise);
    assert!(d < 1e-4, "cached decode differs from full forward by {d}");
}

#[test]
fn chunked_prefill_equals_full_forward() {
    let m = model(small_config());
    let ids = ids(23);
    let pos: Vec<f32> = (0..23).map(|i| i as f32 * 1.5 + 3.0).collect();
    let full = to_vec(
        m.forward(&ids, &Positions::row(pos.clone(), 4.0), None)
            .expect("forward"),
    );
    let vocab = m.config.vocab_size;
    let mut cache = KvCache::new(m.layers.len());
    let mut seen = Vec::new();
    let last = m
        .prefill(&ids, &pos, 4.0, &mut cache, 5, |done, total| {
            seen.push((done, total))
        })
        .expect("prefill");
    let d = max_diff(&full[22 * vocab..], &to_vec(last));
    assert!(d < 1e-4, "chunked prefill differs by {d}");
    assert_eq!(seen.last(), Some(&(23, 23)));
    assert_eq!(seen.len(), 5, "23 tokens in chunks of 5 is 5 chunks");
}

#[test]
fn positions_and_scale_change_the_logits() {
    let m = model(small_config());
    let ids = ids(12);
    let base = to_vec(
        m.forward(&ids, &Positions::contiguous(1, 12, 0, 1.0), None)
            .expect("f"),
    );
    let scaled = to_vec(
        m.forward(&ids, &Positions::contiguous(1, 12, 0, 4.0), None)
            .expect("f"),
    );
    let shifted = to_vec(
        m.forward(&ids, &Positions::contiguous(1, 12, 100, 1.0), None)
            .expect("f"),
    );
    assert!(max_diff(&base, &scaled) > 1e-2, "scale g had no effect");
    // RoPE is relative: shifting every position by the same amount changes nothing.
    assert!(
        max_diff(&base, &shifted) < 1e-3,
        "a uniform shift changed the logits"
    );
    // ... but E²-LLM's offset applied after 4 sink tokens does.
    let mut pos: Vec<f32> = (0..12).map(|i| i as f32).collect();
    for p in pos.iter_mut().skip(4) {
        *p += 30.0;
    }
    let e2 = to_vec(m.forward(&ids, &Positions::row(pos, 1.0), None).expect("f"));
    assert!(
        max_diff(&base, &e2) > 1e-2,
        "offset after the sinks had no effect"
    );
}

#[test]
fn batched_rows_equal_single_rows() {
    let m = model(small_config());
    let a = ids(9);
    let b: Vec<u32> = a.iter().map(|t| (t + 5) % 64).collect();
    let pa: Vec<f32> = (0..9).map(|i| i as f32).collect();
    let pb: Vec<f32> = (0..9)
        .map(|i| if i < 4 { i as f32 } else { i as f32 + 17.0 })
        .collect();
    let both = Positions {
        pos: [pa.clone(), pb.clone()].concat(),
        scale: vec![1.0, 3.0],
        batch: 2,
    };
    let batched = to_vec(
        m.forward(&[a.clone(), b.clone()].concat(), &both, None)
            .expect("f"),
    );
    let one = to_vec(m.forward(&a, &Positions::row(pa, 1.0), None).expect("f"));
    let two = to_vec(m.forward(&b, &Positions::row(pb, 3.0), None).expect("f"));
    assert!(max_diff(&batched, &[one, two].concat()) < 1e-5);
}

#[test]
fn sampling_is_reproducible_from_a_seed() {
    let m = model(small_config());
    let run = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: SamplingConfig {
                temperature: 1.0,
                top_p: 0.9,
                seed,
            },
            ..GenerateOptions::default()
        };
        generate(&m, &ids(5), &opts, |_| true).expect("generate")
    };
    assert_eq!(run(1), run(1));
    assert_ne!(
        run(1),
        run(2),
        "different seeds gave the same 12 sampled tokens"
    );
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    let logits = [0.0, 10.0, 9.0, -5.0];
    let mut s = Sampler::new(SamplingConfig {
        temperature: 1.0,
        top_p: 0.5,
        seed: 3,
    });
    for _ in 0..50 {
        assert_eq!(
            s.sample(&logits),
            1,
            "top_p 0.5 must keep only the top token here"
        );
    }
    let mut greedy = Sampler::new(SamplingConfig::default());
    assert_eq!(greedy.sample(&logits), 1);
}

#[test]
fn save_then_load_round_trips() {
    let mut cfg = small_config();
    cfg.tie_word_embeddings = true;
    cfg.attention_bias = true;
    cfg.rope.scaling = RopeScaling::Linear { factor: 2.0 };
    let m = model(cfg);
    let dir = std::env::temp_dir().join(format!("e2llm-roundtrip-{}", std::process::id()));
    checkpoint::save_dir(&m, &dir).expect("save");
    let back = checkpoint::load_dir(&dir, &Device::flex()).expect("load");
    assert_eq!(back.config, m.config);
    let p = Positions::contiguous(1, 6, 0, 1.0);
    let a = to_vec(m.forward(&ids(6), &p, None).expect("f"));
    let b = to_vec(back.forward(&ids(6), &p, None).expect("f"));
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_files_give_clear_errors() {
    let m = model(small_config());
    let dir = std::env::temp_dir().join(format!("e2llm-bad-{}", std::process::id()));
    checkpoint::save_dir(&m, &dir).expect("save");
    let weights_path = dir.join("model.safetensors");
    let good = std::fs::read(&weights_path).expect("read");

    // Truncated weights.
    std::fs::write(&weights_path, &good[..good.len() / 2]).expect("write");
    let e = checkpoint::load_dir(&dir, &Device::flex()).expect_err("truncated");
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Config that disagrees with the weights.
    std::fs::write(&weights_path, &good).expect("write");
    let mut cfg = m.config.clone();
    cfg.hidden_size = 40;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg.to_json_value()).expect("json"),
    )
    .expect("write");
    let e = checkpoint::load_dir(&dir, &Device::flex()).expect_err("shape");
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");
    assert!(e.to_string().contains("model.embed_tokens.weight"), "{e}");

    // A missing tensor.
    let mut cfg = m.config.clone();
    cfg.num_hidden_layers = 3;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg.to_json_value()).expect("json"),
    )
    .expect("write");
    let e = checkpoint::load_dir(&dir, &Device::flex()).expect_err("missing");
    assert!(e.to_string().contains("model.layers.2."), "{e}");

    // Broken JSON.
    std::fs::write(dir.join("config.json"), "{ not json").expect("write");
    let e = checkpoint::load_dir(&dir, &Device::flex()).expect_err("json");
    assert!(e.to_string().contains("config.json"), "{e}");

    // Out-of-vocabulary token id.
    let e = m
        .forward(&[999], &Positions::contiguous(1, 1, 0, 1.0), None)
        .expect_err("oov");
    assert!(e.to_string().contains("999"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Full softmax weights of `head` in `layer`, `[n, n]` row-major, by plain burn ops on the
/// model's own layers (the independent reference for `Llama::attention_map`).
fn reference_weights(
    model: &Llama,
    ids: &[u32],
    pos: &[f32],
    g: f32,
    layer: usize,
    head: usize,
) -> Vec<f32> {
    use burn::tensor::{activation, Bool, Int, Tensor, TensorData};
    use e2llm_model::attention::repeat_kv;
    use e2llm_model::rope::RopeTables;
    // Log-n scaling, written out here: a query at position p counts as the (p + 1)-th key
    // (p before dividing by g, rounded down; in a plain prompt, the keys it sees).
    let base = model.config.max_position_embeddings as f64;
    let factors: Vec<f32> = (pos.iter())
        .map(|&p| (p.floor() as f64 + 1.0, model.logn()))
        .map(|(keys, on)| match on && keys > base {
            true => (keys.ln() / base.ln()) as f32,
            false => 1.0,
        })
        .collect();
    let cfg = &model.config;
    let (n, d) = (ids.len(), cfg.head_dim());
    let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let device = model.device();
    let positions = Positions::row(pos.to_vec(), g);
    let mut rope = RopeTables::new(
        &cfg.rope,
        d,
        cfg.max_position_embeddings,
        &positions,
        &device,
    );
    let factors_t = Tensor::<1>::from_data(TensorData::new(factors, [n]), &device);
    // The layers below see the same scaling (checked on its own by the log-n tests).
    rope.q_scale = model.logn().then(|| factors_t.clone().reshape([1, n]));
    let ids_t = Tensor::<1, Int>::from_data(
        TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]),
        &device,
    );
    let mut x = model
        .embed_tokens
        .val()
        .select(0, ids_t)
        .reshape([1, n, cfg.hidden_size]);
    for l in &model.layers[..layer] {
        x = l.forward(x, &rope, None, Default::default());
    }
    let l = &model.layers[layer];
    let x = l.input_layernorm.forward(x);
    let q = l
        .self_attn
        .q_proj
        .forward(x.clone())
        .reshape([1, n, h, d])
        .swap_dims(1, 2)
        * factors_t.reshape([1, 1, n, 1]);
    let k = l
        .self_attn
        .k_proj
        .forward(x)
        .reshape([1, n, kvh, d])
        .swap_dims(1, 2);
    let k = repeat_kv(rope.apply(k), h / kvh);
    let scores = rope.apply(q).matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let mask = Tensor::<2, Bool>::tril_mask([n, n], 0, &device)
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([1, h, n, n]);
    let p = activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    to_vec(p.narrow(1, head, 1))
}

#[test]
fn attention_map_pools_the_softmax_weights_of_the_plain_path() {
    use e2llm_model::MapSpec;
    let mut short = small_config();
    short.max_position_embeddings = 16;
    let n = 37;
    let ids = ids(n);
    // Fractional, offset positions read at g = 4, as an extended model reads a long prompt.
    let pos: Vec<f32> = (0..n).map(|i| 3.0 + 1.5 * i as f32).collect();
    let g = 4.0;
    // Plain, and with log-n scaling where 37 tokens are past the model's L = 16.
    for (model, layer, head) in [
        (model(small_config()), 0, 1),
        (model(small_config()), 1, 3),
        (model(short.clone()).with_logn(true), 1, 2),
    ] {
        let full = reference_weights(&model, &ids, &pos, g, layer, head);
        for spec in [
            MapSpec::whole(layer, head, n, 64),
            MapSpec {
                layer,
                head,
                row0: 5,
                nrows: 25,
                out_rows: 7,
                out_cols: 10,
            },
            MapSpec::last_row(layer, head, n, 12),
        ] {
            // chunk 8: the layers below run through the cache in pieces.
            let img = model.attention_map(&ids, &pos, g, &spec, 8).expect("map");
            assert_eq!(
                (img.rows, img.cols, img.data.len()),
                (spec.out_rows, spec.out_cols, spec.out_rows * spec.out_cols)
            );
            for r in 0..img.rows {
                let rows = spec.row0 + r * spec.nrows / img.rows
                    ..spec.row0 + (r + 1) * spec.nrows / img.rows;
                let mut sum = 0.0;
                for c in 0..img.cols {
                    let keys = c * n / img.cols..(c + 1) * n / img.cols;
                    let want: f32 = rows
                        .clone()
                        .map(|i| keys.clone().map(|j| full[i * n + j]).sum::<f32>())
                        .sum::<f32>()
                        / rows.len() as f32;
                    let got = img.at(r, c);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{spec:?} cell ({r},{c}): {got} vs {want}"
                    );
                    sum += got;
                }
                assert!((sum - 1.0).abs() < 1e-4, "{spec:?} row {r} sums to {sum}");
            }
        }
    }
}

/// `last_row_attention`: every head's last row, from one pass, equals the reference softmax
/// (plain, and with log-n past a short L).
#[test]
fn last_row_attention_is_every_heads_softmax_row() {
    let mut short = small_config();
    short.max_position_embeddings = 16;
    let n = 29;
    let ids = ids(n);
    let pos: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let g = 3.0;
    for (model, layer) in [
        (model(small_config()), 1),
        (model(short).with_logn(true), 0),
    ] {
        let rows = model
            .last_row_attention(&ids, &pos, g, layer, 8)
            .expect("rows");
        assert_eq!(rows.len(), model.config.num_attention_heads);
        for (head, row) in rows.iter().enumerate() {
            let full = reference_weights(&model, &ids, &pos, g, layer, head);
            let want = &full[(n - 1) * n..];
            assert_eq!(row.len(), n);
            let err = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "layer {layer} head {head}: {err}");
        }
    }
    let e = model(small_config())
        .last_row_attention(&ids, &pos, g, 9, 8)
        .expect_err("no layer 9");
    assert!(e.to_string().contains("layer 9"), "{e}");
}

/// Every attention path log-n runs through: plain ops and the kernels' CPU twins on flex, and
/// the WGSL kernel where a wgpu adapter exists.
fn attention_paths() -> Vec<(Device, e2llm_model::Kernels)> {
    use e2llm_model::Kernels;
    let mut paths = vec![
        (Device::flex(), Kernels::Reference),
        (Device::flex(), Kernels::Fused),
    ];
    match e2llm_model::backend::open("wgpu") {
        Ok(d) => paths.push((d, Kernels::Fused)),
        Err(e) => eprintln!("wgpu part skipped: no adapter ({e})"),
    }
    paths
}

/// A one-layer model with its `q_proj` weight multiplied by `f`: its last token's logits are
/// those of the same query scaled by `f`, log-n's definition written out.
fn with_q_scaled(m: &Llama, f: f32) -> Llama {
    let mut scaled = m.clone();
    let w = scaled.layers[0].self_attn.q_proj.weight.val();
    scaled.layers[0].self_attn.q_proj.weight = burn::module::Param::from_tensor(w * f);
    scaled
}

/// Log-n scaling against its definition: in a one-layer model the last token's logits depend
/// on its own query alone, so scaling that query by ln(n)/ln(L) equals scaling `q_proj`'s
/// weight. Plain ops, the kernels' CPU twins, and the WGSL kernel where an adapter exists.
#[test]
fn logn_scaling_multiplies_a_querys_logits_by_ln_n_over_ln_l() {
    let mut cfg = small_config();
    cfg.num_hidden_layers = 1;
    cfg.max_position_embeddings = 16;
    let n = 40;
    let ids = ids(n);
    let vocab = cfg.vocab_size;
    let want_factor = ((n as f64).ln() / 16f64.ln()) as f32;
    for (device, kernels) in attention_paths() {
        let m = weights::init_random(cfg.clone(), 0.3, 7, &device).with_kernels(kernels);
        let pos = Positions::contiguous(1, n, 0, 2.0);
        let logits = |m: &Llama| to_vec(m.forward(&ids, &pos, None).expect("forward"));
        let off = logits(&m);
        let on = logits(&m.clone().with_logn(true));
        let want = logits(&with_q_scaled(&m, want_factor));
        let last = (n - 1) * vocab..n * vocab;
        let d = max_diff(&on[last.clone()], &want[last.clone()]);
        assert!(
            d < 1e-4,
            "{kernels} on {device:?}: log-n logits differ by {d}"
        );
        assert!(
            max_diff(&on[last.clone()], &off[last]) > 1e-3,
            "{kernels}: log-n scaling changed nothing"
        );
        // Queries that see at most L keys are untouched.
        let inside = 0..16 * vocab;
        let d = max_diff(&on[inside.clone()], &off[inside]);
        assert!(d < 1e-6, "{kernels}: log-n changed a query inside L by {d}");
    }
}

/// In a batch, each query's log-n factor follows its own row's positions (before dividing by
/// `g`), as in an E²-LLM training row whose gap makes it stand for a longer prompt: each
/// row's last-token logits equal that row alone through a one-layer model whose `q_proj` is
/// scaled by `ln(p + 1) / ln(L)` for the row's last position `p`, written out here.
#[test]
fn logn_scaling_follows_each_rows_positions() {
    let mut cfg = small_config();
    cfg.num_hidden_layers = 1;
    cfg.max_position_embeddings = 16;
    let n = 12;
    let vocab = cfg.vocab_size;
    let ids = ids(2 * n);
    // Row 0: 4 kept tokens, then a gap (E²-LLM-style), g = 5; row 1: contiguous from 20, g = 2.
    let row0: Vec<f32> = (0..4).chain(60..68).map(|p| p as f32).collect();
    let row1: Vec<f32> = (20..32).map(|p| p as f32).collect();
    let (g0, g1) = (5.0, 2.0);
    let factor = |last: f32| ((last as f64 + 1.0).ln() / 16f64.ln()) as f32;
    for (device, kernels) in attention_paths() {
        let m = weights::init_random(cfg.clone(), 0.3, 7, &device).with_kernels(kernels);
        let on = m.clone().with_logn(true);
        let batch = Positions {
            pos: row0.iter().chain(&row1).copied().collect(),
            scale: vec![g0, g1],
            batch: 2,
        };
        let both = to_vec(on.forward(&ids, &batch, None).expect("batch"));
        for (r, (pos, g)) in [(&row0, g0), (&row1, g1)].into_iter().enumerate() {
            let scaled = with_q_scaled(&m, factor(pos[n - 1]));
            let row_ids = &ids[r * n..(r + 1) * n];
            let want = to_vec(
                (scaled.forward(row_ids, &Positions::row(pos.clone(), g), None)).expect("row"),
            );
            let plain =
                to_vec((m.forward(row_ids, &Positions::row(pos.clone(), g), None)).expect("row"));
            let last = (n - 1) * vocab..n * vocab;
            let got = &both[(r * n + n - 1) * vocab..(r * n + n) * vocab];
            let d = max_diff(got, &want[last.clone()]);
            assert!(d < 1e-4, "{kernels} on {device:?}, row {r}: differs by {d}");
            assert!(
                max_diff(got, &plain[last]) > 1e-3,
                "{kernels}, row {r}: log-n changed nothing"
            );
        }
    }
}

/// With log-n on, each query's factor follows its absolute index through the KV cache:
/// chunked prefill and token-by-token decode equal one full forward.
#[test]
fn logn_scaling_through_the_cache_equals_the_full_forward() {
    use e2llm_model::Kernels;
    let mut cfg = small_config();
    cfg.max_position_embeddings = 16;
    let n = 40;
    let ids = ids(n);
    let vocab = cfg.vocab_size;
    for kernels in [Kernels::Reference, Kernels::Fused] {
        let m = model(cfg.clone()).with_kernels(kernels).with_logn(true);
        let g = 3.0;
        let full = to_vec(
            m.forward(&ids, &Positions::contiguous(1, n, 0, g), None)
                .expect("forward"),
        );
        let pos: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut cache = KvCache::new(m.layers.len());
        let last = m
            .prefill(&ids, &pos, g, &mut cache, 7, |_, _| {})
            .expect("prefill");
        let d = max_diff(&full[(n - 1) * vocab..], &to_vec(last));
        assert!(d < 1e-4, "{kernels}: chunked prefill differs by {d}");
        let mut cache = KvCache::new(m.layers.len());
        let mut stepwise = to_vec(
            m.forward(
                &ids[..10],
                &Positions::row(pos[..10].to_vec(), g),
                Some(&mut cache),
            )
            .expect("prefill"),
        );
        stepwise.extend(decode_steps(&m, &ids, &pos, g, 10..n, &mut cache));
        assert_eq!(cache.len(), n, "{kernels}: the cache holds every token");
        let d = max_diff(&full, &stepwise);
        assert!(d < 1e-4, "{kernels}: cached decode differs by {d}");
    }
}

#[test]
fn attention_map_rejects_what_does_not_fit() {
    use e2llm_model::MapSpec;
    let model = model(small_config());
    let ids = ids(10);
    let pos: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let err = |spec: MapSpec| {
        model
            .attention_map(&ids, &pos, 1.0, &spec, 4)
            .expect_err("must fail")
            .to_string()
    };
    assert!(err(MapSpec::whole(2, 0, 10, 8)).contains("layer 2 does not exist"));
    assert!(err(MapSpec::whole(0, 4, 10, 8)).contains("head 4 does not exist"));
    assert!(err(MapSpec {
        layer: 0,
        head: 0,
        row0: 8,
        nrows: 4,
        out_rows: 1,
        out_cols: 1
    })
    .contains("outside the prompt"));
    assert!(err(MapSpec {
        layer: 0,
        head: 0,
        row0: 0,
        nrows: 4,
        out_rows: 5,
        out_cols: 1
    })
    .contains("does not fit"));
}

#[test]
fn attention_map_on_the_gpu_kernel_equals_its_cpu_twin() {
    use e2llm_model::{kernels::Gpu, MapBackend, MapSpec};
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            return;
        }
    };
    let model = model(small_config());
    let n = 45;
    let ids = ids(n);
    let pos: Vec<f32> = (0..n).map(|i| 2.0 + 1.25 * i as f32).collect();
    for (g, spec) in [
        (1.0, MapSpec::whole(1, 2, n, 16)),
        (
            8.0,
            MapSpec {
                layer: 0,
                head: 3,
                row0: 10,
                nrows: 30,
                out_rows: 6,
                out_cols: 9,
            },
        ),
        (3.0, MapSpec::last_row(1, 0, n, 20)),
    ] {
        let cpu = model
            .attention_map(&ids, &pos, g, &spec, 16)
            .expect("cpu map");
        let on_gpu = model
            .attention_map_on(&ids, &pos, g, &spec, 16, MapBackend::Gpu(&gpu))
            .expect("gpu map");
        let d = max_diff(&cpu.data, &on_gpu.data);
        assert!(d < 1e-4, "{spec:?} at g {g}: GPU vs CPU differ by {d}");
    }
}

#[test]
fn a_refused_allocation_reads_as_one_line() {
    use e2llm_model::backend::{describe_failure, refused_buffer_mib};
    // The shape of cubecl's error chain when wgpu refuses a buffer.
    let chain = "An error happened during execution\nCaused by:\n  Several failures at once\n\
                 Caused by:\n  An IO error happened\nCaused by:\n  can't allocate buffer of size: 268435456";
    assert_eq!(refused_buffer_mib(chain), Some(256));
    assert_eq!(refused_buffer_mib("shader compilation failed"), None);
    // burn's execution errors print their chain line by line through `Debug`.
    struct Chain(&'static str);
    impl std::fmt::Debug for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    let line = describe_failure(&Chain(chain));
    assert!(line.contains("256 MiB") && !line.contains('\n'), "{line}");
    let other = describe_failure(&Chain("lost the device\nmore"));
    assert!(
        other.contains("lost the device") && !other.contains("more"),
        "{other}"
    );
}

/// The CPU device, and burn's wgpu device when an adapter starts (else a "skipped" line).
fn flex_and_wgpu() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("flex", Device::flex())];
    match e2llm_model::backend::open("wgpu") {
        Ok(d) => devices.push(("wgpu", d)),
        Err(e) => eprintln!("wgpu part skipped: no adapter ({e})"),
    }
    devices
}

/// An f16 KV cache (`Llama::with_kv_cache`): half the bytes, and logits within f16 rounding of
/// the f32 cache's through a chunked prefill and decode steps — on both attention paths, on flex
/// and (when there is an adapter with shader-f16) on wgpu, where the fused kernel reads the f16
/// keys and values itself. The difference must also be non-zero: the cache really is rounded.
#[test]
fn an_f16_kv_cache_halves_the_bytes_and_keeps_the_logits() {
    use e2llm_model::{Kernels, Precision};
    let cfg = small_config();
    let n = 40;
    let ids = ids(n);
    let pos: Vec<f32> = (0..n).map(|i| i as f32 * 2.0).collect();
    let g = 2.0;
    for (name, device) in flex_and_wgpu() {
        if !device.supports_dtype(burn::tensor::DType::F16) {
            eprintln!("{name} part skipped: the device has no f16 (shader-f16)");
            continue;
        }
        for kernels in [Kernels::Reference, Kernels::Fused] {
            let run = |kv: Precision| {
                let m = weights::init_random(cfg.clone(), 0.2, 7, &device)
                    .with_kernels(kernels)
                    .with_kv_cache(kv)
                    .expect("device has f16");
                let mut cache = KvCache::new(m.layers.len());
                let mut out = to_vec(
                    m.prefill(&ids[..30], &pos[..30], g, &mut cache, 7, |_, _| {})
                        .expect("prefill"),
                );
                out.extend(decode_steps(&m, &ids, &pos, g, 30..n, &mut cache));
                (out, cache.bytes())
            };
            let (full, full_bytes) = run(Precision::F32);
            let (half, half_bytes) = run(Precision::F16);
            // 2 layers × (k + v) × 40 tokens × 2 kv heads × 8 dims × 4 bytes.
            assert_eq!(full_bytes, 2 * 2 * n * 2 * 8 * 4, "{name} {kernels}");
            assert_eq!(half_bytes * 2, full_bytes, "{name} {kernels}");
            let scale = full.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&full, &half);
            eprintln!(
                "{name} {kernels}: f16 cache logits differ by {d:.2e} (|logits| ≤ {scale:.2})"
            );
            assert!(d > 0.0, "{name} {kernels}: the f16 cache changed nothing");
            // f16 keeps 11 significant bits (2^-11 ≈ 4.9e-4 relative per value); through two
            // layers the logits stay within a few times that.
            assert!(
                d < 4e-3 * scale.max(1.0),
                "{name} {kernels}: differs by {d}"
            );
        }
    }
}

/// A fused KV cache in pages (`Llama::with_kv_page_bytes`: 256-key pages here, as a cache past
/// the device's largest binding is kept) gives the logits of one unpaged cache: a chunked
/// prefill of 700 tokens (chunks of 100, so chunks straddle pages) and decode steps, f32 and
/// f16, on flex (pages joined) and on wgpu (each dispatch binds one page).
#[test]
fn a_paged_kv_cache_equals_one_tensor() {
    use e2llm_model::{Kernels, Precision};
    let cfg = small_config();
    let n = 700;
    let ids = ids(n);
    let pos: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let g = 8.0;
    for (name, device) in flex_and_wgpu() {
        for kv in [Precision::F32, Precision::F16] {
            if !device.supports_dtype(kv.dtype()) {
                eprintln!("{name} {kv} skipped: the device has no {kv}");
                continue;
            }
            // (prefill chunk, tokens prefilled before the decode steps): chunks straddling pages;
            // and chunks of exactly one page, then decode steps across a page boundary (the open
            // page full when the next token comes).
            for (chunk, prefilled, full_pages) in [(100, 695, 2), (256, 511, 2)] {
                let steps = if chunk == 100 { n } else { 520 };
                let run = |page_bytes: Option<u64>| {
                    let m = weights::init_random(cfg.clone(), 0.2, 7, &device)
                        .with_kernels(Kernels::Fused)
                        .with_kv_cache(kv)
                        .expect("device has the dtype")
                        .with_kv_page_bytes(page_bytes);
                    let mut cache = KvCache::new(m.layers.len());
                    let mut out = to_vec(
                        m.prefill(
                            &ids[..prefilled],
                            &pos[..prefilled],
                            g,
                            &mut cache,
                            chunk,
                            |_, _| {},
                        )
                        .expect("prefill"),
                    );
                    out.extend(decode_steps(
                        &m,
                        &ids,
                        &pos,
                        g,
                        prefilled..steps,
                        &mut cache,
                    ));
                    assert_eq!(cache.len(), steps);
                    (out, cache.pages(), cache.bytes())
                };
                // One key: 2 kv heads × 8 dims × (4 or 2) bytes; pages of 256 keys.
                let key_bytes = (2 * 8 * kv.bytes()) as u64;
                let (one, one_pages, one_bytes) = run(Some(1 << 30));
                let (paged, pages, bytes) = run(Some(256 * key_bytes));
                assert_eq!(
                    (one_pages, pages),
                    (0, full_pages),
                    "{name} {kv}: {steps} keys in pages of 256"
                );
                assert_eq!(one_bytes, bytes, "{name} {kv}");
                let d = max_diff(&one, &paged);
                eprintln!("{name} {kv} chunk {chunk}: paged cache logits differ by {d:.2e}");
                assert!(d < 1e-5, "{name} {kv} chunk {chunk}: paged differs by {d}");
            }
        }
    }
}

#[test]
fn averaging_checkpoints_is_the_mean_of_their_weights() {
    let cfg = small_config();
    let seeds = [3u64, 5, 11];
    let root = std::env::temp_dir().join(format!("e2llm-average-{}", std::process::id()));
    let dirs: Vec<std::path::PathBuf> = seeds.iter().map(|s| root.join(format!("m{s}"))).collect();
    let models: Vec<Llama> = seeds
        .iter()
        .map(|&s| weights::init_random(cfg.clone(), 0.2, s, &Device::flex()))
        .collect();
    for (m, d) in models.iter().zip(&dirs) {
        checkpoint::save_dir(m, d).expect("save");
    }
    let refs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let avg = checkpoint::average_dirs(&refs, &Device::flex()).expect("average");

    // The reference: every tensor's mean computed here from the models themselves.
    let hosts: Vec<_> = models
        .iter()
        .map(|m| weights::to_host(m).expect("host"))
        .collect();
    let got = weights::to_host(&avg).expect("host");
    assert_eq!(got.len(), hosts[0].len());
    for (i, (name, shape, values)) in got.iter().enumerate() {
        assert_eq!((name, shape), (&hosts[0][i].0, &hosts[0][i].1));
        let mean: Vec<f32> = (0..values.len())
            .map(|k| hosts.iter().map(|h| h[i].2[k]).sum::<f32>() / 3.0)
            .collect();
        assert!(max_diff(values, &mean) < 1e-6, "{name}");
        // Not one of the inputs where they differ (random weights; the norms start at 1).
        if max_diff(&hosts[0][i].2, &hosts[1][i].2) > 0.0 {
            assert!(max_diff(values, &hosts[0][i].2) > 1e-3, "{name}");
        }
    }
    assert_eq!(avg.config, models[0].config);

    // A checkpoint of another shape is one clear error naming it.
    let mut other = cfg.clone();
    other.intermediate_size = 40;
    let odd = root.join("odd");
    checkpoint::save_dir(&model(other), &odd).expect("save");
    let e = checkpoint::average_dirs(&[refs[0], &odd], &Device::flex()).expect_err("shape");
    assert!(matches!(e, ModelError::Average { .. }), "{e}");
    assert!(e.to_string().contains("odd"), "{e}");
    let e = checkpoint::average_dirs(&[], &Device::flex()).expect_err("none");
    assert!(e.to_string().contains("no model directories"), "{e}");

    // A later checkpoint that lacks a tensor (written by hand: one tensor left out).
    let short = root.join("short");
    std::fs::create_dir_all(&short).expect("mkdir");
    std::fs::copy(dirs[1].join("config.json"), short.join("config.json")).expect("copy");
    let host = weights::to_host(&models[1]).expect("host");
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = host
        .iter()
        .filter(|(n, _, _)| n != "model.norm.weight")
        .map(|(n, sh, v)| {
            (
                n.clone(),
                sh.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, sh, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                .expect("view");
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &short.join("model.safetensors")).expect("write");
    let e = checkpoint::average_dirs(&[refs[0], &short], &Device::flex()).expect_err("missing");
    assert!(matches!(e, ModelError::Average { .. }), "{e}");
    assert!(
        e.to_string().contains("model.norm.weight") && e.to_string().contains("short"),
        "{e}"
    );

    // Configs that differ outside the tensors are listed.
    let mut scaled = cfg.clone();
    scaled.rope.scaling = RopeScaling::Linear { factor: 2.0 };
    assert_eq!(
        checkpoint::config_differences(&cfg, &scaled),
        ["rope_scaling"]
    );
    assert!(checkpoint::config_differences(&cfg, &cfg).is_empty());
    std::fs::remove_dir_all(&root).ok();
}

/// Teacher-forced log-probabilities through a read prompt's cache equal the log-softmax of one
/// full forward over prompt + target, and scoring leaves the read prompt as it was: greedy
/// generation after it equals `generate` from scratch.
#[test]
fn continuation_logprobs_equal_the_full_forwards_log_softmax() {
    use e2llm_model::generate::{continuation_logprobs, generate_after, log_prob, read_prompt};
    use e2llm_model::Kernels;
    let mut cfg = small_config();
    cfg.max_position_embeddings = 16;
    let (n, k) = (30, 5);
    let all = ids(n + k);
    let (prompt, target) = all.split_at(n);
    let vocab = cfg.vocab_size;
    let g = 2.0;
    for kernels in [Kernels::Reference, Kernels::Fused] {
        let m = model(cfg.clone()).with_kernels(kernels).with_logn(true);
        let full = to_vec(
            m.forward(&all, &Positions::contiguous(1, n + k, 0, g), None)
                .expect("forward"),
        );
        // Row i's logits predict token i + 1.
        let want: Vec<f64> = (0..k)
            .map(|j| {
                let row = n - 1 + j;
                log_prob(&full[row * vocab..(row + 1) * vocab], target[j])
            })
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 6,
            rope_scale: g,
            prefill_chunk: 8,
            ..GenerateOptions::default()
        };
        let read = read_prompt(&m, prompt, &opts).expect("read");
        let got = continuation_logprobs(&m, &read, target, g).expect("score");
        assert_eq!(got.len(), k);
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4, "{kernels}: token {j}: {a} vs {b}");
            assert!(*a < 0.0, "a log-probability is negative");
        }
        assert_eq!(read.cache.len(), n, "{kernels}: scoring leaves the cache");
        let after = generate_after(&m, read, &opts, |_| true).expect("generate");
        let fresh = generate(&m, prompt, &opts, |_| true).expect("generate");
        assert_eq!(after, fresh, "{kernels}: generation after scoring");
        let err = continuation_logprobs(
            &m,
            &read_prompt(&m, prompt, &opts).expect("read"),
            &[vocab as u32],
            g,
        )
        .expect_err("out of vocabulary");
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }
}
