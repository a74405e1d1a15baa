//! RMSNorm and the SwiGLU gate as burn ops ([`FusedNorm`]): `shaders/rmsnorm.wgsl` and
//! `shaders/swiglu.wgsl` on burn's cubecl backend, the CPU twins on flex, and their backward
//! kernels under autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor, TensorData};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::CubeBackend;

use super::{empty, f32_only, host, launch};
use crate::cpu;
use crate::launch as plan;

/// RMSNorm and SwiGLU, one op each per backend.
#[backend_extension(Cube, Flex, Autodiff)]
pub trait FusedNorm: Backend {
    /// `x · rstd · w` over the last axis (`rstd = 1/sqrt(mean(x²) + eps)`); differentiable in
    /// `x` and `w`.
    fn rmsnorm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        Self::rmsnorm_forward(x, w, eps).0
    }

    /// `(y, rstd)`: the output and each row's `rstd` (`[rows]`), which the backward reads.
    fn rmsnorm_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(dx, dw)` for output gradient `dy`.
    fn rmsnorm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `silu(a) · b` elementwise; differentiable in `a` and `b`.
    fn swiglu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `(da, db)` for output gradient `dh`.
    fn swiglu_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// RMSNorm over the last axis with weight `w` on whatever backend `x` lives on.
///
/// # Shapes
/// - `x`: `[..., d]`, `w`: `[d]` → same shape as `x`
pub fn rmsnorm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f32) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::rmsnorm(x.into_dispatch(), w.into_dispatch(), eps))
}

/// `silu(a) · b` on whatever backend `a` lives on (`a`, `b` of one shape).
pub fn swiglu<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::swiglu(a.into_dispatch(), b.into_dispatch()))
}

/// `(rows, width)` of `x` normalised by a weight of `w`'s length; panics with the reason when
/// they disagree (as burn's own ops do on bad shapes).
fn rows_of(op: &str, x: &Shape, w: &Shape) -> (usize, usize) {
    let d = w.num_elements();
    let last = x.as_slice().last().copied().unwrap_or(0);
    assert!(
        d > 0 && last == d,
        "{op}: x {x:?} does not end in the weight's width {d}"
    );
    (x.num_elements() / d, d)
}

fn same_shape(op: &str, a: &Shape, b: &Shape) -> usize {
    assert!(a == b, "{op}: shapes differ: {a:?} vs {b:?}");
    a.num_elements()
}

impl FusedNorm for CubeBackend {
    fn rmsnorm_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (rows, d) = rows_of("rmsnorm", &x.shape(), &w.shape());
        let (x, w) = (into_contiguous(x), into_contiguous(w));
        f32_only("rmsnorm", &x);
        let y = empty(&x, x.shape());
        let rstd = empty(&x, Shape::new([rows]));
        launch(
            &x.client,
            &plan::rmsnorm_fwd(rows, d, eps),
            [&x, &w, &y, &rstd],
        );
        (y, rstd)
    }

    fn rmsnorm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (rows, d) = rows_of("rmsnorm_backward", &x.shape(), &w.shape());
        let [x, w, rstd, dy] = [x, w, rstd, dy].map(into_contiguous);
        let dx = empty(&x, x.shape());
        let dw = empty(&x, w.shape());
        let [lx, lw] = plan::rmsnorm_bwd(rows, d);
        launch(&x.client, &lx, [&x, &w, &rstd, &dy, &dx]);
        launch(&x.client, &lw, [&x, &rstd, &dy, &dw]);
        (dx, dw)
    }

    fn swiglu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let n = same_shape("swiglu", &a.shape(), &b.shape());
        let (a, b) = (into_contiguous(a), into_contiguous(b));
        f32_only("swiglu", &a);
        let h = empty(&a, a.shape());
        launch(&a.client, &plan::swiglu_fwd(n), [&a, &b, &h]);
        h
    }

    fn swiglu_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let n = same_shape("swiglu_backward", &a.shape(), &b.shape());
        let [a, b, dh] = [a, b, dh].map(into_contiguous);
        let (da, db) = (empty(&a, a.shape()), empty(&a, a.shape()));
        launch(&a.client, &plan::swiglu_bwd(n), [&a, &b, &dh, &da, &db]);
        (da, db)
    }
}

impl FusedNorm for Flex {
    fn rmsnorm_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (rows, _) = rows_of("rmsnorm", &x.shape(), &w.shape());
        let (device, shape) = (x.device(), x.shape());
        let (y, rstd) = cpu::rmsnorm(&host(x), &host(w), eps);
        (
            Self::float_from_data(TensorData::new(y, shape), &device),
            Self::float_from_data(TensorData::new(rstd, [rows]), &device),
        )
    }

    fn rmsnorm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (device, xs, ws) = (x.device(), x.shape(), w.shape());
        let (dx, dw) = cpu::rmsnorm_backward(&host(x), &host(w), &host(rstd), &host(dy));
        (
            Self::float_from_data(TensorData::new(dx, xs), &device),
            Self::float_from_data(TensorData::new(dw, ws), &device),
        )
    }

    fn swiglu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        same_shape("swiglu", &a.shape(), &b.shape());
        let (device, shape) = (a.device(), a.shape());
        let h = cpu::swiglu(&host(a), &host(b));
        Self::float_from_data(TensorData::new(h, shape), &device)
    }

    fn swiglu_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (device, shape) = (a.device(), a.shape());
        let (da, db) = cpu::swiglu_backward(&host(a), &host(b), &host(dh));
        (
            Self::float_from_data(TensorData::new(da, shape.clone()), &device),
            Self::float_from_data(TensorData::new(db, shape), &device),
        )
    }
}

/// Backward node of [`FusedNorm::rmsnorm`]: keeps x, w and rstd.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedNorm> Backward<B, 2> for RmsNormBackward {
    type State = [FloatTensor<B>; 3];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let [x, w, rstd] = ops.state;
        let (dx, dw) = B::rmsnorm_backward(x, w, rstd, dy);
        for (node, grad) in [(node_x, dx), (node_w, dw)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Backward node of [`FusedNorm::swiglu`]: keeps a and b.
#[derive(Debug)]
struct SwigluBackward;

impl<B: FusedNorm> Backward<B, 2> for SwigluBackward {
    type State = [FloatTensor<B>; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dh = grads.consume::<B>(&ops.node);
        let [a, b] = ops.state;
        let (da, db) = B::swiglu_backward(a, b, dh);
        for (node, grad) in [(node_a, da), (node_b, db)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedNorm, C: CheckpointStrategy> FusedNorm for Autodiff<B, C> {
    fn rmsnorm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let (y, rstd) = B::rmsnorm_forward(x.clone(), w.clone(), eps);
                prep.finish([x, w, rstd], y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::rmsnorm_forward(x.into_primitive(), w.into_primitive(), eps).0)
            }
        }
    }

    fn rmsnorm_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (y, rstd) = B::rmsnorm_forward(x.into_primitive(), w.into_primitive(), eps);
        (FloatTensor::<Self>::new(y), FloatTensor::<Self>::new(rstd))
    }

    fn rmsnorm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::rmsnorm_backward(
            x.into_primitive(),
            w.into_primitive(),
            rstd.into_primitive(),
            dy.into_primitive(),
        );
        (FloatTensor::<Self>::new(dx), FloatTensor::<Self>::new(dw))
    }

    fn swiglu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (a, b) = (a.into_primitive(), b.into_primitive());
                let h = B::swiglu(a.clone(), b.clone());
                prep.finish([a, b], h)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(a.into_primitive(), b.into_primitive()))
            }
        }
    }

    fn swiglu_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (da, db) =
            B::swiglu_backward(a.into_primitive(), b.into_primitive(), dh.into_primitive());
        (FloatTensor::<Self>::new(da), FloatTensor::<Self>::new(db))
    }
}
