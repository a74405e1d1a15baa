// rope.wgsl — rotary position embedding with positions as data, forward and inverse.
//
// Math (HF rotate_half layout, pairs (x_j, x_{j+D/2}), j < D/2):
//   a = dir · (pos[t] / g[t]) · inv_freq[j]
//   y_j       = f · (x_j · cos a − x_{j+D/2} · sin a)
//   y_{j+D/2} = f · (x_{j+D/2} · cos a + x_j · sin a)
// f is the variant's attention factor (yarn; 1 otherwise). dir = +1 is the forward rotation;
// dir = −1 is the backward pass: dL/dx = f · R(−a) · dL/dy (R is orthogonal). Every RoPE
// variant (default/linear/dynamic/yarn/llama3) differs only in inv_freq and f, which the host
// computes with e2llm-core, so one kernel serves them all. Positions may be fractional.
//
// Bindings: 0 x [T·H·D] f32 (read), 1 pos [T] f32, 2 g [T] f32, 3 inv_freq [D/2] f32,
//           4 y [T·H·D] f32 (write), 5 uniform Params.
// Dispatch: one invocation per (t, h, j): n = T·H·D/2, workgroup 256, grid (min(⌈n/256⌉, 65535), ⌈…/65535⌉).
// CPU twin: e2llm_kernels::cpu::rope.

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    dir: f32,
    factor: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.head_dim / 2u;
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.tokens * p.heads * half) {
        return;
    }
    let j = i % half;
    let th = i / half;            // t · H + h
    let t = th / p.heads;
    let base = th * p.head_dim;
    let a = p.dir * (pos[t] / g[t]) * inv_freq[j];
    let c = cos(a) * p.factor;
    let s = sin(a) * p.factor;
    let x0 = x[base + j];
    let x1 = x[base + j + half];
    y[base + j] = x0 * c - x1 * s;
    y[base + j + half] = x1 * c + x0 * s;
}
