//! The reference interpreter: runs an Ultralytics checkpoint's module tree directly from the
//! pickled modules — BatchNorm applied as BatchNorm, not folded; f32 — with Ultralytics' forward
//! semantics, written independently of the ONNX builder (they share only the weight reading), so
//! a mistake in one does not hide in the other. Each class's implementation lives beside its
//! emission in `src/models/layers/`; this module holds the interpreter, its kernels (`ops.rs`)
//! and its shape checks (`shape.rs`). The layer wiring is [`crate::models::Net`]'s.

mod conv;
mod maps;
pub mod nms;
pub mod ops;
pub(crate) mod pages;
pub mod selection;
pub mod seq;
pub(crate) mod shape;
pub(crate) mod vmath;
mod winograd;

use std::borrow::Cow;

use ops::RefTensor;

use crate::checkpoint::py::ModuleRef;
use crate::models::layers::heads::HeadOptions;
use crate::models::registry::{self, Kind};
use crate::models::{Backend, BuildResult, LayerError, LayerInput, Net};

/// The reference interpreter's error: the model's layers cannot be run (the layer error names
/// the layer's path and class, `model.22 (Detect): nc missing`, and keeps its cause as source).
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The model module or one of its layers cannot be run.
    #[error(transparent)]
    Model(#[from] LayerError),
}

/// Result type of the reference interpreter.
pub type RefResult<X> = Result<X, RefError>;

/// Result type of the interpreter's layers and checks (the layers' own error).
pub(crate) type R<X> = BuildResult<X>;

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
}

impl<'g> Reference<'g> {
    /// Wraps a pickled `*Model` module (it must hold the layer list `model`).
    pub fn new(root: ModuleRef<'g>) -> RefResult<Reference<'g>> {
        Ok(Reference {
            net: Net::new(root)?,
            extra: Vec::new(),
            class_logits: None,
            selections: Vec::new(),
            keep_selections: false,
            f16: false,
            head: HeadOptions::default(),
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
    pub fn run(&mut self, images: RefTensor) -> RefResult<Vec<RefTensor>> {
        self.extra.clear();
        self.class_logits = None;
        self.selections.clear();
        let net = self.net;
        let images = self.round(images);
        let out = net.forward(self, images)?;
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
            _ => Err(registry::unsupported_class(&m.class())),
        }
    }

    /// Runs `m`'s child `name` on `x`.
    pub(crate) fn sub(&mut self, m: ModuleRef, name: &str, x: &RefTensor) -> R<RefTensor> {
        let c = m.child(name)?;
        self.child(c, Cow::Borrowed(x))
    }

    /// [`Reference::sub`] on a value the caller no longer needs: a child that is not a `Conv`
    /// gets it as it is, not a copy.
    pub(crate) fn sub_owned(&mut self, m: ModuleRef, name: &str, x: RefTensor) -> R<RefTensor> {
        let c = m.child(name)?;
        self.child(c, Cow::Owned(x))
    }

    /// Runs child module `c` on `x`. A `Conv` (most children) reads its input by reference;
    /// any other takes it by value, a copy only where `x` is borrowed.
    fn child(&mut self, c: ModuleRef, x: Cow<'_, RefTensor>) -> R<RefTensor> {
        if c.class() == "Conv" {
            let y = self.conv_bn_act(c, &x)?;
            return Ok(self.round(y));
        }
        self.module(c, LayerInput::One(x.into_owned()))
    }
}

impl Backend for Reference<'_> {
    type Value = RefTensor;

    fn layer(
        &mut self,
        _path: &str,
        m: ModuleRef<'_>,
        x: LayerInput<RefTensor>,
    ) -> BuildResult<LayerInput<RefTensor>> {
        match registry::lookup(m).map(|l| l.kind) {
            Some(Kind::Fork { run, .. }) => run(self, m, x)
                .map(|ts| LayerInput::Many(ts.into_iter().map(|t| self.round(t)).collect())),
            _ => self.module(m, x).map(LayerInput::One),
        }
    }
}
