//! One dispatch of a WGSL entry point, described once and run by either executor: a raw wgpu
//! device ([`crate::Gpu::run`]) or burn's cubecl client (`crate::fused`). Each op family's
//! `*_launch` / `*_plan` functions build these from shapes, so the two paths cannot drift.

use crate::gpu::grid;
use crate::shaders;

/// A shader file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shader {
    /// Its name (pipeline cache key).
    pub name: &'static str,
    /// Its WGSL.
    pub source: &'static str,
}

/// `shaders/rmsnorm.wgsl`.
pub const RMSNORM: Shader = Shader {
    name: "rmsnorm",
    source: shaders::RMSNORM,
};
/// `shaders/swiglu.wgsl`.
pub const SWIGLU: Shader = Shader {
    name: "swiglu",
    source: shaders::SWIGLU,
};
/// `shaders/cross_entropy.wgsl`.
pub const CROSS_ENTROPY: Shader = Shader {
    name: "cross_entropy",
    source: shaders::CROSS_ENTROPY,
};
/// `shaders/adamw.wgsl`.
pub const ADAMW: Shader = Shader {
    name: "adamw",
    source: shaders::ADAMW,
};
/// `shaders/attention.wgsl`.
pub const ATTENTION: Shader = Shader {
    name: "attention",
    source: shaders::ATTENTION,
};

/// How a shader's source is built before it is compiled ([`crate::shaders::specialize`]): the
/// attention kernels' rows per invocation (1, 2, 4 or 8; 0 = as written, 4), head width (0 = as
/// written, 128) and key/value element type. The default leaves the source as written; the
/// pipeline caches key on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Rows per invocation of the tiled attention kernels (`QB`).
    pub rows: u32,
    /// The head width the attention kernels are built for (`HD`).
    pub head_dim: u32,
    /// Keys and values in f16 (`kv_t`; needs the adapter's `shader-f16`): the forward and
    /// decode of a half-precision KV cache. Sums stay f32.
    pub kv_f16: bool,
}

/// One dispatch: the entry point, its storage buffers (by their binding numbers in the source,
/// in the order the caller passes the buffers), its uniform `Params` and its grid.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The shader.
    pub shader: Shader,
    /// The entry point.
    pub entry: &'static str,
    /// Storage bindings in buffer order.
    pub storage: Vec<u32>,
    /// The binding of the uniform `Params`.
    pub uniform: u32,
    /// `Params`, one u32 (or f32 bits) per field, padded to a multiple of 4.
    pub params: Vec<u32>,
    /// Workgroups along x, y, z.
    pub groups: (u32, u32, u32),
    /// Invocations per workgroup (the shader's `@workgroup_size`).
    pub workgroup: u32,
    /// How the source is built for this launch.
    pub spec: Spec,
}

/// Rows of an `[n, d]` row kernel (one workgroup of 256 per row).
fn rows_grid(rows: usize) -> (u32, u32, u32) {
    let (x, y) = grid(rows as u32);
    (x, y, 1)
}

/// Elementwise grid for `n` values (256 per workgroup).
fn elems_grid(n: usize) -> (u32, u32, u32) {
    let (x, y) = grid((n as u32).div_ceil(256));
    (x, y, 1)
}

/// RMSNorm forward of `rows` rows of width `d`: buffers x, w, y, rstd.
pub fn rmsnorm_fwd(rows: usize, d: usize, eps: f32) -> Launch {
    Launch {
        shader: RMSNORM,
        entry: "rmsnorm_fwd",
        storage: vec![0, 1, 2, 3],
        uniform: 4,
        params: vec![rows as u32, d as u32, eps.to_bits(), 0],
        groups: rows_grid(rows),
        workgroup: 256,
        spec: Spec::default(),
    }
}

/// RMSNorm backward: dx (buffers x, w, rstd, dy, dx), then dw (buffers x, rstd, dy, dw).
pub fn rmsnorm_bwd(rows: usize, d: usize) -> [Launch; 2] {
    let params = vec![rows as u32, d as u32, 0, 0];
    [
        Launch {
            shader: RMSNORM,
            entry: "rmsnorm_bwd_x",
            storage: vec![0, 1, 3, 5, 6],
            uniform: 4,
            params: params.clone(),
            groups: rows_grid(rows),
            workgroup: 256,
            spec: Spec::default(),
        },
        Launch {
            shader: RMSNORM,
            entry: "rmsnorm_bwd_w",
            storage: vec![0, 3, 5, 7],
            uniform: 4,
            params,
            groups: ((d as u32).div_ceil(256), 1, 1),
            workgroup: 256,
            spec: Spec::default(),
        },
    ]
}

/// SwiGLU forward over `n` values: buffers a, b, h.
pub fn swiglu_fwd(n: usize) -> Launch {
    Launch {
        shader: SWIGLU,
        entry: "swiglu_fwd",
        storage: vec![0, 1, 2],
        uniform: 3,
        params: vec![n as u32, 0, 0, 0],
        groups: elems_grid(n),
        workgroup: 256,
        spec: Spec::default(),
    }
}

/// SwiGLU backward: buffers a, b, dh, da, db.
pub fn swiglu_bwd(n: usize) -> Launch {
    Launch {
        shader: SWIGLU,
        entry: "swiglu_bwd",
        storage: vec![0, 1, 4, 5, 6],
        uniform: 3,
        params: vec![n as u32, 0, 0, 0],
        groups: elems_grid(n),
        workgroup: 256,
        spec: Spec::default(),
    }
}

/// Cross-entropy (loss and gradient in one pass) of `rows` rows of `vocab` logits: buffers
/// logits, targets, weights, loss, dlogits.
pub fn cross_entropy(rows: usize, vocab: usize, scale: f32) -> Launch {
    Launch {
        shader: CROSS_ENTROPY,
        entry: "cross_entropy",
        storage: vec![0, 1, 2, 3, 4],
        uniform: 5,
        params: vec![rows as u32, vocab as u32, scale.to_bits(), 0],
        groups: rows_grid(rows),
        workgroup: 256,
        spec: Spec::default(),
    }
}

/// One AdamW update of `n` values in place: buffers param, grad, m, v.
pub fn adamw(n: usize, p: crate::cpu::AdamWParams) -> Launch {
    let c1 = 1.0 - p.beta1.powi(p.step);
    let c2 = 1.0 - p.beta2.powi(p.step);
    Launch {
        shader: ADAMW,
        entry: "adamw",
        storage: vec![0, 1, 2, 3],
        uniform: 4,
        params: [n as u32]
            .into_iter()
            .chain([p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, c1, c2].map(f32::to_bits))
            .collect(),
        groups: elems_grid(n),
        workgroup: 256,
        spec: Spec::default(),
    }
}
