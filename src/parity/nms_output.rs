//! The rows of an `--nms` export as the reference makes them: its own NMS on the model's raw
//! output, and the tolerance those rows are compared with.

use super::rows::{self, RowsTolerance};
use super::{Tolerance, channel_noise};
use crate::reference::ops::RefTensor;

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

    pub(super) fn tolerance(&self, tol: Tolerance) -> RowsTolerance {
        RowsTolerance {
            atol: tol.atol,
            rtol: tol.rtol,
            conf: self.nms.conf,
            kpt_dim: self.kpt_dim,
            noise: [0.0; 5],
        }
    }
}
