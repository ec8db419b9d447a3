//! The run side of the detection heads: per-anchor decoding written as plain loops.

use super::{HeadKind, HeadSpec};
use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::{BuildResult, LayerError};
use crate::reference::ops::RefTensor;
use crate::reference::{Reference, shape};

use super::decode::Level;

impl Reference<'_> {
    /// Runs branch `i` of each of the head's branch lists `lists` (`cv2`; `cv4` then
    /// `cv4_kpts`), in turn, on level `x`.
    fn level(
        &mut self,
        head: ModuleRef,
        lists: &[String],
        i: usize,
        x: &RefTensor,
    ) -> BuildResult<RefTensor> {
        let mut y = x.clone();
        for list in lists {
            let branch = head.child(list)?.children();
            let m = branch
                .get(i)
                .ok_or_else(|| {
                    LayerError::shape(head.class(), format!("{list} has no branch {i}"))
                })?
                .1;
            y = self.module(m, LayerInput::One(y))?;
        }
        Ok(y)
    }

    /// The detection heads in export form, or as end-to-end rows (see `Builder::detect`).
    pub(crate) fn head(&mut self, m: ModuleRef, xs: &[RefTensor]) -> BuildResult<RefTensor> {
        let spec = HeadSpec::parse(m, xs.len(), self.head)?;
        let class = spec.class.clone();
        let (nc, rm, extra) = (spec.nc as usize, spec.reg_max as usize, spec.extra as usize);
        let strides = &spec.strides;
        let mut n = 0;
        let mut total = 0usize;
        for x in xs {
            let (xn, _, h, w) = shape::nchw(x, &class)?;
            n = xn;
            total += h * w;
        }
        // Each level's branch outputs (box distribution 4·rm, class logits nc, extra channels),
        // decoded below straight from them into the output's columns.
        let mut levels = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            let (h, w) = (x.shape[2], x.shape[3]);
            let b = self.level(m, &[spec.branch("cv2")], i, x)?;
            let c = self.level(m, &[spec.branch("cv3")], i, x)?;
            let xe = if extra > 0 {
                Some(self.level(m, &spec.extra_branches(), i, x)?)
            } else {
                None
            };
            let fits = |t: &RefTensor, ch: usize| t.shape == [n, ch, h, w];
            if !fits(&b, 4 * rm) || !fits(&c, nc) || xe.as_ref().is_some_and(|t| !fits(t, extra)) {
                return Err(LayerError::shape(
                    format!("{class} level {i}"),
                    format!(
                        "branch outputs {:?} and {:?} do not fit {} box and {nc} class channels at {h}x{w}",
                        b.shape,
                        c.shape,
                        4 * rm
                    ),
                ));
            }
            levels.push(Level {
                b,
                c,
                xe,
                w,
                stride: strides[i] as f32,
            });
        }
        let bins: Vec<f32> = if rm > 1 {
            m.child("dfl")?.child("conv")?.need_f32("weight")?.0
        } else {
            vec![1.0]
        };
        shape::per_channel(bins.len(), rm, &format!("{class} DFL bins"))?;
        // HeadSpec checked that the keypoints fill the extra channels exactly.
        let rows = 4 + nc + extra;
        let mut out = vec![0.0f32; n * rows * total];
        let mut offset = 0;
        for lv in &levels {
            let hw = lv.b.shape[2] * lv.w;
            super::decode::level(&spec, lv, &bins, (total, offset), &mut out);
            offset += hw;
        }
        if spec.kind == HeadKind::Segment {
            let p = m.child("proto")?;
            let protos = self.prototypes(p, xs)?;
            self.extra.push(protos);
        }
        let y = RefTensor::new(out, vec![n, rows, total]);
        match spec.max_det {
            Some(max_det) => Ok(super::topk::rows(&y, nc, max_det)),
            None => Ok(y),
        }
    }
}
