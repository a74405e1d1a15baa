//! Shared helpers of the workspace tests: fixture paths and golden-file readers.
//!
//! The golden fixtures under `tests/fixtures/hf/` are written by HF transformers through
//! `tests/fixtures/hf/make_golden.py` (see `tests/fixtures/hf/NOTES.md`); CI only reads them.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/hf`.
pub fn hf_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf")
}

/// Every fixture case directory (one with a `golden.safetensors`), sorted.
pub fn hf_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(hf_fixtures())
        .expect("tests/fixtures/hf exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.safetensors").exists())
        .collect();
    v.sort();
    v
}

/// One tensor read from a golden file, converted to f64 whatever its dtype.
#[derive(Debug, Clone)]
pub struct GoldenTensor {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f64>,
}

/// Reads every tensor of `path` (f32, f64, i64 or i32).
pub fn read_golden(path: &Path) -> std::collections::HashMap<String, GoldenTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let values: Vec<f64> = match v.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                    .collect(),
                Dtype::I32 => d
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                    .collect(),
                other => panic!(
                    "{}: tensor {name} has unsupported dtype {other:?}",
                    path.display()
                ),
            };
            (
                name,
                GoldenTensor {
                    shape: v.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}
