//! Readers: bytes on disk to a [`Checkpoint`].
//!
//! Every reader memory-maps its input and hands tensors out as views into the map; only
//! compressed entries are ever copied (decompressed).

pub mod error;
pub mod pickle;
mod safetensors;
mod torch_legacy;
mod torch_zip;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::tensor::MappedFile;

use crate::checkpoint::value::Graph;
use crate::checkpoint::{Checkpoint, Format, FormatInfo};
pub use error::{ReadError, ReadErrorKind};

/// Opens a checkpoint of any supported format: torch zip (`.pt .pth .ckpt .bin .pth.tar`), legacy
/// torch, plain pickle, safetensors, or a sharded safetensors set (its `*.index.json` or folder).
pub fn open(path: &Path) -> Result<Checkpoint, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::new(path, e))?;
    if meta.is_dir() {
        return safetensors::open_sharded_dir(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".index.json") {
        return safetensors::open_sharded(path);
    }
    let map = map_file(path)?;
    let format = sniff(&map).ok_or_else(|| {
        let head: Vec<String> = map.iter().take(8).map(|b| format!("{b:02x}")).collect();
        ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint(format!(
                "unrecognised format (first bytes {}); expected a torch zip, legacy torch, \
                 pickle or safetensors file",
                head.join(" ")
            )),
        )
    })?;
    match format {
        Format::TorchZip => torch_zip::read(path, map),
        Format::TorchLegacy | Format::Pickle => torch_legacy::read(path, map),
        Format::Safetensors => safetensors::read(path, map),
        _ => unreachable!("sniff returns only single-file formats"),
    }
}

/// Memory-maps a whole file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Arc<MappedFile>, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::new(path, e))?;
    let len = file.metadata().map_err(|e| ReadError::new(path, e))?.len();
    if len == 0 {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint("the file is empty".into()),
        ));
    }
    // SAFETY: the map is read-only; a file truncated by another process while mapped faults
    // (SIGBUS), which crate::signals turns into "file changed while reading", exit 2.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ReadError::new(path, e))?;
    crate::signals::watch_mapping(path, map.as_ptr(), map.len());
    // Opening reads a few bytes at many places (zip local headers, the pickle): random access
    // keeps the kernel from faulting in whole read-ahead windows of tensor data around each one.
    // Streaming writers read with positioned reads, not through the map.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    Ok(Arc::new(MappedFile::new(map, file)))
}

/// Identifies the format from the first bytes.
fn sniff(b: &[u8]) -> Option<Format> {
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
        return Some(Format::TorchZip);
    }
    if b.first() == Some(&0x80) && b.len() >= 2 && b[1] <= 5 {
        // Legacy torch files start with a pickled LONG1 magic number.
        return Some(if torch_legacy::has_magic(b) {
            Format::TorchLegacy
        } else {
            Format::Pickle
        });
    }
    if b.len() >= 10 {
        let n = u64::from_le_bytes(b[..8].try_into().ok()?);
        if n >= 2 && b[8] == b'{' {
            return Some(Format::Safetensors);
        }
    }
    if matches!(b.first(), Some(b'(' | b'}' | b']' | b'c')) {
        // Protocol 0/1 pickles have no PROTO opcode.
        return Some(Format::Pickle);
    }
    None
}

/// A fresh graph and the info every reader fills in.
pub(crate) fn new_parts(format: Format, file_size: u64) -> (Graph, FormatInfo) {
    (
        Graph::new(),
        FormatInfo {
            format,
            file_size,
            ..FormatInfo::default()
        },
    )
}
