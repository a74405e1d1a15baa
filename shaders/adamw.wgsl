// adamw.wgsl — one AdamW update of a flat parameter, in place, in one kernel.
//
// Math (decoupled weight decay, bias-corrected, as e2llm-train's optim::AdamW):
//   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,
//   p ← p·(1 − lr·wd) − lr · (m / c1) / (sqrt(v / c2) + ε),   c1 = 1 − β1^t, c2 = 1 − β2^t.
// Bindings: 0 param [n] (read-write)  1 grad [n]  2 m [n] (read-write)  3 v [n] (read-write)
//           4 uniform Params
// Dispatch: one invocation per element, workgroup 256, grid (min(⌈n/256⌉, 65535), ⌈…/65535⌉).
// CPU twin: e2llm_kernels::cpu::adamw.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    c1: f32,
    c2: f32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let g = grad[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let update = (mi / p.c1) / (sqrt(vi / p.c2) + p.eps);
    param[i] = param[i] * (1.0 - p.lr * p.weight_decay) - p.lr * update;
}
