//! YOLOv10's blocks: `SCDown`, `RepVGGDW`, `CIB`, `C2fCIB` (its `PSA` is in `attention.rs`, its
//! `v10Detect` head in `heads/`).

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
        "SCDown",
        "spatial-channel downsampling: pointwise `Conv`, then a strided depthwise `Conv`",
        |b, s, m, x| b.scdown(s, m, &x.one("SCDown")?),
        |r, m, x| r.scdown(m, &x.one("SCDown")?),
    ),
    layer(
        "RepVGGDW",
        "7×7 and 3×3 depthwise `Conv`s summed, then SiLU (one 7×7 kernel once fused)",
        |b, s, m, x| b.repvggdw(s, m, &x.one("RepVGGDW")?),
        |r, m, x| r.repvggdw(m, &x.one("RepVGGDW")?),
    ),
    layer(
        "CIB",
        "compact inverted block: depthwise and pointwise `Conv`s, plus the input when `add`",
        |b, s, m, x| b.cib(s, m, &x.one("CIB")?),
        |r, m, x| r.cib(m, &x.one("CIB")?),
    ),
    layer(
        "C2fCIB",
        "`C2f` whose blocks are `CIB`s (YOLOv10)",
        |b, s, m, x| b.c2f(s, m, &x.one("C2fCIB")?),
        |r, m, x| r.c2f(m, &x.one("C2fCIB")?),
    ),
];

// ---- parse (shared) ----

/// `RepVGGDW`'s branches: `conv` (7×7), and `conv1` (3×3) unless `fuse()` already merged it
/// into `conv` (then a plain `Conv2d`).
fn repvggdw_branches(m: ModuleRef) -> BuildResult<(ModuleRef, Option<ModuleRef>)> {
    let conv = m.child("conv")?;
    let conv1 = m.opt_child("conv1");
    if conv1.is_none() && conv.class() != "Conv2d" {
        return Err(LayerError::shape(
            "RepVGGDW",
            format!(
                "without conv1 has a {} where fuse() leaves a Conv2d",
                conv.class()
            ),
        ));
    }
    Ok((conv, conv1))
}

// ---- emit ----

impl Builder<'_> {
    /// `SCDown`: cv2(cv1(x)).
    pub(crate) fn scdown(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        self.sub_conv(scope, m, "cv2", &a)
    }

    /// `RepVGGDW`: act(conv(x) + conv1(x)), each branch with its BatchNorm folded. `fuse()` sums
    /// the two folded kernels into one 7×7 kernel instead; the sum of the two convolutions is
    /// the same up to float rounding.
    pub(crate) fn repvggdw(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let (conv, conv1) = repvggdw_branches(m)?;
        let mut y = self.module(&format!("{scope}.conv"), conv, LayerInput::One(x.clone()))?;
        if let Some(conv1) = conv1 {
            let y1 = self.module(&format!("{scope}.conv1"), conv1, LayerInput::One(x.clone()))?;
            if y1.shape != y.shape {
                return Err(LayerError::shape(
                    scope,
                    format!("RepVGGDW branches give {:?} and {:?}", y.shape, y1.shape),
                ));
            }
            y = self.add(scope, &y, &y1);
        }
        self.act(scope, m.opt_child("act"), y)
    }

    /// `CIB`: its `cv1` sequence, plus x when `add`.
    pub(crate) fn cib(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = self.sub(scope, m, "cv1", x)?;
        if !m.bool("add")?.unwrap_or(false) {
            return Ok(y);
        }
        if y.shape != x.shape {
            return Err(LayerError::shape(
                scope,
                format!("CIB adds {:?} to its input {:?}", y.shape, x.shape),
            ));
        }
        Ok(self.add(scope, x, &y))
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn scdown(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        self.sub(m, "cv2", &a)
    }

    /// `RepVGGDW` as its unfused forward: both branches run, each with BatchNorm unfolded.
    pub(crate) fn repvggdw(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let (conv, conv1) = repvggdw_branches(m)?;
        let mut y = self.module(conv, LayerInput::One(x.clone()))?;
        if let Some(conv1) = conv1 {
            let y1 = self.module(conv1, LayerInput::One(x.clone()))?;
            shape::same_shape(&y, &y1, "RepVGGDW")?;
            y = ops::add(&y, &y1);
        }
        super::act::run(m.opt_child("act"), &mut y)?;
        Ok(y)
    }

    pub(crate) fn cib(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let y = self.module(m.child("cv1")?, LayerInput::One(x.clone()))?;
        if !m.bool("add")?.unwrap_or(false) {
            return Ok(y);
        }
        shape::same_shape(x, &y, "CIB")?;
        Ok(ops::add(x, &y))
    }
}
