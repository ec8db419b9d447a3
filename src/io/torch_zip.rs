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

use super::pickle::{self, Limits, PersistentLoad};
use super::{ReadError, ReadErrorKind, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, DType, Deflated, InflateBudget, Tensor};

/// One file of the archive, as its directory and local header describe it.
#[derive(Clone, Debug)]
struct Entry {
    method: CompressionMethod,
    data_start: usize,
    compressed_size: usize,
    size: usize,
}

/// Reads a torch zip checkpoint.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let zip_err = |m: String| ReadError::new(path, ReadErrorKind::Zip(m));
    let entries = directory(path, &map).map_err(zip_err)?;

    let mut records: Vec<&str> = entries
        .keys()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .filter(|p| p.is_empty() || p.ends_with('/'))
        .collect();
    records.sort();
    let record = match records.as_slice() {
        [] => {
            return Err(ReadError::new(
                path,
                ReadErrorKind::NotACheckpoint(
                    "a zip archive without a data.pkl (not saved by torch.save)".into(),
                ),
            ));
        }
        [one] => one.to_string(),
        many => {
            return Err(zip_err(format!(
                "several data.pkl records ({}); torch.save writes one",
                many.join(", ")
            )));
        }
    };

    let (mut graph, mut info) = new_parts(Format::TorchZip, map.len() as u64);
    info.record = Some(record.clone());
    info.torchscript = entries
        .keys()
        .any(|n| n.starts_with(&format!("{record}code/")));
    let small = |name: &str| -> Result<Option<String>, ReadError> {
        match entries.get(&format!("{record}{name}")) {
            None => Ok(None),
            Some(e) => {
                let b = entry_bytes(&map, e, 4096)
                    .map_err(|m| zip_err(format!("{record}{name}: {m}")))?;
                Ok(Some(
                    String::from_utf8_lossy(b.as_slice()).trim().to_string(),
                ))
            }
        }
    };
    info.serialization_version = small("version")?;
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
    let pkl = entry_bytes(&map, &entries[&pkl_name], usize::MAX)
        .map_err(|m| zip_err(format!("{pkl_name}: {m}")))?;
    info.pickle_protocol = protocol_of(pkl.as_slice());

    let mut loader = ZipStorages {
        map: &map,
        entries: &entries,
        record: &record,
        cache: HashMap::new(),
        compressed: 0,
        budget: InflateBudget::for_file(path, map.len()),
    };
    let (root, _) = pickle::unpickle(
        pkl.as_slice(),
        &mut graph,
        &mut loader,
        &Limits::for_file(map.len() as u64),
    )
    .map_err(|source| {
        ReadError::new(
            path,
            ReadErrorKind::Pickle {
                entry: pkl_name.clone(),
                source,
            },
        )
    })?;
    info.compressed_storages = loader.compressed;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// The pickle protocol a PROTO opcode at the start declares.
pub(super) fn protocol_of(pkl: &[u8]) -> Option<u8> {
    match pkl {
        [0x80, p, ..] => Some(*p),
        _ => Some(0).filter(|_| !pkl.is_empty()),
    }
}

/// Lists the archive's files with the offset of their data, checked against the file's size.
///
/// The directory and local headers are read with small positioned reads, not through the map:
/// a local header sits in front of every storage, and touching each through the map would fault
/// tens of megabytes of tensor data into memory just to open the file.
fn directory(path: &Path, map: &[u8]) -> Result<HashMap<String, Entry>, String> {
    check_end_record(map)?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = std::io::BufReader::with_capacity(4096, file);
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| e.to_string())?;
    if archive.has_duplicate_names() {
        return Err("the archive lists the same file name twice".into());
    }
    let mut out = HashMap::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive
            .by_index_raw(i)
            .map_err(|e| format!("entry {i}: {e}"))?;
        let name = f.name().map_err(|e| format!("entry {i}: {e}"))?.to_string();
        let data_start = f
            .data_start()
            .ok_or_else(|| format!("{name}: no local header"))?;
        let compressed_size = f.compressed_size();
        let end = data_start.checked_add(compressed_size);
        if end.is_none_or(|e| e > map.len() as u64) {
            return Err(format!(
                "{name}: data at offset {data_start} of {compressed_size} bytes runs past the end of \
                 the file ({} bytes)",
                map.len()
            ));
        }
        if f.encrypted() {
            return Err(format!(
                "{name}: encrypted entries are not torch checkpoints"
            ));
        }
        out.insert(
            name,
            Entry {
                method: f.compression(),
                data_start: data_start as usize,
                compressed_size: compressed_size as usize,
                size: usize::try_from(f.size()).map_err(|_| "entry size overflows")?,
            },
        );
    }
    Ok(out)
}

/// The end-of-central-directory record must describe a directory that lies before it: zip
/// readers recover from a lying size by searching, which would hide a tampered archive.
fn check_end_record(map: &[u8]) -> Result<(), String> {
    let tail = map.len().saturating_sub(65_557);
    let Some(pos) = map[tail..]
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .map(|p| p + tail)
    else {
        return Err("no end-of-central-directory record (truncated?)".into());
    };
    let rec = map
        .get(pos..pos + 22)
        .ok_or("truncated end-of-central-directory record")?;
    let size = u32::from_le_bytes(rec[12..16].try_into().expect("4")) as u64;
    let offset = u32::from_le_bytes(rec[16..20].try_into().expect("4")) as u64;
    if size == u32::MAX as u64 || offset == u32::MAX as u64 {
        return Ok(()); // zip64: the zip64 record carries the real values
    }
    if offset + size > pos as u64 {
        return Err(format!(
            "the end record places a {size}-byte central directory at offset {offset}, past the record itself (offset {pos})"
        ));
    }
    Ok(())
}

/// An entry's bytes: borrowed from the map when stored, decompressed (at most `limit` bytes,
/// exactly the declared size, within an [`InflateBudget`] for the file) otherwise.
fn entry_bytes(map: &Arc<MappedFile>, e: &Entry, limit: usize) -> Result<EntryBytes, String> {
    if e.method == CompressionMethod::Deflated && e.size > limit {
        return Err(format!(
            "declares {} bytes, more than {limit} expected",
            e.size
        ));
    }
    // The caller names the file and the entry.
    let b = entry_buffer(map, e, "", &InflateBudget::for_records(map.len()))?;
    b.bytes().map_err(|err| err.to_string())?;
    Ok(EntryBytes(b))
}

/// A buffer whose bytes are known to be readable (decompressed already, when deflated).
struct EntryBytes(Buffer);

impl EntryBytes {
    fn as_slice(&self) -> &[u8] {
        // Cannot fail: `entry_bytes` read the bytes before wrapping them.
        self.0.bytes().unwrap_or_default()
    }
}

/// An entry as a buffer: a range of the map when stored; when deflated, a buffer that
/// decompresses on first use, under `budget`.
fn entry_buffer(
    map: &Arc<MappedFile>,
    e: &Entry,
    name: &str,
    budget: &Arc<InflateBudget>,
) -> Result<Buffer, String> {
    let raw = e.data_start..e.data_start + e.compressed_size;
    match e.method {
        CompressionMethod::Stored => {
            if e.size != e.compressed_size {
                return Err(format!(
                    "stored entry declares {} bytes but holds {}",
                    e.size, e.compressed_size
                ));
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
                return Err(format!(
                    "declares {} bytes, more than {} compressed bytes can expand to",
                    e.size, e.compressed_size
                ));
            }
            if e.compressed_size > e.size + e.size / 64 + 128 {
                return Err(format!(
                    "declares {} bytes but holds {} compressed bytes, more than deflate makes of so few",
                    e.size, e.compressed_size
                ));
            }
            Ok(Buffer::Deflated(Arc::new(Deflated::new(
                map.clone(),
                raw,
                e.size,
                name.to_string(),
                budget.clone(),
            ))))
        }
        other => Err(format!("compression method {other:?} is not used by torch")),
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
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, String> {
        let fields = graph
            .seq(pid)
            .ok_or("persistent id is not a tuple")?
            .to_vec();
        let (kind, ty, key, numel) = match fields.as_slice() {
            [k, t, key, _loc, n, ..] => (k, t, key, n),
            _ => return Err(format!("persistent id with {} fields", fields.len())),
        };
        if kind.as_str() != Some("storage") {
            return Err(format!(
                "persistent id of kind {kind:?}, expected 'storage'"
            ));
        }
        let key = key
            .as_str()
            .ok_or("storage key is not a string")?
            .to_string();
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        let dtype = storage_dtype(graph, ty)?;
        let numel = numel
            .as_int()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("storage size is negative or not an integer")?;
        let name = format!("{}data/{key}", self.record);
        let entry = self.entries.get(&name).ok_or_else(|| {
            format!("data.pkl references storage '{key}' but the archive has no {name}")
        })?;
        let need = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("storage '{key}' size overflows"))?;
        if entry.size < need {
            return Err(format!(
                "storage '{key}' needs {need} bytes ({numel} x {dtype}) but {name} holds {}",
                entry.size
            ));
        }
        let buffer = entry_buffer(self.map, entry, &name, &self.budget)
            .map_err(|m| format!("{name}: {m}"))?;
        if !buffer.is_mapped() {
            self.compressed += 1;
        }
        let key: Arc<str> = key.into();
        let t = Tensor::new_view(dtype, vec![numel], vec![1], 0, buffer, key.clone())
            .map_err(|e| e.0)?;
        let v = graph.add(Node::Storage(Box::new(t)));
        self.cache.insert(key.to_string(), v.clone());
        Ok(v)
    }
}

/// The dtype of a storage-type global (`torch.FloatStorage`, `torch.UntypedStorage`, …).
pub(super) fn storage_dtype(graph: &Graph, ty: &Value) -> Result<DType, String> {
    match graph.get(ty) {
        Some(Node::Global(g)) => DType::from_torch_name(&g.name)
            .ok_or_else(|| format!("unknown storage type {}", g.dotted())),
        _ => Err("storage type is not a global".into()),
    }
}
