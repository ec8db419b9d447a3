//! Readers: bytes on disk to a [`Checkpoint`].
//!
//! Every reader memory-maps its input and hands tensors out as views into the map; only
//! compressed entries are ever copied (decompressed).

pub mod error;
mod loose;
pub mod pickle;
mod safetensors;
mod sevenz;
mod tar;
mod torch_legacy;
mod torch_zip;
mod zipdir;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::tensor::MappedFile;

use crate::checkpoint::value::{Graph, Value};
use crate::checkpoint::{Checkpoint, Format, FormatInfo};
pub use error::{EntryError, NpyHeaderError, ReadError, ReadErrorKind, TarError};

/// Opens a checkpoint of any supported format: torch zip (`.pt .pth .ckpt .bin .pth.tar`), legacy
/// torch (pickle sequence or tar), plain pickle, safetensors, or a sharded safetensors set (its
/// `*.index.json` or folder). Zips that are not torch archives and `.npy` files with an object
/// dtype are read for their pickles only, so that their globals can be judged.
///
/// The container is chosen the way `torch.load` chooses it (see `docs/security.md`): a zip only
/// when the first four bytes are a local-header signature, otherwise a tar when Python's
/// `tarfile` would open one, otherwise a sequence of pickles. Safetensors files are never
/// unpickled by torch and are read as such, unless they are also a pickle.
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
    if map.starts_with(b"PK\x03\x04") {
        return torch_zip::read(path, map);
    }
    if looks_like_safetensors(&map) {
        refuse_if_pickle(path, &map, "a safetensors file")?;
        return safetensors::read(path, map);
    }
    if tar::is_tar(&map) {
        if let Err(e) = refuse_if_pickle(path, &map, "a tar archive (which torch.load reads first)")
        {
            // Name what torch would run from the tar too, not only what the pickle names.
            let tar_named = match tar::read(path, map) {
                Ok(c) => Box::new(c.graph.uses().clone()),
                Err(t) => t.named,
            };
            let mut e = e;
            e.named.absorb(&tar_named);
            return Err(e);
        }
        return tar::read(path, map);
    }
    if sevenz::is_7z(&map) {
        return Err(sevenz::refuse(path, &map));
    }
    if loose::is_npy(&map) {
        return loose::read_npy(path, map);
    }
    torch_legacy::read(path, map)
}

/// A safetensors header: a little-endian length, then a JSON object.
/// The CRC-32 of every stored entry of the zip archive `file`, keyed by where its data starts:
/// `data_start → (size, crc32)`, as its central directory records them; empty when `file` is not
/// an archive this crate reads. A writer that copies an entry's bytes unchanged reuses its CRC
/// instead of reading the bytes to compute it again.
pub fn stored_crcs(file: &[u8]) -> std::collections::HashMap<u64, (u64, u32)> {
    zipdir::ZipDir::parse(file)
        .map(|d| {
            d.entries
                .iter()
                .filter(|e| e.method == 0)
                .map(|e| (e.data_start, (e.size, e.crc32)))
                .collect()
        })
        .unwrap_or_default()
}

fn looks_like_safetensors(b: &[u8]) -> bool {
    b.len() >= 10
        && b[8] == b'{'
        && u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) >= 2
}

/// Refuses a file that is `what` and, read from byte 0, also a complete pickle: one reader would
/// judge the pickle, another load the other format.
fn refuse_if_pickle(path: &Path, b: &[u8], what: &str) -> Result<(), ReadError> {
    let mut scratch = Graph::new();
    let limits = pickle::Limits::for_file(b.len() as u64);
    if let Ok((_, end)) = pickle::unpickle(b, &mut scratch, &mut InertPersistentLoad, &limits) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Ambiguous(format!(
                "the file is both {what} and a pickle (bytes 0..{end}{}): readers disagree on \
                 which one it is",
                names_suffix(&scratch)
            )),
        )
        .naming(&scratch));
    }
    Ok(())
}

/// Accepts every persistent id as `None`: for pickles that are only judged, never used.
pub(crate) struct InertPersistentLoad;

impl pickle::PersistentLoad for InertPersistentLoad {
    fn load(
        &mut self,
        _graph: &mut Graph,
        _pid: &Value,
    ) -> Result<Value, pickle::PersistentIdError> {
        Ok(Value::None)
    }
}

/// `"; before that it names a.b, c.d"` for the globals recorded so far: Python imports (and
/// may call) each before it reaches a later error, so a failed read still names them.
pub(crate) fn names_suffix(graph: &Graph) -> String {
    let names = global_names(graph);
    if names.is_empty() {
        String::new()
    } else {
        format!("; it names {}", names.join(", "))
    }
}

/// The globals `graph` records, as the pickle writes them (escaped and cut for one-line
/// messages: the first 20, then a count).
fn global_names(graph: &Graph) -> Vec<String> {
    const SHOWN: usize = 20;
    let all = graph.globals();
    let mut names: Vec<String> = all
        .iter()
        .take(SHOWN)
        .map(|r| crate::checkpoint::judge::display_name(&r.written.module, &r.written.name))
        .collect();
    if all.len() > SHOWN {
        names.push(format!("and {} more", all.len() - SHOWN));
    }
    names
}

/// Adds to a pickle error the globals the file named before the failure (see `names_suffix`).
pub(crate) fn with_names(mut e: pickle::PickleError, graph: &Graph) -> Box<pickle::PickleError> {
    e.named = global_names(graph);
    Box::new(e)
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
    // SAFETY: the map is read-only; a file truncated by another process while mapped faults
    // (SIGBUS), which crate::signals turns into "file changed while reading", exit 2.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ReadError::new(path, e))?;
    // Opening reads a few bytes at many places (zip local headers, the pickle): random access
    // keeps the kernel from faulting in whole read-ahead windows of tensor data around each one.
    // Streaming writers read with positioned reads, not through the map.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    Ok(Arc::new(MappedFile::watched(map, file, path)))
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
