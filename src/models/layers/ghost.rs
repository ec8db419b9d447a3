//! Ghost blocks (YOLOv8-ghost): `GhostConv` (a conv whose cheap depthwise copy doubles its
//! channels), `GhostBottleneck` and `C3Ghost` (a `C3` of ghost bottlenecks).

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "GhostConv",
        "cv1, then cv1's output concatenated with its depthwise cv2",
        |b, s, m, x| b.ghost_conv(s, m, &x.one("GhostConv")?),
        |r, m, x| r.ghost_conv(m, &x.one("GhostConv")?),
    ),
    layer(
        "GhostBottleneck",
        "`conv` (ghost convs, a depthwise conv when strided) plus `shortcut`",
        |b, s, m, x| b.ghost_bottleneck(s, m, x.one("GhostBottleneck")?),
        |r, m, x| r.ghost_bottleneck(m, &x.one("GhostBottleneck")?),
    ),
    layer(
        "C3Ghost",
        "`C3` whose blocks are `GhostBottleneck`s",
        |b, s, m, x| b.c3(s, m, &x.one("C3Ghost")?),
        |r, m, x| r.c3(m, &x.one("C3Ghost")?),
    ),
];

// ---- emit ----

impl Builder<'_> {
    /// `GhostConv`: cat(cv1(x), cv2(cv1(x))).
    pub(crate) fn ghost_conv(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = self.sub_conv(scope, m, "cv1", x)?;
        let z = self.sub_conv(scope, m, "cv2", &y)?;
        if y.shape[2..] != z.shape[2..] {
            return Err(LayerError::shape(
                scope,
                format!(
                    "cv2 maps {:?} to {:?}, which cannot be concatenated",
                    y.shape, z.shape
                ),
            ));
        }
        self.cat(scope, &[y, z], 1)
    }

    /// `GhostBottleneck`: conv(x) + shortcut(x).
    pub(crate) fn ghost_bottleneck(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = self.sub(scope, m, "conv", &x)?;
        self.plus_shortcut(scope, m, y, x)
    }

    /// `y + m.shortcut(x)` (the shortcut an `Identity` or a projection), shapes checked; shared
    /// by the ghost and ResNet blocks.
    pub(crate) fn plus_shortcut(
        &mut self,
        scope: &str,
        m: ModuleRef,
        y: GraphValue,
        x: GraphValue,
    ) -> BuildResult<GraphValue> {
        let s = self.sub(scope, m, "shortcut", &x)?;
        if y.shape != s.shape {
            return Err(LayerError::shape(
                scope,
                format!("cannot add {:?} and {:?}", y.shape, s.shape),
            ));
        }
        Ok(self.add(scope, &y, &s))
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn ghost_conv(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let y = self.sub(m, "cv1", x)?;
        let z = self.sub(m, "cv2", &y)?;
        shape::same_maps(&[&y, &z], "GhostConv")?;
        Ok(ops::cat_channels(&[&y, &z]))
    }

    pub(crate) fn ghost_bottleneck(
        &mut self,
        m: ModuleRef,
        x: &RefTensor,
    ) -> BuildResult<RefTensor> {
        let y = self.sub(m, "conv", x)?;
        let s = self.module(m.child("shortcut")?, LayerInput::One(x.clone()))?;
        shape::same_shape(&y, &s, "GhostBottleneck")?;
        Ok(ops::add(&y, &s))
    }
}
