//! The AdamW update as a burn op ([`FusedOptim`]): `shaders/adamw.wgsl` updates a parameter
//! and its two moments in one kernel on burn's cubecl backend (in place when the buffers are
//! not shared), the CPU twin on flex. It runs on plain (non-autodiff) tensors, as an optimizer
//! does.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Tensor, TensorData};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;

use super::{f32_only, host, launch};
use crate::cpu::{self, AdamWParams};
use crate::launch as plan;

/// One AdamW update per backend.
#[backend_extension(Cube, Flex)]
pub trait FusedOptim: Backend {
    /// `(param, m, v)` after one update with gradient `grad` (all `[n]`); `step` is 1-based.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: i32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// One AdamW update of a flat parameter and its moments (the semantics of
/// [`cpu::adamw`]) on whatever backend they live on; returns `(param, m, v)`.
pub fn adamw(
    param: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    p: AdamWParams,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (param, m, v) = Dispatch::adamw(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        p.lr,
        p.beta1,
        p.beta2,
        p.eps,
        p.weight_decay,
        p.step,
    );
    (
        Tensor::from_dispatch(param),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

fn flat(op: &str, ts: [&burn::tensor::Shape; 4]) -> usize {
    let n = ts[0].num_elements();
    assert!(
        ts.iter().all(|s| s.num_elements() == n),
        "{op}: param, grad, m and v must have one size: {ts:?}"
    );
    n
}

/// A contiguous tensor this op may overwrite: `t` itself when nothing else holds its buffer.
fn writable(t: CubeTensor) -> CubeTensor {
    let t = into_contiguous(t);
    if t.can_mut() {
        t
    } else {
        t.copy()
    }
}

impl FusedOptim for CubeBackend {
    fn adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: i32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let n = flat(
            "adamw",
            [&param.shape(), &grad.shape(), &m.shape(), &v.shape()],
        );
        let (param, m, v) = (writable(param), writable(m), writable(v));
        let grad = into_contiguous(grad);
        f32_only("adamw", &param);
        let p = AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        };
        launch(&param.client, &plan::adamw(n, p), [&param, &grad, &m, &v]);
        (param, m, v)
    }
}

impl FusedOptim for Flex {
    fn adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: i32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flat(
            "adamw",
            [&param.shape(), &grad.shape(), &m.shape(), &v.shape()],
        );
        let (device, shape) = (param.device(), param.shape());
        let (mut p_, g, mut m_, mut v_) = (host(param), host(grad), host(m), host(v));
        let p = AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        };
        cpu::adamw(&mut p_, &g, &mut m_, &mut v_, p);
        let t = |x: Vec<f32>| Self::float_from_data(TensorData::new(x, shape.clone()), &device);
        (t(p_), t(m_), t(v_))
    }
}
