//! Goldens (`.npz` of `images`, `output0`, … at a first size, `images_BxHxW`, `output0_BxHxW`, …
//! at the others) and running exported files on them in ONNX Runtime.

use std::path::Path;

use fuse_ema::parity::npz::Npz;
use fuse_ema::reference::ops::RefTensor;
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
pub fn ort_run(model: &Path, images: &RefTensor) -> Vec<(String, ArrayD<f32>)> {
    let rt = fuse_ema::runtime::ort().unwrap_or_else(|e| {
        panic!("{e} — run the suite with ./scripts/test, which provides ONNX Runtime")
    });
    let bytes = std::fs::read(model).unwrap();
    let x = ArrayD::from_shape_vec(images.shape.clone(), images.data.clone()).unwrap();
    rt.run(&bytes, &[("images", x)]).unwrap()
}

/// Runs `fuse-ema export CKPT -o OUT --runtime ort EXTRA…`: the export's own parity check in
/// ONNX Runtime, never a silent fallback to tract.
pub fn export(ckpt: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--runtime",
        "ort",
    ];
    args.extend_from_slice(extra);
    super::run(&args)
}

/// Runs `fuse-ema verify ONNX --checkpoint CKPT --runtime ort`, asserts it exits 0 and gives
/// its standard output.
pub fn verify_passes(onnx: &Path, ckpt: &Path) -> String {
    let r = super::run(&[
        "verify",
        onnx.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--runtime",
        "ort",
    ]);
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

/// Exports `ckpt` once per size of the golden `gold` (a static file each: `--imgsz H,W --batch
/// B`, with the export's own parity check in ONNX Runtime), runs it on that size's `images` and
/// hands `check` a label for messages, the golden, the size's suffix and ONNX Runtime's outputs.
pub fn export_at_each_size(
    ckpt: &Path,
    gold: &Path,
    mut check: impl FnMut(&str, &Npz, &str, Vec<(String, ArrayD<f32>)>),
) {
    let npz = Npz::open(gold).unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()));
    let all = sizes(&npz, &archive_names(gold));
    let stem = ckpt.file_stem().unwrap().to_string_lossy().to_string();
    assert!(all.len() >= 2, "{stem}: golden has {} sizes", all.len());
    let dir = tempfile::tempdir().unwrap();
    for (sfx, shape) in all {
        let [b, _, h, w] = shape[..] else {
            panic!("{stem}: images{sfx} is {shape:?}")
        };
        let out = dir.path().join(format!("{stem}{sfx}.onnx"));
        let (imgsz, batch) = (format!("{h},{w}"), b.to_string());
        let r = export(ckpt, &out, &["--imgsz", &imgsz, "--batch", &batch]);
        let what = format!("{stem} {b}x{h}x{w}");
        assert_eq!(
            r.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let got = ort_run(&out, npz.get(&format!("images{sfx}")).unwrap());
        check(&what, &npz, &sfx, got);
    }
}
