//! The classification head: `Classify` (conv, global average pool, linear, softmax) and the
//! parts only it reads.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, head, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    head(
        "Classify",
        "classify",
        "conv, global average pool, linear, softmax: (B, classes)",
        |b, s, m, x| b.classify(s, m, x),
        |r, m, x| match x {
            LayerInput::One(t) => r.classify(m, &t),
            xs => {
                let xs = xs.many();
                let refs = xs.iter().collect::<Vec<_>>();
                shape::same_maps(&refs, "Classify")?;
                r.classify(m, &ops::cat_channels(&refs))
            }
        },
    ),
    part("AdaptiveAvgPool2d", "Classify", "global average pooling"),
    part(
        "Dropout",
        "Classify, AIFI, DeformableTransformerDecoderLayer",
        "identity at inference",
    ),
    part(
        "Linear",
        "Classify, AIFI, RTDETRDecoder, MLP, MSDeformAttn, DeformableTransformerDecoderLayer",
        "`nn.Linear`: the class projection; RT-DETR's projections on the last axis",
    ),
];

// ---- parse (shared) ----

/// `nn.Linear`'s weights, read and checked once for both backends.
pub struct Linear {
    /// The weight, (out, in) row-major.
    pub weight: Vec<f32>,
    /// (out, in).
    pub shape: [i64; 2],
    /// One bias per output (zeros when the module has none).
    pub bias: Vec<f32>,
}

impl Linear {
    /// Reads `m`, an `nn.Linear`.
    pub fn parse(m: ModuleRef) -> BuildResult<Linear> {
        let (weight, ws) = m.need_f32("weight")?;
        let shape = match ws[..] {
            [o, i]
                if (1..=1 << 20).contains(&o)
                    && (1..=1 << 20).contains(&i)
                    && usize::try_from(o * i).ok() == Some(weight.len()) =>
            {
                [o, i]
            }
            _ => {
                return Err(LayerError::weight(
                    "Linear",
                    "weight",
                    format!("has shape {ws:?}, not 2-D"),
                ));
            }
        };
        let bias = m
            .tensor_f32("bias")?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; shape[0] as usize]);
        check::per_channel(&m, "bias", &bias, shape[0] as usize)?;
        Ok(Linear {
            weight,
            shape,
            bias,
        })
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `Classify`: conv, global average pool, linear, softmax (export form): output (B, classes).
    pub(crate) fn classify(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: LayerInput<GraphValue>,
    ) -> BuildResult<GraphValue> {
        let x = match x {
            LayerInput::One(v) => v,
            vs => self.cat(scope, &vs.many(), 1)?,
        };
        let c = self.sub_conv(scope, m, "conv", &x)?;
        let p = self.b.node(scope, "GlobalAveragePool", &[&c.name], vec![]);
        let f = self
            .b
            .node(scope, "Flatten", &[&p], vec![("axis", Attr::Int(1))]);
        let Linear {
            weight: w,
            shape: ws,
            bias: b,
        } = Linear::parse(m.child("linear")?)?;
        let [xn, ..] = check::nchw(&x, scope)?;
        let classes = ws[0];
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
        Ok(GraphValue {
            name: s,
            shape: vec![xn, classes],
        })
    }
}

// ---- run ----

impl Reference<'_> {
    /// `Classify`: conv, mean over H·W, linear, softmax.
    pub(crate) fn classify(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let y = self.sub(m, "conv", x)?;
        let (n, c, h, w) = shape::nchw(&y, "Classify")?;
        let lin = Linear::parse(m.child("linear")?)?;
        let ws = [lin.shape[0] as usize, lin.shape[1] as usize];
        if ws[1] != c {
            return Err(LayerError::shape(
                "Classify",
                format!("linear weight {ws:?} does not fit {c} channels"),
            ));
        }
        let (wt, bias) = (lin.weight, lin.bias);
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
        Ok(RefTensor::new(out, vec![n, ws[0]]))
    }
}
