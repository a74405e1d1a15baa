//! Errors of the kernels crate.

/// What can go wrong running a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No usable GPU adapter (on Linux without a GPU, install `mesa-vulkan-drivers`).
    #[error("no usable GPU adapter: {0} (on Linux without a GPU install mesa-vulkan-drivers)")]
    NoAdapter(String),
    /// The device failed while running or reading back.
    #[error("GPU device error: {0}")]
    Device(String),
    /// Arguments that do not fit the kernel.
    #[error("{op}: {reason}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Result of the kernels crate.
pub type Result<T> = std::result::Result<T, KernelError>;
