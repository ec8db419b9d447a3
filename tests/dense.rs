//! YOLO26's dense heads (`Depth`, `SemanticSegment`) against what `yolo export format=onnx` wrote
//! for the same checkpoints (`fixtures/families/yolo-export-summary.json`): output names, element
//! types (the semantic class map is uint8) and shapes, and the `metadata_props` values that
//! describe the model (task, head, names, stride, image size, batch, channels, end2end). The
//! family fixtures' values are compared with PyTorch in tests/families.rs; the variants in
//! `fixtures/dense/` (a one-class semantic head, a depth head with a non-identity calibration)
//! are compared here, at both golden sizes.

mod common;

use common::golden::export_at_each_size;
use common::{PER_CHANNEL, assert_channels, assert_labels, fixture, run};
use fuse_ema::onnx::proto::{Dim, ElemType};
use fuse_ema::parity::npy::Dtype;

/// The metadata keys whose values fuse-ema writes as Ultralytics does (`description`, `author`,
/// `args` and the dates say who exported, and differ by design).
const SAME_VALUES: &[&str] = &[
    "task", "head", "names", "stride", "imgsz", "batch", "channels", "end2end", "license", "docs",
];

fn elem_name(e: ElemType) -> &'static str {
    match e {
        ElemType::Float => "float",
        ElemType::Float16 => "float16",
        ElemType::Uint8 => "uint8",
        ElemType::Int32 => "int32",
        ElemType::Int64 => "int64",
        ElemType::Bool => "bool",
    }
}

fn check(stem: &str) {
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("families/yolo-export-summary.json")).unwrap(),
    )
    .unwrap();
    let want = &summary[format!("{stem}.default")];
    assert!(want.is_object(), "{stem}: no yolo export summary");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let ckpt = fixture(&format!("families/{stem}.pt"));
    let r = run(&[
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-parity",
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{stem}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let model = fuse_ema::onnx::read::parse(&bytes, Some(&out)).unwrap();
    let outputs: Vec<serde_json::Value> = model
        .outputs
        .iter()
        .map(|o| {
            let shape: Vec<i64> = o
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Param(_) => -1,
                })
                .collect();
            serde_json::json!({"name": o.name, "elem_type": elem_name(o.elem), "shape": shape})
        })
        .collect();
    assert_eq!(
        serde_json::Value::Array(outputs),
        want["outputs"],
        "{stem}: outputs"
    );
    for key in SAME_VALUES {
        let got = model
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v);
        assert_eq!(
            got.map(String::as_str),
            want["metadata_props"][key].as_str(),
            "{stem}: metadata {key}"
        );
    }
}

#[test]
fn depth_matches_yolo_export() {
    check("yolo26n-depth");
}

#[test]
fn semantic_matches_yolo_export() {
    check("yolo26n-semantic");
}

/// Exports `fixtures/dense/<stem>.pt` at each golden size (with its own parity check in ONNX
/// Runtime) and compares with PyTorch: class maps label by label (near-ties judged by the saved
/// logits), float maps per channel.
fn check_golden(stem: &str) {
    let gold = fixture(&format!("dense/goldens/{stem}.default.npz"));
    let ckpt = fixture(&format!("dense/{stem}.pt"));
    export_at_each_size(&ckpt, &gold, |what, npz, sfx, got| {
        assert_eq!(got.len(), 1, "{what}: one output");
        let key = format!("output0{sfx}");
        let want = npz.get(&key).unwrap();
        let g: Vec<f32> = got[0].1.iter().copied().collect();
        assert_eq!(got[0].1.shape(), want.shape.as_slice(), "{what}: shape");
        if npz.dtype(&key) == Some(Dtype::F32) {
            assert_channels(what, &want.shape, &g, &want.data, PER_CHANNEL);
        } else {
            let logits = npz.get(&format!("logits{sfx}")).map(|l| &l.data[..]);
            assert_labels(what, &want.shape, &g, &want.data, logits, PER_CHANNEL);
            // Both labels occur: a map of one class would not test the threshold.
            assert!(
                want.data.contains(&0.0) && want.data.contains(&1.0),
                "{what}"
            );
        }
    });
}

#[test]
fn one_class_semantic_matches_pytorch() {
    check_golden("yolo26n-semantic-1class");
}

#[test]
fn calibrated_depth_matches_pytorch() {
    check_golden("yolo26n-depth-calibrated");
}

/// `--half`: f16 inside the graph, and the class map stays uint8 (no Cast back to float32 on an
/// integer output); the export's own parity check (f16 limits, label near-ties) passes.
#[test]
fn half_exports_keep_the_class_map_integer() {
    for (stem, elem) in [
        ("yolo26n-semantic", ElemType::Uint8),
        ("yolo26n-depth", ElemType::Float),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.onnx");
        let ckpt = fixture(&format!("families/{stem}.pt"));
        let r = common::golden::export(&ckpt, &out, &["--half"]);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{stem}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let model = fuse_ema::onnx::read::parse(&std::fs::read(&out).unwrap(), Some(&out)).unwrap();
        assert_eq!(model.outputs[0].elem, elem, "{stem}");
        assert!(
            model
                .initializers
                .iter()
                .any(|t| t.elem == ElemType::Float16),
            "{stem}: f16 weights"
        );
    }
}
