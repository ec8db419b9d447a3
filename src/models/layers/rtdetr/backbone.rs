//! RT-DETR's convolutional blocks: `HGStem`, `HGBlock`, `LightConv` (HGNetv2) and `RepC3`
//! (whose `RepConv`s are declared with YOLOv9's blocks, `elan.rs`).

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::layers::csp::residual;
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// `HGStem`'s pool must be the 2×2, stride-1 window the stem is built with: with stride 1 its
/// `ceil_mode=True` changes nothing.
fn stem_pool(p: ModuleRef) -> BuildResult<()> {
    let one = |k: &str, want: i64| p.ints(k).is_some_and(|v| v.iter().all(|&x| x == want));
    if one("kernel_size", 2) && one("stride", 1) && one("padding", 0) {
        Ok(())
    } else {
        Err(LayerError::shape(
            "HGStem",
            "pool is not a 2×2 stride-1 max pool",
        ))
    }
}

// ---- emit ----

impl Builder<'_> {
    /// Zero padding of one row at the bottom and one column at the right (`F.pad(x, [0,1,0,1])`).
    fn pad_br(&mut self, scope: &str, x: &GraphValue) -> BuildResult<GraphValue> {
        let [n, c, h, w] = check::nchw(x, scope)?;
        let pads = self
            .b
            .ints(&format!("{scope}/pads"), &[0, 0, 0, 0, 0, 0, 1, 1]);
        let y = self.b.node(scope, "Pad", &[&x.name, &pads], vec![]);
        Ok(GraphValue {
            name: y,
            shape: vec![n, c, h + 1, w + 1],
        })
    }

    /// `HGStem`.
    pub(crate) fn hgstem(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let conv = |b: &mut Self, name: &str, x: &GraphValue| {
            b.conv_block(&format!("{scope}.{name}"), m.child(name)?, x)
        };
        let x = conv(self, "stem1", x)?;
        let x = self.pad_br(scope, &x)?;
        let x2 = conv(self, "stem2a", &x)?;
        let x2 = self.pad_br(scope, &x2)?;
        let x2 = conv(self, "stem2b", &x2)?;
        stem_pool(m.child("pool")?)?;
        let [n, c, h, w] = check::nchw(&x, scope)?;
        let p = self.b.node(
            &format!("{scope}.pool"),
            "MaxPool",
            &[&x.name],
            vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![1, 1])),
            ],
        );
        let x1 = GraphValue {
            name: p,
            shape: vec![n, c, h - 1, w - 1],
        };
        let cat = self.cat(scope, &[x1, x2], 1)?;
        let x = conv(self, "stem3", &cat)?;
        conv(self, "stem4", &x)
    }

    /// `HGBlock`: every block's output kept, concatenated, squeezed and excited.
    pub(crate) fn hgblock(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut ys = vec![x.clone()];
        for (i, (_, b)) in m.child("m")?.children().into_iter().enumerate() {
            let last = ys.last().expect("input").clone();
            ys.push(self.module(&format!("{scope}.m.{i}"), b, LayerInput::One(last))?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        let y = self.sub_conv(scope, m, "sc", &cat)?;
        let y = self.sub_conv(scope, m, "ec", &y)?;
        self.residual(scope, m, x, y)
    }

    /// `LightConv`: conv1 then conv2.
    pub(crate) fn lightconv(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let y = self.sub_conv(scope, m, "conv1", x)?;
        self.sub_conv(scope, m, "conv2", &y)
    }

    /// `RepC3`: cv3(m(cv1(x)) + cv2(x)).
    pub(crate) fn repc3(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        let a = self.sub(scope, m, "m", &a)?;
        let b = self.sub_conv(scope, m, "cv2", x)?;
        if a.shape != b.shape {
            return Err(LayerError::shape(
                scope,
                format!("RepC3 branches {:?} and {:?}", a.shape, b.shape),
            ));
        }
        let s = self.add(scope, &a, &b);
        self.sub(scope, m, "cv3", &s)
    }
}

// ---- run ----

/// Zero padding of one row at the bottom and one column at the right.
fn pad_br(x: &RefTensor) -> BuildResult<RefTensor> {
    let (n, c, h, w) = shape::nchw(x, "HGStem")?;
    let mut out = vec![0.0f32; n * c * (h + 1) * (w + 1)];
    for p in 0..n * c {
        for y in 0..h {
            let src = &x.data[(p * h + y) * w..(p * h + y + 1) * w];
            let d0 = (p * (h + 1) + y) * (w + 1);
            out[d0..d0 + w].copy_from_slice(src);
        }
    }
    Ok(RefTensor::new(out, vec![n, c, h + 1, w + 1]))
}

impl Reference<'_> {
    pub(crate) fn hgstem(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let x = self.sub(m, "stem1", x)?;
        let x = pad_br(&x)?;
        let x2 = self.sub(m, "stem2a", &x)?;
        let x2 = self.sub(m, "stem2b", &pad_br(&x2)?)?;
        stem_pool(m.child("pool")?)?;
        shape::pool(&x, 2, 1, 0, "HGStem pool")?;
        let x1 = ops::max_pool(&x, 2, 1, 0);
        shape::same_maps(&[&x1, &x2], "HGStem")?;
        let x = self.sub(m, "stem3", &ops::cat_channels(&[&x1, &x2]))?;
        self.sub(m, "stem4", &x)
    }

    pub(crate) fn hgblock(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let mut ys = vec![x.clone()];
        for (_, b) in m.child("m")?.children() {
            let last = ys.last().expect("input").clone();
            ys.push(self.module(b, LayerInput::One(last))?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "HGBlock")?;
        let y = self.sub(m, "sc", &ops::cat_channels(&refs))?;
        let y = self.sub(m, "ec", &y)?;
        residual(m, x, y, "HGBlock")
    }

    pub(crate) fn lightconv(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let y = self.sub(m, "conv1", x)?;
        self.sub(m, "conv2", &y)
    }

    pub(crate) fn repc3(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let a = self.sub(m, "m", &a)?;
        let b = self.sub(m, "cv2", x)?;
        shape::same_shape(&a, &b, "RepC3")?;
        self.sub(m, "cv3", &ops::add(&a, &b))
    }
}
