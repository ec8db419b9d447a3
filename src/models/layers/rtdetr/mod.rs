//! RT-DETR (`rtdetr-l`, `RTDETRDetectionModel`): the HGNetv2 backbone blocks and `RepC3`
//! (`backbone.rs`; its `RepConv` is YOLOv9's, in `elan.rs`), the
//! AIFI encoder layer and the transformer pieces both backends share the reading of
//! (`encoder.rs`), multi-scale deformable attention (`deform.rs`) and the `RTDETRDecoder` head
//! (`decoder.rs` emits it, `decoder_run.rs` runs it). The weights and attributes are read once,
//! here, with checks; the arithmetic is written separately on each side.

mod backbone;
mod decoder;
mod decoder_run;
mod deform;
mod encoder;

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{Layer, activation, head, layer, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::proto::Attr;

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "HGStem",
        "HGNetv2 stem: conv, two padded 2×2 branches (conv pair, max pool), concatenation, convs",
        |b, s, m, x| b.hgstem(s, m, &x.one("HGStem")?),
        |r, m, x| r.hgstem(m, &x.one("HGStem")?),
    ),
    layer(
        "HGBlock",
        "HGNetv2 block: chained convs, concatenation, squeeze and excitation convs",
        |b, s, m, x| b.hgblock(s, m, &x.one("HGBlock")?),
        |r, m, x| r.hgblock(m, &x.one("HGBlock")?),
    ),
    layer(
        "LightConv",
        "1×1 `Conv` without activation, then a depthwise `DWConv`",
        |b, s, m, x| b.lightconv(s, m, &x.one("LightConv")?),
        |r, m, x| r.lightconv(m, &x.one("LightConv")?),
    ),
    layer(
        "RepC3",
        "`RepConv`s on cv1's output plus cv2's, then cv3 (RT-DETR)",
        |b, s, m, x| b.repc3(s, m, &x.one("RepC3")?),
        |r, m, x| r.repc3(m, &x.one("RepC3")?),
    ),
    layer(
        "AIFI",
        "transformer encoder layer over H·W with a 2-D sin-cos position embedding (constant)",
        |b, s, m, x| b.aifi(s, m, &x.one("AIFI")?),
        |r, m, x| r.aifi(m, &x.one("AIFI")?),
    ),
    head(
        "RTDETRDecoder",
        "detect",
        "query selection, deformable-attention decoder: (B, 300, 4 + 1 + 1) xywh, score, class",
        |b, s, m, x| b.rtdetr_decoder(s, m, &x.many()),
        |r, m, x| r.rtdetr_decoder(m, &x.many()),
    ),
    activation(
        "GELU",
        "x·Φ(x) (erf form; `approximate='tanh'` as tanh)",
        encoder::emit_gelu,
        encoder::run_gelu,
    ),
    part(
        "MultiheadAttention",
        "AIFI, DeformableTransformerDecoderLayer",
        "`nn.MultiheadAttention`: packed q/k/v projections, softmax attention, output projection",
    ),
    part(
        "NonDynamicallyQuantizableLinear",
        "MultiheadAttention",
        "the attention's output projection (an `nn.Linear`)",
    ),
    part(
        "LayerNorm",
        "AIFI, RTDETRDecoder, DeformableTransformerDecoderLayer",
        "`nn.LayerNorm` over the last axis",
    ),
    part(
        "Embedding",
        "RTDETRDecoder",
        "denoising class embeddings (training only; never read)",
    ),
    part(
        "MLP",
        "RTDETRDecoder",
        "linear layers with ReLU between them (box heads, query position head)",
    ),
    part(
        "MSDeformAttn",
        "DeformableTransformerDecoderLayer",
        "multi-scale deformable attention: bilinear `grid_sample` at learned offsets (GridSample)",
    ),
    part(
        "DeformableTransformerDecoder",
        "RTDETRDecoder",
        "the decoder layers run up to `eval_idx`, refining the reference boxes",
    ),
    part(
        "DeformableTransformerDecoderLayer",
        "DeformableTransformerDecoder",
        "self-attention, deformable cross-attention, feed-forward, each with a LayerNorm",
    ),
];

/// The lowest opset the RT-DETR emission is valid in: `LayerNormalization` (17) and `GridSample`
/// (16).
pub const MIN_OPSET: i64 = 17;

/// `GridSample`'s attributes for `grid_sample(mode='bilinear', padding_mode='zeros',
/// align_corners=False)` in `opset` (opset 20 renamed the mode `linear`).
pub(crate) fn grid_sample_attrs(opset: i64) -> Vec<(&'static str, Attr)> {
    let mode = if opset >= 20 { "linear" } else { "bilinear" };
    vec![
        ("align_corners", Attr::Int(0)),
        ("mode", Attr::Str(mode.into())),
        ("padding_mode", Attr::Str("zeros".into())),
    ]
}

/// Whether the model `root` ends in an `RTDETRDecoder`, whose output is detection rows (the top
/// K of queries × classes) that the parity check compares as a set.
pub fn rows_output(root: ModuleRef) -> bool {
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop().map(|(_, h)| h));
    head.is_some_and(|h| h.class() == "RTDETRDecoder")
}

/// A positive size attribute no real model exceeds.
fn size(m: ModuleRef, name: &str) -> BuildResult<usize> {
    m.int(name)
        .filter(|v| (1..=1 << 16).contains(v))
        .map(|v| v as usize)
        .ok_or_else(|| LayerError::bad_attr(m.class(), name, m.int(name), "is not in 1..=65536"))
}

/// `nn.Linear`'s weights, read and checked once for both backends.
pub struct Linear {
    /// (out, in), row-major.
    pub w: Vec<f32>,
    /// Input width.
    pub inp: usize,
    /// Output width.
    pub out: usize,
    /// One bias per output, if any.
    pub b: Option<Vec<f32>>,
}

impl Linear {
    /// Reads `m` and checks that it takes `inp` values.
    pub fn parse(m: ModuleRef, inp: usize) -> BuildResult<Linear> {
        let (w, ws) = m.need_f32("weight")?;
        let out = match ws[..] {
            [o, i] if i as usize == inp && (1..=1 << 20).contains(&o) => o as usize,
            _ => {
                return Err(LayerError::weight(
                    m.class(),
                    "weight",
                    format!("has shape {ws:?}, which does not take {inp} inputs"),
                ));
            }
        };
        let b = m.tensor_f32("bias")?.map(|(b, _)| b);
        if b.as_ref().is_some_and(|b| b.len() != out) {
            return Err(LayerError::weight(
                m.class(),
                "bias",
                format!("does not have {out} values"),
            ));
        }
        Ok(Linear { w, inp, out, b })
    }

    /// Rows `from..to` of the weight (and bias) as a linear layer of their own.
    fn rows(&self, from: usize, to: usize) -> Linear {
        Linear {
            w: self.w[from * self.inp..to * self.inp].to_vec(),
            inp: self.inp,
            out: to - from,
            b: self.b.as_ref().map(|b| b[from..to].to_vec()),
        }
    }
}

/// `nn.LayerNorm` over `c` channels.
pub struct Norm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// `eps`.
    pub eps: f32,
}

impl Norm {
    /// Reads `m` for `c` channels (an affine norm over the last axis only).
    pub fn parse(m: ModuleRef, c: usize) -> BuildResult<Norm> {
        let shape = m.ints("normalized_shape");
        if shape.as_deref() != Some(&[c as i64]) {
            return Err(LayerError::bad_attr(
                "LayerNorm",
                "normalized_shape",
                shape,
                format!("is not [{c}]"),
            ));
        }
        let read = |n: &str| -> BuildResult<Vec<f32>> {
            match m.tensor_f32(n)? {
                Some((v, _)) if v.len() == c => Ok(v),
                Some(_) => Err(LayerError::weight(
                    "LayerNorm",
                    n,
                    format!("does not have {c} values"),
                )),
                None => Ok(vec![if n == "weight" { 1.0 } else { 0.0 }; c]),
            }
        };
        Ok(Norm {
            gamma: read("weight")?,
            beta: read("bias")?,
            eps: m.float("eps").unwrap_or(1e-5) as f32,
        })
    }
}

/// `nn.MultiheadAttention` with equal q/k/v widths and no extra key/value biases.
pub struct Mha {
    /// Heads.
    pub heads: usize,
    /// Query, key and value projections.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub out: Linear,
}

impl Mha {
    /// Reads `m` for `e` channels.
    pub fn parse(m: ModuleRef, e: usize) -> BuildResult<Mha> {
        let heads = size(m, "num_heads")?;
        if m.int("embed_dim") != Some(e as i64) || !e.is_multiple_of(heads) {
            return Err(LayerError::shape(
                "MultiheadAttention",
                format!(
                    "embed_dim {:?} with {heads} heads on {e} channels",
                    m.int("embed_dim")
                ),
            ));
        }
        if m.bool("_qkv_same_embed_dim")? == Some(false)
            || m.bool("add_zero_attn")? == Some(true)
            || m.tensor_f32("bias_k")?.is_some()
        {
            return Err(LayerError::unsupported(
                "MultiheadAttention",
                "separate q/k/v widths or extra key biases",
            ));
        }
        let (w, ws) = m.need_f32("in_proj_weight")?;
        if ws != [3 * e as i64, e as i64] {
            return Err(LayerError::weight(
                "MultiheadAttention",
                "in_proj_weight",
                format!("has shape {ws:?}, not [3·{e}, {e}]"),
            ));
        }
        let b = m.tensor_f32("in_proj_bias")?.map(|(b, _)| b);
        if b.as_ref().is_some_and(|b| b.len() != 3 * e) {
            return Err(LayerError::weight(
                "MultiheadAttention",
                "in_proj_bias",
                format!("does not have 3·{e} values"),
            ));
        }
        let packed = Linear {
            w,
            inp: e,
            out: 3 * e,
            b,
        };
        let out = Linear::parse(m.child("out_proj")?, e)?;
        if out.out != e {
            return Err(LayerError::weight(
                "MultiheadAttention",
                "out_proj",
                format!("does not map {e} to {e} values"),
            ));
        }
        Ok(Mha {
            heads,
            q: packed.rows(0, e),
            k: packed.rows(e, 2 * e),
            v: packed.rows(2 * e, 3 * e),
            out,
        })
    }
}

/// An Ultralytics `MLP`: linear layers with its activation between them.
pub struct Mlp {
    /// The layers, in order.
    pub layers: Vec<Linear>,
    /// The activation module between layers (ReLU by default).
    pub act: Option<String>,
}

impl Mlp {
    /// Reads `m` taking `inp` values; refuses the variants the RT-DETR head never builds.
    pub fn parse(m: ModuleRef, inp: usize) -> BuildResult<Mlp> {
        if m.bool("residual")? == Some(true) || m.bool("sigmoid")? == Some(true) {
            return Err(LayerError::unsupported(
                "MLP",
                "a residual or sigmoid output",
            ));
        }
        if let Some(n) = m.opt_child("out_norm")
            && n.class() != "Identity"
        {
            return Err(LayerError::unsupported(
                "MLP",
                format!("out_norm {}", n.class()),
            ));
        }
        let act = m.opt_child("act").map(|a| a.class());
        if act.as_deref().is_some_and(|a| a != "ReLU") {
            return Err(LayerError::unsupported(
                "MLP",
                format!("activation {act:?}"),
            ));
        }
        let mut layers = Vec::new();
        let mut width = inp;
        for (_, l) in m.child("layers")?.children() {
            let lin = Linear::parse(l, width)?;
            width = lin.out;
            layers.push(lin);
        }
        if layers.is_empty()
            || m.int("num_layers")
                .is_some_and(|n| n as usize != layers.len())
        {
            return Err(LayerError::bad_attr(
                "MLP",
                "num_layers",
                m.int("num_layers"),
                "does not match its layers",
            ));
        }
        Ok(Mlp { layers, act })
    }

    /// The output width.
    pub fn out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out)
    }
}

/// The 2-D sin-cos position embedding width check AIFI makes.
fn pos_dim(c: usize) -> BuildResult<usize> {
    if !c.is_multiple_of(4) {
        return Err(LayerError::shape(
            "AIFI",
            format!("needs a channel count divisible by 4, got {c}"),
        ));
    }
    Ok(c / 4)
}
