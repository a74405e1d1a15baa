//! Weighted next-token cross-entropy as a burn op ([`FusedLoss`]): `shaders/cross_entropy.wgsl`
//! computes each row's loss and its gradient in one pass over the logits (the gradient is kept
//! for the backward, so the logits are read once), the CPU twin on flex.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::CubeBackend;

use super::{empty, f32_only, host, launch};
use crate::cpu;
use crate::launch as plan;

/// Weighted cross-entropy, one op per backend.
#[backend_extension(Cube, Flex, Autodiff)]
pub trait FusedLoss: Backend {
    /// Per-row loss `w_n · (logsumexp(z_n) − z_n[target_n])`, `[rows]`; differentiable in the
    /// logits.
    fn cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::cross_entropy_forward(logits, targets, weights).0
    }

    /// `(loss, dlogits)`: the per-row loss and its gradient `w_n · (softmax(z_n) − onehot)`.
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Per-row weighted cross-entropy of `logits` `[rows, vocab]` against `targets` `[rows]` with
/// `weights` `[rows]`, on whatever backend the logits live on. Returns `[rows]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, weights: Tensor<1>) -> Tensor<1> {
    Tensor::from_dispatch(Dispatch::cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
        weights.into_dispatch(),
    ))
}

fn rows_vocab(logits: &Shape, targets: &Shape, weights: &Shape) -> (usize, usize) {
    let d = logits.as_slice();
    assert!(
        d.len() == 2 && targets.num_elements() == d[0] && weights.num_elements() == d[0],
        "cross_entropy: logits {d:?} need [rows, vocab] with one target and weight per row \
         (targets {targets:?}, weights {weights:?})"
    );
    (d[0], d[1])
}

impl FusedLoss for CubeBackend {
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (rows, vocab) = rows_vocab(&logits.shape(), &targets.shape(), &weights.shape());
        let [z, t, w] = [logits, targets, weights].map(into_contiguous);
        f32_only("cross_entropy", &z);
        assert!(
            matches!(t.dtype, DType::I32 | DType::U32),
            "cross_entropy: targets must be 32-bit integers, got {:?}",
            t.dtype
        );
        let loss = empty(&z, Shape::new([rows]));
        let dz = empty(&z, z.shape());
        launch(
            &z.client,
            &plan::cross_entropy(rows, vocab, 1.0),
            [&z, &t, &w, &loss, &dz],
        );
        (loss, dz)
    }
}

impl FusedLoss for Flex {
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (rows, vocab) = rows_vocab(&logits.shape(), &targets.shape(), &weights.shape());
        let (device, shape) = (logits.device(), logits.shape());
        let t: Vec<u32> = pollster::block_on(Flex::int_into_data(targets))
            .map_err(|e| format!("{e:?}"))
            .and_then(|d| {
                d.convert::<i64>()
                    .try_into_vec::<i64>()
                    .map_err(|e| format!("{e:?}"))
            })
            .unwrap_or_else(|e| panic!("reading flex targets back: {e}"))
            .into_iter()
            .map(|v| v as u32)
            .collect();
        let (loss, dz) = cpu::cross_entropy(&host(logits), &t, &host(weights), vocab, 1.0);
        (
            Self::float_from_data(TensorData::new(loss, [rows]), &device),
            Self::float_from_data(TensorData::new(dz, shape), &device),
        )
    }
}

/// Backward node of [`FusedLoss::cross_entropy`]: keeps the forward's gradient of each row.
#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: FusedLoss> Backward<B, 1> for CrossEntropyBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let dz = ops.state;
            let rows = g.shape().num_elements();
            let g = B::float_reshape(g, Shape::new([rows, 1]));
            grads.register::<B>(node.id, B::float_mul(dz, g));
        }
    }
}

impl<B: FusedLoss, C: CheckpointStrategy> FusedLoss for Autodiff<B, C> {
    fn cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let weights = weights.into_primitive();
        match CrossEntropyBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, dz) =
                    B::cross_entropy_forward(logits.into_primitive(), targets, weights);
                prep.finish(dz, loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cross_entropy_forward(logits.into_primitive(), targets, weights).0)
            }
        }
    }

    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (loss, dz) =
            B::cross_entropy_forward(logits.into_primitive(), targets, weights.into_primitive());
        (FloatTensor::<Self>::new(loss), FloatTensor::<Self>::new(dz))
    }
}
