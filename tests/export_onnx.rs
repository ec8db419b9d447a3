//! `fuse-ema export`: each Ultralytics fixture exported, run in the real ONNX Runtime and
//! compared with the outputs PyTorch computed for the same inputs in export mode.
//!
//! ONNX Runtime must be available (`./scripts/test` installs it and sets `ORT_DYLIB_PATH`);
//! without it these tests fail, they are never skipped.

mod common;

use std::path::Path;

use common::{PER_CHANNEL, assert_channels, fixture, run, run_json};
use fuse_ema::parity::{Tolerance, compare};
use ndarray::ArrayD;

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("expected/{name}.safetensors"))).unwrap()
}

fn array(st: &safetensors::SafeTensors, key: &str) -> ArrayD<f32> {
    let t = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("golden has {key}"));
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ArrayD::from_shape_vec(t.shape().to_vec(), data).unwrap()
}

fn ort_run_all(model: &Path, images: ArrayD<f32>) -> Vec<(String, ArrayD<f32>)> {
    let rt = fuse_ema::runtime::ort().unwrap_or_else(|e| {
        panic!("{e} — run the suite with ./scripts/test, which provides ONNX Runtime")
    });
    let bytes = std::fs::read(model).unwrap();
    rt.run(&bytes, &[("images", images)]).unwrap()
}

fn ort_run(model: &Path, images: ArrayD<f32>) -> ArrayD<f32> {
    let mut out = ort_run_all(model, images);
    assert_eq!(out[0].0, "output0");
    out.remove(0).1
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// `got` within [`PER_CHANNEL`] of `want`, channel by channel.
fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    assert_channels(what, want.shape(), &flat(got), &flat(want), PER_CHANNEL);
}

fn export(file: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "export",
        fixture(file).to_str().unwrap().to_string().leak() as &str,
        "-o",
        out.to_str().unwrap(),
        // The export's own parity check in ONNX Runtime, never a silent fallback to tract.
        "--runtime",
        "ort",
    ];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{file}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

const CASES: &[(&str, &str, &[&str])] = &[
    // yolov8-epoch1.pt's `ema` holds the same weights as yolov8-best.pt's `model` and their
    // goldens are byte-identical: an epoch1 case would count this one twice.
    ("yolov8-best.pt", "yolov8-best.io", &[]),
    ("yolov8-v80-style.pt", "yolov8-v80-style.io", &[]),
    (
        "yolov8-v80-style.pt",
        "yolov8-v80-style.raw.io",
        &["--source", "raw"],
    ),
];

#[test]
fn exports_match_pytorch_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for &(file, gold, extra) in CASES {
        let bytes = golden(gold);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (b, h, w) in [(1, 64, 64), (2, 64, 96)] {
            let out = dir.path().join(format!("{gold}-{b}x{h}x{w}.onnx"));
            let size = format!("{h},{w}");
            let batch = b.to_string();
            let mut args = vec!["--imgsz", size.as_str(), "--batch", batch.as_str()];
            args.extend_from_slice(extra);
            export(file, &out, &args);
            let y = ort_run(&out, array(&st, &format!("images_{b}x{h}x{w}")));
            let want = array(&st, &format!("output0_{b}x{h}x{w}"));
            assert_close(&format!("{gold} {b}x{h}x{w}"), &y, &want);
        }
    }
}

#[test]
fn ema_and_raw_exports_differ_and_default_is_the_ema() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden("yolov8-v80-style.raw.io");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = dir.path().join("ema.onnx");
    export("yolov8-v80-style.pt", &out, &[]);
    let y = ort_run(&out, array(&st, "images_1x64x64"));
    let want = array(&st, "output0_1x64x64");
    // Outside the parity tolerance: the raw weights' output is not what the default exports.
    let s = compare(
        "output0",
        want.shape(),
        &flat(&y),
        &flat(&want),
        PER_CHANNEL,
    );
    assert!(
        !s.pass,
        "the default export reproduces the raw weights' output ({s:?})"
    );
}

#[test]
fn dynamic_batch_runs_at_two_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden("yolov8-epoch1.io");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = dir.path().join("dyn.onnx");
    export("yolov8-epoch1.pt", &out, &["--imgsz", "64,96", "--dynamic"]);
    let images = array(&st, "images_2x64x96");
    let want = array(&st, "output0_2x64x96");
    let y2 = ort_run(&out, images.clone());
    assert_close("batch 2", &y2, &want);
    let first = images
        .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..1))
        .to_owned();
    let y1 = ort_run(&out, first);
    let want1 = want
        .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..1))
        .to_owned();
    assert_close("batch 1", &y1, &want1);
}

#[test]
fn half_precision_within_documented_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden("yolov8-best.io");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = dir.path().join("half.onnx");
    export("yolov8-best.pt", &out, &["--half"]);
    let images = array(&st, "images_1x64x64");
    let y = ort_run(&out, images.clone());
    let want = array(&st, "output0_1x64x64");
    // The f16 limits `verify` applies (docs/parity.md): per channel, atol + rtol · max |channel|
    // plus a multiple of that channel's f16 rounding noise, which the reference interpreter
    // measures by running the same checkpoint with f16 storage emulated.
    let ckpt = fuse_ema::io::open(&fixture("yolov8-best.pt")).unwrap();
    let v = ckpt.graph.dict_get(&ckpt.root, "model").unwrap();
    let emulated = fuse_ema::reference::Reference::new(fuse_ema::checkpoint::py::ModuleRef {
        g: &ckpt.graph,
        v,
    })
    .unwrap()
    .emulating_f16()
    .run(fuse_ema::reference::ops::RefTensor::new(
        flat(&images),
        images.shape().to_vec(),
    ))
    .unwrap()
    .remove(0);
    let s = fuse_ema::parity::compare_f16(
        "output0",
        want.shape(),
        &flat(&y),
        &flat(&want),
        Some(&emulated.data),
        Tolerance::F16,
    );
    assert!(s.pass, "half: {s:?}");
}

#[test]
fn exporting_twice_gives_identical_bytes_and_metadata_for_autobackend() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    export("yolov8-epoch1.pt", &a, &[]);
    export("yolov8-epoch1.pt", &b, &[]);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "export is deterministic"
    );
    let (code, v) = run_json(&[
        "export",
        fixture("yolov8-epoch1.pt").to_str().unwrap(),
        "-o",
        a.to_str().unwrap(),
        "--runtime",
        "ort",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["task"], "detect");
    assert_eq!(v["weights_from"], "ema");
    assert_eq!(
        v["input"]["shape"],
        serde_json::json!([1, 3, 64, 64]),
        "training imgsz by default"
    );
    let bytes = std::fs::read(&a).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for needle in [
        "stride",
        "imgsz",
        "[64, 64]",
        "{0: 'red', 1: 'blue'}",
        "end2end",
        "detect",
    ] {
        assert!(text.contains(needle), "metadata lacks {needle}");
    }
}

#[test]
fn shorthand_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let r = run(&[
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--runtime",
        "ort",
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("parity: PASS — onnxruntime"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(out.exists());
    let bad = dir.path().join("x.onnx");
    let r = run(&[
        "export",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--opset",
        "9",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("opset 9 is not supported"));
    let r = run(&[
        "export",
        fixture("timm-last.pth.tar").to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("Ultralytics"));
    let r = run(&[
        "export",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--source",
        "raw",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no raw weights"));
    let r = run(&[
        "export",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--imgsz",
        "50",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(!bad.exists(), "no partial output");
}

#[test]
fn external_data_file_runs_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ext.onnx");
    export("yolov8-best.pt", &out, &["--external-data"]);
    let data = dir.path().join("ext.onnx.data");
    assert!(
        data.exists() && std::fs::metadata(&data).unwrap().len() > 1_000_000,
        "weights moved out"
    );
    assert!(
        std::fs::metadata(&out).unwrap().len() < 100_000,
        "the model keeps only the graph"
    );
    let bytes = golden("yolov8-best.io");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rt = fuse_ema::runtime::ort().unwrap_or_else(|e| panic!("{e}"));
    let y = rt
        .run_file(&out, &[("images", array(&st, "images_1x64x64"))])
        .unwrap()
        .remove(0)
        .1;
    assert_close("external data", &y, &array(&st, "output0_1x64x64"));
}
