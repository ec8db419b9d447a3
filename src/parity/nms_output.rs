//! The rows of an `--nms` export as the reference makes them: its own NMS on the model's raw
//! output, and the tolerance those rows are compared with.

use super::rows::{self, RowsTolerance};
use super::{Tolerance, channel_noise};
use crate::reference::ops::RefTensor;

/// How near 1 a score counts as saturated when listing the classes tied at an anchor: wider
/// than the comparison's own limit (which decides, with the rows' columns, what matches).
const SATURATED: f32 = 0.01;

/// An `--nms` export: its `output0` holds detection rows, which the reference makes by running
/// its own NMS on the model's output, and which are compared as sets ([`rows_check`]).
#[derive(Clone, Copy, Debug)]
pub struct NmsOutput {
    /// The NMS the export embeds.
    pub nms: crate::onnx::nms::Nms,
    /// Rows per image.
    pub max_det: usize,
    /// Pose models: values per keypoint (`kpt_shape[1]`).
    pub kpt_dim: Option<usize>,
}

impl NmsOutput {
    /// The reference's rows from its raw (B, 4 + nc + extra, anchors) `output0`.
    pub(super) fn rows(
        &self,
        raw: &RefTensor,
        task: &str,
        nc: usize,
        input: &[usize],
    ) -> Result<RefTensor, super::ParityError> {
        let rows = raw.shape.get(1).copied().unwrap_or(0);
        if raw.shape.len() != 3 || rows < 4 + nc || input.len() != 4 {
            return Err(super::ParityError::NmsShape {
                nc,
                shape: raw.shape.clone(),
            });
        }
        let layout = crate::onnx::nms::Layout {
            nc: nc as i64,
            extra: (rows - 4 - nc) as i64,
        };
        let hw = (input[2], input[3]);
        if task == "obb" {
            if layout.extra != 1 {
                return Err(super::ParityError::ObbAngles(layout.extra));
            }
            let r = crate::reference::nms::nms_rotated(raw, nc, &self.nms, self.max_det, hw);
            return Ok(r);
        }
        Ok(crate::reference::nms::nms(
            raw,
            layout,
            &self.nms,
            self.max_det,
            hw,
        ))
    }

    /// The f16 rounding noise of each column group of the rows ([`rows::group`]), from the
    /// exact and the f16-emulating reference's raw outputs (channel = row of the raw output).
    pub(super) fn noise(&self, exact: &RefTensor, emulated: &RefTensor, nc: usize) -> [f64; 5] {
        let per_channel = channel_noise(&exact.shape, &emulated.data, &exact.data);
        let mut groups = [0f64; 5];
        for (r, n) in per_channel.iter().enumerate() {
            // Raw rows: box 0..4, scores 4..4 + nc, then the extras as the rows' columns 6….
            let column = match r {
                0..=3 => r,
                _ if r < 4 + nc => 4,
                _ => r - 4 - nc + 6,
            };
            let g = &mut groups[rows::group(column, self.kpt_dim)];
            *g = g.max(*n);
        }
        groups
    }

    /// The reference's candidates before suppression, as rows of the output's width (B, N,
    /// 6 + extra): each anchor whose best score is above the threshold less 0.05 (OBB: every
    /// anchor, those at or below the threshold with score 0, as its NMS keeps them), zero rows
    /// for the others; then, for each anchor, a row for every other class whose score also
    /// saturates (within [`SATURATED`] of 1): the classes a tie at 1.0 may pick, and the only
    /// ones a row of another class may be matched with; and a row for every other class
    /// above the threshold less 0.05 whose score is within `near` of the best (twice the rows'
    /// score limit): the classes rounding may make the best there (yolov8-seg `--nms --half`
    /// at 64: classes 0.5146 and 0.5148 at one anchor, the f16 ONNX picks the other). An ONNX
    /// row that only one side keeps must be one of these.
    pub(super) fn candidates(
        &self,
        raw: &RefTensor,
        task: &str,
        nc: usize,
        near: f32,
    ) -> RefTensor {
        let (b, rows, a) = match raw.shape[..] {
            [b, rows, a] if rows >= 4 + nc && nc > 0 => (b, rows, a),
            _ => return RefTensor::new(Vec::new(), vec![0, 0, 6]),
        };
        let extra = rows - 4 - nc;
        let width = 6 + extra;
        let rotated = task == "obb";
        let mut per_image: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(b);
        for img in 0..b {
            let at = |r: usize, k: usize| raw.data[(img * rows + r) * a + k];
            let mut best_rows = vec![0f32; a * width];
            let mut ties = Vec::new();
            for k in 0..a {
                let best = (1..nc).fold((0, at(4, k)), |m, c| match at(4 + c, k) > m.1 {
                    true => (c, at(4 + c, k)),
                    false => m,
                });
                let above = best.1 > self.nms.conf;
                if !(rotated || best.1 > self.nms.conf - 0.05) {
                    continue;
                }
                let (cx, cy, w, h) = (at(0, k), at(1, k), at(2, k), at(3, k));
                let o = &mut best_rows[k * width..][..width];
                o[..4].copy_from_slice(&match rotated {
                    true => [cx, cy, w, h],
                    false => [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                });
                o[4] = if rotated && !above { 0.0 } else { best.1 };
                o[5] = best.0 as f32;
                for e in 0..extra {
                    o[6 + e] = at(4 + nc + e, k);
                }
                let row = o.to_vec();
                let contender = |s: f32| {
                    1.0 - s <= SATURATED || (best.1 - s <= near && s > self.nms.conf - 0.05)
                };
                for c in (0..nc).filter(|&c| c != best.0 && contender(at(4 + c, k))) {
                    ties.extend_from_slice(&row[..4]);
                    ties.extend_from_slice(&[at(4 + c, k), c as f32]);
                    ties.extend_from_slice(&row[6..]);
                }
            }
            per_image.push((best_rows, ties));
        }
        let n = a
            + (per_image.iter().map(|(_, t)| t.len() / width))
                .max()
                .unwrap_or(0);
        let mut out = vec![0f32; b * n * width];
        for (img, (best, ties)) in per_image.into_iter().enumerate() {
            let o = &mut out[img * n * width..][..n * width];
            o[..best.len()].copy_from_slice(&best);
            o[best.len()..best.len() + ties.len()].copy_from_slice(&ties);
        }
        RefTensor::new(out, vec![b, n, width])
    }

    /// The tolerance of the rows of a model of `task`, run on inputs of shape `input` (B, C, H,
    /// W) when known: the export's NMS tells classes apart by shifting each class's boxes by
    /// the input's larger side, so boxes larger than the input reach across classes.
    pub(super) fn tolerance(
        &self,
        tol: Tolerance,
        task: &str,
        input: Option<&[usize]>,
    ) -> RowsTolerance {
        let class_shift = match (self.nms.agnostic, input) {
            (true, _) => Some(0.0),
            (false, Some(&[_, _, h, w])) => Some(h.max(w) as f32),
            (false, _) => None,
        };
        RowsTolerance {
            atol: tol.atol,
            rtol: tol.rtol,
            conf: self.nms.conf,
            kpt_dim: self.kpt_dim,
            noise: [0.0; 5],
            suppression: Some(rows::Suppression {
                iou: self.nms.iou,
                centred: task == "obb",
                class_shift,
            }),
        }
    }
}
