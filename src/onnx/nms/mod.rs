//! Non-maximum suppression inside the graph, as `yolo export nms=True` writes it (Ultralytics'
//! `NMSModel`): the head's (B, 4 + nc + extra, anchors) output becomes (B, max_det, 6 + extra)
//! rows `x1 y1 x2 y2 score class extra…`, best score first, zero rows after the last detection.
//!
//! Boxes go through the standard `NonMaxSuppression` operator (ONNX Runtime and TensorRT 10 run
//! it), one class, with each class moved to its own region as `NMSModel` does (boxes scaled by
//! 1 / max(H, W) / nc, plus class / nc) unless the NMS is class-agnostic. The reference
//! counterpart, written separately, is `crate::reference::nms`. Rotated boxes (OBB) need a
//! rotated IoU, which the operator lacks: `rotated.rs` builds `NMSModel`'s OBB path (fast NMS
//! with the probabilistic IoU) from plain operators.

mod rotated;

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
    pub fn check(&self, max_det: usize) -> Result<(), crate::onnx::ExportErrorKind> {
        use crate::onnx::ExportErrorKind;
        if !(0.0..=1.0).contains(&self.conf) {
            return Err(ExportErrorKind::Conf(self.conf));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return Err(ExportErrorKind::Iou(self.iou));
        }
        if !(1..=MAX_DET_LIMIT).contains(&max_det) {
            return Err(ExportErrorKind::MaxDet(max_det));
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

/// What the NMS gives and what is known of its input.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    /// Rows per image.
    pub max_det: usize,
    /// Rotated boxes (OBB): the angle is the one extra row.
    pub rotated: bool,
    /// The anchor count of a static input (`None` when dynamic): then every top-k size is a
    /// constant, as TensorRT prefers.
    pub anchors: Option<i64>,
}

/// Appends NMS to `pred`, a float32 (B, 4 + nc + extra, anchors) output with centre-size boxes
/// (rotated ones with the angle as the one extra row when `rows.rotated`), for the input
/// `images`; returns the float32 (B, max_det, 6 + extra) rows.
pub fn emit(
    b: &mut GraphBuilder,
    pred: &str,
    images: &str,
    layout: Layout,
    nms: &Nms,
    rows: Rows,
) -> String {
    let mut e = Emit {
        b,
        s: "nms",
        max_det: rows.max_det as i64,
        anchors: rows.anchors,
    };
    if rows.rotated {
        return rotated::emit(&mut e, pred, images, layout, nms);
    }
    e.axis_aligned(pred, images, layout, nms)
}

/// The NMS emission's state: the graph, the node scope, the rows per image.
struct Emit<'a> {
    b: &'a mut GraphBuilder,
    s: &'static str,
    max_det: i64,
    /// The static anchor count, when the input is static.
    anchors: Option<i64>,
}

impl Emit<'_> {
    fn f32c(&mut self, name: &str, v: f32) -> String {
        self.b.f32s(&format!("{}/{name}", self.s), &[v])
    }

    fn i64c(&mut self, name: &str, v: &[i64]) -> String {
        self.b.ints(&format!("{}/{name}", self.s), v)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.b.node(self.s, op, inputs, attrs)
    }

    fn bin(&mut self, op: &str, a: &str, b: &str) -> String {
        self.b.bin(self.s, op, a, b)
    }

    fn cast(&mut self, x: &str, to: i64) -> String {
        self.node("Cast", &[x], vec![("to", Attr::Int(to))])
    }

    /// Element `i` of the 1-D `x`, as a 1-element tensor.
    fn at(&mut self, x: &str, name: &str, i: i64) -> String {
        let idx = self.i64c(name, &[i]);
        self.node("Gather", &[x, &idx], vec![("axis", Attr::Int(0))])
    }

    /// (B, anchors, C) rows from the (B, C, anchors) head output, split into box (4), class
    /// scores (nc) and the extra rows (when any).
    fn rows(&mut self, pred: &str, nc: i64, extra: i64) -> Vec<String> {
        let perm = vec![("perm", Attr::Ints(vec![0, 2, 1]))];
        let t = self.node("Transpose", &[pred], perm);
        let sizes: Vec<i64> = [4, nc, extra].into_iter().filter(|&n| n > 0).collect();
        self.b.split(self.s, &t, 2, &sizes)
    }

    /// The best class's score (B, anchors, 1) and the class as a float (TopK takes the lowest
    /// index on ties, as torch.max does).
    fn best_class(&mut self, scores: &str) -> (String, String) {
        let one = self.i64c("k1", &[1]);
        let best = (self.b).node_n(
            self.s,
            "TopK",
            &[scores, &one],
            2,
            vec![("axis", Attr::Int(2))],
        );
        let cls = self.cast(&best[1], ElemType::Float as i64);
        (best[0].clone(), cls)
    }

    /// max(H, W) of the input, as a float (`NMSModel` scales the boxes it compares by it).
    fn input_scale(&mut self, images: &str) -> String {
        let shape = self.node("Shape", &[images], vec![]);
        let h = self.at(&shape, "h", 2);
        let w = self.at(&shape, "w", 3);
        let hw = self.bin("Max", &h, &w);
        self.cast(&hw, ElemType::Float as i64)
    }

    /// Rows `idx` (B, K) of `rows` (B, N, width): (B, K, width).
    fn gather(&mut self, rows: &str, idx: &str, width: i64) -> String {
        let col = self.b.reshape(self.s, idx, &[0, -1, 1]);
        let idx_shape = self.node("Shape", &[idx], vec![]);
        let width = self.i64c("width", &[width]);
        let expand_to = self.b.concat(self.s, &[&idx_shape, &width], 0);
        let col = self.node("Expand", &[&col, &expand_to], vec![]);
        let axis = vec![("axis", Attr::Int(1))];
        self.node("GatherElements", &[rows, &col], axis)
    }

    /// min(N, `cap`) for the (B, N) `key`, as a 1-element tensor: a constant when N is known
    /// (`n`, also returned), else from the key's shape.
    fn count(&mut self, key: &str, n: Option<i64>, cap: i64) -> (String, Option<i64>) {
        if let Some(n) = n {
            let k = n.min(cap);
            return (self.i64c("k", &[k]), Some(k));
        }
        let k_shape = self.node("Shape", &[key], vec![]);
        let n = self.at(&k_shape, "second", 1);
        let cap = self.i64c("cap", &[cap]);
        (self.bin("Min", &n, &cap), None)
    }

    /// The rows of `rows` (B, N, width) with the `max_det` largest `key` (B, N) values, largest
    /// first (N when known: `n`); rows whose key is not above `floor` become zero, and zero rows
    /// fill up to `max_det`.
    fn take(&mut self, rows: &str, key: &str, n: Option<i64>, floor: &str, width: i64) -> String {
        let (k, known) = self.count(key, n, self.max_det);
        let top = (self.b).node_n(self.s, "TopK", &[key, &k], 2, vec![("axis", Attr::Int(1))]);
        let picked = self.gather(rows, &top[1], width);
        let vals = self.b.reshape(self.s, &top[0], &[0, -1, 1]);
        let valid = self.bin("Greater", &vals, floor);
        let zero = self.f32c("zero", 0.0);
        let picked = self.node("Where", &[&valid, &picked, &zero], vec![]);
        let pads = match known {
            Some(k) => self.i64c("pads", &[0, 0, 0, 0, self.max_det - k, 0]),
            None => {
                let limit = self.i64c("max_det", &[self.max_det]);
                let missing = self.bin("Sub", &limit, &k);
                let before = self.i64c("pads_before", &[0, 0, 0, 0]);
                let after = self.i64c("pads_after", &[0]);
                self.b.concat(self.s, &[&before, &missing, &after], 0)
            }
        };
        self.node("Pad", &[&picked, &pads], vec![])
    }

    /// Detect, Segment, Pose: `NonMaxSuppression` on the corner boxes.
    fn axis_aligned(&mut self, pred: &str, images: &str, layout: Layout, nms: &Nms) -> String {
        let Layout { nc, extra } = layout;
        let parts = self.rows(pred, nc, extra);
        // Centre-size to corners (the head's `xyxy` output).
        let cw = self.b.split(self.s, &parts[0], 2, &[2, 2]);
        let two = self.f32c("two", 2.0);
        let half = self.bin("Div", &cw[1], &two);
        let lt = self.bin("Sub", &cw[0], &half);
        let rb = self.bin("Add", &cw[0], &half);
        let boxes = self.b.concat(self.s, &[&lt, &rb], 2);
        let (score, cls) = self.best_class(&parts[1]);
        // NMSModel's boxes: scaled by 1 / max(H, W) / nc, each class offset by class / nc.
        let hw = self.input_scale(images);
        let mult = self.f32c("multiplier", 1.0 / nc.max(1) as f32);
        let scaled = self.bin("Div", &boxes, &hw);
        let mut nms_boxes = self.bin("Mul", &scaled, &mult);
        if !nms.agnostic {
            let offset = self.bin("Mul", &cls, &mult);
            nms_boxes = self.bin("Add", &nms_boxes, &offset);
        }
        // torchvision's nms (what `NMSModel` runs in PyTorch) gives a box with x2 < x1 or y2 < y1
        // no overlap with anything; NonMaxSuppression would reorder its corners. Heads without
        // DFL predict such boxes, so they are collapsed to zero width or height, which overlaps
        // nothing under both.
        let nb = self.b.split(self.s, &nms_boxes, 2, &[2, 2]);
        let far = self.bin("Max", &nb[1], &nb[0]);
        let nms_boxes = self.b.concat(self.s, &[&nb[0], &far], 2);
        let perm = vec![("perm", Attr::Ints(vec![0, 2, 1]))];
        let scores = self.node("Transpose", &[&score], perm);
        let limit = self.i64c("max_det", &[self.max_det]);
        let (iou, conf) = (self.f32c("iou", nms.iou), self.f32c("conf", nms.conf));
        let selected = self.node(
            "NonMaxSuppression",
            &[&nms_boxes, &scores, &limit, &iou, &conf],
            vec![],
        );
        // Kept anchors as a (B, anchors, 1) mask: ScatterND of ones at (batch, box).
        let cols = self.i64c("batch_box", &[0, 2]);
        let at = self.node("Gather", &[&selected, &cols], vec![("axis", Attr::Int(1))]);
        let sel_shape = self.node("Shape", &[&selected], vec![]);
        let count = self.at(&sel_shape, "first", 0);
        let one_col = self.i64c("one_col", &[1]);
        let ones_shape = self.b.concat(self.s, &[&count, &one_col], 0);
        let zeros_k = self.node("ConstantOfShape", &[&ones_shape], vec![]);
        let onef = self.f32c("one", 1.0);
        let ones = self.bin("Add", &zeros_k, &onef);
        let score_shape = self.node("Shape", &[&score], vec![]);
        let zeros = self.node("ConstantOfShape", &[&score_shape], vec![]);
        let kept = self.node("ScatterND", &[&zeros, &at, &ones], vec![]);
        let kept = self.cast(&kept, BOOL);
        // The confidence test is applied here whatever the runtime's score_threshold semantics.
        let above = self.bin("Greater", &score, &conf);
        let keep = self.bin("And", &kept, &above);
        let minus = self.f32c("minus_one", -1.0);
        let key = self.node("Where", &[&keep, &score, &minus], vec![]);
        let key = self.b.reshape(self.s, &key, &[0, -1]);
        let mut columns = vec![boxes.as_str(), score.as_str(), cls.as_str()];
        if extra > 0 {
            columns.push(&parts[2]);
        }
        let rows = self.b.concat(self.s, &columns, 2);
        self.take(&rows, &key, self.anchors, &conf, 6 + extra)
    }
}

/// `TensorProto.DataType` BOOL.
const BOOL: i64 = 9;
