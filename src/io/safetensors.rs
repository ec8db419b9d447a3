//! safetensors files and sharded sets (`model.safetensors.index.json` + shards).
//!
//! The header is parsed and validated by the `safetensors` crate; the tensors become views into
//! the memory map, under a root dict in data-offset order (the order the writer used).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tensor::MappedFile;

use super::{ReadError, ReadErrorKind, map_file, new_parts, read_regular};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, DType, Tensor};

fn st_err(path: &Path, m: impl Into<String>) -> ReadError {
    ReadError::new(path, ReadErrorKind::Safetensors(m.into()))
}

/// Reads one safetensors file.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let (mut graph, mut info) = new_parts(Format::Safetensors, map.len() as u64);
    let mut entries = Vec::new();
    info.metadata = add_tensors(path, &map, &mut graph, &mut entries, None)?;
    let root = graph.add(Node::Dict(entries));
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// Adds one file's tensors to `entries` (only the names in `wanted`, when given) and returns the
/// file's `__metadata__`.
fn add_tensors(
    path: &Path,
    map: &Arc<MappedFile>,
    graph: &mut Graph,
    entries: &mut Vec<(Value, Value)>,
    wanted: Option<&[&str]>,
) -> Result<BTreeMap<String, String>, ReadError> {
    let (n, meta) =
        safetensors::SafeTensors::read_metadata(map).map_err(|e| st_err(path, e.to_string()))?;
    let data_start = 8 + n;
    // The writer's order is the data-offset order; an index only says which file holds what.
    let mut names = meta.offset_keys();
    if let Some(w) = wanted {
        if let Some(missing) = w.iter().find(|n| meta.info(n).is_none()) {
            return Err(st_err(
                path,
                format!("the index places tensor '{missing}' in this file, which lacks it"),
            ));
        }
        let w: std::collections::HashSet<&str> = w.iter().copied().collect();
        names.retain(|n| w.contains(n.as_str()));
    }
    for name in names {
        let ti = meta.info(&name).expect("name comes from the header");
        let dtype = DType::from_safetensors(ti.dtype).ok_or_else(|| {
            st_err(
                path,
                format!("tensor '{name}' has unsupported dtype {:?}", ti.dtype),
            )
        })?;
        let (a, b) = ti.data_offsets;
        let buffer = Buffer::Mapped {
            map: map.clone(),
            range: data_start + a..data_start + b,
        };
        let strides = crate::tensor::contiguous_strides(&ti.shape);
        let t = Tensor::new_view(
            dtype,
            ti.shape.clone(),
            strides,
            0,
            buffer,
            name.as_str().into(),
        )
        .map_err(|e| st_err(path, format!("tensor '{name}': {}", e.0)))?;
        let v = graph.add(Node::Tensor(Box::new(t)));
        entries.push((Value::Str(name.into()), v));
    }
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// Opens the sharded set whose index lies in `dir`, or the folder's single safetensors file.
pub fn open_sharded_dir(dir: &Path) -> Result<Checkpoint, ReadError> {
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| ReadError::new(dir, e))? {
        let p = e.map_err(|e| ReadError::new(dir, e))?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(p);
        } else if name.ends_with(".safetensors") {
            files.push(p);
        }
    }
    indexes.sort();
    match (indexes.as_slice(), files.as_slice()) {
        ([one], _) => open_sharded(one),
        ([], [one]) => read(one, map_file(one)?),
        ([], _) => Err(ReadError::new(
            dir,
            ReadErrorKind::NotACheckpoint(
                "a folder without a *.safetensors.index.json (name the file to open)".into(),
            ),
        )),
        (many, _) => Err(ReadError::new(
            dir,
            ReadErrorKind::NotACheckpoint(format!(
                "a folder with {} shard indexes; name the one to open",
                many.len()
            )),
        )),
    }
}

/// Opens a sharded set through its `*.index.json`.
pub fn open_sharded(index: &Path) -> Result<Checkpoint, ReadError> {
    let text = read_regular(index, 64 << 20)?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| st_err(index, format!("index is not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| st_err(index, "index has no weight_map object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    // Shard name -> tensor names, in index order within each shard.
    let mut by_shard: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            st_err(
                index,
                format!("weight_map entry '{name}' is not a file name"),
            )
        })?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." || shard.is_empty() {
            return Err(st_err(
                index,
                format!("weight_map entry '{name}' points outside the index's folder: '{shard}'"),
            ));
        }
        by_shard.entry(shard.to_string()).or_default().push(name);
    }
    let (mut graph, mut info) = new_parts(Format::SafetensorsSharded, 0);
    let mut entries = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (shard, names) in &by_shard {
        let path = dir.join(shard);
        check_inside(index, dir, &path)?;
        let mmap = map_file(&path)?;
        info.file_size += mmap.len() as u64;
        let before = entries.len();
        let meta = add_tensors(&path, &mmap, &mut graph, &mut entries, Some(names))?;
        for (k, _) in &entries[before..] {
            let k = k.as_str().unwrap_or_default().to_string();
            if let Some(other) = seen.insert(k.clone(), path.clone()) {
                return Err(st_err(
                    index,
                    format!(
                        "tensor '{k}' appears in both {} and {shard}",
                        other.display()
                    ),
                ));
            }
        }
        if info.metadata.is_empty() {
            info.metadata = meta;
        }
        info.shards.push(shard.clone());
    }
    let root = graph.add(Node::Dict(entries));
    Ok(Checkpoint {
        path: index.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// A shard must resolve (symbolic links followed) to a file in the index's folder, or in the
/// folder the index itself resolves to: a link named like a shard must not make the set read a
/// file elsewhere. The second folder is the Hugging Face cache's layout, where the index and
/// every shard in `snapshots/<rev>/` link to `blobs/`.
fn check_inside(index: &Path, dir: &Path, shard: &Path) -> Result<(), ReadError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let base = std::fs::canonicalize(dir).map_err(|e| ReadError::new(dir, e))?;
    let index_real = std::fs::canonicalize(index).map_err(|e| ReadError::new(index, e))?;
    let real = std::fs::canonicalize(shard).map_err(|e| ReadError::new(shard, e))?;
    let parent = real.parent();
    if parent != Some(base.as_path()) && parent != index_real.parent() {
        return Err(st_err(
            index,
            format!(
                "shard {} resolves to {}, outside the index's folder",
                shard.display(),
                real.display()
            ),
        ));
    }
    Ok(())
}
