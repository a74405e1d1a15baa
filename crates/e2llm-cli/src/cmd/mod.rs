//! One module per subcommand.

pub mod generate;
pub mod info;
pub mod logits;
pub mod passkey;
pub mod train;
