//! The attention kernels as a burn op: [`FusedAttention`], a backend extension of burn's
//! dispatch backend with an implementation per backend and its backward registered for
//! autodiff, so a model built on `burn::tensor::Tensor` calls [`rope_attention`] and trains
//! through it unchanged.
//!
//! - `Cube` (wgpu natively, WebGPU in a browser): `shaders/attention.wgsl` launched on burn's
//!   own cubecl client and buffers — the same launch plan ([`crate::attention::forward_plan`], [`backward_plan`])
//!   the raw-wgpu path runs (see [`super`] for how a WGSL entry point runs on cubecl).
//! - `Flex` (CPU): [`crate::flash_cpu`] per sequence — the same algorithm laid out for a CPU
//!   core, O(length) memory like the kernel.
//! - `Autodiff`: forward keeps q, k, v, positions, o and the softmax statistics; backward runs
//!   the backend's `rope_attention_backward` (FlashAttention-2: scores recomputed tile by tile).
//!
//! Layout: q `[B, Sq, Hq, D]`, k and v `[B, Skv, Hkv, D]` (token-major, unrotated), aux =
//! qpos `[B·Sq]` ++ kpos `[B·Skv]` ++ inv_freq `[D/2]` with positions already divided by each
//! row's g; the query `i` of a row sees keys `..= Skv − Sq + i`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, Backend, BackendTensor, Dispatch, DispatchAutodiffContext,
    DispatchTensorKind, Flex, Slice, TensorMetadata,
};
use burn::tensor::{DType, DispatchTensor, Shape, Tensor, TensorData};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;

use super::{empty, f32_only, host, launch};
use crate::attention::{backward_plan, check_batch, forward_plan_paged, part_len, tuning, Slot};
use crate::cpu::AttentionShape;
use crate::flash_cpu;

/// Causal GQA attention with RoPE applied inside, as one op per backend.
#[backend_extension(Cube, Flex, Autodiff)]
pub trait FusedAttention: Backend {
    /// The attention output `[B, Sq, Hq, D]`; differentiable in q, k and v.
    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> FloatTensor<Self> {
        Self::rope_attention_forward(q, k, v, aux, scale, factor).0
    }

    /// `(o, stats)`: the output and the per-sequence softmax statistics `[B·3·Hq·Sq]`
    /// (lse first) the backward reads.
    fn rope_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(dq, dk, dv)` given the forward's inputs, `o`, `stats` and the output gradient.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        o: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Causal GQA attention with RoPE inside on whatever backend the tensors live on
/// (see the module docs for the layout). Differentiable in q, k and v.
///
/// # Shapes
/// - `q`: `[B, Sq, Hq, D]`, `k`, `v`: `[B, Skv, Hkv, D]`, `aux`: `[B·(Sq + Skv) + D/2]`
/// - output: `[B, Sq, Hq, D]`
pub fn rope_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    aux: Tensor<1>,
    scale: f32,
    factor: f32,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::rope_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        aux.into_dispatch(),
        scale,
        factor,
    ))
}

/// [`rope_attention`] over keys and values in pages — a paged KV cache, for a cache larger
/// than one binding (128 MiB in WebGPU and on lavapipe). Page `i` is `(k, v)`, each
/// `[B, P_i, Hkv, D]`: the keys that follow the previous pages'; every page but the last has
/// the same length, a multiple of [`crate::attention::page_multiple`] when there are several.
/// `aux` as for one k (positions of every key).
///
/// One page is [`rope_attention`] itself (differentiable). Several: on a cubecl device each
/// dispatch binds one page (`attention.wgsl`'s `k_base`/`k_len`; no autodiff graph); on the
/// CPU, or for autodiff tensors, the pages are joined and run as [`rope_attention`].
pub fn rope_attention_paged(
    q: Tensor<4>,
    pages: Vec<(Tensor<4>, Tensor<4>)>,
    aux: Tensor<1>,
    scale: f32,
    factor: f32,
) -> Tensor<4> {
    let shapes: Vec<Shape> = pages.iter().map(|(k, _)| k.shape()).collect();
    page_shape(&shapes);
    if pages.len() > 1 && super::is_gpu(&q.device()) && !q.device().is_autodiff() {
        let (k, v): (Vec<_>, Vec<_>) = pages
            .into_iter()
            .map(|(k, v)| (cube(k.into_dispatch()), cube(v.into_dispatch())))
            .unzip();
        let (o, _) = forward_on_cube(
            cube(q.into_dispatch()),
            k,
            v,
            cube(aux.into_dispatch()),
            scale,
            factor,
        );
        return Tensor::from_dispatch(DispatchTensor {
            kind: DispatchTensorKind::Cube(BackendTensor::Float(o)),
            autodiff: DispatchAutodiffContext::Disabled,
        });
    }
    let (mut k, mut v): (Vec<_>, Vec<_>) = pages.into_iter().unzip();
    let (k, v) = if k.len() == 1 {
        (k.remove(0), v.remove(0))
    } else {
        (Tensor::cat(k, 1), Tensor::cat(v, 1))
    };
    rope_attention(q, k, v, aux, scale, factor)
}

/// The cubecl tensor of a plain float tensor on a cubecl device.
fn cube(t: DispatchTensor) -> CubeTensor {
    match t.kind {
        DispatchTensorKind::Cube(BackendTensor::Float(c)) => c,
        _ => panic!("rope_attention_paged: every tensor must be a float tensor on the device of q"),
    }
}

/// `(o, stats)` of the forward on a cubecl device, keys and values in one page or several
/// ([`rope_attention_paged`]): [`forward_plan_paged`], each launch binding the page it reads
/// (one page: [`crate::attention::forward_plan`]'s launches).
fn forward_on_cube(
    q: CubeTensor,
    k_pages: Vec<CubeTensor>,
    v_pages: Vec<CubeTensor>,
    aux: CubeTensor,
    scale: f32,
    factor: f32,
) -> (CubeTensor, CubeTensor) {
    let shapes: Vec<Shape> = k_pages.iter().map(|k| k.shape()).collect();
    let (page, all) = page_shape(&shapes);
    assert!(
        v_pages.iter().map(|v| v.shape()).eq(shapes.iter().cloned()),
        "rope_attention_paged: v pages must match the k pages"
    );
    let (s, batch) = shape_of(&q.shape(), &all, &aux.shape(), scale, factor);
    let [q, aux] = [q, aux].map(into_contiguous);
    let k: Vec<CubeTensor> = k_pages.into_iter().map(into_contiguous).collect();
    let v: Vec<CubeTensor> = v_pages.into_iter().map(into_contiguous).collect();
    f32_only("rope_attention", &q);
    f32_only("rope_attention (positions)", &aux);
    let f16: Vec<bool> = k.iter().zip(&v).map(|(k, v)| kv_f16(k, v)).collect();
    assert!(
        f16.iter().all(|&x| x == f16[0]),
        "rope_attention_paged: pages mix f16 and f32"
    );
    let o = empty(&q, q.shape());
    let stats = empty(&q, Shape::new([batch * 3 * s.hq * s.sq]));
    let part = empty(&q, Shape::new([part_len(s, batch).max(1)]));
    for (mut l, i) in forward_plan_paged(s, batch, tuning(), page) {
        l.spec.kv_f16 = f16[0];
        let bufs = l.storage.iter().map(|&b| match Slot::at(b) {
            Slot::Q => &q,
            Slot::K => &k[i],
            Slot::V => &v[i],
            Slot::Aux => &aux,
            Slot::O => &o,
            Slot::Part => &part,
            _ => &stats,
        });
        launch(&q.client, &l, bufs);
    }
    (o, stats)
}

/// `(o, stats)` of [`rope_attention`] (no autodiff graph): for tests and benchmarks.
pub fn rope_attention_forward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    aux: Tensor<1>,
    scale: f32,
    factor: f32,
) -> (Tensor<4>, Tensor<1>) {
    let (o, stats) = Dispatch::rope_attention_forward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        aux.into_dispatch(),
        scale,
        factor,
    );
    (Tensor::from_dispatch(o), Tensor::from_dispatch(stats))
}

/// `(dq, dk, dv)` of [`rope_attention`] for output gradient `d_o` (no autodiff graph).
#[allow(clippy::too_many_arguments)]
pub fn rope_attention_backward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    aux: Tensor<1>,
    o: Tensor<4>,
    stats: Tensor<1>,
    d_o: Tensor<4>,
    scale: f32,
    factor: f32,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let (dq, dk, dv) = Dispatch::rope_attention_backward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        aux.into_dispatch(),
        o.into_dispatch(),
        stats.into_dispatch(),
        d_o.into_dispatch(),
        scale,
        factor,
    );
    (
        Tensor::from_dispatch(dq),
        Tensor::from_dispatch(dk),
        Tensor::from_dispatch(dv),
    )
}

/// The kernel shape and batch of q `[B, Sq, Hq, D]` and k `[B, Skv, Hkv, D]`; panics (as
/// burn's own ops do on bad shapes) with the reason when they do not fit the kernel.
fn shape_of(q: &Shape, k: &Shape, aux: &Shape, scale: f32, factor: f32) -> (AttentionShape, usize) {
    let (q, k) = (q.as_slice(), k.as_slice());
    assert!(
        q.len() == 4 && k.len() == 4 && q[0] == k[0] && q[3] == k[3],
        "rope_attention: q {q:?} and k {k:?} must be [batch, tokens, heads, head_dim] alike"
    );
    let s = AttentionShape {
        sq: q[1],
        skv: k[1],
        hq: q[2],
        hkv: k[2],
        head_dim: q[3],
        scale,
        g: 1.0,
        factor,
    };
    let batch = q[0];
    let n = |d: &[usize]| d.iter().product::<usize>();
    if let Err(e) = check_batch(n(q), n(k), n(k), n(aux.as_slice()), s, batch) {
        panic!("rope_attention: {e}");
    }
    (s, batch)
}

impl FusedAttention for CubeBackend {
    fn rope_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        forward_on_cube(q, vec![k], vec![v], aux, scale, factor)
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        o: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (s, batch) = shape_of(&q.shape(), &k.shape(), &aux.shape(), scale, factor);
        let [q, k, v, aux, o, stats, d_o] = [q, k, v, aux, o, stats, d_o].map(into_contiguous);
        for (name, t) in [("q", &q), ("k", &k), ("v", &v), ("dO", &d_o)] {
            // f16 keys and values are an inference option (a half-precision KV cache).
            f32_only(&format!("rope_attention's backward ({name})"), t);
        }
        let k_shape = k.shape();
        let dq = empty(&q, q.shape());
        let nk = k_shape.num_elements();
        let dkv = empty(&q, Shape::new([2 * nk]));
        for l in backward_plan(s, batch) {
            let bufs = l.storage.iter().map(|&b| match Slot::at(b) {
                Slot::Q => &q,
                Slot::K => &k,
                Slot::V => &v,
                Slot::Aux => &aux,
                Slot::O => &o,
                Slot::Stats => &stats,
                Slot::DO => &d_o,
                Slot::DQ => &dq,
                _ => &dkv,
            });
            launch(&q.client, &l, bufs);
        }
        let half = |r: std::ops::Range<usize>| {
            Self::float_reshape(
                Self::float_slice(dkv.clone(), &[Slice::from(r)]),
                k_shape.clone(),
            )
        };
        let (dk, dv) = (half(0..nk), half(nk..2 * nk));
        (dq, dk, dv)
    }
}

/// The page length of `pages` (`[B, P_i, Hkv, D]` each) and the shape of all their keys at
/// once; panics with the reason when they are not pages of one cache.
fn page_shape(pages: &[Shape]) -> (usize, Shape) {
    let first = pages
        .first()
        .expect("rope_attention_paged: no pages")
        .as_slice();
    assert_eq!(
        first.len(),
        4,
        "rope_attention_paged: pages are [batch, tokens, heads, head_dim]"
    );
    let page = first[1];
    let mut total = 0;
    for (i, p) in pages.iter().enumerate() {
        let p = p.as_slice();
        let last = i + 1 == pages.len();
        assert!(
            p.len() == 4
                && (p[0], p[2], p[3]) == (first[0], first[2], first[3])
                && (p[1] == page || (last && p[1] <= page)),
            "rope_attention_paged: page {i} is {p:?}; pages must be [{}, {page}, {}, {}] (the \
             last one may be shorter)",
            first[0],
            first[2],
            first[3]
        );
        total += p[1];
    }
    (page, Shape::new([first[0], total, first[2], first[3]]))
}

/// Whether k and v are stored in f16 (both; the forward reads them as f32): panics, as burn's
/// own ops do on bad input, for another dtype or a mix.
fn kv_f16(k: &CubeTensor, v: &CubeTensor) -> bool {
    match (k.dtype, v.dtype) {
        (DType::F32, DType::F32) => false,
        (DType::F16, DType::F16) => true,
        (a, b) => {
            panic!("rope_attention: k and v must both be f32 or both f16; got {a:?} and {b:?}")
        }
    }
}

/// One sequence's q/k/qpos/kpos slices of flat batch data.
struct Rows<'a> {
    s: AttentionShape,
    batch: usize,
    aux: &'a [f32],
}

impl Rows<'_> {
    fn qn(&self) -> usize {
        self.s.sq * self.s.hq * self.s.head_dim
    }
    fn kn(&self) -> usize {
        self.s.skv * self.s.hkv * self.s.head_dim
    }
    fn qpos(&self, b: usize) -> &[f32] {
        &self.aux[b * self.s.sq..(b + 1) * self.s.sq]
    }
    fn kpos(&self, b: usize) -> &[f32] {
        let at = self.batch * self.s.sq + b * self.s.skv;
        &self.aux[at..at + self.s.skv]
    }
    fn inv_freq(&self) -> &[f32] {
        &self.aux[self.batch * (self.s.sq + self.s.skv)..]
    }
}

impl FusedAttention for Flex {
    fn rope_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (s, batch) = shape_of(&q.shape(), &k.shape(), &aux.shape(), scale, factor);
        let device = q.device();
        let q_shape = q.shape();
        let (q, k, v, aux) = (host(q), host(k), host(v), host(aux));
        let r = Rows {
            s,
            batch,
            aux: &aux,
        };
        let (qn, kn, hs) = (r.qn(), r.kn(), s.hq * s.sq);
        let mut o = Vec::with_capacity(q.len());
        let mut stats = vec![0.0f32; batch * 3 * hs];
        for b in 0..batch {
            let (ob, lse) = flash_cpu::attention(
                &q[b * qn..(b + 1) * qn],
                &k[b * kn..(b + 1) * kn],
                &v[b * kn..(b + 1) * kn],
                r.qpos(b),
                r.kpos(b),
                r.inv_freq(),
                s,
            );
            o.extend(ob);
            stats[b * 3 * hs..b * 3 * hs + hs].copy_from_slice(&lse);
        }
        (
            Self::float_from_data(TensorData::new(o, q_shape), &device),
            Self::float_from_data(TensorData::new(stats, [batch * 3 * hs]), &device),
        )
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        o: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (s, batch) = shape_of(&q.shape(), &k.shape(), &aux.shape(), scale, factor);
        let device = q.device();
        let (q_shape, k_shape) = (q.shape(), k.shape());
        let (q, k, v, aux, d_o) = (host(q), host(k), host(v), host(aux), host(d_o));
        let (o, stats) = (host(o), host(stats));
        let r = Rows {
            s,
            batch,
            aux: &aux,
        };
        let (qn, kn, hs) = (r.qn(), r.kn(), s.hq * s.sq);
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..batch {
            let (a, bk, c) = flash_cpu::attention_backward(
                &q[b * qn..(b + 1) * qn],
                &k[b * kn..(b + 1) * kn],
                &v[b * kn..(b + 1) * kn],
                r.qpos(b),
                r.kpos(b),
                r.inv_freq(),
                &o[b * qn..(b + 1) * qn],
                &stats[b * 3 * hs..b * 3 * hs + hs],
                &d_o[b * qn..(b + 1) * qn],
                s,
            );
            dq.extend(a);
            dk.extend(bk);
            dv.extend(c);
        }
        (
            Self::float_from_data(TensorData::new(dq, q_shape), &device),
            Self::float_from_data(TensorData::new(dk, k_shape.clone()), &device),
            Self::float_from_data(TensorData::new(dv, k_shape), &device),
        )
    }
}

/// The backward node of [`FusedAttention::rope_attention`] under autodiff.
#[derive(Debug)]
struct RopeAttentionBackward;

type Saved<B> = (
    [FloatTensor<B>; 6], // q, k, v, aux, o, stats
    f32,
    f32,
);

impl<B: FusedAttention> Backward<B, 3> for RopeAttentionBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let ([q, k, v, aux, o, stats], scale, factor) = ops.state;
        let (dq, dk, dv) = B::rope_attention_backward(q, k, v, aux, o, stats, d_o, scale, factor);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedAttention, C: CheckpointStrategy> FusedAttention for Autodiff<B, C> {
    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> FloatTensor<Self> {
        let aux = aux.into_primitive();
        match RopeAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (o, stats) = B::rope_attention_forward(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    aux.clone(),
                    scale,
                    factor,
                );
                prep.finish(([q, k, v, aux, o.clone(), stats], scale, factor), o)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                B::rope_attention_forward(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    aux,
                    scale,
                    factor,
                )
                .0,
            ),
        }
    }

    fn rope_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (o, stats) = B::rope_attention_forward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            aux.into_primitive(),
            scale,
            factor,
        );
        (FloatTensor::<Self>::new(o), FloatTensor::<Self>::new(stats))
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        aux: FloatTensor<Self>,
        o: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
        factor: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = B::rope_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            aux.into_primitive(),
            o.into_primitive(),
            stats.into_primitive(),
            d_o.into_primitive(),
            scale,
            factor,
        );
        (
            FloatTensor::<Self>::new(dq),
            FloatTensor::<Self>::new(dk),
            FloatTensor::<Self>::new(dv),
        )
    }
}
