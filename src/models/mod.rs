//! What a pickled Ultralytics model is, independent of any backend.
//!
//! [`Net`] walks the layer list the way `BaseModel._predict_once` does (each layer's `f` says
//! where its input comes from; every output is kept for later layers), once, for both backends:
//! the ONNX builder ([`crate::onnx::ultralytics::Builder`], the *emit* side) and the reference
//! interpreter ([`crate::reference::Reference`], the *run* side) only say what one layer does.
//! [`registry`] maps each module class to its emission and its reference implementation, which
//! live side by side in [`layers`]; the supported-class list, the "unsupported" error and the
//! support table in `docs/export.md` all come from it.

pub(crate) mod attrs;
pub mod foreign;
pub mod layers;
pub mod registry;

use std::collections::BTreeSet;

use crate::checkpoint::py::{BuildResult, ModuleRef};

/// What a layer receives (one value, or several: `Concat`, heads) and, for the layer list, what
/// a layer gives (one value, or a list: `CBLinear`'s split).
#[derive(Clone)]
pub enum LayerInput<X> {
    /// A single input.
    One(X),
    /// A list of inputs.
    Many(Vec<X>),
    /// Several inputs of which at least one is a list (`CBFuse` reads `CBLinear`'s lists and a
    /// feature map); only [`Net::forward`] makes it.
    Nested(Vec<LayerInput<X>>),
}

impl<X> LayerInput<X> {
    /// The single input, or an error naming the class that wanted one.
    pub fn one(self, what: &str) -> BuildResult<X> {
        match self {
            LayerInput::One(v) => Ok(v),
            LayerInput::Many(_) | LayerInput::Nested(_) => {
                Err(format!("{what} expects one input, got a list"))
            }
        }
    }

    /// The inputs as a list (a single input is a list of one; nested lists are flattened, as
    /// no class but `CBFuse` reads them and a misrouted list fails the reader's shape checks).
    pub fn many(self) -> Vec<X> {
        match self {
            LayerInput::One(v) => vec![v],
            LayerInput::Many(vs) => vs,
            LayerInput::Nested(xs) => xs.into_iter().flat_map(LayerInput::many).collect(),
        }
    }
}

/// A backend that can evaluate one layer: emit it into a graph, or run it.
pub trait Backend {
    /// What flows between layers (a graph value, a tensor).
    type Value: Clone;

    /// Evaluates the module `m`, found at `path` (`model.22`), on `x`: one value, or a list for
    /// the classes the registry declares as giving one ([`registry::Kind::Fork`]).
    fn layer(
        &mut self,
        path: &str,
        m: ModuleRef<'_>,
        x: LayerInput<Self::Value>,
    ) -> BuildResult<LayerInput<Self::Value>>;
}

/// A `*Model` module (`DetectionModel`, …): its layer list, walked as `_predict_once` walks it.
#[derive(Clone, Copy)]
pub struct Net<'g> {
    root: ModuleRef<'g>,
    layers: ModuleRef<'g>,
}

impl<'g> Net<'g> {
    /// Wraps a pickled model module; it must hold the layer list `model`.
    pub fn new(root: ModuleRef<'g>) -> BuildResult<Net<'g>> {
        Ok(Net {
            root,
            layers: root.child("model")?,
        })
    }

    /// The model module itself.
    pub fn root(&self) -> ModuleRef<'g> {
        self.root
    }

    /// The last layer (the head), if any.
    pub fn head(&self) -> Option<ModuleRef<'g>> {
        self.layers.children().pop().map(|(_, h)| h)
    }

    /// Every class below the layer list that the registry does not know.
    pub fn unsupported(&self) -> BTreeSet<String> {
        registry::unsupported(self.layers)
    }

    /// Fails with the registry's one-line error when any class below the layers is unknown.
    pub fn check_supported(&self) -> BuildResult<()> {
        registry::check(self.layers)
    }

    /// Runs every layer through `backend` on `input` and returns the last layer's output. An
    /// error from a layer is prefixed with its path and class (`model.22 (Detect): …`). A layer's
    /// output may be a list (`CBLinear`); a layer reading it alone gets the list, a layer reading
    /// it among others gets [`In::Nested`].
    pub fn forward<B: Backend>(&self, backend: &mut B, input: B::Value) -> BuildResult<B::Value> {
        let mut kept: Vec<LayerInput<B::Value>> = Vec::new();
        let mut x = LayerInput::One(input);
        for (name, layer) in self.layers.children() {
            let path = format!("model.{name}");
            let at = |m: String| format!("{path} ({}): {m}", layer.class());
            let f = layer.attr("f").ok_or_else(|| at("no `f`".into()))?;
            let pick = |j: i64, x: &LayerInput<B::Value>| -> BuildResult<LayerInput<B::Value>> {
                if j == -1 {
                    return Ok(x.clone());
                }
                let idx = if j < 0 { kept.len() as i64 + j } else { j };
                usize::try_from(idx)
                    .ok()
                    .and_then(|i| kept.get(i))
                    .cloned()
                    .ok_or_else(|| at(format!("reads layer {j}, which is not kept")))
            };
            if let Some(j) = f.as_int() {
                if j != -1 {
                    x = pick(j, &x)?;
                }
            } else {
                let js = layer.ints("f").ok_or_else(|| at("unreadable `f`".into()))?;
                let xs = js
                    .iter()
                    .map(|&j| pick(j, &x))
                    .collect::<BuildResult<Vec<_>>>()?;
                x = if xs.iter().all(|v| matches!(v, LayerInput::One(_))) {
                    LayerInput::Many(xs.into_iter().filter_map(|v| v.one("").ok()).collect())
                } else {
                    LayerInput::Nested(xs)
                };
            }
            let out = backend.layer(&path, layer, x).map_err(at)?;
            kept.push(out.clone());
            x = out;
        }
        x.one("model")
    }
}
