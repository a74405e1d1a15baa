// attention_map.wgsl — the softmax weights of one head for a window of query rows, pooled into a
// fixed-size image, at any length and without the [Sq × Skv] matrix (for the visualisers).
//
// Math: for query i (global index past + i, past = Skv − Sq) and key j ≤ past + i,
//   P_ij = exp(q'_i·k'_j − lse_i) with q', k' as in attention.wgsl (RoPE at pos / g, q' scaled)
//   and lse from attention_fwd. The window rows [row0, row0 + nrows) are split into `out_rows`
//   equal bins and the keys [0, Skv) into `out_cols` bins; a cell holds the mean over its rows of
//   the summed weight of its keys (so each image row sums to ~1, masked keys count 0).
// Bindings: 0 q [Sq·Hq·D]  1 k [Skv·Hkv·D]  3 aux = qpos ++ kpos ++ inv_freq (as attention.wgsl)
//           5 stats (lse [Hq·Sq] first)  6 uniform Params  7 image [out_rows·out_cols] (write)
// Dispatch: one invocation per cell, workgroup 64, grid ⌈out_rows·out_cols / 64⌉.
// CPU twin: e2llm_kernels::cpu::attention_map.

struct Params {
    sq: u32,
    skv: u32,
    hq: u32,
    hkv: u32,
    head_dim: u32,
    scale: f32,
    inv_g: f32,
    factor: f32,
    head: u32,
    row0: u32,
    nrows: u32,
    out_rows: u32,
    out_cols: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read> stats: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<storage, read_write> image: array<f32>;

// Rotated component pair (j, j + D/2) of row `base` of `src` at position `pos`.
fn rotated(x0: f32, x1: f32, pos: f32, j: u32) -> vec2<f32> {
    let a = pos * p.inv_g * aux[p.sq + p.skv + j];
    let c = cos(a) * p.factor;
    let s = sin(a) * p.factor;
    return vec2<f32>(x0 * c - x1 * s, x1 * c + x0 * s);
}

@compute @workgroup_size(64)
fn attention_map(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cell = gid.x;
    if (cell >= p.out_rows * p.out_cols) {
        return;
    }
    let d = p.head_dim;
    let half = d / 2u;
    let h = p.head;
    let kvh = h / (p.hq / p.hkv);
    let past = p.skv - p.sq;
    let br = cell / p.out_cols;
    let bc = cell % p.out_cols;
    let r_lo = p.row0 + br * p.nrows / p.out_rows;
    let r_hi = p.row0 + (br + 1u) * p.nrows / p.out_rows;
    let c_lo = bc * p.skv / p.out_cols;
    let c_hi = (bc + 1u) * p.skv / p.out_cols;
    var total = 0.0;
    for (var i = r_lo; i < r_hi; i = i + 1u) {
        let qb = (i * p.hq + h) * d;
        let lse = stats[h * p.sq + i];
        let last = min(c_hi, past + i + 1u);
        for (var j = c_lo; j < last; j = j + 1u) {
            let kb = (j * p.hkv + kvh) * d;
            var s = 0.0;
            for (var e = 0u; e < half; e = e + 1u) {
                let qr = rotated(q[qb + e], q[qb + e + half], aux[i], e);
                let kr = rotated(k[kb + e], k[kb + e + half], aux[p.sq + j], e);
                s = s + qr.x * kr.x + qr.y * kr.y;
            }
            total = total + exp(s * p.scale - lse);
        }
    }
    image[cell] = total / f32(max(r_hi - r_lo, 1u));
}
