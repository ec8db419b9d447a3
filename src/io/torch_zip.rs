//! The torch zip container (`torch.save` since 1.6): `<record>/data.pkl`, `<record>/data/<key>`
//! per storage, `<record>/version`, `<record>/byteorder`.
//!
//! torch writes storages uncompressed and 64-byte aligned, so they are read in place from the
//! memory map. A file someone re-zipped with compression is still read, by decompressing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::tensor::MappedFile;
use zip::CompressionMethod;

use super::pickle::PersistentIdError;
use super::pickle::{self, Limits, PersistentLoad};
use super::zipdir::{self, UNREADABLE_FLAGS, ZipDir, ZipDirError, ZipEntry};
use super::{EntryError, ReadError, ReadErrorKind, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, DType, Deflated, InflateBudget, Tensor};

/// One file of the archive, as its directory and local header describe it.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) method: CompressionMethod,
    pub(super) data_start: usize,
    pub(super) compressed_size: usize,
    pub(super) size: usize,
}

/// Reads a zip that starts with a local header (torch's own test for its zip format): a torch
/// archive, or any other zip whose pickle members are judged (see [`super::loose`]).
///
/// An archive refused as ambiguous or unsupported still has its pickles judged (as miniz reads
/// them, every member that looks like a pickle): the error then carries the globals they name,
/// so a hostile archive is reported as such and not only as broken.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let dir = match ZipDir::parse(&map) {
        Ok(dir) => dir,
        Err(e) => {
            let entries = zipdir::miniz_entries(&map);
            return Err(judged_anyway(dir_error(path, e), &map, &entries));
        }
    };
    let result = match torch_record(path, &dir) {
        Ok(None) => return super::loose::read_zip(path, map, &dir),
        Ok(Some(record)) => read_record(path, &map, &dir, record),
        Err(e) => Err(e),
    };
    result.map_err(|e| judged_anyway(e, &map, &dir.entries))
}

/// Adds to an ambiguity or unsupported-feature error the globals that the archive's pickles name.
fn judged_anyway(e: ReadError, map: &Arc<MappedFile>, entries: &[ZipEntry]) -> ReadError {
    if !matches!(
        e.kind,
        ReadErrorKind::Ambiguous(_) | ReadErrorKind::Unsupported(_)
    ) || !e.named.records().is_empty()
    {
        return e;
    }
    let mut graph = Graph::new();
    super::loose::judge_members(map, entries, &mut graph);
    e.naming(&graph)
}

/// Reads the torch archive whose record folder is `record`.
fn read_record(
    path: &Path,
    map: &Arc<MappedFile>,
    dir: &ZipDir,
    record: String,
) -> Result<Checkpoint, ReadError> {
    let zip_err = |m: String| ReadError::new(path, ReadErrorKind::Zip(m));
    if let Some(e) = dir.entries.iter().find(|e| e.flags & UNREADABLE_FLAGS != 0) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(format!(
                "{}: an encrypted or patch-compressed entry (torch's reader refuses to extract \
                 it, other readers may ignore the flag)",
                e.display()
            )),
        ));
    }
    let entries = entry_index(dir);
    let (mut graph, mut info) = new_parts(Format::TorchZip, map.len() as u64);
    info.record = Some(record.clone());
    info.torchscript = dir
        .entries
        .iter()
        .any(|e| e.name.starts_with(format!("{record}code/").as_bytes()));
    let small = |name: &str| -> Result<Option<String>, ReadError> {
        match entries.get(&format!("{record}{name}").to_ascii_lowercase()) {
            None => Ok(None),
            Some(e) => {
                let b = entry_bytes(map, e, &format!("{record}{name}"), 4096)
                    .map_err(|k| ReadError::new(path, k))?;
                Ok(Some(
                    String::from_utf8_lossy(b.as_slice()).trim().to_string(),
                ))
            }
        }
    };
    // torch reads `.data/version` when there is one, `version` otherwise.
    info.serialization_version = match small(".data/version")? {
        Some(v) => Some(v),
        None => small("version")?,
    };
    info.byteorder = small("byteorder")?;
    if let Some(order) = &info.byteorder
        && order != "little"
    {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(format!("storages in {order}-endian byte order")),
        ));
    }

    let pkl_name = format!("{record}data.pkl");
    let pkl_entry = entries
        .get(&pkl_name.to_ascii_lowercase())
        .ok_or_else(|| zip_err(format!("{pkl_name}: not found")))?;
    let pkl =
        entry_bytes(map, pkl_entry, &pkl_name, usize::MAX).map_err(|k| ReadError::new(path, k))?;
    info.pickle_protocol = protocol_of(pkl.as_slice());

    let mut loader = ZipStorages {
        map,
        entries: &entries,
        record: &record,
        cache: HashMap::new(),
        compressed: 0,
        budget: InflateBudget::for_file(path, map.len()),
    };
    let result = pickle::unpickle(
        pkl.as_slice(),
        &mut graph,
        &mut loader,
        &Limits::for_file(map.len() as u64),
    );
    let (root, used) = result.map_err(|source| {
        ReadError::new(
            path,
            ReadErrorKind::Pickle {
                entry: pkl_name.clone(),
                source: super::with_names(source, &graph),
            },
        )
        .naming(&graph)
    })?;
    if used != pkl.as_slice().len() {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Ambiguous(format!(
                "{pkl_name}: {} bytes after the pickle's STOP at offset {used} (torch ignores \
                 them; a reader that reads on would see more)",
                pkl.as_slice().len() - used
            )),
        ));
    }
    info.compressed_storages = loader.compressed;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// The record folder torch reads (`archive/`), or `None` when the zip is not a torch archive to
/// torch either (its first entry is in no folder, or there is no `<folder>/data.pkl`).
///
/// torch takes the folder from the first directory entry, refuses archives with entries outside
/// it (torch 2.x; older versions read them) and hands archives with `constants.pkl` to
/// `torch.jit.load`.
fn torch_record(path: &Path, dir: &ZipDir) -> Result<Option<String>, ReadError> {
    let Some(first) = dir.entries.first() else {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint("a zip archive without any entries".into()),
        ));
    };
    let Some(slash) = first.name.iter().position(|&b| b == b'/') else {
        return Ok(None);
    };
    let Ok(folder) = std::str::from_utf8(&first.name[..=slash]) else {
        return Ok(None);
    };
    let record = folder.to_string();
    if dir.find(&format!("{record}data.pkl")).is_none() {
        return Ok(None);
    }
    if let Some(out) = dir
        .entries
        .iter()
        .find(|e| !e.name.starts_with(record.as_bytes()))
    {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Ambiguous(format!(
                "{} lies outside the archive folder {record} (torch 2.x refuses such archives, \
                 older torch reads {record}data.pkl)",
                out.display()
            )),
        ));
    }
    // A second `data.pkl` deeper in the folder (`base/good/data.pkl` beside `base/DATA.PKL`) is
    // what a reader that looks for any `*/data.pkl` would load instead of torch's record.
    let main = format!("{record}data.pkl").to_ascii_lowercase();
    if let Some(other) = dir.entries.iter().find(|e| {
        let lower = e.name.to_ascii_lowercase();
        lower != main.as_bytes() && lower.ends_with(b"/data.pkl")
    }) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Ambiguous(format!(
                "{} is a second data.pkl beside torch's {record}data.pkl: readers that look for \
                 any */data.pkl would load another pickle than torch",
                other.display()
            )),
        ));
    }
    if dir
        .entries
        .iter()
        .any(|e| e.name == format!("{record}constants.pkl").as_bytes())
    {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(
                "TorchScript archive: torch.load would run its code with torch.jit.load".into(),
            ),
        ));
    }
    Ok(Some(record))
}

/// The entries torch can look up, keyed by their ASCII-lowercased name (names that are not
/// UTF-8 cannot be asked for by a Python string and are left out).
fn entry_index(dir: &ZipDir) -> HashMap<String, Entry> {
    dir.entries
        .iter()
        .filter_map(|e| {
            let name = std::str::from_utf8(&e.name).ok()?;
            Some((name.to_ascii_lowercase(), Entry::from(e)))
        })
        .collect()
}

impl From<&ZipEntry> for Entry {
    fn from(e: &ZipEntry) -> Entry {
        Entry {
            method: if e.method == 0 {
                CompressionMethod::Stored
            } else {
                CompressionMethod::Deflated
            },
            // The directory checked both against the file's length, which fits in memory.
            data_start: e.data_start as usize,
            compressed_size: e.compressed_size as usize,
            size: usize::try_from(e.size).unwrap_or(usize::MAX),
        }
    }
}

/// The reader error for a directory that cannot be read as torch reads it.
pub(super) fn dir_error(path: &Path, e: ZipDirError) -> ReadError {
    let kind = match e {
        ZipDirError::Ambiguous(m) => ReadErrorKind::Ambiguous(format!("zip archive: {m}")),
        ZipDirError::Broken(m) => ReadErrorKind::Zip(m),
        ZipDirError::Unsupported(m) => ReadErrorKind::Unsupported(m),
    };
    ReadError::new(path, kind)
}

/// The pickle protocol a PROTO opcode at the start declares.
pub(super) fn protocol_of(pkl: &[u8]) -> Option<u8> {
    match pkl {
        [0x80, p, ..] => Some(*p),
        _ => Some(0).filter(|_| !pkl.is_empty()),
    }
}

/// An entry's bytes: borrowed from the map when stored, decompressed (at most `limit` bytes,
/// exactly the declared size, within an [`InflateBudget`] for the file) otherwise.
pub(super) fn entry_bytes(
    map: &Arc<MappedFile>,
    e: &Entry,
    name: &str,
    limit: usize,
) -> Result<EntryBytes, ReadErrorKind> {
    let entry = || name.to_string();
    if e.method == CompressionMethod::Deflated && e.size > limit {
        return Err(ReadErrorKind::Entry {
            entry: entry(),
            source: EntryError::OverLimit {
                size: e.size,
                limit,
            },
        });
    }
    // The error names the entry, the caller the file.
    let b = entry_buffer(map, e, "", &InflateBudget::for_records(map.len())).map_err(|source| {
        ReadErrorKind::Entry {
            entry: entry(),
            source,
        }
    })?;
    b.bytes().map_err(|source| ReadErrorKind::EntryRead {
        entry: entry(),
        source,
    })?;
    Ok(EntryBytes(b))
}

/// A buffer whose bytes are known to be readable (decompressed already, when deflated).
pub(super) struct EntryBytes(Buffer);

impl EntryBytes {
    pub(super) fn as_slice(&self) -> &[u8] {
        // `entry_bytes` read the bytes before wrapping them; a decompressed entry keeps them.
        self.0
            .bytes()
            .expect("entry_bytes checked that the bytes are readable")
    }
}

/// An entry as a buffer: a range of the map when stored; when deflated, a buffer that
/// decompresses on first use, under `budget`.
fn entry_buffer(
    map: &Arc<MappedFile>,
    e: &Entry,
    name: &str,
    budget: &Arc<InflateBudget>,
) -> Result<Buffer, EntryError> {
    let raw = e.data_start..e.data_start + e.compressed_size;
    match e.method {
        CompressionMethod::Stored => {
            if e.size != e.compressed_size {
                return Err(EntryError::StoredSize {
                    size: e.size,
                    held: e.compressed_size,
                });
            }
            Ok(Buffer::Mapped {
                map: map.clone(),
                range: raw,
            })
        }
        CompressionMethod::Deflated => {
            // Deflate cannot expand more than about 1032:1, nor grow data by more than its
            // stored blocks' 5 bytes in 65,535: sizes outside those bounds are lies, caught
            // here without decompressing anything.
            if e.size / 1032 > e.compressed_size {
                return Err(EntryError::Expands {
                    size: e.size,
                    compressed: e.compressed_size,
                });
            }
            if e.compressed_size > e.size + e.size / 64 + 128 {
                return Err(EntryError::Shrinks {
                    size: e.size,
                    compressed: e.compressed_size,
                });
            }
            Ok(Buffer::Deflated(Arc::new(Deflated::new(
                map.clone(),
                raw,
                e.size,
                name.to_string(),
                budget.clone(),
            ))))
        }
        other => Err(EntryError::Method(format!("{other:?}"))),
    }
}

/// Resolves `('storage', StorageType, key, location, numel)` to the `data/<key>` entry.
struct ZipStorages<'a> {
    map: &'a Arc<MappedFile>,
    entries: &'a HashMap<String, Entry>,
    record: &'a str,
    cache: HashMap<String, Value>,
    compressed: usize,
    /// Shared by every storage of the file.
    budget: Arc<InflateBudget>,
}

impl PersistentLoad for ZipStorages<'_> {
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, PersistentIdError> {
        let fields = graph.seq(pid).ok_or(PersistentIdError::NotTuple)?.to_vec();
        let (kind, ty, key, numel) = match fields.as_slice() {
            [k, t, key, _loc, n, ..] => (k, t, key, n),
            _ => {
                return Err(PersistentIdError::Fields {
                    got: fields.len(),
                    expected: None,
                });
            }
        };
        let key = storage_key(kind, key)?;
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        let dtype = storage_dtype(graph, ty)?;
        let numel = numel
            .as_int()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(PersistentIdError::BadSize)?;
        let name = format!("{}data/{key}", self.record);
        let Some(entry) = self.entries.get(&name.to_ascii_lowercase()) else {
            return Err(PersistentIdError::Missing { key, entry: name });
        };
        let Some(need) = numel.checked_mul(dtype.size()) else {
            return Err(PersistentIdError::Overflow(key));
        };
        if entry.size < need {
            return Err(PersistentIdError::TooSmall {
                key,
                need,
                numel,
                dtype,
                entry: name,
                size: entry.size,
            });
        }
        let buffer = entry_buffer(self.map, entry, &name, &self.budget).map_err(|source| {
            PersistentIdError::Entry {
                entry: name.clone(),
                source,
            }
        })?;
        if !buffer.is_mapped() {
            self.compressed += 1;
        }
        let key: Arc<str> = key.into();
        let t = Tensor::new_view(dtype, vec![numel], vec![1], 0, buffer, key.clone())?;
        let v = graph.add(Node::Storage(Box::new(t)));
        self.cache.insert(key.to_string(), v.clone());
        Ok(v)
    }
}

/// The key of a `('storage', type, key, …)` persistent id: its first field must be the tag
/// `'storage'` (checked first, as torch's `persistent_load` does) and its key a string.
pub(super) fn storage_key(kind: &Value, key: &Value) -> Result<String, PersistentIdError> {
    if kind.as_str() != Some("storage") {
        return Err(PersistentIdError::Kind(format!("{kind:?}")));
    }
    key.as_str()
        .map(str::to_string)
        .ok_or(PersistentIdError::KeyNotString)
}

/// The dtype of a storage-type global (`torch.FloatStorage`, `torch.UntypedStorage`, …).
pub(super) fn storage_dtype(graph: &Graph, ty: &Value) -> Result<DType, PersistentIdError> {
    match graph.get(ty) {
        Some(Node::Global(g)) => DType::from_torch_name(&g.name)
            .ok_or_else(|| PersistentIdError::StorageType(g.dotted())),
        _ => Err(PersistentIdError::TypeNotGlobal),
    }
}
