// rmsnorm.wgsl — fused RMSNorm, forward and backward.
//
// Math, per row x of width D:  rstd = 1 / sqrt(mean(x²) + eps),  y = x · rstd · w.
// Backward, with u = dy · w:    dx = u · rstd − x · Σ(u·x) · rstd³ / D,   dw = Σ_rows dy · x · rstd.
//
// Bindings (each entry point's auto layout holds only what it uses):
//   0 x [N·D]  1 w [D]  2 y [N·D] (fwd writes)  3 rstd [N] (fwd writes, bwd reads)
//   4 uniform Params  5 dy [N·D]  6 dx [N·D] (bwd_x writes)  7 dw [D] (bwd_w writes)
// Dispatch: `rmsnorm_fwd`, `rmsnorm_bwd_x`: one workgroup of 256 per row, grid (min(N, 65535), ⌈N/65535⌉);
//           `rmsnorm_bwd_w`: one invocation per column, grid ⌈D/256⌉, looping over the rows.
// CPU twins: e2llm_kernels::cpu::{rmsnorm, rmsnorm_backward}.

struct Params {
    rows: u32,
    width: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<f32>;

// Sums `partial[0..256]` into `partial[0]`; every invocation of the workgroup must call it.
fn workgroup_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = partial[lid] + partial[lid + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

@compute @workgroup_size(256)
fn rmsnorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    // Uniform control flow: the row test is the same for the whole workgroup.
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var acc = 0.0;
    for (var d = lid; d < p.width; d = d + WG) {
        let v = x[base + d];
        acc = acc + v * v;
    }
    partial[lid] = acc;
    let r = inverseSqrt(workgroup_sum(lid) / f32(p.width) + p.eps);
    for (var d = lid; d < p.width; d = d + WG) {
        y[base + d] = x[base + d] * r * w[d];
    }
    if (lid == 0u) {
        rstd[row] = r;
    }
}

@compute @workgroup_size(256)
fn rmsnorm_bwd_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var acc = 0.0;
    for (var d = lid; d < p.width; d = d + WG) {
        acc = acc + dy[base + d] * w[d] * x[base + d];
    }
    partial[lid] = acc;
    let total = workgroup_sum(lid);
    let r = rstd[row];
    let k = total * r * r * r / f32(p.width);
    for (var d = lid; d < p.width; d = d + WG) {
        dx[base + d] = dy[base + d] * w[d] * r - x[base + d] * k;
    }
}

@compute @workgroup_size(256)
fn rmsnorm_bwd_w(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    if (d >= p.width) {
        return;
    }
    var acc = 0.0;
    for (var row = 0u; row < p.rows; row = row + 1u) {
        let i = row * p.width + d;
        acc = acc + dy[i] * x[i] * rstd[row];
    }
    dw[d] = acc;
}
