//! Writers of EMA-only weights: safetensors (single or sharded) and torch-loadable `.pt`.
//!
//! Every output goes through [`AtomicFile`]: a temporary file beside the target, fsync, rename —
//! so a failed run (or one stopped by a signal) leaves nothing behind — and an output that would
//! replace an input, or a target that is not a regular file, is refused.
//! Tensor bytes are streamed from the input's memory map in order; memory stays flat.

#[cfg(test)]
mod atomic_tests;
mod pickle;
pub mod reemit;
pub mod repickle;
#[cfg(test)]
mod repickle_tests;
pub mod safetensors;
mod target;
pub mod torch_zip;
mod writeback;
mod zip_stored;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::convert::convert_float;
use crate::tensor::{DType, Tensor};
pub use target::{check_target, checkpoint_inputs, same_target};
pub(crate) use writeback::{Writeback, WritebackFile};

/// The writer layer's error: which output, and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct WriteError {
    /// The output path.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub kind: WriteErrorKind,
}

impl WriteError {
    /// An error about `path`.
    pub fn new(path: &Path, kind: impl Into<WriteErrorKind>) -> WriteError {
        WriteError {
            path: path.to_path_buf(),
            kind: kind.into(),
        }
    }
}

/// One way writing an output fails.
#[derive(Debug, thiserror::Error)]
pub enum WriteErrorKind {
    /// The output is, or would land on, one of the run's inputs.
    #[error("refusing to overwrite the input {}", .0.display())]
    IsInput(PathBuf),
    /// The output is a symbolic link.
    #[error(
        "is a symbolic link; fuse-ema replaces only regular files (name the file it points to, or remove the link)"
    )]
    Symlink,
    /// The output exists and is a folder, device, FIFO or socket.
    #[error("exists and is not a regular file ({0}); refusing to replace it")]
    NotRegular(&'static str),
    /// The temporary file beside the output could not be made.
    #[error("cannot create a file in {}: {source}", dir.display())]
    Create {
        /// The output's folder.
        dir: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The temporary file was not registered for removal on a signal.
    #[error("no temporary file was created")]
    NoTemporary,
    /// The replaced file's permissions could not be kept.
    #[error("cannot set permissions: {0}")]
    Permissions(#[source] std::io::Error),
    /// The data could not be flushed to disk.
    #[error("cannot sync: {0}")]
    Sync(#[source] std::io::Error),
    /// The temporary file could not be renamed onto the output.
    #[error("cannot rename into place: {0}")]
    Rename(#[source] std::io::Error),
    /// Writing the bytes failed.
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
    /// The zip writer failed.
    #[error("write failed: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// A tensor whose dtype safetensors cannot hold.
    #[error("tensor '{name}': safetensors has no {dtype} dtype")]
    SafetensorsDtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// A tensor whose dtype has no torch storage class.
    #[error("tensor '{name}': torch files cannot hold {dtype} here")]
    TorchDtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Tensor byte sizes or offsets overflow.
    #[error("tensor sizes overflow")]
    Overflow,
    /// Two tensors under one name: readers would keep one of them, silently.
    #[error("two tensors are named '{0}'")]
    DuplicateName(String),
    /// The safetensors crate refuses the layout.
    #[error("invalid safetensors layout: {0}")]
    Layout(#[source] ::safetensors::SafeTensorError),
    /// The safetensors header would exceed the format's limit.
    #[error(
        "the safetensors header would be {size} bytes, over the format's limit of {max} (too many tensors or names too long for one file: use --max-shard-size)"
    )]
    HeaderTooLarge {
        /// The header's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// The folder an output goes in (`.` for a bare file name): where its temporary and scratch
/// files are made, on the output's file system.
pub fn output_dir(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

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
            OutDType::To(d) if t.dtype().is_float() && t.dtype().size() >= 2 => d,
            _ => t.dtype(),
        }
    }
}

/// Streams a tensor's bytes, converted to `dtype`, to `w`.
pub fn write_tensor(w: &mut impl Write, t: &Tensor, dtype: DType) -> std::io::Result<()> {
    if dtype == t.dtype() {
        return t
            .for_each_chunk(|c| w.write_all(c))
            .map_err(|e| changed(t, e));
    }
    let mut buf = Vec::new();
    t.for_each_chunk(|c| {
        buf.clear();
        convert_float(t.dtype(), c, dtype, &mut buf);
        w.write_all(&buf)
    })
    .map_err(|e| changed(t, e))
}

/// A read that ran past the end of a mapped input means another process shrank the file while
/// it was being copied: say so, naming the input.
fn changed(t: &Tensor, e: std::io::Error) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::UnexpectedEof {
        return e;
    }
    match &t.storage() {
        crate::tensor::Buffer::Mapped { map, .. } => {
            match crate::signals::mapped_path(map.as_ptr()) {
                Some(p) => std::io::Error::new(
                    e.kind(),
                    format!("{}: file changed while reading", p.display()),
                ),
                None => e,
            }
        }
        crate::tensor::Buffer::Owned(_) | crate::tensor::Buffer::Deflated(_) => e,
    }
}

/// Appends a tensor to `file`: kernel-side copy when the bytes can go out unchanged, buffered
/// streaming (with conversion) otherwise.
pub fn append_tensor(file: &mut std::fs::File, t: &Tensor, dtype: DType) -> std::io::Result<()> {
    if dtype == t.dtype()
        && let Some(range) = t.contiguous_range()
    {
        return t.storage().copy_to(range, file).map_err(|e| changed(t, e));
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    write_tensor(&mut w, t, dtype)?;
    w.flush()
}

/// A file written under a temporary name beside its target and renamed into place on
/// [`AtomicFile::commit`]; dropped uncommitted, it disappears, and a terminating signal removes
/// it too (see [`crate::signals`]).
///
/// Permissions follow `cp`: a new file gets 0666 less the umask; a file replaced keeps its mode.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    inputs: Vec<PathBuf>,
    /// The flush to disk started by [`AtomicFile::sync_ahead`], if any.
    ahead: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Whether the file was handed out for writing since [`AtomicFile::sync_ahead`].
    touched: bool,
    // Declared after `tmp`: the file is removed before its path leaves the signal registry.
    _guard: crate::signals::TempGuard,
}

impl AtomicFile {
    /// Starts writing `target`, refusing when it is (or would land on) one of `inputs`, or
    /// exists and is not a regular file.
    pub fn create(target: &Path, inputs: &[&Path]) -> Result<AtomicFile, WriteError> {
        check_target(target, inputs)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let replaced_mode = std::fs::metadata(target)
            .ok()
            .filter(|m| m.is_file())
            // Permission bits only: set-id bits are not carried to new content (as cp does).
            .map(|m| m.permissions().mode() & 0o777);
        // The name is registered for removal on a signal before the file exists, so no signal
        // can leave it behind; a name already taken is dropped and another one tried.
        let mut guard = None;
        let tmp = tempfile::Builder::new()
            .prefix(".fuse-ema-")
            .suffix(".partial")
            .make_in(dir, |path| {
                guard = Some(crate::signals::register_temp(path));
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    // The kernel applies the umask to this, as for any file a program creates.
                    .mode(0o666)
                    .open(path)
            })
            .map_err(|source| {
                WriteError::new(
                    target,
                    WriteErrorKind::Create {
                        dir: dir.to_path_buf(),
                        source,
                    },
                )
            })?;
        let Some(guard) = guard else {
            return Err(WriteError::new(target, WriteErrorKind::NoTemporary));
        };
        if let Some(mode) = replaced_mode {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| WriteError::new(target, WriteErrorKind::Permissions(e)))?;
        }
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
            ahead: None,
            touched: false,
            _guard: guard,
        })
    }

    /// Starts flushing what has been written to disk on a thread, so the flush [`commit`]
    /// must wait for overlaps whatever comes between (export's parity check); `commit` waits
    /// for it and reports its error. A file written again after this call is flushed once more
    /// at the commit. Where no thread can be started, the commit flushes as it would have.
    ///
    /// [`commit`]: AtomicFile::commit
    pub fn sync_ahead(&mut self) {
        if self.ahead.is_some() {
            return;
        }
        let Ok(f) = self.tmp.as_file().try_clone() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("fuse-ema-fsync".into())
            .spawn(move || f.sync_all());
        if let Ok(t) = spawned {
            self.ahead = Some(t);
            self.touched = false;
        }
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.touched = true;
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
    /// file for inspection under a name no deployment would pick up); `other` is checked like
    /// the target was.
    pub fn commit_as(mut self, other: &Path) -> Result<(), WriteError> {
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        check_target(other, &inputs)?;
        self.target = other.to_path_buf();
        self.commit()
    }

    /// Flushes to disk and renames into place.
    pub fn commit(self) -> Result<(), WriteError> {
        let AtomicFile {
            tmp,
            target,
            inputs,
            ahead,
            touched,
            _guard,
        } = self;
        let sync = |e| WriteError::new(&target, WriteErrorKind::Sync(e));
        let synced = match ahead {
            Some(t) => {
                t.join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
                    .map_err(sync)?;
                !touched
            }
            None => false,
        };
        // A second flush of a file with nothing new would still cost a device cache flush.
        if !synced {
            tmp.as_file().sync_all().map_err(sync)?;
        }
        // Checked again just before the rename: the target may have changed since the start.
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        check_target(&target, &inputs)?;
        tmp.persist(&target)
            .map_err(|e| WriteError::new(&target, WriteErrorKind::Rename(e.error)))?;
        drop(_guard);
        Ok(())
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
