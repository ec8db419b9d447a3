//! Task-level parity: the same detections after the confidence threshold and NMS (classes equal,
//! boxes matched at IoU ≥ 0.99, scores within tolerance), or the same top-1 and top-5 classes.

use serde::Serialize;

use crate::reference::ops::T;

/// Confidence threshold and IoU of Ultralytics' `predict` defaults.
const CONF: f32 = 0.25;
const NMS_IOU: f32 = 0.7;
const MATCH_IOU: f32 = 0.99;

/// One task-level comparison (one image).
#[derive(Clone, Debug, Serialize)]
pub struct TaskCheck {
    /// `detections` or `top-k`.
    pub kind: &'static str,
    /// Image index in the batch.
    pub image: usize,
    /// Whether the two agree.
    pub pass: bool,
    /// What was found.
    pub detail: String,
}

#[derive(Clone, Copy, Debug)]
struct Det {
    anchor: usize,
    cls: usize,
    score: f32,
    b: [f32; 4],   // x1 y1 x2 y2
    raw: [f32; 4], // cx cy w h, as output
}

/// How close the two sides' predictions at one anchor must be to agree.
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    /// Largest difference of the detection's class score.
    pub score: f64,
    /// f16 models: the largest difference of each box row (cx, cy, w, h), in place of the IoU
    /// test — f16 rounding moves a box by more than IoU 0.99 allows, by an amount each row's
    /// limit already accounts for.
    pub boxes: Option<[f64; 4]>,
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The prediction at anchor `k` of image `i` of a (B, 4 + nc + extra, A) output.
fn at_anchor(y: &T, i: usize, nc: usize, k: usize) -> Det {
    let (rows, a) = (y.shape[1], y.shape[2]);
    let at = |r: usize| y.data[(i * rows + r) * a + k];
    let (cls, score) = (0..nc)
        .map(|j| (j, at(4 + j)))
        .fold((0, f32::MIN), |m, x| if x.1 > m.1 { x } else { m });
    let (cx, cy, w, h) = (at(0), at(1), at(2), at(3));
    Det {
        anchor: k,
        cls,
        score,
        b: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
        raw: [cx, cy, w, h],
    }
}

/// Detections of image `i` of a (B, 4 + nc + extra, A) output: best class ≥ CONF, per-class NMS.
fn detections(y: &T, i: usize, nc: usize) -> Vec<Det> {
    let mut c: Vec<Det> = (0..y.shape[2])
        .map(|k| at_anchor(y, i, nc, k))
        .filter(|d| d.score >= CONF)
        .collect();
    c.sort_by(|p, q| q.score.total_cmp(&p.score));
    let mut keep: Vec<Det> = Vec::new();
    for d in c {
        if keep
            .iter()
            .all(|k| k.cls != d.cls || iou(&k.b, &d.b) < NMS_IOU)
        {
            keep.push(d);
        }
    }
    keep
}

/// Compares what `got` and `want` (reference) predict, image by image; `nc` is the number of
/// classes (the score rows follow the four box rows); `agree` says how close is alike.
pub fn task_check(task: &str, nc: usize, got: &T, want: &T, agree: Agreement) -> Vec<TaskCheck> {
    let batch = got.shape[0];
    match task {
        "classify" => (0..batch)
            .map(|i| {
                let nc = got.shape[1];
                let top = |y: &T| {
                    let mut idx: Vec<usize> = (0..nc).collect();
                    idx.sort_by(|&a, &b| y.data[i * nc + b].total_cmp(&y.data[i * nc + a]));
                    idx.truncate(5);
                    idx
                };
                let (g, w) = (top(got), top(want));
                let mut gs = g.clone();
                let mut ws = w.clone();
                gs.sort();
                ws.sort();
                TaskCheck {
                    kind: "top-k",
                    image: i,
                    pass: g[0] == w[0] && gs == ws,
                    detail: format!("top-1 {} vs {}, top-5 {:?} vs {:?}", g[0], w[0], g, w),
                }
            })
            .collect(),
        // Each side's kept detections must be predicted by the other side at the same anchor
        // (same class, IoU ≥ 0.99, score within tolerance). Comparing per anchor, not the NMS
        // survivors, keeps near-ties between overlapping boxes from deciding the verdict.
        "detect" | "segment" | "pose" | "obb" => (0..batch)
            .map(|i| {
                let (g, w) = (detections(got, i, nc), detections(want, i, nc));
                // The other side's score for this detection's class, not its argmax: two classes
                // saturated at 1.0 are a tie, not a disagreement.
                let agrees = |d: &Det, other: &T| {
                    let o = at_anchor(other, i, nc, d.anchor);
                    let (rows, a) = (other.shape[1], other.shape[2]);
                    let score = other.data[(i * rows + 4 + d.cls) * a + d.anchor];
                    let boxes = match agree.boxes {
                        Some(l) => (0..4).all(|r| ((o.raw[r] - d.raw[r]).abs() as f64) <= l[r]),
                        None => iou(&o.b, &d.b) >= MATCH_IOU,
                    };
                    boxes && ((score - d.score).abs() as f64) <= agree.score
                };
                let mut unmatched: Vec<String> = w
                    .iter()
                    .filter(|d| !agrees(d, got))
                    .map(|d| format!("reference class {} score {:.3} at anchor {}", d.cls, d.score, d.anchor))
                    .collect();
                unmatched.extend(
                    g.iter()
                        .filter(|d| !agrees(d, want))
                        .map(|d| format!("ONNX class {} score {:.3} at anchor {}", d.cls, d.score, d.anchor)),
                );
                TaskCheck {
                    kind: "detections",
                    image: i,
                    pass: unmatched.is_empty(),
                    detail: if unmatched.is_empty() {
                        format!("{} vs {} detections after NMS, each predicted alike by both at its anchor", g.len(), w.len())
                    } else {
                        format!("{} vs {} detections; disagreeing: {}", g.len(), w.len(), unmatched.join(", "))
                    },
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}
