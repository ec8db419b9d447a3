//! torch-loadable `.pt` output: the zip layout `torch.save` writes (`archive/data.pkl`,
//! `archive/data/<key>` stored and 64-byte aligned, `archive/version`, `archive/byteorder`), so
//! `torch.load(path, weights_only=True)` and `torch.load(path, mmap=True)` both open it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::pickle::{self, Entry};
use super::repickle::Repickled;
use super::zip_stored::StoredZip;
use super::{AtomicFile, OutDType, WriteError, WriteErrorKind, write_tensor};
use crate::ema::Named;
use crate::progress::Progress;
use crate::tensor::{Buffer, DType, Tensor};

/// Writes `tensors` as a plain torch state dict to `target`.
pub fn write(
    target: &Path,
    inputs: &[&Path],
    tensors: &Named,
    dtype: OutDType,
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    progress.start(tensors.iter().map(|(_, t)| t.nbytes() as u64).sum());
    let pkl = state_dict_pickle(target, tensors, dtype)?;
    let parts: Vec<(&Tensor, DType)> = tensors.iter().map(|(_, t)| (t, dtype.of(t))).collect();
    write_archive(target, inputs, &pkl, &parts, progress)
}

/// Writes a plain torch state dict with the names, dtypes and shapes of `like` (each converted
/// as `dtype` says) to `target`, each tensor's bytes written by `fill(i, dtype, w)` in state-dict
/// order (`like[i]`'s elements as `dtype`); used where the bytes are computed rather than copied
/// (`average`). Each must write exactly its size.
pub fn write_filled(
    target: &Path,
    inputs: &[&Path],
    like: &Named,
    dtype: OutDType,
    progress: &dyn Progress,
    mut fill: impl FnMut(usize, DType, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    progress.start(like.iter().map(|(_, t)| t.nbytes() as u64).sum());
    let pkl = state_dict_pickle(target, like, dtype)?;
    archive(target, inputs, &pkl, like.len(), progress, |z, i, name| {
        let t = &like[i].1;
        let d = dtype.of(t);
        let len = (t.numel() * d.size()) as u64;
        z.streamed(name, len, |w| fill(i, d, w))?;
        Ok(t.nbytes() as u64)
    })
}

/// The `data.pkl` of a plain state dict of `tensors` converted as `dtype` says.
fn state_dict_pickle(
    target: &Path,
    tensors: &Named,
    dtype: OutDType,
) -> Result<Vec<u8>, WriteError> {
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let d = dtype.of(t);
        if d.storage_class().is_none() {
            return Err(WriteError::new(
                target,
                WriteErrorKind::TorchDtype {
                    name: name.clone(),
                    dtype: d,
                },
            ));
        }
        entries.push(Entry {
            name,
            dtype: d,
            shape: t.shape(),
        });
    }
    Ok(pickle::state_dict(&entries))
}

/// Writes a re-emitted object graph ([`super::repickle`]) as a torch archive: `data.pkl`, then
/// each storage streamed from its input (converted where asked), stored and 64-byte aligned.
pub fn write_graph(
    target: &Path,
    inputs: &[&Path],
    graph: &Repickled,
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    let parts: Vec<(&Tensor, DType)> = graph.storages.iter().map(|s| (&s.view, s.dtype)).collect();
    progress.start(parts.iter().map(|(t, _)| t.nbytes() as u64).sum());
    write_archive(target, inputs, &graph.pickle, &parts, progress)
}

/// The archive `torch.save` writes: `data.pkl`, `byteorder`, `data/<i>` for each part (its
/// elements converted to its dtype), `version`; stored, 64-byte aligned, fixed timestamps so
/// identical input gives identical bytes. A part that is a whole stored entry of an input, written
/// unchanged, is copied kernel-side with the CRC-32 its input's directory records.
fn write_archive(
    target: &Path,
    inputs: &[&Path],
    pkl: &[u8],
    parts: &[(&Tensor, DType)],
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    let mut crcs = InputCrcs::default();
    archive(target, inputs, pkl, parts.len(), progress, |z, i, name| {
        let (t, d) = parts[i];
        let len = (t.numel() * d.size()) as u64;
        match crcs.unchanged_entry(t, d) {
            Some((range, crc, from)) => {
                z.copied(name, len, crc, from, |f| {
                t.storage().copy_to(range, f).map_err(|e| super::changed(t, e))
            })?
            }
            None => z.streamed(name, len, |w| write_tensor(w, t, d))?,
        }
        Ok(t.nbytes() as u64)
    })
}

/// The archive's frame: `data.pkl`, `byteorder`, then `part(zip, i, "archive/data/<i>")` for
/// each of `parts` storages (returning the input bytes it covered, for progress), `version`,
/// the directory; committed when all went well.
fn archive(
    target: &Path,
    inputs: &[&Path],
    pkl: &[u8],
    parts: usize,
    progress: &dyn Progress,
    mut part: impl FnMut(&mut StoredZip<'_>, usize, &str) -> std::io::Result<u64>,
) -> Result<(), WriteError> {
    let mut file = AtomicFile::create(target, inputs)?;
    let err = |e: std::io::Error| WriteError::new(target, e);
    {
        let mut z = StoredZip::new(file.file());
        z.bytes("archive/data.pkl", pkl).map_err(err)?;
        z.bytes("archive/byteorder", b"little").map_err(err)?;
        for i in 0..parts {
            let covered = part(&mut z, i, &format!("archive/data/{i}")).map_err(err)?;
            progress.advance(covered);
        }
        z.bytes("archive/version", b"3\n").map_err(err)?;
        z.finish().map_err(err)?;
    }
    file.commit()?;
    progress.finish();
    Ok(())
}

/// The stored entries' CRCs of each input archive a part's bytes come from, read once per input.
#[derive(Default)]
struct InputCrcs {
    by_map: HashMap<usize, HashMap<u64, (u64, u32)>>,
}

impl InputCrcs {
    /// When `t` written as `d` is exactly the bytes of one stored entry of its input (the whole
    /// storage, unconverted): its byte range in the storage, the entry's CRC-32 and where its
    /// data starts in the input file.
    fn unchanged_entry(&mut self, t: &Tensor, d: DType) -> Option<(Range<usize>, u32, u64)> {
        let range = t.contiguous_range().filter(|_| d == t.dtype())?;
        let Buffer::Mapped { map, range: base } = &t.storage() else {
            return None;
        };
        let crcs = self
            .by_map
            .entry(Arc::as_ptr(map) as usize)
            .or_insert_with(|| crate::io::stored_crcs(&map.map()[..]));
        let start = (base.start + range.start) as u64;
        match crcs.get(&start) {
            Some(&(size, crc)) if size == range.len() as u64 => Some((range, crc, start)),
            _ => None,
        }
    }
}
