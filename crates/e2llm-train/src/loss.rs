//! Token-weighted next-token cross-entropy.

use burn::tensor::{activation, Int, Tensor, TensorData};

/// `Σ w·(−log p(target)) / Σ w` over all tokens.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`
/// - `targets`, `weights`: `[batch * seq]` row-major
/// - output: `[1]`
pub fn weighted_cross_entropy(logits: Tensor<3>, targets: &[u32], weights: &[f32]) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let logp = activation::log_softmax(logits.reshape([b * s, v]), 1);
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(
            targets.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            [b * s, 1],
        ),
        &device,
    );
    let nll = logp.gather(1, idx).reshape([b * s]).neg();
    let total: f32 = weights.iter().sum();
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [b * s]), &device);
    (nll * w).sum() / total.max(f32::MIN_POSITIVE)
}

/// [`weighted_cross_entropy`] through `shaders/cross_entropy.wgsl` (the CPU twin on the CPU):
/// log-softmax, NLL and the gradient in one pass over the logits.
///
/// # Shapes
/// As [`weighted_cross_entropy`].
pub fn weighted_cross_entropy_fused(
    logits: Tensor<3>,
    targets: &[u32],
    weights: &[f32],
) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let t = Tensor::<1, Int>::from_data(
        TensorData::new(
            targets.iter().map(|&t| t as i32).collect::<Vec<_>>(),
            [b * s],
        ),
        &device,
    );
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [b * s]), &device);
    let total: f32 = weights.iter().sum();
    e2llm_model::kernels::fused::cross_entropy(logits.reshape([b * s, v]), t, w).sum()
        / total.max(f32::MIN_POSITIVE)
}

/// Plain cross-entropy of one row on the host, for reference checks: `[seq, vocab]` logits.
pub fn cross_entropy_host(logits: &[f32], vocab: usize, targets: &[u32], weights: &[f32]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (i, row) in logits.chunks_exact(vocab).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        num += weights[i] as f64 * (lse - row[targets[i] as usize] as f64);
        den += weights[i] as f64;
    }
    num / den
}
