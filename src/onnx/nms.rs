//! Non-maximum suppression inside the graph, as `yolo export nms=True` writes it (Ultralytics'
//! `NMSModel`): the head's (B, 4 + nc + extra, anchors) output becomes (B, max_det, 6 + extra)
//! rows `x1 y1 x2 y2 score class extra…`, best score first, zero rows after the last detection.
//!
//! Boxes go through the standard `NonMaxSuppression` operator (ONNX Runtime and TensorRT 10 run
//! it), one class, with each class moved to its own region as `NMSModel` does (boxes scaled by
//! 1 / max(H, W) / nc, plus class / nc) unless the NMS is class-agnostic. The reference
//! counterpart, written separately, is `crate::reference::nms`.

use super::graph::GraphBuilder;
use super::proto::{Attr, ElemType};

/// What `--nms` asks for (Ultralytics' `conf`, `iou`, `agnostic_nms`; `max_det` is
/// [`super::ExportOptions::max_det`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nms {
    /// Detections need a best-class score above this.
    pub conf: f32,
    /// A box overlapping a better one by more than this IoU is suppressed.
    pub iou: f32,
    /// One NMS over all classes instead of one per class.
    pub agnostic: bool,
}

impl Nms {
    /// Ultralytics' defaults for an NMS export (`conf` 0.25, `iou` 0.7, per class).
    pub const DEFAULT: Nms = Nms {
        conf: 0.25,
        iou: 0.7,
        agnostic: false,
    };

    /// Refuses thresholds outside [0, 1] (`NonMaxSuppression` rejects such an IoU) and NaN.
    pub fn check(&self, max_det: usize) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.conf) {
            return Err(format!("--conf {} is not in [0, 1]", self.conf));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return Err(format!("--iou {} is not in [0, 1]", self.iou));
        }
        if !(1..=MAX_DET_LIMIT).contains(&max_det) {
            return Err(format!("--max-det {max_det} is not in 1..={MAX_DET_LIMIT}"));
        }
        Ok(())
    }
}

/// The largest `--max-det`: the rows are a dense output, so it bounds the output's size.
pub const MAX_DET_LIMIT: usize = 100_000;

/// The head output's layout, as the NMS reads it.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Class count (score rows after the four box rows).
    pub nc: i64,
    /// Rows after the scores (mask coefficients, keypoints).
    pub extra: i64,
}

/// Appends NMS to `pred`, a float32 (B, 4 + nc + extra, anchors) output with centre-size boxes,
/// for the input `images`; returns the float32 (B, max_det, 6 + extra) rows.
pub fn emit(
    b: &mut GraphBuilder,
    pred: &str,
    images: &str,
    layout: Layout,
    nms: &Nms,
    max_det: usize,
) -> String {
    let s = "nms";
    let Layout { nc, extra } = layout;
    let max_det = max_det as i64;
    let f32c = |b: &mut GraphBuilder, name: &str, v: f32| b.f32s(&format!("{s}/{name}"), &[v]);
    let i64c = |b: &mut GraphBuilder, name: &str, v: &[i64]| b.ints(&format!("{s}/{name}"), v);
    let t = b.node(
        s,
        "Transpose",
        &[pred],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    let sizes: Vec<i64> = [4, nc, extra].into_iter().filter(|&n| n > 0).collect();
    let parts = b.split(s, &t, 2, &sizes);
    // Centre-size to corners (the head's `xyxy` output).
    let cw = b.split(s, &parts[0], 2, &[2, 2]);
    let two = f32c(b, "two", 2.0);
    let half = b.bin(s, "Div", &cw[1], &two);
    let lt = b.bin(s, "Sub", &cw[0], &half);
    let rb = b.bin(s, "Add", &cw[0], &half);
    let boxes = b.concat(s, &[&lt, &rb], 2);
    // Best class and its score (TopK takes the lowest index on ties, as torch.max does).
    let one = i64c(b, "k1", &[1]);
    let best = b.node_n(
        s,
        "TopK",
        &[&parts[1], &one],
        2,
        vec![("axis", Attr::Int(2))],
    );
    let score = best[0].clone();
    let cls = b.node(
        s,
        "Cast",
        &[&best[1]],
        vec![("to", Attr::Int(ElemType::Float as i64))],
    );
    // NMSModel's boxes: scaled by 1 / max(H, W) / nc, each class offset by class / nc.
    let shape = b.node(s, "Shape", &[images], vec![]);
    let (ih, iw) = (i64c(b, "h", &[2]), i64c(b, "w", &[3]));
    let h = b.node(s, "Gather", &[&shape, &ih], vec![("axis", Attr::Int(0))]);
    let w = b.node(s, "Gather", &[&shape, &iw], vec![("axis", Attr::Int(0))]);
    let hw = b.bin(s, "Max", &h, &w);
    let hw = b.node(
        s,
        "Cast",
        &[&hw],
        vec![("to", Attr::Int(ElemType::Float as i64))],
    );
    let mult = f32c(b, "multiplier", 1.0 / nc.max(1) as f32);
    let scaled = b.bin(s, "Div", &boxes, &hw);
    let mut nms_boxes = b.bin(s, "Mul", &scaled, &mult);
    if !nms.agnostic {
        let offset = b.bin(s, "Mul", &cls, &mult);
        nms_boxes = b.bin(s, "Add", &nms_boxes, &offset);
    }
    // torchvision's nms (what `NMSModel` runs in PyTorch) gives a box with x2 < x1 or y2 < y1 no
    // overlap with anything; NonMaxSuppression would reorder its corners. Heads without DFL
    // predict such boxes, so they are collapsed to zero width or height, which overlaps nothing
    // under both.
    let nb = b.split(s, &nms_boxes, 2, &[2, 2]);
    let far = b.bin(s, "Max", &nb[1], &nb[0]);
    let nms_boxes = b.concat(s, &[&nb[0], &far], 2);
    let scores = b.node(
        s,
        "Transpose",
        &[&score],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    let (limit, iou, conf) = (
        i64c(b, "max_det", &[max_det]),
        f32c(b, "iou", nms.iou),
        f32c(b, "conf", nms.conf),
    );
    let selected = b.node(
        s,
        "NonMaxSuppression",
        &[&nms_boxes, &scores, &limit, &iou, &conf],
        vec![],
    );
    // Kept anchors as a (B, anchors, 1) mask: ScatterND of ones at (batch, box).
    let cols = i64c(b, "batch_box", &[0, 2]);
    let at = b.node(
        s,
        "Gather",
        &[&selected, &cols],
        vec![("axis", Attr::Int(1))],
    );
    let sel_shape = b.node(s, "Shape", &[&selected], vec![]);
    let first = i64c(b, "first", &[0]);
    let count = b.node(
        s,
        "Gather",
        &[&sel_shape, &first],
        vec![("axis", Attr::Int(0))],
    );
    let one_col = i64c(b, "one_col", &[1]);
    let ones_shape = b.concat(s, &[&count, &one_col], 0);
    let zeros_k = b.node(s, "ConstantOfShape", &[&ones_shape], vec![]);
    let onef = f32c(b, "one", 1.0);
    let ones = b.bin(s, "Add", &zeros_k, &onef);
    let score_shape = b.node(s, "Shape", &[&score], vec![]);
    let zeros = b.node(s, "ConstantOfShape", &[&score_shape], vec![]);
    let kept = b.node(s, "ScatterND", &[&zeros, &at, &ones], vec![]);
    let kept = b.node(
        s,
        "Cast",
        &[&kept],
        vec![("to", Attr::Int(9))], // bool
    );
    // The confidence test is applied here whatever the runtime's score_threshold semantics.
    let above = b.bin(s, "Greater", &score, &conf);
    let keep = b.bin(s, "And", &kept, &above);
    let minus = f32c(b, "minus_one", -1.0);
    let masked = b.node(s, "Where", &[&keep, &score, &minus], vec![]);
    let masked = b.reshape(s, &masked, &[0, -1]);
    // The best min(max_det, anchors) rows, best first.
    let m_shape = b.node(s, "Shape", &[&masked], vec![]);
    let second = i64c(b, "second", &[1]);
    let anchors = b.node(
        s,
        "Gather",
        &[&m_shape, &second],
        vec![("axis", Attr::Int(0))],
    );
    let k = b.bin(s, "Min", &anchors, &limit);
    let top = b.node_n(s, "TopK", &[&masked, &k], 2, vec![("axis", Attr::Int(1))]);
    let mut columns = vec![boxes.as_str(), score.as_str(), cls.as_str()];
    if extra > 0 {
        columns.push(&parts[2]);
    }
    let rows = b.concat(s, &columns, 2);
    let idx = b.reshape(s, &top[1], &[0, -1, 1]);
    let idx_shape = b.node(s, "Shape", &[&top[1]], vec![]);
    let width = i64c(b, "width", &[6 + extra]);
    let expand_to = b.concat(s, &[&idx_shape, &width], 0);
    let idx = b.node(s, "Expand", &[&idx, &expand_to], vec![]);
    let rows = b.node(
        s,
        "GatherElements",
        &[&rows, &idx],
        vec![("axis", Attr::Int(1))],
    );
    let vals = b.reshape(s, &top[0], &[0, -1, 1]);
    let valid = b.bin(s, "Greater", &vals, &conf);
    let zero = f32c(b, "zero", 0.0);
    let rows = b.node(s, "Where", &[&valid, &rows, &zero], vec![]);
    // Zero rows up to max_det.
    let missing = b.bin(s, "Sub", &limit, &k);
    let (before, after) = (
        i64c(b, "pads_before", &[0, 0, 0, 0]),
        i64c(b, "pads_after", &[0]),
    );
    let pads = b.concat(s, &[&before, &missing, &after], 0);
    b.node(s, "Pad", &[&rows, &pads], vec![])
}
