//! `RTDETRDecoder` in export form: input projections, encoder scores and boxes over every
//! anchor, top-k query selection, the deformable decoder layers up to `eval_idx` refining the
//! reference boxes, and the final top-k over queries × classes: (B, K, 6) rows of normalised
//! cx, cy, w, h, score, class. [`Head`] reads and checks the head once for both backends; this
//! file emits it (anchors as constants for the static input size).

use super::deform::Deform;
use super::{Linear, MIN_OPSET, Mha, Mlp, Norm, size};
use crate::checkpoint::py::ModuleRef;
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};

/// The largest number of rows the export keeps (`max_det`, the exporter's default).
pub(super) const MAX_DET: usize = 300;

/// `inverse_sigmoid`'s clamp.
pub(super) const INV_EPS: f32 = 1e-5;

/// One `DeformableTransformerDecoderLayer`.
pub(super) struct DecLayer {
    pub(super) self_attn: Mha,
    pub(super) norm1: Norm,
    pub(super) cross: Deform,
    pub(super) norm2: Norm,
    pub(super) linear1: Linear,
    pub(super) linear2: Linear,
    pub(super) norm3: Norm,
}

/// The pickled anchors of the last input size the head ran at (`shapes`, `anchors`,
/// `valid_mask`); `_get_decoder_input` reuses them, in their stored precision, whenever the
/// feature shapes are the same.
pub(super) struct Stored {
    pub(super) shapes: Vec<(usize, usize)>,
    /// (A, 4) logits, `inf` where invalid.
    pub(super) anchors: Vec<f32>,
    pub(super) valid: Vec<bool>,
}

/// `RTDETRDecoder`'s attributes and weights.
pub(super) struct Head {
    pub(super) nc: usize,
    pub(super) hd: usize,
    pub(super) queries: usize,
    pub(super) enc_linear: Linear,
    pub(super) enc_norm: Norm,
    pub(super) enc_score: Linear,
    pub(super) enc_bbox: Mlp,
    pub(super) query_pos: Mlp,
    /// The layers that run at inference (up to `eval_idx`).
    pub(super) layers: Vec<DecLayer>,
    /// Each run layer's box head.
    pub(super) bbox_heads: Vec<Mlp>,
    /// The last run layer's score head.
    pub(super) score: Linear,
    pub(super) stored: Option<Stored>,
}

impl Head {
    /// Reads the head `m` receiving `levels` feature maps.
    pub(super) fn parse<'g>(
        m: ModuleRef<'g>,
        levels: usize,
    ) -> BuildResult<(Head, Vec<(ModuleRef<'g>, ModuleRef<'g>)>)> {
        let nc = size(m, "nc")?;
        let hd = size(m, "hidden_dim")?;
        let queries = size(m, "num_queries")?;
        if m.int("nl").is_some_and(|n| n as usize != levels) || levels == 0 {
            return Err(LayerError::bad_attr(
                "RTDETRDecoder",
                "nl",
                m.int("nl"),
                format!("for {levels} inputs"),
            ));
        }
        if m.bool("learnt_init_query")? == Some(true) {
            return Err(LayerError::unsupported(
                "RTDETRDecoder",
                "learnt_init_query=True",
            ));
        }
        let projs = m.child("input_proj")?.children();
        if projs.len() != levels {
            return Err(LayerError::shape(
                "RTDETRDecoder",
                format!("{} input projections for {levels} inputs", projs.len()),
            ));
        }
        let mut input_proj = Vec::new();
        for (_, p) in projs {
            input_proj.push((p.child("0")?, p.child("1")?));
        }
        let dec = m.child("decoder")?;
        let all = dec.child("layers")?.children();
        let n = all.len();
        let eval = dec.int("eval_idx").unwrap_or(n as i64 - 1);
        let eval = if eval < 0 { eval + n as i64 } else { eval };
        if !(0..n as i64).contains(&eval) {
            return Err(LayerError::bad_attr(
                "DeformableTransformerDecoder",
                "eval_idx",
                eval,
                format!("is not one of its {n} layers"),
            ));
        }
        let run = eval as usize + 1;
        let (bbox_list, score_list) = (
            m.child("dec_bbox_head")?.children(),
            m.child("dec_score_head")?.children(),
        );
        if bbox_list.len() < run || score_list.len() < run {
            return Err(LayerError::shape(
                "RTDETRDecoder",
                "fewer decoder heads than decoder layers",
            ));
        }
        let mut layers = Vec::new();
        let mut bbox_heads = Vec::new();
        for i in 0..run {
            let l = all[i].1;
            if let Some(a) = l.opt_child("act")
                && a.class() != "ReLU"
            {
                return Err(LayerError::unsupported(
                    "DeformableTransformerDecoderLayer",
                    format!("activation {}", a.class()),
                ));
            }
            let linear1 = Linear::parse(l.child("linear1")?, hd)?;
            let linear2 = Linear::parse(l.child("linear2")?, linear1.out)?;
            layers.push(DecLayer {
                self_attn: Mha::parse(l.child("self_attn")?, hd)?,
                norm1: Norm::parse(l.child("norm1")?, hd)?,
                cross: Deform::parse(l.child("cross_attn")?, hd, levels)?,
                norm2: Norm::parse(l.child("norm2")?, hd)?,
                linear1,
                linear2,
                norm3: Norm::parse(l.child("norm3")?, hd)?,
            });
            bbox_heads.push(mlp(bbox_list[i].1, hd, 4)?);
        }
        let enc = m.child("enc_output")?;
        let head = Head {
            nc,
            hd,
            queries,
            enc_linear: out_of(Linear::parse(enc.child("0")?, hd)?, hd)?,
            enc_norm: Norm::parse(enc.child("1")?, hd)?,
            enc_score: out_of(Linear::parse(m.child("enc_score_head")?, hd)?, nc)?,
            enc_bbox: mlp(m.child("enc_bbox_head")?, hd, 4)?,
            query_pos: mlp(m.child("query_pos_head")?, 4, hd)?,
            layers,
            bbox_heads,
            score: out_of(Linear::parse(score_list[eval as usize].1, hd)?, nc)?,
            stored: stored(m)?,
        };
        Ok((head, input_proj))
    }

    /// The anchors (A, 4) and valid mask for feature `shapes`: the stored ones when the shapes
    /// match, else `generate`'s.
    pub(super) fn anchors(
        &self,
        shapes: &[(usize, usize)],
        generate: fn(&[(usize, usize)]) -> Anchors,
    ) -> Anchors {
        match &self.stored {
            Some(s) if s.shapes == shapes => (s.anchors.clone(), s.valid.clone()),
            _ => generate(shapes),
        }
    }
}

/// Anchor logits (A, 4) and the valid mask (A).
pub(super) type Anchors = (Vec<f32>, Vec<bool>);

fn out_of(l: Linear, out: usize) -> BuildResult<Linear> {
    if l.out != out {
        return Err(LayerError::shape(
            "RTDETRDecoder",
            format!("a linear layer gives {} values, not {out}", l.out),
        ));
    }
    Ok(l)
}

fn mlp(m: ModuleRef, inp: usize, out: usize) -> BuildResult<Mlp> {
    let p = Mlp::parse(m, inp)?;
    if p.out() != out {
        return Err(LayerError::shape(
            "RTDETRDecoder",
            format!("an MLP gives {} values, not {out}", p.out()),
        ));
    }
    Ok(p)
}

/// The head's stored anchors, when they are all there and consistent; a stored tensor whose
/// bytes cannot be read is an error, not a reason to compute them instead.
fn stored(m: ModuleRef) -> BuildResult<Option<Stored>> {
    let read = |name: &str| m.attr_tensor_f64(name);
    let (Some(anchors), Some(valid)) = (read("anchors")?, read("valid_mask")?) else {
        return Ok(None);
    };
    Ok(stored_with(m, anchors, valid))
}

fn stored_with(m: ModuleRef, anchors: Vec<f64>, valid: Vec<f64>) -> Option<Stored> {
    let shapes: Vec<(usize, usize)> =
        m.g.seq(m.attr("shapes")?)?
            .iter()
            .map(|s| match m.g.seq(s)? {
                [h, w] => Some((
                    usize::try_from(h.as_int()?).ok()?,
                    usize::try_from(w.as_int()?).ok()?,
                )),
                _ => None,
            })
            .collect::<Option<_>>()?;
    let a: usize = shapes.iter().map(|(h, w)| h * w).sum();
    let anchors: Vec<f32> = anchors.into_iter().map(|v| v as f32).collect();
    let valid: Vec<bool> = valid.into_iter().map(|v| v != 0.0).collect();
    (a > 0 && anchors.len() == 4 * a && valid.len() == a).then_some(Stored {
        shapes,
        anchors,
        valid,
    })
}

/// `_generate_anchors` in f32, as PyTorch computes it.
fn anchors_f32(shapes: &[(usize, usize)]) -> Anchors {
    let (mut anchors, mut valid) = (Vec::new(), Vec::new());
    for (i, &(h, w)) in shapes.iter().enumerate() {
        let wh = (0.05f64 * 2f64.powi(i as i32)) as f32;
        for y in 0..h {
            for x in 0..w {
                let a = [
                    (x as f32 + 0.5) / w as f32,
                    (y as f32 + 0.5) / h as f32,
                    wh,
                    wh,
                ];
                let ok = a.iter().all(|&v| v > 0.01f32 && v < 0.99f32);
                valid.push(ok);
                anchors.extend(a.map(|v| {
                    if ok {
                        (v / (1.0 - v)).ln()
                    } else {
                        f32::INFINITY
                    }
                }));
            }
        }
    }
    (anchors, valid)
}

impl Builder<'_> {
    /// Refuses opsets without the operators the RT-DETR emission uses.
    pub(super) fn rtdetr_opset(&self) -> BuildResult<()> {
        if self.opset < MIN_OPSET {
            return Err(LayerError::Opset {
                model: "RT-DETR",
                min: MIN_OPSET,
                operators: "LayerNormalization, GridSample",
                asked: self.opset,
            });
        }
        Ok(())
    }

    /// `RTDETRDecoder` in export form.
    pub(crate) fn rtdetr_decoder(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        self.rtdetr_opset()?;
        let (p, projs) = Head::parse(m, xs.len())?;
        let s = scope;
        let hd = p.hd as i64;
        let (mut flat, mut shapes) = (Vec::new(), Vec::new());
        for (i, (x, (conv, bn))) in xs.iter().zip(projs).enumerate() {
            let y = self.conv2d(&format!("{s}.input_proj.{i}.0"), conv, Some(bn), x)?;
            let [_, c, h, w] = check::nchw(&y, s)?;
            if c != hd {
                return Err(LayerError::shape(
                    "RTDETRDecoder",
                    format!("input projection {i} gives {c} channels, not {hd}"),
                ));
            }
            let f = self.b.reshape(s, &y.name, &[0, hd, h * w]);
            flat.push(self.b.node(
                s,
                "Transpose",
                &[&f],
                vec![("perm", Attr::Ints(vec![0, 2, 1]))],
            ));
            shapes.push((h as usize, w as usize));
        }
        let batch = xs.first().map_or(1, |x| x.shape[0]);
        let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
        let feats = self.b.concat(s, &refs, 1);
        let total: usize = shapes.iter().map(|(h, w)| h * w).sum();
        let (anchors, valid) = p.anchors(&shapes, anchors_f32);
        let a = total as i64;
        // Encoder output over every anchor (features of invalid anchors zeroed first).
        let masked = if valid.iter().all(|&v| v) {
            feats.clone()
        } else {
            let vm: Vec<f32> = valid.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
            let vm = self.b.weight(&format!("{s}/valid_mask"), &[1, a, 1], &vm);
            self.b.bin(s, "Mul", &feats, &vm)
        };
        let f = self.linear(&format!("{s}.enc_output.0"), &p.enc_linear, &masked);
        let features = self.layer_norm(&format!("{s}.enc_output.1"), &p.enc_norm, &f);
        let scores = self.linear(&format!("{s}.enc_score_head"), &p.enc_score, &features);
        // Query selection: the k anchors with the highest best-class score.
        let k = p.queries.min(total) as i64;
        let one = self.b.ints(&format!("{s}/one"), &[1]);
        let best = self.b.node_n(
            s,
            "TopK",
            &[&scores, &one],
            2,
            vec![("axis", Attr::Int(-1))],
        );
        let best = self.b.reshape(s, &best[0], &[0, a]);
        let kk = self.b.ints(&format!("{s}/k"), &[k]);
        let top = self
            .b
            .node_n(s, "TopK", &[&best, &kk], 2, vec![("axis", Attr::Int(1))]);
        let idx = self.b.reshape(s, &top[1], &[0, k, 1]);
        let widths = self.b.ints(&format!("{s}/hd_expand"), &[1, 1, hd]);
        let idx_hd = self.b.node(s, "Expand", &[&idx, &widths], vec![]);
        let embed = self.b.node(
            s,
            "GatherElements",
            &[&features, &idx_hd],
            vec![("axis", Attr::Int(1))],
        );
        let an = self.b.weight(&format!("{s}/anchors"), &[a, 4], &anchors);
        let top_anchors = self
            .b
            .node(s, "Gather", &[&an, &top[1]], vec![("axis", Attr::Int(0))]);
        let eb = self.mlp(&format!("{s}.enc_bbox_head"), &p.enc_bbox, &embed);
        let refer = self.b.bin(s, "Add", &eb, &top_anchors);
        let mut refer = self.b.node(s, "Sigmoid", &[&refer], vec![]);
        // Decoder layers, refining the reference boxes.
        let mut out = embed;
        let shapes_i: Vec<(i64, i64)> = shapes.iter().map(|&(h, w)| (h as i64, w as i64)).collect();
        let eps = self.b.weight(&format!("{s}/inv_eps"), &[], &[INV_EPS]);
        let (zero, onef) = (
            self.b.weight(&format!("{s}/zero"), &[], &[0.0]),
            self.b.weight(&format!("{s}/onef"), &[], &[1.0]),
        );
        let mut logits = String::new();
        for (i, l) in p.layers.iter().enumerate() {
            let ls = format!("{s}.decoder.layers.{i}");
            let qpos = self.mlp(&format!("{s}.query_pos_head"), &p.query_pos, &refer);
            let qk = self.b.bin(&ls, "Add", &out, &qpos);
            let sa = self.mha(
                &format!("{ls}.self_attn"),
                &l.self_attn,
                (&qk, &qk, &out),
                k,
                k,
            );
            let o = self.b.bin(&ls, "Add", &out, &sa);
            let o = self.layer_norm(&format!("{ls}.norm1"), &l.norm1, &o);
            let q = self.b.bin(&ls, "Add", &o, &qpos);
            let ca = self.deform_attn(
                &format!("{ls}.cross_attn"),
                &l.cross,
                (&q, &refer, &feats),
                k,
                &shapes_i,
            );
            let o = self.b.bin(&ls, "Add", &o, &ca);
            let o = self.layer_norm(&format!("{ls}.norm2"), &l.norm2, &o);
            let f = self.linear(&format!("{ls}.linear1"), &l.linear1, &o);
            let f = self.b.node(&format!("{ls}.act"), "Relu", &[&f], vec![]);
            let f = self.linear(&format!("{ls}.linear2"), &l.linear2, &f);
            let o = self.b.bin(&ls, "Add", &o, &f);
            out = self.layer_norm(&format!("{ls}.norm3"), &l.norm3, &o);
            let bbox = self.mlp(&format!("{s}.dec_bbox_head.{i}"), &p.bbox_heads[i], &out);
            // inverse_sigmoid: log(max(x, eps) / max(1 − x, eps)) of x clamped to [0, 1].
            let c = self.b.node(&ls, "Clip", &[&refer, &zero, &onef], vec![]);
            let x1 = self.b.bin(&ls, "Max", &c, &eps);
            let x2 = self.b.bin(&ls, "Sub", &onef, &c);
            let x2 = self.b.bin(&ls, "Max", &x2, &eps);
            let r = self.b.bin(&ls, "Div", &x1, &x2);
            let inv = self.b.node(&ls, "Log", &[&r], vec![]);
            let sum = self.b.bin(&ls, "Add", &bbox, &inv);
            refer = self.b.node(&ls, "Sigmoid", &[&sum], vec![]);
            if i + 1 == p.layers.len() {
                logits = self.linear(&format!("{s}.dec_score_head.{i}"), &p.score, &out);
            }
        }
        // Top-K over queries × classes.
        let nc = p.nc as i64;
        let kout = (p.queries.min(MAX_DET) as i64).min(k * nc);
        let probs = self.b.node(s, "Sigmoid", &[&logits], vec![]);
        let flat = self.b.reshape(s, &probs, &[0, k * nc]);
        let ko = self.b.ints(&format!("{s}/k_out"), &[kout]);
        let t = self
            .b
            .node_n(s, "TopK", &[&flat, &ko], 2, vec![("axis", Attr::Int(1))]);
        let ncv = self.b.ints(&format!("{s}/nc"), &[nc]);
        let q = self.b.bin(s, "Div", &t[1], &ncv);
        let qn = self.b.bin(s, "Mul", &q, &ncv);
        let cls = self.b.bin(s, "Sub", &t[1], &qn);
        let dtype = self.b.dtype as i64;
        let cls = self
            .b
            .node(s, "Cast", &[&cls], vec![("to", Attr::Int(dtype))]);
        let q = self.b.reshape(s, &q, &[0, kout, 1]);
        let four = self.b.ints(&format!("{s}/box_expand"), &[1, 1, 4]);
        let q4 = self.b.node(s, "Expand", &[&q, &four], vec![]);
        let boxes = self.b.node(
            s,
            "GatherElements",
            &[&refer, &q4],
            vec![("axis", Attr::Int(1))],
        );
        let score = self.b.reshape(s, &t[0], &[0, kout, 1]);
        let cls = self.b.reshape(s, &cls, &[0, kout, 1]);
        let y = self.b.concat(s, &[&boxes, &score, &cls], -1);
        Ok(GraphValue {
            name: y,
            shape: vec![batch, kout, 6],
        })
    }
}
