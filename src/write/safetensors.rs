//! safetensors output, single file or Hugging Face-style shards with
//! `<stem>.safetensors.index.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{AtomicFile, OutDType, WriteError, append_tensor};
use crate::ema::Named;
use crate::progress::Progress;
use crate::tensor::DType;

fn tag(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F8E4M3 => "F8_E4M3",
        DType::F8E5M2 => "F8_E5M2",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U64 => "U64",
        DType::U32 => "U32",
        DType::U16 => "U16",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
        DType::C64 => "C64",
        DType::C128 => return None,
    })
}

/// The header: `__metadata__` first, then the tensors in order with increasing offsets, padded
/// with spaces to a multiple of 8 bytes.
fn header(
    target: &Path,
    tensors: &[(String, crate::tensor::Tensor)],
    dtype: OutDType,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WriteError> {
    let mut h = String::from("{");
    if !metadata.is_empty() {
        h.push_str("\"__metadata__\":");
        h.push_str(&serde_json::to_string(metadata).expect("string map serialises"));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let d = dtype.of(t);
        let tag = tag(d).ok_or_else(|| {
            WriteError::new(
                target,
                format!("tensor '{name}': safetensors has no {d} dtype"),
            )
        })?;
        let len = t.numel() * d.size();
        if h.len() > 1 {
            h.push(',');
        }
        h.push_str(&serde_json::to_string(name).expect("string serialises"));
        h.push_str(&format!(
            ":{{\"dtype\":\"{tag}\",\"shape\":{},\"data_offsets\":[{offset},{}]}}",
            serde_json::to_string(&t.shape).expect("shape serialises"),
            offset + len
        ));
        offset += len;
    }
    h.push('}');
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// Writes one file into an atomic temp file (not yet committed).
fn write_one(
    target: &Path,
    inputs: &[&Path],
    tensors: &[(String, crate::tensor::Tensor)],
    dtype: OutDType,
    metadata: &BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<AtomicFile, WriteError> {
    let head = header(target, tensors, dtype, metadata)?;
    let mut file = AtomicFile::create(target, inputs)?;
    let io = |e: std::io::Error| WriteError::new(target, format!("write failed: {e}"));
    file.file().write_all(&head).map_err(io)?;
    for (_, t) in tensors {
        append_tensor(file.file(), t, dtype.of(t)).map_err(io)?;
        progress.advance(t.nbytes() as u64);
    }
    Ok(file)
}

/// Writes `tensors` to `target` (a `.safetensors` path). With `max_shard`, writes
/// `<stem>-00001-of-0000N.safetensors` shards beside it plus `<stem>.safetensors.index.json`.
/// Returns the paths written.
pub fn write(
    target: &Path,
    inputs: &[&Path],
    tensors: &Named,
    dtype: OutDType,
    metadata: &BTreeMap<String, String>,
    max_shard: Option<u64>,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>, WriteError> {
    progress.start(tensors.iter().map(|(_, t)| t.nbytes() as u64).sum());
    let Some(max) = max_shard else {
        write_one(target, inputs, tensors, dtype, metadata, progress)?.commit()?;
        progress.finish();
        return Ok(vec![target.to_path_buf()]);
    };
    // Greedy split in order; a tensor larger than the limit gets a shard of its own.
    let mut shards: Vec<&[(String, crate::tensor::Tensor)]> = Vec::new();
    let (mut start, mut size) = (0usize, 0u64);
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = (t.numel() * dtype.of(t).size()) as u64;
        if i > start && size + n > max {
            shards.push(&tensors[start..i]);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < tensors.len() || shards.is_empty() {
        shards.push(&tensors[start..]);
    }
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model.safetensors");
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    let dir = target.parent().unwrap_or(Path::new(""));
    let total = shards.len();
    let index_path = dir.join(format!("{stem}.safetensors.index.json"));
    // Every name is checked before the first byte is written: a shard name that collides with
    // an input (a shard of the set being folded) must not cost a full write to find out.
    let shard_name = |i: usize| format!("{stem}-{:05}-of-{total:05}.safetensors", i + 1);
    for i in 0..total {
        super::check_target(&dir.join(shard_name(i)), inputs)?;
    }
    super::check_target(&index_path, inputs)?;
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file_name = shard_name(i);
        for (n, t) in shard.iter() {
            weight_map.insert(n.clone(), file_name.clone());
            total_size += (t.numel() * dtype.of(t).size()) as u64;
        }
        files.push(write_one(
            &dir.join(&file_name),
            inputs,
            shard,
            dtype,
            metadata,
            progress,
        )?);
    }
    let mut meta: BTreeMap<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    meta.insert("total_size".into(), serde_json::json!(total_size));
    let index = serde_json::json!({"metadata": meta, "weight_map": weight_map});
    let mut idx = AtomicFile::create(&index_path, inputs)?;
    let text = serde_json::to_string_pretty(&index).expect("index serialises") + "\n";
    idx.file()
        .write_all(text.as_bytes())
        .map_err(|e| WriteError::new(&index_path, format!("write failed: {e}")))?;
    let mut written = Vec::new();
    for f in files {
        written.push(f.target().to_path_buf());
        f.commit()?;
    }
    idx.commit()?;
    progress.finish();
    written.push(index_path);
    Ok(written)
}
