//! AdamW (decoupled weight decay), warm-up + cosine schedule and global-norm clipping, over
//! parameters addressed by their HF names — so the optimizer moments are saved and resumed
//! under the same names as the weights (`{name}.exp_avg`, `{name}.exp_avg_sq`).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};
use e2llm_model::kernels::cpu::AdamWParams;
use e2llm_model::Llama;

use crate::error::Result;

/// Turns a burn module path (`layers.0.self_attn.q_proj.weight`) into the HF tensor name.
pub fn hf_name(path: &[String]) -> String {
    let p = path.join(".");
    match p.as_str() {
        "embed_tokens" => "model.embed_tokens.weight".into(),
        _ if p.starts_with("lm_head") => p,
        _ => format!("model.{p}"),
    }
}

/// Gradients of one backward pass (or the sum over accumulated micro-batches), flattened,
/// by HF name, on the inner (non-autodiff) backend.
#[derive(Debug, Default, Clone)]
pub struct NamedGrads {
    /// `name → [numel]`.
    pub grads: HashMap<String, Tensor<1>>,
}

struct GradCollector<'a> {
    path: Vec<String>,
    grads: &'a Gradients,
    out: &'a mut NamedGrads,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let n = g.shape().num_elements();
            let g = g.reshape([n]);
            let name = hf_name(&self.path);
            let sum = match self.out.grads.remove(&name) {
                Some(prev) => prev + g,
                None => g,
            };
            self.out.grads.insert(name, sum);
        }
    }
}

impl NamedGrads {
    /// Adds the gradients of `model`'s parameters in `grads` to this accumulator.
    pub fn accumulate(&mut self, model: &Llama, grads: &Gradients) {
        model.visit(&mut GradCollector {
            path: Vec::new(),
            grads,
            out: self,
        });
    }

    /// Adds `other`'s gradients to these (`self + other`, name by name).
    pub fn add(&mut self, other: NamedGrads) {
        for (name, g) in other.grads {
            let sum = match self.grads.remove(&name) {
                Some(prev) => prev + g,
                None => g,
            };
            self.grads.insert(name, sum);
        }
    }

    /// Multiplies every gradient by `s` (e.g. 1 / micro-batches).
    pub fn scale(&mut self, s: f32) {
        for g in self.grads.values_mut() {
            *g = g.clone() * s;
        }
    }

    /// The global L2 norm over all gradients (one read-back; a device failure is an error).
    pub fn global_norm(&self) -> Result<f32> {
        let mut names: Vec<&String> = self.grads.keys().collect();
        names.sort();
        let total = names
            .iter()
            .map(|n| self.grads[*n].clone().powi_scalar(2).sum())
            .reduce(|a, b| a + b);
        let Some(total) = total else { return Ok(0.0) };
        Ok(e2llm_model::backend::read_f32(total)?
            .first()
            .copied()
            .map_or(0.0, f32::sqrt))
    }
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only.
    pub weight_decay: f64,
}

/// First and second moments of every parameter, by HF name, flattened.
#[derive(Debug, Default, Clone)]
pub struct AdamW {
    /// `name → (exp_avg, exp_avg_sq)`, each `[numel]`.
    pub moments: HashMap<String, (Tensor<1>, Tensor<1>)>,
    /// Completed optimizer steps (the bias-correction counter).
    pub step: usize,
}

struct Stepper<'a> {
    path: Vec<String>,
    fused: bool,
    cfg: AdamWConfig,
    lr: f64,
    step: i32,
    grads: &'a NamedGrads,
    moments: &'a mut HashMap<String, (Tensor<1>, Tensor<1>)>,
}

impl ModuleMapper for Stepper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = hf_name(&self.path);
        let Some(g) = self.grads.grads.get(&name).cloned() else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let w = tensor.inner().reshape([n]);
        let (m, v) = match self.moments.remove(&name) {
            Some(mv) => mv,
            None => (g.zeros_like(), g.zeros_like()),
        };
        let c = self.cfg;
        let decay = if D >= 2 { c.weight_decay } else { 0.0 };
        let (w, m, v) = if self.fused {
            let p = AdamWParams {
                lr: self.lr as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                weight_decay: decay as f32,
                step: self.step,
            };
            e2llm_model::kernels::fused::adamw(w, g, m, v, p)
        } else {
            let m = m * c.beta1 + g.clone() * (1.0 - c.beta1);
            let v = v * c.beta2 + g.powi_scalar(2) * (1.0 - c.beta2);
            let bc1 = 1.0 - c.beta1.powi(self.step);
            let bc2 = 1.0 - c.beta2.powi(self.step);
            let update = (m.clone() / bc1) / ((v.clone() / bc2).sqrt() + c.eps);
            (w * (1.0 - self.lr * decay) - update * self.lr, m, v)
        };
        self.moments.insert(name, (m, v));
        let w = Tensor::from_inner(w.reshape(shape)).require_grad();
        Param::from_mapped_value(id, w, mapper)
    }
}

impl AdamW {
    /// One update of every parameter that has a gradient, at learning rate `lr` — in one
    /// `adamw.wgsl` kernel per parameter when the model runs the fused kernels.
    pub fn step(&mut self, model: Llama, grads: &NamedGrads, lr: f64, cfg: AdamWConfig) -> Llama {
        self.step += 1;
        let step = i32::try_from(self.step).unwrap_or(i32::MAX);
        let fused = model.fused_layers();
        model.map(&mut Stepper {
            path: Vec::new(),
            fused,
            cfg,
            lr,
            step,
            grads,
            moments: &mut self.moments,
        })
    }
}

/// Linear warm-up to `peak`, then cosine decay to `peak · min_ratio` at `total` steps.
/// `step` counts from 0.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| lr_at(s, 100, 10, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(55) - 0.55).abs() < 1e-12, "{}", lr(55));
        assert!((lr(100) - 0.1).abs() < 1e-12);
        assert!((1..100).all(|s| lr(s) <= lr(s.max(10) - if s > 10 { 1 } else { 0 }) + 1e-12));
    }

    #[test]
    fn hf_names_from_module_paths() {
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(hf_name(&p("embed_tokens")), "model.embed_tokens.weight");
        assert_eq!(
            hf_name(&p("layers.3.self_attn.q_proj.weight")),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(hf_name(&p("norm.weight")), "model.norm.weight");
        assert_eq!(hf_name(&p("lm_head.weight")), "lm_head.weight");
    }
}
