// attention.wgsl — causal GQA attention with RoPE applied inside, online softmax over key tiles
// (FlashAttention-style forward): memory O(length), never the [Sq × Skv] score matrix.
//
// Math, query i of head h (kv head h / (Hq/Hkv)), keys j ≤ past + i (causal; past = Skv − Sq):
//   q' = RoPE(q_i, qpos_i / g),  k'_j = RoPE(k_j, kpos_j / g)   (rotate_half pairs, angle
//   pos · inv_freq_d, cos and sin times the attention factor f — as rope.wgsl)
//   s_j = scale · q'·k'_j,  o_i = Σ_j softmax(s)_j · v_j,  lse_i = log Σ_j exp(s_j).
// The running max m, denominator l and accumulator are updated key by key (online softmax),
// so a tile of keys is read once per 64 queries.
//
// Bindings: 0 q [Sq·Hq·D]  1 k [Skv·Hkv·D]  2 v [Skv·Hkv·D]  3 qpos [Sq]  4 kpos [Skv]
//           5 inv_freq [D/2]  6 o [Sq·Hq·D] (write)  7 lse [Hq·Sq] (write)  8 uniform Params
// Dispatch: workgroup of 64 queries of one head; grid (⌈Sq/64⌉, Hq). Workgroup memory: one
//   rotated K tile and one V tile of 2048/D keys each, 16 KiB in all (WebGPU's default limit).
//   D ≤ 128 and even.
// CPU twin: e2llm_kernels::cpu::attention.

struct Params {
    sq: u32,
    skv: u32,
    hq: u32,
    hkv: u32,
    head_dim: u32,
    scale: f32,
    inv_g: f32,
    factor: f32,
}

const WG: u32 = 64u;
const MAX_D: u32 = 128u;
const TILE_FLOATS: u32 = 2048u;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> qpos: array<f32>;
@group(0) @binding(4) var<storage, read> kpos: array<f32>;
@group(0) @binding(5) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

var<workgroup> ks: array<f32, 2048>;
var<workgroup> vs: array<f32, 2048>;

@compute @workgroup_size(64)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let d = p.head_dim;
    let half = d / 2u;
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let past = p.skv - p.sq;
    let qi = wid.x * WG + lid;
    let in_range = qi < p.sq;

    // Rotated, scaled query in registers.
    var qr: array<f32, 128>;
    var acc: array<f32, 128>;
    if (in_range) {
        let base = (qi * p.hq + h) * d;
        let pq = qpos[qi] * p.inv_g;
        for (var j = 0u; j < half; j = j + 1u) {
            let a = pq * inv_freq[j];
            let c = cos(a) * p.factor;
            let s = sin(a) * p.factor;
            let x0 = q[base + j];
            let x1 = q[base + j + half];
            qr[j] = (x0 * c - x1 * s) * p.scale;
            qr[j + half] = (x1 * c + x0 * s) * p.scale;
        }
    }
    for (var j = 0u; j < d; j = j + 1u) {
        acc[j] = 0.0;
    }
    var m = -3.0e38;
    var l = 0.0;

    let tile = TILE_FLOATS / d;
    // Keys the last query of this workgroup can see (uniform across the workgroup).
    let last_q = min(wid.x * WG + WG, p.sq) - 1u;
    let kend = min(p.skv, past + last_q + 1u);
    for (var t0 = 0u; t0 < kend; t0 = t0 + tile) {
        // Cooperative load of the tile: K rotated pair by pair, V as is.
        let n_pairs = tile * half;
        for (var e = lid; e < n_pairs; e = e + WG) {
            let r = e / half;
            let j = e % half;
            let kj = t0 + r;
            var k0 = 0.0;
            var k1 = 0.0;
            if (kj < p.skv) {
                let base = (kj * p.hkv + kvh) * d;
                let a = kpos[kj] * p.inv_g * inv_freq[j];
                let c = cos(a) * p.factor;
                let s = sin(a) * p.factor;
                let x0 = k[base + j];
                let x1 = k[base + j + half];
                k0 = x0 * c - x1 * s;
                k1 = x1 * c + x0 * s;
            }
            ks[r * d + j] = k0;
            ks[r * d + j + half] = k1;
        }
        for (var e = lid; e < tile * d; e = e + WG) {
            let r = e / d;
            let kj = t0 + r;
            var val = 0.0;
            if (kj < p.skv) {
                val = v[(kj * p.hkv + kvh) * d + e % d];
            }
            vs[e] = val;
        }
        workgroupBarrier();
        if (in_range) {
            let hi = min(min(t0 + tile, p.skv), past + qi + 1u);
            let visible = select(0u, hi - t0, hi > t0);
            for (var r = 0u; r < visible; r = r + 1u) {
                var s = 0.0;
                for (var j = 0u; j < d; j = j + 1u) {
                    s = s + qr[j] * ks[r * d + j];
                }
                let m_new = max(m, s);
                let corr = exp(m - m_new);
                let w = exp(s - m_new);
                l = l * corr + w;
                for (var j = 0u; j < d; j = j + 1u) {
                    acc[j] = acc[j] * corr + w * vs[r * d + j];
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if (in_range) {
        let base = (qi * p.hq + h) * d;
        let inv_l = 1.0 / l;
        for (var j = 0u; j < d; j = j + 1u) {
            o[base + j] = acc[j] * inv_l;
        }
        lse[h * p.sq + qi] = m + log(l);
    }
}
