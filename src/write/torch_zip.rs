//! torch-loadable `.pt` output: the zip layout `torch.save` writes (`archive/data.pkl`,
//! `archive/data/<key>` stored and 64-byte aligned, `archive/version`, `archive/byteorder`), so
//! `torch.load(path, weights_only=True)` and `torch.load(path, mmap=True)` both open it.

use std::io::{BufWriter, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::pickle::{self, Entry};
use super::repickle::Repickled;
use super::{AtomicFile, OutDType, WriteError, WriteErrorKind, write_tensor};
use crate::ema::Named;
use crate::progress::Progress;
use crate::tensor::{DType, Tensor};

/// Writes `tensors` as a plain torch state dict to `target`.
pub fn write(
    target: &Path,
    inputs: &[&Path],
    tensors: &Named,
    dtype: OutDType,
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    progress.start(tensors.iter().map(|(_, t)| t.nbytes() as u64).sum());
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
    let pkl = pickle::state_dict(&entries);
    let parts: Vec<(&Tensor, DType)> = tensors.iter().map(|(_, t)| (t, dtype.of(t))).collect();
    write_archive(target, inputs, &pkl, &parts, progress)
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
/// identical input gives identical bytes.
fn write_archive(
    target: &Path,
    inputs: &[&Path],
    pkl: &[u8],
    parts: &[(&Tensor, DType)],
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    let mut file = AtomicFile::create(target, inputs)?;
    {
        let w = BufWriter::with_capacity(1 << 20, file.file());
        let mut z = ZipWriter::new(w);
        let base = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .last_modified_time(DateTime::default())
            .with_alignment(64);
        z.start_file("archive/data.pkl", base)
            .map_err(|e| WriteError::new(target, e))?;
        z.write_all(pkl).map_err(|e| WriteError::new(target, e))?;
        z.start_file("archive/byteorder", base)
            .map_err(|e| WriteError::new(target, e))?;
        z.write_all(b"little")
            .map_err(|e| WriteError::new(target, e))?;
        for (i, (t, d)) in parts.iter().enumerate() {
            let len = (t.numel() * d.size()) as u64;
            let opts = base.large_file(len >= u32::MAX as u64);
            z.start_file(format!("archive/data/{i}"), opts)
                .map_err(|e| WriteError::new(target, e))?;
            write_tensor(&mut z, t, *d).map_err(|e| WriteError::new(target, e))?;
            progress.advance(t.nbytes() as u64);
        }
        z.start_file("archive/version", base)
            .map_err(|e| WriteError::new(target, e))?;
        z.write_all(b"3\n")
            .map_err(|e| WriteError::new(target, e))?;
        let mut w = z.finish().map_err(|e| WriteError::new(target, e))?;
        w.flush().map_err(|e| WriteError::new(target, e))?;
    }
    file.commit()?;
    progress.finish();
    Ok(())
}
