//! Activations, applied by the `Conv` that holds them (`Conv.act`).

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{self, Kind, Layer, activation};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::{self, RefTensor};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    activation(
        "SiLU",
        "x·σ(x)",
        |g, s, _, x| {
            let sig = g.node(s, "Sigmoid", &[x], vec![]);
            g.bin(s, "Mul", x, &sig)
        },
        |_, t| ops::map(t, |v| v * ops::sigmoid(v)),
    ),
    activation(
        "ReLU",
        "max(x, 0)",
        |g, s, _, x| g.node(s, "Relu", &[x], vec![]),
        |_, t| ops::map(t, |v| v.max(0.0)),
    ),
    activation(
        "Sigmoid",
        "σ(x)",
        |g, s, _, x| g.node(s, "Sigmoid", &[x], vec![]),
        |_, t| ops::map(t, ops::sigmoid),
    ),
    activation(
        "Tanh",
        "tanh(x)",
        |g, s, _, x| g.node(s, "Tanh", &[x], vec![]),
        |_, t| ops::map(t, f32::tanh),
    ),
    activation(
        "Hardswish",
        "x·relu6(x + 3)/6",
        |g, s, _, x| g.node(s, "HardSwish", &[x], vec![]),
        |_, t| ops::map(t, |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
    ),
    activation(
        "LeakyReLU",
        "x, or `negative_slope`·x below 0",
        |g, s, m, x| {
            let alpha = m.float("negative_slope").unwrap_or(0.01) as f32;
            g.node(s, "LeakyRelu", &[x], vec![("alpha", Attr::Float(alpha))])
        },
        |m, t| {
            let a = m.float("negative_slope").unwrap_or(0.01) as f32;
            ops::map(t, |v| if v >= 0.0 { v } else { a * v })
        },
    ),
    activation(
        "Mish",
        "x·tanh(softplus(x))",
        |g, s, _, x| {
            let sp = g.node(s, "Softplus", &[x], vec![]);
            let t = g.node(s, "Tanh", &[&sp], vec![]);
            g.bin(s, "Mul", x, &t)
        },
        |_, t| ops::map(t, |v| v * ((1.0 + v.exp()).ln()).tanh()),
    ),
];

/// The activation entry for `m`'s class; `Ok(None)` for `Identity`.
fn entry(m: ModuleRef) -> BuildResult<Option<Kind>> {
    let class = m.class();
    if class == "Identity" {
        return Ok(None);
    }
    match registry::find(&class).map(|l| l.kind) {
        Some(k @ Kind::Activation { .. }) => Ok(Some(k)),
        _ => Err(LayerError::unsupported(class, "use as an activation")),
    }
}

impl Builder<'_> {
    /// An activation module applied to `x` (none, or `Identity`, returns `x`).
    pub(crate) fn act(
        &mut self,
        scope: &str,
        m: Option<ModuleRef>,
        x: GraphValue,
    ) -> BuildResult<GraphValue> {
        let Some(m) = m else { return Ok(x) };
        let Some(Kind::Activation { emit, .. }) = entry(m)? else {
            return Ok(x);
        };
        let name = emit(&mut self.b, &format!("{scope}/act"), m, &x.name);
        Ok(GraphValue {
            name,
            shape: x.shape,
        })
    }
}

/// Applies an activation module to `x` in place (none, or `Identity`, leaves it).
pub(crate) fn run(m: Option<ModuleRef>, x: &mut RefTensor) -> BuildResult<()> {
    let Some(m) = m else { return Ok(()) };
    if let Some(Kind::Activation { run, .. }) = entry(m)? {
        run(m, x);
    }
    Ok(())
}
