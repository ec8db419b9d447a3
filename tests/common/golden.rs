//! Goldens (`.npz` of `images`, `output0`, … at a first size, `images_BxHxW`, `output0_BxHxW`, …
//! at the others) and running exported files on them in ONNX Runtime.

use std::path::Path;

use fuse_ema::parity::npz::Npz;
use fuse_ema::reference::ops::T;
use ndarray::ArrayD;

/// The sizes a golden holds: `""` for the first (plain names), `_BxHxW` for the others, each with
/// its `images` shape.
pub fn sizes(npz: &Npz, names: &[String]) -> Vec<(String, Vec<usize>)> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix("images"))
        .map(|sfx| {
            let shape = npz.get(&format!("images{sfx}")).unwrap().shape.clone();
            (sfx.to_string(), shape)
        })
        .collect()
}

/// The array names of an `.npz`, without `.npy`.
pub fn archive_names(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    let z = zip::ZipArchive::new(f).unwrap();
    z.file_names()
        .map(|n| n.unwrap().trim_end_matches(".npy").to_string())
        .collect()
}

/// Runs an ONNX file in ONNX Runtime on `images`; never skips when the runtime is missing.
pub fn ort_run(model: &Path, images: &T) -> Vec<(String, ArrayD<f32>)> {
    let rt = fuse_ema::runtime::ort().unwrap_or_else(|e| {
        panic!("{e} — run the suite with ./scripts/test, which provides ONNX Runtime")
    });
    let bytes = std::fs::read(model).unwrap();
    let x = ArrayD::from_shape_vec(images.shape.clone(), images.data.clone()).unwrap();
    rt.run(&bytes, &[("images", x)]).unwrap()
}
