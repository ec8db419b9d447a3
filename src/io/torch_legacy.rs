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

use super::pickle::{self, Limits, NoPersistentLoad, PersistentLoad};
use super::torch_zip::{protocol_of, storage_dtype};
use super::{ReadError, ReadErrorKind, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, DType, Tensor};

/// `pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)` without the trailing STOP.
const MAGIC_PICKLE: &[u8] = &[
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];
const MAGIC_DECIMAL: &str = "119547037146038801333356";
const PROTOCOL_VERSION: i64 = 1001;

/// Whether the bytes start with the legacy magic number pickle (any protocol ≥ 2).
pub fn has_magic(b: &[u8]) -> bool {
    b.len() > MAGIC_PICKLE.len() && b[0] == 0x80 && b[2..MAGIC_PICKLE.len()] == MAGIC_PICKLE[2..]
}

/// Reads a legacy torch file, or a plain pickle when the magic number is absent.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
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
    let mut scratch = Graph::new();
    let next = |name: &str, graph: &mut Graph, loader: &mut dyn PersistentLoad, pos: &mut usize| {
        let (v, used) =
            pickle::unpickle(&map[*pos..], graph, loader, &limits).map_err(|mut e| {
                e.offset += *pos;
                pickle_err(name, e)
            })?;
        *pos += used;
        Ok::<Value, ReadError>(v)
    };

    if !has_magic(&map) {
        let (mut graph, mut info) = new_parts(Format::Pickle, map.len() as u64);
        info.pickle_protocol = protocol_of(&map);
        let root = next("pickle", &mut graph, &mut NoPersistentLoad, &mut pos)?;
        return Ok(Checkpoint {
            path: path.to_path_buf(),
            info,
            graph,
            root,
        });
    }

    let (mut graph, mut info) = new_parts(Format::TorchLegacy, map.len() as u64);
    let magic = next(
        "magic number",
        &mut scratch,
        &mut NoPersistentLoad,
        &mut pos,
    )?;
    if magic != Value::BigInt(MAGIC_DECIMAL.into()) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint("bad magic number".into()),
        ));
    }
    let version = next(
        "protocol version",
        &mut scratch,
        &mut NoPersistentLoad,
        &mut pos,
    )?;
    if version.as_int() != Some(PROTOCOL_VERSION) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported(format!("legacy protocol version {version:?}")),
        ));
    }
    info.serialization_version = Some(PROTOCOL_VERSION.to_string());
    let sys_info = next("sys_info", &mut scratch, &mut NoPersistentLoad, &mut pos)?;
    if scratch.dict_get(&sys_info, "little_endian") == Some(&Value::Bool(false)) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported("storages written on a big-endian machine".into()),
        ));
    }
    info.byteorder = Some("little".into());
    info.pickle_protocol = protocol_of(&map[pos..]);

    graph.defer_view_checks = true;
    let mut storages = LegacyStorages::default();
    let root = next("main pickle", &mut graph, &mut storages, &mut pos)?;
    graph.defer_view_checks = false;
    let keys_value = next(
        "storage key list",
        &mut scratch,
        &mut NoPersistentLoad,
        &mut pos,
    )?;
    let keys: Vec<String> = scratch
        .seq(&keys_value)
        .ok_or_else(|| storage_err(path, "the storage key list is not a list".into()))?
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

    for node in graph.nodes_mut() {
        if let Node::Storage(t) | Node::Tensor(t) = node {
            let buffer = located.get(&*t.storage_key).ok_or_else(|| {
                storage_err(
                    path,
                    format!("storage '{}' has no bytes in the file", t.storage_key),
                )
            })?;
            t.storage = buffer.clone();
            if let Node::Storage(t) = node {
                t.shape = vec![t.storage.len() / t.dtype.size()];
            }
        }
    }
    for node in graph.nodes_mut() {
        if let Node::Tensor(t) = node {
            t.check_view().map_err(|e| {
                storage_err(
                    path,
                    format!("tensor on storage '{}': {}", t.storage_key, e.0),
                )
            })?;
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

fn storage_err(path: &Path, m: String) -> ReadError {
    ReadError::new(path, ReadErrorKind::Storage(m))
}

/// Records each storage the main pickle references; bytes are attached after the key list.
#[derive(Default)]
struct LegacyStorages {
    dtypes: HashMap<String, DType>,
    nodes: HashMap<String, Value>,
}

impl PersistentLoad for LegacyStorages {
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, String> {
        let fields = graph
            .seq(pid)
            .ok_or("persistent id is not a tuple")?
            .to_vec();
        let [kind, ty, key, _loc, _numel, view] = fields.as_slice() else {
            return Err(format!(
                "persistent id with {} fields, expected 6",
                fields.len()
            ));
        };
        if kind.as_str() != Some("storage") {
            return Err(format!(
                "persistent id of kind {kind:?}, expected 'storage'"
            ));
        }
        if *view != Value::None {
            return Err("storage views (torch < 0.4) are not supported".into());
        }
        let key = key
            .as_str()
            .ok_or("storage key is not a string")?
            .to_string();
        if let Some(v) = self.nodes.get(&key) {
            return Ok(v.clone());
        }
        let dtype = storage_dtype(graph, ty)?;
        let t = Tensor {
            dtype,
            shape: vec![0],
            strides: vec![1],
            offset: 0,
            storage: Buffer::Owned(Arc::from(&[][..])),
            storage_key: key.as_str().into(),
            is_parameter: false,
        };
        let v = graph.add(Node::Storage(Box::new(t)));
        self.dtypes.insert(key.clone(), dtype);
        self.nodes.insert(key, v.clone());
        Ok(v)
    }
}
