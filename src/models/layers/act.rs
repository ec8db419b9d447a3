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
        |_, t| ops::map(t, silu),
    ),
    activation(
        "ReLU",
        "max(x, 0)",
        |g, s, _, x| g.node(s, "Relu", &[x], vec![]),
        |_, t| ops::map(t, relu),
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
        |_, t| ops::map(t, hardswish),
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
            ops::map(t, |v| leaky_relu(v, a))
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
        |_, t| ops::map(t, mish),
    ),
];

fn silu(v: f32) -> f32 {
    v * ops::sigmoid(v)
}

fn relu(v: f32) -> f32 {
    v.max(0.0)
}

fn hardswish(v: f32) -> f32 {
    v * (v + 3.0).clamp(0.0, 6.0) / 6.0
}

fn leaky_relu(v: f32, a: f32) -> f32 {
    if v >= 0.0 { v } else { a * v }
}

fn mish(v: f32) -> f32 {
    v * ((1.0 + v.exp()).ln()).tanh()
}

/// An activation a convolution applies in its own pass over each output tile (see
/// [`ops::Epilogue`]): the same function as the class's registry entry runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Pointwise {
    /// No activation, or `Identity`.
    Identity,
    /// `SiLU`.
    Silu,
    /// `ReLU`.
    Relu,
    /// `Sigmoid`.
    Sigmoid,
    /// `Tanh`.
    Tanh,
    /// `Hardswish`.
    Hardswish,
    /// `LeakyReLU` with its slope.
    LeakyRelu(f32),
    /// `Mish`.
    Mish,
}

impl Pointwise {
    /// `m`'s activation as a pointwise function, after the same class check as [`run`];
    /// `None` for an activation this file does not hold (GELU): [`run`] applies it.
    pub(crate) fn of(m: Option<ModuleRef>) -> BuildResult<Option<Pointwise>> {
        let Some(m) = m else {
            return Ok(Some(Pointwise::Identity));
        };
        if entry(m)?.is_none() {
            return Ok(Some(Pointwise::Identity));
        }
        Ok(Some(match m.class().as_str() {
            "SiLU" => Pointwise::Silu,
            "ReLU" => Pointwise::Relu,
            "Sigmoid" => Pointwise::Sigmoid,
            "Tanh" => Pointwise::Tanh,
            "Hardswish" => Pointwise::Hardswish,
            "LeakyReLU" => Pointwise::LeakyRelu(m.float("negative_slope").unwrap_or(0.01) as f32),
            "Mish" => Pointwise::Mish,
            _ => return Ok(None),
        }))
    }

    /// Batch norm (γ, β, mean, var, eps) of one channel's run of values, then this activation,
    /// in one pass; the match is outside the loop so each arm's loop is compiled for its
    /// function alone.
    pub(crate) fn batch_norm_run(self, xs: &mut [f32], bn: (f32, f32, f32, f32, f32)) {
        match self {
            Pointwise::Identity => ops::batch_norm_run(xs, bn, |v| v),
            Pointwise::Silu => ops::batch_norm_run(xs, bn, silu),
            Pointwise::Relu => ops::batch_norm_run(xs, bn, relu),
            Pointwise::Sigmoid => ops::batch_norm_run(xs, bn, ops::sigmoid),
            Pointwise::Tanh => ops::batch_norm_run(xs, bn, f32::tanh),
            Pointwise::Hardswish => ops::batch_norm_run(xs, bn, hardswish),
            Pointwise::LeakyRelu(a) => ops::batch_norm_run(xs, bn, |v| leaky_relu(v, a)),
            Pointwise::Mish => ops::batch_norm_run(xs, bn, mish),
        }
    }

    /// This activation on one run of values.
    pub(crate) fn run(self, xs: &mut [f32]) {
        match self {
            Pointwise::Identity => {}
            Pointwise::Silu => ops::map_run(xs, silu),
            Pointwise::Relu => ops::map_run(xs, relu),
            Pointwise::Sigmoid => ops::map_run(xs, ops::sigmoid),
            Pointwise::Tanh => ops::map_run(xs, f32::tanh),
            Pointwise::Hardswish => ops::map_run(xs, hardswish),
            Pointwise::LeakyRelu(a) => ops::map_run(xs, |v| leaky_relu(v, a)),
            Pointwise::Mish => ops::map_run(xs, mish),
        }
    }
}

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
