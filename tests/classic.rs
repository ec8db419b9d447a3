//! Classic YOLOv5 (ultralytics/yolov5 v7.0, anchor-based `models.yolo.Detect`) and YOLOv7
//! (WongKinYiu/yolov7, `IDetect`) `best.pt` files made by those repositories' own code
//! (`fixtures/classic/generate.py`, commits in fixtures/README.md), with goldens from the fused
//! export-mode forward their export.py exports (YOLOv5: `Detect.export = True`; YOLOv7: `--grid`).
//!
//! Each export runs `fuse-ema export --runtime ort` (its own default parity check included) at
//! both golden sizes; the written file runs in ONNX Runtime on the golden inputs and every output
//! channel (the last dimension: x y w h, objectness, class scores) must be within
//! 1e-4·max|channel| + 1e-4 of the repository's. The interface is the one their export.py
//! writes: input `images`, output `output0` (YOLOv5) or `output` (YOLOv7) of (B, anchors, 5 + nc),
//! metadata `stride` and `names` (YOLOv5) or none (YOLOv7).
//!
//! ONNX Runtime must be available (`./scripts/test` provides it); these tests never skip.

mod common;

use std::path::PathBuf;

use common::golden::{export, export_at_each_size};
use common::{PER_CHANNEL, assert_channels, fixture};
use fuse_ema::onnx::proto::Dim;
use fuse_ema::parity::npz::Npz;
use ndarray::ArrayD;

fn ckpt(name: &str) -> PathBuf {
    fixture(&format!("classic/{name}-best.pt"))
}

fn golden(name: &str) -> PathBuf {
    fixture(&format!("classic/goldens/{name}.npz"))
}

/// (B, N, C) rows as (B, C, N), so that the per-channel comparison (dimension 1) runs over the
/// row's columns.
fn columns(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let [b, n, c] = shape[..] else {
        panic!("rows are (B, N, C), not {shape:?}")
    };
    let mut out = vec![0f32; data.len()];
    for i in 0..b {
        for r in 0..n {
            for j in 0..c {
                out[(i * c + j) * n + r] = data[(i * n + r) * c + j];
            }
        }
    }
    (vec![b, c, n], out)
}

/// Exports `name` at both golden sizes and compares `output` with the repository's, channel by
/// channel.
fn check(name: &str, output: &str) {
    export_at_each_size(&ckpt(name), &golden(name), |what, npz, sfx, got| {
        compare(what, npz, sfx, output, &got)
    });
}

fn compare(what: &str, npz: &Npz, sfx: &str, output: &str, got: &[(String, ArrayD<f32>)]) {
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [output], "{what}: output names");
    let want = npz.get(&format!("{output}{sfx}")).unwrap();
    let g: Vec<f32> = got[0].1.iter().copied().collect();
    assert_eq!(got[0].1.shape(), want.shape.as_slice(), "{what}: shape");
    assert_eq!(want.shape[2], 8, "{what}: 5 + 3 classes");
    let (shape, g) = columns(&want.shape, &g);
    let (_, w) = columns(&want.shape, &want.data);
    assert_channels(&format!("{what} {output}"), &shape, &g, &w, PER_CHANNEL);
}

#[test]
fn yolov5n_matches_its_export_at_two_sizes() {
    check("yolov5n", "output0");
}

/// `MP`, `SP`, LeakyReLU `Conv`s, `IDetect`.
#[test]
fn yolov7_tiny_matches_its_grid_export_at_two_sizes() {
    check("yolov7-tiny", "output");
}

/// `RepConv` (three branches in the checkpoint; the golden's are fused by `attempt_load`),
/// `SPPCSPC`.
#[test]
fn yolov7_matches_its_grid_export_at_two_sizes() {
    check("yolov7", "output");
}

/// P6: `ReOrg`, `IAuxDetect` (its auxiliary branches not evaluated).
#[test]
fn yolov7_w6_matches_its_grid_export_at_two_sizes() {
    check("yolov7-w6", "output");
}

/// P6: `DownC`, `Shortcut`.
#[test]
fn yolov7_e6e_matches_its_grid_export_at_two_sizes() {
    check("yolov7-e6e", "output");
}

/// One `--dynamic` file per model (batch, height, width, as YOLOv5's export.py `--dynamic` names
/// them; the cell grid computed from the feature maps' shapes) gives the goldens at both sizes.
#[test]
fn dynamic_exports_match_at_both_sizes() {
    for (name, output) in [
        ("yolov5n", "output0"),
        ("yolov7-tiny", "output"),
        ("yolov7-w6", "output"),
    ] {
        let gold = golden(name);
        let npz = Npz::open(&gold).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dynamic.onnx");
        let r = export(&ckpt(name), &out, &["--dynamic", "--imgsz", "128"]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(0), "{name}: {err}");
        let model = fuse_ema::onnx::read::parse(&std::fs::read(&out).unwrap(), None).unwrap();
        let dims: Vec<String> = (model.outputs[0].dims.iter())
            .map(|d| match d {
                Dim::Param(p) => p.clone(),
                Dim::Fixed(n) => n.to_string(),
            })
            .collect();
        assert_eq!(dims, ["batch", "anchors", "8"], "{name}");
        let all = common::golden::sizes(&npz, &common::golden::archive_names(&gold));
        assert_eq!(all.len(), 2, "{name}");
        for (sfx, shape) in all {
            let got = common::golden::ort_run(&out, npz.get(&format!("images{sfx}")).unwrap());
            compare(
                &format!("{name} dynamic {shape:?}"),
                &npz,
                &sfx,
                output,
                &got,
            );
        }
    }
}

/// The metadata each repository's export.py writes, nothing else.
#[test]
fn metadata_is_what_their_exporters_write() {
    let dir = tempfile::tempdir().unwrap();
    for (name, want) in [
        (
            "yolov5n",
            vec![
                ("stride", "32"),
                ("names", "{0: 'red', 1: 'green', 2: 'blue'}"),
            ],
        ),
        ("yolov7-tiny", vec![]),
    ] {
        let out = dir.path().join(format!("{name}.onnx"));
        let r = export(&ckpt(name), &out, &["--imgsz", "64"]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(0), "{name}: {err}");
        let model = fuse_ema::onnx::read::parse(&std::fs::read(&out).unwrap(), None).unwrap();
        let got: Vec<(&str, &str)> = (model.metadata.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

/// The goldens are the EMA's: the raw weights (`--source raw`) miss them, so the comparison
/// above can tell which weights were exported.
#[test]
fn raw_weights_do_not_match_the_ema_goldens() {
    for (name, output) in [("yolov5n", "output0"), ("yolov7-tiny", "output")] {
        let npz = Npz::open(&golden(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("raw.onnx");
        let r = export(&ckpt(name), &out, &["--imgsz", "64", "--source", "raw"]);
        assert_eq!(r.status.code(), Some(0), "{name}");
        let got = common::golden::ort_run(&out, npz.get("images").unwrap());
        let result = std::panic::catch_unwind(|| compare(name, &npz, "", output, &got));
        assert!(
            result.is_err(),
            "{name}: the raw weights match the EMA's goldens"
        );
    }
}

/// Options the classic exporters do not have are refused: exit 2, one line, nothing written.
#[test]
fn unsupported_options_are_refused() {
    for (flag, what) in [("--nms", "--nms"), ("--end2end", "--end2end")] {
        for name in ["yolov5n", "yolov7-tiny"] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.onnx");
            let r = export(&ckpt(name), &out, &[flag]);
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(2), "{name} {flag}: {err}");
            assert!(
                err.contains(&format!("{what} is not supported for classic")),
                "{name} {flag}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{name} {flag}: {err}");
            assert!(!out.exists(), "{name} {flag}: nothing written");
        }
    }
}

/// Malformed heads written by `fixtures/classic/crafted.py` (session-5 review): one panicked in
/// the parser (`nl = 0`), one was exported wrong with exit 0 under `--no-parity` (a padded 1×1
/// head convolution, whose `ImplicitA` cannot be folded into the bias). Both: one error line
/// naming the file and the layer, exit 2, nothing written, with and without parity.
#[test]
fn malformed_heads_are_refused_not_crashed_or_exported_wrong() {
    for (name, says) in [
        (
            "detect-nl0.pt",
            "model.24 (Detect): Detect: no = 8, nc = 3, na = 3, nl = 0",
        ),
        (
            "idetect-pad1.pt",
            "model.105 (IDetect): level 0: a 1×1 convolution padded [1, 1]",
        ),
    ] {
        let file = fixture(&format!("classic/crafted/{name}"));
        for extra in [&["--no-parity"][..], &[][..]] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.onnx");
            let r = export(&file, &out, extra);
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(2), "{name} {extra:?}: {err}");
            assert!(err.contains(says), "{name}: {err}");
            assert!(err.contains(file.to_str().unwrap()), "{name}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{name}");
        }
    }
}
