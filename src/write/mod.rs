//! Writers of EMA-only weights: safetensors (single or sharded) and torch-loadable `.pt`.
//!
//! Every output goes through [`AtomicFile`]: a temporary file beside the target, fsync, rename —
//! so a failed run leaves nothing behind — and an output that would replace an input is refused.
//! Tensor bytes are streamed from the input's memory map in order; memory stays flat.

mod pickle;
pub mod safetensors;
pub mod torch_zip;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::convert::convert_float;
use crate::tensor::{DType, Tensor};

/// The writer layer's error: which output, and what went wrong.
#[derive(Debug)]
pub struct WriteError {
    /// The output path.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl WriteError {
    /// An error about `path`.
    pub fn new(path: &Path, message: impl Into<String>) -> WriteError {
        WriteError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for WriteError {}

/// What dtype floating tensors are written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutDType {
    /// As stored.
    #[default]
    Keep,
    /// Convert to this floating dtype.
    To(DType),
}

impl OutDType {
    /// Parses `keep`, `f32`, `f16`, `bf16`.
    pub fn parse(s: &str) -> Option<OutDType> {
        Some(match s {
            "keep" => OutDType::Keep,
            "f32" | "float32" => OutDType::To(DType::F32),
            "f16" | "float16" | "half" => OutDType::To(DType::F16),
            "bf16" | "bfloat16" => OutDType::To(DType::BF16),
            _ => return None,
        })
    }

    /// The dtype a tensor is written in.
    pub fn of(self, t: &Tensor) -> DType {
        match self {
            OutDType::To(d) if t.dtype.is_float() && t.dtype.size() >= 2 => d,
            _ => t.dtype,
        }
    }
}

/// Streams a tensor's bytes, converted to `dtype`, to `w`.
pub fn write_tensor(w: &mut impl Write, t: &Tensor, dtype: DType) -> std::io::Result<()> {
    if dtype == t.dtype {
        return t.for_each_chunk(|c| w.write_all(c));
    }
    let mut buf = Vec::new();
    t.for_each_chunk(|c| {
        buf.clear();
        convert_float(t.dtype, c, dtype, &mut buf);
        w.write_all(&buf)
    })
}

/// Appends a tensor to `file`: kernel-side copy when the bytes can go out unchanged, buffered
/// streaming (with conversion) otherwise.
pub fn append_tensor(file: &mut std::fs::File, t: &Tensor, dtype: DType) -> std::io::Result<()> {
    if dtype == t.dtype
        && let Some(range) = t.contiguous_range()
    {
        return t.storage.copy_to(range, file);
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    write_tensor(&mut w, t, dtype)?;
    w.flush()
}

/// A file written under a temporary name beside its target and renamed into place on
/// [`AtomicFile::commit`]; dropped uncommitted, it disappears.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts writing `target`, refusing when it is one of `inputs`.
    pub fn create(target: &Path, inputs: &[&Path]) -> Result<AtomicFile, WriteError> {
        for input in inputs {
            if same_file(target, input) {
                return Err(WriteError::new(
                    target,
                    format!("refusing to overwrite the input {}", input.display()),
                ));
            }
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".fuse-ema-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| {
                WriteError::new(
                    target,
                    format!("cannot create a file in {}: {e}", dir.display()),
                )
            })?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the bytes are being written (the temporary name).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Flushes to disk and renames to `other` instead of the target (a parity failure keeps the
    /// file for inspection under a name no deployment would pick up).
    pub fn commit_as(mut self, other: &Path) -> Result<(), WriteError> {
        self.target = other.to_path_buf();
        self.commit()
    }

    /// Flushes to disk and renames into place.
    pub fn commit(self) -> Result<(), WriteError> {
        let target = self.target.clone();
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| WriteError::new(&target, format!("cannot sync: {e}")))?;
        self.tmp.persist(&target).map_err(|e| {
            WriteError::new(&target, format!("cannot rename into place: {}", e.error))
        })?;
        Ok(())
    }
}

/// Whether two paths name the same file (following links), when both exist.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Parses a size such as `500MB`, `2GB`, `4GiB` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = num * mult;
    (v >= 1.0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("lots"), None);
    }
}
