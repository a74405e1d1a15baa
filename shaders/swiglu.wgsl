// swiglu.wgsl — the Llama MLP gate, elementwise, forward and backward.
//
// Math: h = silu(a) · b, silu(a) = a · σ(a).
// Backward: da = dh · b · σ(a) · (1 + a · (1 − σ(a))),  db = dh · silu(a).
// Bindings: 0 a [n]  1 b [n]  2 h [n] (fwd writes)  3 uniform Params  4 dh [n]  5 da [n]  6 db [n]
// Dispatch: one invocation per element, workgroup 256, grid (min(⌈n/256⌉, 65535), ⌈…/65535⌉).
// CPU twins: e2llm_kernels::cpu::{swiglu, swiglu_backward}.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> dh: array<f32>;
@group(0) @binding(5) var<storage, read_write> da: array<f32>;
@group(0) @binding(6) var<storage, read_write> db: array<f32>;

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn swiglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let v = a[i];
    h[i] = v * sigmoid(v) * b[i];
}

@compute @workgroup_size(256)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let v = a[i];
    let s = sigmoid(v);
    da[i] = dh[i] * b[i] * s * (1.0 + v * (1.0 - s));
    db[i] = dh[i] * v * s;
}
