//! ResNet backbones (`yolov8-cls-resnet50/101`): `ResNetLayer` (a stem, or a run of blocks) and
//! `ResNetBlock` (a 1×1 / 3×3 / 1×1 bottleneck plus a shortcut, then ReLU).

use crate::checkpoint::py::ModuleRef;
use crate::models::BuildResult;
use crate::models::LayerInput;
use crate::models::registry::{Layer, layer};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "ResNetLayer",
        "its `layer`: a 7×7 stem `Conv` and max pool, or a run of `ResNetBlock`s",
        |b, s, m, x| b.module(&format!("{s}.layer"), m.child("layer")?, x),
        |r, m, x| r.module(m.child("layer")?, x),
    ),
    layer(
        "ResNetBlock",
        "relu(cv3(cv2(cv1(x))) + shortcut(x))",
        |b, s, m, x| b.resnet_block(s, m, x.one("ResNetBlock")?),
        |r, m, x| r.resnet_block(m, &x.one("ResNetBlock")?),
    ),
];

// ---- emit ----

impl Builder<'_> {
    /// `ResNetBlock`: the three convs, plus the shortcut (a strided 1×1 `Conv` or `Identity`),
    /// then ReLU.
    pub(crate) fn resnet_block(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut y = LayerInput::One(x.clone());
        for name in ["cv1", "cv2", "cv3"] {
            y = LayerInput::One(self.module(&format!("{scope}.{name}"), m.child(name)?, y)?);
        }
        let y = y.one("ResNetBlock")?;
        let sum = self.plus_shortcut(scope, m, y, x)?;
        Ok(GraphValue {
            name: self.b.node(scope, "Relu", &[&sum.name], vec![]),
            shape: sum.shape,
        })
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn resnet_block(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let a = self.sub(m, "cv2", &a)?;
        let a = self.sub(m, "cv3", &a)?;
        let s = self.sub(m, "shortcut", x)?;
        shape::same_shape(&a, &s, "ResNetBlock")?;
        let mut y = ops::add(&a, &s);
        ops::map(&mut y, |v| v.max(0.0));
        Ok(y)
    }
}
