//! The classic YOLO repositories' own classes: YOLOv5's anchor-based `Detect` (ultralytics/yolov5,
//! `models.yolo.Detect`, which shares its short name with Ultralytics' anchor-free head and is
//! therefore registered by its pickled path), YOLOv7's `IDetect` / `IAuxDetect` with their
//! `ImplicitA` / `ImplicitM`, and YOLOv7's pooling wrappers `MP` and `SP` (its other blocks are in
//! `classic_v7.rs`). Their `Conv`, `C3`, `Bottleneck`,
//! `SPPF` and `Concat` compute what Ultralytics' classes of the same names compute and use
//! those entries.
//!
//! Both heads give what their repositories' export.py writes: per level a 1×1 convolution,
//! sigmoid, boxes decoded with the cell grid and the anchors (xy = (2·σ + grid − ½)·stride,
//! wh = (2·σ)²·anchor), rows concatenated into (B, anchors·cells over the levels, 5 + nc).

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::layers::conv::Conv2dParams;
use crate::models::registry::{EmitFn, Layer, RunFn, head, layer, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The anchor-based heads' emission and reference, one pair for the three classes.
const ANCHOR_HEAD: (EmitFn, RunFn) = (
    |b, s, m, x| b.anchor_head(s, m, &x.many()),
    |r, m, x| anchor_head(r, m, x.many()),
);

/// `MP` and `SP`: their child `m` (a max pool) on the input.
const POOL_WRAPPER: (EmitFn, RunFn) = (
    |b, s, m, x| b.module(&format!("{s}.m"), m.child("m")?, x),
    |r, m, x| r.sub(m, "m", &x.one(&m.class())?),
);

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    head(
        "models.yolo.Detect",
        "detect",
        "YOLOv5's anchor-based head (matched by its pickled path): 1×1 conv per level, sigmoid, grid and anchor decode: (B, anchors, 5 + nc) as its export.py writes",
        ANCHOR_HEAD.0,
        ANCHOR_HEAD.1,
    ),
    head(
        "IDetect",
        "detect",
        "YOLOv7's anchor-based head: `ImplicitA` added before and `ImplicitM` multiplied after each 1×1 conv (folded as its fuse() does), decoded as its export.py --grid writes: (B, anchors, 5 + nc)",
        ANCHOR_HEAD.0,
        ANCHOR_HEAD.1,
    ),
    head(
        "IAuxDetect",
        "detect",
        "YOLOv7's P6 head with auxiliary training branches: `IDetect` on the first `nl` inputs; the auxiliary convolutions (`m2`) serve training only and are not evaluated",
        ANCHOR_HEAD.0,
        ANCHOR_HEAD.1,
    ),
    part(
        "ImplicitA",
        "IDetect, IAuxDetect",
        "a learned per-channel offset added to a head level's input",
    ),
    part(
        "ImplicitM",
        "IDetect, IAuxDetect",
        "a learned per-channel scale applied to a head level's output",
    ),
    layer(
        "MP",
        "YOLOv7's stride-k max pool (its child `m`)",
        POOL_WRAPPER.0,
        POOL_WRAPPER.1,
    ),
    layer(
        "SP",
        "YOLOv7's size-preserving max pool (its child `m`)",
        POOL_WRAPPER.0,
        POOL_WRAPPER.1,
    ),
];

/// An anchor-based head's attributes, read and checked once for both backends.
struct AnchorHead<'g> {
    /// Outputs per anchor: 5 + nc.
    no: usize,
    /// Anchors per cell.
    na: usize,
    /// Per level: its 1×1 convolution.
    convs: Vec<ModuleRef<'g>>,
    /// Per level: the stride in input pixels.
    strides: Vec<f32>,
    /// Per level and anchor: the anchor's width and height in input pixels.
    anchors: Vec<Vec<[f32; 2]>>,
    /// YOLOv7's implicit knowledge, per level: the `ImplicitA` offsets (one per input channel)
    /// and the `ImplicitM` scales (one per output channel).
    implicit: Option<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl<'g> AnchorHead<'g> {
    fn parse(m: ModuleRef<'g>, levels: usize) -> BuildResult<AnchorHead<'g>> {
        let class = m.class();
        let get = |k: &str| {
            m.int(k)
                .filter(|v| (0..=1 << 16).contains(v))
                .map(|v| v as usize)
                .ok_or_else(|| {
                    LayerError::bad_attr(&class, k, m.int(k), "is missing or not in 0..=65536")
                })
        };
        let (nc, no, na, nl) = (get("nc")?, get("no")?, get("na")?, get("nl")?);
        // IAuxDetect reads its auxiliary levels after the `nl` it decodes.
        let inputs = if class == "IAuxDetect" { 2 * nl } else { nl };
        if no != nc + 5 || na == 0 || nl == 0 || inputs != levels {
            return Err(LayerError::shape(
                &class,
                format!(
                    "no = {no}, nc = {nc}, na = {na}, nl = {nl} for {levels} inputs (expected no = nc + 5, na ≥ 1, nl ≥ 1, {inputs} inputs)"
                ),
            ));
        }
        let convs: Vec<ModuleRef> = m.child("m")?.children().into_iter().map(|c| c.1).collect();
        let strides: Vec<f32> = m
            .attr_tensor_f64("stride")?
            .ok_or_else(|| LayerError::missing(&class, "stride"))?
            .into_iter()
            .map(|s| s as f32)
            .collect();
        if convs.len() != nl
            || strides.len() != nl
            || strides.iter().any(|s| !s.is_finite() || *s <= 0.0)
        {
            return Err(LayerError::shape(
                &class,
                format!(
                    "{} convolutions and strides {strides:?} for {nl} levels",
                    convs.len()
                ),
            ));
        }
        // YOLOv7 keeps the pixel anchors as the buffer `anchor_grid` (nl, 1, na, 1, 1, 2);
        // YOLOv5 computes them as `anchors` (nl, na, 2, in strides) times the stride.
        let implicit_head = matches!(class.as_str(), "IDetect" | "IAuxDetect");
        let (px, shape) = if implicit_head {
            m.need_f32("anchor_grid")?
        } else {
            let (a, shape) = m.need_f32("anchors")?;
            let px = (a.iter().enumerate())
                .map(|(j, v)| v * strides[(j / (2 * na)).min(nl - 1)])
                .collect();
            (px, shape)
        };
        if px.len() != nl * na * 2 {
            return Err(LayerError::weight(
                &class,
                "anchors",
                format!("has shape {shape:?} for {nl} levels of {na}"),
            ));
        }
        let anchors = (0..nl)
            .map(|l| {
                (0..na)
                    .map(|a| [px[(l * na + a) * 2], px[(l * na + a) * 2 + 1]])
                    .collect()
            })
            .collect();
        let implicit = if implicit_head {
            let list = |name: &str| -> BuildResult<Vec<Vec<f32>>> {
                let ms = m.child(name)?.children();
                if ms.len() != nl {
                    return Err(LayerError::shape(
                        &class,
                        format!("{name} has {} entries for {nl} levels", ms.len()),
                    ));
                }
                ms.into_iter()
                    .map(|(_, c)| Ok(c.need_f32("implicit")?.0))
                    .collect()
            };
            Some(list("ia")?.into_iter().zip(list("im")?).collect())
        } else {
            None
        };
        Ok(AnchorHead {
            no,
            na,
            convs,
            strides,
            anchors,
            implicit,
        })
    }

    /// Level `i`'s convolution with the implicit knowledge folded in, as YOLOv7's
    /// `IDetect.fuse` folds it: bias += W·ia, then bias and W scaled by im.
    fn conv(&self, i: usize) -> BuildResult<Conv2dParams> {
        let mut p = Conv2dParams::parse(self.convs[i])?;
        let [o, c, kh, kw] = p.shape.map(|d| d as usize);
        if o != self.na * self.no || p.groups != 1 {
            return Err(LayerError::shape(
                format!("level {i}"),
                format!(
                    "the convolution gives {o} channels in {} groups for {} anchors of {}",
                    p.groups, self.na, self.no
                ),
            ));
        }
        if let Some(imp) = &self.implicit {
            let (ia, im) = &imp[i];
            if kh * kw != 1 || ia.len() != c || im.len() != o {
                return Err(LayerError::shape(
                    format!("level {i}"),
                    format!(
                        "implicit sizes {} and {} for a {kh}×{kw} convolution {c} → {o}",
                        ia.len(),
                        im.len()
                    ),
                ));
            }
            // Folding the offset into the bias is exact only where every output reads an input
            // pixel: padding would add W·ia at the border, where the zeros were never offset.
            if p.pad != [0, 0] {
                return Err(LayerError::unsupported(
                    format!("level {i}"),
                    format!(
                        "a 1×1 convolution padded {:?} (ImplicitA cannot be folded into its bias)",
                        p.pad
                    ),
                ));
            }
            let mut b = p.bias.take().unwrap_or_else(|| vec![0.0; o]);
            for (j, bj) in b.iter_mut().enumerate() {
                let w = &p.weight[j * c..(j + 1) * c];
                *bj += w.iter().zip(ia).map(|(w, a)| w * a).sum::<f32>();
                *bj *= im[j];
            }
            for (j, s) in im.iter().enumerate() {
                p.weight[j * c..(j + 1) * c]
                    .iter_mut()
                    .for_each(|w| *w *= s);
            }
            p.bias = Some(b);
        }
        Ok(p)
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `models.yolo.Detect` / `IDetect` in export form: (B, Σ na·h·w, 5 + nc). Each level runs
    /// as (B, na, h·w, no), the row order of PyTorch's (B, na, h, w, no); the cell grid is a
    /// constant for a static size and computed from the feature map's shape with `--dynamic`.
    pub(crate) fn anchor_head(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        let h = AnchorHead::parse(m, xs.len())?;
        let xs = &xs[..h.convs.len()];
        let (na, no) = (h.na as i64, h.no as i64);
        let mut levels = Vec::new();
        let (mut batch, mut rows) = (0, 0);
        for (i, x) in xs.iter().enumerate() {
            let s = format!("{scope}.m.{i}");
            let y = self.conv_node(&s, h.conv(i)?, x)?;
            // The grid follows the convolution's output (a 1×1 conv keeps the size; a hand-made
            // one with a stride would not).
            let [b, _, ny, nx] = check::nchw(&y, scope)?;
            let dynamic = self.b.dynamic_hw;
            if !dynamic && (!(1..=1 << 14).contains(&ny) || !(1..=1 << 14).contains(&nx)) {
                return Err(LayerError::shape(
                    scope,
                    format!("level {i} feature map is {ny}x{nx}"),
                ));
            }
            batch = b;
            let grid = if dynamic {
                self.cell_grid(&s, &y.name)
            } else {
                let grid: Vec<f32> = (0..ny * nx)
                    .flat_map(|k| [(k % nx) as f32 - 0.5, (k / nx) as f32 - 0.5])
                    .collect();
                self.b
                    .weight(&format!("{s}/grid"), &[1, 1, ny * nx, 2], &grid)
            };
            let y = self.b.reshape(&s, &y.name, &[0, na, no, -1]);
            let y = self.b.node(
                &s,
                "Transpose",
                &[&y],
                vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
            );
            let y = self.b.node(&s, "Sigmoid", &[&y], vec![]);
            let p = self.b.split(&s, &y, 3, &[2, 2, no - 4]);
            let two = self.b.weight(&format!("{s}/two"), &[], &[2.0]);
            let stride = self.b.weight(&format!("{s}/stride"), &[], &[h.strides[i]]);
            let anchor: Vec<f32> = h.anchors[i].iter().flatten().copied().collect();
            let anchor = self
                .b
                .weight(&format!("{s}/anchor_grid"), &[1, na, 1, 2], &anchor);
            let xy = self.b.bin(&s, "Mul", &p[0], &two);
            let xy = self.b.bin(&s, "Add", &xy, &grid);
            let xy = self.b.bin(&s, "Mul", &xy, &stride);
            let wh = self.b.bin(&s, "Mul", &p[1], &two);
            let wh = self.b.bin(&s, "Mul", &wh, &wh);
            let wh = self.b.bin(&s, "Mul", &wh, &anchor);
            let y = self.b.concat(&s, &[&xy, &wh, &p[2]], 3);
            levels.push(self.b.reshape(&s, &y, &[0, -1, no]));
            rows = if dynamic { -1 } else { rows + na * ny * nx };
        }
        let refs: Vec<&str> = levels.iter().map(String::as_str).collect();
        let out = self.b.concat(scope, &refs, 1);
        Ok(GraphValue {
            name: out,
            shape: vec![batch, rows, no],
        })
    }

    /// The cell offsets (x − ½, y − ½) of the feature map `y` as (1, 1, h·w, 2), row-major,
    /// from its runtime shape.
    fn cell_grid(&mut self, s: &str, y: &str) -> String {
        let ix = self.grid_indices(s);
        let half = self.b.weight(&format!("{s}/half"), &[], &[0.5]);
        let (gx, gy) = self.runtime_cells(s, y, &ix, "Sub", &half);
        let gx = self.b.reshape(s, &gx, &[1, 1, -1, 1]);
        let gy = self.b.reshape(s, &gy, &[1, 1, -1, 1]);
        self.b.concat(s, &[&gx, &gy], 3)
    }
}

// ---- run ----

/// `models.yolo.Detect` / `IDetect` as their repositories evaluate them before fusing: the
/// implicit offset, the convolution, the implicit scale, then the decode.
fn anchor_head(r: &mut Reference, m: ModuleRef, xs: Vec<RefTensor>) -> BuildResult<RefTensor> {
    let h = AnchorHead::parse(m, xs.len())?;
    let mut xs = xs;
    xs.truncate(h.convs.len());
    let (na, no) = (h.na, h.no);
    let batch = xs.first().map(|x| x.shape[0]).unwrap_or(0);
    let mut levels = Vec::new();
    for (i, x) in xs.into_iter().enumerate() {
        let (b, c, xh, xw) = shape::nchw(&x, "anchor head")?;
        if b != batch {
            return Err(LayerError::shape(
                format!("level {i}"),
                format!("batch {b}, level 0 {batch}"),
            ));
        }
        let mut x = x;
        if let Some(imp) = &h.implicit {
            let ia = &imp[i].0;
            shape::per_channel(ia.len(), c, "ImplicitA")?;
            for (k, v) in x.data.iter_mut().enumerate() {
                *v += ia[(k / (xh * xw)) % c];
            }
        }
        let mut y = r.module(h.convs[i], LayerInput::One(x))?;
        let (_, o, ny, nx) = shape::nchw(&y, "anchor head")?;
        if o != na * no {
            return Err(LayerError::shape(
                format!("level {i}"),
                format!("{o} channels for {na} anchors of {no}"),
            ));
        }
        if let Some(imp) = &h.implicit {
            let im = &imp[i].1;
            shape::per_channel(im.len(), o, "ImplicitM")?;
            for (k, v) in y.data.iter_mut().enumerate() {
                *v *= im[(k / (ny * nx)) % o];
            }
        }
        let stride = h.strides[i];
        let mut out = vec![0f32; b * na * ny * nx * no];
        for bi in 0..b {
            for a in 0..na {
                let [aw, ah] = h.anchors[i][a];
                for yy in 0..ny {
                    for xx in 0..nx {
                        let row = ((bi * na + a) * ny + yy) * nx + xx;
                        for ch in 0..no {
                            let v = y.data[((bi * na + a) * no + ch) * ny * nx + yy * nx + xx];
                            let s = ops::sigmoid(v);
                            out[row * no + ch] = match ch {
                                0 => (s * 2.0 + (xx as f32 - 0.5)) * stride,
                                1 => (s * 2.0 + (yy as f32 - 0.5)) * stride,
                                2 => (s * 2.0) * (s * 2.0) * aw,
                                3 => (s * 2.0) * (s * 2.0) * ah,
                                _ => s,
                            };
                        }
                    }
                }
            }
        }
        levels.push((out, na * ny * nx));
    }
    // Concatenate the levels along the rows, image by image.
    let rows: usize = levels.iter().map(|l| l.1).sum();
    let mut data = Vec::with_capacity(batch * rows * no);
    for bi in 0..batch {
        for (l, n) in &levels {
            data.extend_from_slice(&l[bi * n * no..(bi + 1) * n * no]);
        }
    }
    Ok(RefTensor::new(data, vec![batch, rows, no]))
}
