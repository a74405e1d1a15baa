//! HF safetensors in and out, under HF tensor names, from files or from bytes (the web build
//! has no filesystem).

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use e2llm_core::LlamaConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::attention::{Attention, Kernels, Precision};
use crate::error::{ModelError, Result};
use crate::layers::{Linear, Mlp, RmsNorm};
use crate::llama::{DecoderLayer, Llama};

/// Every tensor a Llama with `cfg` has, with its HF name and shape, in HF's order.
pub fn tensor_specs(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (hid, inter, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut specs = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, hid],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut lin = |name: &str, out: usize, inp: usize, bias: bool| {
            specs.push((format!("{p}.{name}.weight"), vec![out, inp]));
            if bias {
                specs.push((format!("{p}.{name}.bias"), vec![out]));
            }
        };
        lin("self_attn.q_proj", q, hid, cfg.attention_bias);
        lin("self_attn.k_proj", kv, hid, cfg.attention_bias);
        lin("self_attn.v_proj", kv, hid, cfg.attention_bias);
        lin("self_attn.o_proj", hid, q, cfg.attention_bias);
        lin("mlp.gate_proj", inter, hid, cfg.mlp_bias);
        lin("mlp.up_proj", inter, hid, cfg.mlp_bias);
        lin("mlp.down_proj", hid, inter, cfg.mlp_bias);
        specs.push((format!("{p}.input_layernorm.weight"), vec![hid]));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![hid]));
    }
    specs.push(("model.norm.weight".to_string(), vec![hid]));
    if !cfg.tie_word_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, hid]));
    }
    specs
}

/// Host copies of the weights, by HF name: `(shape, values)`.
pub type HostWeights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Decodes one safetensors file (already in memory) into f32 host tensors.
///
/// `file` names the source in error messages. Tensors HF checkpoints carry but that the
/// computation does not use (`*.rotary_emb.inv_freq`) are skipped.
pub fn decode_safetensors(file: &str, bytes: &[u8], out: &mut HostWeights) -> Result<()> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    for (name, view) in st.tensors() {
        if name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    file: file.to_string(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(())
}

/// Reads the shard list of a sharded checkpoint (`model.safetensors.index.json`).
pub fn shard_files(index_file: &str, index_json: &str) -> Result<Vec<String>> {
    let bad = |reason: String| ModelError::Index {
        file: index_file.to_string(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{name}` is not a file name")))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(bad(format!("shard name `{f}` must be a plain file name")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    Ok(files)
}

/// Builds the model from host weights, checking every name and shape against the config.
pub fn from_host(
    config: LlamaConfig,
    weights: HostWeights,
    source: &str,
    device: &Device,
) -> Result<Llama> {
    from_host_as(config, weights, source, device, Precision::F32)
}

/// [`from_host`] with the weights stored on the device as `precision` (f16: rounded once here,
/// half the device memory; the forward widens each where it is used). An error when the device
/// has no f16.
pub fn from_host_as(
    config: LlamaConfig,
    mut weights: HostWeights,
    source: &str,
    device: &Device,
    precision: Precision,
) -> Result<Llama> {
    precision.check_on(device, "weights")?;
    let specs = tensor_specs(&config);
    let mut take = |name: &str, shape: &[usize]| -> Result<TensorData> {
        let (found, values) = weights
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: source.to_string(),
                name: name.to_string(),
            })?;
        if found != shape {
            return Err(ModelError::Shape {
                file: source.to_string(),
                name: name.to_string(),
                found,
                expected: shape.to_vec(),
            });
        }
        Ok(TensorData::new(values, shape.to_vec()))
    };
    let mut tensors: HashMap<String, TensorData> = HashMap::new();
    for (name, shape) in &specs {
        tensors.insert(name.clone(), take(name, shape)?);
    }
    if let Some(name) = weights.keys().min() {
        return Err(ModelError::UnexpectedTensor {
            file: source.to_string(),
            name: name.clone(),
        });
    }
    Ok(assemble(config, tensors, device, precision))
}

/// Moves checked host tensors onto the device as parameters.
struct Take<'a> {
    t: HashMap<String, TensorData>,
    device: &'a Device,
    precision: Precision,
}

impl Take<'_> {
    // `from_host` checked that every name in `tensor_specs` is present with its shape.
    fn data(&mut self, n: &str) -> TensorData {
        self.t.remove(n).expect("tensor checked against specs")
    }
    // Created in the storage precision directly (no f32 copy on the device first).
    fn p1(&mut self, n: &str) -> Param<Tensor<1>> {
        let d = self.data(n);
        Param::from_tensor(Tensor::from_data(d, (self.device, self.precision.dtype())))
    }
    fn p2(&mut self, n: &str) -> Param<Tensor<2>> {
        let d = self.data(n);
        Param::from_tensor(Tensor::from_data(d, (self.device, self.precision.dtype())))
    }
    fn lin(&mut self, n: &str) -> Linear {
        let bias = format!("{n}.bias");
        Linear {
            weight: self.p2(&format!("{n}.weight")),
            bias: self.t.contains_key(&bias).then(|| self.p1(&bias)),
        }
    }
    fn norm(&mut self, n: &str, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: self.p1(&format!("{n}.weight")),
            eps,
        }
    }
}

fn assemble(
    config: LlamaConfig,
    t: HashMap<String, TensorData>,
    device: &Device,
    precision: Precision,
) -> Llama {
    let mut t = Take {
        t,
        device,
        precision,
    };
    let eps = config.rms_norm_eps;
    let layers = (0..config.num_hidden_layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            DecoderLayer {
                input_layernorm: t.norm(&format!("{p}.input_layernorm"), eps),
                self_attn: Attention {
                    q_proj: t.lin(&format!("{p}.self_attn.q_proj")),
                    k_proj: t.lin(&format!("{p}.self_attn.k_proj")),
                    v_proj: t.lin(&format!("{p}.self_attn.v_proj")),
                    o_proj: t.lin(&format!("{p}.self_attn.o_proj")),
                    n_heads: config.num_attention_heads,
                    n_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim(),
                },
                post_attention_layernorm: t.norm(&format!("{p}.post_attention_layernorm"), eps),
                mlp: Mlp {
                    gate_proj: t.lin(&format!("{p}.mlp.gate_proj")),
                    up_proj: t.lin(&format!("{p}.mlp.up_proj")),
                    down_proj: t.lin(&format!("{p}.mlp.down_proj")),
                },
            }
        })
        .collect();
    let lm_head = (!config.tie_word_embeddings).then(|| t.lin("lm_head"));
    Llama {
        embed_tokens: t.p2("model.embed_tokens.weight"),
        layers,
        norm: t.norm("model.norm", eps),
        lm_head,
        config,
        kernels: Kernels::Auto,
        kv_cache: Default::default(),
        kv_page_bytes: None,
    }
}

/// A freshly initialised model: normal(0, `std`) matrices, zero biases, unit norms (HF's
/// `_init_weights` with `initializer_range = std`), seeded.
pub fn init_random(config: LlamaConfig, std: f32, seed: u64, device: &Device) -> Llama {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut host = HostWeights::new();
    for (name, shape) in tensor_specs(&config) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n)
                .map(|_| {
                    // Box–Muller: two uniforms → one standard normal.
                    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                    let u2: f32 = rng.random();
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        host.insert(name, (shape, values));
    }
    from_host(config, host, "<random init>", device).expect("specs are self-consistent")
}

/// One weight on the host: HF name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// `t` on the host under `name`, with its shape (a device failure is one error line).
fn named<const D: usize>(name: String, t: Tensor<D>) -> Result<NamedTensor> {
    let shape = t.dims().to_vec();
    Ok((name, shape, crate::backend::read_f32(t)?))
}

/// Reads every weight back to the host, by HF name, in `tensor_specs` order.
pub fn to_host(model: &Llama) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::new();
    let lin = |l: &Linear| (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
    out.push(named(
        "model.embed_tokens.weight".into(),
        model.embed_tokens.val(),
    )?);
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        let m = &layer.mlp;
        for (name, l) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ] {
            let (w, b) = lin(l);
            out.push(named(format!("{p}.{name}.weight"), w)?);
            if let Some(b) = b {
                out.push(named(format!("{p}.{name}.bias"), b)?);
            }
        }
        out.push(named(
            format!("{p}.input_layernorm.weight"),
            layer.input_layernorm.weight.val(),
        )?);
        out.push(named(
            format!("{p}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.weight.val(),
        )?);
    }
    out.push(named("model.norm.weight".into(), model.norm.weight.val())?);
    if let Some(head) = &model.lm_head {
        out.push(named("lm_head.weight".into(), head.weight.val())?);
    }
    Ok(out)
}

/// Serialises the weights as one f32 safetensors file with HF names.
pub fn to_safetensors_bytes(model: &Llama) -> Result<Vec<u8>> {
    let host = to_host(model)?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = host
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Backend(format!("safetensors view for {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Safetensors {
        file: "<serialise>".into(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        // Closed at the end of this block, before the rename.
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
