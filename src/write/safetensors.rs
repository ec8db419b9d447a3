//! safetensors output, single file or Hugging Face-style shards with
//! `<stem>.safetensors.index.json`.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use super::{AtomicFile, OutDType, WriteError, WriteErrorKind, append_tensor};
use crate::ema::Named;
use crate::progress::Progress;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};

/// The largest header the safetensors crate (and so Python's `safetensors`) will read.
const MAX_HEADER: usize = 100_000_000;

type Entry = (String, crate::tensor::Tensor);

/// The order tensors are laid out in one file, as indices into `tensors` with their safetensors
/// dtype: the safetensors crate's own rule (`serialize`), dtype in descending
/// `safetensors::Dtype` order (widest alignment first), then name. The header is padded to 8
/// bytes, so every tensor then starts at a multiple of its element size.
fn layout_order(
    target: &Path,
    tensors: &[Entry],
    dtype: OutDType,
) -> Result<Vec<(usize, Dtype)>, WriteError> {
    let mut order = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let d = dtype.of(t);
        let st = d.to_safetensors().ok_or_else(|| {
            WriteError::new(
                target,
                WriteErrorKind::SafetensorsDtype {
                    name: name.clone(),
                    dtype: d,
                },
            )
        })?;
        order.push((i, st));
    }
    order.sort_by(|(a, da), (b, db)| db.cmp(da).then_with(|| tensors[*a].0.cmp(&tensors[*b].0)));
    Ok(order)
}

/// The header for `tensors` laid out in `order`: `__metadata__` first, then the tensors with
/// increasing offsets, padded with spaces to a multiple of 8 bytes. The tensor entries are
/// checked by the crate's own [`Metadata`] (contiguous offsets, sizes that match shapes, no
/// overflow); the JSON is written here because `Metadata` keeps `__metadata__` in a `HashMap`,
/// whose order would change the bytes from run to run.
fn header(
    target: &Path,
    tensors: &[Entry],
    order: &[(usize, Dtype)],
    dtype: OutDType,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WriteError> {
    let overflow = || WriteError::new(target, WriteErrorKind::Overflow);
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    let mut names = std::collections::HashSet::with_capacity(order.len());
    for &(i, st) in order {
        let (name, t) = &tensors[i];
        if !names.insert(name.as_str()) {
            return Err(WriteError::new(
                target,
                WriteErrorKind::DuplicateName(name.clone()),
            ));
        }
        let len = t
            .numel()
            .checked_mul(dtype.of(t).size())
            .ok_or_else(overflow)?;
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        let info = TensorInfo {
            dtype: st,
            shape: t.shape().to_vec(),
            data_offsets: (offset, end),
        };
        infos.push((name.clone(), info));
        offset = end;
    }
    let mut h = String::from("{");
    if !metadata.is_empty() {
        h.push_str("\"__metadata__\":");
        h.push_str(&serde_json::to_string(metadata).expect("string map serialises"));
    }
    for (name, info) in &infos {
        if h.len() > 1 {
            h.push(',');
        }
        h.push_str(&serde_json::to_string(name).expect("string serialises"));
        h.push(':');
        h.push_str(&serde_json::to_string(info).expect("tensor info serialises"));
    }
    h.push('}');
    Metadata::new(None, infos).map_err(|e| WriteError::new(target, WriteErrorKind::Layout(e)))?;
    let padded = h.len().next_multiple_of(8);
    if padded > MAX_HEADER {
        return Err(WriteError::new(
            target,
            WriteErrorKind::HeaderTooLarge {
                size: padded,
                max: MAX_HEADER,
            },
        ));
    }
    let mut out = Vec::with_capacity(8 + padded);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.resize(8 + padded, b' ');
    Ok(out)
}

/// One file's layout, planned from the names, dtypes and shapes of the tensors it will hold
/// (each converted as the [`OutDType`] says): their order in the file and the header.
pub struct Layout {
    order: Vec<(usize, Dtype)>,
    head: Vec<u8>,
}

impl Layout {
    /// Plans a file holding tensors like `like`'s (their bytes may come from elsewhere).
    pub fn new(
        target: &Path,
        like: &[Entry],
        dtype: OutDType,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Layout, WriteError> {
        let order = layout_order(target, like, dtype)?;
        let head = header(target, like, &order, dtype, metadata)?;
        Ok(Layout { order, head })
    }

    /// Indices into the planned tensors, in the order the file holds them.
    pub fn order(&self) -> Vec<usize> {
        self.order.iter().map(|&(i, _)| i).collect()
    }
}

/// Writes one file laid out as `layout` into an atomic temp file (not yet committed): the
/// header, then each tensor's bytes as `fill(i, dtype, file)` writes them at the file's
/// position, in the layout's order; each must write exactly its size.
fn write_laid_out(
    target: &Path,
    inputs: &[&Path],
    like: &[Entry],
    dtype: OutDType,
    layout: &Layout,
    progress: &dyn Progress,
    mut fill: impl FnMut(usize, crate::tensor::DType, &mut std::fs::File) -> std::io::Result<()>,
) -> Result<AtomicFile, WriteError> {
    let mut file = AtomicFile::create(target, inputs)?;
    let io = |e: std::io::Error| WriteError::new(target, e);
    file.file().write_all(&layout.head).map_err(io)?;
    let mut end = layout.head.len() as u64;
    for &(i, _) in &layout.order {
        let (name, t) = &like[i];
        let d = dtype.of(t);
        fill(i, d, file.file()).map_err(io)?;
        end += (t.numel() * d.size()) as u64;
        let at = file.file().stream_position().map_err(io)?;
        if at != end {
            return Err(io(std::io::Error::other(format!(
                "tensor '{name}': the file is at byte {at} where its end was due at {end}"
            ))));
        }
        progress.advance(t.nbytes() as u64);
    }
    Ok(file)
}

/// Writes one file into an atomic temp file (not yet committed).
fn write_one(
    target: &Path,
    inputs: &[&Path],
    tensors: &[Entry],
    dtype: OutDType,
    metadata: &BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<AtomicFile, WriteError> {
    let layout = Layout::new(target, tensors, dtype, metadata)?;
    write_laid_out(
        target,
        inputs,
        tensors,
        dtype,
        &layout,
        progress,
        |i, d, f| append_tensor(f, &tensors[i].1, d),
    )
}

/// Writes one file (no shards) planned as `layout` from `like`, each tensor's bytes written by
/// `fill(i, dtype, file)` at the file's position, in the layout's order (`like[i]`'s elements as
/// `dtype`); used where the bytes are computed rather than copied (`average`).
pub fn write_filled(
    target: &Path,
    inputs: &[&Path],
    like: &Named,
    dtype: OutDType,
    layout: &Layout,
    progress: &dyn Progress,
    fill: impl FnMut(usize, crate::tensor::DType, &mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    progress.start(like.iter().map(|(_, t)| t.nbytes() as u64).sum());
    write_laid_out(target, inputs, like, dtype, layout, progress, fill)?.commit()?;
    progress.finish();
    Ok(())
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
    let mut shards: Vec<&[Entry]> = Vec::new();
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
        .map_err(|e| WriteError::new(&index_path, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Buffer, DType, Tensor, contiguous_strides};

    fn tensor(dtype: DType, shape: &[usize], fill: u8) -> Tensor {
        let n = shape.iter().product::<usize>() * dtype.size();
        let bytes: Vec<u8> = (0..n).map(|i| fill.wrapping_add(i as u8)).collect();
        Tensor::new_view(
            dtype,
            shape.to_vec(),
            contiguous_strides(shape),
            0,
            Buffer::Owned(bytes.into()),
            "0".into(),
        )
        .unwrap()
    }

    fn write_and_read(tensors: Named) -> (Vec<u8>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write(
            &path,
            &[],
            &tensors,
            OutDType::Keep,
            &meta,
            None,
            &crate::progress::Silent,
        )
        .unwrap();
        (std::fs::read(&path).unwrap(), dir)
    }

    #[test]
    fn odd_length_f16_before_i64_keeps_every_tensor_aligned() {
        // In state-dict order the f16 (3 elements, 6 bytes) comes first: written in that order,
        // the i64 would start at offset 6 of the data, misaligned.
        let tensors: Named = vec![
            ("a.half".into(), tensor(DType::F16, &[3], 1)),
            ("b.count".into(), tensor(DType::I64, &[2], 50)),
            ("c.mask".into(), tensor(DType::Bool, &[5], 0)),
            ("d.weight".into(), tensor(DType::F32, &[1, 3], 90)),
        ];
        let (bytes, _dir) = write_and_read(tensors.clone());
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let base = 8 + n;
        assert_eq!(base % 8, 0, "header padded to 8 bytes");
        // The crate's own order: widest dtype first, then by name.
        assert_eq!(
            meta.offset_keys(),
            ["b.count", "d.weight", "a.half", "c.mask"]
        );
        for (name, t) in &tensors {
            let view = st.tensor(name).unwrap();
            assert_eq!(view.dtype(), t.dtype().to_safetensors().unwrap(), "{name}");
            assert_eq!(view.shape(), t.shape(), "{name}");
            let mut want = Vec::new();
            t.for_each_chunk(|c| {
                want.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(view.data(), want.as_slice(), "{name}");
            let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(
                start % t.dtype().size(),
                0,
                "{name} starts at {start}, misaligned"
            );
        }
    }

    #[test]
    fn same_tensors_in_another_order_give_the_same_bytes() {
        let a: Named = vec![
            ("x".into(), tensor(DType::F16, &[1], 3)),
            ("y".into(), tensor(DType::F64, &[2], 7)),
        ];
        let b: Named = a.iter().rev().cloned().collect();
        assert_eq!(write_and_read(a).0, write_and_read(b).0);
    }

    #[test]
    fn header_over_the_format_limit_is_refused() {
        let long = "n".repeat(MAX_HEADER);
        let tensors: Named = vec![(long, tensor(DType::U8, &[1], 0))];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        let err = write(
            &path,
            &[],
            &tensors,
            OutDType::Keep,
            &BTreeMap::new(),
            None,
            &crate::progress::Silent,
        )
        .unwrap_err();
        assert!(err.to_string().contains("over the format's limit"), "{err}");
        assert!(!path.exists(), "no partial output");
    }
}
