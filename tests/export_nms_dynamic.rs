//! `fuse-ema export --dynamic` (batch, height and width) and `--nms` on the Ultralytics fixtures:
//! one dynamic file run in ONNX Runtime at two sizes against PyTorch's export-mode outputs, NMS
//! exports (OBB's rotated NMS included) against Ultralytics' own `NMSModel`
//! (`fixtures/expected/<name>.nms.npz`, made by
//! `nms_goldens()` in fixtures/generate.py), the interface `yolo export` gives them, and the
//! models `--nms` refuses.
//!
//! ONNX Runtime must be available (`./scripts/test` provides it); these tests never skip.

mod common;

use std::path::Path;

use common::{PER_CHANNEL, assert_channels, fixture, golden};
use fuse_ema::onnx::proto::Dim;
use fuse_ema::parity::{RowsTolerance, Suppression, Tolerance, rows_check};
use fuse_ema::reference::ops::RefTensor;

/// The two sizes every `.io` golden holds.
const SIZES: [(usize, usize, usize); 2] = [(1, 64, 64), (2, 64, 96)];

fn io_golden(name: &str) -> Vec<(String, RefTensor)> {
    let bytes = std::fs::read(fixture(&format!("expected/{name}.io.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, t)| {
            let data = (t.data().chunks_exact(4))
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, RefTensor::new(data, t.shape().to_vec()))
        })
        .collect()
}

fn get<'a>(g: &'a [(String, RefTensor)], key: &str) -> &'a RefTensor {
    &g.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("golden has no {key}"))
        .1
}

fn export(file: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    golden::export(&fixture(file), out, extra)
}

fn exported(file: &str, out: &Path, extra: &[&str]) {
    let r = export(file, out, extra);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{file} {extra:?}: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// ONNX Runtime's outputs as `RefTensor`s, for the parity comparisons.
fn ort_run(model: &Path, images: &RefTensor) -> Vec<(String, RefTensor)> {
    (golden::ort_run(model, images).into_iter())
        .map(|(n, a)| {
            let shape = a.shape().to_vec();
            (n, RefTensor::new(a.iter().copied().collect(), shape))
        })
        .collect()
}

fn model(path: &Path) -> fuse_ema::onnx::proto::Model {
    fuse_ema::onnx::read::parse(&std::fs::read(path).unwrap(), Some(path)).unwrap()
}

fn dims(d: &[Dim]) -> Vec<String> {
    d.iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Param(p) => p.clone(),
        })
        .collect()
}

fn metadata(m: &fuse_ema::onnx::proto::Model, key: &str) -> String {
    (m.metadata.iter().find(|(k, _)| k == key))
        .unwrap_or_else(|| panic!("no metadata {key}"))
        .1
        .clone()
}

#[test]
fn one_dynamic_file_matches_pytorch_at_two_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "yolo11-detect",
        "yolov8-seg",
        "yolov8-pose",
        "yolov8-obb",
        "yolov8-cls",
    ] {
        let golden = io_golden(name);
        let out = dir.path().join(format!("{name}.onnx"));
        exported(&format!("{name}.pt"), &out, &["--dynamic"]);
        for (b, h, w) in SIZES {
            let sfx = format!("_{b}x{h}x{w}");
            let images = get(&golden, &format!("images{sfx}"));
            let got = ort_run(&out, images);
            // The static export of this size computes the same (tight); PyTorch within the parity
            // check's own limit, as the static export itself is (yolo11-detect's class scores
            // differ from PyTorch's by up to 3.2e-4 at 2x64x96 whichever export runs).
            let fixed = dir.path().join(format!("{name}{sfx}.onnx"));
            let (size, batch) = (format!("{h},{w}"), b.to_string());
            exported(
                &format!("{name}.pt"),
                &fixed,
                &["--imgsz", &size, "--batch", &batch],
            );
            let same = ort_run(&fixed, images);
            let mut compared = 0;
            for ((n, y), (_, s)) in got.iter().zip(&same) {
                let want = get(&golden, &format!("{n}{sfx}"));
                assert_eq!(y.shape, want.shape, "{name} {n}{sfx}");
                let what = format!("{name} dynamic {n}{sfx}");
                assert_channels(&what, &y.shape, &y.data, &s.data, PER_CHANNEL);
                assert_channels(&what, &want.shape, &y.data, &want.data, Tolerance::F32);
                compared += 1;
            }
            let want_outputs = golden
                .iter()
                .filter(|(k, _)| k.starts_with("output") && k.ends_with(&sfx))
                .count();
            assert_eq!(compared, want_outputs, "{name}{sfx}: every output compared");
        }
    }
}

#[test]
fn dynamic_interface_is_ultralytics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.onnx");
    exported("yolov8-seg.pt", &out, &["--dynamic"]);
    let m = model(&out);
    assert_eq!(dims(&m.inputs[0].dims), ["batch", "3", "height", "width"]);
    assert_eq!(dims(&m.outputs[0].dims), ["batch", "38", "anchors"]);
    assert_eq!(
        dims(&m.outputs[1].dims),
        ["batch", "32", "mask_height", "mask_width"]
    );
    assert!(metadata(&m, "args").contains("'dynamic': True"));
    assert!(metadata(&m, "args").contains("'nms': False"));
    // Anchors come from the feature maps' shapes, not from a constant per size.
    let ops: Vec<&str> = m.nodes.iter().map(|n| n.op.as_str()).collect();
    assert!(ops.contains(&"Range"), "anchors computed in the graph");
}

/// NMS rows against Ultralytics' NMSModel: one static export per size, and one `--dynamic` file
/// at both sizes.
#[test]
fn nms_matches_ultralytics_nmsmodel() {
    let dir = tempfile::tempdir().unwrap();
    // The parity check's f32 limits (see above for yolo11-detect's scores).
    let tol = RowsTolerance {
        atol: Tolerance::F32.atol,
        rtol: Tolerance::F32.rtol,
        conf: 0.25,
        kpt_dim: None,
        noise: [0.0; 5],
        suppression: None,
    };
    for name in ["yolo11-detect", "yolov8-seg", "yolov8-pose", "yolov8-obb"] {
        let golden = io_golden(name);
        let npz = fuse_ema::parity::npz::Npz::open(&fixture(&format!("expected/{name}.nms.npz")))
            .unwrap();
        let dynamic = dir.path().join(format!("{name}.dynamic.onnx"));
        exported(&format!("{name}.pt"), &dynamic, &["--nms", "--dynamic"]);
        let mut rows_seen = 0;
        for (b, h, w) in SIZES {
            let sfx = format!("_{b}x{h}x{w}");
            let want = npz.get(&format!("output0{sfx}")).unwrap();
            let images = get(&golden, &format!("images{sfx}"));
            let fixed = dir.path().join(format!("{name}{sfx}.onnx"));
            let (size, batch) = (format!("{h},{w}"), b.to_string());
            exported(
                &format!("{name}.pt"),
                &fixed,
                &["--nms", "--imgsz", &size, "--batch", &batch],
            );
            for file in [&fixed, &dynamic] {
                let got = ort_run(file, images);
                let (n, y) = &got[0];
                assert_eq!(n, "output0");
                assert_eq!(y.shape, want.shape, "{name}{sfx}");
                let tol = RowsTolerance {
                    kpt_dim: (name == "yolov8-pose").then_some(3),
                    suppression: Some(Suppression {
                        iou: 0.7,
                        centred: name == "yolov8-obb",
                        class_shift: None,
                    }),
                    ..tol
                };
                for c in rows_check(y, want, tol) {
                    assert!(c.pass, "{name}{sfx} {}: {}", file.display(), c.detail);
                }
            }
            rows_seen += (want.data.chunks(want.shape[2]))
                .filter(|r| r.iter().any(|v| *v != 0.0))
                .count();
        }
        assert!(rows_seen > 0, "{name}: the goldens hold detections");
    }
}

#[test]
fn nms_interface_is_ultralytics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pose.onnx");
    exported("yolov8-pose.pt", &out, &["--nms", "--max-det", "50"]);
    let m = model(&out);
    assert_eq!(dims(&m.outputs[0].dims), ["1", "50", "57"]);
    assert!(metadata(&m, "args").contains("'nms': True"));
    assert_eq!(metadata(&m, "end2end"), "False");
    let ops: Vec<&str> = m.nodes.iter().map(|n| n.op.as_str()).collect();
    assert!(ops.contains(&"NonMaxSuppression"));
}

#[test]
fn nms_is_refused_where_it_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    for (file, extra, why) in [
        (
            "yolov8-cls.pt",
            &["--nms"][..],
            "cannot export: --nms applies to detect, segment, pose and obb models with a YOLO head; this is a classify model (Classify)",
        ),
        (
            "yolov8-best.pt",
            &["--nms", "--iou", "1.5"][..],
            "--iou 1.5 is not in [0, 1]",
        ),
        (
            "yolov8-best.pt",
            &["--nms", "--max-det", "0"][..],
            "--max-det 0 is not in 1..=100000",
        ),
        (
            "yolov8-best.pt",
            &["--conf", "0.5"][..],
            "the following required arguments were not provided",
        ),
    ] {
        let r = export(file, &out, extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{file} {extra:?}: {err}");
        assert!(err.contains(why), "{file} {extra:?}: {err}");
        assert!(!out.exists(), "{file} {extra:?}: nothing written");
    }
}

/// f16 models: the rows' limits grow by the f16 noise the reference measures in each column
/// group, so `--half --nms` passes its own parity check (exit 0).
#[test]
fn half_nms_passes_its_parity_check() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["yolo11-detect", "yolov8-seg", "yolov8-pose", "yolov8-obb"] {
        let out = dir.path().join(format!("{name}.onnx"));
        exported(
            &format!("{name}.pt"),
            &out,
            &["--nms", "--half", "--imgsz", "64,96", "--batch", "2"],
        );
    }
}

/// `verify` recognises `yolo export nms=True`'s own file (its `args` say `'nms': True`; it holds
/// bool initializers) and compares its rows with the reference's NMS.
#[test]
fn verify_reads_yolo_export_nms_files() {
    let onnx = fixture("families/yolo-export/yolo26n-detect.nms.onnx");
    let ckpt = fixture("families/yolo26n-detect.pt");
    let out = golden::verify_passes(&onnx, &ckpt);
    assert!(out.contains("detection rows: 1/1 images agree"), "{out}");
}
