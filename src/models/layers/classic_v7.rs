//! YOLOv7's own blocks (WongKinYiu/yolov7 `models.common`): `SPPCSPC`, its `RepConv` (three
//! branches, or `rbr_reparam` once fused; it shares its short name with Ultralytics' `RepConv`,
//! which holds other children, so it is registered by its pickled path), `ReOrg` (space to depth),
//! `DownC` and `Shortcut`.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::layers::conv::{BatchNorm, batch_norm};
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "SPPCSPC",
        "YOLOv7's CSP spatial pyramid pool: cv1→cv3→cv4, max pools concatenated, cv5→cv6, beside cv2, cv7",
        |b, s, m, x| b.sppcspc(s, m, &x.one("SPPCSPC")?),
        |r, m, x| sppcspc(r, m, &x.one("SPPCSPC")?),
    ),
    layer(
        "models.common.RepConv",
        "YOLOv7's RepConv (matched by its pickled path): act(3×3 conv+BN + 1×1 conv+BN + BN(x)), or `rbr_reparam` once fused",
        |b, s, m, x| b.rep_conv_v7(s, m, &x.one("RepConv")?),
        |r, m, x| rep_conv_v7(r, m, &x.one("RepConv")?),
    ),
    layer(
        "ReOrg",
        "YOLOv7's space to depth: the four 2×2 phases (even/odd rows and columns) concatenated",
        |b, s, _, x| b.reorg(s, &x.one("ReOrg")?),
        |_, _, x| reorg(&x.one("ReOrg")?),
    ),
    layer(
        "DownC",
        "YOLOv7's downsampling: cv2(cv1(x)) beside cv3(max pool(x)), concatenated",
        |b, s, m, x| b.downc(s, m, &x.one("DownC")?),
        |r, m, x| downc(r, m, &x.one("DownC")?),
    ),
    layer(
        "Shortcut",
        "YOLOv7's sum of two inputs",
        |b, s, _, x| match &x.many()[..] {
            [a, c] => {
                check_same(&a.shape, &c.shape, s)?;
                Ok(b.add(s, a, c))
            }
            xs => Err(LayerError::inputs(
                "Shortcut",
                format!("adds two inputs, got {}", xs.len()),
            )),
        },
        |_, _, x| match &x.many()[..] {
            [a, c] => {
                shape::same_shape(a, c, "Shortcut")?;
                Ok(ops::add(a, c))
            }
            xs => Err(LayerError::inputs(
                "Shortcut",
                format!("adds two inputs, got {}", xs.len()),
            )),
        },
    ),
];

fn check_same(a: &[i64], b: &[i64], scope: &str) -> BuildResult<()> {
    if a != b {
        return Err(LayerError::shape(
            scope,
            format!("cannot add {a:?} and {b:?}"),
        ));
    }
    Ok(())
}

// ---- emit ----

impl Builder<'_> {
    /// `SPPCSPC`.
    pub(crate) fn sppcspc(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub(scope, m, "cv1", x)?;
        let a = self.sub(scope, m, "cv3", &a)?;
        let x1 = self.sub(scope, m, "cv4", &a)?;
        let mut ys = vec![x1.clone()];
        for (i, pool) in m.child("m")?.children() {
            ys.push(self.maxpool(&format!("{scope}.m.{i}"), pool, &x1)?);
        }
        let y = self.cat(scope, &ys, 1)?;
        let y = self.sub(scope, m, "cv5", &y)?;
        let y1 = self.sub(scope, m, "cv6", &y)?;
        let y2 = self.sub(scope, m, "cv2", x)?;
        let y = self.cat(scope, &[y1, y2], 1)?;
        self.sub(scope, m, "cv7", &y)
    }

    /// YOLOv7's `RepConv`: its branches with BatchNorm folded into each convolution, summed.
    pub(crate) fn rep_conv_v7(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = if let Some(rep) = m.opt_child("rbr_reparam") {
            self.conv2d(&format!("{scope}.rbr_reparam"), rep, None, x)?
        } else {
            let branch = |b: &mut Self, name: &str| -> BuildResult<GraphValue> {
                let seq = m.child(name)?;
                let s = format!("{scope}.{name}");
                b.conv2d(&s, seq.child("0")?, Some(seq.child("1")?), x)
            };
            let dense = branch(self, "rbr_dense")?;
            let one = branch(self, "rbr_1x1")?;
            check_same(&dense.shape, &one.shape, scope)?;
            let mut y = self.add(scope, &dense, &one);
            if let Some(id) = m.opt_child("rbr_identity") {
                check_same(&y.shape, &x.shape, scope)?;
                // BatchNorm of the input as x·scale + shift, per channel.
                let s = format!("{scope}.rbr_identity");
                let c = x.shape[1];
                let BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps,
                } = BatchNorm::parse(id, c as usize)?;
                let scale: Vec<f32> = (gamma.iter().zip(&var))
                    .map(|(g, v)| g / (v + eps).sqrt())
                    .collect();
                let shift: Vec<f32> = (0..scale.len())
                    .map(|i| beta[i] - mean[i] * scale[i])
                    .collect();
                let scale = self.b.weight(&format!("{s}.scale"), &[1, c, 1, 1], &scale);
                let shift = self.b.weight(&format!("{s}.shift"), &[1, c, 1, 1], &shift);
                let i = self.b.bin(&s, "Mul", &x.name, &scale);
                let i = self.b.bin(&s, "Add", &i, &shift);
                let i = GraphValue {
                    name: i,
                    shape: x.shape.clone(),
                };
                y = self.add(scope, &y, &i);
            }
            y
        };
        self.act(scope, m.opt_child("act"), y)
    }

    /// `ReOrg`: x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2].
    pub(crate) fn reorg(&mut self, scope: &str, x: &GraphValue) -> BuildResult<GraphValue> {
        let [n, c, h, w] = check::nchw(x, scope)?;
        if h % 2 != 0 || w % 2 != 0 {
            return Err(LayerError::shape(
                scope,
                format!("ReOrg of an odd-sized {h}x{w} map"),
            ));
        }
        let mut parts = Vec::new();
        for (r, q) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let starts = self.b.ints(&format!("{scope}/starts"), &[r, q]);
            let ends = self.b.ints(&format!("{scope}/ends"), &[h, w]);
            let axes = self.b.ints(&format!("{scope}/axes"), &[2, 3]);
            let steps = self.b.ints(&format!("{scope}/steps"), &[2, 2]);
            let y = self.b.node(
                scope,
                "Slice",
                &[&x.name, &starts, &ends, &axes, &steps],
                vec![],
            );
            parts.push(GraphValue {
                name: y,
                shape: vec![n, c, h / 2, w / 2],
            });
        }
        self.cat(scope, &parts, 1)
    }

    /// `DownC`.
    pub(crate) fn downc(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub(scope, m, "cv1", x)?;
        let a = self.sub(scope, m, "cv2", &a)?;
        let p = self.maxpool(&format!("{scope}.mp"), m.child("mp")?, x)?;
        let b = self.sub(scope, m, "cv3", &p)?;
        self.cat(scope, &[a, b], 1)
    }
}

// ---- run ----

fn sppcspc(r: &mut Reference, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let a = r.sub(m, "cv1", x)?;
    let a = r.sub(m, "cv3", &a)?;
    let x1 = r.sub(m, "cv4", &a)?;
    let mut ys = vec![x1.clone()];
    for (_, pool) in m.child("m")?.children() {
        ys.push(r.module(pool, LayerInput::One(x1.clone()))?);
    }
    let refs: Vec<&RefTensor> = ys.iter().collect();
    shape::same_maps(&refs, "SPPCSPC")?;
    let y = r.sub(m, "cv5", &ops::cat_channels(&refs))?;
    let y1 = r.sub(m, "cv6", &y)?;
    let y2 = r.sub(m, "cv2", x)?;
    shape::same_maps(&[&y1, &y2], "SPPCSPC")?;
    r.sub(m, "cv7", &ops::cat_channels(&[&y1, &y2]))
}

fn rep_conv_v7(r: &mut Reference, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    // BatchNorm applied as BatchNorm, unfolded, as PyTorch runs it before fusing.
    let bn = |bn: ModuleRef, mut y: RefTensor| -> BuildResult<RefTensor> {
        batch_norm(bn, &mut y, "BatchNorm2d")?;
        Ok(y)
    };
    let branch = |r: &mut Reference, name: &str| -> BuildResult<RefTensor> {
        let seq = m.child(name)?;
        let y = r.sub(seq, "0", x)?;
        bn(seq.child("1")?, y)
    };
    let mut y = if m.opt_child("rbr_reparam").is_some() {
        r.sub(m, "rbr_reparam", x)?
    } else {
        let dense = branch(r, "rbr_dense")?;
        let one = branch(r, "rbr_1x1")?;
        shape::same_shape(&dense, &one, "RepConv")?;
        let mut y = ops::add(&dense, &one);
        if let Some(id) = m.opt_child("rbr_identity") {
            let i = bn(id, x.clone())?;
            shape::same_shape(&y, &i, "RepConv")?;
            y = ops::add(&y, &i);
        }
        y
    };
    super::act::run(m.opt_child("act"), &mut y)?;
    Ok(y)
}

fn reorg(x: &RefTensor) -> BuildResult<RefTensor> {
    let (n, c, h, w) = shape::nchw(x, "ReOrg")?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(LayerError::shape(
            "ReOrg",
            format!("an odd-sized {h}x{w} map"),
        ));
    }
    let (oh, ow) = (h / 2, w / 2);
    let mut out = Vec::with_capacity(x.data.len());
    for b in 0..n {
        for (r, q) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            for ch in 0..c {
                for i in 0..oh {
                    let row = ((b * c + ch) * h + 2 * i + r) * w;
                    out.extend((0..ow).map(|j| x.data[row + 2 * j + q]));
                }
            }
        }
    }
    Ok(RefTensor::new(out, vec![n, 4 * c, oh, ow]))
}

fn downc(r: &mut Reference, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let a = r.sub(m, "cv1", x)?;
    let a = r.sub(m, "cv2", &a)?;
    let p = r.sub(m, "mp", x)?;
    let b = r.sub(m, "cv3", &p)?;
    shape::same_maps(&[&a, &b], "DownC")?;
    Ok(ops::cat_channels(&[&a, &b]))
}
