//! Helpers shared by the integration tests: fixture paths, the expectations the generator saved
//! from PyTorch, and running the binary.

#![allow(dead_code)]

pub mod golden;
pub mod onnx_edit;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A committed fixture, or its held-out counterpart: with `FUSE_EMA_FIXTURES_DIR` set
/// (scripts/heldout), a path that exists under that folder is taken from there instead.
pub fn fixture(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FUSE_EMA_FIXTURES_DIR") {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// What PyTorch loaded for a fixture: `(weight set path -> names in order, facts)`.
pub struct Expected {
    /// Raw bytes of `expected/<name>.safetensors`.
    pub bytes: Vec<u8>,
    /// The JSON sidecar.
    pub json: serde_json::Value,
}

impl Expected {
    /// Loads `fixtures/expected/<name>.{safetensors,json}`.
    pub fn load(name: &str) -> Expected {
        let bytes = std::fs::read(fixture(&format!("expected/{name}.safetensors")))
            .expect("expected tensors exist (run fixtures/generate.py)");
        let text = std::fs::read_to_string(fixture(&format!("expected/{name}.json"))).unwrap();
        Expected {
            bytes,
            json: serde_json::from_str(&text).unwrap(),
        }
    }

    /// Weight set paths and their names in state-dict order.
    pub fn sets(&self) -> Vec<(String, Vec<String>)> {
        let sets = self.json["sets"].as_object().unwrap();
        sets.iter()
            .map(|(k, v)| {
                let names = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect();
                (k.clone(), names)
            })
            .collect()
    }

    /// A fact recorded by the generator.
    pub fn fact(&self, key: &str) -> &serde_json::Value {
        &self.json["facts"][key]
    }

    /// The tensors, read by the `safetensors` crate directly (not by fuse-ema's reader).
    pub fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap()
    }
}

/// The dtype name fuse-ema uses for a safetensors dtype.
pub fn dtype_name(d: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype as D;
    match d {
        D::F64 => "f64",
        D::F32 => "f32",
        D::F16 => "f16",
        D::BF16 => "bf16",
        D::I64 => "i64",
        D::I32 => "i32",
        D::I16 => "i16",
        D::I8 => "i8",
        D::U8 => "u8",
        D::BOOL => "bool",
        D::U16 => "u16",
        D::U32 => "u32",
        D::U64 => "u64",
        _ => "other",
    }
}

/// Runs the binary with arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Runs the binary and parses its stdout as JSON.
pub fn run_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = run(args);
    let code = out.status.code().expect("exited, not killed by a signal");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// The bytes of the torch zip `src` rewritten with every entry deflated (a "re-zipped" checkpoint).
pub fn rezip_deflated(src: &Path) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        w.start_file(f.name().unwrap().to_string(), opts).unwrap();
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap();
    out.into_inner()
}

/// The export and reference tests' f32 criterion, per output channel (dimension 1): max |Δ| ≤
/// 1e-4 · max |channel| + 1e-4. A whole-tensor limit scaled by the largest value (box coordinates
/// in the hundreds) would let a class-score channel below 0.01 be anything, even all zero.
pub const PER_CHANNEL: fuse_ema::parity::Tolerance = fuse_ema::parity::Tolerance {
    atol: 1e-4,
    rtol: 1e-4,
    f16_noise: None,
};

/// Compares `got` with `want` channel by channel ([`fuse_ema::parity::compare`]) and panics,
/// naming `what` and the worst channel, when one is over its limit.
pub fn assert_channels(
    what: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: fuse_ema::parity::Tolerance,
) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let s = fuse_ema::parity::compare(what, shape, got, want, tol);
    assert!(
        s.pass,
        "{what}: channel {} max |Δ| {} over its limit {} (max |Δ| overall {}, max |y| {})",
        s.worst_channel, s.worst_channel_max_abs, s.worst_channel_limit, s.max_abs, s.reference_max
    );
}

/// Compares class maps label by label ([`fuse_ema::parity::labels::compare_labels`]): a label may
/// differ only where the reference `logits` (B, nc, H, W) make it a near-tie within `tol`.
pub fn assert_labels(
    what: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    logits: Option<&[f32]>,
    tol: fuse_ema::parity::Tolerance,
) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let s = fuse_ema::parity::labels::compare_labels(what, shape, got, want, logits, tol);
    assert!(
        s.pass,
        "{what}: {:.4}% of the labels differ; the worst by a logit margin {} over its limit {} (class {})",
        100.0 * s.mean_abs,
        s.max_abs,
        s.worst_channel_limit,
        s.worst_channel
    );
}

/// The SHA-256 of a file, in lowercase hex.
pub fn sha256(p: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(p).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
