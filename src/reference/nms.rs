//! The reference side of `--nms` (`crate::onnx::nms` emits the graph), in plain loops: greedy
//! NMS with torchvision's `nms` semantics, which `NMSModel` runs in PyTorch (suppressed above the
//! IoU threshold; a box whose x2 < x1 or y2 < y1 overlaps nothing), with `NMSModel`'s class
//! offsets; for OBB, `NMSModel`'s fast NMS with the probabilistic IoU.

use super::ops::RefTensor;
use crate::onnx::nms::{Layout, Nms};

/// One candidate of one image.
struct Cand {
    anchor: usize,
    score: f32,
    cls: usize,
    /// The box NMS compares (scaled, class-offset), corners as predicted.
    nb: [f32; 4],
}

/// Whether `a` suppresses `b`: IoU above `thr`. Without a positive overlap in x and in y (as
/// for any box with a flipped side) the IoU is 0.
fn suppresses(a: &[f32; 4], b: &[f32; 4], thr: f32) -> bool {
    let iw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih = a[3].min(b[3]) - a[1].max(b[1]);
    if iw <= 0.0 || ih <= 0.0 {
        return false;
    }
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter) > thr
}

/// NMS of a (B, 4 + nc + extra, anchors) head output (centre-size boxes) for an input of
/// `input_hw`: (B, max_det, 6 + extra) rows `x1 y1 x2 y2 score class extra…`, best first, then
/// zero rows.
pub fn nms(
    y: &RefTensor,
    layout: Layout,
    p: &Nms,
    max_det: usize,
    input_hw: (usize, usize),
) -> RefTensor {
    let (nc, extra) = (layout.nc as usize, layout.extra as usize);
    let (b, rows, a) = (y.shape[0], y.shape[1], y.shape[2]);
    debug_assert_eq!(rows, 4 + nc + extra);
    let width = 6 + extra;
    let mut out = vec![0.0f32; b * max_det * width];
    let scale = input_hw.0.max(input_hw.1) as f32;
    let mult = 1.0 / nc.max(1) as f32;
    for img in 0..b {
        let at = |r: usize, k: usize| y.data[(img * rows + r) * a + k];
        let corners = |k: usize| {
            let (cx, cy, w, h) = (at(0, k), at(1, k), at(2, k), at(3, k));
            let (hw, hh) = (w / 2.0, h / 2.0);
            [cx - hw, cy - hh, cx + hw, cy + hh]
        };
        let mut cands: Vec<Cand> = (0..a)
            .filter_map(|k| {
                let mut best = (0usize, at(4, k));
                for c in 1..nc {
                    if at(4 + c, k) > best.1 {
                        best = (c, at(4 + c, k));
                    }
                }
                // NaN scores are no detection.
                if best.1.partial_cmp(&p.conf) != Some(std::cmp::Ordering::Greater) {
                    return None;
                }
                let off = if p.agnostic {
                    0.0
                } else {
                    best.0 as f32 * mult
                };
                let r = corners(k).map(|v| v / scale * mult + off);
                Some(Cand {
                    anchor: k,
                    score: best.1,
                    cls: best.0,
                    nb: r,
                })
            })
            .collect();
        // Stable: equal scores keep anchor order.
        cands.sort_by(|p, q| q.score.total_cmp(&p.score));
        let mut kept: Vec<&Cand> = Vec::new();
        for c in &cands {
            if kept.len() == max_det {
                break;
            }
            if kept.iter().all(|k| !suppresses(&k.nb, &c.nb, p.iou)) {
                kept.push(c);
            }
        }
        for (r, c) in kept.iter().enumerate() {
            let o = &mut out[(img * max_det + r) * width..(img * max_det + r + 1) * width];
            o[..4].copy_from_slice(&corners(c.anchor));
            o[4] = c.score;
            o[5] = c.cls as f32;
            for e in 0..extra {
                o[6 + e] = at(4 + nc + e, c.anchor);
            }
        }
    }
    RefTensor::new(out, vec![b, max_det, width])
}

/// A rotated candidate: the row it gives and the Gaussian NMS compares.
struct Rot {
    row: [f32; 7],
    /// Centre (scaled, class-offset) and covariance (a, b, c) of the scaled box.
    g: [f32; 5],
}

/// `batch_probiou`'s epsilon.
const EPS: f32 = 1e-7;

/// The probabilistic IoU of two boxes as Gaussians (centre x, y; covariance a, b, c).
fn probiou(p: &[f32; 5], q: &[f32; 5]) -> f32 {
    let (a, b, c) = (p[2] + q[2], p[3] + q[3], p[4] + q[4]);
    let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
    let det = a * b - c * c;
    let t1 = (a * (dy * dy) + b * (dx * dx)) / (det + EPS) * 0.25;
    let t2 = c * (q[0] - p[0]) * dy / (det + EPS) * 0.5;
    let own = |g: &[f32; 5]| (g[2] * g[3] - g[4] * g[4]).max(0.0);
    let t3 = (det / (4.0 * (own(p) * own(q)).sqrt() + EPS) + EPS).ln() * 0.5;
    let bd = (t1 + t2 + t3).clamp(EPS, 100.0);
    1.0 - (1.0 - (-bd).exp() + EPS).sqrt()
}

/// Rotated NMS of a (B, 4 + nc + 1, anchors) OBB output (cx cy w h, scores, angle), as
/// `NMSModel` exports it: scores at or below `conf` become 0 but stay candidates, the
/// `5 · max_det` best are compared, and a candidate goes when any better one (kept or not)
/// overlaps it by more than `iou` (fast NMS). Rows (B, max_det, 7) `cx cy w h score class angle`.
pub fn nms_rotated(
    y: &RefTensor,
    nc: usize,
    p: &Nms,
    max_det: usize,
    input_hw: (usize, usize),
) -> RefTensor {
    let (b, rows, a) = (y.shape[0], y.shape[1], y.shape[2]);
    debug_assert_eq!(rows, 5 + nc);
    let mut out = vec![0.0f32; b * max_det * 7];
    let scale = input_hw.0.max(input_hw.1) as f32;
    for img in 0..b {
        let at = |r: usize, k: usize| y.data[(img * rows + r) * a + k];
        let mut cands: Vec<Rot> = (0..a)
            .map(|k| {
                let mut best = (0usize, at(4, k));
                for c in 1..nc {
                    if at(4 + c, k) > best.1 {
                        best = (c, at(4 + c, k));
                    }
                }
                let score = if best.1 > p.conf { best.1 } else { 0.0 };
                let (cls, theta) = (best.0 as f32, at(4 + nc, k));
                let row = [at(0, k), at(1, k), at(2, k), at(3, k), score, cls, theta];
                let s = |v: f32| v / scale * 8.0;
                let off = if p.agnostic { 0.0 } else { cls * 8.0 };
                let (w, h) = (s(row[2]), s(row[3]));
                let (ga, gb) = (w * w / 12.0, h * h / 12.0);
                let (sin, cos) = theta.sin_cos();
                let (cos2, sin2) = (cos * cos, sin * sin);
                let g = [
                    s(row[0]) + off,
                    s(row[1]) + off,
                    ga * cos2 + gb * sin2,
                    ga * sin2 + gb * cos2,
                    (ga - gb) * cos * sin,
                ];
                Rot { row, g }
            })
            .collect();
        // Stable: equal scores keep anchor order.
        cands.sort_by(|p, q| q.row[4].total_cmp(&p.row[4]));
        cands.truncate(5 * max_det);
        let mut kept = 0;
        for (j, c) in cands.iter().enumerate() {
            if kept == max_det {
                break;
            }
            if cands[..j].iter().any(|e| probiou(&e.g, &c.g) > p.iou) {
                continue;
            }
            out[(img * max_det + kept) * 7..][..7].copy_from_slice(&c.row);
            kept += 1;
        }
    }
    RefTensor::new(out, vec![b, max_det, 7])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A (1, R, n) head output from R values per anchor: (cx, cy, w, h, score0, score1) for
    /// detect, plus the angle for OBB.
    fn output<const R: usize>(anchors: &[[f32; R]]) -> RefTensor {
        let n = anchors.len();
        let mut d = vec![0.0; R * n];
        for (k, a) in anchors.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                d[r * n + k] = *v;
            }
        }
        RefTensor::new(d, vec![1, R, n])
    }

    const LAYOUT: Layout = Layout { nc: 2, extra: 0 };

    #[test]
    fn overlapping_boxes_of_one_class_keep_the_best() {
        let y = output(&[
            [10.0, 10.0, 8.0, 8.0, 0.6, 0.0],
            [10.5, 10.0, 8.0, 8.0, 0.9, 0.0],
            [40.0, 40.0, 8.0, 8.0, 0.0, 0.8],
            [40.0, 40.0, 8.0, 8.0, 0.1, 0.2], // below conf
        ]);
        let r = nms(&y, LAYOUT, &Nms::DEFAULT, 5, (64, 64));
        assert_eq!(r.shape, [1, 5, 6]);
        assert_eq!(&r.data[..6], &[6.5, 6.0, 14.5, 14.0, 0.9, 0.0]);
        assert_eq!(&r.data[6..12], &[36.0, 36.0, 44.0, 44.0, 0.8, 1.0]);
        assert!(r.data[12..].iter().all(|v| *v == 0.0), "zero rows after");
    }

    #[test]
    fn classes_do_not_suppress_each_other_unless_agnostic() {
        let y = output(&[
            [10.0, 10.0, 8.0, 8.0, 0.9, 0.0],
            [10.0, 10.0, 8.0, 8.0, 0.0, 0.8],
        ]);
        let per_class = nms(&y, LAYOUT, &Nms::DEFAULT, 3, (64, 64));
        assert_eq!(per_class.data[6 + 4], 0.8);
        let agnostic = Nms {
            agnostic: true,
            ..Nms::DEFAULT
        };
        let one = nms(&y, LAYOUT, &agnostic, 3, (64, 64));
        assert_eq!(one.data[6 + 4], 0.0, "suppressed across classes");
    }

    #[test]
    fn a_box_with_a_flipped_side_suppresses_nothing() {
        let y = output(&[
            [10.0, 10.0, 8.0, 8.0, 0.9, 0.0],
            [10.0, 10.0, -8.0, 8.0, 0.8, 0.0],
            [10.0, 10.0, -8.0, -8.0, 0.7, 0.0],
        ]);
        let r = nms(&y, LAYOUT, &Nms::DEFAULT, 4, (64, 64));
        let scores: Vec<f32> = (0..4).map(|i| r.data[i * 6 + 4]).collect();
        assert_eq!(scores, [0.9, 0.8, 0.7, 0.0], "all three kept");
    }

    #[test]
    fn rotated_nms_is_fast_nms_with_probiou() {
        let y = output(&[
            [20.0, 20.0, 16.0, 4.0, 0.9, 0.0, 0.0],
            // The same box turned by 90°: a cross, little overlap.
            [20.0, 20.0, 16.0, 4.0, 0.8, 0.0, std::f32::consts::FRAC_PI_2],
            // Nearly the first box: suppressed.
            [20.5, 20.0, 16.0, 4.0, 0.7, 0.0, 0.0],
            // Below conf: kept with score 0, after the others.
            [50.0, 50.0, 8.0, 8.0, 0.1, 0.0, 0.3],
        ]);
        let r = nms_rotated(&y, 2, &Nms::DEFAULT, 6, (64, 64));
        let rows: Vec<&[f32]> = r.data.chunks(7).collect();
        assert_eq!(rows[0][4], 0.9);
        assert_eq!(rows[1][4], 0.8);
        assert_eq!(rows[2], &[50.0, 50.0, 8.0, 8.0, 0.0, 0.0, 0.3]);
        assert!(rows[3..].iter().all(|r| r.iter().all(|v| *v == 0.0)));
        // Identical boxes have probiou 1 (up to eps); disjoint ones about 0.
        let g = [0.0, 0.0, 1.0, 1.0, 0.0];
        assert!((probiou(&g, &g) - 1.0).abs() < 1e-3);
        assert!(probiou(&g, &[40.0, 0.0, 1.0, 1.0, 0.0]) < 1e-3);
    }

    #[test]
    fn max_det_cuts_the_lowest_scores() {
        let y = output(&[
            [10.0, 10.0, 4.0, 4.0, 0.5, 0.0],
            [30.0, 10.0, 4.0, 4.0, 0.7, 0.0],
            [50.0, 10.0, 4.0, 4.0, 0.6, 0.0],
        ]);
        let r = nms(&y, LAYOUT, &Nms::DEFAULT, 2, (64, 64));
        assert_eq!((r.data[4], r.data[10]), (0.7, 0.6));
    }
}
