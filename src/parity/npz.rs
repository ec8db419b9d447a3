//! Golden files: NumPy `.npz` archives of float32 `.npy` arrays (`images`, `output0`, …).

use std::io::Read;
use std::path::Path;

use crate::reference::ops::T;

/// The arrays of an `.npz`, by name.
pub struct Npz {
    arrays: Vec<(String, T)>,
}

impl Npz {
    /// An array by name (without `.npy`).
    pub fn get(&self, name: &str) -> Option<&T> {
        self.arrays.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Reads an `.npz` (stored or deflated), accepting little-endian f32 C-order arrays.
    pub fn open(path: &Path) -> Result<Npz, String> {
        let err = |m: String| format!("{}: {m}", path.display());
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| err(format!("not an .npz: {e}")))?;
        let mut arrays = Vec::new();
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
            arrays.push((
                name.clone(),
                super::npy::parse(&bytes)
                    .map(|a| T::new(a.data, a.shape))
                    .map_err(|m| err(format!("{name}.npy: {m}")))?,
            ));
        }
        Ok(Npz { arrays })
    }
}
