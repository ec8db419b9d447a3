//! What a pickled Ultralytics model is, independent of any backend.
//!
//! [`Net`] walks the layer list the way `BaseModel._predict_once` does (each layer's `f` says
//! where its input comes from; each output is kept until the last layer that reads it), once,
//! for both backends: the ONNX builder ([`crate::onnx::ultralytics::Builder`], the *emit* side)
//! and the reference interpreter ([`crate::reference::Reference`], the *run* side) only say what
//! one layer does.
//! [`registry`] maps each module class to its emission and its reference implementation, which
//! live side by side in [`layers`]; the supported-class list, the "unsupported" error and the
//! support table in `docs/export.md` all come from it.

pub(crate) mod attrs;
pub mod error;
pub mod foreign;
pub mod layers;
pub mod registry;

use std::collections::BTreeSet;

use crate::checkpoint::py::ModuleRef;
pub use error::{BuildResult, LayerError};

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
            LayerInput::Many(_) | LayerInput::Nested(_) => Err(LayerError::NotOne {
                class: what.to_string(),
            }),
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
    /// it among others gets [`LayerInput::Nested`].
    pub fn forward<B: Backend>(&self, backend: &mut B, input: B::Value) -> BuildResult<B::Value> {
        let layers = self.layers.children();
        let Some(final_layer) = layers.len().checked_sub(1) else {
            return Ok(input);
        };
        // The last layer that reads each value (index 0 the model input, k + 1 layer k's
        // output): a value is dropped once that layer has run, so the live set is the few
        // outputs the neck re-reads, not every layer's (the interpreter on yolo11x at 640: a
        // peak of ~820 MB before, 266 MB after).
        let mut last = vec![0usize; layers.len() + 1];
        for (i, (_, layer)) in layers.iter().enumerate() {
            for src in reads(*layer, i).unwrap_or_default().into_iter().flatten() {
                last[src] = last[src].max(i);
            }
        }
        let mut values: Vec<Option<LayerInput<B::Value>>> = vec![None; layers.len() + 1];
        values[0] = Some(LayerInput::One(input));
        for (i, (name, layer)) in layers.iter().enumerate() {
            let path = format!("model.{name}");
            let at = |source: LayerError| LayerError::At {
                path: path.clone(),
                class: layer.class(),
                source: Box::new(source),
            };
            let f = (layer.attr("f")).ok_or_else(|| at(LayerError::missing(layer.class(), "f")))?;
            let srcs = reads(*layer, i).map_err(at)?;
            let mut xs = Vec::with_capacity(srcs.len());
            for (r, src) in srcs.iter().enumerate() {
                let j = f_entry(*layer, r);
                let Some(src) = *src else {
                    return Err(at(LayerError::NotKept { from: j }));
                };
                // The last read of a value moves it out; earlier ones copy.
                let slot = &mut values[src];
                let v = if last[src] == i && !srcs[r + 1..].contains(&Some(src)) {
                    slot.take()
                } else {
                    slot.clone()
                };
                xs.push(v.ok_or_else(|| at(LayerError::NotKept { from: j }))?);
            }
            let x = if f.as_int().is_some() {
                xs.pop().ok_or_else(|| {
                    at(LayerError::NotKept {
                        from: f_entry(*layer, 0),
                    })
                })?
            } else if xs.iter().all(|v| matches!(v, LayerInput::One(_))) {
                LayerInput::Many(xs.into_iter().filter_map(|v| v.one("").ok()).collect())
            } else {
                LayerInput::Nested(xs)
            };
            let out = backend.layer(&path, *layer, x).map_err(at)?;
            if i == final_layer {
                return out.one("model");
            }
            if last[i + 1] > i {
                values[i + 1] = Some(out);
            }
        }
        Err(LayerError::NoOutput)
    }
}

/// The values layer `i` reads, in `f`'s order: `Some(0)` the model input, `Some(k + 1)` layer
/// k's output, `None` an index that names no earlier layer.
fn reads(layer: ModuleRef, i: usize) -> BuildResult<Vec<Option<usize>>> {
    let f = (layer.attr("f")).ok_or_else(|| LayerError::missing(layer.class(), "f"))?;
    let js = match f.as_int() {
        Some(j) => vec![j],
        None => layer.ints("f").ok_or_else(|| {
            LayerError::bad_attr(
                layer.class(),
                "f",
                f,
                "is neither an int nor a list of ints",
            )
        })?,
    };
    Ok(js
        .into_iter()
        .map(|j| {
            // `-1` is the previous value (the model input for the first layer).
            let k = if j < 0 { i as i64 + j } else { j };
            if j == -1 {
                Some(i)
            } else {
                usize::try_from(k).ok().filter(|&k| k < i).map(|k| k + 1)
            }
        })
        .collect())
}

/// Entry `r` of a layer's `f`, for messages.
fn f_entry(layer: ModuleRef, r: usize) -> i64 {
    let f = layer.attr("f");
    match f.as_ref().and_then(|f| f.as_int()) {
        Some(j) => j,
        None => layer
            .ints("f")
            .and_then(|js| js.get(r).copied())
            .unwrap_or(-1),
    }
}
