//! The WGSL kernels as burn ops: backend extensions of burn's dispatch backend
//! (`#[backend_extension(Cube, Flex, Autodiff)]`; AdamW, which runs on plain tensors, without
//! `Autodiff`), so a model written against `burn::tensor::Tensor` calls them and trains through
//! them unchanged.
//!
//! - `Cube` (wgpu natively, WebGPU in a browser): the shader runs on burn's own cubecl client
//!   and buffers, from the same [`crate::launch::Launch`] the raw-wgpu path records. A
//!   [`WgslKernel`]'s `source()` is the WGSL itself, rewritten by [`shaders::for_entry`]: cubecl
//!   binds buffers by position (bindings renumbered), sub-allocates tensors from shared wgpu
//!   buffers (every storage buffer read-write, as cubecl's own kernels declare them) and passes a
//!   launch's "info" words as one uniform after the buffers (the kernel's `Params` — uniform, so
//!   Chrome's uniformity analysis accepts barrier loops bounded by them).
//! - `Flex` (CPU): the CPU twins of [`crate::cpu`]; attention runs [`crate::flash_cpu`] (the same
//!   algorithm laid out for a CPU core, tested against its twin).
//! - `Autodiff`: each op keeps what its backward needs and registers a backward node that calls
//!   the backend's backward op.
//!
//! [`attention`]: causal GQA attention with RoPE inside (FlashAttention-2 backward).
//! [`norm`]: RMSNorm and the SwiGLU gate. [`loss`]: weighted cross-entropy with its gradient
//! from the same pass. [`optim`]: the AdamW update (no autodiff: it runs on plain tensors).

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::Flex;
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::ir::{ElemType, UIntKind};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn_cubecl::cubecl::{CubeKernel, PrecompiledSource};
use burn_cubecl::tensor::CubeTensor;

use crate::launch::{Launch, Shader, Spec};
use crate::shaders;

pub mod attention;
pub mod loss;
pub mod norm;
pub mod optim;

pub use attention::{
    rope_attention, rope_attention_backward, rope_attention_forward, rope_attention_paged,
    FusedAttention,
};
pub use loss::{cross_entropy, FusedLoss};
pub use norm::{rmsnorm, swiglu, FusedNorm};
pub use optim::{adamw, FusedOptim};

/// Whether `device` (autodiff or not) is one of burn's cubecl devices (wgpu, WebGPU), where the
/// ops run the WGSL kernels; elsewhere they run on the CPU ([`crate::flash_cpu`], the twins).
pub fn is_gpu(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// The largest buffer `device` binds (and allocates), in bytes, when it is a cubecl device:
/// 128 MiB on lavapipe and in WebGPU by default; `None` on the CPU (no such limit).
pub fn max_binding_bytes(device: &burn::tensor::Device) -> Option<u64> {
    match device.clone().inner().as_dispatch() {
        burn::backend::DispatchDevice::Cube(d) => {
            Some(d.client().properties().memory.max_page_size)
        }
        _ => None,
    }
}

/// One entry point of a WGSL file as a cubecl kernel.
pub struct WgslKernel {
    shader: Shader,
    entry: &'static str,
    storage: Vec<u32>,
    uniform: u32,
    workgroup: u32,
    spec: Spec,
}

impl WgslKernel {
    /// The kernel `launch` dispatches.
    pub fn new(launch: &Launch) -> Self {
        Self {
            shader: launch.shader,
            entry: launch.entry,
            storage: launch.storage.clone(),
            uniform: launch.uniform,
            workgroup: launch.workgroup,
            spec: launch.spec,
        }
    }

    /// The WGSL cubecl compiles for it.
    pub fn wgsl(&self) -> String {
        let source = shaders::specialize(self.shader.source, self.spec);
        shaders::for_entry(&source, &self.storage, Some(self.uniform))
    }
}

/// How cubecl builds our WGSL: unchecked — wgpu then leaves out its forced loop bounding
/// (a counter and a test added to every loop, which also keeps a GPU compiler from unrolling
/// constant-trip loops and so from holding the kernels' private arrays in registers). Every
/// loop in `shaders/` ends by its own bound (constants and `Params`), and cubecl never asks
/// wgpu for bounds checks on WGSL in either mode. `E2LLM_WGSL_CHECKED=1` builds them checked,
/// to measure the difference.
pub fn execution_mode() -> ExecutionMode {
    static MODE: std::sync::OnceLock<ExecutionMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        if std::env::var("E2LLM_WGSL_CHECKED").is_ok_and(|v| v == "1") {
            ExecutionMode::Checked
        } else {
            ExecutionMode::Unchecked
        }
    })
}

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
            .info((
                self.shader.name,
                self.entry,
                self.spec.rows,
                self.spec.head_dim,
                self.spec.kv_f16,
            ))
            .mode(execution_mode())
    }

    fn address_type(&self) -> ElemType {
        UIntKind::U32.into()
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        // The WGSL is the kernel; the definition only keys cubecl's caches and checks limits.
        let settings = KernelSettings::new(
            CubeDim::new_1d(self.workgroup).into(),
            execution_mode(),
            AddressType::U32,
        );
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: Default::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: self.wgsl(),
            entrypoint_name: self.entry.to_string(),
            lang: "wgsl",
        })
    }
}

/// Launches `l` on `client` with `bufs` (contiguous tensors, in the launch's storage order) and
/// its `Params` as the uniform info words.
pub(crate) fn launch<'a>(
    client: &Client,
    l: &Launch,
    bufs: impl IntoIterator<Item = &'a CubeTensor>,
) {
    let mut args = KernelArguments::new();
    let mut n = 0;
    for t in bufs {
        args = args.with_buffer(t.handle.clone().binding());
        n += 1;
    }
    debug_assert_eq!(n, l.storage.len(), "{}", l.entry);
    // Two u32 words per u64, little-endian: the uniform's bytes are the words in order.
    let words = l
        .params
        .chunks(2)
        .map(|w| u64::from(w[0]) | (u64::from(w.get(1).copied().unwrap_or(0)) << 32))
        .collect();
    args = args.with_info(MetadataBindingInfo::custom(words));
    let (x, y, z) = l.groups;
    client.launch(
        Box::new(WgslKernel::new(l)),
        CubeCount::Static(x, y, z),
        args,
    );
}

/// An uninitialised f32 tensor of `shape` on `like`'s device (every kernel writes its outputs
/// before reading them).
pub(crate) fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let handle = like.client.empty(shape.num_elements().max(1) * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

pub(crate) fn f32_only(op: &str, t: &CubeTensor) {
    assert!(t.dtype == DType::F32, "{op} runs in f32; got {:?}", t.dtype);
}

/// Host copy of a flex tensor (flex reads synchronously, from its own memory). A failure here
/// is a bug, reported as one (not an empty vector that fails later on a shape).
pub(crate) fn host(t: FloatTensor<Flex>) -> Vec<f32> {
    pollster::block_on(Flex::float_into_data(t))
        .map_err(|e| format!("{e:?}"))
        .and_then(|d| {
            d.convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| format!("{e:?}"))
        })
        .unwrap_or_else(|e| panic!("reading a flex tensor back: {e}"))
}
