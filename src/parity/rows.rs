//! Detection rows compared as sets, image by image: the `--nms` output ((B, max_det, 6 + extra)
//! of `x1 y1 x2 y2 score class extra…`, zero rows after the last detection), the end-to-end
//! top-k rows (`--end2end`, every row a detection) and RT-DETR's rows (`cx cy w h score class`)
//! alike. Where two scores tie, or differ by less than the two sides' rounding, rows may come in
//! either order, so each row must find a row of the same class on the other side with every
//! column within that column's limit. A row may go unmatched only where the set itself is
//! ambiguous: its score at or below the confidence threshold (NMS), at the lowest score of a full
//! list (the `max_det` / top-k cut), or tied with another at a saturated score of 1.

use std::f32::consts::FRAC_PI_2;

use super::{OutputStats, TaskCheck, Tolerance};
use crate::reference::ops::RefTensor;

/// Unmatched rows a failed check names.
const MAX_LISTED: usize = 8;
/// The score column.
const SCORE: usize = 4;
/// The class column; compared exactly (but see saturated scores).
const CLASS: usize = 5;
/// An OBB row's angle column (radians).
const ANGLE: usize = 6;
/// The column group of extras whose kind is unknown (mask coefficients, an angle, keypoints when
/// `kpt_dim` is not given): each such column takes its own scale.
const OWN_SCALE: usize = 4;

/// How close two rows must be, and which rows may go unmatched.
#[derive(Clone, Copy, Debug)]
pub struct RowsTolerance {
    /// Absolute part of each column's limit.
    pub atol: f64,
    /// Relative part, of the column's largest magnitude (over the reference's rows).
    pub rtol: f64,
    /// The confidence threshold: a row whose score is this close to it (within twice the score
    /// column's limit), or below it, may be kept by one side and dropped by the other.
    /// `f32::NEG_INFINITY` for rows that have none (top-k rows: [`RowsTolerance::top_k`]).
    pub conf: f32,
    /// Pose rows: values per keypoint (2 or 3) after the class column.
    pub kpt_dim: Option<usize>,
    /// f16 models: the allowance for f16 rounding added to the limit of each column group (see
    /// [`group`]), a multiple of the reference's emulated f16 noise in those channels.
    pub noise: [f64; 5],
    /// NMS rows: the suppression that made them (its IoU threshold), which lets two rows tied
    /// at a saturated score trade places ([`Suppression`]). `None` for top-k rows, which no
    /// suppression made: there a saturated tie only reorders rows.
    pub suppression: Option<Suppression>,
}

/// The NMS behind a list of rows, as far as the comparison needs it.
#[derive(Clone, Copy, Debug)]
pub struct Suppression {
    /// The IoU above which a kept box suppresses another of its class.
    pub iou: f32,
    /// Boxes are `cx cy w h` (OBB rows, whose NMS compares rotated boxes; the comparison reads
    /// them axis-aligned), else `x1 y1 x2 y2`.
    pub centred: bool,
    /// How far the NMS shifts each class's boxes from the previous class's (Ultralytics: the
    /// input's larger side; 0 when class-agnostic), so that boxes larger than that suppress
    /// across classes. `None` where unknown: then only rows of one class are taken to compete.
    pub class_shift: Option<f32>,
}

impl RowsTolerance {
    /// Top-k rows (end-to-end heads, RT-DETR): no confidence threshold, no keypoint layout
    /// known (extra columns each keep their own scale), no f16 allowance.
    pub fn top_k(tol: Tolerance) -> RowsTolerance {
        RowsTolerance {
            atol: tol.atol,
            rtol: tol.rtol,
            conf: f32::NEG_INFINITY,
            kpt_dim: None,
            noise: [0.0; 5],
            suppression: None,
        }
    }
}

/// Which columns share one scale (the relative part of their limit): the box columns and
/// keypoint coordinates are all pixels (or all normalised), keypoint visibilities are
/// probabilities; the score and the class stand alone; other extras (group 4) each keep their
/// own. A coordinate column alone would take its scale from the few rows there are, so one near
/// 0 would get a limit far below the rounding of the pixel values it was computed with.
pub(super) fn group(j: usize, kpt_dim: Option<usize>) -> usize {
    match (j, kpt_dim) {
        (0..=3, _) => 0,
        (SCORE, _) => 1,
        (CLASS, _) => 2,
        (_, Some(d)) if (j - 6) % d < 2 => 0,
        (_, Some(_)) => 3,
        _ => OWN_SCALE,
    }
}

/// Compares `got` with `want` (reference), both (B, K, C ≥ 6), as detection sets per image: one
/// task check per image.
pub fn rows_check(got: &RefTensor, want: &RefTensor, tol: RowsTolerance) -> Vec<TaskCheck> {
    nms_rows_check(got, want, None, tol)
}

/// [`rows_check`] of NMS rows with the reference's candidates: `candidates` (B, N, C) holds, as
/// rows, what the model computed before suppression (every anchor at or near the threshold).
/// Then a row the ONNX alone keeps — at the threshold, the cut or a tie — must be one of them:
/// a real detection the other side dropped, never a moved box or an invented row.
pub fn nms_rows_check(
    got: &RefTensor,
    want: &RefTensor,
    candidates: Option<&RefTensor>,
    tol: RowsTolerance,
) -> Vec<TaskCheck> {
    if got.shape != want.shape {
        return vec![shape_failure(&got.shape, &want.shape)];
    }
    if let Some(c) = candidates
        && (c.shape.len() != 3 || c.shape[0] != want.shape[0] || c.shape[2] != want.shape[2])
    {
        return vec![shape_failure(&c.shape, &want.shape)];
    }
    sets(
        "output0",
        &want.shape,
        (&got.data, &want.data),
        candidates,
        tol,
    )
    .1
}

/// Top-k rows `got` (ONNX) against `want` (reference), both of `shape` (B, K, C ≥ 6), with the
/// output tolerance `tol` ([`RowsTolerance::top_k`]): the output's statistics over matched rows
/// (column = channel) and one task check per image.
pub fn compare_rows(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: Tolerance,
) -> (OutputStats, Vec<TaskCheck>) {
    detection_sets(name, shape, got, want, RowsTolerance::top_k(tol))
}

fn shape_failure(got: &[usize], want: &[usize]) -> TaskCheck {
    TaskCheck {
        kind: "detection rows",
        image: 0,
        pass: false,
        detail: format!("rows of shape {got:?} vs {want:?} (expected (B, K, 6 + extra) on both)"),
    }
}

/// The comparison behind [`rows_check`] and [`compare_rows`], without candidates.
pub fn detection_sets(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: RowsTolerance,
) -> (OutputStats, Vec<TaskCheck>) {
    sets(name, shape, (got, want), None, tol)
}

/// The one comparison: `candidates`, when given, are the reference's rows before suppression,
/// of the same width, (B, N, C).
fn sets(
    name: &str,
    shape: &[usize],
    (got, want): (&[f32], &[f32]),
    candidates: Option<&RefTensor>,
    tol: RowsTolerance,
) -> (OutputStats, Vec<TaskCheck>) {
    let mut stats = OutputStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        max_abs: f64::INFINITY,
        max_rel: 0.0,
        mean_abs: 0.0,
        cosine: 1.0,
        reference_max: want.iter().fold(0f64, |m, &v| m.max((v as f64).abs())),
        worst_channel: 0,
        worst_channel_max_abs: 0.0,
        worst_channel_limit: tol.atol,
        worst_channel_f16_noise: None,
        pass: false,
    };
    let (b, k, c) = match *shape {
        [b, k, c] if c >= 6 && got.len() == b * k * c && want.len() == b * k * c => (b, k, c),
        _ => return (stats, vec![shape_failure(shape, shape)]),
    };
    let limit = limits(want, (b * k, c), &tol);
    // OBB rows: `cx cy w h score class angle`.
    let rotated = c == ANGLE + 1 && tol.suppression.is_some_and(|s| s.centred);
    // Two classes whose sigmoid saturates at 1.0 tie; which one is "best" is then rounding. The
    // f16 allowance stays out of this: a score 0.5 from 1 is not saturated however noisy.
    let base = RowsTolerance {
        noise: [0.0; 5],
        ..tol
    };
    let saturation = limits(want, (b * k, c), &base)[SCORE];
    let saturated = |s: f32| ((1.0 - s) as f64) <= saturation;
    let within = |x: &[f32], y: &[f32]| {
        let col = |j: usize, a: f32, b: f32| ((a - b).abs() as f64) <= limit[j];
        if !rotated {
            return (0..c).all(|j| j == CLASS || col(j, x[j], y[j]));
        }
        // One rotated box has two spellings a half turn apart, and each again a quarter turn
        // on with width and height exchanged: the anchors of a near-square object predict
        // either, and rounding may keep the other one (yolov8-obb `--nms --half`).
        let angle = |turn: f32| half_turns_apart(x[ANGLE], y[ANGLE] + turn) <= limit[ANGLE];
        let rest = |j: usize| matches!(j, CLASS | 2 | 3 | ANGLE) || col(j, x[j], y[j]);
        (0..c).all(rest)
            && ((col(2, x[2], y[2]) && col(3, x[3], y[3]) && angle(0.0))
                || (col(2, x[2], y[3]) && col(3, x[3], y[2]) && angle(FRAC_PI_2)))
    };
    let near = |s: f32, at: f32| ((s - at).abs() as f64) <= 2.0 * limit[SCORE];
    let mut acc = Accumulator::new(c);
    let mut checks = Vec::new();
    for img in 0..b {
        // All-zero rows are NMS padding; a top-k list has none.
        let rows = |d: &[f32], k: usize| -> Vec<Vec<f32>> {
            (0..k)
                .map(|r| d[(img * k + r) * c..(img * k + r + 1) * c].to_vec())
                .filter(|r| r.iter().any(|v| *v != 0.0))
                .collect()
        };
        let (g, w) = (rows(got, k), rows(want, k));
        let cands = candidates.map(|t| rows(&t.data, t.shape[1]));
        // Two rows of different classes match only where both classes saturate at that box in
        // the reference's own candidates (a tie at 1.0 that rounding breaks either way); a
        // saturated row alone is no licence to relabel it (review 7: every confident detection
        // relabelled passed). Without candidates the class must agree.
        let backed = |r: &[f32]| {
            (cands.as_deref()).is_some_and(|cs| {
                cs.iter()
                    .any(|o| o[CLASS] == r[CLASS] && saturated(o[SCORE]) && within(r, o))
            })
        };
        let close = |x: &[f32], y: &[f32]| {
            within(x, y)
                && (x[CLASS] == y[CLASS]
                    || (saturated(x[SCORE]) && saturated(y[SCORE]) && backed(x) && backed(y)))
        };
        let mut matched = 0usize;
        let mut used = vec![false; g.len()];
        let mut lost = Vec::new();
        for (i, r) in w.iter().enumerate() {
            match (0..g.len()).find(|&j| !used[j] && close(r, &g[j])) {
                Some(j) => {
                    used[j] = true;
                    matched += 1;
                    acc.add(&g[j], r);
                }
                None => lost.push(i),
            }
        }
        let extra: Vec<usize> = (0..g.len()).filter(|&j| !used[j]).collect();
        let rules = ambiguity::Rules {
            k,
            conf: tol.conf,
            near: &near,
            saturated: &saturated,
            close: &close,
            box_limit: [limit[0], limit[1], limit[2], limit[3]],
            suppression: tol.suppression,
        };
        let (ambiguous, problems) = rules.judge((&g, &extra), (&w, &lost), cands.as_deref());
        let problems: Vec<String> = problems
            .into_iter()
            .map(|(onnx, r)| unmatched(if onnx { "ONNX" } else { "reference" }, r))
            .collect();
        let counts = format!("{} vs {} rows, {matched} matched", g.len(), w.len());
        checks.push(TaskCheck {
            kind: "detection rows",
            image: img,
            pass: problems.is_empty(),
            detail: if problems.is_empty() {
                format!(
                    "{counts} by class and every column ({ambiguous} unmatched at a tie, the threshold or the cut)"
                )
            } else {
                // A few rows say what is wrong; a list of hundreds would bury it.
                let more = problems.len().saturating_sub(MAX_LISTED);
                let listed = problems[..problems.len().min(MAX_LISTED)].join(", ");
                match more {
                    0 => format!("{counts}; {listed}"),
                    n => format!("{counts}; {listed}, and {n} more rows have no match"),
                }
            },
        });
    }
    acc.finish(&mut stats, &limit);
    stats.pass = checks.iter().all(|t| t.pass);
    (stats, checks)
}

/// The score column's limit for the NMS rows `rows` (B, K, C) under `tol`: how far an ONNX score
/// may honestly lie from the reference's.
pub fn score_limit(rows: &RefTensor, tol: &RowsTolerance) -> f64 {
    match rows.shape[..] {
        [b, k, c] if c >= 6 && rows.data.len() == b * k * c => {
            limits(&rows.data, (b * k, c), tol)[SCORE]
        }
        _ => tol.atol,
    }
}

/// How far angle `a` lies from `b` modulo a half turn (a rotated box is the same box turned by
/// π), in radians: at most π/2.
fn half_turns_apart(a: f32, b: f32) -> f64 {
    let d = (a as f64 - b as f64).rem_euclid(std::f64::consts::PI);
    d.min(std::f64::consts::PI - d)
}

/// Each column's limit: atol + rtol · the largest reference magnitude of its group (or of the
/// column itself, for extras of unknown kind) + the group's f16 allowance.
fn limits(want: &[f32], (rows, c): (usize, usize), tol: &RowsTolerance) -> Vec<f64> {
    let col_peak: Vec<f64> = (0..c)
        .map(|j| (0..rows).fold(0f64, |m, r| m.max((want[r * c + j] as f64).abs())))
        .collect();
    let mut peak = [0f64; 5];
    for (j, p) in col_peak.iter().enumerate() {
        let g = &mut peak[group(j, tol.kpt_dim)];
        *g = g.max(*p);
    }
    (0..c)
        .map(|j| {
            let g = group(j, tol.kpt_dim);
            let scale = if g == OWN_SCALE { col_peak[j] } else { peak[g] };
            tol.atol + tol.rtol * scale + tol.noise[g]
        })
        .collect()
}

/// The f16 rounding noise of each column group of top-k rows: how far the f16-emulating
/// reference's rows (`emulated`) lie from the exact reference's (`exact`), both (B, K, C). Rows
/// are not paired by position (the emulation may rank and select differently), so each exact
/// row is paired with the emulated row of its class whose box is nearest, and counted only when
/// that box is within the box columns' base limit (`tol` without noise): the same detection,
/// whose other columns (the score above all) then show what f16 moves. RT-DETR needs this: its
/// decoder attends among the queries it selected, so where f16 selects a few others every score
/// moves (PyTorch's own f16 forward of the fixture moves them by up to 0.15, median 0.02).
pub fn f16_noise(exact: &RefTensor, emulated: &RefTensor, tol: RowsTolerance) -> [f64; 5] {
    let mut noise = [0f64; 5];
    let (b, k, c) = match exact.shape[..] {
        [b, k, c] if c >= 6 && exact.shape == emulated.shape => (b, k, c),
        _ => return noise,
    };
    let base = RowsTolerance {
        noise: [0.0; 5],
        ..tol
    };
    let limit = limits(&exact.data, (b * k, c), &base);
    for img in 0..b {
        let (x, e): (Vec<&[f32]>, Vec<&[f32]>) = (0..k)
            .map(|r| (img * k + r) * c..(img * k + r + 1) * c)
            .map(|span| (&exact.data[span.clone()], &emulated.data[span]))
            .unzip();
        for r in &x {
            let box_gap = |o: &&[f32]| (0..4).map(|j| (o[j] - r[j]).abs()).fold(0f32, f32::max);
            let nearest = e
                .iter()
                .filter(|o| o[CLASS] == r[CLASS])
                .min_by(|p, q| box_gap(p).total_cmp(&box_gap(q)));
            let Some(o) =
                nearest.filter(|o| (0..4).all(|j| ((o[j] - r[j]).abs() as f64) <= limit[j]))
            else {
                continue;
            };
            for j in (0..c).filter(|&j| j != CLASS) {
                let d = (o[j] - r[j]).abs() as f64;
                let g = &mut noise[group(j, tol.kpt_dim)];
                if d.is_finite() {
                    *g = g.max(d);
                }
            }
        }
    }
    noise
}

fn unmatched(side: &str, r: &[f32]) -> String {
    format!(
        "{side} row class {} score {:.4} box [{:.2}, {:.2}, {:.2}, {:.2}] has no match",
        r[CLASS], r[SCORE], r[0], r[1], r[2], r[3]
    )
}

/// Statistics over matched row pairs.
struct Accumulator {
    col_max: Vec<f64>,
    max_rel: f64,
    sum_abs: f64,
    count: usize,
    dot: f64,
    gg: f64,
    ww: f64,
}

impl Accumulator {
    fn new(c: usize) -> Accumulator {
        Accumulator {
            col_max: vec![0.0; c],
            max_rel: 0.0,
            sum_abs: 0.0,
            count: 0,
            dot: 0.0,
            gg: 0.0,
            ww: 0.0,
        }
    }

    fn add(&mut self, got: &[f32], want: &[f32]) {
        for (col, (&x, &y)) in got.iter().zip(want).enumerate() {
            let (x, y) = (x as f64, y as f64);
            let d = (x - y).abs();
            self.col_max[col] = self.col_max[col].max(d);
            self.max_rel = self.max_rel.max(d / (y.abs() + 1e-6));
            self.sum_abs += d;
            self.count += 1;
            self.dot += x * y;
            self.gg += x * x;
            self.ww += y * y;
        }
    }

    /// Fills `stats`: the worst column is the one furthest over (or nearest to) its limit,
    /// the class excluded.
    fn finish(self, stats: &mut OutputStats, limit: &[f64]) {
        let worst = (0..self.col_max.len())
            .filter(|&j| j != CLASS)
            .max_by(|&p, &q| (self.col_max[p] / limit[p]).total_cmp(&(self.col_max[q] / limit[q])))
            .unwrap_or(0);
        stats.max_abs = self.col_max.iter().copied().fold(0.0, f64::max);
        stats.max_rel = self.max_rel;
        stats.mean_abs = self.sum_abs / self.count.max(1) as f64;
        stats.cosine = if self.gg > 0.0 && self.ww > 0.0 {
            self.dot / (self.gg.sqrt() * self.ww.sqrt())
        } else {
            1.0
        };
        stats.worst_channel = worst;
        stats.worst_channel_max_abs = self.col_max.get(worst).copied().unwrap_or(0.0);
        stats.worst_channel_limit = limit.get(worst).copied().unwrap_or(0.0);
    }
}

#[path = "rows_ambiguity.rs"]
mod ambiguity;

#[cfg(test)]
#[path = "rows_obb_tests.rs"]
mod obb_tests;
#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
