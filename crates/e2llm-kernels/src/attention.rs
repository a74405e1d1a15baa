//! The attention kernels on the host: [`AttentionBuffers`] uploads q, k, v and positions once
//! and records the chunked forward, the backward and the attention map; the free functions are
//! the GPU twins of [`crate::cpu::attention`], [`crate::cpu::attention_backward`] and
//! [`crate::cpu::attention_map`].

use crate::cpu::{AttentionShape, MapWindow};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::launch::{self, Launch, Spec};
use crate::ops::{check, f};
use crate::shaders;

/// How the tiled attention kernels are built and launched for an adapter: rows per invocation
/// (`QB` in `attention.wgsl`) and loop steps (tiles) per dispatch (longer loops are split into
/// chunks; see the shader header for why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Rows each invocation of the tiled kernels takes: 8, 4, 2 or 1; 0 = by head width D, by
    /// [`Self::by_width`]'s rule. 8 rows are built only up to D = 32 (wider, llvmpipe took over
    /// ten minutes to compile the kernels); a wider head gets 4.
    pub rows: usize,
    /// Tiles one dispatch's loop runs at most.
    pub tiles_per_dispatch: usize,
    /// The rule `rows: 0` follows.
    pub by_width: ByWidth,
    /// Prefill forwards that would give `attention_fwd` (QB queries per invocation) few
    /// workgroups run `attention_fwd_block` (a workgroup of 128 invocations shares 64 queries:
    /// many invocations per query) at head width 32: for GPUs, whose
    /// cores `attention_fwd` fills only with many workgroups ([`Tuning::block_forward`]).
    pub block: bool,
}

/// Rows per invocation by head width D (a [`Tuning`] with `rows: 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByWidth {
    /// CPU rasterisers: as many rows as build (8 up to D = 32, else 4) — each read of workgroup
    /// memory feeds QB rows' sums, and those reads bound the kernels there.
    Raster,
    /// GPUs: few enough rows that an invocation's arrays stay in registers — the forward keeps
    /// QB·D ≤ 128 values per array, the backward, with twice the arrays, QB·D ≤ 64.
    Gpu,
}

/// The widest head the 8-rows build is used for.
const EIGHT_ROWS_MAX_WIDTH: usize = 32;

impl Tuning {
    /// CPU rasterisers (lavapipe, SwiftShader): rows by width (8 at D ≤ 32, else 4; measured on
    /// lavapipe, BENCHMARKS.md), 8 tiles per dispatch (llvmpipe's loop-iteration limit).
    pub const CPU_RASTER: Tuning = Tuning {
        rows: 0,
        tiles_per_dispatch: 8,
        by_width: ByWidth::Raster,
        block: false,
    };
    /// GPUs: rows per invocation by head width (fewer rows keep an invocation's arrays in
    /// registers), 64 tiles per dispatch (4,096 keys at head width 32, 1,024 at 128: long
    /// enough that chunking costs little, short enough for a display driver's watchdog).
    /// Measured on an H100 (BENCHMARKS.md): D 32 → forward 4, backward 2; D 64 → 2 and 1.
    pub const GPU: Tuning = Tuning {
        rows: 0,
        tiles_per_dispatch: 64,
        by_width: ByWidth::Gpu,
        block: true,
    };

    /// Rows per invocation of the forward kernels at head width `d`.
    pub fn forward_rows(self, d: usize) -> usize {
        self.rows_within(d, 128)
    }

    /// Rows per invocation of the backward kernels (dq, dk/dv) at head width `d`.
    pub fn backward_rows(self, d: usize) -> usize {
        self.rows_within(d, 64)
    }

    /// Rows per invocation of the backward of `batch` sequences of shape `s`: the width rule
    /// ([`Self::backward_rows`]), halved on GPUs (rows by width) for sequences of 1,024 tokens
    /// and more while dq would launch fewer than [`BLOCK_BELOW_GROUPS`] workgroups — fewer
    /// rows, more invocations. On the H100, 4 heads of 32: backward 1.1 vs 1.5 ms at 1k tokens,
    /// 3.2 vs 4.6 at 4k (QB 1 vs 2), equal at 8k (9.3 vs 9.2); the 8 × 256 training step with
    /// QB 1 once ran 0.90× the reference (1.11–1.16× with QB 2), hence the length floor.
    pub fn backward_rows_for(self, s: AttentionShape, batch: usize) -> usize {
        let mut rows = self.backward_rows(s.head_dim);
        if self.rows == 0 && self.by_width == ByWidth::Gpu && s.sq >= 1024 {
            while rows > 1 && s.sq.div_ceil(64 * rows) * s.hq * batch < BLOCK_BELOW_GROUPS {
                rows /= 2;
            }
        }
        rows
    }

    fn rows_within(self, d: usize, gpu_budget: usize) -> usize {
        let most = if d <= EIGHT_ROWS_MAX_WIDTH { 8 } else { 4 };
        if self.rows > 0 {
            return self.rows.min(most);
        }
        match self.by_width {
            ByWidth::Raster => most,
            ByWidth::Gpu => match gpu_budget / d.max(1) {
                0 | 1 => 1,
                2 | 3 => 2,
                _ => 4,
            },
        }
    }

    /// The tuning for an adapter: [`Self::GPU`] for GPU hardware (`gpu`: wgpu reports a
    /// discrete, integrated or virtual GPU) unless its name is a software rasteriser's;
    /// [`Self::CPU_RASTER`] otherwise (CPU devices, and adapters that do not say — a browser
    /// may hide what it runs on, and the CPU tuning is correct everywhere).
    pub fn for_adapter(name: &str, gpu: bool) -> Tuning {
        let n = name.to_ascii_lowercase();
        let software = ["llvmpipe", "lavapipe", "swiftshader", "software"]
            .iter()
            .any(|s| n.contains(s));
        if gpu && !software {
            Tuning::GPU
        } else {
            Tuning::CPU_RASTER
        }
    }

    /// Whether the prefill forward of `batch` sequences of shape `s` runs
    /// `attention_fwd_block`: with [`Self::block`] set, at head width 32, when the
    /// rows-per-invocation forward would launch fewer than [`BLOCK_BELOW_GROUPS`] workgroups.
    /// (The kernel is written for every width that is a multiple of 32, and matched the twins
    /// at 64 and 128 too, but on the H100 it lost to the rows forward at width 64 even with few
    /// workgroups: 2.5 vs 1.7 ms for 32 heads at 1,024 tokens.)
    pub fn block_forward(self, s: AttentionShape, batch: usize) -> bool {
        let d = s.head_dim;
        let groups = s.sq.div_ceil(64 * self.forward_rows(d)) * s.hq * batch;
        self.block && d == BLOCK_WIDTH && groups < BLOCK_BELOW_GROUPS
    }

    /// Parses `E2LLM_ATTENTION`-style text: `cpu` or `gpu`, then (or alone) `rows=R`,
    /// `tiles=T`, `block=0|1` overriding its fields (without `cpu`/`gpu` they override
    /// [`Self::CPU_RASTER`]: rows by width, 8 tiles, no block forward). `gpu,block=0` is the GPU
    /// tuning with the rows-per-invocation forward.
    pub fn parse(text: &str) -> std::result::Result<Tuning, String> {
        let mut parts = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .peekable();
        let mut t = match parts.peek() {
            Some(&"gpu") => Tuning::GPU,
            _ => Tuning::CPU_RASTER,
        };
        if matches!(parts.peek(), Some(&("cpu" | "gpu"))) {
            parts.next();
        }
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: not a whole number"))?;
            match key.trim() {
                "rows" if [1, 2, 4, 8].contains(&n) => t.rows = n,
                "rows" => return Err(format!("`{part}`: rows must be 1, 2, 4 or 8")),
                "tiles" if n > 0 => t.tiles_per_dispatch = n,
                "tiles" => return Err(format!("`{part}`: tiles must be at least 1")),
                "block" if n <= 1 => t.block = n == 1,
                "block" => return Err(format!("`{part}`: block must be 0 or 1")),
                _ => return Err(format!("`{part}`: unknown key (rows, tiles, block)")),
            }
        }
        Ok(t)
    }
}

/// The source build of an attention launch with `rows` rows per invocation.
fn spec(s: AttentionShape, rows: usize) -> Spec {
    Spec {
        rows: rows as u32,
        head_dim: s.head_dim as u32,
        kv_f16: false,
    }
}

static TUNING: std::sync::RwLock<Option<Tuning>> = std::sync::RwLock::new(None);

/// The tuning the attention ops use in this process: `E2LLM_ATTENTION` (see [`Tuning::parse`])
/// if set and valid, else what [`set_tuning`] last set (the backend sets it from the adapter
/// when it opens one), else [`Tuning::CPU_RASTER`].
pub fn tuning() -> Tuning {
    env_tuning()
        .or(*TUNING.read().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or(Tuning::CPU_RASTER)
}

/// `E2LLM_ATTENTION` parsed (once; an invalid value is reported on stderr and ignored).
pub(crate) fn env_tuning() -> Option<Tuning> {
    static ENV: std::sync::OnceLock<Option<Tuning>> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| {
        let text = std::env::var("E2LLM_ATTENTION").ok()?;
        match Tuning::parse(&text) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("E2LLM_ATTENTION={text} ignored: {e}");
                None
            }
        }
    })
}

/// Sets the process's attention tuning (see [`tuning`]).
pub fn set_tuning(t: Tuning) {
    *TUNING.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
}

/// Key (or query) rows per tile for head width `d`: two tiles fill 16 KiB of workgroup memory.
pub fn tile_rows(d: usize) -> usize {
    2048 / d
}

/// `(begin, end, last)` of each chunk of a loop over `total` steps of `step` each, at most
/// `per` steps per chunk.
fn chunks(total: usize, step: usize, per: usize) -> Vec<(usize, usize, bool)> {
    let span = step * per;
    let n = total.div_ceil(span).max(1);
    (0..n)
        .map(|c| (c * span, (c + 1) * span, c + 1 == n))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn check_shapes(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> Result<()> {
    let d = s.head_dim;
    check(
        "attention",
        d > 0
            && d.is_multiple_of(2)
            && d <= 128
            && inv_freq.len() == d / 2
            && s.hkv > 0
            && s.hq.is_multiple_of(s.hkv)
            && s.sq <= s.skv
            && q.len() == s.sq * s.hq * d
            && k.len() == s.skv * s.hkv * d
            && v.len() == k.len()
            && qpos.len() == s.sq
            && kpos.len() == s.skv,
        || {
            format!(
                "shapes do not fit {s:?} (head_dim even and ≤ 128, hq a multiple of hkv, sq ≤ skv)"
            )
        },
    )
}

/// A buffer of the attention kernels by role; the value is its binding in `attention.wgsl`.
/// Plans ([`forward_plan`], [`backward_plan`]) are [`Launch`]es whose storage bindings are these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `[B·Sq·Hq·D]` queries (unrotated).
    Q = 0,
    /// `[B·Skv·Hkv·D]` keys (unrotated).
    K = 1,
    /// `[B·Skv·Hkv·D]` values.
    V = 2,
    /// qpos `[B·Sq]` ++ kpos `[B·Skv]` ++ inv_freq `[D/2]`.
    Aux = 3,
    /// `[B·Sq·Hq·D]` output.
    O = 4,
    /// Per sequence lse, δ, l: `[B·3·Hq·Sq]`.
    Stats = 5,
    /// The launch's `Params` words.
    Params = 6,
    /// `[B·Sq·Hq·D]` gradient of the output.
    DO = 7,
    /// `[B·Sq·Hq·D]` gradient of q.
    DQ = 8,
    /// dk `[B·Skv·Hkv·D]` ++ dv `[B·Skv·Hkv·D]`.
    DKV = 9,
    /// Split-key decode partial states `[B·Sq·Hq·splits·(D + 2)]`.
    Part = 10,
}

impl Slot {
    /// The slot bound at `binding` in `attention.wgsl`.
    pub fn at(binding: u32) -> Slot {
        [
            Slot::Q,
            Slot::K,
            Slot::V,
            Slot::Aux,
            Slot::O,
            Slot::Stats,
            Slot::Params,
            Slot::DO,
            Slot::DQ,
            Slot::DKV,
            Slot::Part,
        ][binding as usize]
    }
}

const FWD: &[Slot] = &[Slot::Q, Slot::K, Slot::V, Slot::Aux, Slot::O, Slot::Stats];
const PREP: &[Slot] = &[Slot::O, Slot::Stats, Slot::DO];
const DQ: &[Slot] = &[
    Slot::Q,
    Slot::K,
    Slot::V,
    Slot::Aux,
    Slot::Stats,
    Slot::DO,
    Slot::DQ,
];
const DKV: &[Slot] = &[
    Slot::Q,
    Slot::K,
    Slot::V,
    Slot::Aux,
    Slot::Stats,
    Slot::DO,
    Slot::DKV,
];

const DECODE: &[Slot] = &[Slot::Q, Slot::K, Slot::V, Slot::Aux, Slot::Part];
const COMBINE: &[Slot] = &[Slot::Part, Slot::O, Slot::Stats];

/// Every entry point of `attention.wgsl` with the storage buffers it binds (its uniform
/// `Params` besides).
pub const ENTRIES: &[(&str, &[Slot])] = &[
    ("attention_fwd", FWD),
    ("attention_fwd_block", FWD),
    ("attention_bwd_prep", PREP),
    ("attention_bwd_dq", DQ),
    ("attention_bwd_dkv", DKV),
    ("attention_decode", DECODE),
    ("attention_decode_combine", COMBINE),
];

/// Forwards of at most this many queries per sequence (a KV-cache step) split the keys across
/// workgroups ([`forward_plan`]'s decode path) instead of giving each query one invocation.
pub const DECODE_MAX_QUERIES: usize = 8;

/// Keys per workgroup of the split-key decode.
pub const DECODE_SPLIT: usize = 256;

/// Splits of the decode path for `skv` keys (0 when `s` takes the tiled forward).
pub fn decode_splits(s: AttentionShape) -> usize {
    if s.sq <= DECODE_MAX_QUERIES {
        s.skv.div_ceil(DECODE_SPLIT).max(1)
    } else {
        0
    }
}

/// Values of the decode path's partial-state buffer for `batch` sequences (0: none needed).
pub fn part_len(s: AttentionShape, batch: usize) -> usize {
    batch * s.sq * s.hq * decode_splits(s) * (s.head_dim + 2)
}

fn launch(
    entry: &'static str,
    slots: &[Slot],
    params: [u32; 16],
    groups: (u32, u32, u32),
    spec: Spec,
) -> Launch {
    Launch {
        spec,
        shader: launch::ATTENTION,
        entry,
        storage: slots.iter().map(|&s| s as u32).collect(),
        uniform: Slot::Params as u32,
        params: params.to_vec(),
        groups,
        workgroup: 64,
    }
}

/// `Params` of a launch whose k and v buffers hold every key (`k_base` 0, `k_len` Skv; see
/// [`set_page`] for a page of them).
fn params(s: AttentionShape, batch: usize, begin: usize, end: usize, last: bool) -> [u32; 16] {
    [
        s.sq as u32,
        s.skv as u32,
        s.hq as u32,
        s.hkv as u32,
        s.head_dim as u32,
        f(s.scale),
        f(1.0 / s.g),
        f(s.factor),
        begin as u32,
        end as u32,
        u32::from(last),
        batch as u32,
        0,
        s.skv as u32,
        0,
        0,
    ]
}

/// Has `l` read its keys from a page holding rows `[base, base + len)` of every sequence.
fn set_page(l: &mut Launch, base: usize, len: usize) {
    l.params[12] = base as u32;
    l.params[13] = len as u32;
}

/// Keys per page of a paged forward ([`forward_plan_paged`]) are a multiple of this at head
/// width `d`: whole tiles of `attention_fwd`, of `attention_fwd_block` and decode splits.
pub fn page_multiple(d: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let lcm = |a: usize, b: usize| a / gcd(a, b) * b;
    lcm(lcm(tile_rows(d), DECODE_SPLIT), BLOCK_KEYS)
}

/// Below this many workgroups of `attention_fwd` a GPU tuning runs `attention_fwd_block`.
/// Measured on an H100 (132 multiprocessors; BENCHMARKS.md), forward ms block vs rows: 4 heads
/// of 32 at 4k tokens (64 workgroups of rows) 1.5 vs 3.7, at 16k (256) 11.7 vs 14.0, at 64k
/// (1,024) 128 vs 110; 32 heads of 64 at 4k (1,024) 23.3 vs 12.3.
pub const BLOCK_BELOW_GROUPS: usize = 512;

/// The head width the GPU tuning runs `attention_fwd_block` at ([`Tuning::block_forward`]).
pub const BLOCK_WIDTH: usize = 32;

/// Queries per workgroup of `attention_fwd_block` (`BR` in the shader).
pub const BLOCK_QUERIES: usize = 64;
/// Keys per tile of `attention_fwd_block` (`BC`): its chunks of the key loop are multiples.
pub const BLOCK_KEYS: usize = 16;

/// Query blocks (of `per` queries: 64 invocations × QB rows, or [`BLOCK_QUERIES`]) the forward
/// or dq launches for the chunk of keys from `begin`: none whose queries all end before key
/// `begin`, except on the `last` chunk, which finishes every block (`first_block_of` in the
/// shader).
fn query_blocks(s: AttentionShape, per: usize, begin: usize, last: bool) -> u32 {
    let per = per as u32;
    let blocks = (s.sq as u32).div_ceil(per);
    let past = s.skv - s.sq;
    let first = if begin > past && !last {
        ((begin - past) as u32) / per
    } else {
        0
    };
    blocks - first
}

/// The forward of `batch` sequences of shape `s` with the process's [`tuning`]: o and lse.
pub fn forward_plan(s: AttentionShape, batch: usize) -> Vec<Launch> {
    forward_plan_with(s, batch, tuning())
}

/// The forward of `batch` sequences of shape `s`, built and chunked per `t`. Few queries (a
/// KV-cache step) take the split-key decode (keys spread over workgroups, then merged);
/// otherwise the tiled forward, its key loop chunked over dispatches.
pub fn forward_plan_with(s: AttentionShape, batch: usize, t: Tuning) -> Vec<Launch> {
    let splits = decode_splits(s);
    if splits > 0 {
        return vec![
            decode_launch(s, batch, t, 0, s.skv),
            combine_launch(s, batch, t),
        ];
    }
    let (step, per) = forward_chunking(s, batch, t);
    chunks(s.skv, step, per)
        .into_iter()
        .map(|(begin, end, last)| forward_launch(s, batch, t, begin, end, last))
        .collect()
}

/// [`forward_plan_with`] for keys and values bound `page` rows at a time (a paged KV cache:
/// pages `0, 1, …` hold rows `[i·page, (i + 1)·page)` of every sequence, the last one the
/// rest): each launch with the index of the page it binds (the combine of a decode binds none:
/// 0). `page` must be a multiple of [`page_multiple`] unless it covers every key (then this is
/// [`forward_plan_with`]).
pub fn forward_plan_paged(
    s: AttentionShape,
    batch: usize,
    t: Tuning,
    page: usize,
) -> Vec<(Launch, usize)> {
    if page >= s.skv {
        return forward_plan_with(s, batch, t)
            .into_iter()
            .map(|l| (l, 0))
            .collect();
    }
    assert!(
        page > 0 && page.is_multiple_of(page_multiple(s.head_dim)),
        "pages of {page} keys: not a multiple of {} (head width {})",
        page_multiple(s.head_dim),
        s.head_dim
    );
    let pages = s.skv.div_ceil(page);
    let keys = |i: usize| page.min(s.skv - i * page);
    let paged = |mut l: Launch, i: usize| {
        set_page(&mut l, i * page, keys(i));
        (l, i)
    };
    if decode_splits(s) > 0 {
        let mut plan: Vec<(Launch, usize)> = (0..pages)
            .map(|i| paged(decode_launch(s, batch, t, i * page, keys(i)), i))
            .collect();
        plan.push((combine_launch(s, batch, t), 0));
        return plan;
    }
    let (step, per) = forward_chunking(s, batch, t);
    let mut plan = Vec::new();
    for i in 0..pages {
        let (base, n) = (i * page, keys(i));
        for (begin, end, last) in chunks(n, step, per) {
            let l = forward_launch(
                s,
                batch,
                t,
                base + begin,
                base + end.min(n),
                last && i + 1 == pages,
            );
            plan.push(paged(l, i));
        }
    }
    plan
}

/// `(step, steps per dispatch)` of the tiled forward's key loop: tiles of `attention_fwd`, or
/// of `attention_fwd_block` ([`Tuning::block_forward`]), as many keys per dispatch as the
/// former's chunks hold, in whole tiles of [`BLOCK_KEYS`].
fn forward_chunking(s: AttentionShape, batch: usize, t: Tuning) -> (usize, usize) {
    if t.block_forward(s, batch) {
        (
            BLOCK_KEYS,
            (tile_rows(s.head_dim) * t.tiles_per_dispatch).div_ceil(BLOCK_KEYS),
        )
    } else {
        (tile_rows(s.head_dim), t.tiles_per_dispatch)
    }
}

/// The tiled forward over keys `[begin, end)`.
fn forward_launch(
    s: AttentionShape,
    batch: usize,
    t: Tuning,
    begin: usize,
    end: usize,
    last: bool,
) -> Launch {
    let rows = t.forward_rows(s.head_dim);
    let spec = spec(s, rows);
    if t.block_forward(s, batch) {
        return Launch {
            workgroup: 128,
            ..launch(
                "attention_fwd_block",
                FWD,
                params(s, batch, begin, end, last),
                (
                    query_blocks(s, BLOCK_QUERIES, begin, last),
                    s.hq as u32,
                    batch as u32,
                ),
                spec,
            )
        };
    }
    launch(
        "attention_fwd",
        FWD,
        params(s, batch, begin, end, last),
        (
            query_blocks(s, 64 * rows, begin, last),
            s.hq as u32,
            batch as u32,
        ),
        spec,
    )
}

/// The split-key decode over `n` keys from `base` (splits of [`DECODE_SPLIT`]; `base` is on one).
fn decode_launch(s: AttentionShape, batch: usize, t: Tuning, base: usize, n: usize) -> Launch {
    debug_assert!(base.is_multiple_of(DECODE_SPLIT));
    launch(
        "attention_decode",
        DECODE,
        params(s, batch, 0, DECODE_SPLIT, true),
        (
            n.div_ceil(DECODE_SPLIT).max(1) as u32,
            s.hq as u32,
            (batch * s.sq) as u32,
        ),
        spec(s, t.forward_rows(s.head_dim)),
    )
}

/// Merges every decode split into o and lse: one invocation per output value.
fn combine_launch(s: AttentionShape, batch: usize, t: Tuning) -> Launch {
    let values = (batch * s.sq * s.hq * s.head_dim) as u32;
    let (x, y) = crate::gpu::grid(values.div_ceil(64));
    launch(
        "attention_decode_combine",
        COMBINE,
        params(s, batch, decode_splits(s), 0, true),
        (x, y, 1),
        spec(s, t.forward_rows(s.head_dim)),
    )
}

/// The backward after [`forward_plan`] with the process's [`tuning`].
pub fn backward_plan(s: AttentionShape, batch: usize) -> Vec<Launch> {
    backward_plan_with(s, batch, tuning())
}

/// The backward after [`forward_plan_with`] (the same `t`): δ, dq, then dk and dv.
pub fn backward_plan_with(s: AttentionShape, batch: usize, t: Tuning) -> Vec<Launch> {
    let rows = t.backward_rows_for(s, batch);
    let spec = spec(s, rows);
    let b = batch as u32;
    let mut plan = vec![launch(
        "attention_bwd_prep",
        PREP,
        params(s, batch, 0, 0, true),
        (((s.sq * s.hq) as u32).div_ceil(64), 1, b),
        spec,
    )];
    let tile = tile_rows(s.head_dim);
    for (begin, end, last) in chunks(s.skv, tile, t.tiles_per_dispatch) {
        plan.push(launch(
            "attention_bwd_dq",
            DQ,
            params(s, batch, begin, end, last),
            (query_blocks(s, 64 * rows, begin, last), s.hq as u32, b),
            spec,
        ));
    }
    // dk/dv loop over (query head of the group, query tile): group · ⌈Sq / tile⌉ steps.
    let steps = (s.hq / s.hkv) * s.sq.div_ceil(tile);
    for (begin, end, last) in chunks(steps, 1, t.tiles_per_dispatch) {
        plan.push(launch(
            "attention_bwd_dkv",
            DKV,
            params(s, batch, begin, end, last),
            ((s.skv as u32).div_ceil(64 * rows as u32), s.hkv as u32, b),
            spec,
        ));
    }
    plan
}

/// Checks that the flat inputs of `batch` sequences fit `s` (the kernels' limits included).
#[allow(clippy::too_many_arguments)]
pub fn check_batch(
    q: usize,
    k: usize,
    v: usize,
    aux: usize,
    s: AttentionShape,
    batch: usize,
) -> Result<()> {
    let d = s.head_dim;
    check(
        "attention",
        batch > 0
            && d > 0
            && d.is_multiple_of(2)
            && d <= 128
            && s.hkv > 0
            && s.hq.is_multiple_of(s.hkv)
            && s.sq <= s.skv
            && q == batch * s.sq * s.hq * d
            && k == batch * s.skv * s.hkv * d
            && v == k
            && aux == batch * (s.sq + s.skv) + d / 2,
        || {
            format!(
                "{batch} sequences of {s:?} do not fit q {q}, k {k}, v {v}, aux {aux} values \
                 (head_dim even and ≤ 128, hq a multiple of hkv, sq ≤ skv)"
            )
        },
    )
}

/// q, k, v, positions and every output of the attention kernels, resident on the device.
pub struct AttentionBuffers {
    /// The shape.
    pub shape: AttentionShape,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    aux: wgpu::Buffer,
    o: wgpu::Buffer,
    stats: wgpu::Buffer,
    d_o: wgpu::Buffer,
    dq: wgpu::Buffer,
    dkv: wgpu::Buffer,
    part: wgpu::Buffer,
    tuning: Tuning,
}

impl AttentionBuffers {
    /// Uploads the inputs (`d_o` may be empty when no backward will run).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        qpos: &[f32],
        kpos: &[f32],
        inv_freq: &[f32],
        d_o: &[f32],
        s: AttentionShape,
    ) -> Result<Self> {
        check_shapes(q, k, v, qpos, kpos, inv_freq, s)?;
        check(
            "attention_backward",
            d_o.is_empty() || d_o.len() == q.len(),
            || format!("dO has {} values, q {}", d_o.len(), q.len()),
        )?;
        let aux: Vec<f32> = [qpos, kpos, inv_freq].concat();
        let grads = !d_o.is_empty();
        let n = |len: usize| if grads { len } else { 1 };
        Ok(Self {
            shape: s,
            q: gpu.upload("q", q),
            k: gpu.upload("k", k),
            v: gpu.upload("v", v),
            aux: gpu.upload("aux", &aux),
            o: gpu.zeros("o", q.len()),
            stats: gpu.zeros("stats", 3 * s.hq * s.sq),
            d_o: gpu.upload("dO", d_o),
            dq: gpu.zeros("dq", n(q.len())),
            dkv: gpu.zeros("dkv", n(2 * k.len())),
            part: gpu.zeros("part", part_len(s, 1)),
            tuning: gpu.tuning,
        })
    }

    /// Bytes the attention buffers of `batch` sequences of shape `s` take (`grads`: with the
    /// backward's dO, dq, dk and dv): what [`Self::bytes`] reports, without allocating.
    pub fn bytes_for(s: AttentionShape, batch: usize, grads: bool) -> u64 {
        let d = s.head_dim;
        let (qn, kn) = (batch * s.sq * s.hq * d, batch * s.skv * s.hkv * d);
        let fwd = qn + 2 * kn + batch * (s.sq + s.skv) + d / 2 + qn + batch * 3 * s.hq * s.sq;
        let bwd = if grads { qn + qn + 2 * kn } else { 0 };
        4 * (fwd + bwd + part_len(s, batch)) as u64
    }

    /// Bytes of device memory these buffers hold (what the kernels need besides their 16 KiB
    /// of workgroup memory): linear in the length.
    pub fn bytes(&self) -> u64 {
        [
            &self.q,
            &self.k,
            &self.v,
            &self.aux,
            &self.o,
            &self.stats,
            &self.d_o,
            &self.dq,
            &self.dkv,
            &self.part,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }

    /// The first 8 words of every attention shader's `Params`.
    fn shape_words(&self) -> [u32; 8] {
        let mut w = [0; 8];
        w.copy_from_slice(&params(self.shape, 1, 0, 0, false)[..8]);
        w
    }

    fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, plan: Vec<Launch>) {
        for launch in plan {
            let buffers: Vec<&wgpu::Buffer> = launch
                .storage
                .iter()
                .map(|&b| match Slot::at(b) {
                    Slot::Q => &self.q,
                    Slot::K => &self.k,
                    Slot::V => &self.v,
                    Slot::Aux => &self.aux,
                    Slot::O => &self.o,
                    Slot::Stats => &self.stats,
                    Slot::DO => &self.d_o,
                    Slot::DQ => &self.dq,
                    Slot::Part => &self.part,
                    _ => &self.dkv,
                })
                .collect();
            gpu.run(enc, &launch, &buffers);
        }
    }

    /// Records the forward: o and lse.
    pub fn record_forward(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
        self.record(gpu, enc, forward_plan_with(self.shape, 1, self.tuning));
    }

    /// Records the backward (after [`Self::record_forward`]): δ, dq, then dk and dv.
    pub fn record_backward(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
        self.record(gpu, enc, backward_plan_with(self.shape, 1, self.tuning));
    }

    /// Records the pooled attention map of `w` (after [`Self::record_forward`]) into `image`.
    pub fn record_map(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        w: MapWindow,
        image: &wgpu::Buffer,
    ) {
        let tail = [
            w.head as u32,
            w.row0 as u32,
            w.nrows as u32,
            w.out_rows as u32,
            w.out_cols as u32,
            0,
            0,
            0,
        ];
        let params = gpu.params(&[self.shape_words().as_slice(), &tail].concat());
        gpu.dispatch(
            enc,
            ("attention_map", shaders::ATTENTION_MAP, "attention_map"),
            Default::default(),
            &[
                (0, &self.q),
                (1, &self.k),
                (3, &self.aux),
                (5, &self.stats),
                (6, &params),
                (7, image),
            ],
            (((w.out_rows * w.out_cols) as u32).div_ceil(64), 1, 1),
        );
    }

    /// Reads back `(o, lse)`.
    pub fn read_forward(
        &self,
        gpu: &Gpu,
        enc: wgpu::CommandEncoder,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.shape;
        let out = gpu.finish_and_read(enc, &[&self.o, &self.stats])?;
        let n = s.sq * s.hq * s.head_dim;
        Ok((out[0][..n].to_vec(), out[1][..s.hq * s.sq].to_vec()))
    }
}

/// GPU twin of [`crate::cpu::attention`] (the fused flash kernel); returns `(o, lse)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let bufs = AttentionBuffers::new(gpu, q, k, v, qpos, kpos, inv_freq, &[], s)?;
    let mut enc = gpu.encoder();
    bufs.record_forward(gpu, &mut enc);
    bufs.read_forward(gpu, enc)
}

/// GPU twin of [`crate::cpu::attention_backward`]: the forward (for o and lse), then δ, dq and
/// dk/dv, each recomputing scores tile by tile. Returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
    s: AttentionShape,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    check("attention_backward", d_o.len() == q.len(), || {
        format!("dO has {} values, q {}", d_o.len(), q.len())
    })?;
    let b = AttentionBuffers::new(gpu, q, k, v, qpos, kpos, inv_freq, d_o, s)?;
    let mut enc = gpu.encoder();
    b.record_forward(gpu, &mut enc);
    b.record_backward(gpu, &mut enc);
    let out = gpu.finish_and_read(enc, &[&b.dq, &b.dkv])?;
    Ok((
        out[0][..q.len()].to_vec(),
        out[1][..k.len()].to_vec(),
        out[1][k.len()..2 * k.len()].to_vec(),
    ))
}

/// GPU twin of [`crate::cpu::attention_map`]: runs the (chunked) forward for lse, then pools one
/// head's weights into `[out_rows, out_cols]` without the full matrix.
#[allow(clippy::too_many_arguments)]
pub fn attention_map(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
    w: MapWindow,
) -> Result<Vec<f32>> {
    check(
        "attention_map",
        w.head < s.hq && w.row0 + w.nrows <= s.sq && w.out_rows > 0 && w.out_cols > 0,
        || {
            format!(
                "window {w:?} does not fit {} heads × {} query rows",
                s.hq, s.sq
            )
        },
    )?;
    let b = AttentionBuffers::new(gpu, q, k, v, qpos, kpos, inv_freq, &[], s)?;
    let cells = w.out_rows * w.out_cols;
    let image = gpu.zeros("image", cells);
    let mut enc = gpu.encoder();
    b.record_forward(gpu, &mut enc);
    b.record_map(gpu, &mut enc, w, &image);
    let mut out = gpu.finish_and_read(enc, &[&image])?;
    Ok(out.swap_remove(0)[..cells].to_vec())
}
