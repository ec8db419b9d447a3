//! `verify`'s reading of an embedded NMS lets a `Where` select only on comparisons that keep
//! scores above the score threshold (review 8: an upper bound, a shifted score and an `Equal` of
//! scores were refused), on shape tests and on the NMS's keep mask (`Cast` to bool of a
//! `ScatterND`). Before review 9 ANY `ScatterND` passed as that mask, and any `Equal` of two
//! shapes as a shape test, so either could carry a filter no comparison shows: a mask of ones
//! only where `Floor(score · 1.05)` is not zero (a hidden threshold at 0.952), indices computed
//! by arithmetic, or an `Equal` on the row count of `NonZero(Floor(score · 1.05))` that drops
//! every row of an image with such a score. Now the mask must be zeros with shape-only values
//! scattered at the `NonMaxSuppression`'s own selected indices, moved only by indexing, and a
//! shape test must compare shapes the data does not decide (or a moved shape with a negative
//! constant, torch's reshape guard). Each file is an honest `--nms` export edited with the
//! crate's reader and encoder (tests/common/onnx_edit.rs); ONNX Runtime must be available;
//! these tests never skip.

mod common;

use common::onnx_edit::{f32s, honest_nms, i64s, load, node, verify_edit};
use std::path::Path;

use fuse_ema::onnx::proto::{Model, Node};

/// The keep mask's `ScatterND` (its position) and the scores its zeros take their shape from.
fn keep_mask(m: &Model) -> (usize, String) {
    let at = (m.nodes.iter()).position(|n| n.op == "ScatterND").unwrap();
    let producer = |v: &str| (m.nodes.iter()).find(|n| n.outputs.iter().any(|o| o == v));
    let zeros = producer(&m.nodes[at].inputs[0]).unwrap();
    assert_eq!(zeros.op, "ConstantOfShape");
    let shape = producer(&zeros.inputs[0]).unwrap();
    assert_eq!(shape.op, "Shape");
    (at, shape.inputs[0].clone())
}

/// The position of the final rows' score filter, `Greater(score, nms/conf)`.
fn last_greater(m: &Model) -> usize {
    (m.nodes.iter())
        .rposition(|n| n.op == "Greater" && n.inputs[1] == "nms/conf")
        .unwrap()
}

/// `onnx` with its final rows' filter And'ed with `extra(scores)` (the last of those nodes
/// gives the condition; the `And`'s output is `dr_keep`).
fn and_filter(onnx: &Path, extra: &dyn Fn(&str) -> Vec<Node>) -> Model {
    let mut m = load(onnx);
    let last = last_greater(&m);
    let (scores, mask) = (
        m.nodes[last].inputs[0].clone(),
        m.nodes[last].outputs[0].clone(),
    );
    for n in (m.nodes.iter_mut()).filter(|n| n.op == "Where" && n.inputs[0] == mask) {
        n.inputs[0] = "dr_keep".into();
    }
    let mut band = extra(&scores);
    let cond = band.last().unwrap().outputs[0].clone();
    band.push(node("And", &[&mask, &cond], "dr_keep", vec![]));
    m.nodes.splice(last + 1..last + 1, band);
    m
}

#[test]
fn a_keep_mask_that_hides_a_filter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, ckpt) = honest_nms(dir.path());
    let refused = |code: i32, out: &str| {
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("which is no comparison with its score threshold"),
            "{out}"
        );
    };

    // Values from the scores: the mask is 1 only where Floor(score · 1.05) is, score ≥ 0.952.
    let mut m = load(&onnx);
    let (at, scores) = keep_mask(&m);
    let indices = m.nodes[at].inputs[1].clone();
    m.initializers.push(f32s("dr_k", &[1], &[1.05]));
    m.nodes[at].inputs[2] = "dr_band".into();
    let band = vec![
        node("GatherND", &[&scores, &indices], "dr_picked", vec![]),
        node("Mul", &["dr_picked", "dr_k"], "dr_scaled", vec![]),
        node("Floor", &["dr_scaled"], "dr_band", vec![]),
    ];
    m.nodes.splice(at..at, band);
    let (code, out) = verify_edit(dir.path(), &m, "values.onnx", &ckpt);
    refused(code, &out);

    // The selected indices passed through `op` on their way to the mask.
    let through = |op: &str, name: &str| {
        let mut m = load(&onnx);
        let (at, _) = keep_mask(&m);
        let indices = m.nodes[at].inputs[1].clone();
        m.nodes[at].inputs[1] = "dr_moved".into();
        m.nodes
            .insert(at, node(op, &[&indices], "dr_moved", vec![]));
        verify_edit(dir.path(), &m, name, &ckpt)
    };
    // Computed by arithmetic rather than moved: refused.
    let (code, out) = through("Abs", "indices.onnx");
    refused(code, &out);
    // Moved by an `Identity`: still the NMS's own, still verified.
    let (code, out) = through("Identity", "identity.onnx");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_shape_test_on_a_row_count_the_data_decides_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, ckpt) = honest_nms(dir.path());
    // Rows are kept only while no score reaches 0.952: And(mask, Equal(count, 0)).
    let mut m = and_filter(&onnx, &|scores| {
        vec![
            node("Mul", &[scores, "dr_k"], "dr_scaled", vec![]),
            node("Floor", &["dr_scaled"], "dr_band", vec![]),
            node("NonZero", &["dr_band"], "dr_where", vec![]),
            node("Shape", &["dr_where"], "dr_shape", vec![]),
            node("Gather", &["dr_shape", "dr_second"], "dr_count", vec![]),
            node("Equal", &["dr_count", "dr_zero"], "dr_none", vec![]),
        ]
    });
    m.initializers.extend([
        f32s("dr_k", &[1], &[1.05]),
        i64s("dr_second", &[1]),
        i64s("dr_zero", &[0]),
    ]);
    let (code, out) = verify_edit(dir.path(), &m, "count.onnx", &ckpt);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("selects on 'dr_none', which is no comparison with its score threshold"),
        "{out}"
    );
}

/// Review 8 G7/G13/G14: a comparison was read for its constant only. `Less(score, conf)` is
/// an upper bound, not a threshold, `Greater(Sub(score, 0.7), conf)` compares no score, and an
/// `Equal` of scores filters at a value no comparison shows: all refused (exit 2), naming the
/// node or value.
#[test]
fn score_comparisons_must_keep_scores_above_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (onnx, ckpt) = honest_nms(dir.path());

    // A band: Less(score, conf).
    let m = and_filter(&onnx, &|scores| {
        vec![node("Less", &[scores, "nms/conf"], "dr_below", vec![])]
    });
    let (code, out) = verify_edit(dir.path(), &m, "band.onnx", &ckpt);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("its Less node 'doctor/dr_below' keeps scores below its constant"),
        "{out}"
    );

    // G13: a band hidden in an `Equal`: And(mask, Not(Equal(Floor(score * 20), 19))).
    let mut m = and_filter(&onnx, &|scores| {
        vec![
            node("Mul", &[scores, "dr_20"], "dr_x20", vec![]),
            node("Floor", &["dr_x20"], "dr_floor", vec![]),
            node("Equal", &["dr_floor", "dr_19"], "dr_top", vec![]),
            node("Not", &["dr_top"], "dr_not_top", vec![]),
        ]
    });
    m.initializers
        .extend([f32s("dr_20", &[1], &[20.0]), f32s("dr_19", &[1], &[19.0])]);
    let (code, out) = verify_edit(dir.path(), &m, "equal.onnx", &ckpt);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("selects on 'dr_top', which is no comparison with its score threshold"),
        "{out}"
    );

    // The threshold applied to a shifted score.
    let mut m = load(&onnx);
    let last = last_greater(&m);
    let scores = m.nodes[last].inputs[0].clone();
    m.initializers.push(f32s("dr_shift", &[1], &[0.7]));
    m.nodes[last].inputs[0] = "dr_shifted".into();
    let shift = node("Sub", &[&scores, "dr_shift"], "dr_shifted", vec![]);
    m.nodes.insert(last, shift);
    let (code, out) = verify_edit(dir.path(), &m, "shifted.onnx", &ckpt);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("compares 'dr_shifted', computed by a Sub node, not the scores themselves"),
        "{out}"
    );
}
