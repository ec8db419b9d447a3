//! The classification head: `Classify` (conv, global average pool, linear, softmax) and the
//! parts only it reads.

use crate::checkpoint::py::{M, R};
use crate::models::In;
use crate::models::registry::{Layer, head, part};
use crate::onnx::graph::V;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, T};
use crate::reference::{self as reference, RefResult, Reference, e, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    head(
        "Classify",
        "classify",
        "conv, global average pool, linear, softmax: (B, classes)",
        |b, s, m, x| b.classify(s, m, x),
        |r, m, x| match x {
            In::Many(xs) => {
                let refs = xs.iter().collect::<Vec<_>>();
                shape::same_maps(&refs, "Classify")?;
                r.classify(m, &ops::cat_channels(&refs))
            }
            In::One(t) => r.classify(m, &t),
        },
    ),
    part("AdaptiveAvgPool2d", "Classify", "global average pooling"),
    part("Dropout", "Classify", "identity at inference"),
    part("Linear", "Classify", "the class projection"),
];

// ---- emit ----

impl Builder<'_> {
    /// `Classify`: conv, global average pool, linear, softmax (export form): output (B, classes).
    /// `Classify`: conv, mean over H·W, linear, softmax.
    pub(crate) fn classify(&mut self, scope: &str, m: M, x: In<V>) -> R<V> {
        let x = match x {
            In::One(v) => v,
            In::Many(vs) => self.cat(scope, &vs, 1)?,
        };
        let c = self.conv_block(&format!("{scope}.conv"), m.child("conv")?, &x)?;
        let p = self.b.node(scope, "GlobalAveragePool", &[&c.name], vec![]);
        let f = self
            .b
            .node(scope, "Flatten", &[&p], vec![("axis", Attr::Int(1))]);
        let lin = m.child("linear")?;
        let (w, ws) = lin.need_f32("weight")?;
        let [xn, ..] = check::nchw(&x, scope)?;
        let &[classes, _] = ws.as_slice() else {
            return Err(format!("{scope}.linear weight has shape {ws:?}, not 2-D"));
        };
        let b = lin
            .tensor_f32("bias")?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; classes.max(0) as usize]);
        let wn = self.b.weight(&format!("{scope}.linear.weight"), &ws, &w);
        let bn = self
            .b
            .weight(&format!("{scope}.linear.bias"), &[classes], &b);
        let y = self.b.node(
            scope,
            "Gemm",
            &[&f, &wn, &bn],
            vec![("transB", Attr::Int(1))],
        );
        let s = self
            .b
            .node(scope, "Softmax", &[&y], vec![("axis", Attr::Int(1))]);
        Ok(V {
            name: s,
            shape: vec![xn, classes],
        })
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn classify(&mut self, m: M, x: &T) -> RefResult<T> {
        let y = self.sub(m, "conv", x)?;
        let (n, c, h, w) = shape::nchw(&y, "Classify")?;
        let lin = m.child("linear").map_err(e)?;
        let (wt, ws) = reference::tensor(&lin, "weight")?;
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
