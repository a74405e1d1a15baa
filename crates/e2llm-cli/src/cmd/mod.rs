//! One module per subcommand.

pub mod attend;
pub mod average;
pub mod bench;
pub mod bench_kernels;
pub mod experiment;
pub mod generate;
pub mod info;
pub mod logits;
pub mod passkey;
pub mod ppl;
pub mod train;
