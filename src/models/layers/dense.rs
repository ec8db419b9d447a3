//! The dense-prediction heads of YOLO26: `Depth` (monocular depth, one positive value per input
//! pixel) and `SemanticSegment` (one class per input pixel). Both end in a bilinear resize to the
//! input size, which the export form of each head performs; [`DepthSpec`] and [`SemanticSpec`]
//! read their attributes once for both backends.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, head};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::{Attr, ElemType};
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    head(
        "Depth",
        "depth",
        "top-down fusion of the levels, log-depth clamped to [-4, 5], calibrated exp, bilinear ×4 to the input size: (B, 1, H, W)",
        |b, s, m, x| b.depth(s, m, &x.many()),
        |r, m, x| r.depth(m, &x.many()),
    ),
    head(
        "SemanticSegment",
        "semantic",
        "classifier on P3, bilinear ×8 to the input size, class map (argmax, uint8 up to 256 classes): (B, H, W)",
        |b, s, m, x| b.semantic(s, m, &x.many()),
        |r, m, x| r.semantic(m, &x.many()),
    ),
];

/// Log-depth is clamped to this range before `exp` (as `Depth.forward` does).
const LOG_DEPTH: (f32, f32) = (-4.0, 5.0);
/// Upsampling between pyramid levels (align_corners) and of the depth map to the input size.
const LEVEL_SCALE: usize = 2;
const DEPTH_SCALE: usize = 4;
/// The semantic logits are at stride 8; the export form resizes them to the input size.
const SEMANTIC_SCALE: usize = 8;

// ---- parse (shared) ----

/// `Depth`'s structure and calibration, read and checked once for both backends.
pub struct DepthSpec<'g> {
    /// One 1×1 `Conv` per level.
    pub proj: Vec<ModuleRef<'g>>,
    /// One refinement `Sequential` per level but the coarsest.
    pub refine: Vec<ModuleRef<'g>>,
    /// The output head's modules, in order (`Conv`, `ConvTranspose2d`, `Conv`, `Conv2d`).
    pub head: Vec<ModuleRef<'g>>,
    /// Log-affine calibration: depth = exp(a · log-depth + b).
    pub cal: (f32, f32),
}

impl<'g> DepthSpec<'g> {
    /// Reads the head `m`, which receives `inputs` feature maps.
    pub fn parse(m: ModuleRef<'g>, inputs: usize) -> BuildResult<DepthSpec<'g>> {
        let list = |name: &str| -> BuildResult<Vec<ModuleRef<'g>>> {
            Ok(m.child(name)?
                .children()
                .into_iter()
                .map(|(_, c)| c)
                .collect())
        };
        let (proj, refine, head) = (list("proj")?, list("refine")?, list("head")?);
        if inputs == 0 || proj.len() != inputs || refine.len() + 1 != inputs {
            return Err(LayerError::shape(
                "Depth",
                format!(
                    "has {} projections and {} refinements for {inputs} inputs",
                    proj.len(),
                    refine.len()
                ),
            ));
        }
        if head.is_empty() {
            return Err(LayerError::shape("Depth", "its head list is empty"));
        }
        let scalar = |name: &str, default: f32| -> BuildResult<f32> {
            match m.tensor_f32(name)? {
                None => Ok(default),
                Some((v, _)) if v.len() == 1 && v[0].is_finite() => Ok(v[0]),
                Some((v, s)) => Err(LayerError::weight(
                    "Depth",
                    name,
                    format!("has shape {s:?} ({} values), not one finite value", v.len()),
                )),
            }
        };
        Ok(DepthSpec {
            proj,
            refine,
            head,
            cal: (scalar("cal_a", 1.0)?, scalar("cal_b", 0.0)?),
        })
    }
}

/// `SemanticSegment`'s attributes, read and checked once for both backends.
pub struct SemanticSpec<'g> {
    /// Class count.
    pub nc: i64,
    /// The classifier (`Sequential(Conv, Conv2d)`) run on the first input.
    pub classifier: ModuleRef<'g>,
}

impl<'g> SemanticSpec<'g> {
    /// Reads the head `m`, which receives `inputs` feature maps (the first is classified; the
    /// others feed only the training-time auxiliary head).
    pub fn parse(m: ModuleRef<'g>, inputs: usize) -> BuildResult<SemanticSpec<'g>> {
        let nc = m
            .int("nc")
            .ok_or_else(|| LayerError::missing("SemanticSegment", "nc"))?;
        if !(1..=1 << 16).contains(&nc) {
            return Err(LayerError::bad_attr(
                "SemanticSegment",
                "nc",
                nc,
                "is not in 1..=65536",
            ));
        }
        if inputs == 0 {
            return Err(LayerError::inputs("SemanticSegment", "no inputs"));
        }
        Ok(SemanticSpec {
            nc,
            classifier: m.child("classifier")?,
        })
    }

    /// The class map's element type, as `SemanticSegment.forward` casts it: uint8 up to 256
    /// classes, else int32.
    pub fn label_elem(&self) -> ElemType {
        if self.nc <= 256 {
            ElemType::Uint8
        } else {
            ElemType::Int32
        }
    }
}

// ---- emit ----

impl Builder<'_> {
    /// Runs the modules of a head list in order; `ConvTranspose2d`, which only heads read, is
    /// emitted here.
    fn dense_chain(
        &mut self,
        scope: &str,
        ms: &[ModuleRef],
        x: GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut x = x;
        for (i, m) in ms.iter().enumerate() {
            let s = format!("{scope}.{i}");
            x = if m.class() == "ConvTranspose2d" {
                self.conv_transpose(&s, *m, &x)?
            } else {
                self.module(&s, *m, LayerInput::One(x))?
            };
        }
        Ok(x)
    }

    /// Bilinear `Resize` by an integer factor: `align_corners` (`Depth`) or half-pixel centres
    /// with PyTorch's clamping at the border (`SemanticSegment`).
    fn bilinear(
        &mut self,
        scope: &str,
        x: &GraphValue,
        factor: usize,
        align_corners: bool,
    ) -> BuildResult<GraphValue> {
        let [n, c, h, w] = check::nchw(x, scope)?;
        let f = factor as i64;
        let scales = self
            .b
            .f32s(&format!("{scope}/scales"), &[1.0, 1.0, f as f32, f as f32]);
        let mode = if align_corners {
            "align_corners"
        } else {
            "pytorch_half_pixel"
        };
        let y = self.b.node(
            scope,
            "Resize",
            &[&x.name, "", &scales],
            vec![
                ("coordinate_transformation_mode", Attr::Str(mode.into())),
                ("mode", Attr::Str("linear".into())),
            ],
        );
        let shape = check::positive(scope, vec![n, c, h * f, w * f])?;
        Ok(GraphValue { name: y, shape })
    }

    /// `Depth` in export form: (B, 1, H, W) positive depth at the input size.
    pub(crate) fn depth(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        let spec = DepthSpec::parse(m, xs.len())?;
        let mut feats = Vec::new();
        for (i, (p, x)) in spec.proj.iter().zip(xs).enumerate() {
            feats.push(self.module(
                &format!("{scope}.proj.{i}"),
                *p,
                LayerInput::One(x.clone()),
            )?);
        }
        let mut out = feats[feats.len() - 1].clone();
        for i in (0..feats.len() - 1).rev() {
            let up = self.bilinear(&format!("{scope}.up.{i}"), &out, LEVEL_SCALE, true)?;
            if up.shape != feats[i].shape {
                return Err(LayerError::shape(
                    scope,
                    format!(
                        "level {i} is {:?}, the upsampled coarser level {:?}",
                        feats[i].shape, up.shape
                    ),
                ));
            }
            let sum = self.add(scope, &up, &feats[i]);
            out = self.module(
                &format!("{scope}.refine.{i}"),
                spec.refine[i],
                LayerInput::One(sum),
            )?;
        }
        let y = self.dense_chain(&format!("{scope}.head"), &spec.head, out)?;
        if y.shape.get(1) != Some(&1) {
            return Err(LayerError::shape(
                scope,
                format!("the head gives {:?}, not one channel", y.shape),
            ));
        }
        let lo = self
            .b
            .weight(&format!("{scope}/clip_min"), &[], &[LOG_DEPTH.0]);
        let hi = self
            .b
            .weight(&format!("{scope}/clip_max"), &[], &[LOG_DEPTH.1]);
        let clipped = self.b.node(scope, "Clip", &[&y.name, &lo, &hi], vec![]);
        let a = self
            .b
            .weight(&format!("{scope}/cal_a"), &[1], &[spec.cal.0]);
        let b = self
            .b
            .weight(&format!("{scope}/cal_b"), &[1], &[spec.cal.1]);
        let scaled = self.b.bin(scope, "Mul", &clipped, &a);
        let shifted = self.b.bin(scope, "Add", &scaled, &b);
        let d = self.b.node(scope, "Exp", &[&shifted], vec![]);
        let d = GraphValue {
            name: d,
            shape: y.shape,
        };
        self.bilinear(&format!("{scope}.resize"), &d, DEPTH_SCALE, true)
    }

    /// `SemanticSegment` in export form: the (B, H, W) class map.
    pub(crate) fn semantic(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        let spec = SemanticSpec::parse(m, xs.len())?;
        let logits = self.module(
            &format!("{scope}.classifier"),
            spec.classifier,
            LayerInput::One(xs[0].clone()),
        )?;
        let [n, c, _, _] = check::nchw(&logits, scope)?;
        if c != spec.nc {
            return Err(LayerError::shape(
                scope,
                format!("the classifier gives {c} channels for nc={}", spec.nc),
            ));
        }
        let y = self.bilinear(&format!("{scope}.resize"), &logits, SEMANTIC_SCALE, false)?;
        let (h, w) = (y.shape[2], y.shape[3]);
        let labels = if spec.nc > 1 {
            self.b.node(
                scope,
                "ArgMax",
                &[&y.name],
                vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))],
            )
        } else {
            let axes = self.b.ints(&format!("{scope}/axes"), &[1]);
            let sq = self.b.node(scope, "Squeeze", &[&y.name, &axes], vec![]);
            let zero = self.b.weight(&format!("{scope}/zero"), &[], &[0.0]);
            self.b.bin(scope, "Greater", &sq, &zero)
        };
        let elem = spec.label_elem();
        let cast = self.b.node(
            scope,
            "Cast",
            &[&labels],
            vec![("to", Attr::Int(elem as i64))],
        );
        self.integer_values.push((cast.clone(), elem));
        Ok(GraphValue {
            name: cast,
            shape: vec![n, h, w],
        })
    }
}

// ---- run ----

/// Bilinear resize of (N, C, H, W) by an integer factor, as `F.interpolate(mode="bilinear")`
/// computes it: with `align_corners` the corner pixels map onto each other; without, half-pixel
/// centres at scale 1/factor, source coordinates below 0 clamped to 0.
fn resize_bilinear(x: &RefTensor, factor: usize, align_corners: bool) -> BuildResult<RefTensor> {
    let (n, c, h, w) = shape::nchw(x, "bilinear resize")?;
    let (oh, ow) = (h * factor, w * factor);
    // Per output coordinate: the two source indices and the weight of the second.
    let taps = |len: usize, out: usize| -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|o| {
                let src = if align_corners {
                    if out > 1 {
                        o as f32 * (len - 1) as f32 / (out - 1) as f32
                    } else {
                        0.0
                    }
                } else {
                    ((o as f32 + 0.5) / factor as f32 - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(len - 1);
                let i1 = (i0 + 1).min(len - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; n * c * oh * ow];
    for plane in 0..n * c {
        let src = &x.data[plane * h * w..(plane + 1) * h * w];
        let dst = &mut out[plane * oh * ow..(plane + 1) * oh * ow];
        for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
                let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                dst[oy * ow + ox] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    Ok(RefTensor::new(out, vec![n, c, oh, ow]))
}

impl Reference<'_> {
    /// Runs a head list in order (`ConvTranspose2d` included).
    fn dense_chain(&mut self, ms: &[ModuleRef], x: RefTensor) -> BuildResult<RefTensor> {
        let mut x = x;
        for m in ms {
            x = if m.class() == "ConvTranspose2d" {
                super::conv_transpose::conv_transpose(*m, &x)?
            } else {
                self.module(*m, LayerInput::One(x))?
            };
        }
        Ok(x)
    }

    /// `Depth` in export form.
    pub(crate) fn depth(&mut self, m: ModuleRef, xs: &[RefTensor]) -> BuildResult<RefTensor> {
        let spec = DepthSpec::parse(m, xs.len())?;
        let mut feats = Vec::new();
        for (p, x) in spec.proj.iter().zip(xs) {
            feats.push(self.module(*p, LayerInput::One(x.clone()))?);
        }
        let mut out = feats[feats.len() - 1].clone();
        for i in (0..feats.len() - 1).rev() {
            let up = resize_bilinear(&out, LEVEL_SCALE, true)?;
            shape::same_shape(&up, &feats[i], "Depth level fusion")?;
            out = self.module(spec.refine[i], LayerInput::One(ops::add(&up, &feats[i])))?;
        }
        let mut y = self.dense_chain(&spec.head, out)?;
        let (_, c, _, _) = shape::nchw(&y, "Depth")?;
        if c != 1 {
            return Err(LayerError::shape(
                "Depth",
                format!("the head gives {c} channels, not one"),
            ));
        }
        let (a, b) = spec.cal;
        ops::map(&mut y, |v| {
            (a * v.clamp(LOG_DEPTH.0, LOG_DEPTH.1) + b).exp()
        });
        resize_bilinear(&y, DEPTH_SCALE, true)
    }

    /// `SemanticSegment` in export form: the class map, each label as an f32. The resized logits
    /// are kept (`class_logits`) so that parity can tell a near-tie from a wrong class.
    pub(crate) fn semantic(&mut self, m: ModuleRef, xs: &[RefTensor]) -> BuildResult<RefTensor> {
        let spec = SemanticSpec::parse(m, xs.len())?;
        let logits = self.module(spec.classifier, LayerInput::One(xs[0].clone()))?;
        let (n, c, _, _) = shape::nchw(&logits, "SemanticSegment")?;
        if c as i64 != spec.nc {
            return Err(LayerError::shape(
                "SemanticSegment",
                format!("the classifier gives {c} channels for nc={}", spec.nc),
            ));
        }
        let y = resize_bilinear(&logits, SEMANTIC_SCALE, false)?;
        let (h, w) = (y.shape[2], y.shape[3]);
        let hw = h * w;
        let mut labels = vec![0f32; n * hw];
        for b in 0..n {
            for p in 0..hw {
                let at = |k: usize| y.data[(b * c + k) * hw + p];
                labels[b * hw + p] = if c == 1 {
                    if at(0) > 0.0 { 1.0 } else { 0.0 }
                } else {
                    // The first of equal maxima, as torch.argmax and ONNX ArgMax choose.
                    let mut best = 0;
                    for k in 1..c {
                        if at(k) > at(best) {
                            best = k;
                        }
                    }
                    best as f32
                };
            }
        }
        self.class_logits = Some(y);
        Ok(RefTensor::new(labels, vec![n, h, w]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_corners_keeps_the_corners_and_interpolates_between() {
        let x = RefTensor::new(vec![0.0, 3.0, 6.0, 9.0], vec![1, 1, 2, 2]);
        let y = resize_bilinear(&x, 2, true).unwrap();
        assert_eq!(y.shape, vec![1, 1, 4, 4]);
        // Row 0: 0 → 3 over four columns at 0, 1/3, 2/3, 1.
        let row: Vec<f32> = y.data[..4].to_vec();
        for (g, w) in row.iter().zip([0.0, 1.0, 2.0, 3.0]) {
            assert!((g - w).abs() < 1e-6, "{row:?}");
        }
        assert!((y.data[15] - 9.0).abs() < 1e-6);
    }

    #[test]
    fn half_pixel_clamps_at_the_border() {
        let x = RefTensor::new(vec![1.0, 5.0], vec![1, 1, 1, 2]);
        let y = resize_bilinear(&x, 2, false).unwrap();
        // Source x for outputs 0..4: -0.25 (→ 0), 0.25, 0.75, 1.25 (→ index 1).
        let want = [1.0, 2.0, 4.0, 5.0];
        for (g, w) in y.data.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", y.data);
        }
    }
}
