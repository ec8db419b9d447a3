//! Convolutions: `Conv2d` and Ultralytics `Conv` / `DWConv` (conv, BatchNorm, activation;
//! `ConvTranspose2d` is in `conv_transpose.rs`). The emission folds BatchNorm into the weights exactly as the checkpoint's
//! Ultralytics release does (`BnFold`); the reference applies it unfolded, after its own convolution loops.

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{Layer, layer, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, ConvSpec, RefTensor};
use crate::reference::{Reference, shape};

use super::act::Pointwise;

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "Conv",
        "convolution, BatchNorm, activation",
        |b, s, m, x| b.conv_block(s, m, &x.one("Conv")?),
        |r, m, x| r.conv_bn_act(m, &x.one("Conv")?),
    ),
    layer(
        "DWConv",
        "depthwise `Conv`",
        |b, s, m, x| b.conv_block(s, m, &x.one("DWConv")?),
        |r, m, x| r.conv_bn_act(m, &x.one("DWConv")?),
    ),
    layer(
        "Conv2d",
        "`torch.nn.Conv2d` with its own bias",
        |b, s, m, x| b.conv2d(s, m, None, &x.one("Conv2d")?),
        |r, m, x| {
            let x = x.one("Conv2d")?;
            if r.f16 {
                conv_f16(m, None, &x)
            } else {
                conv(m, &x)
            }
        },
    ),
    part(
        "BatchNorm2d",
        "Conv, DWConv, RepConv, RTDETRDecoder, models.common.RepConv",
        "inference BatchNorm (folded into the convolution when emitted)",
    ),
];

// ---- parse (shared) ----

/// `nn.Conv2d`'s weights and geometry, read and checked once for both backends.
pub struct Conv2dParams {
    /// The weight, (O, I/groups, kh, kw) row-major.
    pub weight: Vec<f32>,
    /// The weight's shape.
    pub shape: [i64; 4],
    /// One bias per output channel, if the module has one.
    pub bias: Option<Vec<f32>>,
    /// Stride (h, w).
    pub stride: [i64; 2],
    /// Padding on each side (h, w).
    pub pad: [i64; 2],
    /// Dilation (h, w).
    pub dil: [i64; 2],
    /// Groups; divides the output channels.
    pub groups: i64,
}

impl Conv2dParams {
    /// Reads `m`, an `nn.Conv2d`.
    pub fn parse(m: ModuleRef) -> BuildResult<Conv2dParams> {
        let (w, ws) = m.need_f32("weight")?;
        let shape = check::weight4(&m, &w, &ws)?;
        let bias = m.tensor_f32("bias")?.map(|(b, _)| b);
        if let Some(b) = &bias {
            check::per_channel(&m, "bias", b, shape[0] as usize)?;
        }
        let stride = check::pair(&m, "stride", 1)?;
        let dil = check::pair(&m, "dilation", 1)?;
        let pad = match m.str("padding") {
            Some("valid") => [0, 0],
            Some("same") => [dil[0] * (shape[2] - 1) / 2, dil[1] * (shape[3] - 1) / 2],
            Some(other) => {
                return Err(LayerError::unsupported(
                    "Conv2d",
                    format!("padding '{other}'"),
                ));
            }
            None => check::pair(&m, "padding", 0)?,
        };
        if m.str("padding_mode").is_some_and(|p| p != "zeros") {
            return Err(LayerError::unsupported(
                "Conv2d",
                format!("padding_mode {:?}", m.str("padding_mode")),
            ));
        }
        check::check_geometry(&m, &[stride, dil], &[pad])?;
        let groups = m.int("groups").unwrap_or(1);
        if !(1..=1 << 16).contains(&groups) || shape[0] % groups != 0 {
            return Err(LayerError::bad_attr(
                "Conv2d",
                "groups",
                groups,
                format!("for {} output channels", shape[0]),
            ));
        }
        Ok(Conv2dParams {
            weight: w,
            shape,
            bias,
            stride,
            pad,
            dil,
            groups,
        })
    }
}

/// The operation order of the BatchNorm fold, which decides the last bit of each folded weight
/// and bias: Ultralytics 8.0 to 8.4.138 (`fuse_conv_and_bn`: `diag(γ / √(ε + var)) · w`, bias
/// `β − γ·mean / √(var + ε)` plus the scaled conv bias) or 8.4.139 on
/// (`torch.nn.utils.fusion.fuse_conv_bn_weights`: `r = rsqrt(var + ε)`, i.e. 1 / √ rounded
/// twice on CPU; `w · (γ·r)`, bias `(b − mean)·r·γ + β`). The export follows the checkpoint's
/// release ([`BnFold::for_version`]; docs/export.md, "BatchNorm fold").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BnFold {
    /// Ultralytics ≤ 8.4.138, and checkpoints that name no version.
    #[default]
    Diag,
    /// Ultralytics ≥ 8.4.139.
    Rsqrt,
}

impl BnFold {
    /// The fold of the Ultralytics release named by a checkpoint's `version` (`"8.4.190"`); the
    /// older order when it is missing or unreadable.
    pub fn for_version(version: Option<&str>) -> BnFold {
        let parts: Option<Vec<u32>> = version.and_then(|v| {
            v.split('.')
                .take(3)
                .map(|p| p.trim().parse().ok())
                .collect()
        });
        match parts.as_deref() {
            Some(&[major, minor, patch]) if (major, minor, patch) >= (8, 4, 139) => BnFold::Rsqrt,
            _ => BnFold::Diag,
        }
    }

    /// One output channel's weight scale and folded bias (conv bias `b`), in f32 with that
    /// release's operations in its order.
    pub fn channel(
        self,
        gamma: f32,
        beta: f32,
        mean: f32,
        var: f32,
        eps: f32,
        b: f32,
    ) -> (f32, f32) {
        match self {
            BnFold::Diag => {
                let scale = gamma / (eps + var).sqrt();
                let b_bn = beta - gamma * mean / (var + eps).sqrt();
                (scale, scale * b + b_bn)
            }
            BnFold::Rsqrt => {
                let r = 1.0 / (var + eps).sqrt();
                ((gamma * r), (b - mean) * r * gamma + beta)
            }
        }
    }
}

/// `nn.BatchNorm2d`'s inference parameters, one per channel.
pub struct BatchNorm {
    /// Scale (γ, `weight`).
    pub gamma: Vec<f32>,
    /// Shift (β, `bias`).
    pub beta: Vec<f32>,
    /// `running_mean`.
    pub mean: Vec<f32>,
    /// `running_var`.
    pub var: Vec<f32>,
    /// `eps`.
    pub eps: f32,
}

impl BatchNorm {
    /// Reads `bn` for `channels` channels.
    pub fn parse(bn: ModuleRef, channels: usize) -> BuildResult<BatchNorm> {
        let read = |name: &str| -> BuildResult<Vec<f32>> {
            let (v, _) = bn.need_f32(name)?;
            check::per_channel(&bn, name, &v, channels)?;
            Ok(v)
        };
        Ok(BatchNorm {
            gamma: read("weight")?,
            beta: read("bias")?,
            mean: read("running_mean")?,
            var: read("running_var")?,
            eps: bn.float("eps").unwrap_or(1e-5) as f32,
        })
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `nn.Conv2d`, with an optional `nn.BatchNorm2d` folded into its weights in f32.
    pub(crate) fn conv2d(
        &mut self,
        scope: &str,
        m: ModuleRef,
        bn: Option<ModuleRef>,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut p = Conv2dParams::parse(m)?;
        let out_c = p.shape[0] as usize;
        let per = p.weight.len() / out_c.max(1);
        let mut b = p.bias.take().unwrap_or_else(|| vec![0.0; out_c]);
        if let Some(bn) = bn {
            let BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } = BatchNorm::parse(bn, out_c)?;
            for o in 0..out_c {
                let (scale, bias) = self
                    .bn_fold
                    .channel(gamma[o], beta[o], mean[o], var[o], eps, b[o]);
                for v in &mut p.weight[o * per..(o + 1) * per] {
                    *v *= scale;
                }
                b[o] = bias;
            }
        }
        p.bias = Some(b);
        self.conv_node(scope, p, x)
    }

    /// One ONNX `Conv` node for already-folded parameters (weights `{scope}.weight` and
    /// `{scope}.bias`, zeros when `p` has none).
    pub(crate) fn conv_node(
        &mut self,
        scope: &str,
        p: Conv2dParams,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let [xn, _, xh, xw] = check::nchw(x, scope)?;
        let (ws, [sh, sw], [dh, dw], [ph, pw]) = (p.shape, p.stride, p.dil, p.pad);
        let out_c = ws[0] as usize;
        let b = p.bias.unwrap_or_else(|| vec![0.0; out_c]);
        let wn = self.b.weight(&format!("{scope}.weight"), &ws, &p.weight);
        let bn_ = self.b.weight(&format!("{scope}.bias"), &[out_c as i64], &b);
        let y = self.b.node(
            scope,
            "Conv",
            &[&x.name, &wn, &bn_],
            vec![
                ("dilations", Attr::Ints(vec![dh, dw])),
                ("group", Attr::Int(p.groups)),
                ("kernel_shape", Attr::Ints(vec![ws[2], ws[3]])),
                ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                ("strides", Attr::Ints(vec![sh, sw])),
            ],
        );
        let shape = check::positive(
            scope,
            vec![
                xn,
                ws[0],
                check::out_size(xh, ws[2], sh, ph, dh),
                check::out_size(xw, ws[3], sw, pw, dw),
            ],
        )?;
        Ok(GraphValue { name: y, shape })
    }

    /// Ultralytics `Conv` / `DWConv`: conv, batch norm (folded), activation.
    pub(crate) fn conv_block(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = self.conv2d(
            &format!("{scope}.conv"),
            m.child("conv")?,
            m.opt_child("bn"),
            x,
        )?;
        self.act(scope, m.opt_child("act"), y)
    }
}

// ---- run ----

/// `nn.Conv2d` (with its own bias, if any).
pub fn conv(m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let p = Conv2dParams::parse(m)?;
    conv_with(p, x, None)
}

/// `nn.Conv2d` and an optional BatchNorm computed as an f16 graph stores them: BatchNorm folded
/// into the weights and bias (in f64), both rounded to f16 — the f16 emulation only; the exact
/// reference never folds.
fn conv_f16(m: ModuleRef, bn: Option<ModuleRef>, x: &RefTensor) -> BuildResult<RefTensor> {
    let mut p = Conv2dParams::parse(m)?;
    let out = usize::try_from(p.shape[0]).unwrap_or(0);
    let mut b = p.bias.take().unwrap_or_else(|| vec![0.0; out]);
    if let Some(bn) = bn {
        let n = BatchNorm::parse(bn, out)?;
        let per = p.weight.len() / out.max(1);
        for (o, bo) in b.iter_mut().enumerate().take(out) {
            let scale = n.gamma[o] as f64 / (n.var[o] as f64 + n.eps as f64).sqrt();
            for v in &mut p.weight[o * per..(o + 1) * per] {
                *v = (*v as f64 * scale) as f32;
            }
            *bo = ((*bo as f64 - n.mean[o] as f64) * scale + n.beta[o] as f64) as f32;
        }
    }
    for v in p.weight.iter_mut().chain(b.iter_mut()) {
        *v = half::f16::from_f32(*v).to_f32();
    }
    p.bias = Some(b);
    conv_with(p, x, None)
}

/// Runs a parsed `nn.Conv2d` after checking shapes, with `then` on each output tile.
fn conv_with(
    p: Conv2dParams,
    x: &RefTensor,
    then: Option<ops::Epilogue>,
) -> BuildResult<RefTensor> {
    let u = |v: [i64; 2]| (v[0] as usize, v[1] as usize);
    let ws: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
    let spec = ConvSpec {
        stride: u(p.stride),
        pad: u(p.pad),
        dil: u(p.dil),
        groups: p.groups as usize,
    };
    shape::conv(
        x,
        p.weight.len(),
        &ws,
        p.bias.as_ref().map(Vec::len),
        &spec,
        "Conv2d",
    )?;
    Ok(match then {
        Some(then) => ops::conv2d_then(x, (&p.weight, &ws), p.bias.as_deref(), &spec, then),
        None => ops::conv2d(x, &p.weight, &ws, p.bias.as_deref(), &spec),
    })
}

impl Reference<'_> {
    /// Ultralytics `Conv`: conv, BatchNorm (as BatchNorm), activation.
    pub(crate) fn conv_bn_act(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        if self.f16 {
            let mut y = conv_f16(m.child("conv")?, m.opt_child("bn"), x)?;
            super::act::run(m.opt_child("act"), &mut y)?;
            return Ok(y);
        }
        let p = Conv2dParams::parse(m.child("conv")?)?;
        let out = usize::try_from(p.shape[0]).unwrap_or(0);
        let bn = match m.opt_child("bn") {
            Some(bn) => Some(BatchNorm::parse(bn, out)?),
            None => None,
        };
        let Some(act) = Pointwise::of(m.opt_child("act"))? else {
            // An activation with no pointwise form here: its own pass.
            let mut y = conv_with(p, x, None)?;
            if let Some(bn) = &bn {
                ops::batch_norm(&mut y, &bn.gamma, &bn.beta, &bn.mean, &bn.var, bn.eps);
            }
            super::act::run(m.opt_child("act"), &mut y)?;
            return Ok(y);
        };
        // BatchNorm (unfolded: applied to the convolution's output, as `batch_norm` does) and
        // the activation run on each output tile right after its GEMM, in one pass.
        let then = |ch: usize, run: &mut [f32]| match &bn {
            Some(n) => {
                act.batch_norm_run(run, (n.gamma[ch], n.beta[ch], n.mean[ch], n.var[ch], n.eps))
            }
            None => act.run(run),
        };
        conv_with(p, x, Some(&then))
    }
}

/// `bn`, an `nn.BatchNorm2d`, applied to `y` in place as BatchNorm (the reference never folds
/// it); `what` names the block in a shape error.
pub(crate) fn batch_norm(bn: ModuleRef, y: &mut RefTensor, what: &str) -> BuildResult<()> {
    let (_, c, _, _) = shape::nchw(y, what)?;
    let p = BatchNorm::parse(bn, c)?;
    ops::batch_norm(y, &p.gamma, &p.beta, &p.mean, &p.var, p.eps);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::BnFold;

    #[test]
    fn the_fold_follows_the_release() {
        for (v, want) in [
            (Some("8.4.190"), BnFold::Rsqrt),
            (Some("8.4.139"), BnFold::Rsqrt),
            (Some("9.0.0"), BnFold::Rsqrt),
            (Some("8.4.138"), BnFold::Diag),
            (Some("8.3.253"), BnFold::Diag),
            (Some("8.0.239"), BnFold::Diag),
            (Some("not a version"), BnFold::Diag),
            (None, BnFold::Diag),
        ] {
            assert_eq!(BnFold::for_version(v), want, "{v:?}");
        }
    }

    /// One channel where the two orders round differently, with the bits torch 2.15 gives for
    /// `fuse_conv_bn_weights` and for 8.0–8.4.138's `torch.mm(diag(…), w)` form (ε = 1e-3). The
    /// channel is one where torch's f32 `sqrt` is correctly rounded: on this machine's AVX-512
    /// build it is for only ~84 % of values, so no fold reproduces torch's bits everywhere.
    #[test]
    fn each_order_gives_its_releases_bits() {
        let f = f32::from_bits;
        let (gamma, beta, mean, var) = (f(0xbe4d2038), f(0xbdc082ad), f(0xc041b5b6), f(0x3bb955a1));
        let (w, b, eps) = (f(0xbf8cd2cf), f(0xbf436146), f(0x3a83126f));
        for (fold, weight, bias) in [
            (BnFold::Rsqrt, 0x402ce2da, 0xc0b4db07),
            (BnFold::Diag, 0x402ce2d9, 0xc0b4db08),
        ] {
            let (scale, folded) = fold.channel(gamma, beta, mean, var, eps, b);
            assert_eq!((w * scale).to_bits(), weight, "{fold:?} weight");
            assert_eq!(folded.to_bits(), bias, "{fold:?} bias");
        }
    }
}
