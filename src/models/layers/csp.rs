//! CSP blocks: `Bottleneck`, `C2`, `C2f` / `C3k2`, `C3` / `C3k` / `C3Ghost` / `RepCSP`, and the
//! spatial pyramid pools `SPP`, `SPPF`.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "Bottleneck",
        "two `Conv`s, plus the input when `add`",
        |b, s, m, x| b.bottleneck(s, m, &x.one("Bottleneck")?),
        |r, m, x| r.bottleneck(m, &x.one("Bottleneck")?),
    ),
    layer(
        "C2",
        "halves of cv1, bottlenecks on the first, concatenation, cv2 (YOLOv8-p6)",
        |b, s, m, x| b.c2(s, m, &x.one("C2")?),
        |r, m, x| r.c2(m, &x.one("C2")?),
    ),
    layer(
        "C2f",
        "split, chained bottlenecks, concatenation (YOLOv8)",
        |b, s, m, x| b.c2f(s, m, &x.one("C2f")?),
        |r, m, x| r.c2f(m, &x.one("C2f")?),
    ),
    layer(
        "C3k2",
        "`C2f` whose blocks may be `C3k` (YOLO11)",
        |b, s, m, x| b.c2f(s, m, &x.one("C3k2")?),
        |r, m, x| r.c2f(m, &x.one("C3k2")?),
    ),
    layer(
        "C3",
        "CSP bottleneck with three convolutions (YOLOv5u)",
        |b, s, m, x| b.c3(s, m, &x.one("C3")?),
        |r, m, x| r.c3(m, &x.one("C3")?),
    ),
    layer(
        "C3k",
        "`C3` with a custom kernel size (YOLO11)",
        |b, s, m, x| b.c3(s, m, &x.one("C3k")?),
        |r, m, x| r.c3(m, &x.one("C3k")?),
    ),
    layer(
        "SPP",
        "cv1, parallel max pools of several sizes, concatenation, cv2 (YOLOv3-SPP)",
        |b, s, m, x| b.spp(s, m, &x.one("SPP")?),
        |r, m, x| r.spp(m, &x.one("SPP")?),
    ),
    layer(
        "SPPF",
        "`n` chained max pools, concatenated",
        |b, s, m, x| b.sppf(s, m, &x.one("SPPF")?),
        |r, m, x| r.sppf(m, &x.one("SPPF")?),
    ),
];

// ---- emit ----

impl Builder<'_> {
    /// `Bottleneck` / `RepBottleneck`: cv2(cv1(x)), plus x when `add` (cv1 a `Conv` or a
    /// `RepConv`).
    pub(crate) fn bottleneck(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub(scope, m, "cv1", x)?;
        let y = self.sub(scope, m, "cv2", &a)?;
        self.residual(scope, m, x, y)
    }

    /// `y`, plus the block's input `x` when its `add` flag is set (`x + y if self.add else y`).
    pub(crate) fn residual(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
        y: GraphValue,
    ) -> BuildResult<GraphValue> {
        Ok(if m.bool("add")?.unwrap_or(false) {
            self.add(scope, x, &y)
        } else {
            y
        })
    }

    /// cv1 of `m` on `x`, split into two halves of `self.c` channels (`chunk(2, 1)` /
    /// `split((c, c), 1)`); `what` names the block in the error.
    pub(crate) fn cv1_halves(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
        what: &str,
    ) -> BuildResult<[GraphValue; 2]> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        let [an, ac, ah, aw] = check::nchw(&a, scope)?;
        let c = m.int("c").unwrap_or(ac / 2);
        if c <= 0 || 2 * c != ac {
            return Err(LayerError::shape(
                what,
                format!("splits {ac} channels into two halves of {c}"),
            ));
        }
        let parts = self.b.split(scope, &a.name, 1, &[c, c]);
        let parts = <[String; 2]>::try_from(parts).map_err(|p| {
            LayerError::shape(scope, format!("a split in two gave {} parts", p.len()))
        })?;
        Ok(parts.map(|name| GraphValue {
            name,
            shape: vec![an, c, ah, aw],
        }))
    }

    /// `C2`: cv1's output in two halves, the bottlenecks on the first, concatenated with the
    /// second, cv2.
    pub(crate) fn c2(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let [first, second] = self.cv1_halves(scope, m, x, &format!("{scope}: C2"))?;
        let y = self.sub(scope, m, "m", &first)?;
        let cat = self.cat(scope, &[y, second], 1)?;
        self.sub_conv(scope, m, "cv2", &cat)
    }

    /// `SPP`: cv1, then each max pool of `m` on cv1's output, all concatenated, cv2.
    pub(crate) fn spp(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        let mut ys = vec![a.clone()];
        for (i, (_, pool)) in m.child("m")?.children().into_iter().enumerate() {
            ys.push(self.module(&format!("{scope}.m.{i}"), pool, LayerInput::One(a.clone()))?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.sub_conv(scope, m, "cv2", &cat)
    }

    /// `C2f` / `C3k2`: halves of cv1, chained blocks on the second, concatenation, cv2.
    pub(crate) fn c2f(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut ys = self
            .cv1_halves(scope, m, x, &format!("{scope}: C2f"))?
            .to_vec();
        for (i, (_, b)) in m.child("m")?.children().into_iter().enumerate() {
            let last = ys.last().expect("two halves").clone();
            ys.push(self.module(&format!("{scope}.m.{i}"), b, LayerInput::One(last))?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.sub_conv(scope, m, "cv2", &cat)
    }

    /// `C3` / `C3k`: cv3(cat(m(cv1(x)), cv2(x))).
    pub(crate) fn c3(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut a = self.sub_conv(scope, m, "cv1", x)?;
        for (i, (_, b)) in m.child("m")?.children().into_iter().enumerate() {
            a = self.module(&format!("{scope}.m.{i}"), b, LayerInput::One(a))?;
        }
        let b = self.sub_conv(scope, m, "cv2", x)?;
        let cat = self.cat(scope, &[a, b], 1)?;
        self.sub_conv(scope, m, "cv3", &cat)
    }

    /// `SPPF`: cv1, `n` chained max pools, concatenation, cv2, plus x when `add`.
    pub(crate) fn sppf(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut ys = vec![self.sub_conv(scope, m, "cv1", x)?];
        let pool = m.child("m")?;
        for _ in 0..m.int("n").unwrap_or(3) {
            let last = ys.last().expect("cv1 output").clone();
            ys.push(self.maxpool(&format!("{scope}.m"), pool, &last)?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        let y = self.sub_conv(scope, m, "cv2", &cat)?;
        self.residual(scope, m, x, y)
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn bottleneck(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let y = self.sub(m, "cv2", &a)?;
        residual(m, x, y, "Bottleneck")
    }

    pub(crate) fn c2(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let ac = shape::nchw(&a, "C2")?.1;
        if ac % 2 != 0 {
            return Err(LayerError::shape(
                "C2",
                format!("cannot halve {ac} channels"),
            ));
        }
        let c = ac / 2;
        shape::channels(&a, c, 2 * c, "C2")?;
        let y = self.sub_owned(m, "m", ops::channels(&a, 0, c))?;
        let b = ops::channels(&a, c, 2 * c);
        shape::same_maps(&[&y, &b], "C2")?;
        self.sub(m, "cv2", &ops::cat_channels(&[&y, &b]))
    }

    pub(crate) fn spp(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let mut ys = vec![a.clone()];
        for (_, pool) in m.child("m")?.children() {
            ys.push(self.module(pool, LayerInput::One(a.clone()))?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "SPP")?;
        self.sub(m, "cv2", &ops::cat_channels(&refs))
    }

    pub(crate) fn c2f(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let c = shape::nchw(&a, "C2f")?.1 / 2;
        shape::channels(&a, c, 2 * c, "C2f")?;
        if a.shape[0] == 1 {
            return self.c2f_one(m, a, c);
        }
        let mut ys = vec![ops::channels(&a, 0, c), ops::channels(&a, c, 2 * c)];
        for (_, b) in m.child("m")?.children() {
            let last = ys.last().expect("halves").clone();
            ys.push(self.module(b, LayerInput::One(last))?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "C2f")?;
        let cat = ops::cat_channels(&refs);
        self.sub(m, "cv2", &cat)
    }

    /// [`Reference::c2f`] on one image (`a`, cv1's output of `2·c` channels), whose
    /// concatenation is its parts one after the other: it starts as a copy of `a` in a buffer
    /// with room for every block's output, each block's output is appended as it comes, then
    /// handed on to the next block, so no half, input or output is copied but into the
    /// concatenation. (Growing `a`'s own buffer instead saved that one copy but not the ~9 000
    /// page faults of moving and extending it on yolo11x; the new buffer takes huge pages, see
    /// `reference/pages.rs`.) Shapes are judged as the general path does: after every block has
    /// run.
    fn c2f_one(&mut self, m: ModuleRef, a: RefTensor, c: usize) -> BuildResult<RefTensor> {
        let (h, w) = (a.shape[2], a.shape[3]);
        let first = [1, c, h, w];
        let mut next = ops::channels(&a, c, 2 * c);
        let blocks = m.child("m")?.children();
        let mut cat = crate::reference::pages::with_capacity((2 + blocks.len()) * c * h * w);
        cat.extend_from_slice(&a.data);
        drop(a);
        let (mut channels, mut misfit) = (2 * c, None);
        for (_, b) in blocks {
            let y = self.module(b, LayerInput::One(next))?;
            match shape::nchw(&y, "C2f") {
                Ok((1, yc, yh, yw)) if (yh, yw) == (h, w) => {
                    if misfit.is_none() {
                        cat.extend_from_slice(&y.data);
                        channels += yc;
                    }
                }
                Ok(_) => {
                    misfit.get_or_insert_with(|| {
                        LayerError::shape(
                            "C2f",
                            format!("cannot concatenate {first:?} with {:?}", y.shape),
                        )
                    });
                }
                Err(e) => {
                    misfit.get_or_insert(e);
                }
            }
            next = y;
        }
        if let Some(e) = misfit {
            return Err(e);
        }
        self.sub(m, "cv2", &RefTensor::new(cat, vec![1, channels, h, w]))
    }

    pub(crate) fn c3(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let a = self.sub_owned(m, "m", a)?;
        let b = self.sub(m, "cv2", x)?;
        shape::same_maps(&[&a, &b], "C3")?;
        let cat = ops::cat_channels(&[&a, &b]);
        self.sub(m, "cv3", &cat)
    }

    pub(crate) fn sppf(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for _ in 0..m.int("n").unwrap_or(3) {
            let y = self.sub(m, "m", ys.last().expect("cv1"))?;
            ys.push(y);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "SPPF")?;
        let cat = ops::cat_channels(&refs);
        let y = self.sub(m, "cv2", &cat)?;
        residual(m, x, y, "SPPF")
    }
}

/// `y`, plus the block's input `x` when its `add` flag is set; `what` names the block in a shape
/// error.
pub(crate) fn residual(
    m: ModuleRef,
    x: &RefTensor,
    y: RefTensor,
    what: &str,
) -> BuildResult<RefTensor> {
    let mut y = y;
    if m.bool("add")?.unwrap_or(false) {
        shape::same_shape(x, &y, what)?;
        // Into `y`'s own buffer, which nothing else holds: no new map.
        ops::add_to(&mut y, x);
    }
    Ok(y)
}
