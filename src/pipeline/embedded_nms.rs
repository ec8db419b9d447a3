//! The NMS an ONNX embeds, read from the graph `verify` is given: its confidence and IoU
//! thresholds and its rows per image. Ultralytics' metadata does not record the thresholds
//! (`yolo export nms=True conf=0.1` bakes 0.1 into the graph and says only `'nms': True`), so
//! assuming its defaults judged an export made at conf 0.001 against an NMS at 0.25 (review 6).
//! Where the graph does not say them unambiguously `verify` refuses to judge the rows: the
//! verdict must not rest on what this reader thinks the graph does where ONNX Runtime would do
//! something else (review 7: a threshold behind an `Identity`, a second filter after the NMS,
//! a per-class cap of 2 boxes or centre-format boxes all passed).

use crate::onnx::nms::Nms;
use crate::onnx::proto::{Attr, Dim, Model, Node};
use crate::parity::NmsOutput;

#[path = "embedded_nms_fold.rs"]
mod fold;
#[path = "embedded_nms_shapes.rs"]
mod shapes;

/// The comparisons a score filter can be written with (either operand order).
const COMPARISONS: [&str; 4] = ["Greater", "Less", "GreaterOrEqual", "LessOrEqual"];

/// The NMS `model` embeds: `Ok(None)` when its metadata (`args` with `'nms': True`, as
/// `yolo export nms=True` and `--nms` write) says it has none; an error saying what could not
/// be determined when it has one whose parameters the graph does not give exactly.
///
/// - With one `NonMaxSuppression` node (every detection NMS either exporter writes): the IoU
///   threshold is its `iou_threshold` input; the confidence threshold is the one value every
///   comparison in the graph (`Greater`, `Less`, `GreaterOrEqual`, `LessOrEqual`, before or
///   after the NMS) compares with and, where given, the node's `score_threshold` — these must
///   agree. Each is a constant folded through `Identity`, `Cast`, `Reshape`, `Squeeze`,
///   `Unsqueeze` and `Expand`; a comparison of two computed values is refused. Its
///   `max_output_boxes_per_class` must be at least the rows per image (the reference caps
///   nothing per class) and its `center_point_box` 0 (corner boxes, as the reference reads
///   them); every `Where` must select on those comparisons (or on the NMS's keep mask).
/// - Without one (fuse-ema's rotated NMS for OBB, built from plain operators): the constants
///   `nms/conf` and `nms/iou` that its `Greater` nodes compare with; no comparison may use
///   another constant but 0.
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
    // Control flow hides a subgraph this reader does not look into.
    if let Some(n) = (model.nodes.iter()).find(|n| matches!(n.op.as_str(), "If" | "Loop" | "Scan"))
    {
        return Err(format!("it has a {} node ('{}')", n.op, n.name));
    }
    let nms_nodes: Vec<_> = (model.nodes.iter())
        .filter(|n| n.op == "NonMaxSuppression")
        .collect();
    let (conf, iou) = match nms_nodes[..] {
        [n] => {
            let iou = (n.inputs.get(3).and_then(|i| fold::uniform(model, i)))
                .ok_or("its NonMaxSuppression has no constant iou_threshold")?;
            per_class_cap(model, n, max_det)?;
            let mut confs = Vec::new();
            for (v, _) in compared(model, true)? {
                push_new(&mut confs, v);
            }
            if let Some(i) = n.inputs.get(4).filter(|i| !i.is_empty()) {
                let v = fold::uniform(model, i)
                    .ok_or("its NonMaxSuppression's score_threshold is not a constant")?;
                // The NMS's own threshold is the float32 one (it takes only float32).
                confs.retain(|c| !agree(*c, v));
                confs.insert(0, v);
            }
            wheres(model)?;
            match confs[..] {
                [conf] => (conf, iou),
                [] => return Err("no constant score threshold was found".into()),
                _ => {
                    let shown: Vec<f32> = confs.iter().map(|&c| c as f32).collect();
                    return Err(format!(
                        "its score threshold is ambiguous (constants {shown:?})"
                    ));
                }
            }
        }
        [] => {
            let all: Vec<f64> = compared(model, false)?
                .into_iter()
                .map(|(v, _)| v)
                .collect();
            let named = |name: &str| {
                fold::uniform(model, name).filter(|v| all.iter().any(|a| agree(*a, *v)))
            };
            let (Some(conf), Some(iou)) = (named("nms/conf"), named("nms/iou")) else {
                return Err(
                    "it has no NonMaxSuppression node and is not fuse-ema's rotated NMS \
                     (constants nms/conf, nms/iou), so its thresholds are unknown"
                        .into(),
                );
            };
            if let Some(v) = all
                .iter()
                .find(|&&v| !(agree(v, conf) || agree(v, iou) || v == 0.0))
            {
                return Err(format!(
                    "a comparison uses the constant {}, neither its score threshold {} nor its IoU threshold {}",
                    *v as f32, conf as f32, iou as f32
                ));
            }
            (conf, iou)
        }
        _ => {
            return Err(format!(
                "it has {} NonMaxSuppression nodes",
                nms_nodes.len()
            ));
        }
    };
    let (conf, iou) = (conf as f32, iou as f32);
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

/// The NonMaxSuppression's parameters the reference does not take: its per-class cap must not
/// bind (at least `max_det`; ONNX's default 0 keeps nothing) and its boxes must be corners.
fn per_class_cap(model: &Model, n: &Node, max_det: usize) -> Result<(), String> {
    let cap = (n.inputs.get(2).and_then(|i| fold::uniform(model, i)))
        .ok_or("its NonMaxSuppression has no constant max_output_boxes_per_class")?;
    if cap < max_det as f64 {
        return Err(format!(
            "its NonMaxSuppression keeps at most {cap} boxes per class (max_output_boxes_per_class), \
             fewer than its {max_det} rows, a cap the reference does not apply"
        ));
    }
    for (k, a) in &n.attrs {
        match (k.as_str(), a) {
            ("center_point_box", Attr::Int(0)) => {}
            ("center_point_box", _) => {
                return Err(
                    "its NonMaxSuppression reads boxes as centre, width, height \
                     (center_point_box), which the reference does not"
                        .into(),
                );
            }
            (other, _) => {
                return Err(format!(
                    "its NonMaxSuppression has the unknown attribute '{other}'"
                ));
            }
        }
    }
    Ok(())
}

/// The constant every comparison node compares a computed value with, in graph order, with its
/// node. A comparison of two computed values is an error when `strict` (it is no threshold this
/// reader can read), skipped otherwise (the rotated NMS orders candidates that way); one of two
/// constants is a constant itself and ignored.
fn compared(model: &Model, strict: bool) -> Result<Vec<(f64, &Node)>, String> {
    let mut found = Vec::new();
    for n in (model.nodes.iter()).filter(|n| COMPARISONS.contains(&n.op.as_str())) {
        let side = |i: usize| n.inputs.get(i).and_then(|v| fold::constant(model, v));
        let c = match (side(0), side(1)) {
            (Some(_), Some(_)) => continue,
            (None, None) if !strict => continue,
            (None, None) => {
                return Err(format!(
                    "its {} node '{}' compares two computed values, so its threshold cannot be read",
                    n.op, n.name
                ));
            }
            (Some(c), None) | (None, Some(c)) => c,
        };
        if strict {
            scores_above(model, n)?;
        }
        match c.first() {
            Some(&v) if c.iter().all(|x| x.to_bits() == v.to_bits()) => found.push((v, n)),
            _ => {
                return Err(format!(
                    "its {} node '{}' compares with a constant that is not one value",
                    n.op, n.name
                ));
            }
        }
    }
    Ok(found)
}

/// Operators a score passes through unchanged in value (or padded) on its way from the head to a
/// comparison (selection, layout, sorting); anything else computes a new value.
const SELECTIONS: [&str; 17] = [
    "Identity",
    "Pad",
    "Cast",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Expand",
    "TopK",
    "ReduceMax",
    "Gather",
    "GatherElements",
    "GatherND",
    "Slice",
    "Split",
    "Transpose",
    "Where",
];

/// A comparison with the score threshold must keep the scores above it, as the exporters'
/// `score > conf` does: `Greater(score, c)` / `Less(c, score)` (or the `OrEqual` forms). The
/// other direction is an upper bound, not a threshold (review 8 G7/G14: `Less(score, c)` with
/// c hidden or the score shifted dropped every confident detection). And what is compared must
/// be the scores themselves: traced back through selections only (to the head's `Concat` or
/// `Sigmoid`), so `Greater(Sub(score, 0.7), 0.25)` is refused.
fn scores_above(model: &Model, n: &Node) -> Result<(), String> {
    let score = match (n.op.as_str(), n.inputs.as_slice()) {
        ("Greater" | "GreaterOrEqual", [s, c]) | ("Less" | "LessOrEqual", [c, s])
            if fold::constant(model, c).is_some() =>
        {
            s
        }
        _ => {
            return Err(format!(
                "its {} node '{}' keeps scores below its constant: an upper bound, not the exporter's score threshold",
                n.op, n.name
            ));
        }
    };
    selected(model, score).map_err(|(v, what)| {
        format!(
            "its {} node '{}' compares '{v}', computed by {what}, not the scores themselves",
            n.op, n.name
        )
    })
}

/// Whether `v` is the head's values (`Concat` or `Sigmoid` output) through [`SELECTIONS`] only;
/// otherwise the value and what computes it. Each value is visited once.
fn selected(model: &Model, v: &str) -> Result<(), (String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        if !seen.insert(v) || fold::constant(model, v).is_some() {
            continue;
        }
        let p = (model.nodes.iter()).find(|p| p.outputs.iter().any(|o| o == v));
        match p {
            _ if seen.len() > 64 => return Err((v.into(), "too long a chain".into())),
            Some(p) if matches!(p.op.as_str(), "Concat" | "Sigmoid") => {}
            Some(p) if p.op == "Where" => todo.extend(p.inputs.iter().skip(1).map(String::as_str)),
            Some(p) if SELECTIONS.contains(&p.op.as_str()) => {
                todo.extend(p.inputs.first().map(String::as_str));
            }
            _ => {
                let what = p.map_or("no node".to_string(), |p| format!("a {} node", p.op));
                return Err((v.into(), what));
            }
        }
    }
    Ok(())
}

/// Every `Where` selects on the comparisons [`compared`] judged (or an `Equal` of shapes), combined with
/// `And`, `Or`, `Not`, `Xor`, a constant, or the NMS's keep mask (`Cast` to bool of a `ScatterND` of the
/// kept indices): a condition computed otherwise could filter rows at a threshold no comparison
/// shows.
fn wheres(model: &Model) -> Result<(), String> {
    for w in model.nodes.iter().filter(|n| n.op == "Where") {
        let mut todo: Vec<(&str, usize)> = w
            .inputs
            .first()
            .map(|c| (c.as_str(), 0))
            .into_iter()
            .collect();
        while let Some((v, depth)) = todo.pop() {
            if fold::constant(model, v).is_some() {
                continue;
            }
            let producer = (model.nodes.iter()).find(|n| n.outputs.iter().any(|o| o == v));
            let ok = match producer {
                _ if depth > 8 => false,
                Some(p) if COMPARISONS.contains(&p.op.as_str()) => true,
                // `Equal` of shapes (torch's exports test a shape for -1), never of scores:
                // `Equal(Floor(score * 20), 19)` is a threshold no comparison shows (review 8 G13),
                // and nor of a shape the data decides (`NonZero`'s, review 9).
                // … or of the scores with 0 (padding rows).
                Some(p) if p.op == "Equal" => {
                    p.inputs.iter().all(|i| shapes::static_value(model, i))
                        || shapes::never_true(model, p)
                        || padding(model, p)
                }
                Some(p) if matches!(p.op.as_str(), "And" | "Or" | "Not" | "Xor" | "Identity") => {
                    todo.extend(p.inputs.iter().map(|i| (i.as_str(), depth + 1)));
                    true
                }
                Some(p) if p.op == "Cast" => {
                    let to_bool =
                        (p.attrs.iter()).any(|(k, a)| k == "to" && matches!(a, Attr::Int(9)));
                    let from = p.inputs.first().map(String::as_str).unwrap_or_default();
                    to_bool
                        && (model.nodes.iter()).any(|s| {
                            s.op == "ScatterND"
                                && s.outputs.iter().any(|o| o == from)
                                && keep_mask(model, s)
                        })
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "its Where node '{}' selects on '{v}', which is no comparison with its score threshold",
                    w.name
                ));
            }
        }
    }
    Ok(())
}

/// Whether `s` (a `ScatterND`) is the NMS's keep mask as an NMS export builds it: [`zeros`]
/// with values computed from shapes and constants alone, scattered at indices that are the
/// `NonMaxSuppression`'s selected triples moved only by indexing at constant or shape-only
/// positions. Anything else lets the mask hide a filter: values such as `Floor(score · 1.05)`
/// keep only the rows where they are not zero, indices from a `TopK` keep the rows it picks
/// (review 9).
fn keep_mask(model: &Model, s: &Node) -> bool {
    let [data, at, values] = s.inputs.as_slice() else {
        return false;
    };
    zeros(model, data) && shape_only(model, values) && from_nms(model, at)
}

/// Whether `v` is zeros: a constant of zeros, or a `ConstantOfShape`. The reader does not keep
/// a `ConstantOfShape`'s tensor `value`, so one filled with ones passes here; such a mask keeps
/// the rows the NMS suppressed, which the tail check run (`nms_tail.rs`) shows as extra rows.
fn zeros(model: &Model, v: &str) -> bool {
    if let Some(c) = fold::constant(model, v) {
        return c.iter().all(|&x| x == 0.0);
    }
    (model.nodes.iter()).any(|p| p.op == "ConstantOfShape" && p.outputs.iter().any(|o| o == v))
}

/// Whether every value `v` is computed from is a `NonMaxSuppression` output or a constant,
/// through indexing operators whose other inputs (positions, shapes, axes) are shape-only.
fn from_nms(model: &Model, v: &str) -> bool {
    shapes::walk(model, v, 64, |p| match p.op.as_str() {
        "NonMaxSuppression" => Some(&[][..]),
        "Concat" => Some(&p.inputs[..]),
        "Gather" | "Slice" | "Reshape" | "Squeeze" | "Unsqueeze" | "Cast" | "Identity"
        | "Transpose"
            if p.inputs.iter().skip(1).all(|i| shape_only(model, i)) =>
        {
            Some(p.inputs.get(..1).unwrap_or_default())
        }
        _ => None,
    })
}

/// `Equal(x, 0)` (either order) with `x` the scores themselves: picks out padding rows.
fn padding(model: &Model, eq: &Node) -> bool {
    let zero = |v: &str| fold::constant(model, v).is_some_and(|c| c.iter().all(|&x| x == 0.0));
    match eq.inputs.as_slice() {
        [a, b] if zero(b) => selected(model, a).is_ok(),
        [a, b] if zero(a) => selected(model, b).is_ok(),
        _ => false,
    }
}

/// Whether `v` is computed from constants and tensor shapes only (`Shape`, `Size`,
/// `ConstantOfShape`), whatever the operators in between.
fn shape_only(model: &Model, v: &str) -> bool {
    shapes::walk(model, v, 256, |p| match p.op.as_str() {
        "Shape" | "Size" | "ConstantOfShape" => Some(&[][..]),
        _ => Some(&p.inputs[..]),
    })
}

/// Two thresholds that are the same number, or the same in float16 where one of them is a
/// float16 number (an f16 model's filter compares with the f16 rounding of the NMS's f32
/// threshold).
fn agree(a: f64, b: f64) -> bool {
    let h = |x: f64| half::f16::from_f64(x).to_f64();
    a == b || ((h(a) == a || h(b) == b) && h(a) == h(b))
}

fn push_new(found: &mut Vec<f64>, v: f64) {
    if !found.iter().any(|c| agree(*c, v)) {
        found.push(v);
    }
}
