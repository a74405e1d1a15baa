//! Picking the compute device by name.

use burn::tensor::Device;

use crate::error::{ModelError, Result};

/// Backends this build can run on.
pub const BACKENDS: &[&str] = if cfg!(feature = "wgpu") {
    &["cpu", "wgpu"]
} else {
    &["cpu"]
};

/// `"cpu"` → burn's flex CPU backend; `"wgpu"` → the best wgpu adapter (Vulkan/Metal/DX12,
/// or WebGPU in a browser; set `CUBECL_WGPU_DEFAULT_DEVICE` to choose another).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => {
            // The attention kernels' build for this adapter (rows per invocation, chunking).
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(t) = e2llm_kernels::gpu::adapter_tuning() {
                e2llm_kernels::attention::set_tuning(t);
            }
            Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
        }
        other => Err(ModelError::Input(format!(
            "unknown backend `{other}`; choose one of {}",
            BACKENDS.join(", ")
        ))),
    }
}

/// Reads `t` back to the host as f32 values; a device failure (above all an allocation the
/// adapter refused) is one [`ModelError::Backend`] line saying so ([`describe_failure`]) instead
/// of burn's panic.
pub fn read_f32<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    host_f32(t.try_into_data())
}

/// [`read_f32`] with asynchronous read-back: what WebGPU in a browser needs (a blocking read
/// cannot wait for the device there).
pub async fn read_f32_async<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    host_f32(t.into_data_async().await)
}

fn host_f32<E: std::fmt::Debug>(
    data: std::result::Result<burn::tensor::TensorData, E>,
) -> Result<Vec<f32>> {
    data.map_err(|e| ModelError::Backend(describe_failure(&e)))?
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("reading a tensor back: {e:?}")))
}

/// [`device`] followed by [`probe`]: a device that is known to run, or why not.
pub fn open(name: &str) -> Result<Device> {
    let device = device(name)?;
    probe(&device)?;
    Ok(device)
}

/// Runs a tiny op on `device` and reads it back; turns a backend that cannot start (no GPU
/// adapter, driver failure) into an error instead of a panic.
pub fn probe(device: &Device) -> Result<()> {
    let d = device.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(move || {
        burn::tensor::Tensor::<1>::from_floats([1.0f32, 2.0], &d)
            .sum()
            .into_data()
            .try_to_vec::<f32>()
    });
    std::panic::set_hook(prev);
    match r {
        Ok(Ok(v)) if v.first() == Some(&3.0) => Ok(()),
        Ok(Ok(v)) => Err(ModelError::Backend(format!(
            "probe computed {v:?} instead of [3.0]"
        ))),
        Ok(Err(e)) => Err(ModelError::Backend(format!("{e:?}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked while starting".into());
            Err(ModelError::Backend(format!(
                "{msg} (no usable GPU adapter? on Linux install mesa-vulkan-drivers, or use --backend cpu)"
            )))
        }
    }
}

/// The size in MiB of a buffer the device refused to allocate, if that is what `error` (any
/// burn/cubecl error, through its `Debug` text) reports.
pub fn refused_buffer_mib(error: &str) -> Option<u64> {
    let rest = error.split("allocate buffer of size: ").nth(1)?;
    let bytes: String = rest.chars().take_while(char::is_ascii_digit).collect();
    bytes.parse::<u64>().ok().map(|b| b >> 20)
}

/// One line for a computation the device could not finish: the size of a buffer it refused
/// ("out of memory") or the first line of the error, not burn's chain of skipped kernels.
pub fn describe_failure(e: &impl std::fmt::Debug) -> String {
    let text = format!("{e:?}");
    match refused_buffer_mib(&text) {
        Some(mib) => format!(
            "the device ran out of memory (it refused a {mib} MiB buffer); use a shorter \
             context, or the fused kernels (--kernels fused: no score matrix)"
        ),
        None => format!(
            "the device failed: {}",
            text.lines().next().unwrap_or("unknown error")
        ),
    }
}
