//! The run side of `RTDETRDecoder`: the same steps as the export form, one batch item at a time,
//! with BatchNorm unfolded and the anchors generated in f64.

use super::decoder::{Anchors, Head, INV_EPS, MAX_DET};
use super::deform::run_deform;
use super::encoder::{run_linear, run_mha, run_mlp, run_norm};
use crate::checkpoint::py::ModuleRef;
use crate::models::layers::conv::{BatchNorm, conv};
use crate::models::{BuildResult, LayerError};
use crate::reference::ops::{self, RefTensor};
use crate::reference::seq::top_k;
use crate::reference::{Reference, shape};

/// `_generate_anchors`, computed in f64 and rounded once.
fn anchors_f64(shapes: &[(usize, usize)]) -> Anchors {
    let (mut anchors, mut valid) = (Vec::new(), Vec::new());
    for (i, &(h, w)) in shapes.iter().enumerate() {
        let size = 0.05 * (1u64 << i) as f64;
        for y in 0..h {
            for x in 0..w {
                let a = [
                    (x as f64 + 0.5) / w as f64,
                    (y as f64 + 0.5) / h as f64,
                    size,
                    size,
                ];
                let ok = a.iter().all(|&v| v > 0.01 && v < 0.99);
                valid.push(ok);
                for v in a {
                    anchors.push(if ok {
                        (v / (1.0 - v)).ln() as f32
                    } else {
                        f32::INFINITY
                    });
                }
            }
        }
    }
    (anchors, valid)
}

fn inverse_sigmoid(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    (x.max(INV_EPS) / (1.0 - x).max(INV_EPS)).ln()
}

impl Reference<'_> {
    /// `RTDETRDecoder` in export form: (B, K, 6) rows of cx, cy, w, h, score, class.
    pub(crate) fn rtdetr_decoder(
        &mut self,
        m: ModuleRef,
        xs: &[RefTensor],
    ) -> BuildResult<RefTensor> {
        let (p, projs) = Head::parse(m, xs.len())?;
        let hd = p.hd;
        let mut levels = Vec::new();
        let mut shapes = Vec::new();
        let mut n = 0;
        for (i, (x, (c, bn))) in xs.iter().zip(projs).enumerate() {
            let mut y = conv(c, x)?;
            let (yn, yc, h, w) = shape::nchw(&y, "RTDETRDecoder input projection")?;
            if yc != hd || (i > 0 && yn != n) {
                return Err(LayerError::shape(
                    "RTDETRDecoder",
                    format!("input projection {i} gives {:?}", y.shape),
                ));
            }
            n = yn;
            let b = BatchNorm::parse(bn, yc)?;
            ops::batch_norm(&mut y, &b.gamma, &b.beta, &b.mean, &b.var, b.eps);
            levels.push(y);
            shapes.push((h, w));
        }
        let total: usize = shapes.iter().map(|(h, w)| h * w).sum();
        let (anchors, valid) = p.anchors(&shapes, anchors_f64);
        let k = p.queries.min(total);
        let nc = p.nc;
        let kout = p.queries.min(MAX_DET).min(k * nc);
        let mut out = Vec::with_capacity(n * kout * 6);
        for b in 0..n {
            // (B, C, h·w) per level → (A, C) rows.
            let mut feats = vec![0.0f32; total * hd];
            let mut start = 0;
            for (y, &(h, w)) in levels.iter().zip(&shapes) {
                for c in 0..hd {
                    for q in 0..h * w {
                        feats[(start + q) * hd + c] = y.data[((b * hd + c) * h * w) + q];
                    }
                }
                start += h * w;
            }
            let mut masked = feats.clone();
            for (row, &ok) in masked.chunks_exact_mut(hd).zip(&valid) {
                if !ok {
                    row.fill(0.0);
                }
            }
            let mut features = run_linear(&p.enc_linear, &masked, total);
            run_norm(&p.enc_norm, &mut features);
            let scores = run_linear(&p.enc_score, &features, total);
            let best: Vec<f32> = scores
                .chunks_exact(nc)
                .map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect();
            let sel = top_k(&best, k);
            let mut embed = Vec::with_capacity(k * hd);
            for &i in &sel {
                embed.extend_from_slice(&features[i * hd..(i + 1) * hd]);
            }
            let eb = run_mlp(&p.enc_bbox, &embed, k);
            let mut refer: Vec<f32> = sel
                .iter()
                .flat_map(|&i| (0..4).map(move |j| (i, j)))
                .zip(&eb)
                .map(|((i, j), v)| ops::sigmoid(v + anchors[i * 4 + j]))
                .collect();
            let mut x = embed;
            let mut logits = Vec::new();
            for (i, l) in p.layers.iter().enumerate() {
                let qpos = run_mlp(&p.query_pos, &refer, k);
                let qk: Vec<f32> = x.iter().zip(&qpos).map(|(a, b)| a + b).collect();
                let sa = run_mha(&l.self_attn, &qk, &qk, &x, k, k);
                let mut o: Vec<f32> = x.iter().zip(&sa).map(|(a, b)| a + b).collect();
                run_norm(&l.norm1, &mut o);
                let q: Vec<f32> = o.iter().zip(&qpos).map(|(a, b)| a + b).collect();
                let ca = run_deform(&l.cross, &q, &refer, &feats, k, &shapes);
                let mut o: Vec<f32> = o.iter().zip(&ca).map(|(a, b)| a + b).collect();
                run_norm(&l.norm2, &mut o);
                let mut f = run_linear(&l.linear1, &o, k);
                f.iter_mut().for_each(|v| *v = v.max(0.0));
                let f = run_linear(&l.linear2, &f, k);
                let mut o: Vec<f32> = o.iter().zip(&f).map(|(a, b)| a + b).collect();
                run_norm(&l.norm3, &mut o);
                let bbox = run_mlp(&p.bbox_heads[i], &o, k);
                refer = bbox
                    .iter()
                    .zip(&refer)
                    .map(|(bx, r)| ops::sigmoid(bx + inverse_sigmoid(*r)))
                    .collect();
                if i + 1 == p.layers.len() {
                    logits = run_linear(&p.score, &o, k);
                }
                x = o;
            }
            let probs: Vec<f32> = logits.iter().map(|&v| ops::sigmoid(v)).collect();
            for idx in top_k(&probs, kout) {
                let (q, c) = (idx / nc, idx % nc);
                out.extend_from_slice(&refer[q * 4..q * 4 + 4]);
                out.push(probs[idx]);
                out.push(c as f32);
            }
        }
        Ok(RefTensor::new(out, vec![n, kout, 6]))
    }
}
