//! `verify` on an ONNX whose weights are partly the EMA's and partly the raw ones: a quarter of the
//! weight tensors of a grafted (EMA) file put back to the raw export's. By count most tensors
//! still match the EMA, which the earlier majority rule called `ema` (exit 0); one tensor only the
//! raw weights explain is raw weights in the graph, so the verdict is `mixed`, exit 1.

mod common;

use std::path::Path;

use common::{fixture, run_json};
use fuse_ema::onnx::proto::ElemType;

/// `ema` with every fourth float tensor of at least 16 values replaced by `raw`'s tensor of the
/// same name (both are the same graph: one grafted from the other).
fn mixed(ema: &Path, raw: &Path, out: &Path) -> usize {
    let read = |p: &Path| fuse_ema::onnx::read::parse(&std::fs::read(p).unwrap(), Some(p)).unwrap();
    let (mut model, raw) = (read(ema), read(raw));
    let mut swapped = 0;
    let weighty = (model.initializers.iter_mut())
        .filter(|t| t.elem == ElemType::Float && t.raw.len() >= 64)
        .enumerate();
    for (i, t) in weighty {
        let r = raw.initializers.iter().find(|r| r.name == t.name).unwrap();
        if i % 4 == 0 && r.raw != t.raw {
            t.raw = r.raw.clone();
            swapped += 1;
        }
    }
    std::fs::write(out, model.encode()).unwrap();
    swapped
}

fn verify(file: &Path, ckpt: &Path) -> (i32, serde_json::Value) {
    run_json(&[
        "verify",
        file.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn a_graph_partly_swapped_to_raw_weights_is_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let graft = fixture("graft");
    let (src, ckpt) = (graft.join("cnn.ts-nofold.onnx"), graft.join("cnn.pt"));
    let ema = dir.path().join("cnn.ema.onnx");
    let (code, r) = run_json(&[
        "graft",
        src.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-o",
        ema.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{r}");
    // The grafted file itself is the EMA; the untouched export is raw.
    let (code, v) = verify(&ema, &ckpt);
    assert_eq!(
        (code, v["weights"]["verdict"].as_str()),
        (0, Some("ema")),
        "{v}"
    );
    assert_eq!(v["weights"]["only_raw"], 0, "{v}");
    let mix = dir.path().join("cnn.mixed.onnx");
    let swapped = mixed(&ema, &src, &mix);
    assert!(swapped >= 3, "{swapped} tensors swapped");
    let (code, v) = verify(&mix, &ckpt);
    let w = &v["weights"];
    assert_eq!((code, w["verdict"].as_str()), (1, Some("mixed")), "{v}");
    assert_eq!(w["only_raw"].as_u64(), Some(swapped as u64), "{v}");
    // Most tensors still match the EMA: a majority rule would have passed this file.
    assert!(
        w["matching_ema"].as_u64().unwrap() * 2 >= w["compared"].as_u64().unwrap(),
        "{v}"
    );
}

#[test]
fn an_ultralytics_export_partly_swapped_is_mixed() {
    // yolo export's own ONNX of the raw weights, and fuse-ema's graft of it (the EMA).
    let dir = tempfile::tempdir().unwrap();
    let (src, ckpt) = (
        fixture("yolo-export-raw.onnx"),
        fixture("yolov8-v80-style.pt"),
    );
    let ema = dir.path().join("ema.onnx");
    let (code, r) = run_json(&[
        "graft",
        src.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-o",
        ema.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{r}");
    let mix = dir.path().join("mixed.onnx");
    let swapped = mixed(&ema, &src, &mix);
    assert!(swapped >= 3, "{swapped} tensors swapped");
    let (code, v) = verify(&mix, &ckpt);
    assert_eq!(
        (code, v["weights"]["verdict"].as_str()),
        (1, Some("mixed")),
        "{v}"
    );
}
