//! Layers and blocks of the reference interpreter.

use super::ops::{self, ConvSpec, T};
use super::{Input, R, Reference, e};
use crate::checkpoint::py::M;

fn pair(m: &M, name: &str, default: usize) -> R<(usize, usize)> {
    match m.ints(name).as_deref() {
        None => Ok((default, default)),
        Some([a]) => Ok((*a as usize, *a as usize)),
        Some([a, b]) => Ok((*a as usize, *b as usize)),
        Some(v) => Err(e(format!("{}.{name} = {v:?}", m.class()))),
    }
}

fn tensor(m: &M, name: &str) -> R<(Vec<f32>, Vec<usize>)> {
    let (d, s) = m.need_f32(name).map_err(e)?;
    Ok((d, s.iter().map(|&x| x as usize).collect()))
}

/// `nn.Conv2d` (with its own bias, if any).
pub fn conv(m: M, x: &T) -> R<T> {
    let (w, ws) = tensor(&m, "weight")?;
    let bias = m.tensor_f32("bias").map_err(e)?.map(|(b, _)| b);
    Ok(ops::conv2d(
        x,
        &w,
        &ws,
        bias.as_deref(),
        &conv_spec(&m, &ws)?,
    ))
}

/// Rounds to the nearest f16 (the f16 emulation).
fn to_f16(v: &mut [f32]) {
    for x in v {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

/// `nn.Conv2d` followed by an optional BatchNorm, computed as an f16 graph stores it: BatchNorm
/// folded into the weights and bias, both rounded to f16 (the f16 emulation only; the exact
/// reference never folds).
fn conv_f16(c: M, bn: Option<M>, x: &T) -> R<T> {
    let (mut w, ws) = tensor(&c, "weight")?;
    let out = ws[0];
    let mut b = c
        .tensor_f32("bias")
        .map_err(e)?
        .map(|(b, _)| b)
        .unwrap_or_else(|| vec![0.0; out]);
    if let Some(bn) = bn {
        let g = tensor(&bn, "weight")?.0;
        let beta = tensor(&bn, "bias")?.0;
        let mean = tensor(&bn, "running_mean")?.0;
        let var = tensor(&bn, "running_var")?.0;
        let eps = bn.float("eps").unwrap_or(1e-5);
        let per = w.len() / out.max(1);
        for o in 0..out {
            let (Some(&g), Some(&beta), Some(&mean), Some(&var)) =
                (g.get(o), beta.get(o), mean.get(o), var.get(o))
            else {
                return Err(e("BatchNorm narrower than its convolution"));
            };
            let scale = g as f64 / (var as f64 + eps).sqrt();
            for v in &mut w[o * per..(o + 1) * per] {
                *v = (*v as f64 * scale) as f32;
            }
            b[o] = ((b[o] as f64 - mean as f64) * scale + beta as f64) as f32;
        }
    }
    to_f16(&mut w);
    to_f16(&mut b);
    Ok(ops::conv2d(x, &w, &ws, Some(&b), &conv_spec(&c, &ws)?))
}

/// `nn.Conv2d`, with f16-rounded weights when `f16`.
pub fn conv_as(m: M, x: &T, f16: bool) -> R<T> {
    if f16 {
        conv_f16(m, None, x)
    } else {
        conv(m, x)
    }
}

fn conv_spec(m: &M, ws: &[usize]) -> R<ConvSpec> {
    let dil = pair(m, "dilation", 1)?;
    let pad = match m.str("padding") {
        Some("same") => (dil.0 * (ws[2] - 1) / 2, dil.1 * (ws[3] - 1) / 2),
        Some("valid") => (0, 0),
        Some(p) => return Err(e(format!("padding {p}"))),
        None => pair(m, "padding", 0)?,
    };
    Ok(ConvSpec {
        stride: pair(m, "stride", 1)?,
        pad,
        dil,
        groups: m.int("groups").unwrap_or(1) as usize,
    })
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
    Ok(ops::max_pool(x, k, s, pair(&m, "padding", 0)?.0))
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
    Ok(ops::upsample_nearest(x, f as usize))
}

impl Reference<'_> {
    /// Ultralytics `Conv`: conv, BatchNorm (as BatchNorm), activation.
    pub(super) fn conv_bn_act(&mut self, m: M, x: &T) -> R<T> {
        if self.f16 {
            let mut y = conv_f16(m.child("conv").map_err(e)?, m.opt_child("bn"), x)?;
            activation(m.opt_child("act"), &mut y)?;
            return Ok(y);
        }
        let mut y = conv(m.child("conv").map_err(e)?, x)?;
        if let Some(bn) = m.opt_child("bn") {
            let g = tensor(&bn, "weight")?.0;
            let b = tensor(&bn, "bias")?.0;
            let mean = tensor(&bn, "running_mean")?.0;
            let var = tensor(&bn, "running_var")?.0;
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
            ops::add(x, &y)
        } else {
            y
        })
    }

    pub(super) fn c2f(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let c = a.shape[1] / 2;
        let mut ys = vec![ops::channels(&a, 0, c), ops::channels(&a, c, 2 * c)];
        for (_, b) in m.child("m").map_err(e)?.children() {
            let last = ys.last().expect("halves").clone();
            ys.push(self.module(b, Input::One(last))?);
        }
        let cat = ops::cat_channels(&ys.iter().collect::<Vec<_>>());
        self.sub(m, "cv2", &cat)
    }

    pub(super) fn c3(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let a = self.sub(m, "m", &a)?;
        let b = self.sub(m, "cv2", x)?;
        let cat = ops::cat_channels(&[&a, &b]);
        self.sub(m, "cv3", &cat)
    }

    pub(super) fn sppf(&mut self, m: M, x: &T) -> R<T> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for _ in 0..m.int("n").unwrap_or(3) {
            let last = ys.last().expect("cv1").clone();
            ys.push(self.sub(m, "m", &last)?);
        }
        let cat = ops::cat_channels(&ys.iter().collect::<Vec<_>>());
        let y = self.sub(m, "cv2", &cat)?;
        Ok(if m.bool("add").unwrap_or(false) {
            ops::add(x, &y)
        } else {
            y
        })
    }

    pub(super) fn c2psa(&mut self, m: M, x: &T) -> R<T> {
        let a = self.sub(m, "cv1", x)?;
        let c = a.shape[1] / 2;
        let first = ops::channels(&a, 0, c);
        let second = self.sub(m, "m", &ops::channels(&a, c, 2 * c))?;
        self.sub(m, "cv2", &ops::cat_channels(&[&first, &second]))
    }

    pub(super) fn psablock(&mut self, m: M, x: &T) -> R<T> {
        let add = m.bool("add").unwrap_or(true);
        let a = self.attention(m.child("attn").map_err(e)?, x)?;
        let x1 = if add { ops::add(x, &a) } else { a };
        let f = self.sub(m, "ffn", &x1)?;
        Ok(if add { ops::add(&x1, &f) } else { f })
    }

    /// Multi-head attention over H·W positions plus the positional depthwise conv of the values.
    fn attention(&mut self, m: M, x: &T) -> R<T> {
        let (n, c, h, w) = x.nchw();
        let hw = h * w;
        let heads = m.int("num_heads").ok_or_else(|| e("num_heads"))? as usize;
        let kd = m.int("key_dim").ok_or_else(|| e("key_dim"))? as usize;
        let hd = m.int("head_dim").ok_or_else(|| e("head_dim"))? as usize;
        let scale = m.float("scale").unwrap_or((kd as f64).powf(-0.5)) as f32;
        let qkv = self.sub(m, "qkv", x)?;
        let per = 2 * kd + hd;
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
        let (n, c, h, w) = y.nchw();
        let lin = m.child("linear").map_err(e)?;
        let (wt, ws) = tensor(&lin, "weight")?;
        let bias = lin
            .tensor_f32("bias")
            .map_err(e)?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; ws[0]]);
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
