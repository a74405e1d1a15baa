// attention.wgsl — causal GQA attention with RoPE applied inside, FlashAttention-2 style:
// online softmax over key tiles forward, scores recomputed tile by tile backward. Memory is
// O(length); the [Sq × Skv] score matrix never exists.
//
// Math, query i of head h (kv head h / (Hq/Hkv)), keys j ≤ past + i (causal; past = Skv − Sq):
//   q'_i = RoPE(q_i, qpos_i / g) · scale,  k'_j = RoPE(k_j, kpos_j / g)   (rotate_half pairs,
//   angle pos · inv_freq_d, cos and sin times the attention factor f — as rope.wgsl)
//   s_ij = q'_i·k'_j,  P_ij = exp(s_ij − lse_i),  o_i = Σ_j P_ij v_j,  lse_i = log Σ_j exp(s_ij).
// Backward (given dO):  δ_i = dO_i·o_i,  dv_j = Σ_i P_ij dO_i,  dS_ij = P_ij (dO_i·v_j − δ_i),
//   dq_i = scale · f·R(−a_i) Σ_j dS_ij k'_j,   dk_j = f·R(−a_j) Σ_i dS_ij q'_i   (GQA: dk, dv sum
//   over the query heads of their group).
//
// Bindings (8 storage buffers at most per entry point: WebGPU's default limit). B sequences
// (Params.batch, grid z) lie one after another in every buffer:
//   0 q [B·Sq·Hq·D]  1 k [B·Skv·Hkv·D]  2 v [B·Skv·Hkv·D]
//   3 aux = qpos [B·Sq] ++ kpos [B·Skv] ++ inv_freq [D/2]
//   4 o [B·Sq·Hq·D]  5 stats = per sequence lse [Hq·Sq] ++ δ [Hq·Sq] ++ l [Hq·Sq]
//   6 uniform Params  7 dO [B·Sq·Hq·D]
//   8 dq [B·Sq·Hq·D]  9 dkv = dk [B·Skv·Hkv·D] ++ dv [B·Skv·Hkv·D]
//   10 part: split-key decode partial states [B·Sq·Hq·splits·(D + 2)]
// Each entry point binds a subset; a launcher that numbers bindings 0.. in order (burn's cubecl
// runtime: storage buffers, then Params as its uniform "info" binding) gets the module from
// e2llm_kernels::shaders::for_entry. Params must stay uniform: loop bounds around barriers come
// from it, and WGSL's uniformity analysis (Chrome's Tint) rejects them read from read_write storage.
// Entry points and dispatch (workgroups of 64; tiles of 2048/D rows in 16 KiB of workgroup memory;
// each invocation of the tiled kernels takes QB = 4 adjacent rows, so one read of a tile row from
// workgroup memory feeds four rows' sums — on CPU rasterisers (lavapipe, SwiftShader) those
// reads, not the arithmetic, bound the kernels: 3× faster than one row per invocation there):
//   attention_fwd      grid (⌈Sq/256⌉ − first_block(), Hq, B): 256 queries of one head; writes o,
//                      lse. Blocks with no key in the chunk are not launched (but the last chunk
//                      finishes every block); each block's tile loop runs the whole chunk.
//   attention_bwd_prep grid (⌈Sq·Hq/64⌉, 1, B): writes δ.
//   attention_bwd_dq   grid (⌈Sq/256⌉ − first_block(), Hq, B): 256 queries; loops over key
//                      tiles (as the forward); writes dq.
//   attention_bwd_dkv  grid (⌈Skv/256⌉, Hkv, B): 256 keys; loops over query tiles of each head of
//                      the group; writes dk, dv.
//   attention_decode   grid (splits, Hq, B·Sq): the forward for few queries (a KV-cache step):
//                      each workgroup takes c_end keys of one query, 64 keys at a time, and
//                      writes one partial (m, l, acc) to part; attention_decode_combine, grid
//                      (⌈B·Sq·Hq/64⌉) with c_begin = splits, merges them into o and lse.
// D ≤ 128 and even.
// Long loops are split across dispatches (c_begin/c_end, at most 8 tiles each, ~2·2048 inner
// iterations per tile): llvmpipe (lavapipe) ends every loop of a shader once the invocation has
// run 65,535 loop iterations in all (LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop) — past
// that a workgroup's output was silently lost.
// Between chunks the running state lives in the output buffers: the forward keeps the
// unnormalised accumulator in o and (m, l) in stats[2·Hq·Sq..]; dq and dk keep the unrotated
// sums in dq and dkv, dv its sum in dkv.
// CPU twins: e2llm_kernels::cpu::{attention, attention_backward}.

struct Params {
    sq: u32,
    skv: u32,
    hq: u32,
    hkv: u32,
    head_dim: u32,
    scale: f32,
    inv_g: f32,
    factor: f32,
    // The chunk of the tile loop this dispatch runs: key rows [c_begin, c_end) for the forward
    // and dq (multiples of the tile), loop steps [c_begin, c_end) of (head, query tile) for dkv.
    c_begin: u32,
    c_end: u32,
    // 1 on the last chunk: finish (normalise / rotate back) instead of storing the state.
    last: u32,
    // Sequences in the batch (grid z); each has its own q/k/v/o block, positions and stats.
    batch: u32,
}

const WG: u32 = 64u;
const TILE_FLOATS: u32 = 2048u;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<storage, read> d_o: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;
@group(0) @binding(9) var<storage, read_write> dkv: array<f32>;
@group(0) @binding(10) var<storage, read_write> part: array<f32>;

// Offsets of this workgroup's sequence b (set first thing in every entry point): qo into q, o,
// dO, dq; ko into k, v, dk (dv follows dk after B·Skv·Hkv·D); so into stats; b itself for aux.
var<private> b: u32;
var<private> qo: u32;
var<private> ko: u32;
var<private> so: u32;

fn set_batch(bi: u32) {
    b = bi;
    qo = bi * p.sq * p.hq * p.head_dim;
    ko = bi * p.skv * p.hkv * p.head_dim;
    so = bi * 3u * p.hq * p.sq;
}

// dv's offset in dkv: it follows every sequence's dk.
fn dv_at(i: u32) -> u32 {
    return p.batch * p.skv * p.hkv * p.head_dim + ko + i;
}

var<workgroup> ts: array<f32, 2048>;
var<workgroup> us: array<f32, 2048>;

fn qpos(i: u32) -> f32 {
    return aux[b * p.sq + i];
}
fn kpos(j: u32) -> f32 {
    return aux[p.batch * p.sq + b * p.skv + j];
}
fn inv_freq(j: u32) -> f32 {
    return aux[p.batch * (p.sq + p.skv) + j];
}

// (cos, sin) of pair j at position `pos`, times the attention factor; `dir` −1 inverts.
fn rot(pos: f32, j: u32, dir: f32) -> vec2<f32> {
    let a = dir * pos * p.inv_g * inv_freq(j);
    return vec2<f32>(cos(a), sin(a)) * p.factor;
}

// Query qi of head h rotated to its position and scaled, q'_i = RoPE(q_i, qpos_i / g) · scale,
// into *qr (the current sequence's q; call after set_batch).
fn rotate_q_into(qr: ptr<function, array<f32, 128>>, qi: u32, h: u32) {
    let d = p.head_dim;
    let half = d / 2u;
    let base = qo + (qi * p.hq + h) * d;
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(qpos(qi), j, 1.0);
        let x0 = q[base + j];
        let x1 = q[base + j + half];
        (*qr)[j] = (x0 * cs.x - x1 * cs.y) * p.scale;
        (*qr)[j + half] = (x1 * cs.x + x0 * cs.y) * p.scale;
    }
}

// Loads key rows t0..t0+tile of kv head `kvh` into `ts` (rotated) and their values into `us`;
// rows past Skv are zero. Every invocation of the workgroup calls it, between barriers.
fn load_kv_tile(t0: u32, tile: u32, kvh: u32, lid: u32) {
    let d = p.head_dim;
    let half = d / 2u;
    for (var e = lid; e < tile * half; e = e + WG) {
        let r = e / half;
        let j = e % half;
        let kj = t0 + r;
        var k0 = 0.0;
        var k1 = 0.0;
        if (kj < p.skv) {
            let base = (kj * p.hkv + kvh) * d;
            let cs = rot(kpos(kj), j, 1.0);
            let x0 = k[ko + base + j];
            let x1 = k[ko + base + j + half];
            k0 = x0 * cs.x - x1 * cs.y;
            k1 = x1 * cs.x + x0 * cs.y;
        }
        ts[r * d + j] = k0;
        ts[r * d + j + half] = k1;
    }
    for (var e = lid; e < tile * d; e = e + WG) {
        let kj = t0 + e / d;
        var val = 0.0;
        if (kj < p.skv) {
            val = v[ko + (kj * p.hkv + kvh) * d + e % d];
        }
        us[e] = val;
    }
}

// Rows (queries, or keys for dk/dv) per invocation of the tiled kernels; see the header.
const QB: u32 = 4u;

// Row block of workgroup x out of n: 0, n−1, 1, n−2, … Causal blocks cost more the later their
// queries (or the earlier their keys); pairing heavy with light balances runtimes that hand
// out workgroups in contiguous runs (llvmpipe: 1.2× at one head of 4k).
fn zigzag(x: u32, n: u32) -> u32 {
    return select(n - 1u - x / 2u, x / 2u, x % 2u == 0u);
}

// Causal limits of the QB queries q0 .. q0 + 3 (the forward and dq): component c is the number
// of keys query q0 + c sees, past + q0 + c + 1 (key j is seen when j < it).
fn seen_limits(q0: u32) -> vec4<u32> {
    return vec4<u32>(p.skv - p.sq + q0 + 1u) + vec4<u32>(0u, 1u, 2u, 3u);
}

// Keys any of queries q0 .. q0 + 3 sees: those of the last one in range (0: none in range).
fn keys_seen(q0: u32) -> u32 {
    return select(0u, p.skv - p.sq + min(q0 + QB, p.sq), q0 < p.sq);
}

// First query block with work in this chunk of keys [c_begin, c_end) (the forward and dq): blocks
// whose queries all end before key c_begin are not launched (the host's grid starts here) —
// except on the last chunk, which finishes every block.
fn first_block() -> u32 {
    let past = p.skv - p.sq;
    return select(0u, (p.c_begin - past) / (WG * QB), p.c_begin > past && p.last == 0u);
}

// Starts query qi's forward state: rotated q, and (a later chunk) the stored (m, l, acc).
fn fwd_begin(qr: ptr<function, array<f32, 128>>, acc: ptr<function, array<f32, 128>>, qi: u32,
             h: u32) -> vec2<f32> {
    if (qi >= p.sq) {
        return vec2<f32>(-3.0e38, 0.0);
    }
    rotate_q_into(qr, qi, h);
    if (p.c_begin == 0u) {
        return vec2<f32>(-3.0e38, 0.0);
    }
    let base_q = qo + (qi * p.hq + h) * p.head_dim;
    for (var j = 0u; j < p.head_dim; j = j + 1u) {
        (*acc)[j] = o[base_q + j];
    }
    let hn = p.hq * p.sq;
    return vec2<f32>(stats[so + h * p.sq + qi], stats[so + 2u * hn + h * p.sq + qi]);
}

// Stores query qi's forward state: o and lse on the last chunk, else acc and (m, l).
fn fwd_end(acc: ptr<function, array<f32, 128>>, qi: u32, h: u32, m: f32, l: f32) {
    if (qi >= p.sq) {
        return;
    }
    let base_q = qo + (qi * p.hq + h) * p.head_dim;
    let hn = p.hq * p.sq;
    let fin = p.last == 1u;
    let inv_l = select(1.0, 1.0 / l, fin);
    for (var j = 0u; j < p.head_dim; j = j + 1u) {
        o[base_q + j] = (*acc)[j] * inv_l;
    }
    stats[so + h * p.sq + qi] = select(m, m + log(l), fin);
    if (!fin) {
        stats[so + 2u * hn + h * p.sq + qi] = l;
    }
}

@compute @workgroup_size(64)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let d = p.head_dim;
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let q_first = (first_block() + zigzag(wid.x, nwg.x)) * WG * QB;
    let q0 = q_first + lid * QB;

    var qa: array<f32, 128>;
    var qb: array<f32, 128>;
    var qc: array<f32, 128>;
    var qd: array<f32, 128>;
    var aa: array<f32, 128>;
    var ab: array<f32, 128>;
    var ac: array<f32, 128>;
    var ad: array<f32, 128>;
    let sa = fwd_begin(&qa, &aa, q0, h);
    let sb = fwd_begin(&qb, &ab, q0 + 1u, h);
    let sc = fwd_begin(&qc, &ac, q0 + 2u, h);
    let sd = fwd_begin(&qd, &ad, q0 + 3u, h);
    var m = vec4<f32>(sa.x, sb.x, sc.x, sd.x);
    var l = vec4<f32>(sa.y, sb.y, sc.y, sd.y);
    let lim = seen_limits(q0);
    let kn = keys_seen(q0);

    let tile = TILE_FLOATS / d;
    // The loop runs the whole chunk, its bound a plain uniform: bounded by the block's last key
    // instead, it ran 1.2–3.5× slower on lavapipe at lengths off a power-of-two tile count.
    for (var t0 = p.c_begin; t0 < p.c_end; t0 = t0 + tile) {
        load_kv_tile(t0, tile, kvh, lid);
        workgroupBarrier();
        let hi = min(min(t0 + tile, p.skv), kn);
        let n = select(0u, hi - t0, hi > t0);
        for (var r = 0u; r < n; r = r + 1u) {
            let rb = r * d;
            var s = vec4<f32>(0.0);
            for (var j = 0u; j < d; j = j + 1u) {
                s = s + vec4<f32>(qa[j], qb[j], qc[j], qd[j]) * ts[rb + j];
            }
            let seen = vec4<u32>(t0 + r) < lim;
            let m_new = select(m, max(m, s), seen);
            let corr = exp(m - m_new);
            let w = select(vec4<f32>(0.0), exp(s - m_new), seen);
            l = l * corr + w;
            m = m_new;
            for (var j = 0u; j < d; j = j + 1u) {
                let u = us[rb + j];
                aa[j] = aa[j] * corr.x + w.x * u;
                ab[j] = ab[j] * corr.y + w.y * u;
                ac[j] = ac[j] * corr.z + w.z * u;
                ad[j] = ad[j] * corr.w + w.w * u;
            }
        }
        workgroupBarrier();
    }
    fwd_end(&aa, q0, h, m.x, l.x);
    fwd_end(&ab, q0 + 1u, h, m.y, l.y);
    fwd_end(&ac, q0 + 2u, h, m.z, l.z);
    fwd_end(&ad, q0 + 3u, h, m.w, l.w);
}

// Split-key decode, for few queries (the KV-cache case): workgroup (split, h, b·Sq + i) takes
// keys [split·c_end, (split+1)·c_end) of query i, one key per invocation at a time (no barrier
// inside the key loop), then reduces its 64 running (m, l, acc) states in workgroup memory and
// writes one partial state to part[((b·Sq + i)·Hq + h)·splits + split] (d + 2 floats: m, l, acc).
// attention_decode_combine merges the splits of each (b, i, h) into o and lse.
@compute @workgroup_size(64)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let bi = wid.z / p.sq;
    let qi = wid.z % p.sq;
    set_batch(bi);
    let d = p.head_dim;
    let half = d / 2u;
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let past = p.skv - p.sq;
    var acc: array<f32, 128>;
    var qr: array<f32, 128>;
    rotate_q_into(&qr, qi, h);
    var m = -3.0e38;
    var l = 0.0;
    let k0 = wid.x * p.c_end;
    let k1 = min(k0 + p.c_end, past + qi + 1u);
    for (var kj = k0 + lid; kj < k1; kj = kj + WG) {
        let kb = (kj * p.hkv + kvh) * d;
        var s = 0.0;
        for (var j = 0u; j < half; j = j + 1u) {
            let cs = rot(kpos(kj), j, 1.0);
            let x0 = k[ko + kb + j];
            let x1 = k[ko + kb + j + half];
            s = s + qr[j] * (x0 * cs.x - x1 * cs.y) + qr[j + half] * (x1 * cs.x + x0 * cs.y);
        }
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let w = exp(s - m_new);
        l = l * corr + w;
        for (var j = 0u; j < d; j = j + 1u) {
            acc[j] = acc[j] * corr + w * v[ko + kb + j];
        }
        m = m_new;
    }
    // Reduce the 64 states: the max, then l and acc rescaled to it and summed.
    ts[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            ts[lid] = max(ts[lid], ts[lid + s]);
        }
        workgroupBarrier();
    }
    let mx = ts[0];
    workgroupBarrier();
    let scale = exp(m - mx);
    let out = ((wid.z * p.hq + h) * nwg.x + wid.x) * (d + 2u);
    us[lid] = l * scale;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            us[lid] = us[lid] + us[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        part[out] = mx;
        part[out + 1u] = us[0];
    }
    workgroupBarrier();
    // acc in blocks of 32 dimensions: 64 × 32 floats fill ts.
    for (var b0 = 0u; b0 < d; b0 = b0 + 32u) {
        for (var t = 0u; t < 32u; t = t + 1u) {
            var x = 0.0;
            if (b0 + t < d) {
                x = acc[b0 + t] * scale;
            }
            ts[lid * 32u + t] = x;
        }
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) {
                for (var t = 0u; t < 32u; t = t + 1u) {
                    ts[lid * 32u + t] = ts[lid * 32u + t] + ts[(lid + s) * 32u + t];
                }
            }
            workgroupBarrier();
        }
        if (lid < 32u && b0 + lid < d) {
            part[out + 2u + b0 + lid] = ts[lid];
        }
        workgroupBarrier();
    }
}

// Merges the c_begin splits of each (b, i, h) — invocation (b·Sq + i)·Hq + h — into o and lse.
@compute @workgroup_size(64)
fn attention_decode_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= p.batch * p.sq * p.hq) {
        return;
    }
    let d = p.head_dim;
    let splits = p.c_begin;
    let row = idx / p.hq;           // b · Sq + i
    let h = idx % p.hq;
    set_batch(row / p.sq);
    let qi = row % p.sq;
    let first = idx * splits * (d + 2u);
    var mx = -3.0e38;
    for (var s = 0u; s < splits; s = s + 1u) {
        mx = max(mx, part[first + s * (d + 2u)]);
    }
    var lsum = 0.0;
    for (var s = 0u; s < splits; s = s + 1u) {
        let at = first + s * (d + 2u);
        lsum = lsum + part[at + 1u] * exp(part[at] - mx);
    }
    let base_q = (qi * p.hq + h) * d;
    for (var j = 0u; j < d; j = j + 1u) {
        var x = 0.0;
        for (var s = 0u; s < splits; s = s + 1u) {
            let at = first + s * (d + 2u);
            x = x + part[at + 2u + j] * exp(part[at] - mx);
        }
        o[qo + base_q + j] = x / lsum;
    }
    stats[so + h * p.sq + qi] = mx + log(lsum);
}

@compute @workgroup_size(64)
fn attention_bwd_prep(@builtin(global_invocation_id) gid: vec3<u32>) {
    set_batch(gid.z);
    let idx = gid.x;                     // i · Hq + h
    if (idx >= p.sq * p.hq) {
        return;
    }
    let d = p.head_dim;
    let i = idx / p.hq;
    let h = idx % p.hq;
    var acc = 0.0;
    for (var j = 0u; j < d; j = j + 1u) {
        acc = acc + d_o[qo + idx * d + j] * o[qo + idx * d + j];
    }
    stats[so + p.hq * p.sq + h * p.sq + i] = acc;
}

// Starts query qi's dq state: rotated q, its dO, (a later chunk) the stored sum; returns
// (lse, δ). Rows past Sq stay zero.
fn dq_begin(qr: ptr<function, array<f32, 128>>, dor: ptr<function, array<f32, 128>>,
            acc: ptr<function, array<f32, 128>>, qi: u32, h: u32) -> vec2<f32> {
    if (qi >= p.sq) {
        return vec2<f32>(0.0);
    }
    rotate_q_into(qr, qi, h);
    let base = qo + (qi * p.hq + h) * p.head_dim;
    for (var j = 0u; j < p.head_dim; j = j + 1u) {
        (*dor)[j] = d_o[base + j];
    }
    if (p.c_begin > 0u) {
        for (var j = 0u; j < p.head_dim; j = j + 1u) {
            (*acc)[j] = dq[base + j];
        }
    }
    return vec2<f32>(stats[so + h * p.sq + qi], stats[so + p.hq * p.sq + h * p.sq + qi]);
}

// Stores query qi's dq: the running sum, or on the last chunk scaled and rotated back.
fn dq_end(acc: ptr<function, array<f32, 128>>, qi: u32, h: u32) {
    if (qi >= p.sq) {
        return;
    }
    let d = p.head_dim;
    let half = d / 2u;
    let base = qo + (qi * p.hq + h) * d;
    if (p.last == 0u) {
        for (var j = 0u; j < d; j = j + 1u) {
            dq[base + j] = (*acc)[j];
        }
        return;
    }
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(qpos(qi), j, -1.0);
        let x0 = (*acc)[j] * p.scale;
        let x1 = (*acc)[j + half] * p.scale;
        dq[base + j] = x0 * cs.x - x1 * cs.y;
        dq[base + j + half] = x1 * cs.x + x0 * cs.y;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let d = p.head_dim;
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let q_first = (first_block() + zigzag(wid.x, nwg.x)) * WG * QB;
    let q0 = q_first + lid * QB;

    var qa: array<f32, 128>;
    var qb: array<f32, 128>;
    var qc: array<f32, 128>;
    var qd: array<f32, 128>;
    var oa: array<f32, 128>;
    var ob: array<f32, 128>;
    var oc: array<f32, 128>;
    var od: array<f32, 128>;
    var ga: array<f32, 128>;
    var gb: array<f32, 128>;
    var gc: array<f32, 128>;
    var gd: array<f32, 128>;
    let sa = dq_begin(&qa, &oa, &ga, q0, h);
    let sb = dq_begin(&qb, &ob, &gb, q0 + 1u, h);
    let sc = dq_begin(&qc, &oc, &gc, q0 + 2u, h);
    let sd = dq_begin(&qd, &od, &gd, q0 + 3u, h);
    let lse = vec4<f32>(sa.x, sb.x, sc.x, sd.x);
    let delta = vec4<f32>(sa.y, sb.y, sc.y, sd.y);
    let lim = seen_limits(q0);
    let kn = keys_seen(q0);

    let tile = TILE_FLOATS / d;
    // The whole chunk, as the forward (see there).
    for (var t0 = p.c_begin; t0 < p.c_end; t0 = t0 + tile) {
        load_kv_tile(t0, tile, kvh, lid);
        workgroupBarrier();
        let hi = min(min(t0 + tile, p.skv), kn);
        let n = select(0u, hi - t0, hi > t0);
        for (var r = 0u; r < n; r = r + 1u) {
            let rb = r * d;
            var s = vec4<f32>(0.0);
            var dp = vec4<f32>(0.0);
            for (var j = 0u; j < d; j = j + 1u) {
                s = s + vec4<f32>(qa[j], qb[j], qc[j], qd[j]) * ts[rb + j];
                dp = dp + vec4<f32>(oa[j], ob[j], oc[j], od[j]) * us[rb + j];
            }
            let seen = vec4<u32>(t0 + r) < lim;
            let ds = select(vec4<f32>(0.0), exp(s - lse) * (dp - delta), seen);
            for (var j = 0u; j < d; j = j + 1u) {
                let t = ts[rb + j];
                ga[j] = ga[j] + ds.x * t;
                gb[j] = gb[j] + ds.y * t;
                gc[j] = gc[j] + ds.z * t;
                gd[j] = gd[j] + ds.w * t;
            }
        }
        workgroupBarrier();
    }
    dq_end(&ga, q0, h);
    dq_end(&gb, q0 + 1u, h);
    dq_end(&gc, q0 + 2u, h);
    dq_end(&gd, q0 + 3u, h);
}

// Starts key kj's dk/dv state: rotated k, v, (a later chunk) the stored sums. Rows past Skv
// stay zero.
fn dkv_begin(kr: ptr<function, array<f32, 128>>, vr: ptr<function, array<f32, 128>>,
             dka: ptr<function, array<f32, 128>>, dva: ptr<function, array<f32, 128>>, kj: u32,
             kvh: u32) {
    if (kj >= p.skv) {
        return;
    }
    let d = p.head_dim;
    let half = d / 2u;
    let base = (kj * p.hkv + kvh) * d;
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(kpos(kj), j, 1.0);
        let x0 = k[ko + base + j];
        let x1 = k[ko + base + j + half];
        (*kr)[j] = x0 * cs.x - x1 * cs.y;
        (*kr)[j + half] = x1 * cs.x + x0 * cs.y;
    }
    for (var j = 0u; j < d; j = j + 1u) {
        (*vr)[j] = v[ko + base + j];
    }
    if (p.c_begin > 0u) {
        for (var j = 0u; j < d; j = j + 1u) {
            (*dka)[j] = dkv[ko + base + j];
            (*dva)[j] = dkv[dv_at(base + j)];
        }
    }
}

// Stores key kj's dk and dv: the running sums, or on the last chunk dk rotated back.
fn dkv_end(dka: ptr<function, array<f32, 128>>, dva: ptr<function, array<f32, 128>>, kj: u32,
           kvh: u32) {
    if (kj >= p.skv) {
        return;
    }
    let d = p.head_dim;
    let half = d / 2u;
    let base = (kj * p.hkv + kvh) * d;
    for (var j = 0u; j < d; j = j + 1u) {
        dkv[dv_at(base + j)] = (*dva)[j];
    }
    if (p.last == 0u) {
        for (var j = 0u; j < d; j = j + 1u) {
            dkv[ko + base + j] = (*dka)[j];
        }
        return;
    }
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(kpos(kj), j, -1.0);
        dkv[ko + base + j] = (*dka)[j] * cs.x - (*dka)[j + half] * cs.y;
        dkv[ko + base + j + half] = (*dka)[j + half] * cs.x + (*dka)[j] * cs.y;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let d = p.head_dim;
    let half = d / 2u;
    let kvh = wid.y;
    let group = p.hq / p.hkv;
    let past = p.skv - p.sq;
    let k_first = zigzag(wid.x, nwg.x) * WG * QB;
    let k0 = k_first + lid * QB;

    var ka: array<f32, 128>;
    var kb: array<f32, 128>;
    var kc: array<f32, 128>;
    var kd: array<f32, 128>;
    var va: array<f32, 128>;
    var vb: array<f32, 128>;
    var vc: array<f32, 128>;
    var vd: array<f32, 128>;
    var ga: array<f32, 128>;
    var gb: array<f32, 128>;
    var gc: array<f32, 128>;
    var gd: array<f32, 128>;
    var ua: array<f32, 128>;
    var ub: array<f32, 128>;
    var uc: array<f32, 128>;
    var ud: array<f32, 128>;
    dkv_begin(&ka, &va, &ga, &ua, k0, kvh);
    dkv_begin(&kb, &vb, &gb, &ub, k0 + 1u, kvh);
    dkv_begin(&kc, &vc, &gc, &uc, k0 + 2u, kvh);
    dkv_begin(&kd, &vd, &gd, &ud, k0 + 3u, kvh);
    let keys = vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u);
    let live = keys < vec4<u32>(p.skv);

    let tile = TILE_FLOATS / d;
    // Queries that see the first key of this workgroup: i ≥ k_first − past.
    let q_start = select(0u, k_first - past, k_first > past);
    // One flat loop over (head of the group, query tile).
    let first = q_start - q_start % tile;
    let n_tiles = (p.sq - first + tile - 1u) / tile;
    for (var it = p.c_begin; it < min(group * n_tiles, p.c_end); it = it + 1u) {
        let h = kvh * group + it / n_tiles;
        let t0 = first + (it % n_tiles) * tile;
        for (var e = lid; e < tile * half; e = e + WG) {
            let r = e / half;
            let j = e % half;
            let qi = t0 + r;
            var q0 = 0.0;
            var q1 = 0.0;
            if (qi < p.sq) {
                let base = (qi * p.hq + h) * d;
                let cs = rot(qpos(qi), j, 1.0);
                let x0 = q[qo + base + j];
                let x1 = q[qo + base + j + half];
                q0 = (x0 * cs.x - x1 * cs.y) * p.scale;
                q1 = (x1 * cs.x + x0 * cs.y) * p.scale;
            }
            ts[r * d + j] = q0;
            ts[r * d + j + half] = q1;
        }
        for (var e = lid; e < tile * d; e = e + WG) {
            let qi = t0 + e / d;
            var val = 0.0;
            if (qi < p.sq) {
                val = d_o[qo + (qi * p.hq + h) * d + e % d];
            }
            us[e] = val;
        }
        workgroupBarrier();
        let n = min(tile, p.sq - t0);
        for (var r = 0u; r < n; r = r + 1u) {
            let qi = t0 + r;
            // Key k0 + c is seen by query qi when k0 + c ≤ past + qi.
            if (k0 <= past + qi && k0 < p.skv) {
                let rb = r * d;
                var s = vec4<f32>(0.0);
                var dp = vec4<f32>(0.0);
                for (var j = 0u; j < d; j = j + 1u) {
                    s = s + vec4<f32>(ka[j], kb[j], kc[j], kd[j]) * ts[rb + j];
                    dp = dp + vec4<f32>(va[j], vb[j], vc[j], vd[j]) * us[rb + j];
                }
                let seen = live & (keys <= vec4<u32>(past + qi));
                let pij = select(vec4<f32>(0.0), exp(s - stats[so + h * p.sq + qi]), seen);
                let ds = pij * (dp - stats[so + p.hq * p.sq + h * p.sq + qi]);
                for (var j = 0u; j < d; j = j + 1u) {
                    let t = ts[rb + j];
                    let u = us[rb + j];
                    ga[j] = ga[j] + ds.x * t;
                    gb[j] = gb[j] + ds.y * t;
                    gc[j] = gc[j] + ds.z * t;
                    gd[j] = gd[j] + ds.w * t;
                    ua[j] = ua[j] + pij.x * u;
                    ub[j] = ub[j] + pij.y * u;
                    uc[j] = uc[j] + pij.z * u;
                    ud[j] = ud[j] + pij.w * u;
                }
            }
        }
        workgroupBarrier();
    }
    dkv_end(&ga, &ua, k0, kvh);
    dkv_end(&gb, &ub, k0 + 1u, kvh);
    dkv_end(&gc, &uc, k0 + 2u, kvh);
    dkv_end(&gd, &ud, k0 + 3u, kvh);
}
