//! The reference interpreter: runs an Ultralytics checkpoint's module tree directly from the
//! pickled modules — BatchNorm applied as BatchNorm, not folded; f32 — with Ultralytics' forward
//! semantics, written independently of the ONNX builder (they share only the weight reading), so
//! a mistake in one does not hide in the other. Each class's implementation lives beside its
//! emission in `src/models/layers/`; this module holds the interpreter, its kernels (`ops.rs`)
//! and its shape checks (`shape.rs`). The layer wiring is [`crate::models::Net`]'s.

pub mod nms;
pub mod ops;
pub mod selection;
pub mod seq;
pub(crate) mod shape;

use ops::RefTensor;

use crate::checkpoint::py::ModuleRef;
use crate::models::layers::heads::HeadOptions;
use crate::models::registry::{self, Kind};
use crate::models::{Backend, LayerInput, Net};

/// The reference layer's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefError {
    /// A layer of the model's layer list failed; the message names where and what:
    /// `model.22 (Detect): nc missing`.
    #[error("{path} ({class}): {source}")]
    Layer {
        /// The layer's path (`model.22`).
        path: String,
        /// Its class (`Detect`).
        class: String,
        /// What went wrong inside it.
        source: Box<RefError>,
    },
    /// A module's attributes, weights or input shapes are unusable (its parse or shape check
    /// says which), or its class is not one the interpreter runs.
    #[error("{0}")]
    Module(String),
    /// The model module itself: no layer list, or a layer's `f` that names no earlier output.
    #[error("{0}")]
    Model(String),
}

/// Result type of the reference interpreter.
pub type RefResult<X> = Result<X, RefError>;

type R<X> = RefResult<X>;

impl From<String> for RefError {
    fn from(m: String) -> RefError {
        RefError::Module(m)
    }
}

/// A reference error with message `m`.
pub(crate) fn e(m: impl Into<String>) -> RefError {
    RefError::Module(m.into())
}

/// The interpreter over one model module.
pub struct Reference<'g> {
    net: Net<'g>,
    /// Extra outputs (Segment's prototypes) produced by the current run.
    pub(crate) extra: Vec<RefTensor>,
    /// `SemanticSegment`'s resized logits (B, nc, H, W) from the current run, beside its class
    /// map: parity reads them to tell a near-tie from a wrong class.
    pub class_logits: Option<RefTensor>,
    /// Top-k selections inside the model (RT-DETR's queries) from the current run, one per
    /// batch item, each able to decode another choice; kept only when
    /// [`Reference::keeping_selections`] asked for them.
    pub selections: Vec<selection::QuerySelection>,
    /// Whether to keep [`Reference::selections`].
    pub(crate) keep_selections: bool,
    /// Round the input and every module's output to f16 (see [`Reference::emulating_f16`]).
    pub(crate) f16: bool,
    /// What the detection heads output (see [`Reference::with_head`]).
    pub(crate) head: HeadOptions,
    /// The error of the layer that failed in the current run, kept whole: the layer list's
    /// walk only carries its message.
    failed: Option<RefError>,
}

impl<'g> Reference<'g> {
    /// Wraps a pickled `*Model` module (it must hold the layer list `model`).
    pub fn new(root: ModuleRef<'g>) -> R<Reference<'g>> {
        Ok(Reference {
            net: Net::new(root).map_err(RefError::Model)?,
            extra: Vec::new(),
            class_logits: None,
            selections: Vec::new(),
            keep_selections: false,
            f16: false,
            head: HeadOptions::default(),
            failed: None,
        })
    }

    /// The same interpreter with the detection heads evaluated as `head` says (`--end2end`:
    /// the one-to-one branches, post-processed into top-k rows).
    pub fn with_head(mut self, head: HeadOptions) -> Reference<'g> {
        self.head = head;
        self
    }

    /// The same interpreter with f16 storage emulated: convolution weights and biases
    /// (BatchNorm folded in, as an exported graph holds them), the input and every module's output
    /// (each Conv, block, head level) are rounded to the nearest f16, as an f16 graph stores
    /// them. The difference from the exact run estimates, per output channel, how much f16
    /// rounding moves that channel through this graph (docs/parity.md).
    pub fn emulating_f16(mut self) -> Reference<'g> {
        self.f16 = true;
        self
    }

    /// The same interpreter keeping each run's in-model top-k selections with what decoding
    /// another choice needs (RT-DETR: the encoder's features of every anchor, about
    /// 2 · anchors · hidden_dim floats per image), so parity can tell a near-tie at the cut from a
    /// wrong model (docs/parity.md, "Query selection").
    pub fn keeping_selections(mut self) -> Reference<'g> {
        self.keep_selections = true;
        self
    }

    fn round(&self, mut t: RefTensor) -> RefTensor {
        if self.f16 {
            ops::map(&mut t, |v| half::f16::from_f32(v).to_f32());
        }
        t
    }

    /// Runs the model on `images` (N, 3, H, W) and returns its outputs in export form
    /// (`output0`, then `output1` for segmentation).
    pub fn run(&mut self, images: RefTensor) -> R<Vec<RefTensor>> {
        self.extra.clear();
        self.class_logits = None;
        self.selections.clear();
        let net = self.net;
        let images = self.round(images);
        self.failed = None;
        let out = net
            .forward(self, images)
            .map_err(|m| self.failed.take().unwrap_or(RefError::Model(m)))?;
        let mut outs = vec![out];
        for t in std::mem::take(&mut self.extra) {
            outs.push(self.round(t));
        }
        Ok(outs)
    }

    /// Whether the interpreter runs `class` wherever a module runs (a list-valued layer: in the
    /// layer list).
    pub fn handles(class: &str) -> bool {
        matches!(
            registry::find(class).map(|l| l.kind),
            Some(Kind::Layer { .. } | Kind::Fork { .. })
        )
    }

    /// Runs one module by its class.
    pub fn module(&mut self, m: ModuleRef, x: LayerInput<RefTensor>) -> R<RefTensor> {
        match registry::lookup(m).map(|l| l.kind) {
            Some(Kind::Layer { run, .. }) => {
                let y = run(self, m, x)?;
                Ok(self.round(y))
            }
            _ => Err(e(registry::unsupported_class(&m.class()))),
        }
    }

    /// Runs `m`'s child `name` on `x`.
    pub(crate) fn sub(&mut self, m: ModuleRef, name: &str, x: &RefTensor) -> R<RefTensor> {
        let c = m.child(name).map_err(e)?;
        // A `Conv` (most children) reads its input by reference: no copy of `x` to wrap it.
        if c.class() == "Conv" {
            let y = self.conv_bn_act(c, x)?;
            return Ok(self.round(y));
        }
        self.module(c, LayerInput::One(x.clone()))
    }
}

impl Backend for Reference<'_> {
    type Value = RefTensor;

    fn layer(
        &mut self,
        path: &str,
        m: ModuleRef<'_>,
        x: LayerInput<RefTensor>,
    ) -> Result<LayerInput<RefTensor>, String> {
        let out = match registry::lookup(m).map(|l| l.kind) {
            Some(Kind::Fork { run, .. }) => run(self, m, x)
                .map(|ts| LayerInput::Many(ts.into_iter().map(|t| self.round(t)).collect())),
            _ => self.module(m, x).map(LayerInput::One),
        };
        out.map_err(|source| {
            // The walk prefixes the message with the same path and class.
            let message = source.to_string();
            self.failed = Some(RefError::Layer {
                path: path.to_string(),
                class: m.class(),
                source: Box::new(source),
            });
            message
        })
    }
}
