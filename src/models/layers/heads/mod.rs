//! The detection-style heads (`Detect`, `Segment`, `Pose`, `OBB`, one-to-many, in export form)
//! and the parts only they read (`DFL`, `Proto`). [`HeadSpec`] reads and checks a head's
//! attributes once, for both backends; `emit.rs` builds the graph, `run.rs` is the reference.

mod emit;
mod run;

use crate::checkpoint::py::{M, R};
use crate::models::registry::{Layer, head, part};
use crate::onnx::graph::V;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::T;
use crate::reference::{RefResult, Reference, e};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    detection(
        "Detect",
        "detect",
        "boxes (DFL, anchors) and class scores: (B, 4 + nc, anchors)",
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

/// A head's attributes, read and checked once for both backends.
pub struct HeadSpec {
    /// The head's class.
    pub class: String,
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
}

impl HeadSpec {
    /// Reads the head `m` that receives `inputs` feature maps; refuses what neither backend
    /// handles (end-to-end heads, `xyxy` output) and values no real head has.
    pub fn parse(m: M, inputs: usize) -> R<HeadSpec> {
        let class = m.class();
        // `yolo export` takes the one-to-many branches unless asked for end-to-end output, whatever
        // the head's own `end2end` was when it was saved.
        if m.opt_child("cv2").is_none() && m.opt_child("one2one_cv2").is_some() {
            return Err(format!(
                "{class}'s one-to-many branches were removed (a fused checkpoint); only its end-to-end (one-to-one) output remains, which is not supported"
            ));
        }
        if m.bool("xyxy") == Some(true) {
            return Err(format!("{class} with xyxy output"));
        }
        let nc = m.int("nc").ok_or("nc missing")?;
        let reg_max = m.int("reg_max").unwrap_or(16);
        let strides = m.attr_tensor_f64("stride").ok_or("stride missing")?;
        if inputs == 0 || strides.len() != inputs {
            return Err(format!("{} strides for {inputs} inputs", strides.len()));
        }
        let extra = match class.as_str() {
            "Detect" | "v10Detect" => 0,
            "Segment" => m.int("nm").ok_or("nm missing")?,
            "Pose" => m.int("nk").ok_or("nk missing")?,
            "OBB" => m.int("ne").ok_or("ne missing")?,
            other => return Err(format!("{other} is not a detection head")),
        };
        if (!matches!(class.as_str(), "Detect" | "v10Detect") && !(1..=1 << 16).contains(&extra))
            || !(1..=1 << 16).contains(&nc)
            || !(1..=1 << 10).contains(&reg_max)
        {
            return Err(format!(
                "nc={nc}, reg_max={reg_max}, extra channels {extra}"
            ));
        }
        let kpt_shape = if class == "Pose" {
            match m.ints("kpt_shape").as_deref() {
                Some(&[n, d]) if (2..=3).contains(&d) && n * d == extra => Some((n, d)),
                other => return Err(format!("kpt_shape {other:?} for nk={extra}")),
            }
        } else {
            None
        };
        Ok(HeadSpec {
            class,
            nc,
            reg_max,
            strides,
            extra,
            kpt_shape,
        })
    }
}

impl Builder<'_> {
    /// `Proto`: cv1, a stride-2 transposed conv, cv2, cv3 — the mask prototypes (B, nm, H/4, W/4).
    fn proto(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        let up = self.conv_transpose(&format!("{scope}.upsample"), m.child("upsample")?, &a)?;
        let b = self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &up)?;
        self.conv_block(&format!("{scope}.cv3"), m.child("cv3")?, &b)
    }
}

impl Reference<'_> {
    /// `Proto`, BatchNorm unfolded.
    fn proto(&mut self, p: M, x: &T) -> RefResult<T> {
        let a = self.conv_bn_act(p.child("cv1").map_err(e)?, x)?;
        let up = super::conv::conv_transpose(p.child("upsample").map_err(e)?, &a)?;
        let b = self.conv_bn_act(p.child("cv2").map_err(e)?, &up)?;
        self.conv_bn_act(p.child("cv3").map_err(e)?, &b)
    }
}
