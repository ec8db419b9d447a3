//! Which unmatched detection rows the set itself makes ambiguous, and which are errors.
//!
//! An honest pair of lists differs only where the model's own numbers leave the answer open:
//! a score at the confidence threshold (kept by one side, dropped by the other), a score at the
//! lowest kept score of a full list (the `max_det` / top-k cut: which of two near-equal
//! candidates fills the last place), and two candidates tied at a saturated score of 1 whose
//! boxes overlap above the NMS IoU (the order of ties decides which suppresses the other), the
//! same for two rows of one class at near-equal scores (within twice the score limit: f16
//! rounding reorders them), a row overlapping a better one of its class at the NMS IoU
//! (rounding decides the suppression; "at" meaning within the IoU's range when every box column
//! moves by its limit, [`iou_range`]), a row of a class near-tied with the best at its anchor
//! (rounding picks the class), and one step of a chain of suppressions those set off. Each
//! excuse is written so that what it lets through is bounded by what such a tie can produce:
//! a row excused at the cut needs the OTHER list to be full (a list cannot have dropped a row
//! for want of room while it had room; review 6: padding filled with copies of the lowest row
//! excused itself), a row missing at a saturated tie needs a saturated row on the other side
//! overlapping it above the NMS IoU (its suppressor there; the earlier IoU ≥ 0.3 with any
//! saturated row let saturated boxes moved 60 px pass, review 6), and a row NMS could not have
//! kept beside another of its class on its own side (overlapping it above the IoU) is never
//! excused (review 6: 298 copies of one row passed). Where the reference's candidates before
//! suppression are known (`verify`, export), every ONNX row an excuse covers must also be one
//! of them: a real output of the model at some anchor, never a moved or invented box.

use super::{CLASS, SCORE, Suppression};

/// The overlap asked of rotated (OBB) rows at a saturated tie, read axis-aligned.
const ROTATED_OVERLAP: f64 = 0.3;

/// Slack on the IoU of two rows of one side (`lone`): that side's NMS saw those very boxes, so
/// only the rounding of its output columns (~1e-3 relative) separates what it compared from what
/// it wrote. Rows of different sides differ by up to the box columns' limits instead, and their
/// IoU is judged over the range those limits reach ([`iou_range`]).
const IOU_SLACK: f64 = 0.01;

/// The rules, with the comparison's own notions of near, saturated and close.
pub(super) struct Rules<'a> {
    /// Rows per image (a list of this many rows is full).
    pub k: usize,
    /// The confidence threshold (`-inf` for top-k rows).
    pub conf: f32,
    /// Two scores within twice the score limit.
    pub near: &'a dyn Fn(f32, f32) -> bool,
    /// A score within the score limit of 1.
    pub saturated: &'a dyn Fn(f32) -> bool,
    /// Two rows alike in every column (the class too, unless both saturated).
    pub close: &'a dyn Fn(&[f32], &[f32]) -> bool,
    /// How far each box column of an ONNX row may honestly lie from the reference's (the
    /// columns' limits, f16 allowance included): what an IoU across the sides may move by.
    pub box_limit: [f64; 4],
    /// NMS rows: the suppression that made them.
    pub suppression: Option<Suppression>,
}

impl Rules<'_> {
    /// Judges the unmatched rows: `got` (ONNX rows, `extra` the unmatched indices) and `want`
    /// (reference rows, `lost` the unmatched ones), with the reference's candidates of this
    /// image when known. Returns how many were excused and the rows that were not (`true`:
    /// an ONNX row), reference rows first.
    pub fn judge<'r>(
        &self,
        (got, extra): (&'r [Vec<f32>], &[usize]),
        (want, lost): (&'r [Vec<f32>], &[usize]),
        candidates: Option<&[Vec<f32>]>,
    ) -> (usize, Vec<(bool, &'r [f32])>) {
        // An ONNX row the excuses cover must be something the model computed.
        let real = |r: &[f32]| candidates.is_none_or(|cs| cs.iter().any(|c| (self.close)(r, c)));
        let lone = |r: &[f32], side: &[Vec<f32>]| match self.suppression {
            Some(s) => side.iter().all(|o| {
                std::ptr::eq(o.as_slice(), r)
                    || o[CLASS] != r[CLASS]
                    || iou(o, r, s.centred) <= s.iou as f64 + IOU_SLACK
            }),
            None => true,
        };
        let plain = |r: &[f32], other: &[Vec<f32>]| self.at_threshold(r) || self.at_cut(r, other);
        let rest_w: Vec<usize> = lost
            .iter()
            .copied()
            .filter(|&i| !plain(&want[i], got))
            .collect();
        let rest_g: Vec<usize> = extra
            .iter()
            .copied()
            .filter(|&j| {
                let r = &got[j];
                !(plain(r, want) && real(r) && lone(r, got))
            })
            .collect();
        let mut excused = (lost.len() - rest_w.len()) + (extra.len() - rest_g.len());
        // Saturated ties. An ONNX row the reference lacks is excused when it is a saturated
        // candidate its own NMS could keep (`lone`) overlapping, above the IoU, a saturated
        // reference row: the row that suppressed it there. A reference row the ONNX lacks is
        // excused when a saturated ONNX row in good standing (matched, or itself excused)
        // overlaps it above the IoU: the row that suppressed it in the ONNX. Counts need not
        // balance — one kept box suppresses every box it overlaps, so where f16 rounding
        // reorders ties at 1.0 the ONNX may keep one box where the reference keeps two (seen
        // on yolov8-seg `--nms --half`: 24 vs 25 rows).
        let (mut tied_w, mut tied_g) = (vec![false; want.len()], vec![false; got.len()]);
        if let Some(s) = self.suppression {
            let sat = |r: &[f32]| (self.saturated)(r[SCORE]);
            // Rotated boxes: the rows' axis-aligned reading is no probabilistic IoU, so only a
            // plain overlap (the IoU ≥ 0.3 of before) is asked there.
            // Axis-aligned rows of the two sides: the IoU each side saw may be any in the range
            // the box limits reach, so `o` could have suppressed `r` where that range reaches the
            // NMS IoU.
            let overlaps = |r: &[f32], o: &[f32]| match s.centred {
                true => iou(r, o, true) >= ROTATED_OVERLAP,
                false => iou_around(r, o, self.box_limit, s.iou).1 >= s.iou as f64,
            };
            // At the NMS IoU: `o`, of `r`'s class and scoring at least as high, overlaps it at
            // an IoU whose range under the box limits holds the NMS IoU, so rounding alone
            // decides whether `o` suppresses `r` (yolo11-detect `--nms --half` at 2×64×96: IoU
            // 0.6996 in f32, above 0.7 in f16, 34 vs 35 rows; yolov8-seg `--nms --half` at 64:
            // IoU 0.685 of 120 px boxes whose columns may move by 3.9 px, 18 vs 19 rows).
            // Axis-aligned rows only: OBB's NMS uses the probabilistic IoU.
            // Both this and `near_tie` need the reference's candidates: without them a row
            // moved a little (or with a wrong keypoint) would pass as its own tie partner.
            let known = candidates.is_some();
            let at_iou = |r: &[f32], o: &[f32]| {
                known
                    && !s.centred
                    && o[CLASS] == r[CLASS]
                    && (o[SCORE] >= r[SCORE] || (self.near)(o[SCORE], r[SCORE]))
                    && {
                        let (lo, hi) = iou_around(r, o, self.box_limit, s.iou);
                        (lo..=hi).contains(&(s.iou as f64))
                    }
            };
            // Near-equal scores of one class overlapping above the IoU: which suppresses the
            // other is the order rounding leaves them in, as with saturated ties.
            let near_tie = |r: &[f32], o: &[f32]| {
                known && o[CLASS] == r[CLASS] && (self.near)(o[SCORE], r[SCORE]) && overlaps(r, o)
            };
            // Classes near-tied at an anchor: where the reference's best class there is
            // another, its NMS of this class never saw the anchor, so the ONNX, whose rounding
            // picked this class, may keep a row the reference lacks — and suppress with it a
            // row of this class the reference keeps. `twin` finds the reference's candidates of
            // other classes at the very anchor of `c` (the same box).
            let cands = candidates.unwrap_or(&[]);
            let twin = |c: &[f32], o: &[f32]| o[..4] == c[..4] && o[CLASS] != c[CLASS];
            let alternative = |r: &[f32]| {
                cands.iter().any(|c| {
                    (self.close)(r, c) && cands.iter().any(|o| twin(c, o) && o[SCORE] >= c[SCORE])
                })
            };
            // A reference row whose anchor the ONNX reads as another near-tied class: the ONNX
            // row of that class at the anchor stands in its place.
            let flipped = |r: &[f32], o: &[f32]| {
                o[CLASS] != r[CLASS]
                    && cands.iter().any(|c| {
                        (self.close)(r, c) && cands.iter().any(|t| twin(c, t) && (self.close)(o, t))
                    })
            };
            // Per-class NMS never lets one class suppress another: a saturated suppressor of
            // another class is only the same detection with its class tied at 1.0, which
            // `close` accepts only where the candidates show both classes saturated there.
            let kin = |r: &[f32], o: &[f32]| o[CLASS] == r[CLASS] || (self.close)(r, o);
            for &j in &rest_g {
                let r = &got[j];
                tied_g[j] = real(r)
                    && lone(r, got)
                    && want.iter().any(|o| {
                        (sat(r) && sat(o) && overlaps(r, o) && kin(r, o))
                            || near_tie(r, o)
                            || at_iou(r, o)
                    })
                    || (lone(r, got) && alternative(r));
            }
            let standing: Vec<bool> = (0..got.len())
                .map(|j| !rest_g.contains(&j) || tied_g[j])
                .collect();
            for &i in &rest_w {
                let r = &want[i];
                let by_row = (got.iter().zip(&standing))
                    .any(|(o, ok)| *ok && sat(o) && overlaps(r, o) && kin(r, o));
                // OBB's fast NMS lets any better candidate suppress, kept or not: there the
                // suppressor may be a saturated candidate that is no row on either side.
                let by_candidate = s.centred
                    && candidates.is_some_and(|cs| {
                        cs.iter()
                            .any(|c| sat(c) && !(self.close)(r, c) && overlaps(r, c))
                    });
                let by_iou = (got.iter().zip(&standing))
                    .any(|(o, ok)| *ok && (at_iou(r, o) || near_tie(r, o)));
                let by_class = (got.iter().zip(&standing)).any(|(o, ok)| {
                    *ok && (flipped(r, o)
                        || (o[CLASS] == r[CLASS]
                            && (o[SCORE] >= r[SCORE] || (self.near)(o[SCORE], r[SCORE]))
                            && overlaps(r, o)
                            && alternative(o)))
                });
                tied_w[i] = (sat(r) && (by_row || by_candidate)) || by_iou || by_class;
            }
            // One step further down a chain of suppressions: a row one side keeps because its
            // suppressor on the other side is a row this side rightly lacks (excused above).
            // The suppressor may be of another class: the export's NMS shifts each class's
            // boxes by a fixed distance, which boxes larger than the input reach across
            // (yolov8-pose `--nms --half` at 64, seed 244188820318867: two class-0 rows tied
            // at 0.519 trade places, and the class-1 row at IoU 0.88 with one of them goes
            // with it).
            let outranks =
                |o: &[f32], r: &[f32]| o[SCORE] >= r[SCORE] || (self.near)(o[SCORE], r[SCORE]);
            let nms_overlaps = |r: &[f32], o: &[f32]| match (s.centred, s.class_shift) {
                (false, Some(shift)) => {
                    let at = |x: &[f32]| x[..4].iter().map(|v| v + x[CLASS] * shift).collect();
                    let (r, o): (Vec<f32>, Vec<f32>) = (at(r), at(o));
                    iou_around(&r, &o, self.box_limit, s.iou).1 >= s.iou as f64
                }
                _ => o[CLASS] == r[CLASS] && overlaps(r, o),
            };
            let gone = |lost: &[usize], rest: &[usize], tied: &[bool], i: usize| {
                lost.contains(&i) && (!rest.contains(&i) || tied[i])
            };
            let gone_w: Vec<bool> = (0..want.len())
                .map(|i| gone(lost, &rest_w, &tied_w, i))
                .collect();
            for &j in &rest_g {
                let r = &got[j];
                tied_g[j] = tied_g[j]
                    || (real(r)
                        && lone(r, got)
                        && (want.iter().zip(&gone_w))
                            .any(|(o, g)| *g && outranks(o, r) && nms_overlaps(r, o)));
            }
            let gone_g: Vec<bool> = (0..got.len())
                .map(|j| gone(extra, &rest_g, &tied_g, j))
                .collect();
            for &i in &rest_w {
                let r = &want[i];
                tied_w[i] = tied_w[i]
                    || (got.iter().zip(&gone_g))
                        .any(|(o, g)| *g && outranks(o, r) && nms_overlaps(r, o));
            }
            excused += tied_w.iter().chain(&tied_g).filter(|t| **t).count();
        }
        let problems = rest_w
            .iter()
            .filter(|&&i| !tied_w[i])
            .map(|&i| (false, want[i].as_slice()))
            .chain(
                rest_g
                    .iter()
                    .filter(|&&j| !tied_g[j])
                    .map(|&j| (true, got[j].as_slice())),
            )
            .collect();
        (excused, problems)
    }

    /// At the confidence threshold: within twice the score limit of it, or a zeroed candidate
    /// (OBB rows keep those with score 0). A row well below it is in no honest NMS list.
    fn at_threshold(&self, r: &[f32]) -> bool {
        self.conf.is_finite() && (r[SCORE] == 0.0 || (self.near)(r[SCORE], self.conf))
    }

    /// At the cut of `other`, the list this row is missing from: that list is full and its
    /// lowest score is near this row's.
    fn at_cut(&self, r: &[f32], other: &[Vec<f32>]) -> bool {
        let floor = other.iter().map(|o| o[SCORE]).fold(f32::INFINITY, f32::min);
        other.len() == self.k && (self.near)(r[SCORE], floor)
    }
}

/// The IoU of two rows' boxes, read as `cx cy w h` when `centred` (axis-aligned), else as
/// `x1 y1 x2 y2`; 0 for a box with no area.
pub(super) fn iou(a: &[f32], b: &[f32], centred: bool) -> f64 {
    let corners = |r: &[f32]| {
        let v = [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64];
        match centred {
            true => [
                v[0] - v[2] / 2.0,
                v[1] - v[3] / 2.0,
                v[0] + v[2] / 2.0,
                v[1] + v[3] / 2.0,
            ],
            false => v,
        }
    };
    let (a, b) = (corners(a), corners(b));
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let union = area(a) + area(b) - w * h;
    if union > 0.0 { w * h / union } else { 0.0 }
}

/// [`iou_range`] where it matters to a threshold `t`: where the cheap [`iou_bound`] lies wholly
/// on one side of `t`, so does the exact range, and the bound answers for it (where the cost
/// would otherwise be paid for every pair of rows, e.g. hundreds of rows of one class).
fn iou_around(a: &[f32], b: &[f32], limit: [f64; 4], t: f32) -> (f64, f64) {
    let (lo, hi) = iou_bound(a, b, limit);
    match lo > t as f64 || hi < t as f64 {
        true => (lo, hi),
        false => iou_range(a, b, limit),
    }
}

/// The range of the IoU of two `x1 y1 x2 y2` rows when each box column of both may move by up
/// to its `limit`: (lowest, highest).
///
/// Along one axis the four edges decide the intersection's length and both boxes' lengths,
/// each piecewise linear with breaks where two edges meet; for fixed lengths along the other
/// axis the IoU is a ratio of two linear functions on each piece, so its extremes lie at
/// corners of the pieces, where every edge sits at a bound of its own range or on another
/// edge that does. Each edge is therefore tried at every such value within its own range, per
/// axis; the IoU rises with the intersection and falls with either box's length, so only the
/// axis triples no other triple betters are paired up. Where that grows large (tiny boxes
/// under large limits) the looser [`iou_bound`] stands in.
pub(super) fn iou_range(a: &[f32], b: &[f32], limit: [f64; 4]) -> (f64, f64) {
    let (Some(x), Some(y)) = (lengths(a, b, limit, 0, 2), lengths(a, b, limit, 1, 3)) else {
        return iou_bound(a, b, limit);
    };
    let iou = |p: &[f64; 3], q: &[f64; 3]| {
        let (i, u) = (p[0] * q[0], p[1] * q[1] + p[2] * q[2] - p[0] * q[0]);
        if u > 0.0 { i / u } else { 0.0 }
    };
    // Best triples for the highest IoU (long intersection, short boxes) and the lowest.
    let (xh, yh) = (front(&x, 1.0), front(&y, 1.0));
    let (xl, yl) = (front(&x, -1.0), front(&y, -1.0));
    let over = |p: &[[f64; 3]], q: &[[f64; 3]], pick: fn(f64, f64) -> f64, from: f64| {
        p.iter()
            .flat_map(|p| q.iter().map(move |q| (p, q)))
            .fold(from, |m, (p, q)| pick(m, iou(p, q)))
    };
    (over(&xl, &yl, f64::min, 1.0), over(&xh, &yh, f64::max, 0.0))
}

/// Along one axis (the columns `lo`, `hi` of both rows): every (intersection, length of `a`,
/// length of `b`) at the corners described in [`iou_range`]; `None` past 256 (each edge with
/// its own two bounds and its partner's is 4⁴).
fn lengths(a: &[f32], b: &[f32], limit: [f64; 4], lo: usize, hi: usize) -> Option<Vec<[f64; 3]>> {
    let edge = [a[lo], a[hi], b[lo], b[hi]].map(|v| v as f64);
    let d = [limit[lo], limit[hi], limit[lo], limit[hi]];
    let ends: Vec<f64> = (0..4)
        .flat_map(|i| [edge[i] - d[i], edge[i] + d[i]])
        .collect();
    let values: Vec<Vec<f64>> = (0..4)
        .map(|i| {
            let mut v: Vec<f64> = (ends.iter().copied())
                .filter(|e| (edge[i] - d[i]..=edge[i] + d[i]).contains(e))
                .collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        })
        .collect();
    if values.iter().map(Vec::len).product::<usize>() > 256 {
        return None;
    }
    let mut out = Vec::new();
    for &a0 in &values[0] {
        for &a1 in &values[1] {
            for &b0 in &values[2] {
                for &b1 in &values[3] {
                    let inter = (a1.min(b1) - a0.max(b0)).max(0.0);
                    out.push([inter, (a1 - a0).max(0.0), (b1 - b0).max(0.0)]);
                }
            }
        }
    }
    Some(out)
}

/// The triples no other betters: `sign` 1 for a long intersection and short boxes, −1 for the
/// opposite.
fn front(all: &[[f64; 3]], sign: f64) -> Vec<[f64; 3]> {
    let better = |p: &[f64; 3], q: &[f64; 3]| {
        sign * p[0] >= sign * q[0] && sign * p[1] <= sign * q[1] && sign * p[2] <= sign * q[2]
    };
    let mut out: Vec<[f64; 3]> = Vec::new();
    for p in all {
        if out.iter().any(|q| better(q, p)) {
            continue;
        }
        out.retain(|q| !better(p, q));
        out.push(*p);
    }
    out
}

/// A cheaper, looser [`iou_range`]: each edge of the intersection and each side of a box moves
/// by at most the sum of its two columns' limits, so the intersection and the areas have
/// ranges, and the IoU lies between the worst and the best of them taken together.
pub(super) fn iou_bound(a: &[f32], b: &[f32], limit: [f64; 4]) -> (f64, f64) {
    let v = |r: &[f32]| [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64];
    let (a, b) = (v(a), v(b));
    // Spans along x (columns 0, 2) and y (1, 3), each moving by the sum of its edges' limits.
    let span = |lo: usize, hi: usize, len: f64| {
        let d = limit[lo] + limit[hi];
        ((len - d).max(0.0), (len + d).max(0.0))
    };
    let (wl, wh) = span(0, 2, a[2].min(b[2]) - a[0].max(b[0]));
    let (hl, hh) = span(1, 3, a[3].min(b[3]) - a[1].max(b[1]));
    let area = |r: [f64; 4]| {
        let (w, h) = (span(0, 2, r[2] - r[0]), span(1, 3, r[3] - r[1]));
        (w.0 * h.0, w.1 * h.1)
    };
    let ((al, ah), (bl, bh)) = (area(a), area(b));
    let (il, ih) = (wl * hl, wh * hh);
    let lo = match ah + bh - il {
        u if u > 0.0 => il / u,
        _ => 0.0,
    };
    // The union is at least either area, and at least both less the largest intersection.
    let union = (al + bl - ih).max(al).max(bl);
    let hi = match union > 0.0 {
        true => (ih / union).min(1.0),
        false => 1.0,
    };
    (lo.min(hi), hi)
}
