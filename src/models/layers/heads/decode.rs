//! The interpreter's head decoding, one output row at a time: every row of the output (a box
//! coordinate, a class score, a mask coefficient, a keypoint value) is a pass over a level's
//! anchors that reads contiguous runs of the branch outputs, so it compiles to SIMD and the rows
//! share rayon's pool. (Anchor by anchor, with a stride of the whole anchor count between the
//! values of one anchor, it was ~10 % of the interpreter's single-thread time on yolo11n.)
//! Each element is computed by the same expression whatever the thread count.

use rayon::prelude::*;

use super::{HeadKind, HeadSpec};
use crate::reference::ops::{self, RefTensor};
use crate::reference::vmath;

/// One level's branch outputs: box distribution `b` (4·reg_max channels), class logits `c`
/// (nc), extra channels `xe`; its width and stride.
pub(crate) struct Level {
    pub(crate) b: RefTensor,
    pub(crate) c: RefTensor,
    pub(crate) xe: Option<RefTensor>,
    pub(crate) w: usize,
    pub(crate) stride: f32,
}

/// Decodes `lv` into the columns `offset..offset + h·w` of `out` (images × rows × `total`
/// anchors, rows = 4 box values, nc scores, the extra channels). The shapes were checked by
/// the caller.
pub(crate) fn level(
    spec: &HeadSpec,
    lv: &Level,
    bins: &[f32],
    (total, offset): (usize, usize),
    out: &mut [f32],
) {
    let (n, hw) = (lv.b.shape[0], lv.b.shape[2] * lv.w);
    let (nc, extra, rm) = (spec.nc as usize, spec.extra as usize, bins.len());
    let rows = 4 + nc + extra;
    if hw == 0 || total == 0 {
        return;
    }
    // Each box side's distance, per image and anchor: the DFL expectation over its bins.
    let mut dist = vec![0.0f32; n * 4 * hw];
    dist.par_chunks_mut(hw).enumerate().for_each(|(q, d)| {
        let logits = &lv.b.data[q * rm * hw..][..rm * hw];
        expectation(logits, bins, d);
    });
    let nd = spec.kpt_shape.map_or(1, |(_, d)| d as usize);
    out.par_chunks_mut(total).enumerate().for_each(|(q, row)| {
        let (bi, r) = (q / rows, q % rows);
        let o = &mut row[offset..offset + hw];
        if r < 4 {
            let side = |s: usize| &dist[(bi * 4 + s) * hw..][..hw];
            let ex = lv.xe.as_ref().map(|t| &t.data[bi * extra * hw..][..hw]);
            box_row(spec, r, [side(0), side(1), side(2), side(3)], ex, lv, o);
        } else if r < 4 + nc {
            o.copy_from_slice(&lv.c.data[(bi * nc + r - 4) * hw..][..hw]);
            ops::map_run(o, ops::sigmoid);
        } else if let Some(xe) = &lv.xe {
            let k = r - 4 - nc;
            let raw = &xe.data[(bi * extra + k) * hw..][..hw];
            extra_row(spec, (k, nd), raw, lv, o);
        }
    });
}

/// Σᵣ softmax(logits)ᵣ · binᵣ for each anchor, `logits` holding one row of anchors per bin.
fn expectation(logits: &[f32], bins: &[f32], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { expectation_avx2(logits, bins, d) };
        return;
    }
    expectation_loop(logits, bins, d);
}

/// [`expectation_loop`] compiled for AVX2 (not FMA: the same bits as the baseline build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn expectation_avx2(logits: &[f32], bins: &[f32], d: &mut [f32]) {
    expectation_loop(logits, bins, d);
}

/// The body of [`expectation`]: bins in order for every anchor, so each anchor's sums are
/// accumulated as a loop over its own bins would.
#[inline(always)]
fn expectation_loop(logits: &[f32], bins: &[f32], d: &mut [f32]) {
    let hw = d.len();
    if bins.len() == 1 {
        d.copy_from_slice(&logits[..hw]);
        return;
    }
    let mut mx = vec![f32::NEG_INFINITY; hw];
    for row in logits.chunks_exact(hw) {
        for (m, &v) in mx.iter_mut().zip(row) {
            *m = m.max(v);
        }
    }
    let mut den = vec![0.0f32; hw];
    d.fill(0.0);
    for (row, &wr) in logits.chunks_exact(hw).zip(bins) {
        for ((num, den), (&v, &m)) in d.iter_mut().zip(&mut den).zip(row.iter().zip(&mx)) {
            let p = vmath::exp(v - m);
            *num += p * wr;
            *den += p;
        }
    }
    for (num, den) in d.iter_mut().zip(&den) {
        *num /= den;
    }
}

/// Box row `r` (cx, cy, w, h; or x1, y1, x2, y2 for end-to-end rows) from the side distances
/// `[l, t, r, b]`, the OBB angle's raw channel `ex`, and the anchors' grid.
fn box_row(
    spec: &HeadSpec,
    r: usize,
    [l, t, rt, b]: [&[f32]; 4],
    ex: Option<&[f32]>,
    lv: &Level,
    o: &mut [f32],
) {
    let (w, st) = (lv.w, lv.stride);
    for (j, v) in o.iter_mut().enumerate() {
        let (ax, ay) = ((j % w) as f32 + 0.5, (j / w) as f32 + 0.5);
        let (l, t, rr, b) = (l[j], t[j], rt[j], b[j]);
        let value = if spec.kind == HeadKind::Obb {
            let theta = angle(spec, ex.map_or(0.0, |e| e[j]));
            let (xf, yf) = ((rr - l) / 2.0, (b - t) / 2.0);
            let (s, c) = theta.sin_cos();
            match r {
                0 => xf * c - yf * s + ax,
                1 => xf * s + yf * c + ay,
                2 => l + rr,
                _ => t + b,
            }
        } else if spec.max_det.is_some() {
            // End-to-end rows hold corners.
            match r {
                0 => ax - l,
                1 => ay - t,
                2 => ax + rr,
                _ => ay + b,
            }
        } else {
            let (x1, y1, x2, y2) = (ax - l, ay - t, ax + rr, ay + b);
            match r {
                0 => (x1 + x2) / 2.0,
                1 => (y1 + y2) / 2.0,
                2 => x2 - x1,
                _ => y2 - y1,
            }
        };
        *v = value * st;
    }
}

/// The OBB angle from its raw channel: YOLO26 uses it as it is.
fn angle(spec: &HeadSpec, raw: f32) -> f32 {
    if spec.yolo26 {
        raw
    } else {
        (ops::sigmoid(raw) - 0.25) * std::f32::consts::PI
    }
}

/// Extra channel `k` (of keypoints with `nd` values each) from its raw values.
fn extra_row(spec: &HeadSpec, (k, nd): (usize, usize), raw: &[f32], lv: &Level, o: &mut [f32]) {
    let (w, st) = (lv.w, lv.stride);
    // Pose keypoints: Pose26 offsets them from the anchor, Pose from the anchor's corner and
    // doubled.
    let kpt = |v: f32, at: f32| {
        if spec.yolo26 {
            (v + at) * st
        } else {
            (v * 2.0 + (at - 0.5)) * st
        }
    };
    match spec.kind {
        HeadKind::Segment => o.copy_from_slice(raw),
        HeadKind::Obb if k == 0 => {
            for (v, &x) in o.iter_mut().zip(raw) {
                *v = angle(spec, x);
            }
        }
        HeadKind::Pose => match k % nd {
            0 => (o.iter_mut().zip(raw).enumerate())
                .for_each(|(j, (v, &x))| *v = kpt(x, (j % w) as f32 + 0.5)),
            1 => (o.iter_mut().zip(raw).enumerate())
                .for_each(|(j, (v, &x))| *v = kpt(x, (j / w) as f32 + 0.5)),
            _ => {
                o.copy_from_slice(raw);
                ops::map_run(o, ops::sigmoid);
            }
        },
        HeadKind::Obb | HeadKind::Detect => {}
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
