//! The legacy torch format (torch < 1.6, or `_use_new_zipfile_serialization=False`), and plain
//! pickles.
//!
//! A legacy file is a sequence of pickles — magic number, protocol version, sys_info, the main
//! object, the sorted list of storage keys — followed by each storage's raw bytes in key order,
//! each preceded by its element count as a little-endian i64.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::tensor::MappedFile;

use super::pickle::{self, Limits, NoPersistentLoad, PersistentIdError, PersistentLoad};
use super::torch_zip::{protocol_of, storage_dtype, storage_key};
use super::{ReadError, ReadErrorKind, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, DType, Tensor};

/// `0x1950A86A20F9469CFC6C`, the legacy magic number, in decimal.
const MAGIC_DECIMAL: &str = "119547037146038801333356";
const PROTOCOL_VERSION: i64 = 1001;

/// Reads a file that is neither a zip nor a tar the way torch's `_legacy_load` does: the first
/// pickle is always unpickled (whatever it holds); when it is the legacy magic number, the
/// protocol version, sys_info, main object and storage-key pickles follow, then the storages.
/// Otherwise the file is a plain pickle and the first pickle is the checkpoint.
///
/// Every pickle goes into the checkpoint's graph, so every global any of them names is judged.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let mut graph = Graph::new();
    read_into(path, map, &mut graph).map_err(|e| super::tar::named_anyway(e, &graph))
}

fn read_into(
    path: &Path,
    map: Arc<MappedFile>,
    graph: &mut Graph,
) -> Result<Checkpoint, ReadError> {
    let pickle_err = |entry: &str, source| {
        ReadError::new(
            path,
            ReadErrorKind::Pickle {
                entry: entry.to_string(),
                source,
            },
        )
    };
    let limits = Limits::for_file(map.len() as u64);
    let mut pos = 0usize;
    let next = |name: &str, graph: &mut Graph, loader: &mut dyn PersistentLoad, pos: &mut usize| {
        let (v, used) =
            pickle::unpickle(&map[*pos..], graph, loader, &limits).map_err(|mut e| {
                e.offset += *pos;
                pickle_err(name, super::with_names(e, graph)).naming(graph)
            })?;
        *pos += used;
        Ok::<Value, ReadError>(v)
    };

    // torch.load unpickles this first pickle before it looks at anything.
    let first = next("pickle", graph, &mut NoPersistentLoad, &mut pos)
        .map_err(|e| not_a_pickle(path, &map, e))?;
    if first != Value::BigInt(MAGIC_DECIMAL.into()) {
        return read_plain(path, &map, std::mem::take(graph), first, pos, &limits);
    }
    let (_, mut info) = new_parts(Format::TorchLegacy, map.len() as u64);
    let version = next("protocol version", graph, &mut NoPersistentLoad, &mut pos)?;
    if version.as_int() != Some(PROTOCOL_VERSION) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(format!("legacy protocol version {version:?}")),
        ));
    }
    info.serialization_version = Some(PROTOCOL_VERSION.to_string());
    let sys_info = next("sys_info", graph, &mut NoPersistentLoad, &mut pos)?;
    if graph.dict_get(&sys_info, "little_endian") == Some(&Value::Bool(false)) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported("storages written on a big-endian machine".into()),
        ));
    }
    info.byteorder = Some("little".into());
    info.pickle_protocol = protocol_of(&map[pos..]);

    graph.defer_view_checks = true;
    let mut storages = LegacyStorages::default();
    let root = next("main pickle", graph, &mut storages, &mut pos)?;
    graph.defer_view_checks = false;
    let keys_value = next("storage key list", graph, &mut NoPersistentLoad, &mut pos)?;
    let keys: Vec<String> = graph
        .seq(&keys_value)
        .ok_or_else(|| {
            storage_err(
                path,
                format!(
                    "the storage key list is not a list{}",
                    super::names_suffix(graph)
                ),
            )
            .naming(graph)
        })?
        .iter()
        .map(|k| k.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| storage_err(path, "a storage key is not a string".into()))?;

    let mut located: HashMap<&str, Buffer> = HashMap::new();
    for key in &keys {
        let dtype = *storages.dtypes.get(key).ok_or_else(|| {
            storage_err(
                path,
                format!("storage '{key}' is listed but never referenced"),
            )
        })?;
        let head = map.get(pos..pos + 8).ok_or_else(|| {
            storage_err(
                path,
                format!("truncated at offset {pos}: storage '{key}' is missing"),
            )
        })?;
        let numel = i64::from_le_bytes(head.try_into().expect("8 bytes"));
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .filter(|&n| n <= map.len() - pos - 8)
            .ok_or_else(|| {
                storage_err(
                    path,
                    format!(
                        "storage '{key}' at offset {pos} claims {numel} {dtype} elements, more \
                         than the {} bytes left in the file",
                        map.len() - pos - 8
                    ),
                )
            })?;
        if let Some(&want) = storages.numels.get(key)
            && want != numel
        {
            return Err(storage_err(
                path,
                format!(
                    "storage '{key}' at offset {pos} holds {numel} {dtype} elements, but its \
                     persistent id says {want} (torch.load refuses a storage of the wrong size)"
                ),
            ));
        }
        let start = pos + 8;
        located.insert(
            key,
            Buffer::Mapped {
                map: map.clone(),
                range: start..start + len,
            },
        );
        pos = start + len;
    }

    if pos != map.len() {
        // Judge them as the pickles another reader could take them for.
        let start = pos;
        while let Ok((_, used)) =
            pickle::unpickle(&map[pos..], graph, &mut super::InertPersistentLoad, &limits)
        {
            pos += used;
        }
        return Err(ReadError::new(
            path,
            ReadErrorKind::Ambiguous(format!(
                "{} bytes after the last storage (offset {start}) that torch never reads; \
                 another reader could read them as more pickles",
                map.len() - start
            )),
        )
        .naming(graph));
    }
    for node in graph.nodes_mut() {
        let whole = matches!(node, Node::Storage(_));
        if let Node::Storage(t) | Node::Tensor(t) = node {
            let buffer = located.get(&**t.storage_key()).ok_or_else(|| {
                storage_err(
                    path,
                    format!("storage '{}' has no bytes in the file", t.storage_key()),
                )
            })?;
            t.attach_storage(buffer.clone(), whole).map_err(|e| {
                storage_err(
                    path,
                    format!("tensor on storage '{}': {e}", t.storage_key()),
                )
            })?;
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph: std::mem::take(graph),
        root,
    })
}

/// A plain pickle: torch.load unpickles it, then fails on the magic number. Pickles that follow
/// it are judged too (a reader that calls `pickle.load` again runs them), up to bytes that are
/// not a pickle: the globals such a broken tail names before it breaks stay in the graph (Python
/// would have imported them), the rest is read by no one.
fn read_plain(
    path: &Path,
    map: &[u8],
    mut graph: Graph,
    root: Value,
    mut pos: usize,
    limits: &Limits,
) -> Result<Checkpoint, ReadError> {
    let (_, mut info) = new_parts(Format::Pickle, map.len() as u64);
    info.pickle_protocol = protocol_of(map);
    while pos < map.len() {
        match pickle::unpickle(
            &map[pos..],
            &mut graph,
            &mut super::InertPersistentLoad,
            limits,
        ) {
            Ok((_, used)) => pos += used,
            Err(_) => break,
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// The first pickle of a file that is no zip, tar or safetensors file could not be read. When it
/// fails within its first bytes without naming anything, the file is simply not a pickle (nor
/// a checkpoint); a pickle that breaks later keeps its pickle error, with the globals it named.
fn not_a_pickle(path: &Path, map: &[u8], e: ReadError) -> ReadError {
    let ReadErrorKind::Pickle { source, .. } = &e.kind else {
        return e;
    };
    if source.offset >= 8 || !e.named.records().is_empty() {
        return e;
    }
    let head: Vec<String> = map.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let what = if map.starts_with(b"PK\x05\x06") {
        "an empty zip archive, without data.pkl (torch.load reads a zip only when it starts \
         with a local header)"
            .to_string()
    } else {
        format!(
            "unrecognised format (first bytes {}); expected a torch zip, legacy torch, pickle \
             or safetensors file",
            head.join(" ")
        )
    };
    ReadError::new(
        path,
        ReadErrorKind::NotACheckpoint(format!(
            "{what}; read as a pickle, as torch.load would: {source}"
        )),
    )
}

fn storage_err(path: &Path, m: String) -> ReadError {
    ReadError::new(path, ReadErrorKind::Storage(m))
}

/// Records each storage the main pickle references; bytes are attached after the key list.
#[derive(Default)]
struct LegacyStorages {
    dtypes: HashMap<String, DType>,
    /// The element count the first persistent id of each key gave: torch allocates the storage
    /// with it and refuses a stored size that differs ("storage has wrong byte size").
    numels: HashMap<String, i64>,
    nodes: HashMap<String, Value>,
}

impl PersistentLoad for LegacyStorages {
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, PersistentIdError> {
        let fields = graph.seq(pid).ok_or(PersistentIdError::NotTuple)?.to_vec();
        // `('module', class, source file, source)`: torch.save (non-zip) writes a module class
        // this way so that the loader can warn when its source changed; `_legacy_load` returns
        // the class itself (a global of the same pickle, judged like any other).
        if fields.first().and_then(Value::as_str) == Some("module") {
            return match fields.as_slice() {
                [_, class, _file, _source] => Ok(class.clone()),
                _ => Err(PersistentIdError::Fields {
                    got: fields.len(),
                    expected: Some(4),
                }),
            };
        }
        let [kind, ty, key, _loc, numel, view] = fields.as_slice() else {
            return Err(PersistentIdError::Fields {
                got: fields.len(),
                expected: Some(6),
            });
        };
        let key = storage_key(kind, key)?;
        if *view != Value::None {
            return Err(PersistentIdError::StorageView);
        }
        if let Some(v) = self.nodes.get(&key) {
            return Ok(v.clone());
        }
        let dtype = storage_dtype(graph, ty)?;
        let numel = match numel {
            Value::Int(n) if *n >= 0 => *n,
            _ => return Err(PersistentIdError::BadSize),
        };
        self.numels.insert(key.clone(), numel);
        let t = Tensor::pending(
            dtype,
            vec![0],
            vec![1],
            0,
            Buffer::Owned(Arc::from(&[][..])),
            key.as_str().into(),
        );
        let v = graph.add(Node::Storage(Box::new(t)));
        self.dtypes.insert(key.clone(), dtype);
        self.nodes.insert(key, v.clone());
        Ok(v)
    }
}
