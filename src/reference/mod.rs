//! The reference interpreter: runs an Ultralytics checkpoint's module tree directly from the
//! pickled modules — BatchNorm applied as BatchNorm, not folded; f32 — with Ultralytics' forward
//! semantics, written independently of the ONNX builder (they share only the weight reading), so
//! a mistake in one does not hide in the other.

mod blocks;
mod head;
pub mod ops;
mod shape;

use std::fmt;

use ops::T;

use crate::checkpoint::py::M;

/// The reference layer's error.
#[derive(Debug, Clone)]
pub struct RefError(pub String);

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefError {}

type R<T> = Result<T, RefError>;

fn e(m: impl Into<String>) -> RefError {
    RefError(m.into())
}

/// What a module receives.
enum Input {
    One(T),
    Many(Vec<T>),
}

/// The interpreter over one model module.
pub struct Reference<'g> {
    root: M<'g>,
    /// Extra outputs (Segment's prototypes) produced by the last run.
    extra: Vec<T>,
}

impl<'g> Reference<'g> {
    /// Wraps a pickled `*Model` module (it must hold the layer list `model`).
    pub fn new(root: M<'g>) -> R<Reference<'g>> {
        root.child("model").map_err(e)?;
        Ok(Reference {
            root,
            extra: Vec::new(),
        })
    }

    /// Runs the model on `images` (N, 3, H, W) and returns its outputs in export form
    /// (`output0`, then `output1` for segmentation).
    pub fn run(&mut self, images: T) -> R<Vec<T>> {
        self.extra.clear();
        let layers = self.root.child("model").map_err(e)?.children();
        let mut kept: Vec<Option<T>> = Vec::new();
        let mut x = Input::One(images);
        for (name, layer) in layers {
            let f = layer
                .attr("f")
                .ok_or_else(|| e(format!("layer {name} has no `f`")))?;
            let take = |j: i64, x: &Input, kept: &[Option<T>]| -> R<T> {
                if j == -1 {
                    return match x {
                        Input::One(t) => Ok(t.clone()),
                        Input::Many(_) => {
                            Err(e(format!("layer {name}: previous output is a list")))
                        }
                    };
                }
                let idx = if j < 0 { kept.len() as i64 + j } else { j } as usize;
                kept.get(idx)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| e(format!("layer {name} reads layer {j}")))
            };
            if let Some(j) = f.as_int() {
                if j != -1 {
                    x = Input::One(take(j, &x, &kept)?);
                }
            } else {
                let js = layer
                    .ints("f")
                    .ok_or_else(|| e(format!("layer {name}: bad `f`")))?;
                x = Input::Many(js.iter().map(|&j| take(j, &x, &kept)).collect::<R<_>>()?);
            }
            let y = self.module(layer, x)?;
            kept.push(Some(y.clone()));
            x = Input::One(y);
        }
        let Input::One(out) = x else {
            return Err(e("model ended on a list"));
        };
        let mut outs = vec![out];
        outs.append(&mut self.extra);
        Ok(outs)
    }

    fn module(&mut self, m: M, x: Input) -> R<T> {
        let class = m.class();
        let one = |x: Input| match x {
            Input::One(t) => Ok(t),
            Input::Many(_) => Err(e(format!("{class} expects one input"))),
        };
        match class.as_str() {
            "Sequential" => {
                let mut x = x;
                for (_, c) in m.children() {
                    x = Input::One(self.module(c, x)?);
                }
                one(x)
            }
            "Conv" | "DWConv" => self.conv_bn_act(m, &one(x)?),
            "Conv2d" => blocks::conv(m, &one(x)?),
            "Identity" => one(x),
            "MaxPool2d" => blocks::maxpool(m, &one(x)?),
            "Upsample" => blocks::upsample(m, &one(x)?),
            "Concat" => match x {
                Input::Many(xs) => {
                    let refs = xs.iter().collect::<Vec<_>>();
                    shape::same_maps(&refs, "Concat")?;
                    Ok(ops::cat_channels(&refs))
                }
                Input::One(t) => Ok(t),
            },
            "Bottleneck" => self.bottleneck(m, &one(x)?),
            "C2f" | "C3k2" => self.c2f(m, &one(x)?),
            "C3" | "C3k" => self.c3(m, &one(x)?),
            "SPPF" => self.sppf(m, &one(x)?),
            "C2PSA" => self.c2psa(m, &one(x)?),
            "PSABlock" => self.psablock(m, &one(x)?),
            "Detect" | "Segment" | "Pose" | "OBB" => match x {
                Input::Many(xs) => self.head(m, &xs),
                Input::One(t) => self.head(m, &[t]),
            },
            "Classify" => match x {
                Input::Many(xs) => {
                    let refs = xs.iter().collect::<Vec<_>>();
                    shape::same_maps(&refs, "Classify")?;
                    self.classify(m, &ops::cat_channels(&refs))
                }
                Input::One(t) => self.classify(m, &t),
            },
            other => Err(e(format!("the reference interpreter has no {other}"))),
        }
    }
}
