//! Module flags read as Python's `if self.flag:` reads them (review 8 G15, G15b): the files are
//! torch.save'd copies of committed fixtures with one flag changed (tests/flags/generate.py).
//! Before, `add = 1.0` was read as false (the shortcut dropped, in the ONNX and in the reference
//! alike, so parity passed) and `_qkv_same_embed_dim = None` as "same" (the fused in_proj
//! weights used where torch uses the separate ones).

mod common;

use std::path::{Path, PathBuf};

use common::run;

fn flags(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/flags")
        .join(name)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `fuse-ema export tests/flags/NAME -o DIR/m.onnx --imgsz 64`: the ONNX path and the output.
fn export(dir: &Path, name: &str) -> (PathBuf, std::process::Output) {
    let onnx = dir.join("m.onnx");
    let src = flags(name);
    let o = run(&[
        "export",
        src.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
        "--imgsz",
        "64",
    ]);
    (onnx, o)
}

/// `add = 1.0` is true to Python: the export keeps the shortcut, so the ONNX computes what the
/// unchanged checkpoint's forward computes — `verify` against that checkpoint passes (without
/// the shortcut the outputs differ by up to 12, far beyond the tolerance).
#[test]
fn a_float_flag_is_true_as_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, o) = export(dir.path(), "add-float.pt");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let original = common::fixture("yolo11-detect.pt");
    for seed in ["0", "1", "2"] {
        let o = run(&[
            "verify",
            onnx.to_str().unwrap(),
            "--checkpoint",
            original.to_str().unwrap(),
            "--seed",
            seed,
        ]);
        assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    }
}

/// A flag whose truth value the reader cannot decide is refused, naming class and attribute.
#[test]
fn a_tensor_flag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, o) = export(dir.path(), "add-tensor.pt");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("Bottleneck.add is a tensor"), "{e}");
    assert!(!onnx.exists());
}

/// `_qkv_same_embed_dim = None` is false to Python: torch uses the separate q/k/v weights, which
/// the interpreter does not model, so the export is refused instead of using `in_proj_weight`.
#[test]
fn a_none_flag_is_false_as_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, o) = export(dir.path(), "mha-none.pt");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("separate q/k/v"), "{e}");
    assert!(!onnx.exists());
}
