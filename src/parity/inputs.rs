//! What parity runs on: seeded or prepared input images, and the ONNX (bytes or a file) run on
//! them.

use crate::reference::ops::RefTensor;
use crate::runtime::{Engine, RuntimeError};

/// Deterministic uniform [0, 1) images (splitmix64), the same for every runtime and run.
pub fn seeded_images(shape: &[usize], seed: u64) -> RefTensor {
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    RefTensor::new(data, shape.to_vec())
}

/// What the reference comparison runs on.
pub enum Inputs<'a> {
    /// `samples` seeded uniform batches of `shape`.
    Seeded {
        /// Input shape.
        shape: &'a [usize],
        /// How many batches.
        samples: usize,
    },
    /// A prepared image and its file name.
    Image(RefTensor, String),
}

/// Where the ONNX comes from.
pub enum OnnxModel<'a> {
    /// Serialised bytes.
    Bytes(&'a [u8]),
    /// A file (external data beside it).
    File(&'a std::path::Path),
}

pub(super) fn run_onnx(
    rt: &Engine,
    model: &OnnxModel,
    images: &RefTensor,
) -> Result<Vec<(String, RefTensor)>, RuntimeError> {
    let a = ndarray::ArrayD::from_shape_vec(images.shape.clone(), images.data.clone())?;
    let outs = match model {
        OnnxModel::Bytes(b) => rt.run(b, &[("images", a)])?,
        OnnxModel::File(p) => rt.run_file(p, &[("images", a)])?,
    };
    Ok(outs
        .into_iter()
        .map(|(n, a)| {
            let shape = a.shape().to_vec();
            (n, RefTensor::new(a.iter().copied().collect(), shape))
        })
        .collect())
}
