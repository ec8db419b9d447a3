//! YOLOv9's ELAN blocks: `RepConv` (3×3, 1×1 and identity branches), `RepBottleneck`,
//! `RepCSP`, `RepNCSPELAN4` / `ELAN1` and `SPPELAN`. Its downsamplers and auxiliary branch
//! (`AConv`, `ADown`, `CBLinear`, `CBFuse`) are in `v9.rs`.
//!
//! The emission folds each `RepConv` into one convolution as Ultralytics' `fuse_convs` does; the
//! reference runs its branches unfolded, each BatchNorm as BatchNorm.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

use super::conv::{BatchNorm, Conv2dParams, batch_norm};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "RepConv",
        "3×3 and 1×1 `Conv` branches plus an optional identity BatchNorm, summed, activation (folded into one conv when emitted)",
        |b, s, m, x| b.rep_conv(s, m, &x.one("RepConv")?),
        |r, m, x| r.rep_conv(m, &x.one("RepConv")?),
    ),
    layer(
        "RepBottleneck",
        "`Bottleneck` whose cv1 is a `RepConv`",
        |b, s, m, x| b.bottleneck(s, m, &x.one("RepBottleneck")?),
        |r, m, x| r.bottleneck(m, &x.one("RepBottleneck")?),
    ),
    layer(
        "RepCSP",
        "`C3` of `RepBottleneck`s",
        |b, s, m, x| b.c3(s, m, &x.one("RepCSP")?),
        |r, m, x| r.c3(m, &x.one("RepCSP")?),
    ),
    layer(
        "RepNCSPELAN4",
        "halves of cv1, cv2 and cv3 chained on the second, all concatenated, cv4 (YOLOv9)",
        |b, s, m, x| b.elan(s, m, &x.one("RepNCSPELAN4")?),
        |r, m, x| r.elan(m, &x.one("RepNCSPELAN4")?),
    ),
    layer(
        "ELAN1",
        "`RepNCSPELAN4` with plain `Conv`s as cv2 and cv3 (YOLOv9t/s)",
        |b, s, m, x| b.elan(s, m, &x.one("ELAN1")?),
        |r, m, x| r.elan(m, &x.one("ELAN1")?),
    ),
    layer(
        "SPPELAN",
        "cv1, three chained max pools (cv2–cv4), concatenation, cv5",
        |b, s, m, x| b.sppelan(s, m, &x.one("SPPELAN")?),
        |r, m, x| r.sppelan(m, &x.one("SPPELAN")?),
    ),
];

// ---- parse (shared) ----

/// `RepConv`'s branches, read and checked once for both backends: either the training form
/// (`conv1` 3×3, `conv2` 1×1, optional identity `bn`) or the form `fuse_convs` leaves (`conv`).
pub enum RepConvParts<'g> {
    /// The three branches (`bn` only when input and output channels agree at stride 1).
    Branches {
        /// The 3×3 `Conv` (conv and BatchNorm, no activation).
        conv1: ModuleRef<'g>,
        /// The 1×1 `Conv`.
        conv2: ModuleRef<'g>,
        /// The identity branch's BatchNorm.
        bn: Option<ModuleRef<'g>>,
    },
    /// Already fused into one `nn.Conv2d` with a bias.
    Fused(ModuleRef<'g>),
}

impl<'g> RepConvParts<'g> {
    /// Reads `m`, a `RepConv`.
    pub fn parse(m: ModuleRef<'g>) -> BuildResult<RepConvParts<'g>> {
        match (
            m.opt_child("conv1"),
            m.opt_child("conv2"),
            m.opt_child("conv"),
        ) {
            (Some(conv1), Some(conv2), None) => Ok(RepConvParts::Branches {
                conv1,
                conv2,
                bn: m.opt_child("bn"),
            }),
            (None, None, Some(conv)) => Ok(RepConvParts::Fused(conv)),
            _ => Err(LayerError::shape(
                "RepConv",
                "holds neither conv1 and conv2 nor a fused conv",
            )),
        }
    }
}

/// The branch convs of a `RepConv` must line up as `fuse_convs` lines them up: a 3×3 with
/// padding one and a 1×1 without, of one stride and groups, without biases (which `fuse_convs`
/// ignores), and an identity branch only where input and output channels agree at stride 1.
fn rep_geometry(p3: &Conv2dParams, p1: &Conv2dParams, identity: bool) -> BuildResult<()> {
    let [o3, i3, ..] = p3.shape;
    let ok = p3.shape[2..] == [3, 3]
        && p3.pad == [1, 1]
        && p3.dil == [1, 1]
        && p1.shape == [o3, i3, 1, 1]
        && p1.pad == [0, 0]
        && p1.dil == [1, 1]
        && p1.stride == p3.stride
        && p1.groups == p3.groups
        && p3.bias.is_none()
        && p1.bias.is_none()
        && (!identity || (p3.stride == [1, 1] && o3 == i3 * p3.groups));
    if !ok {
        return Err(LayerError::shape(
            "RepConv",
            format!(
                "branches do not line up (3×3 weight {:?} padding {:?}, 1×1 weight {:?} padding {:?}, strides {:?} / {:?}, identity {identity})",
                p3.shape, p3.pad, p1.shape, p1.pad, p3.stride, p1.stride
            ),
        ));
    }
    Ok(())
}

// ---- emit ----

impl Builder<'_> {
    /// `RepConv`, folded into one convolution: each branch's BatchNorm folded into its kernel,
    /// the 1×1 kernel padded to 3×3, the identity as a centred unit kernel, all summed (the
    /// arithmetic of Ultralytics' `get_equivalent_kernel_bias`), then the activation.
    pub(crate) fn rep_conv(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let act = m.opt_child("act");
        let (conv1, conv2, bn) = match RepConvParts::parse(m)? {
            RepConvParts::Fused(conv) => {
                let y = self.conv2d(&format!("{scope}.conv"), conv, None, x)?;
                return self.act(scope, act, y);
            }
            RepConvParts::Branches { conv1, conv2, bn } => (conv1, conv2, bn),
        };
        let mut p3 = Conv2dParams::parse(conv1.child("conv")?)?;
        let p1 = Conv2dParams::parse(conv2.child("conv")?)?;
        rep_geometry(&p3, &p1, bn.is_some())?;
        let [o, cg, ..] = p3.shape.map(|d| d as usize);
        let (k3, b3) = fold(&p3.weight, BatchNorm::parse(conv1.child("bn")?, o)?);
        let (k1, b1) = fold(&p1.weight, BatchNorm::parse(conv2.child("bn")?, o)?);
        let mut w = k3;
        for oc in 0..o {
            for ic in 0..cg {
                w[((oc * cg + ic) * 3 + 1) * 3 + 1] += k1[oc * cg + ic];
            }
        }
        let mut b: Vec<f32> = b3.iter().zip(&b1).map(|(p, q)| p + q).collect();
        if let Some(bn) = bn {
            // The identity kernel: 1 at the centre of input channel `i % (c1 / groups)`.
            let ones = vec![1.0f32; o];
            let (kid, bid) = fold(&ones, BatchNorm::parse(bn, o)?);
            for oc in 0..o {
                w[((oc * cg + oc % cg) * 3 + 1) * 3 + 1] += kid[oc];
                b[oc] += bid[oc];
            }
        }
        p3.weight = w;
        p3.bias = Some(b);
        let y = self.conv_node(&format!("{scope}.conv"), p3, x)?;
        self.act(scope, act, y)
    }

    /// `RepNCSPELAN4` / `ELAN1`: cv1's halves, cv2 on the second, cv3 on that, all four
    /// concatenated, cv4.
    pub(crate) fn elan(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let ys = self.cv1_halves(scope, m, x, scope)?.to_vec();
        self.chain_cat(scope, m, ys, &["cv2", "cv3"], "cv4")
    }

    /// `SPPELAN`: cv1, three chained max pools, all four concatenated, cv5.
    pub(crate) fn sppelan(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let ys = vec![self.sub_conv(scope, m, "cv1", x)?];
        self.chain_cat(scope, m, ys, &["cv2", "cv3", "cv4"], "cv5")
    }

    /// The children `names` of `m` chained on the last of `ys`, each output kept; all of `ys`
    /// concatenated, then the `Conv` child `out`.
    fn chain_cat(
        &mut self,
        scope: &str,
        m: ModuleRef,
        mut ys: Vec<GraphValue>,
        names: &[&str],
        out: &str,
    ) -> BuildResult<GraphValue> {
        for name in names {
            let last = ys
                .last()
                .ok_or_else(|| LayerError::shape(scope, "nothing to chain on"))?;
            let y = self.sub(scope, m, name, last)?;
            ys.push(y);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.sub_conv(scope, m, out, &cat)
    }
}

/// A conv kernel (O, …) and its BatchNorm folded as `RepConv._fuse_bn_tensor` folds them:
/// kernel·γ/√(var+ε), and β − mean·γ/√(var+ε) as the bias.
fn fold(kernel: &[f32], bn: BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let o = bn.gamma.len();
    let per = kernel.len() / o.max(1);
    let mut k = kernel.to_vec();
    let mut b = vec![0.0f32; o];
    for c in 0..o {
        let std = (bn.var[c] + bn.eps).sqrt();
        let t = bn.gamma[c] / std;
        for v in &mut k[c * per..(c + 1) * per] {
            *v *= t;
        }
        b[c] = bn.beta[c] - bn.mean[c] * bn.gamma[c] / std;
    }
    (k, b)
}

// ---- run ----

impl Reference<'_> {
    /// `RepConv` as trained: conv1(x) + conv2(x) (+ bn(x)), then the activation.
    pub(crate) fn rep_conv(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let mut y = match RepConvParts::parse(m)? {
            RepConvParts::Fused(conv) => self.module(conv, LayerInput::One(x.clone()))?,
            RepConvParts::Branches { conv1, conv2, bn } => {
                let a = self.module(conv1, LayerInput::One(x.clone()))?;
                let b = self.module(conv2, LayerInput::One(x.clone()))?;
                shape::same_shape(&a, &b, "RepConv")?;
                let mut y = ops::add(&a, &b);
                if let Some(bn) = bn {
                    let mut id = x.clone();
                    batch_norm(bn, &mut id, "RepConv")?;
                    shape::same_shape(&y, &id, "RepConv")?;
                    y = ops::add(&y, &id);
                }
                y
            }
        };
        super::act::run(m.opt_child("act"), &mut y)?;
        Ok(y)
    }

    pub(crate) fn elan(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let (_, ac, _, _) = shape::nchw(&a, "RepNCSPELAN4")?;
        if ac % 2 != 0 {
            return Err(LayerError::shape(
                "RepNCSPELAN4",
                format!("cannot halve {ac} channels"),
            ));
        }
        let c = ac / 2;
        shape::channels(&a, c, 2 * c, "RepNCSPELAN4")?;
        let mut ys = vec![ops::channels(&a, 0, c), ops::channels(&a, c, 2 * c)];
        for name in ["cv2", "cv3"] {
            let last = ys.last().expect("halves").clone();
            ys.push(self.sub(m, name, &last)?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "RepNCSPELAN4")?;
        self.sub(m, "cv4", &ops::cat_channels(&refs))
    }

    pub(crate) fn sppelan(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for name in ["cv2", "cv3", "cv4"] {
            let last = ys.last().expect("cv1").clone();
            ys.push(self.sub(m, name, &last)?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "SPPELAN")?;
        self.sub(m, "cv5", &ops::cat_channels(&refs))
    }
}
