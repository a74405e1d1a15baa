//! Every WGSL source of `shaders/`, embedded at compile time.

/// `shaders/rope.wgsl`: RoPE forward / inverse with positions as data.
pub const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
/// `shaders/attention.wgsl`: causal GQA flash attention with RoPE inside.
pub const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
/// `shaders/attention_map.wgsl`: pooled softmax weights of one head, for the visualisers.
pub const ATTENTION_MAP: &str = include_str!("../../../shaders/attention_map.wgsl");
/// `shaders/rmsnorm.wgsl`: RMSNorm forward and backward.
pub const RMSNORM: &str = include_str!("../../../shaders/rmsnorm.wgsl");
/// `shaders/swiglu.wgsl`: SiLU-gated product forward and backward.
pub const SWIGLU: &str = include_str!("../../../shaders/swiglu.wgsl");
/// `shaders/cross_entropy.wgsl`: fused log-softmax + NLL + gradient.
pub const CROSS_ENTROPY: &str = include_str!("../../../shaders/cross_entropy.wgsl");
/// `shaders/adamw.wgsl`: the AdamW update.
pub const ADAMW: &str = include_str!("../../../shaders/adamw.wgsl");

/// `(file name, source)` of every shader.
pub const ALL: &[(&str, &str)] = &[
    ("rope.wgsl", ROPE),
    ("attention.wgsl", ATTENTION),
    ("attention_map.wgsl", ATTENTION_MAP),
    ("rmsnorm.wgsl", RMSNORM),
    ("swiglu.wgsl", SWIGLU),
    ("cross_entropy.wgsl", CROSS_ENTROPY),
    ("adamw.wgsl", ADAMW),
];

/// `source` built for `spec` (see [`crate::launch::Spec`]): the head width written into
/// `const HD`, and the rows-per-invocation lines of `shaders/attention.wgsl` chosen for
/// `spec.rows` (1, 2, 4 or 8; 0 = 4, as written): a line ending `// QB<digits>` is kept only
/// when its digits name the build's rows, and a line starting `//QB<rows> ` is uncommented; with
/// `spec.kv_f16` the line `alias kv_t = f32;` becomes `alias kv_t = f16;` and `enable f16;`
/// goes first. A default spec returns `source` unchanged.
pub fn specialize(source: &str, spec: crate::launch::Spec) -> std::borrow::Cow<'_, str> {
    if spec == crate::launch::Spec::default() {
        return source.into();
    }
    let rows = if spec.rows == 0 { 4 } else { spec.rows };
    let mut out = String::with_capacity(source.len() + 16);
    if spec.kv_f16 {
        out.push_str("enable f16;\n");
    }
    let tag = format!("//QB{rows} ");
    let digit = char::from_digit(rows, 10);
    for line in source.lines() {
        if let Some(builds) = rows_marker(line) {
            if !digit.is_some_and(|d| builds.contains(d)) {
                continue;
            }
        }
        // A `//QB<rows> ` line is uncommented in place (its indentation kept).
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let body = body.strip_prefix(tag.as_str()).unwrap_or(body);
        if spec.head_dim > 0 && body.starts_with("const HD: u32 = ") {
            out.push_str(&format!("const HD: u32 = {}u;\n", spec.head_dim));
        } else if spec.kv_f16 && body == "alias kv_t = f32;" {
            out.push_str("alias kv_t = f16;\n");
        } else {
            out.push_str(indent);
            out.push_str(body);
            out.push('\n');
        }
    }
    out.into()
}

/// The digits of a line's trailing `// QB<digits>` marker (the builds that keep the line).
fn rows_marker(line: &str) -> Option<&str> {
    let (_, tail) = line.rsplit_once("// QB")?;
    (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then_some(tail)
}

/// `source` as burn's cubecl runtime needs it for one entry point: the storage buffers it binds
/// renumbered `0, 1, …` in the order `storage` lists them (by their number in `source`), its
/// uniform `uniform` (if any) numbered right after them — where cubecl binds a launch's "info"
/// data — every other binding moved to group 1, and every storage buffer declared
/// `read_write`: cubecl sub-allocates tensors from shared wgpu buffers, so a read-only and a
/// writable binding may be one buffer, which wgpu refuses unless both are writable (cubecl's
/// own kernels bind every buffer read-write for the same reason). Used with the pipeline's
/// automatic layout, which holds only the bindings the entry point uses.
pub fn for_entry(source: &str, storage: &[u32], uniform: Option<u32>) -> String {
    let order: Vec<u32> = storage.iter().copied().chain(uniform).collect();
    renumber(source, &order).replace("var<storage, read>", "var<storage, read_write>")
}

fn renumber(source: &str, bindings: &[u32]) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    const TAG: &str = "@group(0) @binding(";
    while let Some(at) = rest.find(TAG) {
        out.push_str(&rest[..at]);
        let after = &rest[at + TAG.len()..];
        let close = after.find(')').unwrap_or(after.len());
        let number: Option<u32> = after[..close].trim().parse().ok();
        match number.and_then(|n| bindings.iter().position(|&b| b == n).map(|i| (n, i))) {
            Some((_, i)) => out.push_str(&format!("@group(0) @binding({i}")),
            None => out.push_str(&format!("@group(1) @binding({}", &after[..close])),
        }
        rest = &after[close..];
    }
    out.push_str(rest);
    out
}
