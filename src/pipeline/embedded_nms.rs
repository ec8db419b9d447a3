//! The NMS an ONNX embeds, read from the graph `verify` is given: its confidence and IoU
//! thresholds and its rows per image. Ultralytics' metadata does not record the thresholds
//! (`yolo export nms=True conf=0.1` bakes 0.1 into the graph and says only `'nms': True`), so
//! assuming its defaults judged an export made at conf 0.001 against an NMS at 0.25 (review 6).
//! Where the graph does not say them unambiguously `verify` refuses to judge the rows.

use crate::onnx::nms::Nms;
use crate::onnx::proto::{Attr, Dim, ElemType, Model};
use crate::parity::NmsOutput;

/// The NMS `model` embeds: `Ok(None)` when its metadata (`args` with `'nms': True`, as
/// `yolo export nms=True` and `--nms` write) says it has none; an error saying what could not
/// be determined when it has one whose thresholds or row count the graph does not give.
///
/// - With one `NonMaxSuppression` node (every detection NMS either exporter writes): the IoU
///   threshold is its `iou_threshold` input, a constant (initializer or `Constant` node); the
///   confidence threshold is the one constant every `Greater` compares with (the score filter)
///   and, where given, the node's `score_threshold` — these must agree.
/// - Without one (fuse-ema's rotated NMS for OBB, built from plain operators): the constants
///   `nms/conf` and `nms/iou` that its `Greater` nodes compare with.
/// - Rows per image (`max_det`): `output0`'s fixed second dimension.
///
/// Class-agnostic NMS cannot be told from the graph; per class is assumed (an agnostic file
/// then fails the comparison rather than passing it).
pub(super) fn embedded_nms(model: &Model) -> Result<Option<NmsOutput>, String> {
    let Some((_, args)) = model.metadata.iter().find(|(k, _)| k == "args") else {
        return Ok(None);
    };
    if !args.contains("'nms': True") {
        return Ok(None);
    }
    let max_det = match model.outputs.first().and_then(|o| o.dims.get(1)) {
        Some(Dim::Fixed(n)) if *n > 0 => *n as usize,
        _ => return Err("its output0 has no fixed number of rows (max_det)".into()),
    };
    let nms_nodes: Vec<_> = (model.nodes.iter())
        .filter(|n| n.op == "NonMaxSuppression")
        .collect();
    // The scalar constants that `Greater` nodes compare with, in order, without repeats: all of
    // them, or those comparing a value that a node in `within` computes.
    let compared = |within: Option<&[bool]>| {
        let mut found: Vec<f32> = Vec::new();
        for n in &model.nodes {
            let counts = |w: &[bool]| {
                let compared = n.inputs.first().map(String::as_str).unwrap_or_default();
                (model.nodes.iter().enumerate())
                    .any(|(j, p)| w[j] && p.outputs.iter().any(|o| o == compared))
            };
            if n.op != "Greater" || within.is_some_and(|w| !counts(w)) {
                continue;
            }
            if let Some(v) = n.inputs.get(1).and_then(|i| scalar(model, i))
                && !found.iter().any(|c| c.to_bits() == v.to_bits())
            {
                found.push(v);
            }
        }
        found
    };
    let (conf, iou) = match nms_nodes[..] {
        [n] => {
            let iou = (n.inputs.get(3).and_then(|i| scalar(model, i)))
                .ok_or("its NonMaxSuppression has no constant iou_threshold")?;
            // The score filter compares the candidates' scores, computed upstream of the NMS
            // (its mask may be applied before or after it): a Greater on values computed from
            // the NMS's result (the rows) is no threshold of it.
            let mut confs = compared(Some(&upstream(model, &n.inputs)));
            if let Some(v) = n.inputs.get(4).and_then(|i| scalar(model, i))
                && !confs.iter().any(|c| c.to_bits() == v.to_bits())
            {
                confs.push(v);
            }
            match confs[..] {
                [conf] => (conf, iou),
                [] => return Err("no constant score threshold was found".into()),
                _ => {
                    return Err(format!(
                        "its score threshold is ambiguous (constants {confs:?})"
                    ));
                }
            }
        }
        [] => {
            let all = compared(None);
            let named = |name: &str| scalar(model, name).filter(|v| all.contains(v));
            match (named("nms/conf"), named("nms/iou")) {
                (Some(conf), Some(iou)) => (conf, iou),
                _ => {
                    return Err(
                        "it has no NonMaxSuppression node and is not fuse-ema's rotated NMS \
                         (constants nms/conf, nms/iou), so its thresholds are unknown"
                            .into(),
                    );
                }
            }
        }
        _ => {
            return Err(format!(
                "it has {} NonMaxSuppression nodes",
                nms_nodes.len()
            ));
        }
    };
    for (what, v) in [("score", conf), ("IoU", iou)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("its {what} threshold {v} is not in [0, 1]"));
        }
    }
    Ok(Some(NmsOutput {
        nms: Nms {
            conf,
            iou,
            agnostic: false,
        },
        max_det,
        kpt_dim: None,
    }))
}

/// Which nodes of `model` compute (directly or not) any of `values`.
fn upstream(model: &Model, values: &[String]) -> Vec<bool> {
    let mut marked = vec![false; model.nodes.len()];
    let mut todo: Vec<&str> = values.iter().map(String::as_str).collect();
    while let Some(v) = todo.pop() {
        for (i, n) in model.nodes.iter().enumerate() {
            if !marked[i] && n.outputs.iter().any(|o| o == v) {
                marked[i] = true;
                todo.extend(n.inputs.iter().map(String::as_str));
            }
        }
    }
    marked
}

/// The value of `name` when it is a one-element float32 constant: an initializer or the output
/// of a `Constant` node.
fn scalar(model: &Model, name: &str) -> Option<f32> {
    if let Some(t) = model.initializers.iter().find(|t| t.name == name) {
        return match (t.elem, t.raw.as_slice()) {
            (ElemType::Float, [a, b, c, d]) => Some(f32::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        };
    }
    let node =
        (model.nodes.iter()).find(|n| n.op == "Constant" && n.outputs.iter().any(|o| o == name))?;
    node.attrs.iter().find_map(|(k, a)| match (k.as_str(), a) {
        ("value_float", Attr::Float(v)) => Some(*v),
        ("value_floats", Attr::Floats(v)) if v.len() == 1 => Some(v[0]),
        _ => None,
    })
}
