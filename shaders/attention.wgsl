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
//   0 q [B·Sq·Hq·D]  1 k [B·Skv·Hkv·D]  2 v [B·Skv·Hkv·D]   (k, v: f32, or f16 in the forward
//   built for a half-precision KV cache — `kv_t` below; the backward is f32 only)
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
// each invocation of the tiled kernels takes QB adjacent rows, 64·QB per workgroup. QB = 4 as
// written: one read of a tile row from workgroup memory feeds QB rows' sums — on CPU
// rasterisers (lavapipe, SwiftShader) those reads, not the arithmetic, bound the kernels: 3×
// faster than one row per invocation there, and QB 8 (head width ≤ 32) another 1.6× forward.
// GPUs take fewer rows by head width; see "Rows per invocation" below):
//   attention_fwd      grid (⌈Sq/(64·QB)⌉ − first_block(), Hq, B): 64·QB queries of one head;
//                      writes o, lse. Blocks with no key in the chunk are not launched (but the
//                      last chunk finishes every block); each block's tile loop runs the whole chunk.
//   attention_fwd_block grid (⌈Sq/64⌉ − first_block_of(64), Hq, B), workgroups of 128: the
//                      forward for GPUs (head width a multiple of 32; the host runs it at 32
//                      when attention_fwd would get few workgroups): 64 queries of one head
//                      per workgroup, two invocations per query, keys 16 at a time (see its
//                      comment below); the same outputs, chunks and state as attention_fwd.
//   attention_bwd_prep grid (⌈Sq·Hq/64⌉, 1, B): writes δ.
//   attention_bwd_dq   grid (⌈Sq/(64·QB)⌉ − first_block(), Hq, B): 64·QB queries; loops over key
//                      tiles (as the forward); writes dq.
//   attention_bwd_dkv  grid (⌈Skv/(64·QB)⌉, Hkv, B): 64·QB keys; loops over query tiles of each head of
//                      the group; writes dk, dv.
//   attention_decode   grid (splits of the bound page, Hq, B·Sq): the forward for few queries
//                      (a KV-cache step):
//                      each workgroup takes c_end keys of one query, 64 keys at a time, and
//                      writes one partial (m, l, acc) to part; attention_decode_combine, grid
//                      (⌈B·Sq·Hq·D/64⌉, split over y past 65,535) with c_begin = splits, one
//                      invocation per output value, merges them into o and lse.
// D ≤ 128 and even.
// Long loops are split across dispatches (c_begin/c_end; the host's tuning says how many tiles
// each: 8 on CPU rasterisers, ~2·2048 inner iterations per tile): llvmpipe (lavapipe) ends every
// loop of a shader once the invocation has run 65,535 loop iterations in all
// (LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop) — past that a workgroup's output was
// silently lost. GPUs take far longer chunks (fewer passes over the running state).
// Paged keys (a KV cache larger than one binding, 128 MiB in WebGPU and on lavapipe): the
// forward and decode may bind k and v one page at a time — Params.k_base/k_len say which rows
// the bound buffers hold; every dispatch's chunk of keys (or decode splits) lies inside its page,
// so a page is a whole number of tiles and of decode splits. The backward binds all keys.
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
    // The keys the bound k and v buffers hold: rows [k_base, k_base + k_len) of every
    // sequence (a page of a paged KV cache: the forward and decode bind one page per dispatch,
    // whose chunk of keys lies inside it). Unpaged: 0 and Skv.
    k_base: u32,
    k_len: u32,
    pad0: u32,
    pad1: u32,
}

const WG: u32 = 64u;
const TILE_FLOATS: u32 = 2048u;
// The head width D every loop and private array is built for: e2llm_kernels::shaders::specialize
// writes the launch's head_dim here (Params.head_dim carries it too), so loops over a row run a
// constant trip count and GPU compilers can keep the rows in registers. As written: 128.
const HD: u32 = 128u;
// The element type of the k and v buffers. e2llm_kernels::shaders::specialize rewrites this line
// to f16 (and puts `enable f16;` first) for keys and values stored in half precision — an
// inference option (a KV cache half the size, half the bytes read per key); every read goes
// through k_at / v_at, so scores, softmax and sums stay f32 either way. As written: f32.
alias kv_t = f32;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<kv_t>;
@group(0) @binding(2) var<storage, read> v: array<kv_t>;
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
    qo = bi * p.sq * p.hq * HD;
    // Key row kj of sequence bi is at ko + kj·Hkv·D in the bound page: u32 arithmetic wraps,
    // so subtracting the page's first row here is exact for every kj ≥ k_base.
    ko = bi * p.k_len * p.hkv * HD - p.k_base * p.hkv * HD;
    so = bi * 3u * p.hq * p.sq;
}

// Element i of k / v as f32 (a no-op for f32 buffers; f16 is widened exactly).
fn k_at(i: u32) -> f32 {
    return f32(k[i]);
}

fn v_at(i: u32) -> f32 {
    return f32(v[i]);
}

// dv's offset in dkv: it follows every sequence's dk.
fn dv_at(i: u32) -> u32 {
    return p.batch * p.skv * p.hkv * HD + ko + i;
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

// Pair j of query qi of head h rotated to its position and scaled: (q'_j, q'_{j+D/2}) of
// q'_i = RoPE(q_i, qpos_i / g) · scale (the current sequence's q; call after set_batch).
fn q_pair(qi: u32, h: u32, j: u32) -> vec2<f32> {
    let base = qo + (qi * p.hq + h) * HD;
    let cs = rot(qpos(qi), j, 1.0);
    let x0 = q[base + j];
    let x1 = q[base + j + HD / 2u];
    return vec2<f32>(x0 * cs.x - x1 * cs.y, x1 * cs.x + x0 * cs.y) * p.scale;
}

// Query qi of head h rotated and scaled (q_pair) into row c of *qr.
fn rotate_q_into(qr: ptr<function, array<RV, HD>>, c: u32, qi: u32, h: u32) {
    let half = HD / 2u;
    for (var j = 0u; j < half; j = j + 1u) {
        let pr = q_pair(qi, h, j);
        (*qr)[j] = rv_set((*qr)[j], c, pr.x);
        (*qr)[j + half] = rv_set((*qr)[j + half], c, pr.y);
    }
}

// Loads key rows t0..t0+tile of kv head `kvh` into `ts` (rotated) and their values into `us`;
// rows past Skv are zero. Every invocation of the workgroup calls it, between barriers.
fn load_kv_tile(t0: u32, tile: u32, kvh: u32, lid: u32) {
    let d = HD;
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
            let x0 = k_at(ko + base + j);
            let x1 = k_at(ko + base + j + half);
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
            val = v_at(ko + (kj * p.hkv + kvh) * d + e % d);
        }
        us[e] = val;
    }
}

// Rows (queries, or keys for dk/dv) per invocation of the tiled kernels, QB, and the types
// holding one value per row: RV (f32) and RM (bool). The kernels touch them only through
// arithmetic that every RV has (+, −, times a scalar) and the rv_* / rows_* functions below.
// As written QB = 4 (see the header); e2llm_kernels::shaders::specialize builds QB = 1, 2 or 8
// by keeping a line that ends "// QB<digits>" only when its digits name the build's QB and
// uncommenting the lines that start "//QB<n> " (n = the build's QB). QB 8 (two vec4 columns of
// a mat2x4) is for CPU rasterisers: each read of a tile row from workgroup memory feeds eight
// rows' sums (on llvmpipe such a read costs one scalar load per SIMD lane, whatever its width).
const QB: u32 = 4u; // QB4
alias RV = vec4<f32>; // QB4
alias RU = vec4<u32>; // QB4
alias RM = vec4<bool>; // QB4
const LANE = vec4<u32>(0u, 1u, 2u, 3u); // QB4
fn rv_get(x: RV, c: u32) -> f32 { return x[c]; } // QB24
fn rv_set(x: RV, c: u32, val: f32) -> RV { var y = x; y[c] = val; return y; } // QB24
//QB1 const QB: u32 = 1u;
//QB1 alias RV = f32;
//QB1 alias RU = u32;
//QB1 alias RM = bool;
//QB1 const LANE = 0u;
//QB1 fn rv_get(x: RV, c: u32) -> f32 { return x; }
//QB1 fn rv_set(x: RV, c: u32, val: f32) -> RV { return val; }
//QB2 const QB: u32 = 2u;
//QB2 alias RV = vec2<f32>;
//QB2 alias RU = vec2<u32>;
//QB2 alias RM = vec2<bool>;
//QB2 const LANE = vec2<u32>(0u, 1u);
fn rv(x: f32) -> RV { return RV(x); } // QB124
fn rv_mul(a: RV, b: RV) -> RV { return a * b; } // QB124
fn rv_exp(a: RV) -> RV { return exp(a); } // QB124
fn rv_max(a: RV, b: RV) -> RV { return max(a, b); } // QB124
fn rv_sel(f: RV, t: RV, m: RM) -> RV { return select(f, t, m); } // QB124
// Row c's `key < lim0 + c` (does query row c see key `key`, its limit lim0 + c).
fn rows_see(key: u32, lim0: u32) -> RM { return RU(key) < RU(lim0) + LANE; } // QB124
// Row c's `a + c < b` (is key row a + c below the limit b).
fn rows_below(a: u32, b: u32) -> RM { return RU(a) + LANE < RU(b); } // QB124
//QB8 const QB: u32 = 8u;
//QB8 alias RV = mat2x4<f32>;
//QB8 struct RM { lo: vec4<bool>, hi: vec4<bool> }
//QB8 const LANE4 = vec4<u32>(0u, 1u, 2u, 3u);
//QB8 fn rv(x: f32) -> RV { return RV(vec4<f32>(x), vec4<f32>(x)); }
//QB8 fn rv_mul(a: RV, b: RV) -> RV { return RV(a[0] * b[0], a[1] * b[1]); }
//QB8 fn rv_exp(a: RV) -> RV { return RV(exp(a[0]), exp(a[1])); }
//QB8 fn rv_max(a: RV, b: RV) -> RV { return RV(max(a[0], b[0]), max(a[1], b[1])); }
//QB8 fn rv_sel(f: RV, t: RV, m: RM) -> RV { return RV(select(f[0], t[0], m.lo), select(f[1], t[1], m.hi)); }
//QB8 fn rv_get(x: RV, c: u32) -> f32 { return x[c / 4u][c % 4u]; }
//QB8 fn rv_set(x: RV, c: u32, val: f32) -> RV { var y = x; y[c / 4u][c % 4u] = val; return y; }
//QB8 fn rows_see(key: u32, lim0: u32) -> RM { return RM(vec4<u32>(key) < vec4<u32>(lim0) + LANE4, vec4<u32>(key) < vec4<u32>(lim0 + 4u) + LANE4); }
//QB8 fn rows_below(a: u32, b: u32) -> RM { return RM(vec4<u32>(a) + LANE4 < vec4<u32>(b), vec4<u32>(a + 4u) + LANE4 < vec4<u32>(b)); }

// Row block of workgroup x out of n: 0, n−1, 1, n−2, … Causal blocks cost more the later their
// queries (or the earlier their keys); pairing heavy with light balances runtimes that hand
// out workgroups in contiguous runs (llvmpipe: 1.2× at one head of 4k).
fn zigzag(x: u32, n: u32) -> u32 {
    return select(n - 1u - x / 2u, x / 2u, x % 2u == 0u);
}

// Causal limit of query q0: the number of keys it sees, past + q0 + 1 (row c of a block starting
// at q0 sees key j when j < it + c: rows_see).
fn seen_limit(q0: u32) -> u32 {
    return p.skv - p.sq + q0 + 1u;
}

// Keys any of queries q0 .. q0 + QB − 1 sees: those of the last one in range (0: none in range).
fn keys_seen(q0: u32) -> u32 {
    return select(0u, p.skv - p.sq + min(q0 + QB, p.sq), q0 < p.sq);
}

// First query block with work in this chunk of keys [c_begin, c_end) (the forward and dq): blocks
// whose queries all end before key c_begin are not launched (the host's grid starts here) —
// except on the last chunk, which finishes every block.
fn first_block() -> u32 {
    return first_block_of(WG * QB);
}

// first_block for blocks of `per` queries.
fn first_block_of(per: u32) -> u32 {
    let past = p.skv - p.sq;
    return select(0u, (p.c_begin - past) / per, p.c_begin > past && p.last == 0u);
}

// Starts row c of the block, query qi: its rotated q into *qr and (a later chunk) the stored
// acc; returns its stored (m, l), or the initial state.
fn fwd_begin(qr: ptr<function, array<RV, HD>>, acc: ptr<function, array<RV, HD>>, c: u32,
             qi: u32, h: u32) -> vec2<f32> {
    if (qi >= p.sq) {
        return vec2<f32>(-3.0e38, 0.0);
    }
    rotate_q_into(qr, c, qi, h);
    if (p.c_begin == 0u) {
        return vec2<f32>(-3.0e38, 0.0);
    }
    let base_q = qo + (qi * p.hq + h) * HD;
    for (var j = 0u; j < HD; j = j + 1u) {
        (*acc)[j] = rv_set((*acc)[j], c, o[base_q + j]);
    }
    let hn = p.hq * p.sq;
    return vec2<f32>(stats[so + h * p.sq + qi], stats[so + 2u * hn + h * p.sq + qi]);
}

// Stores row c (query qi) of the forward state: o and lse on the last chunk, else acc and (m, l).
fn fwd_end(acc: ptr<function, array<RV, HD>>, c: u32, qi: u32, h: u32, m: f32, l: f32) {
    if (qi >= p.sq) {
        return;
    }
    let base_q = qo + (qi * p.hq + h) * HD;
    let hn = p.hq * p.sq;
    let fin = p.last == 1u;
    let inv_l = select(1.0, 1.0 / l, fin);
    for (var j = 0u; j < HD; j = j + 1u) {
        o[base_q + j] = rv_get((*acc)[j], c) * inv_l;
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
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let q_first = (first_block() + zigzag(wid.x, nwg.x)) * WG * QB;
    let q0 = q_first + lid * QB;

    // Row c of the block in component c: qr[j] holds dimension j of each row's rotated query.
    var qr: array<RV, HD>;
    var acc: array<RV, HD>;
    var m = rv(-3.0e38);
    var l = rv(0.0);
    for (var c = 0u; c < QB; c = c + 1u) {
        let st = fwd_begin(&qr, &acc, c, q0 + c, h);
        m = rv_set(m, c, st.x);
        l = rv_set(l, c, st.y);
    }
    let lim0 = seen_limit(q0);
    let kn = keys_seen(q0);

    let tile = TILE_FLOATS / HD;
    // The loop runs the whole chunk, its bound a plain uniform: bounded by the block's last key
    // instead, it ran 1.2–3.5× slower on lavapipe at lengths off a power-of-two tile count.
    for (var t0 = p.c_begin; t0 < p.c_end; t0 = t0 + tile) {
        load_kv_tile(t0, tile, kvh, lid);
        workgroupBarrier();
        let hi = min(min(t0 + tile, p.skv), kn);
        let n = select(0u, hi - t0, hi > t0);
        for (var r = 0u; r < n; r = r + 1u) {
            let rb = r * HD;
            var s = rv(0.0);
            for (var j = 0u; j < HD; j = j + 1u) {
                s = s + qr[j] * ts[rb + j];
            }
            let seen = rows_see(t0 + r, lim0);
            let m_new = rv_sel(m, rv_max(m, s), seen);
            let corr = rv_exp(m - m_new);
            let w = rv_sel(rv(0.0), rv_exp(s - m_new), seen);
            l = rv_mul(l, corr) + w;
            m = m_new;
            for (var j = 0u; j < HD; j = j + 1u) {
                acc[j] = rv_mul(acc[j], corr) + w * us[rb + j];
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < QB; c = c + 1u) {
        fwd_end(&acc, c, q0 + c, h, rv_get(m, c), rv_get(l, c));
    }
}

// The forward for GPUs (attention_fwd_block): a workgroup of BT = 128 invocations takes BR = 64
// queries of one head together, keys BC = 16 at a time — invocation (row r = lid / 2, half
// lid % 2) holds its query's rotated row in registers and scores 8 of the tile's 16 keys, and
// owns half of each 32-wide chunk of the output row. Scores use the K tile (rotated once per
// workgroup) from workgroup memory, the softmax row max is exchanged through workgroup memory,
// and P·V reads the tile's probabilities and V from it: many invocations per query instead of
// one (attention_fwd keeps a GPU's cores busy only at tens of thousands of queries). Head widths
// that are multiples of 32 (one chunk of 32 dimensions at a time); the same chunk protocol and
// state as attention_fwd (acc in o, (m, l) in stats). Workgroup memory: the K chunk (swizzled
// against bank conflicts) and the row maxima in ts, the V chunk and P (rows padded to 17) in us.
const BR: u32 = 64u;
const BC: u32 = 16u;
const BT: u32 = 128u;
const HALF_D: u32 = HD / 2u;
const PS0: u32 = 512u;
const MS0: u32 = 512u;

// Where dimension dd (of the chunk) of tile key kk lies in ts: column-major, XOR-swizzled.
fn ks_at(dd: u32, kk: u32) -> u32 {
    return dd * BC + (kk ^ (dd & 15u));
}

// Loads dimensions [dc, dc + 32) of the tile's keys t0 .. t0 + BC of kv head kvh, rotated, into
// ts (zero past Skv).
fn load_k_chunk(t0: u32, dc: u32, kvh: u32, lid: u32) {
    for (var e = lid; e < BC * 32u; e = e + BT) {
        let kk = e / 32u;
        let dd = e % 32u;
        let kj = t0 + kk;
        var x = 0.0;
        if (kj < p.skv) {
            let dim = dc + dd;
            let j = dim % HALF_D;
            let base = ko + (kj * p.hkv + kvh) * HD;
            let cs = rot(kpos(kj), j, 1.0);
            let x0 = k_at(base + j);
            let x1 = k_at(base + j + HALF_D);
            x = select(x0 * cs.x - x1 * cs.y, x1 * cs.x + x0 * cs.y, dim >= HALF_D);
        }
        ts[ks_at(dd, kk)] = x;
    }
}

// Loads dimensions [dc, dc + 32) of the tile's values into us[kk·32 + dd] (zero past Skv).
fn load_v_chunk(t0: u32, dc: u32, kvh: u32, lid: u32) {
    for (var e = lid; e < BC * 32u; e = e + BT) {
        let kj = t0 + e / 32u;
        var x = 0.0;
        if (kj < p.skv) {
            x = v_at(ko + (kj * p.hkv + kvh) * HD + dc + e % 32u);
        }
        us[e] = x;
    }
}

@compute @workgroup_size(128)
fn attention_fwd_block(@builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let q_first = (first_block_of(BR) + zigzag(wid.x, nwg.x)) * BR;
    let r = lid / 2u;
    let half = lid % 2u;
    let qi = q_first + r;
    let live = qi < p.sq;
    let past = p.skv - p.sq;
    let hn = p.hq * p.sq;
    let base_q = qo + (qi * p.hq + h) * HD;

    // The rotated, scaled query; acc: dimensions dc + 16·half + i of each chunk dc.
    var qr: array<f32, HD>;
    var acc: array<f32, HALF_D>;
    var m = -3.0e38;
    var l = 0.0;
    if (live) {
        for (var j = 0u; j < HALF_D; j = j + 1u) {
            let pr = q_pair(qi, h, j);
            qr[j] = pr.x;
            qr[j + HALF_D] = pr.y;
        }
        if (p.c_begin > 0u) {
            for (var c = 0u; c < HD / 32u; c = c + 1u) {
                for (var i = 0u; i < 16u; i = i + 1u) {
                    acc[c * 16u + i] = o[base_q + c * 32u + half * 16u + i];
                }
            }
            m = stats[so + h * p.sq + qi];
            l = select(0.0, stats[so + 2u * hn + h * p.sq + qi], half == 0u);
        }
    }
    // Keys row qi sees, and keys any row of the block sees (the loop's uniform bound).
    let lim = select(0u, past + qi + 1u, live);
    let kn = past + min(q_first + BR, p.sq);
    let t_end = min(p.c_end, kn);
    for (var t0 = p.c_begin; t0 < t_end; t0 = t0 + BC) {
        // Zeroed explicitly: WGSL zero-initialises a `var` each time its declaration runs, but
        // in Chromium (Tint → SwiftShader) this loop-body array kept the previous tile's scores,
        // so every row that sees more than one tile came out wrong (lse off by ~1.2; found by the
        // browser test's in-browser kernel check, web/src/selfcheck.rs).
        var s: array<f32, 8>;
        for (var c = 0u; c < 8u; c = c + 1u) {
            s[c] = 0.0;
        }
        for (var dc = 0u; dc < HD; dc = dc + 32u) {
            workgroupBarrier();
            load_k_chunk(t0, dc, kvh, lid);
            workgroupBarrier();
            for (var dd = 0u; dd < 32u; dd = dd + 1u) {
                let qv = qr[dc + dd];
                let row = dd * BC;
                let sw = dd & 15u;
                for (var c = 0u; c < 8u; c = c + 1u) {
                    s[c] = s[c] + qv * ts[row + ((half * 8u + c) ^ sw)];
                }
            }
        }
        var mloc = -3.0e38;
        for (var c = 0u; c < 8u; c = c + 1u) {
            if (t0 + half * 8u + c < lim) {
                mloc = max(mloc, s[c]);
            }
        }
        ts[MS0 + lid] = mloc;
        workgroupBarrier();
        let m_new = max(m, max(ts[MS0 + 2u * r], ts[MS0 + 2u * r + 1u]));
        let corr = exp(m - m_new);
        var lsum = 0.0;
        for (var c = 0u; c < 8u; c = c + 1u) {
            let w = select(0.0, exp(s[c] - m_new), t0 + half * 8u + c < lim);
            lsum = lsum + w;
            us[PS0 + r * 17u + half * 8u + c] = w;
        }
        l = l * corr + lsum;
        m = m_new;
        for (var i = 0u; i < HALF_D; i = i + 1u) {
            acc[i] = acc[i] * corr;
        }
        for (var dc = 0u; dc < HD; dc = dc + 32u) {
            workgroupBarrier();
            load_v_chunk(t0, dc, kvh, lid);
            workgroupBarrier();
            let a0 = (dc / 32u) * 16u;
            for (var c = 0u; c < BC; c = c + 1u) {
                let w = us[PS0 + r * 17u + c];
                let vb = c * 32u + half * 16u;
                for (var i = 0u; i < 16u; i = i + 1u) {
                    acc[a0 + i] = acc[a0 + i] + w * us[vb + i];
                }
            }
        }
    }
    // The row's l: the two halves' sums (they share m).
    workgroupBarrier();
    ts[MS0 + lid] = l;
    workgroupBarrier();
    let l_row = ts[MS0 + 2u * r] + ts[MS0 + 2u * r + 1u];
    if (!live) {
        return;
    }
    let fin = p.last == 1u;
    let inv_l = select(1.0, 1.0 / l_row, fin);
    for (var c = 0u; c < HD / 32u; c = c + 1u) {
        for (var i = 0u; i < 16u; i = i + 1u) {
            o[base_q + c * 32u + half * 16u + i] = acc[c * 16u + i] * inv_l;
        }
    }
    if (half == 0u) {
        stats[so + h * p.sq + qi] = select(m, m + log(l_row), fin);
        if (!fin) {
            stats[so + 2u * hn + h * p.sq + qi] = l_row;
        }
    }
}

// Split-key decode, for few queries (the KV-cache case): workgroup (split, h, b·Sq + i) takes
// keys [split·c_end, (split+1)·c_end) of query i, one key per invocation at a time (no barrier
// inside the key loop), then reduces its 64 running (m, l, acc) states in workgroup memory and
// writes one partial state to part[((b·Sq + i)·Hq + h)·splits + split] (d + 2 floats: m, l, acc).
// attention_decode_combine merges the splits of each (b, i, h) into o and lse.
@compute @workgroup_size(64)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bi = wid.z / p.sq;
    let qi = wid.z % p.sq;
    set_batch(bi);
    let d = HD;
    let half = d / 2u;
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let past = p.skv - p.sq;
    var acc: array<f32, HD>;
    var qr: array<f32, HD>;
    for (var j = 0u; j < half; j = j + 1u) {
        let pr = q_pair(qi, h, j);
        qr[j] = pr.x;
        qr[j + half] = pr.y;
    }
    var m = -3.0e38;
    var l = 0.0;
    // Split wid.x of the bound page: split `split` of all `splits` (pages start on a split).
    let splits = (p.skv + p.c_end - 1u) / p.c_end;
    let split = p.k_base / p.c_end + wid.x;
    let k0 = split * p.c_end;
    let k1 = min(k0 + p.c_end, past + qi + 1u);
    for (var kj = k0 + lid; kj < k1; kj = kj + WG) {
        let kb = (kj * p.hkv + kvh) * d;
        var s = 0.0;
        for (var j = 0u; j < half; j = j + 1u) {
            let cs = rot(kpos(kj), j, 1.0);
            let x0 = k_at(ko + kb + j);
            let x1 = k_at(ko + kb + j + half);
            s = s + qr[j] * (x0 * cs.x - x1 * cs.y) + qr[j + half] * (x1 * cs.x + x0 * cs.y);
        }
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let w = exp(s - m_new);
        l = l * corr + w;
        for (var j = 0u; j < d; j = j + 1u) {
            acc[j] = acc[j] * corr + w * v_at(ko + kb + j);
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
    let out = ((wid.z * p.hq + h) * splits + split) * (d + 2u);
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

// Merges the c_begin splits of each (b, i, h) into o and lse: invocation ((b·Sq + i)·Hq + h)·D + j
// (x + y·64·nwg.x: the host splits a grid over 65,535 workgroups) writes dimension j of o, and
// j = 0 the lse. Each invocation recomputes its row's max and sum: 3·splits loop steps, so up to
// ~21,000 splits (5M keys) stay within llvmpipe's 65,535 loop iterations per invocation (one
// invocation looping over every dimension and split lost its output past ~130k keys at D 128).
@compute @workgroup_size(64)
fn attention_decode_combine(@builtin(global_invocation_id) gid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>) {
    let d = HD;
    let at_j = gid.x + gid.y * nwg.x * WG;
    let idx = at_j / d;
    let j = at_j % d;
    if (idx >= p.batch * p.sq * p.hq) {
        return;
    }
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
    var x = 0.0;
    for (var s = 0u; s < splits; s = s + 1u) {
        let at = first + s * (d + 2u);
        let w = exp(part[at] - mx);
        lsum = lsum + part[at + 1u] * w;
        x = x + part[at + 2u + j] * w;
    }
    o[qo + (qi * p.hq + h) * d + j] = x / lsum;
    if (j == 0u) {
        stats[so + h * p.sq + qi] = mx + log(lsum);
    }
}

@compute @workgroup_size(64)
fn attention_bwd_prep(@builtin(global_invocation_id) gid: vec3<u32>) {
    set_batch(gid.z);
    let idx = gid.x;                     // i · Hq + h
    if (idx >= p.sq * p.hq) {
        return;
    }
    let d = HD;
    let i = idx / p.hq;
    let h = idx % p.hq;
    var acc = 0.0;
    for (var j = 0u; j < d; j = j + 1u) {
        acc = acc + d_o[qo + idx * d + j] * o[qo + idx * d + j];
    }
    stats[so + p.hq * p.sq + h * p.sq + i] = acc;
}

// Starts row c of the dq block, query qi: rotated q, its dO, (a later chunk) the stored sum;
// returns (lse, δ). Rows past Sq stay zero.
fn dq_begin(qr: ptr<function, array<RV, HD>>, dor: ptr<function, array<RV, HD>>,
            acc: ptr<function, array<RV, HD>>, c: u32, qi: u32, h: u32) -> vec2<f32> {
    if (qi >= p.sq) {
        return vec2<f32>(0.0);
    }
    rotate_q_into(qr, c, qi, h);
    let base = qo + (qi * p.hq + h) * HD;
    for (var j = 0u; j < HD; j = j + 1u) {
        (*dor)[j] = rv_set((*dor)[j], c, d_o[base + j]);
    }
    if (p.c_begin > 0u) {
        for (var j = 0u; j < HD; j = j + 1u) {
            (*acc)[j] = rv_set((*acc)[j], c, dq[base + j]);
        }
    }
    return vec2<f32>(stats[so + h * p.sq + qi], stats[so + p.hq * p.sq + h * p.sq + qi]);
}

// Stores row c (query qi) of dq: the running sum, or on the last chunk scaled and rotated back.
fn dq_end(acc: ptr<function, array<RV, HD>>, c: u32, qi: u32, h: u32) {
    if (qi >= p.sq) {
        return;
    }
    let half = HD / 2u;
    let base = qo + (qi * p.hq + h) * HD;
    if (p.last == 0u) {
        for (var j = 0u; j < HD; j = j + 1u) {
            dq[base + j] = rv_get((*acc)[j], c);
        }
        return;
    }
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(qpos(qi), j, -1.0);
        let x0 = rv_get((*acc)[j], c) * p.scale;
        let x1 = rv_get((*acc)[j + half], c) * p.scale;
        dq[base + j] = x0 * cs.x - x1 * cs.y;
        dq[base + j + half] = x1 * cs.x + x0 * cs.y;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let h = wid.y;
    let kvh = h / (p.hq / p.hkv);
    let q_first = (first_block() + zigzag(wid.x, nwg.x)) * WG * QB;
    let q0 = q_first + lid * QB;

    var qr: array<RV, HD>;
    var dor: array<RV, HD>;
    var g: array<RV, HD>;
    // QB 8 keeps the key row it read for the score in kc and reuses it for dq (as dk/dv below).
    //QB8 var kc: array<f32, HD>;
    var lse = rv(0.0);
    var delta = rv(0.0);
    for (var c = 0u; c < QB; c = c + 1u) {
        let st = dq_begin(&qr, &dor, &g, c, q0 + c, h);
        lse = rv_set(lse, c, st.x);
        delta = rv_set(delta, c, st.y);
    }
    let lim0 = seen_limit(q0);
    let kn = keys_seen(q0);

    let tile = TILE_FLOATS / HD;
    // The whole chunk, as the forward (see there).
    for (var t0 = p.c_begin; t0 < p.c_end; t0 = t0 + tile) {
        load_kv_tile(t0, tile, kvh, lid);
        workgroupBarrier();
        let hi = min(min(t0 + tile, p.skv), kn);
        let n = select(0u, hi - t0, hi > t0);
        for (var r = 0u; r < n; r = r + 1u) {
            let rb = r * HD;
            var s = rv(0.0);
            var dp = rv(0.0);
            for (var j = 0u; j < HD; j = j + 1u) {
                let kv = ts[rb + j];
                //QB8 kc[j] = kv;
                s = s + qr[j] * kv;
                dp = dp + dor[j] * us[rb + j];
            }
            let seen = rows_see(t0 + r, lim0);
            let ds = rv_sel(rv(0.0), rv_mul(rv_exp(s - lse), dp - delta), seen);
            for (var j = 0u; j < HD; j = j + 1u) {
                g[j] = g[j] + ds * ts[rb + j]; // QB124
                //QB8 g[j] = g[j] + ds * kc[j];
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < QB; c = c + 1u) {
        dq_end(&g, c, q0 + c, h);
    }
}

// Starts row c of the dk/dv block, key kj: rotated k, v, (a later chunk) the stored sums. Rows
// past Skv stay zero.
fn dkv_begin(kr: ptr<function, array<RV, HD>>, vr: ptr<function, array<RV, HD>>,
             dka: ptr<function, array<RV, HD>>, dva: ptr<function, array<RV, HD>>, c: u32,
             kj: u32, kvh: u32) {
    if (kj >= p.skv) {
        return;
    }
    let half = HD / 2u;
    let base = (kj * p.hkv + kvh) * HD;
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(kpos(kj), j, 1.0);
        let x0 = k_at(ko + base + j);
        let x1 = k_at(ko + base + j + half);
        (*kr)[j] = rv_set((*kr)[j], c, x0 * cs.x - x1 * cs.y);
        (*kr)[j + half] = rv_set((*kr)[j + half], c, x1 * cs.x + x0 * cs.y);
    }
    for (var j = 0u; j < HD; j = j + 1u) {
        (*vr)[j] = rv_set((*vr)[j], c, v_at(ko + base + j));
    }
    if (p.c_begin > 0u) {
        for (var j = 0u; j < HD; j = j + 1u) {
            (*dka)[j] = rv_set((*dka)[j], c, dkv[ko + base + j]);
            (*dva)[j] = rv_set((*dva)[j], c, dkv[dv_at(base + j)]);
        }
    }
}

// Stores row c (key kj) of dk and dv: the running sums, or on the last chunk dk rotated back.
fn dkv_end(dka: ptr<function, array<RV, HD>>, dva: ptr<function, array<RV, HD>>, c: u32,
           kj: u32, kvh: u32) {
    if (kj >= p.skv) {
        return;
    }
    let half = HD / 2u;
    let base = (kj * p.hkv + kvh) * HD;
    for (var j = 0u; j < HD; j = j + 1u) {
        dkv[dv_at(base + j)] = rv_get((*dva)[j], c);
    }
    if (p.last == 0u) {
        for (var j = 0u; j < HD; j = j + 1u) {
            dkv[ko + base + j] = rv_get((*dka)[j], c);
        }
        return;
    }
    for (var j = 0u; j < half; j = j + 1u) {
        let cs = rot(kpos(kj), j, -1.0);
        let x0 = rv_get((*dka)[j], c);
        let x1 = rv_get((*dka)[j + half], c);
        dkv[ko + base + j] = x0 * cs.x - x1 * cs.y;
        dkv[ko + base + j + half] = x1 * cs.x + x0 * cs.y;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    set_batch(wid.z);
    let d = HD;
    let half = d / 2u;
    let kvh = wid.y;
    let group = p.hq / p.hkv;
    let past = p.skv - p.sq;
    let k_first = zigzag(wid.x, nwg.x) * WG * QB;
    let k0 = k_first + lid * QB;

    var kr: array<RV, HD>;
    var vr: array<RV, HD>;
    var gk: array<RV, HD>;
    var gv: array<RV, HD>;
    // QB 8 keeps the tile row it read for the score in kc (and uc) and reuses it for the gradient
    // sums: a private read instead of a second workgroup-memory read (see the header on QB).
    //QB8 var kc: array<f32, HD>;
    //QB8 var uc: array<f32, HD>;
    for (var c = 0u; c < QB; c = c + 1u) {
        dkv_begin(&kr, &vr, &gk, &gv, c, k0 + c, kvh);
    }

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
            var pr = vec2<f32>(0.0);
            if (qi < p.sq) {
                pr = q_pair(qi, h, j);
            }
            ts[r * d + j] = pr.x;
            ts[r * d + j + half] = pr.y;
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
            // Key k0 + c is seen by query qi when k0 + c ≤ past + qi (which is < Skv): skip
            // the row when none of this invocation's keys is.
            if (k0 <= past + qi && k0 < p.skv) {
                let rb = r * d;
                var s = rv(0.0);
                var dp = rv(0.0);
                for (var j = 0u; j < HD; j = j + 1u) {
                    let kv = ts[rb + j];
                    let uv = us[rb + j];
                    //QB8 kc[j] = kv;
                    //QB8 uc[j] = uv;
                    s = s + kr[j] * kv;
                    dp = dp + vr[j] * uv;
                }
                let seen = rows_below(k0, past + qi + 1u);
                let pij = rv_sel(rv(0.0), rv_exp(s - rv(stats[so + h * p.sq + qi])), seen);
                let ds = rv_mul(pij, dp - rv(stats[so + p.hq * p.sq + h * p.sq + qi]));
                for (var j = 0u; j < HD; j = j + 1u) {
                    gk[j] = gk[j] + ds * ts[rb + j]; // QB124
                    gv[j] = gv[j] + pij * us[rb + j]; // QB124
                    //QB8 gk[j] = gk[j] + ds * kc[j];
                    //QB8 gv[j] = gv[j] + pij * uc[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < QB; c = c + 1u) {
        dkv_end(&gk, &gv, c, k0 + c, kvh);
    }
}
