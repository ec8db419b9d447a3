//! YOLOv9's downsamplers `AConv` / `ADown` (a 2×2 average pool, then strided convolutions) and
//! its auxiliary branch's `CBLinear` (a conv split into a list) and `CBFuse` (entries of those
//! lists resized and summed). The ELAN blocks are in `elan.rs`.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, fork, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
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

/// `CBLinear.c2s`: the channel groups its conv's output splits into.
fn c2s(m: &ModuleRef, channels: i64) -> BuildResult<Vec<i64>> {
    let c = m
        .ints("c2s")
        .ok_or_else(|| LayerError::missing("CBLinear", "c2s"))?;
    if c.is_empty() || c.iter().any(|&v| v <= 0) || c.iter().sum::<i64>() != channels {
        return Err(LayerError::shape(
            "CBLinear",
            format!("splits {channels} channels into {c:?}"),
        ));
    }
    Ok(c)
}

/// `CBFuse`'s inputs: for each list, the entry `idx[i]`; then the target map.
fn cb_fuse_inputs<X: Clone>(m: &ModuleRef, x: LayerInput<X>) -> BuildResult<(Vec<X>, X)> {
    let idx = m
        .ints("idx")
        .ok_or_else(|| LayerError::missing("CBFuse", "idx"))?;
    let LayerInput::Nested(mut xs) = x else {
        return Err(LayerError::inputs(
            "CBFuse",
            "expects lists of CBLinear outputs and a feature map",
        ));
    };
    let Some(LayerInput::One(target)) = xs.pop() else {
        return Err(LayerError::inputs(
            "CBFuse",
            "the last input is not a single feature map",
        ));
    };
    if xs.len() != idx.len() {
        return Err(LayerError::shape(
            "CBFuse",
            format!("reads {} lists with {} indices", xs.len(), idx.len()),
        ));
    }
    let picked = xs
        .into_iter()
        .zip(&idx)
        .map(|(v, &i)| match v {
            LayerInput::Many(list) => usize::try_from(i)
                .ok()
                .and_then(|i| list.get(i).cloned())
                .ok_or_else(|| {
                    LayerError::shape("CBFuse", format!("index {i} of a list of {}", list.len()))
                }),
            _ => Err(LayerError::inputs(
                "CBFuse",
                "an input other than the last is not a list",
            )),
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
        Err(LayerError::shape(
            "CBFuse",
            format!("resizes {from} to {to}, not an integer upsampling"),
        ))
    }
}

// ---- emit ----

impl Builder<'_> {
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
        self.sub_conv(scope, m, "cv1", &p)
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
            return Err(LayerError::shape(
                scope,
                format!("ADown cannot halve {pc} channels"),
            ));
        }
        let c = pc / 2;
        let parts = self.b.split(scope, &p.name, 1, &[c, c]);
        let half = |name: &String| GraphValue {
            name: name.clone(),
            shape: vec![pn, c, ph, pw],
        };
        let y1 = self.sub_conv(scope, m, "cv1", &half(&parts[0]))?;
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
        let y2 = self.sub_conv(scope, m, "cv2", &pooled)?;
        if y1.shape[2..] != y2.shape[2..] {
            return Err(LayerError::shape(
                scope,
                format!("ADown branches give {:?} and {:?}", y1.shape, y2.shape),
            ));
        }
        self.cat(scope, &[y1, y2], 1)
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
                return Err(LayerError::shape(
                    scope,
                    format!("CBFuse adds {c} channels to {tc}"),
                ));
            }
            let (fh, fw) = (up_factor(h, th)?, up_factor(w, tw)?);
            let r = if (fh, fw) == (1, 1) {
                v.name.clone()
            } else {
                self.resize_nearest_node(scope, &v.name, [fh as f32, fw as f32])
            };
            sum = GraphValue {
                name: self.b.bin(scope, "Add", &r, &sum.name),
                shape: target.shape.clone(),
            };
        }
        Ok(sum)
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn aconv(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let p = avg_pool2(x)?;
        self.sub(m, "cv1", &p)
    }

    pub(crate) fn adown(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let p = avg_pool2(x)?;
        let (_, c, _, _) = shape::nchw(&p, "ADown")?;
        if c % 2 != 0 {
            return Err(LayerError::shape(
                "ADown",
                format!("cannot halve {c} channels"),
            ));
        }
        let y1 = self.sub(m, "cv1", &ops::channels(&p, 0, c / 2))?;
        let second = ops::channels(&p, c / 2, c);
        shape::pool(&second, 3, 2, 1, "ADown")?;
        let y2 = self.sub(m, "cv2", &ops::max_pool(&second, 3, 2, 1))?;
        shape::same_maps(&[&y1, &y2], "ADown")?;
        Ok(ops::cat_channels(&[&y1, &y2]))
    }

    pub(crate) fn cb_linear(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<Vec<RefTensor>> {
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
fn avg_pool2(x: &RefTensor) -> BuildResult<RefTensor> {
    let (n, c, h, w) = shape::nchw(x, "avg_pool2d")?;
    if h < 2 || w < 2 {
        return Err(LayerError::shape(
            "ADown",
            format!("avg_pool2d(2) on a {h}x{w} map"),
        ));
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
fn cb_fuse(m: ModuleRef, x: LayerInput<RefTensor>) -> BuildResult<RefTensor> {
    let (picked, target) = cb_fuse_inputs(&m, x)?;
    let (tn, tc, th, tw) = shape::nchw(&target, "CBFuse")?;
    let mut sum = target.clone();
    for v in &picked {
        let (n, c, h, w) = shape::nchw(v, "CBFuse")?;
        if (n, c) != (tn, tc) {
            return Err(LayerError::shape(
                "CBFuse",
                format!("adds {:?} to {:?}", v.shape, target.shape),
            ));
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
