//! `verify` against doctored ONNX files (review 6): each is an honest export of a fixture with a
//! few nodes appended in this test (the graph read, edited and written back with the crate's
//! own ONNX reader and encoder), so the doctoring is visible here and no binary file is
//! committed. Every honest export passes first, so each failure is the doctoring's.
//!
//! ONNX Runtime must be available (`./scripts/test` provides it); these tests never skip.

mod common;

use common::fixture;
use common::onnx_edit::{detach_output0, export, f32s, i64s, load, node, save, verify};
use fuse_ema::onnx::proto::{Attr, Model};

/// Appends to an NMS export: `score` (B, K, 1), the score column of `output0_raw`, and `pad`,
/// true on its zero (padding) rows.
fn score_and_padding(m: &mut Model) {
    detach_output0(m);
    m.initializers.extend([
        i64s("dr_c4", &[4]),
        i64s("dr_c5", &[5]),
        i64s("dr_ax2", &[2]),
        f32s("dr_zero", &[], &[0.0]),
    ]);
    m.nodes.extend([
        node(
            "Slice",
            &["output0_raw", "dr_c4", "dr_c5", "dr_ax2"],
            "score",
            vec![],
        ),
        node("Equal", &["score", "dr_zero"], "pad", vec![]),
    ]);
}

/// Rows whose score exceeds 0.999 moved by 60 px in x: earlier, two saturated rows each side
/// excused each other ("2 vs 2 rows, 0 matched"). Every padding row a copy of row 0: earlier,
/// 298 copies passed as ties. Padding filled with copies of the lowest real row: earlier they
/// excused themselves at their own list's cut. The saturated rows are yolov8-v80-style's (14
/// anchors above 0.999 at 128×128; the conditioned built fixtures' scores stay within 0.3–0.9).
#[test]
fn doctored_nms_rows_fail() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixture("yolov8-v80-style.pt");
    let honest = export(dir.path(), &ckpt, "v80.onnx", &["--nms", "--imgsz", "128"]);
    let (code, out) = verify(&honest, &ckpt, &[]);
    assert_eq!(code, 0, "{out}");

    let mut m = load(&honest);
    score_and_padding(&mut m);
    // The mask is arithmetic, floor(score + 0.001): a comparison with 0.999 would now be
    // refused as a second score threshold before the rows are compared (review 7).
    m.initializers.extend([
        f32s("dr_sat", &[], &[0.001]),
        f32s("dr_shift", &[1, 1, 6], &[60.0, 0.0, 60.0, 0.0, 0.0, 0.0]),
    ]);
    m.nodes.extend([
        node("Add", &["score", "dr_sat"], "near1", vec![]),
        node("Floor", &["near1"], "sat", vec![]),
        node("Mul", &["sat", "dr_shift"], "shift", vec![]),
        node("Add", &["output0_raw", "shift"], "output0", vec![]),
    ]);
    let shifted = dir.path().join("satshift.onnx");
    save(&m, &shifted);
    let (code, out) = verify(&shifted, &ckpt, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has no match"), "{out}");

    let mut m = load(&honest);
    score_and_padding(&mut m);
    m.initializers.push(i64s("dr_i0", &[0]));
    m.nodes.extend([
        node(
            "Gather",
            &["output0_raw", "dr_i0"],
            "row0",
            vec![("axis".into(), Attr::Int(1))],
        ),
        node("Where", &["pad", "row0", "output0_raw"], "output0", vec![]),
    ]);
    let dup = dir.path().join("duprows.onnx");
    save(&m, &dup);
    let (code, out) = verify(&dup, &ckpt, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("300 vs"), "{out}");

    let ckpt = fixture("families/yolov9t-detect.pt");
    let honest = export(dir.path(), &ckpt, "v9t.onnx", &["--nms"]);
    let (code, out) = verify(&honest, &ckpt, &[]);
    assert_eq!(code, 0, "{out}");
    let mut m = load(&honest);
    score_and_padding(&mut m);
    m.initializers
        .extend([i64s("dr_one", &[1]), i64s("dr_ax1", &[1])]);
    let to_i64 = vec![("to".to_string(), Attr::Int(7))];
    let keep0 = vec![("keepdims".to_string(), Attr::Int(0))];
    m.nodes.extend([
        node("Not", &["pad"], "real", vec![]),
        node("Cast", &["real"], "real_i", to_i64),
        node("ReduceSum", &["real_i", "dr_ax1"], "count", keep0),
        node("Sub", &["count", "dr_one"], "last", vec![]),
        node("Reshape", &["last", "dr_one"], "last1", vec![]),
        node(
            "Gather",
            &["output0_raw", "last1"],
            "lowest",
            vec![("axis".into(), Attr::Int(1))],
        ),
        node(
            "Where",
            &["pad", "lowest", "output0_raw"],
            "output0",
            vec![],
        ),
    ]);
    let phantoms = dir.path().join("phantoms.onnx");
    save(&m, &phantoms);
    let (code, out) = verify(&phantoms, &ckpt, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("300 vs"), "{out}");
}

/// The thresholds of an NMS export are read from its graph: an export at conf 0.001 is judged
/// at 0.001 (earlier at Ultralytics' 0.25: "10 vs 0 rows, 0 matched" passed), and a graph whose
/// thresholds are not constants or disagree is refused (exit 2).
#[test]
fn nms_thresholds_come_from_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixture("yolov8-pose.pt");
    let low = export(dir.path(), &ckpt, "low.onnx", &["--nms", "--conf", "0.001"]);
    let (code, out) = verify(&low, &ckpt, &[]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let detail = v["parity"]["task"][0]["detail"].as_str().unwrap();
    let n: Vec<usize> = detail
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .take(3)
        .collect();
    assert!(n[0] > 0 && n[0] == n[1] && n[1] == n[2], "{detail}");

    // The score threshold given to NonMaxSuppression differs from the one the score filter uses.
    let mut m = load(&low);
    m.initializers.push(f32s("dr_conf", &[1], &[0.3]));
    let nms = m
        .nodes
        .iter_mut()
        .find(|n| n.op == "NonMaxSuppression")
        .unwrap();
    nms.inputs[4] = "dr_conf".into();
    let two = dir.path().join("two-thresholds.onnx");
    save(&m, &two);
    let (code, out) = verify(&two, &ckpt, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("score threshold is ambiguous"), "{out}");

    // The IoU threshold passed through an Identity is still the constant (folded, review 7);
    // computed from it (Abs), it is no constant this reader evaluates.
    for (op, pass) in [("Identity", true), ("Abs", false)] {
        let mut m = load(&low);
        let nms = m
            .nodes
            .iter_mut()
            .find(|n| n.op == "NonMaxSuppression")
            .unwrap();
        let iou = std::mem::replace(&mut nms.inputs[3], "dr_iou".into());
        // The new node must come before its consumer: topological order.
        m.nodes.insert(0, node(op, &[&iou], "dr_iou", vec![]));
        let computed = dir.path().join("computed-iou.onnx");
        save(&m, &computed);
        let (code, out) = verify(&computed, &ckpt, &[]);
        if pass {
            assert_eq!(code, 0, "{out}");
        } else {
            assert_eq!(code, 2, "{out}");
            assert!(out.contains("no constant iou_threshold"), "{out}");
        }
    }
}

/// Against a golden file the ONNX must give exactly the golden's outputs: one dropped, one
/// added or one of another shape is a failed check (exit 1, named); an output that is the
/// input itself is refused (exit 2).
#[test]
fn golden_outputs_must_be_the_onnx_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixture("families/yolo26n-segment.pt");
    let golden = fixture("families/goldens/yolo26n-segment.default.npz");
    let g = golden.to_str().unwrap();
    let npz = fuse_ema::parity::npz::Npz::open(&golden).unwrap();
    let shape = &npz.get("images").unwrap().shape;
    let (size, batch) = (format!("{},{}", shape[2], shape[3]), shape[0].to_string());
    let honest = export(
        dir.path(),
        &ckpt,
        "seg.onnx",
        &["--imgsz", &size, "--batch", &batch],
    );
    let (code, out) = verify(&honest, &ckpt, &["--golden", g]);
    assert_eq!(code, 0, "{out}");

    let mut m = load(&honest);
    m.outputs.retain(|o| o.name != "output1");
    let dropped = dir.path().join("no-protos.onnx");
    save(&m, &dropped);
    let (code, out) = verify(&dropped, &ckpt, &["--golden", g]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the ONNX has no `output1`"), "{out}");

    let mut m = load(&honest);
    let mut extra = m.outputs[0].clone();
    extra.name = "output2".into();
    m.outputs.push(extra);
    m.nodes
        .push(node("Identity", &["output0"], "output2", vec![]));
    let added = dir.path().join("extra.onnx");
    save(&m, &added);
    let (code, out) = verify(&added, &ckpt, &["--golden", g]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`output2` is not in the golden file"), "{out}");

    let mut m = load(&honest);
    for n in &mut m.nodes {
        for v in n.outputs.iter_mut() {
            if v == "output1" {
                *v = "output1_raw".into();
            }
        }
    }
    m.nodes.push(node(
        "Concat",
        &["output1_raw", "output1_raw"],
        "output1",
        vec![("axis".into(), Attr::Int(1))],
    ));
    m.outputs.iter_mut().for_each(|o| {
        if o.name == "output1" {
            o.dims.clear();
        }
    });
    let doubled = dir.path().join("doubled.onnx");
    save(&m, &doubled);
    let (code, out) = verify(&doubled, &ckpt, &["--golden", g]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`output1`: the ONNX gives"), "{out}");

    let mut m = load(&honest);
    m.outputs = m.inputs.clone();
    let echo = dir.path().join("echo.onnx");
    save(&m, &echo);
    let (code, out) = verify(&echo, &ckpt, &["--golden", g]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("output `images` is the graph input itself"),
        "{out}"
    );
}
