//! `verify` and `graft` on ONNX files whose weights the weights check cannot take at their word:
//! - a quarter of the weight tensors of a grafted (EMA) file put back to the raw export's. By
//!   count most tensors still match the EMA, which the earlier majority rule called `ema` (exit
//!   0); one tensor only the raw weights explain is raw weights in the graph: `mixed`, exit 1;
//! - a node with a subgraph (`If`), whose initializers neither reads: `verify` says `unknown`
//!   (exit 1) and `graft` refuses the model (exit 2) instead of leaving the branch's weights raw.

mod common;

use std::path::Path;

use common::onnx_edit::{load, save, wire};
use common::{fixture, run_json};
use fuse_ema::onnx::proto::ElemType;

/// `ema` with every fourth float tensor of at least 16 values replaced by `raw`'s tensor of the
/// same name (both are the same graph: one grafted from the other).
fn mixed(ema: &Path, raw: &Path, out: &Path) -> usize {
    let (mut model, raw) = (load(ema), load(raw));
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
    save(&model, out);
    swapped
}

/// `model` with one more node: an `If` whose `then_branch` is an (empty) subgraph.
fn with_if_node(model: &[u8], path: &Path) -> Vec<u8> {
    let s = fuse_ema::onnx::graft::scan::scan(model, path).unwrap();
    let (mut branch, mut attr, mut node) = (Vec::new(), Vec::new(), Vec::new());
    wire::field(2, b"then", &mut branch);
    wire::field(1, b"then_branch", &mut attr);
    wire::field(6, &branch, &mut attr);
    wire::field_int(20, 5, &mut attr); // GRAPH
    wire::field(1, b"if_cond", &mut node);
    wire::field(2, b"if_out", &mut node);
    wire::field(3, b"if0", &mut node);
    wire::field(4, b"If", &mut node);
    wire::field(5, &attr, &mut node);
    let mut graph: Vec<u8> = (s.graph_fields.iter())
        .flat_map(|f| model[f.range.clone()].to_vec())
        .collect();
    wire::field(1, &node, &mut graph);
    let mut out = Vec::new();
    for (i, top) in s.top.iter().enumerate() {
        match i == s.graph {
            true => wire::field(7, &graph, &mut out),
            false => out.extend_from_slice(&model[top.range.clone()]),
        }
    }
    out
}

#[test]
fn a_subgraph_is_not_judged_or_grafted() {
    let dir = tempfile::tempdir().unwrap();
    let graft = fixture("graft");
    let (src, ckpt) = (graft.join("cnn.ts-nofold.onnx"), graft.join("cnn.pt"));
    let ema = dir.path().join("cnn.ema.onnx");
    grafted(&src, &ckpt, &ema);
    let with_if = dir.path().join("cnn.if.onnx");
    std::fs::write(&with_if, with_if_node(&std::fs::read(&ema).unwrap(), &ema)).unwrap();
    let (code, v) = verify(&with_if, &ckpt);
    assert_eq!(
        (code, v["weights"]["verdict"].as_str()),
        (1, Some("unknown")),
        "{v}"
    );
    assert!(
        v["weights"]["summary"]
            .as_str()
            .unwrap()
            .contains("'if0' (If) holds a subgraph"),
        "{v}"
    );
    // graft refuses it, naming the model, and writes nothing.
    let raw_if = dir.path().join("cnn.raw-if.onnx");
    std::fs::write(&raw_if, with_if_node(&std::fs::read(&src).unwrap(), &src)).unwrap();
    let out = dir.path().join("never.onnx");
    let o = common::run(&[
        "graft",
        raw_if.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cnn.raw-if.onnx") && err.contains("holds a subgraph"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Grafts `ckpt`'s EMA into `src`, written to `out` (which must succeed).
fn grafted(src: &Path, ckpt: &Path, out: &Path) {
    let (code, r) = run_json(&[
        "graft",
        src.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{r}");
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
    grafted(&src, &ckpt, &ema);
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
    grafted(&src, &ckpt, &ema);
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
