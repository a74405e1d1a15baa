// cross_entropy.wgsl — weighted next-token cross-entropy: log-softmax, NLL and the gradient in
// one pass over each row of logits.
//
// Math, row n of logits z [V], target c, weight w, scale k = 1 / Σ_n w_n:
//   lse = max z + log Σ exp(z − max z),  loss_n = w_n · (lse − z_c),
//   dz_v = k · w_n · (softmax(z)_v − [v = c])   (the gradient of Σ_n loss_n · k).
// Bindings: 0 logits [N·V]  1 targets [N] u32  2 weights [N]  3 loss [N] (write)
//           4 dlogits [N·V] (write)  5 uniform Params
// Dispatch: one workgroup of 256 per row, grid (min(N, 65535), ⌈N/65535⌉).
// CPU twin: e2llm_kernels::cpu::cross_entropy.

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(256)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    // Pass 1: max.
    var m = -3.0e38;
    for (var v = lid; v < p.vocab; v = v + WG) {
        m = max(m, logits[base + v]);
    }
    partial[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = max(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let mx = partial[0];
    workgroupBarrier();
    // Pass 2: Σ exp(z − max).
    var acc = 0.0;
    for (var v = lid; v < p.vocab; v = v + WG) {
        acc = acc + exp(logits[base + v] - mx);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = partial[lid] + partial[lid + s];
        }
        workgroupBarrier();
    }
    let sum = partial[0];
    let lse = mx + log(sum);
    let c = targets[row];
    let w = weights[row];
    if (lid == 0u) {
        loss[row] = w * (lse - logits[base + c]);
    }
    // Pass 3: gradient.
    let k = p.scale * w;
    for (var v = lid; v < p.vocab; v = v + WG) {
        var d = exp(logits[base + v] - lse);
        if (v == c) {
            d = d - 1.0;
        }
        dlogits[base + v] = k * d;
    }
}
