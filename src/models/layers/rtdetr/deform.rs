//! `MSDeformAttn`, multi-scale deformable attention with 4-value reference boxes: each query
//! samples every level's value map at `points` locations per head, offset from its reference
//! box's centre by learned fractions of its size, with `grid_sample`'s bilinear interpolation
//! (zero padding, `align_corners=False`), and sums them with softmax weights. Emitted with ONNX
//! `GridSample`; the reference samples each point in a loop.

use super::encoder::run_linear;
use super::{Linear, grid_sample_attrs, size};
use crate::checkpoint::py::ModuleRef;
use crate::models::{BuildResult, LayerError};
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::Builder;
use crate::reference::seq;

/// `MSDeformAttn`'s layout and weights.
pub(super) struct Deform {
    heads: usize,
    levels: usize,
    points: usize,
    offsets: Linear,
    weights: Linear,
    value: Linear,
    out: Linear,
}

impl Deform {
    /// Reads `m` for `d` channels over `levels` levels.
    pub(super) fn parse(m: ModuleRef, d: usize, levels: usize) -> BuildResult<Deform> {
        let (heads, points) = (size(m, "n_heads")?, size(m, "n_points")?);
        if m.int("n_levels") != Some(levels as i64)
            || m.int("d_model") != Some(d as i64)
            || !d.is_multiple_of(heads)
        {
            return Err(LayerError::shape(
                "MSDeformAttn",
                format!(
                    "{:?} levels of {:?} channels, {heads} heads; the decoder has {levels} of {d}",
                    m.int("n_levels"),
                    m.int("d_model")
                ),
            ));
        }
        let lin = |name: &str, out: usize| -> BuildResult<Linear> {
            let l = Linear::parse(m.child(name)?, d)?;
            if l.out != out {
                return Err(LayerError::shape(
                    "MSDeformAttn",
                    format!("{name} gives {} values, not {out}", l.out),
                ));
            }
            Ok(l)
        };
        let n = heads * levels * points;
        Ok(Deform {
            heads,
            levels,
            points,
            offsets: lin("sampling_offsets", 2 * n)?,
            weights: lin("attention_weights", n)?,
            value: lin("value_proj", d)?,
            out: lin("output_proj", d)?,
        })
    }
}

impl Builder<'_> {
    /// Deformable attention of `query` (B, nq, d) with reference boxes `refer` (B, nq, 4:
    /// cx, cy, w, h in [0, 1]) over `feats` (B, Σ h·w, d), levels of `shapes` (h, w).
    pub(super) fn deform_attn(
        &mut self,
        scope: &str,
        p: &Deform,
        (query, refer, feats): (&str, &str, &str),
        nq: i64,
        shapes: &[(i64, i64)],
    ) -> String {
        let s = scope;
        let (h, l, pt) = (p.heads as i64, p.levels as i64, p.points as i64);
        let d = p.out.out as i64;
        let dh = d / h;
        let total: i64 = shapes.iter().map(|(a, b)| a * b).sum();
        let perm = |v: &[i64]| vec![("perm", Attr::Ints(v.to_vec()))];
        // Values: (B, A, d) → (B·heads, dh, A), split by level into (B·heads, dh, h_l, w_l).
        let v = self.linear(&format!("{s}.value_proj"), &p.value, feats);
        let v = self.b.reshape(s, &v, &[0, total, h, dh]);
        let v = self.b.node(s, "Transpose", &[&v], perm(&[0, 2, 3, 1]));
        let v = self.b.reshape(s, &v, &[-1, dh, total]);
        let sizes: Vec<i64> = shapes.iter().map(|(a, b)| a * b).collect();
        let vs = self.b.split(s, &v, 2, &sizes);
        // Sampling locations: centre + offset / points · size · 0.5, then grid = 2·loc − 1.
        let off = self.linear(&format!("{s}.sampling_offsets"), &p.offsets, query);
        let off = self.b.reshape(s, &off, &[0, nq, h, l * pt, 2]);
        let r = self.b.reshape(s, refer, &[0, nq, 1, 1, 4]);
        let r = self.b.split(s, &r, -1, &[2, 2]);
        let np = self
            .b
            .weight(&format!("{s}/points"), &[], &[p.points as f32]);
        let half = self.b.weight(&format!("{s}/half"), &[], &[0.5]);
        let two = self.b.weight(&format!("{s}/two"), &[], &[2.0]);
        let one = self.b.weight(&format!("{s}/one"), &[], &[1.0]);
        let o = self.b.bin(s, "Div", &off, &np);
        let o = self.b.bin(s, "Mul", &o, &r[1]);
        let o = self.b.bin(s, "Mul", &o, &half);
        let loc = self.b.bin(s, "Add", &r[0], &o);
        let g = self.b.bin(s, "Mul", &loc, &two);
        let g = self.b.bin(s, "Sub", &g, &one);
        let g = self.b.node(s, "Transpose", &[&g], perm(&[0, 2, 1, 3, 4]));
        let g = self.b.reshape(s, &g, &[-1, nq, l * pt, 2]);
        let grids = self.b.split(s, &g, 2, &vec![pt; p.levels]);
        let mut sampled = Vec::new();
        for (lv, ((hh, ww), (vl, gl))) in shapes.iter().zip(vs.iter().zip(&grids)).enumerate() {
            let sl = format!("{s}/level{lv}");
            let vl = self.b.reshape(&sl, vl, &[-1, dh, *hh, *ww]);
            let attrs = grid_sample_attrs(self.opset);
            sampled.push(self.b.node(&sl, "GridSample", &[&vl, gl], attrs));
        }
        let refs: Vec<&str> = sampled.iter().map(String::as_str).collect();
        let sv = self.b.concat(s, &refs, -1);
        // Weights: softmax over all levels' points, (B·heads, 1, nq, L·P).
        let aw = self.linear(&format!("{s}.attention_weights"), &p.weights, query);
        let aw = self.b.reshape(s, &aw, &[0, nq, h, l * pt]);
        let aw = self
            .b
            .node(s, "Softmax", &[&aw], vec![("axis", Attr::Int(-1))]);
        let aw = self.b.node(s, "Transpose", &[&aw], perm(&[0, 2, 1, 3]));
        let aw = self.b.reshape(s, &aw, &[-1, 1, nq, l * pt]);
        let prod = self.b.bin(s, "Mul", &sv, &aw);
        let axes = self.b.ints(&format!("{s}/axes"), &[-1]);
        let sum = self.b.node(
            s,
            "ReduceSum",
            &[&prod, &axes],
            vec![("keepdims", Attr::Int(0))],
        );
        let o = self.b.reshape(s, &sum, &[-1, d, nq]);
        let o = self.b.node(s, "Transpose", &[&o], perm(&[0, 2, 1]));
        self.linear(&format!("{s}.output_proj"), &p.out, &o)
    }
}

/// Deformable attention for one batch item: `query` (nq, d), `refer` (nq, 4), `feats` (A, d).
pub(super) fn run_deform(
    p: &Deform,
    query: &[f32],
    refer: &[f32],
    feats: &[f32],
    nq: usize,
    shapes: &[(usize, usize)],
) -> Vec<f32> {
    let d = p.out.out;
    let total: usize = shapes.iter().map(|(h, w)| h * w).sum();
    let dh = d / p.heads;
    let lp = p.levels * p.points;
    let value = run_linear(&p.value, feats, total);
    let off = run_linear(&p.offsets, query, nq);
    let mut aw = run_linear(&p.weights, query, nq);
    let mut out = vec![0.0f32; nq * d];
    for q in 0..nq {
        let [cx, cy, bw, bh] = [0, 1, 2, 3].map(|i| refer[q * 4 + i]);
        for h in 0..p.heads {
            let wrow = (q * p.heads + h) * lp;
            crate::reference::ops::softmax_strided(&mut aw[wrow..wrow + lp], 0, lp, 1);
            let acc = &mut out[q * d + h * dh..q * d + (h + 1) * dh];
            let mut start = 0;
            for (lv, &(hh, ww)) in shapes.iter().enumerate() {
                for pt in 0..p.points {
                    let k = lv * p.points + pt;
                    let o = ((q * p.heads + h) * lp + k) * 2;
                    let scale = |v: f32, size: f32| v / p.points as f32 * size * 0.5;
                    let x = cx + scale(off[o], bw);
                    let y = cy + scale(off[o + 1], bh);
                    let rows = &value[start * d..(start + hh * ww) * d];
                    seq::sample_bilinear(rows, (hh, ww, d, h * dh), x, y, aw[wrow + k], acc);
                }
                start += hh * ww;
            }
        }
    }
    run_linear(&p.out, &out, nq)
}
