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
    let (file, len) = open_regular(path)?;
    if len == 0 {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint("the file is empty".into()),
        ));
    }
    // SAFETY: the map is read-only; a file truncated by another process while mapped would fault,
    // which is the accepted trade-off of every memory-mapped reader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ReadError::new(path, e))?;
    // Opening reads a few bytes at many places (zip local headers, the pickle): random access
    // keeps the kernel from faulting in whole read-ahead windows of tensor data around each one.
    // Streaming writers read with positioned reads, not through the map.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    Ok(Arc::new(MappedFile::new(map, file)))
}

/// Opens a regular file for reading and returns it with its size. A FIFO, device or socket is
/// refused without blocking: the open does not wait for a writer, and the type is checked on the
/// opened handle, so the file cannot be swapped between the check and the read.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), ReadError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| ReadError::new(path, e))?;
    let meta = file.metadata().map_err(|e| ReadError::new(path, e))?;
    if !meta.is_file() {
        return Err(ReadError::new(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a pipe, device or socket is not read)",
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let (file, len) = open_regular(path)?;
    if len > max {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(format!("a file of {len} bytes (at most {max} are read)")),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // A file that grows while read is still cut at the limit.
    file.take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::new(path, e))?;
    Ok(bytes)
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
