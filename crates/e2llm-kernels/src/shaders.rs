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
