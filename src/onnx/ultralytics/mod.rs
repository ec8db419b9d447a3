//! Ultralytics models: walk the pickled module tree the way `BaseModel._predict_once` runs it
//! (each layer's `f` says where its input comes from) and emit each module by its class.

mod attention;
mod head;
mod layers;

use std::collections::BTreeSet;

use layers::In;

use super::graph::{GraphBuilder, V};
use crate::checkpoint::py::{M, R};

/// Module classes the builder emits.
const SUPPORTED: &[&str] = &[
    "Sequential",
    "ModuleList",
    "Conv",
    "DWConv",
    "Conv2d",
    "BatchNorm2d",
    "Concat",
    "Upsample",
    "MaxPool2d",
    "Bottleneck",
    "C2f",
    "C3",
    "SPPF",
    "Detect",
    "DFL",
    "Identity",
    "SiLU",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Hardswish",
    "Mish",
    "C3k2",
    "C3k",
    "C2PSA",
    "PSA",
    "PSABlock",
    "Attention",
    "Classify",
    "AdaptiveAvgPool2d",
    "Dropout",
    "Linear",
    "Segment",
    "Pose",
    "OBB",
    "Proto",
    "ConvTranspose2d",
];

/// Emits modules into a graph.
pub struct Builder<'g> {
    /// The graph under construction.
    pub b: GraphBuilder,
    /// Outputs beyond the model's main one (`Segment`'s prototypes), in order.
    pub extra_outputs: Vec<V>,
    _g: std::marker::PhantomData<&'g ()>,
}

impl<'g> Builder<'g> {
    /// A builder writing into `b`.
    pub fn new(b: GraphBuilder) -> Builder<'g> {
        Builder {
            b,
            extra_outputs: Vec::new(),
            _g: std::marker::PhantomData,
        }
    }

    /// Emits one module by its class.
    pub fn module(&mut self, scope: &str, m: M, x: In) -> R<V> {
        let class = m.class();
        match class.as_str() {
            "Sequential" => {
                let mut x = x;
                for (name, c) in m.children() {
                    x = In::One(self.module(&format!("{scope}.{name}"), c, x)?);
                }
                x.one("Sequential")
            }
            "Conv" | "DWConv" => self.conv_block(scope, m, &x.one(&class)?),
            "Conv2d" => self.conv2d(scope, m, None, &x.one(&class)?),
            "Identity" => x.one(&class),
            "MaxPool2d" => self.maxpool(scope, m, &x.one(&class)?),
            "Upsample" => self.upsample(scope, m, &x.one(&class)?),
            "Bottleneck" => self.bottleneck(scope, m, &x.one(&class)?),
            "C2f" | "C3k2" => self.c2f(scope, m, &x.one(&class)?),
            "C3" | "C3k" => self.c3(scope, m, &x.one(&class)?),
            "C2PSA" | "PSA" => self.c2psa(scope, m, &x.one(&class)?),
            "PSABlock" => self.psablock(scope, m, &x.one(&class)?),
            "Attention" => self.attention(scope, m, &x.one(&class)?),
            "Classify" => self.classify(scope, m, x),
            "SPPF" => self.sppf(scope, m, &x.one(&class)?),
            "Concat" => match x {
                In::Many(xs) => self.cat(scope, &xs, m.int("d").unwrap_or(1)),
                In::One(v) => Ok(v),
            },
            "Detect" | "Segment" | "Pose" | "OBB" => match x {
                In::Many(xs) => self.detect(scope, m, &xs),
                In::One(v) => self.detect(scope, m, &[v]),
            },
            other => Err(format!("unsupported module class {other}")),
        }
    }
}

/// Every class below `m` that the builder does not emit.
pub fn unsupported(m: M) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(m, 0usize)];
    while let Some((m, depth)) = stack.pop() {
        let c = m.class();
        if !SUPPORTED.contains(&c.as_str()) {
            out.insert(c);
        }
        if depth < 64 {
            stack.extend(m.children().into_iter().map(|(_, c)| (c, depth + 1)));
        }
    }
    out
}

/// Runs the layers of a `DetectionModel`-like module (`model` = the layer list, `save` = outputs
/// kept for later layers) on `input` and returns the last layer's output.
pub fn forward(bld: &mut Builder, root: M, input: V) -> R<V> {
    let layers = root.child("model")?;
    let mut y: Vec<Option<V>> = Vec::new();
    let mut x = In::One(input);
    for (name, layer) in layers.children() {
        let f = layer
            .attr("f")
            .ok_or_else(|| format!("layer {name} ({}) has no `f`", layer.class()))?;
        let pick = |j: i64, x: &In, y: &[Option<V>]| -> R<V> {
            if j == -1 {
                return match x {
                    In::One(v) => Ok(v.clone()),
                    In::Many(_) => Err(format!("layer {name} takes the previous output, a list")),
                };
            }
            let idx = if j < 0 { y.len() as i64 + j } else { j };
            y.get(idx as usize)
                .cloned()
                .flatten()
                .ok_or_else(|| format!("layer {name} reads layer {j}, which is not kept"))
        };
        if let Some(j) = f.as_int() {
            if j != -1 {
                x = In::One(pick(j, &x, &y)?);
            }
        } else {
            let js = layer
                .ints("f")
                .ok_or_else(|| format!("layer {name} has an unreadable `f`"))?;
            let vs = js.iter().map(|&j| pick(j, &x, &y)).collect::<R<Vec<V>>>()?;
            x = In::Many(vs);
        }
        let out = bld.module(&format!("model.{name}"), layer, x)?;
        y.push(Some(out.clone()));
        x = In::One(out);
    }
    x.one("model")
}
