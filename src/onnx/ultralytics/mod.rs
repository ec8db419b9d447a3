//! The emit side for Ultralytics models. [`Builder`] holds the graph under construction and
//! hands each module to its class's emission in the registry (`src/models/`); the layer wiring
//! is [`crate::models::Net`]'s. `check.rs` holds the checks the emissions share.

pub(crate) mod check;

use crate::checkpoint::py::ModuleRef;
use crate::models::layers::heads::HeadOptions;
use crate::models::registry::{self, Kind};
use crate::models::{Backend, BuildResult, LayerInput, Net};

use super::graph::{GraphBuilder, GraphValue};
use super::proto::ElemType;

/// Emits modules into a graph.
pub struct Builder<'g> {
    /// The graph under construction.
    pub b: GraphBuilder,
    /// Outputs beyond the model's main one (`Segment`'s prototypes), in order.
    pub extra_outputs: Vec<GraphValue>,
    /// Values whose element type is not the compute type (`SemanticSegment`'s class map), by
    /// name: an output named here keeps its type (no Cast back to float32 in half mode).
    pub integer_values: Vec<(String, ElemType)>,
    /// What the detection heads output (one-to-many, or end-to-end rows).
    pub head: HeadOptions,
    /// The default-domain opset being written (operators whose attributes changed between
    /// opsets, such as `GridSample`'s mode, read it).
    pub opset: i64,
    /// The BatchNorm fold's operation order (the checkpoint's Ultralytics release).
    pub bn_fold: crate::models::layers::conv::BnFold,
    _g: std::marker::PhantomData<&'g ()>,
}

impl<'g> Builder<'g> {
    /// A builder writing into `b`.
    pub fn new(b: GraphBuilder) -> Builder<'g> {
        Builder {
            b,
            extra_outputs: Vec::new(),
            integer_values: Vec::new(),
            head: HeadOptions::default(),
            opset: 17,
            bn_fold: Default::default(),
            _g: std::marker::PhantomData,
        }
    }

    /// The element type of the value `name` when it is not the compute type.
    pub fn integer_elem(&self, name: &str) -> Option<ElemType> {
        (self.integer_values.iter())
            .find(|(n, _)| n == name)
            .map(|(_, e)| *e)
    }

    /// Whether the builder emits `class` wherever a module runs (a list-valued layer: in the
    /// layer list).
    pub fn handles(class: &str) -> bool {
        matches!(
            registry::find(class).map(|l| l.kind),
            Some(Kind::Layer { .. } | Kind::Fork { .. })
        )
    }

    /// Emits one module by its class, at `scope` (`model.2.m.0`).
    pub fn module(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: LayerInput<GraphValue>,
    ) -> BuildResult<GraphValue> {
        match registry::lookup(m).map(|l| l.kind) {
            Some(Kind::Layer { emit, .. }) => emit(self, scope, m, x),
            _ => Err(registry::unsupported_class(&m.class())),
        }
    }

    /// `m`'s child `name` on `x` through the registry, in scope `{scope}.{name}` (`self.name(x)`
    /// in a block's `forward`).
    pub(crate) fn sub(
        &mut self,
        scope: &str,
        m: ModuleRef,
        name: &str,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let child = m.child(name)?;
        self.module(
            &format!("{scope}.{name}"),
            child,
            LayerInput::One(x.clone()),
        )
    }

    /// `m`'s child `name`, a `Conv` (convolution, BatchNorm folded, activation), on `x`, in
    /// scope `{scope}.{name}`.
    pub(crate) fn sub_conv(
        &mut self,
        scope: &str,
        m: ModuleRef,
        name: &str,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let child = m.child(name)?;
        self.conv_block(&format!("{scope}.{name}"), child, x)
    }
}

impl Backend for Builder<'_> {
    type Value = GraphValue;

    fn layer(
        &mut self,
        path: &str,
        m: ModuleRef<'_>,
        x: LayerInput<GraphValue>,
    ) -> BuildResult<LayerInput<GraphValue>> {
        match registry::lookup(m).map(|l| l.kind) {
            Some(Kind::Fork { emit, .. }) => emit(self, path, m, x).map(LayerInput::Many),
            _ => self.module(path, m, x).map(LayerInput::One),
        }
    }
}

/// Emits the layers of a `DetectionModel`-like module on `input` and returns the last layer's
/// output.
pub fn forward(bld: &mut Builder, root: ModuleRef, input: GraphValue) -> BuildResult<GraphValue> {
    Net::new(root)?.forward(bld, input)
}
