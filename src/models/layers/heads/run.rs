//! The run side of the detection heads: per-anchor decoding written as plain loops.

use super::{HeadKind, HeadSpec};
use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::{BuildResult, LayerError};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

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
        // Per anchor: box distribution (4·rm), class logits (nc), extra channels.
        let mut bx = vec![0.0f32; n * 4 * rm * total];
        let mut cl = vec![0.0f32; n * nc * total];
        let mut ex = vec![0.0f32; n * extra * total];
        let mut anchors = Vec::with_capacity(total);
        let mut offset = 0;
        for (i, x) in xs.iter().enumerate() {
            let (h, w) = (x.shape[2], x.shape[3]);
            let hw = h * w;
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
            for bi in 0..n {
                for (dst, src, ch) in [(&mut bx, &b, 4 * rm), (&mut cl, &c, nc)] {
                    for k in 0..ch {
                        let s = &src.data[(bi * ch + k) * hw..(bi * ch + k + 1) * hw];
                        let d0 = (bi * ch + k) * total + offset;
                        dst[d0..d0 + hw].copy_from_slice(s);
                    }
                }
                if let Some(xe) = &xe {
                    for k in 0..extra {
                        let s = &xe.data[(bi * extra + k) * hw..(bi * extra + k + 1) * hw];
                        let d0 = (bi * extra + k) * total + offset;
                        ex[d0..d0 + hw].copy_from_slice(s);
                    }
                }
            }
            for y in 0..h {
                for xx in 0..w {
                    anchors.push((xx as f32 + 0.5, y as f32 + 0.5, strides[i] as f32));
                }
            }
            offset += hw;
        }
        let bins: Vec<f32> = if rm > 1 {
            m.child("dfl")?.child("conv")?.need_f32("weight")?.0
        } else {
            vec![1.0]
        };
        shape::per_channel(bins.len(), rm, &format!("{class} DFL bins"))?;
        // HeadSpec checked that the keypoints fill the extra channels exactly.
        let nd = spec.kpt_shape.map_or(1, |(_, d)| d as usize);
        let rows = 4 + nc + extra;
        let mut out = vec![0.0f32; n * rows * total];
        for bi in 0..n {
            for (a, &(ax, ay, st)) in anchors.iter().enumerate() {
                let mut d = [0.0f32; 4];
                for (side, ds) in d.iter_mut().enumerate() {
                    let logit = |r: usize| bx[(bi * 4 * rm + side * rm + r) * total + a];
                    if rm == 1 {
                        *ds = logit(0);
                        continue;
                    }
                    let mx = (0..rm).map(logit).fold(f32::NEG_INFINITY, f32::max);
                    let (mut num, mut den) = (0.0f32, 0.0f32);
                    for (r, wr) in bins.iter().enumerate() {
                        let p = (logit(r) - mx).exp();
                        num += p * wr;
                        den += p;
                    }
                    *ds = num / den;
                }
                let [l, t, r, b] = d;
                let o = |row: usize| (bi * rows + row) * total + a;
                let angle = |raw: f32| {
                    if spec.yolo26 {
                        raw
                    } else {
                        (ops::sigmoid(raw) - 0.25) * std::f32::consts::PI
                    }
                };
                let (cx, cy, w, h) = if spec.kind == HeadKind::Obb {
                    let theta = angle(ex[(bi * extra) * total + a]);
                    let (xf, yf) = ((r - l) / 2.0, (b - t) / 2.0);
                    let (s, c) = theta.sin_cos();
                    (xf * c - yf * s + ax, xf * s + yf * c + ay, l + r, t + b)
                } else if spec.max_det.is_some() {
                    // End-to-end rows hold corners.
                    (ax - l, ay - t, ax + r, ay + b)
                } else {
                    let (x1, y1, x2, y2) = (ax - l, ay - t, ax + r, ay + b);
                    ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1)
                };
                for (row, v) in [cx, cy, w, h].into_iter().enumerate() {
                    out[o(row)] = v * st;
                }
                for k in 0..nc {
                    out[o(4 + k)] = ops::sigmoid(cl[(bi * nc + k) * total + a]);
                }
                let raw = |k: usize| ex[(bi * extra + k) * total + a];
                // Pose keypoints: Pose26 offsets them from the anchor, Pose from the anchor's
                // corner and doubled.
                let kpt = |v: f32, at: f32| {
                    if spec.yolo26 {
                        (v + at) * st
                    } else {
                        (v * 2.0 + (at - 0.5)) * st
                    }
                };
                match spec.kind {
                    HeadKind::Segment => (0..extra).for_each(|k| out[o(4 + nc + k)] = raw(k)),
                    HeadKind::Obb => out[o(4 + nc)] = angle(raw(0)),
                    HeadKind::Pose => {
                        for kp in 0..extra / nd {
                            out[o(4 + nc + kp * nd)] = kpt(raw(kp * nd), ax);
                            out[o(4 + nc + kp * nd + 1)] = kpt(raw(kp * nd + 1), ay);
                            if nd == 3 {
                                out[o(4 + nc + kp * nd + 2)] = ops::sigmoid(raw(kp * nd + 2));
                            }
                        }
                    }
                    HeadKind::Detect => {}
                }
            }
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
