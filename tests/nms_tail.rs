//! The NMS tail exercised on its own (review 8, G13/G14/G16): `verify` cuts an ONNX with NMS
//! inside at the head's predictions and runs the tail on synthetic predictions scoring up to
//! 1.0, so a tail doctored to drop confident rows — which seeded images never produce — fails.
//! The doctored files are honest exports edited here with the crate's reader and encoder
//! (tests/common/onnx_edit.rs), as tests/doctored_onnx.rs does. ONNX Runtime must be
//! available; these tests never skip.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use common::onnx_edit::{detach_output0, export, f32s, i64s, load, node, save, verify};
use fuse_ema::onnx::proto::{Attr, Model, TensorProto};

/// The post-NMS row filter of fuse-ema's `--nms` export: the `Where` selecting on the
/// `Greater(score, conf)` … `nms/Greater_1`, its index, and that comparison's inputs.
fn row_filter(m: &Model) -> (usize, String, String) {
    let k = (m.nodes.iter())
        .position(|n| n.op == "Where" && n.inputs[0] == "nms/Greater_1_output_0")
        .expect("the export's post-NMS row filter");
    let gr = (m.nodes.iter())
        .find(|n| n.outputs[0] == "nms/Greater_1_output_0")
        .expect("its comparison");
    (k, gr.inputs[0].clone(), gr.inputs[1].clone())
}

/// Adds `And(Greater_1, band)` before the row filter, `band` computed by `nodes`.
fn band(m: &mut Model, nodes: Vec<fuse_ema::onnx::proto::Node>, band: &str) {
    let (k, _, _) = row_filter(m);
    let mut nodes = nodes;
    nodes.push(node(
        "And",
        &["nms/Greater_1_output_0", band],
        "doctor/band",
        vec![],
    ));
    m.nodes[k].inputs[0] = "doctor/band".into();
    for n in nodes.into_iter().rev() {
        m.nodes.insert(k, n);
    }
}

/// G13: rows with `Floor(score · 20) == 19` (scores in [0.95, 1)) dropped by the row filter.
fn equal_floor(m: &mut Model) {
    let (_, score, _) = row_filter(m);
    m.initializers.push(f32s("doctor/twenty", &[], &[20.0]));
    m.initializers.push(f32s("doctor/nineteen", &[], &[19.0]));
    let nodes = vec![
        node("Mul", &[&score, "doctor/twenty"], "doctor/s20", vec![]),
        node("Floor", &["doctor/s20"], "doctor/s20f", vec![]),
        node(
            "Equal",
            &["doctor/s20f", "doctor/nineteen"],
            "doctor/top",
            vec![],
        ),
        node("Not", &["doctor/top"], "doctor/keep", vec![]),
    ];
    band(m, nodes, "doctor/keep");
}

/// G14: `Less(Sub(score, 0.7), conf)` (scores below 0.95) And'ed into the row filter.
fn sub_less(m: &mut Model) {
    let (_, score, conf) = row_filter(m);
    m.initializers.push(f32s("doctor/shift", &[], &[0.7]));
    let nodes = vec![
        node("Sub", &[&score, "doctor/shift"], "doctor/shifted", vec![]),
        node("Less", &["doctor/shifted", &conf], "doctor/keep", vec![]),
    ];
    band(m, nodes, "doctor/keep");
}

/// The constants of `Clip((0.95 − score) · 1e6, 0, 1)`, a mask that is 0 from a score of 0.95.
fn mask_constants() -> [TensorProto; 4] {
    [
        f32s("doctor/top", &[], &[0.95]),
        f32s("doctor/gain", &[], &[1e6]),
        f32s("doctor/lo", &[], &[0.0]),
        f32s("doctor/hi", &[], &[1.0]),
    ]
}

/// G16: `output0 = rows · Clip((0.95 − score) · 1e6, 0, 1)`: no comparison, no `Where`.
fn arithmetic_mask(m: &mut Model) {
    detach_output0(m);
    m.initializers.extend(mask_constants());
    m.initializers.extend([
        i64s("doctor/i4", &[4]),
        i64s("doctor/i5", &[5]),
        i64s("doctor/axis", &[2]),
    ]);
    let slice = ["output0_raw", "doctor/i4", "doctor/i5", "doctor/axis"];
    m.nodes.extend([
        node("Slice", &slice, "doctor/score", vec![]),
        node("Sub", &["doctor/top", "doctor/score"], "doctor/d", vec![]),
        node("Mul", &["doctor/d", "doctor/gain"], "doctor/dg", vec![]),
        node(
            "Clip",
            &["doctor/dg", "doctor/lo", "doctor/hi"],
            "doctor/mask",
            vec![],
        ),
        node("Mul", &["output0_raw", "doctor/mask"], "output0", vec![]),
    ]);
}

/// An edit of an honest export.
type Doctor = fn(&mut Model);

/// The mask behind a second `Concat`: the head's class scores ≥ 0.95 zeroed before the NMS,
/// `Concat(boxes, scores · Clip((0.95 − scores) · 1e6, 0, 1))` along axis 1 in place of the
/// head's own output, which then is no longer the last such `Concat` before the tail.
fn masked_behind_concat(m: &mut Model) {
    let t = (m.nodes.iter_mut())
        .find(|n| n.op == "Transpose" && n.name.starts_with("nms/"))
        .expect("the NMS's first node");
    let pred = t.inputs[0].clone();
    t.inputs[0] = "doctor/pred".into();
    m.initializers.extend(mask_constants());
    m.initializers.extend([
        i64s("doctor/i0", &[0]),
        i64s("doctor/i4", &[4]),
        i64s("doctor/end", &[i64::MAX]),
        i64s("doctor/axis", &[1]),
    ]);
    let at = (m.nodes.iter())
        .position(|n| n.name.starts_with("nms/"))
        .expect("the NMS");
    let concat = vec![("axis".to_string(), Attr::Int(1))];
    let nodes = [
        node(
            "Slice",
            &[&pred, "doctor/i0", "doctor/i4", "doctor/axis"],
            "doctor/boxes",
            vec![],
        ),
        node(
            "Slice",
            &[&pred, "doctor/i4", "doctor/end", "doctor/axis"],
            "doctor/scores",
            vec![],
        ),
        node("Sub", &["doctor/top", "doctor/scores"], "doctor/d", vec![]),
        node("Mul", &["doctor/d", "doctor/gain"], "doctor/dg", vec![]),
        node(
            "Clip",
            &["doctor/dg", "doctor/lo", "doctor/hi"],
            "doctor/mask",
            vec![],
        ),
        node(
            "Mul",
            &["doctor/scores", "doctor/mask"],
            "doctor/kept",
            vec![],
        ),
        node(
            "Concat",
            &["doctor/boxes", "doctor/kept"],
            "doctor/pred",
            concat,
        ),
    ];
    for n in nodes.into_iter().rev() {
        m.nodes.insert(at, n);
    }
}

fn honest(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let ckpt = fixture(&format!("{name}.pt"));
    let args = [&["--nms", "--imgsz", "64"][..], extra].concat();
    let onnx = export(dir, &ckpt, &format!("{name}{}.onnx", extra.join("")), &args);
    (onnx, ckpt)
}

#[test]
fn tails_that_drop_confident_rows_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, ckpt) = honest(dir.path(), "yolo11-detect", &[]);
    let (code, out) = verify(&onnx, &ckpt, &[]);
    assert_eq!(code, 0, "the honest export: {out}");
    let doctorings: [(&str, Doctor); 4] = [
        ("g13-equal-floor", equal_floor),
        ("g14-sub-less", sub_less),
        ("g16-arith-mask", arithmetic_mask),
        ("mask-behind-concat", masked_behind_concat),
    ];
    for (name, doctor) in doctorings {
        let mut m = load(&onnx);
        doctor(&mut m);
        let p = dir.path().join(format!("{name}.onnx"));
        save(&m, &p);
        for seed in ["0", "5"] {
            let (code, out) = verify(&p, &ckpt, &["--seed", seed]);
            // The structural reader of the tail (src/pipeline/embedded_nms.rs) refuses the
            // Equal band and the Sub-then-Less bound before the tail runs (exit 2); the
            // arithmetic masks it cannot see are caught by running the tail (exit 1).
            let (want_code, want) = match name {
                "g13-equal-floor" => (2, "no comparison with its score threshold"),
                "g14-sub-less" => (2, "an upper bound, not the exporter's score threshold"),
                _ => (1, "NMS tail on synthetic predictions"),
            };
            assert_eq!(code, want_code, "{name}, seed {seed}: {out}");
            assert!(out.contains(want), "{name}, seed {seed}: {out}");
        }
    }
}

#[test]
fn honest_tails_pass() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["yolo11-detect", "yolov8-seg", "yolov8-pose", "yolov8-obb"] {
        for extra in [&[][..], &["--half"][..]] {
            // export runs the same check on what it writes (exit 0 asserted by `export`).
            let (onnx, ckpt) = honest(dir.path(), name, extra);
            for seed in ["2", "3"] {
                let (code, out) = verify(&onnx, &ckpt, &["--seed", seed]);
                assert_eq!(code, 0, "{name} {extra:?}, seed {seed}: {out}");
                assert!(!out.contains("NMS tail"), "{out}");
            }
        }
    }
}

/// Ultralytics' own `nms=True` export: its head hands the NMS corner boxes.
#[test]
fn ultralytics_nms_export_passes() {
    let onnx = fixture("families/yolo-export/yolo26n-detect.nms.onnx");
    let ckpt = fixture("families/yolo26n-detect.pt");
    for seed in ["0", "1", "2"] {
        let (code, out) = verify(&onnx, &ckpt, &["--seed", seed]);
        assert_eq!(code, 0, "seed {seed}: {out}");
    }
}

/// A tail that reads the image's values (not only its shape) cannot be cut from the head:
/// refused, not skipped.
#[test]
fn a_tail_reading_the_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, ckpt) = honest(dir.path(), "yolo11-detect", &[]);
    let mut m = load(&onnx);
    detach_output0(&mut m);
    m.initializers.push(f32s("doctor/zero", &[], &[0.0]));
    let keep = vec![("keepdims".to_string(), Attr::Int(0))];
    m.nodes.extend([
        node("ReduceMax", &["images"], "doctor/peak", keep),
        node(
            "Mul",
            &["doctor/peak", "doctor/zero"],
            "doctor/nothing",
            vec![],
        ),
        node("Add", &["output0_raw", "doctor/nothing"], "output0", vec![]),
    ]);
    let p = dir.path().join("reads-image.onnx");
    save(&m, &p);
    let (code, out) = verify(&p, &ckpt, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("the NMS tail cannot be checked on its own"),
        "{out}"
    );
}
