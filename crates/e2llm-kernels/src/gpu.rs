//! A wgpu device and queue with a lazily built, cached pipeline per (shader, entry point), and
//! the buffer plumbing the ops share. "Get a device" ([`Gpu::new`]) is split from "do the work"
//! (every op takes `&Gpu`), so tests and callers can bring their own device.

use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::error::{KernelError, Result};
use crate::launch::Spec;

/// A device, its queue and the pipelines built on it so far.
pub struct Gpu {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's name and backend, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub adapter_name: String,
    /// How the attention kernels are built and launched on this adapter (from the adapter, or
    /// `E2LLM_ATTENTION`); tests set it to run both builds on one adapter.
    pub tuning: crate::attention::Tuning,
    pipelines: Mutex<HashMap<(&'static str, &'static str, Spec), wgpu::ComputePipeline>>,
}

/// The largest number of workgroups along one grid dimension (WebGPU's default limit).
pub const MAX_GROUPS: u32 = 65_535;

/// A 1-D launch of `groups` workgroups folded into a 2-D grid under [`MAX_GROUPS`]; shaders
/// rebuild the flat index as `x + y · num_workgroups.x`.
pub fn grid(groups: u32) -> (u32, u32) {
    if groups <= MAX_GROUPS {
        (groups.max(1), 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}

/// The attention tuning for the adapter `info` describes ([`crate::attention::Tuning::for_adapter`]:
/// GPU hardware is a discrete, integrated or virtual GPU).
pub fn tuning_for(info: &wgpu::AdapterInfo) -> crate::attention::Tuning {
    let hardware = matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    );
    crate::attention::Tuning::for_adapter(&info.name, hardware)
}

/// The attention tuning for the adapter a default wgpu device gets on this machine (the
/// high-performance one), found once per process without opening a device; `None` when there
/// is no adapter.
pub fn adapter_tuning() -> Option<crate::attention::Tuning> {
    static FOUND: std::sync::OnceLock<Option<crate::attention::Tuning>> =
        std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .ok()?;
        Some(tuning_for(&adapter.get_info()))
    })
}

impl Gpu {
    /// The best adapter this machine has (Vulkan/Metal/DX12/GL), with WebGPU's default
    /// limits so that what runs here runs in a browser.
    pub fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| KernelError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("e2llm-kernels"),
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        }))
        .map_err(|e| KernelError::NoAdapter(e.to_string()))?;
        let mut gpu =
            Self::from_parts(device, queue, format!("{} ({:?})", info.name, info.backend));
        gpu.tuning = crate::attention::env_tuning().unwrap_or_else(|| tuning_for(&info));
        Ok(gpu)
    }

    /// Wraps an existing device and queue.
    pub fn from_parts(device: wgpu::Device, queue: wgpu::Queue, adapter_name: String) -> Self {
        Self {
            device,
            queue,
            adapter_name,
            tuning: crate::attention::tuning(),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// The pipeline of `entry` in `source` built for `spec`, built on first use.
    pub fn pipeline(
        &self,
        name: &'static str,
        source: &'static str,
        entry: &'static str,
        spec: Spec,
    ) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((name, entry, spec))
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(name),
                        source: wgpu::ShaderSource::Wgsl(crate::shaders::specialize(source, spec)),
                    });
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            })
            .clone()
    }

    /// A storage buffer holding `data` (at least 4 bytes, as WebGPU requires).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        if bytes.is_empty() {
            bytes = vec![0; 4];
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zeroed storage buffer of `n` f32.
    pub fn zeros(&self, label: &str, n: usize) -> wgpu::Buffer {
        self.upload(label, &vec![0.0f32; n.max(1)])
    }

    /// A kernel's uniform `Params`: `words`, each 4 bytes (callers pad to 16 bytes).
    pub fn params(&self, words: &[u32]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(words),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Records one dispatch of `entry` (of `source` built for `spec`) with `buffers` bound at
    /// the given binding numbers.
    pub fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (name, source, entry): (&'static str, &'static str, &'static str),
        spec: Spec,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32, u32),
    ) {
        let pipeline = self.pipeline(name, source, entry, spec);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &layout,
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(entry),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }

    /// Records `launch` with `buffers` bound to its storage bindings (in order) and its
    /// `Params` in a fresh uniform buffer.
    pub fn run(
        &self,
        enc: &mut wgpu::CommandEncoder,
        launch: &crate::launch::Launch,
        buffers: &[&wgpu::Buffer],
    ) {
        debug_assert_eq!(buffers.len(), launch.storage.len(), "{}", launch.entry);
        let params = self.params(&launch.params);
        let mut bound: Vec<(u32, &wgpu::Buffer)> = launch
            .storage
            .iter()
            .copied()
            .zip(buffers.iter().copied())
            .collect();
        bound.push((launch.uniform, &params));
        let shader = launch.shader;
        self.dispatch(
            enc,
            (shader.name, shader.source, launch.entry),
            launch.spec,
            &bound,
            launch.groups,
        );
    }

    /// A fresh command encoder.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `encoder`, then copies each buffer back to the host as f32.
    pub fn finish_and_read(
        &self,
        mut encoder: wgpu::CommandEncoder,
        buffers: &[&wgpu::Buffer],
    ) -> Result<Vec<Vec<f32>>> {
        let staging: Vec<wgpu::Buffer> = buffers
            .iter()
            .map(|b| {
                let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: b.size(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(b, 0, &s, 0, b.size());
                s
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        for s in &staging {
            s.map_async(wgpu::MapMode::Read, .., |_| {});
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Device(e.to_string()))?;
        staging
            .iter()
            .map(|s| {
                let view = s
                    .get_mapped_range(..)
                    .map_err(|e| KernelError::Device(format!("{e:?}")))?;
                let out = bytemuck::pod_collect_to_vec::<u8, f32>(&view);
                drop(view);
                s.unmap();
                Ok(out)
            })
            .collect()
    }

    /// Submits `encoder` and waits for it.
    pub fn finish(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.queue.submit([encoder.finish()]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| KernelError::Device(e.to_string()))
    }
}
