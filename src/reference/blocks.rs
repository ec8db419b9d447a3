//! Layers and blocks of the reference interpreter.

use super::ops::{self, ConvSpec, T};
use super::shape;
use super::{Input, R, Reference, e};
use crate::checkpoint::py::M;

fn pair(m: &M, name: &str, default: usize) -> R<(usize, usize)> {
    let bad = || e(format!("{}.{name} = {:?}", m.class(), m.ints(name)));
    let u = |v: i64| usize::try_from(v).map_err(|_| bad());
    match m.ints(name).as_deref() {
        None => Ok((default, default)),
        Some([a]) => Ok((u(*a)?, u(*a)?)),
        Some([a, b]) => Ok((u(*a)?, u(*b)?)),
        Some(_) => Err(bad()),
    }
}

fn tensor(m: &M, name: &str) -> R<(Vec<f32>, Vec<usize>)> {
    let (d, s) = m.need_f32(name).map_err(e)?;
    let dims = s
        .iter()
        .map(|&x| usize::try_from(x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| e(format!("{}.{name} has shape {s:?}", m.class())))?;
    Ok((d, dims))
}

/// `nn.Conv2d` (with its own bias, if any).
pub fn conv(m: M, x: &T) -> R<T> {
    let (w, ws) = tensor(&m, "weight")?;
    let bias = m.tensor_f32("bias").map_err(e)?.map(|(b, _)| b);
    let dil = pair(&m, "dilation", 1)?;
    let pad = match (m.str("padding"), &ws[..]) {
        (Some("same"), [_, _, kh, kw]) => (
            dil.0.saturating_mul(kh.saturating_sub(1)) / 2,
            dil.1.saturating_mul(kw.saturating_sub(1)) / 2,
        ),
        (Some("valid"), _) => (0, 0),
        (Some(p), _) => return Err(e(format!("padding {p}"))),
        (None, _) => pair(&m, "padding", 0)?,
    };
    let spec = ConvSpec {
        stride: pair(&m, "stride", 1)?,
        pad,
        dil,
        groups: usize::try_from(m.int("groups").unwrap_or(1)).unwrap_or(0),
    };
    shape::conv(
        x,
        w.len(),
        &ws,
        bias.as_ref().map(Vec::len),
        &spec,
        "Conv2d",
    )?;
    Ok(ops::conv2d(x, &w, &ws, bias.as_deref(), &spec))
}

/// Applies an activation module in place.
pub fn activation(m: Option<M>, x: &mut T) -> R<()> {
    let Some(m) = m else { return Ok(()) };
    match m.class().as_str() {
        "Identity" => {}
        "SiLU" => ops::map(x, |v| v * ops::sigmoid(v)),
        "ReLU" => ops::map(x, |v| v.max(0.0)),
        "Sigmoid" => ops::map(x, ops::sigmoid),
        "Tanh" => ops::map(x, f32::tanh),
        "Hardswish" => ops::map(x, |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
        "LeakyReLU" => {
            let a = m.float("negative_slope").unwrap_or(0.01) as f32;
            ops::map(x, |v| if v >= 0.0 { v } else { a * v })
        }
        "Mish" => ops::map(x, |v| v * ((1.0 + v.exp()).ln()).tanh()),
        other => return Err(e(format!("activation {other}"))),
    }
    Ok(())
}

/// `nn.MaxPool2d` (square kernels, as Ultralytics uses).
pub fn maxpool(m: M, x: &T) -> R<T> {
    let k = pair(&m, "kernel_size", 1)?.0;
    let s = match m.attr("stride") {
        None | Some(crate::checkpoint::value::Value::None) => k,
        _ => pair(&m, "stride", 1)?.0,
    };
    let pad = pair(&m, "padding", 0)?.0;
    shape::pool(x, k, s, pad, "MaxPool2d")?;
    Ok(ops::max_pool(x, k, s, pad))
}

/// `nn.Upsample` (nearest, integer factor).
pub fn upsample(m: M, x: &T) -> R<T> {
    if m.str("mode").unwrap_or("nearest") != "nearest" {
        return Err(e("Upsample mode"));
    }
    let f = m
        .float("scale_factor")
        .or_else(|| {
            m.ints("scale_factor")
                .and_then(|v| v.first().map(|&i| i as f64))
        })
        .ok_or_else(|| e("Upsample without scale_factor"))?;
    if !(f.is_finite() && f >= 1.0) {
        return Err(e(format!("Upsample scale_factor {f}")));
    }
    shape::upsample(x, f as usize, "Upsample")?;
    Ok(ops::upsample_nearest(x, f as usize))
}

impl Reference<'_> {
    /// Ultralytics `Conv`: conv, BatchNorm (as BatchNorm), activation.
    pub(super) fn conv_bn_act(&mut self, m: M, x: &T) -> R<T> {
        let mut y = conv(m.child("conv").map_err(e)?, x)?;
        if let Some(bn) = m.opt_child("bn") {
            let g = tensor(&bn, "weight")?.0;
            let b = tensor(&bn, "bias")?.0;
            let mean = tensor(&bn, "running_mean")?.0;
            let var = tensor(&bn, "running_var")?.0;
            let (_, c, _, _) = shape::nchw(&y, "BatchNorm2d")?;
            for (name, v) in [
                ("weight", &g),
                ("bias", &b),
                ("running_mean", &mean),
                ("running_var", &var),
            ] {
                shape::per_channel(v.len(), c, &format!("BatchNorm2d.{name}"))?;
            }
            ops::batch_norm(
                &mut y,
                &g,
                &b,
                &mean,
                &var,
                bn.float("eps").unwrap_or(1e-5) as f32,
            );
        }
        activation(m.opt_child("act"), &mut y)?;
        Ok(y)
    }

    fn sub(&mut self, m: M, name: &str, x: &T) -> R<T> {
        let c = m.child(name).map_err(e)?;
        self.module(c, Input::One(x.clone()))
    }

    pub(super) fn bottleneck(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let y = self.sub(m, "cv2", &a)?;
        Ok(if m.bool("add").unwrap_or(false) {
            shape::same_shape(x, &y, "Bottleneck")?;
            ops::add(x, &y)
        } else {
            y
        })
    }

    pub(super) fn c2f(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let c = shape::nchw(&a, "C2f")?.1 / 2;
        shape::channels(&a, c, 2 * c, "C2f")?;
        let mut ys = vec![ops::channels(&a, 0, c), ops::channels(&a, c, 2 * c)];
        for (_, b) in m.child("m").map_err(e)?.children() {
            let last = ys.last().expect("halves").clone();
            ys.push(self.module(b, Input::One(last))?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "C2f")?;
        let cat = ops::cat_channels(&refs);
        self.sub(m, "cv2", &cat)
    }

    pub(super) fn c3(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let a = self.sub(m, "m", &a)?;
        let b = self.sub(m, "cv2", x)?;
        shape::same_maps(&[&a, &b], "C3")?;
        let cat = ops::cat_channels(&[&a, &b]);
        self.sub(m, "cv3", &cat)
    }

    pub(super) fn sppf(&mut self, m: M, x: &T) -> R<T> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for _ in 0..m.int("n").unwrap_or(3) {
            let last = ys.last().expect("cv1").clone();
            ys.push(self.sub(m, "m", &last)?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "SPPF")?;
        let cat = ops::cat_channels(&refs);
        let y = self.sub(m, "cv2", &cat)?;
        Ok(if m.bool("add").unwrap_or(false) {
            shape::same_shape(x, &y, "SPPF")?;
            ops::add(x, &y)
        } else {
            y
        })
    }

    pub(super) fn c2psa(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let c = shape::nchw(&a, "C2PSA")?.1 / 2;
        shape::channels(&a, c, 2 * c, "C2PSA")?;
        let first = ops::channels(&a, 0, c);
        let second = self.sub(m, "m", &ops::channels(&a, c, 2 * c))?;
        shape::same_maps(&[&first, &second], "C2PSA")?;
        self.sub(m, "cv2", &ops::cat_channels(&[&first, &second]))
    }

    pub(super) fn psablock(&mut self, m: M, x: &T) -> R<T> {
        let add = m.bool("add").unwrap_or(true);
        let a = self.attention(m.child("attn").map_err(e)?, x)?;
        if add {
            shape::same_shape(x, &a, "PSABlock")?;
        }
        let x1 = if add { ops::add(x, &a) } else { a };
        let f = self.sub(m, "ffn", &x1)?;
        if add {
            shape::same_shape(&x1, &f, "PSABlock")?;
        }
        Ok(if add { ops::add(&x1, &f) } else { f })
    }

    /// Multi-head attention over H·W positions plus the positional depthwise conv of the values.
    fn attention(&mut self, m: M, x: &T) -> R<T> {
        let (n, c, h, w) = shape::nchw(x, "Attention")?;
        let hw = h * w;
        let dim = |k: &str| {
            m.int(k)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|v| (1..=1 << 16).contains(v))
                .ok_or_else(|| e(format!("Attention {k}")))
        };
        let (heads, kd, hd) = (dim("num_heads")?, dim("key_dim")?, dim("head_dim")?);
        let scale = m.float("scale").unwrap_or((kd as f64).powf(-0.5)) as f32;
        let qkv = self.sub(m, "qkv", x)?;
        let per = 2 * kd + hd;
        if qkv.shape != [n, heads * per, h, w] || heads * hd != c {
            return Err(e(format!(
                "Attention: qkv {:?} does not split into {heads} heads of {kd}+{kd}+{hd} over {c} channels",
                qkv.shape
            )));
        }
        let mut out = vec![0.0f32; n * c * hw];
        let mut v_all = vec![0.0f32; n * c * hw];
        for b in 0..n {
            for hh in 0..heads {
                let base = (b * heads + hh) * per * hw;
                let q = &qkv.data[base..base + kd * hw];
                let k = &qkv.data[base + kd * hw..base + 2 * kd * hw];
                let v = &qkv.data[base + 2 * kd * hw..base + per * hw];
                // attn[i][j] = softmax_j( Σ_d q[d][i]·scale · k[d][j] )
                let mut qt = vec![0.0f32; hw * kd];
                for d in 0..kd {
                    for i in 0..hw {
                        qt[i * kd + d] = q[d * hw + i] * scale;
                    }
                }
                let mut attn = ops::matmul(&qt, k, hw, kd, hw);
                for i in 0..hw {
                    ops::softmax_strided(&mut attn[i * hw..(i + 1) * hw], 0, hw, 1);
                }
                // out[d][i] = Σ_j v[d][j]·attn[i][j]
                let mut at = vec![0.0f32; hw * hw];
                for i in 0..hw {
                    for j in 0..hw {
                        at[j * hw + i] = attn[i * hw + j];
                    }
                }
                let o = ops::matmul(v, &at, hd, hw, hw);
                let dst = (b * c + hh * hd) * hw;
                out[dst..dst + hd * hw].copy_from_slice(&o);
                v_all[dst..dst + hd * hw].copy_from_slice(v);
            }
        }
        let pe = self.sub(m, "pe", &T::new(v_all, vec![n, c, h, w]))?;
        let sum = ops::add(&T::new(out, vec![n, c, h, w]), &pe);
        self.sub(m, "proj", &sum)
    }

    pub(super) fn classify(&mut self, m: M, x: &T) -> R<T> {
        let y = self.sub(m, "conv", x)?;
        let (n, c, h, w) = shape::nchw(&y, "Classify")?;
        let lin = m.child("linear").map_err(e)?;
        let (wt, ws) = tensor(&lin, "weight")?;
        if ws.len() != 2 || ws[1] != c || ws[0] == 0 || wt.len() != ws[0] * c {
            return Err(e(format!(
                "Classify: linear weight {ws:?} does not fit {c} channels"
            )));
        }
        let bias = lin
            .tensor_f32("bias")
            .map_err(e)?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; ws[0]]);
        shape::per_channel(bias.len(), ws[0], "Classify linear bias")?;
        let mut out = vec![0.0f32; n * ws[0]];
        for b in 0..n {
            let pooled: Vec<f32> = (0..c)
                .map(|ch| {
                    y.data[(b * c + ch) * h * w..(b * c + ch + 1) * h * w]
                        .iter()
                        .sum::<f32>()
                        / (h * w) as f32
                })
                .collect();
            let row = &mut out[b * ws[0]..(b + 1) * ws[0]];
            for (o, r) in row.iter_mut().enumerate() {
                *r = bias[o] + (0..c).map(|i| wt[o * c + i] * pooled[i]).sum::<f32>();
            }
            ops::softmax_strided(row, 0, ws[0], 1);
        }
        Ok(T::new(out, vec![n, ws[0]]))
    }
}
