//! Detection heads of the reference interpreter: per-anchor decoding written as plain loops.

use super::ops::{self, T};
use super::shape;
use super::{Input, R, Reference, e};
use crate::checkpoint::py::M;

impl Reference<'_> {
    fn level(&mut self, head: M, list: &str, i: usize, x: &T) -> R<T> {
        let branch = head.child(list).map_err(e)?.children();
        let m = branch
            .get(i)
            .ok_or_else(|| e(format!("{list} has no branch {i}")))?
            .1;
        self.module(m, Input::One(x.clone()))
    }

    /// `Detect`, `Segment`, `Pose`, `OBB` in export form.
    pub(super) fn head(&mut self, m: M, xs: &[T]) -> R<T> {
        let class = m.class();
        if m.opt_child("one2one_cv2").is_some() && m.bool("_end2end") != Some(false) {
            return Err(e("end-to-end heads"));
        }
        let count = |k: &str, v: Option<i64>| {
            v.and_then(|v| usize::try_from(v).ok())
                .filter(|v| (1..=1 << 16).contains(v))
                .ok_or_else(|| e(format!("{class} {k} = {v:?}")))
        };
        let nc = count("nc", m.int("nc"))?;
        let rm = count("reg_max", Some(m.int("reg_max").unwrap_or(16)))?;
        let strides = m.attr_tensor_f64("stride").ok_or_else(|| e("stride"))?;
        let extra = match class.as_str() {
            "Segment" => count("nm", m.int("nm"))?,
            "Pose" => count("nk", m.int("nk"))?,
            "OBB" => count("ne", m.int("ne"))?,
            _ => 0,
        };
        if xs.is_empty() || strides.len() < xs.len() {
            return Err(e(format!(
                "{class}: {} inputs, {} strides",
                xs.len(),
                strides.len()
            )));
        }
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
            let b = self.level(m, "cv2", i, x)?;
            let c = self.level(m, "cv3", i, x)?;
            let xe = if extra > 0 {
                Some(self.level(m, "cv4", i, x)?)
            } else {
                None
            };
            let fits = |t: &T, ch: usize| t.shape == [n, ch, h, w];
            if !fits(&b, 4 * rm) || !fits(&c, nc) || xe.as_ref().is_some_and(|t| !fits(t, extra)) {
                return Err(e(format!(
                    "{class} level {i}: branch outputs {:?} and {:?} do not fit {} box and {nc} class channels at {h}x{w}",
                    b.shape,
                    c.shape,
                    4 * rm
                )));
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
            m.child("dfl")
                .map_err(e)?
                .child("conv")
                .map_err(e)?
                .need_f32("weight")
                .map_err(e)?
                .0
        } else {
            vec![1.0]
        };
        shape::per_channel(bins.len(), rm, &format!("{class} DFL bins"))?;
        if class == "Pose" {
            let nd = m
                .ints("kpt_shape")
                .and_then(|v| v.get(1).copied())
                .unwrap_or(3);
            if !(2..=3).contains(&nd) || extra % nd as usize != 0 {
                return Err(e(format!(
                    "Pose kpt_shape dimension {nd} for {extra} channels"
                )));
            }
        }
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
                let (cx, cy, w, h) = if class == "OBB" {
                    let theta =
                        (ops::sigmoid(ex[(bi * extra) * total + a]) - 0.25) * std::f32::consts::PI;
                    let (xf, yf) = ((r - l) / 2.0, (b - t) / 2.0);
                    let (s, c) = theta.sin_cos();
                    (xf * c - yf * s + ax, xf * s + yf * c + ay, l + r, t + b)
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
                match class.as_str() {
                    "Segment" => (0..extra).for_each(|k| out[o(4 + nc + k)] = raw(k)),
                    "OBB" => out[o(4 + nc)] = (ops::sigmoid(raw(0)) - 0.25) * std::f32::consts::PI,
                    "Pose" => {
                        let nd = m
                            .ints("kpt_shape")
                            .and_then(|v| v.get(1).copied())
                            .unwrap_or(3) as usize;
                        for kp in 0..extra / nd {
                            out[o(4 + nc + kp * nd)] = (raw(kp * nd) * 2.0 + (ax - 0.5)) * st;
                            out[o(4 + nc + kp * nd + 1)] =
                                (raw(kp * nd + 1) * 2.0 + (ay - 0.5)) * st;
                            if nd == 3 {
                                out[o(4 + nc + kp * nd + 2)] = ops::sigmoid(raw(kp * nd + 2));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if class == "Segment" {
            let p = m.child("proto").map_err(e)?;
            let a = self.conv_bn_act(p.child("cv1").map_err(e)?, &xs[0])?;
            let up = conv_transpose(p.child("upsample").map_err(e)?, &a)?;
            let b = self.conv_bn_act(p.child("cv2").map_err(e)?, &up)?;
            let c = self.conv_bn_act(p.child("cv3").map_err(e)?, &b)?;
            self.extra.push(c);
        }
        Ok(T::new(out, vec![n, rows, total]))
    }
}

/// `nn.ConvTranspose2d` by scattering each input pixel through the kernel.
fn conv_transpose(m: M, x: &T) -> R<T> {
    let (w, ws) = m.need_f32("weight").map_err(e)?;
    let bias = m.tensor_f32("bias").map_err(e)?.map(|(b, _)| b);
    let first = |k: &str, default: usize| -> R<usize> {
        match m.ints(k) {
            None => Ok(default),
            Some(v) => v
                .first()
                .and_then(|&v| usize::try_from(v).ok())
                .filter(|&v| v <= 1 << 16)
                .ok_or_else(|| e(format!("ConvTranspose2d {k} = {v:?}"))),
        }
    };
    let (s, p) = (first("stride", 1)?, first("padding", 0)?);
    if m.int("groups").unwrap_or(1) != 1 {
        return Err(e("grouped ConvTranspose2d"));
    }
    let (n, c, h, wd) = shape::nchw(x, "ConvTranspose2d")?;
    let dims: Vec<usize> = ws.iter().filter_map(|&d| usize::try_from(d).ok()).collect();
    let [ci, o, kh, kw] = dims[..] else {
        return Err(e(format!("ConvTranspose2d weight has shape {ws:?}")));
    };
    if s == 0
        || ci != c
        || o == 0
        || kh == 0
        || kw == 0
        || ci * o * kh * kw != w.len()
        || h.saturating_sub(1) * s + kh < 2 * p + 1
        || wd.saturating_sub(1) * s + kw < 2 * p + 1
    {
        return Err(e(format!(
            "ConvTranspose2d weight {ws:?} (stride {s}, padding {p}) does not fit input {:?}",
            x.shape
        )));
    }
    if let Some(b) = &bias {
        shape::per_channel(b.len(), o, "ConvTranspose2d bias")?;
    }
    let oh = (h - 1) * s + kh - 2 * p;
    let ow = (wd - 1) * s + kw - 2 * p;
    let mut out = vec![0.0f32; n * o * oh * ow];
    for b in 0..n {
        for ci in 0..c {
            for iy in 0..h {
                for ix in 0..wd {
                    let v = x.data[((b * c + ci) * h + iy) * wd + ix];
                    for oc in 0..o {
                        for ky in 0..kh {
                            let y = (iy * s + ky) as isize - p as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let xx = (ix * s + kx) as isize - p as isize;
                                if xx < 0 || xx >= ow as isize {
                                    continue;
                                }
                                out[((b * o + oc) * oh + y as usize) * ow + xx as usize] +=
                                    v * w[((ci * o + oc) * kh + ky) * kw + kx];
                            }
                        }
                    }
                }
            }
        }
        if let Some(bias) = &bias {
            for oc in 0..o {
                for v in &mut out[(b * o + oc) * oh * ow..(b * o + oc + 1) * oh * ow] {
                    *v += bias[oc];
                }
            }
        }
    }
    Ok(T::new(out, vec![n, o, oh, ow]))
}
