//! The detection-style heads (`Detect`, `Segment`, `Pose`, `OBB` and YOLO26's `Segment26`,
//! `Pose26`, `OBB26`) and the parts only they read (`DFL`, `Proto`, `Proto26`, `RealNVP`).
//! [`HeadSpec`] reads and checks a head's attributes once, for both backends; `emit.rs` builds the
//! graph, `run.rs` is the reference, `topk.rs` the end-to-end (one-to-one) post-processing of
//! both.

mod decode;
mod emit;
mod run;
mod topk;

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{Layer, head, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    detection(
        "Detect",
        "detect",
        "boxes (DFL, anchors) and class scores: (B, 4 + nc, anchors); `--end2end`: top-k rows",
    ),
    detection(
        "Segment",
        "segment",
        "`Detect` plus `nm` mask coefficients; prototypes as `output1`",
    ),
    detection(
        "Pose",
        "pose",
        "`Detect` plus decoded keypoints (`kpt_shape`)",
    ),
    detection("OBB", "obb", "`Detect` with rotated boxes plus the angle"),
    detection(
        "Segment26",
        "segment",
        "YOLO26 `Segment` (prototypes from `Proto26`); `--end2end`: top-k rows",
    ),
    detection(
        "Pose26",
        "pose",
        "YOLO26 `Pose`: keypoints through `cv4` then `cv4_kpts`, offset from the anchor; `--end2end`: top-k rows",
    ),
    detection(
        "OBB26",
        "obb",
        "YOLO26 `OBB`: the raw angle (no sigmoid); `--end2end`: top-k rows",
    ),
    detection(
        "v10Detect",
        "detect",
        "YOLOv10 `Detect` (lighter class branch); one-to-many by default",
    ),
    part(
        "DFL",
        "Detect, Segment, Pose, OBB",
        "distribution focal loss decoding: softmax over bins, expectation",
    ),
    part(
        "Proto",
        "Segment",
        "mask prototypes: conv, transposed conv, conv, conv",
    ),
    part(
        "Proto26",
        "Segment26",
        "mask prototypes from every level: refined, upsampled, summed, then `Proto` (its `semseg` branch is training-only)",
    ),
    part(
        "RealNVP",
        "Pose26",
        "normalizing flow of the keypoint loss; training-only, never run at export",
    ),
];

/// A detection-style head: [`HeadSpec`] says what differs between them.
const fn detection(class: &'static str, task: &'static str, summary: &'static str) -> Layer {
    head(
        class,
        task,
        summary,
        |b, s, m, x| b.detect(s, m, &x.many()),
        |r, m, x| r.head(m, &x.many()),
    )
}

/// What a detection head outputs: its one-to-many export form (the default), or its one-to-one
/// branches post-processed into top-k detection rows (`--end2end`, as `yolo export nms=False`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadOptions {
    /// Use the one-to-one branches and output (B, k, 6 + extra) rows: x1 y1 x2 y2 (a rotated
    /// box's cx cy w h for OBB), score, class, extra channels.
    pub end2end: bool,
    /// Rows kept by `end2end` (clamped to the anchor count, as Ultralytics' exporter does).
    pub max_det: usize,
}

impl Default for HeadOptions {
    fn default() -> HeadOptions {
        HeadOptions {
            end2end: false,
            max_det: 300,
        }
    }
}

/// Fails unless `head` (a model's last layer) can give end-to-end output: it must have the
/// one-to-one branches (`one2one_cv2`, YOLOv10 / YOLO26 heads) that `--end2end` reads.
pub fn check_end2end(head: ModuleRef) -> BuildResult<()> {
    if head.opt_child("one2one_cv2").is_some() {
        return Ok(());
    }
    Err(LayerError::NoOneToOne { head: head.class() })
}

/// The base form of a detection head: what its extra channels mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Boxes and scores only (`Detect`, `v10Detect`).
    Detect,
    /// Mask coefficients and prototypes.
    Segment,
    /// Keypoints.
    Pose,
    /// Rotated boxes and their angle.
    Obb,
}

/// A head's attributes, read and checked once for both backends.
pub struct HeadSpec {
    /// The head's class.
    pub class: String,
    /// What its extra channels mean.
    pub kind: HeadKind,
    /// Class count.
    pub nc: i64,
    /// DFL bins per box side (1: no DFL).
    pub reg_max: i64,
    /// Stride of each input level.
    pub strides: Vec<f64>,
    /// Channels after the class scores: `nm` masks, `nk` keypoint values, `ne` angles; 0 for
    /// `Detect`.
    pub extra: i64,
    /// `Pose`'s (keypoints, values per keypoint).
    pub kpt_shape: Option<(i64, i64)>,
    /// YOLO26 heads: the OBB angle is used raw (no sigmoid), keypoints are offsets from the
    /// anchor (no ×2 − 0.5), and `Pose26` runs `cv4` then `cv4_kpts`.
    pub yolo26: bool,
    /// The branch lists to run (`cv2`, `cv3`, `cv4`, or their `one2one_` copies).
    pub prefix: &'static str,
    /// End-to-end output: keep at most this many rows (before clamping to the anchors).
    pub max_det: Option<usize>,
}

impl HeadSpec {
    /// Reads the head `m` that receives `inputs` feature maps, to be evaluated as `opts` says;
    /// refuses what neither backend handles (`xyxy` output, a missing branch set) and values no
    /// real head has.
    pub fn parse(m: ModuleRef, inputs: usize, opts: HeadOptions) -> BuildResult<HeadSpec> {
        let class = m.class();
        if m.bool("xyxy")? == Some(true) {
            return Err(LayerError::unsupported(class, "xyxy output"));
        }
        // `yolo export` takes the one-to-many branches unless asked for end-to-end output
        // (`nms=False`), whatever the head's own `end2end` was when it was saved.
        let prefix = if opts.end2end {
            check_end2end(m)?;
            "one2one_"
        } else {
            if m.opt_child("cv2").is_none() && m.opt_child("one2one_cv2").is_some() {
                return Err(LayerError::NoOneToMany { head: class });
            }
            ""
        };
        let nc = m
            .int("nc")
            .ok_or_else(|| LayerError::missing(&class, "nc"))?;
        let reg_max = m.int("reg_max").unwrap_or(16);
        let strides = m
            .attr_tensor_f64("stride")?
            .ok_or_else(|| LayerError::missing(&class, "stride"))?;
        if inputs == 0 || strides.len() != inputs {
            return Err(LayerError::shape(
                &class,
                format!("{} strides for {inputs} inputs", strides.len()),
            ));
        }
        // `v10Detect` is a `Detect` with a lighter class branch: the branches run as modules.
        let (kind, extra) = match class.as_str() {
            "Detect" | "v10Detect" => (HeadKind::Detect, 0),
            "Segment" | "Segment26" => (
                HeadKind::Segment,
                m.int("nm")
                    .ok_or_else(|| LayerError::missing(&class, "nm"))?,
            ),
            "Pose" | "Pose26" => (
                HeadKind::Pose,
                m.int("nk")
                    .ok_or_else(|| LayerError::missing(&class, "nk"))?,
            ),
            "OBB" | "OBB26" => (
                HeadKind::Obb,
                m.int("ne")
                    .ok_or_else(|| LayerError::missing(&class, "ne"))?,
            ),
            other => return Err(LayerError::unsupported(other, "use as a detection head")),
        };
        if (kind != HeadKind::Detect && !(1..=1 << 16).contains(&extra))
            || !(1..=1 << 16).contains(&nc)
            || !(1..=1 << 10).contains(&reg_max)
            || (kind == HeadKind::Obb && extra != 1)
        {
            return Err(LayerError::bad_attr(
                &class,
                "nc/reg_max/extra channels",
                (nc, reg_max, extra),
                "is out of range",
            ));
        }
        let kpt_shape = if kind == HeadKind::Pose {
            match m.ints("kpt_shape").as_deref() {
                Some(&[n, d]) if (2..=3).contains(&d) && n * d == extra => Some((n, d)),
                other => {
                    return Err(LayerError::bad_attr(
                        &class,
                        "kpt_shape",
                        other,
                        format!("does not fit nk={extra}"),
                    ));
                }
            }
        } else {
            None
        };
        if opts.end2end && opts.max_det == 0 {
            return Err(LayerError::MaxDet);
        }
        Ok(HeadSpec {
            yolo26: class.ends_with("26"),
            class,
            kind,
            nc,
            reg_max,
            strides,
            extra,
            kpt_shape,
            prefix,
            max_det: opts.end2end.then_some(opts.max_det),
        })
    }

    /// The branch list `name` (`cv2`) of the branch set in use (`one2one_cv2` end-to-end).
    pub fn branch(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The modules that make the extra channels at one level, run in order: `cv4`, and for
    /// `Pose26` then `cv4_kpts` (its `cv4_sigma` feeds only the loss).
    pub fn extra_branches(&self) -> Vec<String> {
        match (self.kind, self.yolo26) {
            (HeadKind::Detect, _) => Vec::new(),
            (HeadKind::Pose, true) => vec![self.branch("cv4"), self.branch("cv4_kpts")],
            _ => vec![self.branch("cv4")],
        }
    }
}

impl Builder<'_> {
    /// `Proto`: cv1, a stride-2 transposed conv, cv2, cv3 — the mask prototypes (B, nm, H/4, W/4).
    fn proto(&mut self, scope: &str, m: ModuleRef, x: &GraphValue) -> BuildResult<GraphValue> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        let up = self.conv_transpose(&format!("{scope}.upsample"), m.child("upsample")?, &a)?;
        let b = self.sub_conv(scope, m, "cv2", &up)?;
        self.sub_conv(scope, m, "cv3", &b)
    }

    /// The head's prototypes by its `proto`'s class: `Proto` reads the first level, `Proto26`
    /// every level.
    fn prototypes(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        let first = (xs.first()).ok_or_else(|| LayerError::inputs(m.class(), "no inputs"))?;
        if m.class() != "Proto26" {
            return self.proto(scope, m, first);
        }
        let refine = m.child("feat_refine")?.children();
        if refine.len() + 1 != xs.len() || xs.len() > 7 {
            return Err(LayerError::shape(
                scope,
                format!("{} feat_refine convs for {} levels", refine.len(), xs.len()),
            ));
        }
        // Each deeper level, refined to the first level's channels and upsampled to its size
        // by a constant factor (nearest), is added to it.
        let mut feat = first.clone();
        for (i, (_, f)) in refine.iter().enumerate() {
            let s = format!("{scope}.feat_refine.{i}");
            let y = self.conv_block(&s, *f, &xs[i + 1])?;
            let factor = 1i64 << (i + 1);
            let up = self.resize_nearest(&s, &y, factor as f64)?;
            if up.shape != feat.shape {
                return Err(LayerError::shape(
                    s,
                    format!(
                        "{:?} upsampled by {factor} does not fit {:?}",
                        y.shape, feat.shape
                    ),
                ));
            }
            feat.name = self.b.bin(scope, "Add", &feat.name, &up.name);
        }
        let fused = self.sub_conv(scope, m, "feat_fuse", &feat)?;
        self.proto(scope, m, &fused)
    }
}

impl Reference<'_> {
    /// `Proto`, BatchNorm unfolded.
    fn proto(&mut self, p: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.conv_bn_act(p.child("cv1")?, x)?;
        let up = super::conv_transpose::conv_transpose(p.child("upsample")?, &a)?;
        let b = self.conv_bn_act(p.child("cv2")?, &up)?;
        self.conv_bn_act(p.child("cv3")?, &b)
    }

    /// `Proto` on the first level, or `Proto26` on every level.
    fn prototypes(&mut self, p: ModuleRef, xs: &[RefTensor]) -> BuildResult<RefTensor> {
        let first = (xs.first()).ok_or_else(|| LayerError::inputs(p.class(), "no inputs"))?;
        if p.class() != "Proto26" {
            return self.proto(p, first);
        }
        let refine = p.child("feat_refine")?.children();
        if refine.len() + 1 != xs.len() || xs.len() > 7 {
            return Err(LayerError::shape(
                "Proto26",
                format!("{} feat_refine convs for {} levels", refine.len(), xs.len()),
            ));
        }
        let mut feat = first.clone();
        for (i, (_, f)) in refine.iter().enumerate() {
            let y = self.conv_bn_act(*f, &xs[i + 1])?;
            shape::upsample(&y, 1 << (i + 1), "Proto26")?;
            let up = ops::upsample_nearest(&y, 1 << (i + 1));
            shape::same_shape(&feat, &up, "Proto26")?;
            feat = ops::add(&feat, &up);
        }
        let fused = self.conv_bn_act(p.child("feat_fuse")?, &feat)?;
        self.proto(p, &fused)
    }
}
