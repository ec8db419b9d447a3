//! Golden files: NumPy `.npz` archives of `.npy` arrays (`images`, `output0`, …): float32, or
//! the integer class maps of semantic segmentation (see [`super::npy::Dtype`]).

use std::io::Read;
use std::path::Path;

use super::ParityError;
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

    /// The names of the arrays, in the archive's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.arrays.iter().map(|(n, ..)| n.as_str())
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
    pub fn open(path: &Path) -> Result<Npz, ParityError> {
        let p = || path.to_path_buf();
        let (file, size) = crate::io::open_regular(path).map_err(ParityError::GoldenOpen)?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|source| ParityError::NotNpz { path: p(), source })?;
        let member = |source| ParityError::NpzMember { path: p(), source };
        let mut arrays = Vec::new();
        // Deflated members may expand, all together, to 128 MiB plus eight times the file (as
        // compressed checkpoint storages may): a few megabytes of zeros are not gigabytes.
        let mut room = (128u64 << 20).saturating_add(size.saturating_mul(8));
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).map_err(member)?;
            let name = f
                .name()
                .map_err(member)?
                .trim_end_matches(".npy")
                .to_string();
            if f.size() > 1 << 32 {
                return Err(ParityError::NpzTooLarge { path: p(), name });
            }
            // The declared size only bounds the read; memory grows with the bytes really there.
            let declared = f.size();
            room = room
                .checked_sub(declared)
                .ok_or_else(|| ParityError::NpzBomb {
                    path: p(),
                    name: name.clone(),
                    limit_mib: ((128u64 << 20) + size.saturating_mul(8)) >> 20,
                })?;
            let mut bytes = Vec::new();
            (&mut f)
                .take(declared + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| ParityError::NpzRead {
                    path: p(),
                    name: name.clone(),
                    source,
                })?;
            if bytes.len() as u64 != declared {
                return Err(ParityError::NpzShort {
                    path: p(),
                    name,
                    declared,
                    held: bytes.len(),
                });
            }
            let a = super::npy::parse(&bytes).map_err(|source| ParityError::Npy {
                path: p(),
                name: name.clone(),
                source,
            })?;
            arrays.push((name.clone(), RefTensor::new(a.data, a.shape), a.dtype));
        }
        Ok(Npz { arrays })
    }
}
