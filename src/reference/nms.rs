//! The reference side of `--nms` (`crate::onnx::nms` emits the graph): greedy NMS in plain
//! loops with torchvision's `nms` semantics, which `NMSModel` runs in PyTorch (suppressed above
//! the IoU threshold; a box whose x2 < x1 or y2 < y1 overlaps nothing), and `NMSModel`'s class
//! offsets.

use super::ops::T;
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
pub fn nms(y: &T, layout: Layout, p: &Nms, max_det: usize, input_hw: (usize, usize)) -> T {
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
    T::new(out, vec![b, max_det, width])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A (1, 4 + 2, n) output from (cx, cy, w, h, score0, score1) per anchor.
    fn output(anchors: &[[f32; 6]]) -> T {
        let n = anchors.len();
        let mut d = vec![0.0; 6 * n];
        for (k, a) in anchors.iter().enumerate() {
            for r in 0..6 {
                d[r * n + k] = a[r];
            }
        }
        T::new(d, vec![1, 6, n])
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
