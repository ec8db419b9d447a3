//! NMS of rotated boxes (OBB), as `NMSModel` exports it to ONNX: the best class's score is
//! zeroed below the confidence threshold (not dropped), the `5 · max_det` best anchors are
//! candidates, and "fast NMS" keeps a candidate unless an earlier (higher-scoring) candidate
//! overlaps it by more than the IoU threshold — earlier ones count whether or not they were
//! kept themselves. The overlap is the probabilistic IoU of the boxes as Gaussians (Ultralytics'
//! `batch_probiou`), on boxes scaled by 8 / max(H, W) with each class moved by 8 · class unless
//! agnostic. Every operator is a plain one (no `Trilu`, so opset 13 works too).

use super::{Emit, Layout, Nms};
use crate::onnx::proto::{Attr, ElemType};

/// `batch_probiou`'s epsilon.
const EPS: f32 = 1e-7;

/// Appends rotated NMS to `pred` (B, 4 + nc + 1, anchors): rows (B, max_det, 7) of
/// `cx cy w h score class angle`.
pub(super) fn emit(e: &mut Emit, pred: &str, images: &str, layout: Layout, nms: &Nms) -> String {
    let Layout { nc, extra } = layout;
    let parts = e.rows(pred, nc, extra);
    let (score, cls) = e.best_class(&parts[1]);
    let conf = e.f32c("conf", nms.conf);
    let above = e.bin("Greater", &score, &conf);
    let zero = e.f32c("zero", 0.0);
    let masked = e.node("Where", &[&above, &score, &zero], vec![]);
    let mut columns = vec![parts[0].as_str(), masked.as_str(), cls.as_str()];
    if extra > 0 {
        columns.push(&parts[2]);
    }
    let rows = e.b.concat(e.s, &columns, 2);
    let width = 6 + extra;
    // The 5 · max_det best anchors, best first.
    let key = e.b.reshape(e.s, &masked, &[0, -1]);
    let (k, known) = e.count(&key, e.anchors, 5 * e.max_det);
    let top = (e.b).node_n(e.s, "TopK", &[&key, &k], 2, vec![("axis", Attr::Int(1))]);
    let cand = e.gather(&rows, &top[1], width);
    let iou = probiou_matrix(e, &cand, images, nms.agnostic);
    // Fast NMS: candidate j goes when an earlier i overlaps it by more than the threshold.
    let k_scalar = match known {
        Some(n) => e.b.int_scalar(e.s, n),
        None => e.b.reshape(e.s, &k, &[]),
    };
    let (start, step) = (e.b.int_scalar(e.s, 0), e.b.int_scalar(e.s, 1));
    let pos = e.node("Range", &[&start, &k_scalar, &step], vec![]);
    let rowi = e.b.reshape(e.s, &pos, &[-1, 1]);
    let coli = e.b.reshape(e.s, &pos, &[1, -1]);
    let upper = e.bin("Less", &rowi, &coli);
    let thr = e.f32c("iou", nms.iou);
    let over = e.bin("Greater", &iou, &thr);
    let suppressing = e.bin("And", &over, &upper);
    let count = e.cast(&suppressing, ElemType::Float as i64);
    let axis = e.i64c("rows_axis", &[1]);
    let count = e.node(
        "ReduceSum",
        &[&count, &axis],
        vec![("keepdims", Attr::Int(0))],
    );
    let suppressed = e.bin("Greater", &count, &zero);
    let kept = e.node("Not", &[&suppressed], vec![]);
    // Kept candidates in their order: the key counts down from K at the first.
    let posf = e.cast(&pos, ElemType::Float as i64);
    let kf = e.cast(&k, ElemType::Float as i64);
    let rank = e.bin("Sub", &kf, &posf);
    let minus = e.f32c("minus_one", -1.0);
    let order = e.node("Where", &[&kept, &rank, &minus], vec![]);
    e.take(&cand, &order, known, &zero, width)
}

/// The (B, K, K) probabilistic IoU between the candidates `cand` (B, K, 7: cx cy w h score class
/// angle), computed as `batch_probiou` does, term by term.
fn probiou_matrix(e: &mut Emit, cand: &str, images: &str, agnostic: bool) -> String {
    let c = e.b.split(e.s, cand, 2, &[2, 2, 1, 1, 1]);
    let (xy, wh, cls, theta) = (&c[0], &c[1], &c[3], &c[4]);
    let hw = e.input_scale(images);
    let eight = e.f32c("obb_multiplier", 8.0);
    let xy = e.bin("Div", xy, &hw);
    let mut xy = e.bin("Mul", &xy, &eight);
    if !agnostic {
        let offset = e.bin("Mul", cls, &eight);
        xy = e.bin("Add", &xy, &offset);
    }
    let wh = e.bin("Div", wh, &hw);
    let wh = e.bin("Mul", &wh, &eight);
    // Covariance [[a, c], [c, b]] of each box as a Gaussian.
    let sq = e.bin("Mul", &wh, &wh);
    let twelve = e.f32c("twelve", 12.0);
    let g = e.bin("Div", &sq, &twelve);
    let g = e.b.split(e.s, &g, 2, &[1, 1]);
    let (cos, sin) = (
        e.node("Cos", &[theta], vec![]),
        e.node("Sin", &[theta], vec![]),
    );
    let cos2 = e.bin("Mul", &cos, &cos);
    let sin2 = e.bin("Mul", &sin, &sin);
    let (ac, bs) = (e.bin("Mul", &g[0], &cos2), e.bin("Mul", &g[1], &sin2));
    let a = e.bin("Add", &ac, &bs);
    let (as_, bc) = (e.bin("Mul", &g[0], &sin2), e.bin("Mul", &g[1], &cos2));
    let b = e.bin("Add", &as_, &bc);
    let d = e.bin("Sub", &g[0], &g[1]);
    let dc = e.bin("Mul", &d, &cos);
    let cc = e.bin("Mul", &dc, &sin);
    let xy = e.b.split(e.s, &xy, 2, &[1, 1]);
    // Rows i (B, K, 1) against columns j (B, 1, K).
    let col = |e: &mut Emit, v: &str| {
        let perm = vec![("perm", Attr::Ints(vec![0, 2, 1]))];
        e.node("Transpose", &[v], perm)
    };
    let (x2, y2, a2, b2, c2) = (
        col(e, &xy[0]),
        col(e, &xy[1]),
        col(e, &a),
        col(e, &b),
        col(e, &cc),
    );
    let (x1, y1) = (&xy[0], &xy[1]);
    let sa = e.bin("Add", &a, &a2);
    let sb = e.bin("Add", &b, &b2);
    let sc = e.bin("Add", &cc, &c2);
    let dy = e.bin("Sub", y1, &y2);
    let dx = e.bin("Sub", x1, &x2);
    let ab = e.bin("Mul", &sa, &sb);
    let c_sq = e.bin("Mul", &sc, &sc);
    let det = e.bin("Sub", &ab, &c_sq);
    let eps = e.f32c("eps", EPS);
    let den = e.bin("Add", &det, &eps);
    // t1 = ((a1 + a2)·(y1 − y2)² + (b1 + b2)·(x1 − x2)²) / den · 0.25
    let dy2 = e.bin("Mul", &dy, &dy);
    let dx2 = e.bin("Mul", &dx, &dx);
    let p = e.bin("Mul", &sa, &dy2);
    let q = e.bin("Mul", &sb, &dx2);
    let t1 = e.bin("Add", &p, &q);
    let t1 = e.bin("Div", &t1, &den);
    let quarter = e.f32c("quarter", 0.25);
    let t1 = e.bin("Mul", &t1, &quarter);
    // t2 = ((c1 + c2)·(x2 − x1)·(y1 − y2)) / den · 0.5
    let rdx = e.bin("Sub", &x2, x1);
    let t2 = e.bin("Mul", &sc, &rdx);
    let t2 = e.bin("Mul", &t2, &dy);
    let t2 = e.bin("Div", &t2, &den);
    let half = e.f32c("half", 0.5);
    let t2 = e.bin("Mul", &t2, &half);
    // t3 = log(det / (4·sqrt(max(a1·b1 − c1², 0) · max(a2·b2 − c2², 0)) + eps) + eps) · 0.5
    let own_ab = e.bin("Mul", &a, &b);
    let own_c = e.bin("Mul", &cc, &cc);
    let own = e.bin("Sub", &own_ab, &own_c);
    let zero = e.f32c("zero_det", 0.0);
    let own = e.bin("Max", &own, &zero);
    let own2 = col(e, &own);
    let prod = e.bin("Mul", &own, &own2);
    let root = e.node("Sqrt", &[&prod], vec![]);
    let four = e.f32c("four", 4.0);
    let root = e.bin("Mul", &four, &root);
    let root = e.bin("Add", &root, &eps);
    let ratio = e.bin("Div", &det, &root);
    let ratio = e.bin("Add", &ratio, &eps);
    let t3 = e.node("Log", &[&ratio], vec![]);
    let t3 = e.bin("Mul", &t3, &half);
    let bd = e.bin("Add", &t1, &t2);
    let bd = e.bin("Add", &bd, &t3);
    let hundred = e.f32c("hundred", 100.0);
    // clamp(eps, 100) (Clip wants 0-D bounds; Max and Min broadcast).
    let bd = e.bin("Max", &bd, &eps);
    let bd = e.bin("Min", &bd, &hundred);
    let neg = e.node("Neg", &[&bd], vec![]);
    let ex = e.node("Exp", &[&neg], vec![]);
    let one = e.f32c("one", 1.0);
    let hd = e.bin("Sub", &one, &ex);
    let hd = e.bin("Add", &hd, &eps);
    let hd = e.node("Sqrt", &[&hd], vec![]);
    e.bin("Sub", &one, &hd)
}
