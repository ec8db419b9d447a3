//! Task-level parity: the same detections after the confidence threshold and NMS (classes equal,
//! boxes matched at IoU ≥ 0.99, scores within tolerance), or the same top-1 and top-5 classes.

use serde::Serialize;

use super::Tolerance;
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
    cls: usize,
    score: f32,
    b: [f32; 4], // x1 y1 x2 y2
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Detections of image `i` of a (B, 4 + nc + extra, A) output: best class ≥ CONF, per-class NMS.
fn detections(y: &T, i: usize, nc: usize) -> Vec<Det> {
    let (rows, a) = (y.shape[1], y.shape[2]);
    let at = |r: usize, k: usize| y.data[(i * rows + r) * a + k];
    let mut c: Vec<Det> = (0..a)
        .filter_map(|k| {
            let (cls, score) = (0..nc)
                .map(|j| (j, at(4 + j, k)))
                .fold((0, f32::MIN), |m, x| if x.1 > m.1 { x } else { m });
            (score >= CONF).then(|| {
                let (cx, cy, w, h) = (at(0, k), at(1, k), at(2, k), at(3, k));
                Det {
                    cls,
                    score,
                    b: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                }
            })
        })
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
/// classes (the score rows follow the four box rows).
pub fn task_check(task: &str, nc: usize, got: &T, want: &T, tol: Tolerance) -> Vec<TaskCheck> {
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
        "detect" | "segment" | "pose" | "obb" => (0..batch)
            .map(|i| {
                let (g, w) = (detections(got, i, nc), detections(want, i, nc));
                let mut unmatched = Vec::new();
                for d in &w {
                    let ok = g.iter().any(|x| {
                        x.cls == d.cls
                            && iou(&x.b, &d.b) >= MATCH_IOU
                            && ((x.score - d.score).abs() as f64) <= tol.atol + tol.rtol
                    });
                    if !ok {
                        unmatched.push(format!("class {} score {:.3}", d.cls, d.score));
                    }
                }
                TaskCheck {
                    kind: "detections",
                    image: i,
                    pass: g.len() == w.len() && unmatched.is_empty(),
                    detail: if unmatched.is_empty() && g.len() == w.len() {
                        format!("{} detections, all matched (IoU ≥ {MATCH_IOU})", w.len())
                    } else {
                        format!(
                            "{} vs {} detections; unmatched reference detections: {}",
                            g.len(),
                            w.len(),
                            unmatched.join(", ")
                        )
                    },
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}
