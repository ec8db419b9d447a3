//! Golden files: NumPy `.npz` archives of `.npy` arrays (`images`, `output0`, …): float32, or
//! the integer class maps of semantic segmentation (see [`super::npy::Dtype`]).

use std::io::Read;
use std::path::Path;

use super::npy::Dtype;
use crate::reference::ops::RefTensor;

/// The arrays of an `.npz`, by name.
pub struct Npz {
    arrays: Vec<(String, RefTensor, Dtype)>,
}

impl Npz {
    /// An array by name (without `.npy`).
    pub fn get(&self, name: &str) -> Option<&RefTensor> {
        self.arrays
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, t, _)| t)
    }

    /// The element type an array is stored as in the file.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.arrays
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(.., d)| *d)
    }

    /// Reads an `.npz` (stored or deflated), accepting little-endian C-order arrays of the
    /// element types [`Dtype`] lists.
    pub fn open(path: &Path) -> Result<Npz, String> {
        let err = |m: String| format!("{}: {m}", path.display());
        let (file, size) = crate::io::open_regular(path).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| err(format!("not an .npz: {e}")))?;
        let mut arrays = Vec::new();
        // Deflated members may expand, all together, to 128 MiB plus eight times the file (as
        // compressed checkpoint storages may): a few megabytes of zeros are not gigabytes.
        let mut room = (128u64 << 20).saturating_add(size.saturating_mul(8));
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).map_err(|e| err(e.to_string()))?;
            let name = f
                .name()
                .map_err(|e| err(e.to_string()))?
                .trim_end_matches(".npy")
                .to_string();
            if f.size() > 1 << 32 {
                return Err(err(format!("{name}: larger than 4 GiB")));
            }
            // The declared size only bounds the read; memory grows with the bytes really there.
            let declared = f.size();
            room = room.checked_sub(declared).ok_or_else(|| {
                err(format!(
                    "{name}: the arrays would expand to more than {} MiB, more than a file of this size can honestly hold (a decompression bomb?)",
                    ((128u64 << 20) + size.saturating_mul(8)) >> 20
                ))
            })?;
            let mut bytes = Vec::new();
            (&mut f)
                .take(declared + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| err(e.to_string()))?;
            if bytes.len() as u64 != declared {
                return Err(err(format!(
                    "{name}: declares {declared} bytes, holds {}",
                    bytes.len()
                )));
            }
            let a = super::npy::parse(&bytes).map_err(|m| err(format!("{name}.npy: {m}")))?;
            arrays.push((name.clone(), RefTensor::new(a.data, a.shape), a.dtype));
        }
        Ok(Npz { arrays })
    }
}
