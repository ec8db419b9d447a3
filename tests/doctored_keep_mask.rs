//! `verify`'s reading of an embedded NMS trusts a `Where` that selects on the NMS's keep mask
//! (`Cast` to bool of a `ScatterND`). Before review 9 ANY `ScatterND` passed, so a mask could
//! carry a filter no comparison shows: ones only where `Floor(score · 1.05)` is not zero (a
//! hidden threshold at 0.95), or indices computed by arithmetic. Now the mask must be zeros with
//! shape-only values scattered at the `NonMaxSuppression`'s own selected indices, moved only by
//! indexing. Each file is an honest `--nms` export edited with the crate's reader and encoder
//! (tests/common/onnx_edit.rs); ONNX Runtime must be available; these tests never skip.

mod common;

use common::onnx_edit::{f32s, honest_nms, load, node, verify_edit};
use fuse_ema::onnx::proto::Model;

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
