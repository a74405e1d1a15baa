//! The building blocks of a Llama decoder, with HF's tensor layouts.
//!
//! Weights keep HF's `[out_features, in_features]` layout so that loading and saving is a
//! straight copy under the same tensor name.

use burn::module::{Module, Param};
use burn::tensor::{activation, DType, Tensor};

/// `t` in f32: weights stored in f16 (`checkpoint::load_dir_as`) are widened where they are
/// used, so every computation stays f32; f32 weights pass through untouched.
pub fn f32_of<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// A dense layer `y = x · Wᵀ + b` with `W` in HF layout `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Param<Tensor<2>>,
    /// `[out_features]`, present when the config asks for biases.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Applies the layer to the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[..., in_features]`
    /// - output: `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        let n_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let w = f32_of(self.weight.val());
        let n_out = w.dims()[0];
        let mut y = x.reshape([rows, n_in]).matmul(w.transpose());
        if let Some(b) = &self.bias {
            y = y + f32_of(b.val()).unsqueeze_dim::<2>(0);
        }
        dims[D - 1] = n_out;
        y.reshape(dims)
    }
}

/// Root-mean-square layer norm, computed in f32 as HF's `LlamaRMSNorm` does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, false)
    }

    /// [`Self::forward`] through `shaders/rmsnorm.wgsl` (its CPU twin on the CPU) when `fused`.
    pub fn forward_with(&self, x: Tensor<3>, fused: bool) -> Tensor<3> {
        if fused {
            return e2llm_kernels::fused::rmsnorm(x, f32_of(self.weight.val()), self.eps as f32);
        }
        let ms = x.clone().powi_scalar(2).mean_dim(2);
        let inv = (ms + self.eps).sqrt().recip();
        x * inv * f32_of(self.weight.val()).unsqueeze_dims::<3>(&[0, 1])
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `model.layers.{i}.mlp.gate_proj`.
    pub gate_proj: Linear,
    /// `model.layers.{i}.mlp.up_proj`.
    pub up_proj: Linear,
    /// `model.layers.{i}.mlp.down_proj`.
    pub down_proj: Linear,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, false)
    }

    /// [`Self::forward`] with the gate through `shaders/swiglu.wgsl` (its CPU twin on the CPU)
    /// when `fused`.
    pub fn forward_with(&self, x: Tensor<3>, fused: bool) -> Tensor<3> {
        let (gate, up) = (self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        let h = if fused {
            e2llm_kernels::fused::swiglu(gate, up)
        } else {
            activation::silu(gate) * up
        };
        self.down_proj.forward(h)
    }
}
