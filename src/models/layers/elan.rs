//! YOLOv9's blocks: `RepConv` (3×3, 1×1 and identity branches), `RepBottleneck`, `RepCSP`,
//! `RepNCSPELAN4` / `ELAN1`, the downsamplers `AConv` / `ADown`, `SPPELAN`, and the auxiliary
//! branch's `CBLinear` (a conv split into a list) and `CBFuse` (entries of those lists resized
//! and summed).
//!
//! The emission folds each `RepConv` into one convolution as Ultralytics' `fuse_convs` does; the
//! reference runs its branches unfolded, each BatchNorm as BatchNorm.

use crate::checkpoint::py::{BuildResult, ModuleRef};
use crate::models::LayerInput;
use crate::models::registry::{Layer, fork, layer};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{RefResult, Reference, e, shape};

use super::conv::{BatchNorm, Conv2dParams};

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
        "AConv",
        "2×2 stride-1 average pool, then a strided cv1",
        |b, s, m, x| b.aconv(s, m, &x.one("AConv")?),
        |r, m, x| r.aconv(m, &x.one("AConv")?),
    ),
    layer(
        "ADown",
        "2×2 average pool; halves through a strided cv1 and a 3×3 max pool with cv2, concatenated",
        |b, s, m, x| b.adown(s, m, &x.one("ADown")?),
        |r, m, x| r.adown(m, &x.one("ADown")?),
    ),
    layer(
        "SPPELAN",
        "cv1, three chained max pools (cv2–cv4), concatenation, cv5",
        |b, s, m, x| b.sppelan(s, m, &x.one("SPPELAN")?),
        |r, m, x| r.sppelan(m, &x.one("SPPELAN")?),
    ),
    fork(
        "CBLinear",
        "a conv whose output is split into a list of `c2s` channel groups (YOLOv9e's auxiliary branch)",
        |b, s, m, x| b.cb_linear(s, m, &x.one("CBLinear")?),
        |r, m, x| r.cb_linear(m, &x.one("CBLinear")?),
    ),
    layer(
        "CBFuse",
        "entry `idx[i]` of each `CBLinear` list, nearest-resized to the last input, all summed",
        |b, s, m, x| b.cb_fuse(s, m, x),
        |_, m, x| cb_fuse(m, x),
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
            _ => Err("RepConv holds neither conv1 and conv2 nor a fused conv".into()),
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
        return Err(format!(
            "RepConv branches do not line up (3×3 weight {:?} padding {:?}, 1×1 weight {:?} padding {:?}, strides {:?} / {:?}, identity {identity})",
            p3.shape, p3.pad, p1.shape, p1.pad, p3.stride, p1.stride
        ));
    }
    Ok(())
}

/// Each half's width when a block splits `total` channels in two (`self.c`, else `total / 2`).
fn halves(m: &ModuleRef, total: i64, what: &str) -> BuildResult<i64> {
    let c = m.int("c").unwrap_or(total / 2);
    if c <= 0 || 2 * c != total {
        return Err(format!(
            "{what} splits {total} channels into two halves of {c}"
        ));
    }
    Ok(c)
}

/// `CBLinear.c2s`: the channel groups its conv's output splits into.
fn c2s(m: &ModuleRef, channels: i64) -> BuildResult<Vec<i64>> {
    let c = m.ints("c2s").ok_or("CBLinear without c2s")?;
    if c.is_empty() || c.iter().any(|&v| v <= 0) || c.iter().sum::<i64>() != channels {
        return Err(format!("CBLinear splits {channels} channels into {c:?}"));
    }
    Ok(c)
}

/// `CBFuse`'s inputs: for each list, the entry `idx[i]`; then the target map.
fn cb_fuse_inputs<X: Clone>(m: &ModuleRef, x: LayerInput<X>) -> BuildResult<(Vec<X>, X)> {
    let idx = m.ints("idx").ok_or("CBFuse without idx")?;
    let LayerInput::Nested(mut xs) = x else {
        return Err("CBFuse expects lists of CBLinear outputs and a feature map".into());
    };
    let Some(LayerInput::One(target)) = xs.pop() else {
        return Err("CBFuse: the last input is not a single feature map".into());
    };
    if xs.len() != idx.len() {
        return Err(format!(
            "CBFuse reads {} lists with {} indices",
            xs.len(),
            idx.len()
        ));
    }
    let picked = xs
        .into_iter()
        .zip(&idx)
        .map(|(v, &i)| match v {
            LayerInput::Many(list) => usize::try_from(i)
                .ok()
                .and_then(|i| list.get(i).cloned())
                .ok_or_else(|| format!("CBFuse index {i} of a list of {}", list.len())),
            _ => Err("CBFuse: an input other than the last is not a list".into()),
        })
        .collect::<BuildResult<Vec<X>>>()?;
    Ok((picked, target))
}

/// The integer factor by which nearest resizing takes `from` to `to`: an upsampling (the yamls'
/// `CBFuse` only upsamples; a fractional factor would round differently in the two backends).
fn up_factor(from: i64, to: i64) -> BuildResult<i64> {
    if from > 0 && to >= from && to % from == 0 {
        Ok(to / from)
    } else {
        Err(format!(
            "CBFuse resizes {from} to {to}, not an integer upsampling"
        ))
    }
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
        let a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        let [an, ac, ah, aw] = check::nchw(&a, scope)?;
        let c = halves(&m, ac, scope)?;
        let mut ys: Vec<GraphValue> = self
            .b
            .split(scope, &a.name, 1, &[c, c])
            .into_iter()
            .map(|name| GraphValue {
                name,
                shape: vec![an, c, ah, aw],
            })
            .collect();
        for name in ["cv2", "cv3"] {
            let last = ys.last().expect("two halves").clone();
            ys.push(self.module(
                &format!("{scope}.{name}"),
                m.child(name)?,
                LayerInput::One(last),
            )?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.conv_block(&format!("{scope}.cv4"), m.child("cv4")?, &cat)
    }

    /// `avg_pool2d(x, 2, 1, 0)`.
    fn avg_pool2(&mut self, scope: &str, x: &GraphValue) -> BuildResult<GraphValue> {
        let [xn, xc, xh, xw] = check::nchw(x, scope)?;
        let y = self.b.node(
            scope,
            "AveragePool",
            &[&x.name],
            vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![0, 0, 0, 0])),
                ("strides", Attr::Ints(vec![1, 1])),
            ],
        );
        let shape = check::positive(scope, vec![xn, xc, xh - 1, xw - 1])?;
        Ok(GraphValue { name: y, shape })
    }

    /// `AConv`: 2×2 average pool, cv1.
    pub(crate) fn aconv(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let p = self.avg_pool2(scope, x)?;
        self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, &p)
    }

    /// `ADown`: 2×2 average pool; first half through cv1, second through a 3×3 stride-2 max
    /// pool and cv2; concatenated.
    pub(crate) fn adown(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let p = self.avg_pool2(scope, x)?;
        let [pn, pc, ph, pw] = check::nchw(&p, scope)?;
        // `chunk(2, 1)` halves: `ADown.c` is the output half, not the input's.
        if pc <= 0 || pc % 2 != 0 {
            return Err(format!("{scope}: ADown cannot halve {pc} channels"));
        }
        let c = pc / 2;
        let parts = self.b.split(scope, &p.name, 1, &[c, c]);
        let half = |name: &String| GraphValue {
            name: name.clone(),
            shape: vec![pn, c, ph, pw],
        };
        let y1 = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, &half(&parts[0]))?;
        let pooled = self.b.node(
            scope,
            "MaxPool",
            &[&parts[1]],
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        );
        let pooled = GraphValue {
            name: pooled,
            shape: vec![
                pn,
                c,
                check::out_size(ph, 3, 2, 1, 1),
                check::out_size(pw, 3, 2, 1, 1),
            ],
        };
        let y2 = self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &pooled)?;
        if y1.shape[2..] != y2.shape[2..] {
            return Err(format!(
                "{scope}: ADown branches give {:?} and {:?}",
                y1.shape, y2.shape
            ));
        }
        self.cat(scope, &[y1, y2], 1)
    }

    /// `SPPELAN`: cv1, three chained max pools, all four concatenated, cv5.
    pub(crate) fn sppelan(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut ys = vec![self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?];
        for name in ["cv2", "cv3", "cv4"] {
            let last = ys.last().expect("cv1 output").clone();
            ys.push(self.module(
                &format!("{scope}.{name}"),
                m.child(name)?,
                LayerInput::One(last),
            )?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.conv_block(&format!("{scope}.cv5"), m.child("cv5")?, &cat)
    }

    /// `CBLinear`: its conv, split into the `c2s` channel groups.
    pub(crate) fn cb_linear(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<Vec<GraphValue>> {
        let y = self.conv2d(&format!("{scope}.conv"), m.child("conv")?, None, x)?;
        let [n, c, h, w] = check::nchw(&y, scope)?;
        let sizes = c2s(&m, c)?;
        let names = self.b.split(scope, &y.name, 1, &sizes);
        Ok(names
            .into_iter()
            .zip(sizes)
            .map(|(name, c)| GraphValue {
                name,
                shape: vec![n, c, h, w],
            })
            .collect())
    }

    /// `CBFuse`: each picked entry nearest-upsampled to the target's size (`Resize`), then all
    /// summed.
    pub(crate) fn cb_fuse(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: LayerInput<GraphValue>,
    ) -> BuildResult<GraphValue> {
        let (picked, target) = cb_fuse_inputs(&m, x)?;
        let [_, tc, th, tw] = check::nchw(&target, scope)?;
        let mut sum = target.clone();
        for v in &picked {
            let [_, c, h, w] = check::nchw(v, scope)?;
            if c != tc {
                return Err(format!("{scope}: CBFuse adds {c} channels to {tc}"));
            }
            let (fh, fw) = (up_factor(h, th)?, up_factor(w, tw)?);
            let r = if (fh, fw) == (1, 1) {
                v.name.clone()
            } else {
                let scales = self.b.f32s(
                    &format!("{scope}/scales"),
                    &[1.0, 1.0, fh as f32, fw as f32],
                );
                self.b.node(
                    scope,
                    "Resize",
                    &[&v.name, "", &scales],
                    vec![
                        (
                            "coordinate_transformation_mode",
                            Attr::Str("asymmetric".into()),
                        ),
                        ("mode", Attr::Str("nearest".into())),
                        ("nearest_mode", Attr::Str("floor".into())),
                    ],
                )
            };
            sum = GraphValue {
                name: self.b.bin(scope, "Add", &r, &sum.name),
                shape: target.shape.clone(),
            };
        }
        Ok(sum)
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
    pub(crate) fn rep_conv(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<RefTensor> {
        let mut y = match RepConvParts::parse(m)? {
            RepConvParts::Fused(conv) => self.module(conv, LayerInput::One(x.clone()))?,
            RepConvParts::Branches { conv1, conv2, bn } => {
                let a = self.module(conv1, LayerInput::One(x.clone()))?;
                let b = self.module(conv2, LayerInput::One(x.clone()))?;
                shape::same_shape(&a, &b, "RepConv")?;
                let mut y = ops::add(&a, &b);
                if let Some(bn) = bn {
                    let mut id = x.clone();
                    let (_, c, _, _) = shape::nchw(&id, "RepConv")?;
                    let p = BatchNorm::parse(bn, c)?;
                    ops::batch_norm(&mut id, &p.gamma, &p.beta, &p.mean, &p.var, p.eps);
                    shape::same_shape(&y, &id, "RepConv")?;
                    y = ops::add(&y, &id);
                }
                y
            }
        };
        super::act::run(m.opt_child("act"), &mut y)?;
        Ok(y)
    }

    pub(crate) fn elan(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let (_, ac, _, _) = shape::nchw(&a, "RepNCSPELAN4")?;
        if ac % 2 != 0 {
            return Err(e(format!("RepNCSPELAN4 cannot halve {ac} channels")));
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

    pub(crate) fn aconv(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<RefTensor> {
        let p = avg_pool2(x)?;
        self.sub(m, "cv1", &p)
    }

    pub(crate) fn adown(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<RefTensor> {
        let p = avg_pool2(x)?;
        let (_, c, _, _) = shape::nchw(&p, "ADown")?;
        if c % 2 != 0 {
            return Err(e(format!("ADown cannot halve {c} channels")));
        }
        let y1 = self.sub(m, "cv1", &ops::channels(&p, 0, c / 2))?;
        let second = ops::channels(&p, c / 2, c);
        shape::pool(&second, 3, 2, 1, "ADown")?;
        let y2 = self.sub(m, "cv2", &ops::max_pool(&second, 3, 2, 1))?;
        shape::same_maps(&[&y1, &y2], "ADown")?;
        Ok(ops::cat_channels(&[&y1, &y2]))
    }

    pub(crate) fn sppelan(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<RefTensor> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for name in ["cv2", "cv3", "cv4"] {
            let last = ys.last().expect("cv1").clone();
            ys.push(self.sub(m, name, &last)?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "SPPELAN")?;
        self.sub(m, "cv5", &ops::cat_channels(&refs))
    }

    pub(crate) fn cb_linear(&mut self, m: ModuleRef, x: &RefTensor) -> RefResult<Vec<RefTensor>> {
        let y = self.sub(m, "conv", x)?;
        let (_, c, _, _) = shape::nchw(&y, "CBLinear")?;
        let sizes = c2s(&m, c as i64)?;
        let mut from = 0;
        Ok(sizes
            .into_iter()
            .map(|s| {
                let t = ops::channels(&y, from, from + s as usize);
                from += s as usize;
                t
            })
            .collect())
    }
}

/// `avg_pool2d(x, 2, 1, 0)`: the mean of each 2×2 window.
fn avg_pool2(x: &RefTensor) -> RefResult<RefTensor> {
    let (n, c, h, w) = shape::nchw(x, "avg_pool2d")?;
    if h < 2 || w < 2 {
        return Err(e(format!("avg_pool2d(2) on a {h}x{w} map")));
    }
    let (oh, ow) = (h - 1, w - 1);
    let mut out = vec![0.0f32; n * c * oh * ow];
    for p in 0..n * c {
        let src = &x.data[p * h * w..(p + 1) * h * w];
        for y in 0..oh {
            for xx in 0..ow {
                let s = src[y * w + xx]
                    + src[y * w + xx + 1]
                    + src[(y + 1) * w + xx]
                    + src[(y + 1) * w + xx + 1];
                out[(p * oh + y) * ow + xx] = s / 4.0;
            }
        }
    }
    Ok(RefTensor::new(out, vec![n, c, oh, ow]))
}

/// `CBFuse`: each picked map resized to the target's size as `F.interpolate(mode='nearest')`
/// picks source pixels (floor(dst · in/out)), then all summed with the target.
fn cb_fuse(m: ModuleRef, x: LayerInput<RefTensor>) -> RefResult<RefTensor> {
    let (picked, target) = cb_fuse_inputs(&m, x)?;
    let (tn, tc, th, tw) = shape::nchw(&target, "CBFuse")?;
    let mut sum = target.clone();
    for v in &picked {
        let (n, c, h, w) = shape::nchw(v, "CBFuse")?;
        if (n, c) != (tn, tc) {
            return Err(e(format!(
                "CBFuse adds {:?} to {:?}",
                v.shape, target.shape
            )));
        }
        up_factor(h as i64, th as i64)?;
        up_factor(w as i64, tw as i64)?;
        let (sy, sx) = (h as f32 / th as f32, w as f32 / tw as f32);
        for p in 0..n * c {
            for y in 0..th {
                let iy = ((y as f32 * sy).floor() as usize).min(h - 1);
                for xx in 0..tw {
                    let ix = ((xx as f32 * sx).floor() as usize).min(w - 1);
                    sum.data[(p * th + y) * tw + xx] += v.data[(p * h + iy) * w + ix];
                }
            }
        }
    }
    Ok(sum)
}
