//! Transformer pieces on token sequences (B, N, C): linear layers, LayerNorm, multi-head
//! attention, GELU, and the `AIFI` encoder layer with its 2-D sin-cos position embedding — the
//! emission (`impl Builder`, ONNX nodes) and the reference (`seq` kernels) of each.

use super::{Linear, Mha, Mlp, Norm, pos_dim};
use crate::checkpoint::py::ModuleRef;
use crate::models::layers::act;
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::{GraphBuilder, GraphValue};
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::RefTensor;
use crate::reference::seq;
use crate::reference::{Reference, shape};

// ---- GELU ----

fn tanh_form(m: ModuleRef) -> bool {
    m.str("approximate") == Some("tanh")
}

/// GELU on `x`: 0.5·x·(1 + erf(x/√2)), or the tanh form.
pub(super) fn emit_gelu(g: &mut GraphBuilder, s: &str, m: ModuleRef, x: &str) -> String {
    let half = g.weight(&format!("{s}/half"), &[], &[0.5]);
    let one = g.weight(&format!("{s}/one"), &[], &[1.0]);
    let inner = if tanh_form(m) {
        let c = g.weight(&format!("{s}/c"), &[], &[0.044_715]);
        let k = g.weight(
            &format!("{s}/k"),
            &[],
            &[(2.0 / std::f32::consts::PI).sqrt()],
        );
        let x2 = g.bin(s, "Mul", x, x);
        let x3 = g.bin(s, "Mul", &x2, x);
        let cx3 = g.bin(s, "Mul", &x3, &c);
        let sum = g.bin(s, "Add", x, &cx3);
        let arg = g.bin(s, "Mul", &sum, &k);
        g.node(s, "Tanh", &[&arg], vec![])
    } else {
        let r2 = g.weight(&format!("{s}/sqrt2"), &[], &[std::f32::consts::SQRT_2]);
        let d = g.bin(s, "Div", x, &r2);
        g.node(s, "Erf", &[&d], vec![])
    };
    let p = g.bin(s, "Add", &inner, &one);
    let xp = g.bin(s, "Mul", x, &p);
    g.bin(s, "Mul", &xp, &half)
}

/// GELU in place.
pub(super) fn run_gelu(m: ModuleRef, t: &mut RefTensor) {
    if tanh_form(m) {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        crate::reference::ops::map(t, |v| {
            let x = v as f64;
            (0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh())) as f32
        });
    } else {
        crate::reference::ops::map(t, seq::gelu);
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `nn.Linear` on the last axis of `x`.
    pub(super) fn linear(&mut self, scope: &str, l: &Linear, x: &str) -> String {
        let mut wt = vec![0.0f32; l.w.len()];
        for o in 0..l.out {
            for i in 0..l.inp {
                wt[i * l.out + o] = l.w[o * l.inp + i];
            }
        }
        let w = self.b.weight(
            &format!("{scope}.weight"),
            &[l.inp as i64, l.out as i64],
            &wt,
        );
        let y = self.b.bin(scope, "MatMul", x, &w);
        match &l.b {
            Some(b) => {
                let bn = self.b.weight(&format!("{scope}.bias"), &[l.out as i64], b);
                self.b.bin(scope, "Add", &y, &bn)
            }
            None => y,
        }
    }

    /// `nn.LayerNorm` on the last axis.
    pub(super) fn layer_norm(&mut self, scope: &str, n: &Norm, x: &str) -> String {
        let c = n.gamma.len() as i64;
        let g = self.b.weight(&format!("{scope}.weight"), &[c], &n.gamma);
        let b = self.b.weight(&format!("{scope}.bias"), &[c], &n.beta);
        self.b.node(
            scope,
            "LayerNormalization",
            &[x, &g, &b],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(n.eps))],
        )
    }

    /// An `MLP` (ReLU between its layers).
    pub(super) fn mlp(&mut self, scope: &str, p: &Mlp, x: &str) -> String {
        let mut y = x.to_string();
        for (i, l) in p.layers.iter().enumerate() {
            y = self.linear(&format!("{scope}.layers.{i}"), l, &y);
            if i + 1 < p.layers.len() {
                y = self.b.node(&format!("{scope}.act"), "Relu", &[&y], vec![]);
            }
        }
        y
    }

    /// Multi-head attention of queries `q` (B, nq, e) over keys `k` and values `v` (B, nk, e).
    pub(super) fn mha(
        &mut self,
        scope: &str,
        p: &Mha,
        (q, k, v): (&str, &str, &str),
        nq: i64,
        nk: i64,
    ) -> String {
        let e = p.out.out as i64;
        let (h, d) = (p.heads as i64, e / p.heads as i64);
        let q = self.linear(&format!("{scope}.q"), &p.q, q);
        let k = self.linear(&format!("{scope}.k"), &p.k, k);
        let v = self.linear(&format!("{scope}.v"), &p.v, v);
        let perm = |p: &[i64]| vec![("perm", Attr::Ints(p.to_vec()))];
        let q = self.b.reshape(scope, &q, &[0, nq, h, d]);
        let q = self.b.node(scope, "Transpose", &[&q], perm(&[0, 2, 1, 3]));
        let scale = self.b.weight(
            &format!("{scope}/scale"),
            &[],
            &[(1.0 / d as f64).sqrt() as f32],
        );
        let q = self.b.bin(scope, "Mul", &q, &scale);
        let k = self.b.reshape(scope, &k, &[0, nk, h, d]);
        let k = self.b.node(scope, "Transpose", &[&k], perm(&[0, 2, 3, 1]));
        let v = self.b.reshape(scope, &v, &[0, nk, h, d]);
        let v = self.b.node(scope, "Transpose", &[&v], perm(&[0, 2, 1, 3]));
        let s = self.b.bin(scope, "MatMul", &q, &k);
        let a = self
            .b
            .node(scope, "Softmax", &[&s], vec![("axis", Attr::Int(-1))]);
        let o = self.b.bin(scope, "MatMul", &a, &v);
        let o = self.b.node(scope, "Transpose", &[&o], perm(&[0, 2, 1, 3]));
        let o = self.b.reshape(scope, &o, &[0, nq, e]);
        self.linear(&format!("{scope}.out_proj"), &p.out, &o)
    }

    /// `AIFI`: a post-norm transformer encoder layer over the H·W positions of a feature map,
    /// the position embedding a constant for the input size.
    pub(crate) fn aifi(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        self.rtdetr_opset()?;
        let [_, c, h, w] = check::nchw(x, scope)?;
        let a = Aifi::parse(m, c as usize)?;
        let n = h * w;
        let pos = pos_embed_f32(w as usize, h as usize, c as usize)?;
        let pos = self
            .b
            .weight(&format!("{scope}/pos_embed"), &[1, n, c], &pos);
        let src = self.b.reshape(scope, &x.name, &[0, c, n]);
        let src = self.b.node(
            scope,
            "Transpose",
            &[&src],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let qk = self.b.bin(scope, "Add", &src, &pos);
        let att = self.mha(&format!("{scope}.ma"), &a.ma, (&qk, &qk, &src), n, n);
        let s = self.b.bin(scope, "Add", &src, &att);
        let s = self.layer_norm(&format!("{scope}.norm1"), &a.norm1, &s);
        let f = self.linear(&format!("{scope}.fc1"), &a.fc1, &s);
        let f = self.act(
            scope,
            m.opt_child("act"),
            GraphValue {
                name: f,
                shape: vec![],
            },
        )?;
        let f = self.linear(&format!("{scope}.fc2"), &a.fc2, &f.name);
        let s = self.b.bin(scope, "Add", &s, &f);
        let s = self.layer_norm(&format!("{scope}.norm2"), &a.norm2, &s);
        let y = self.b.node(
            scope,
            "Transpose",
            &[&s],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let y = self.b.reshape(scope, &y, &[0, c, h, w]);
        Ok(GraphValue {
            name: y,
            shape: x.shape.clone(),
        })
    }
}

/// `AIFI`'s weights.
struct Aifi {
    ma: Mha,
    fc1: Linear,
    fc2: Linear,
    norm1: Norm,
    norm2: Norm,
}

impl Aifi {
    fn parse(m: ModuleRef, c: usize) -> BuildResult<Aifi> {
        if m.bool("normalize_before")? == Some(true) {
            return Err(LayerError::unsupported("AIFI", "normalize_before=True"));
        }
        pos_dim(c)?;
        let fc1 = Linear::parse(m.child("fc1")?, c)?;
        let fc2 = Linear::parse(m.child("fc2")?, fc1.out)?;
        if fc2.out != c {
            return Err(LayerError::shape(
                "AIFI",
                format!("fc2 gives {} channels, not {c}", fc2.out),
            ));
        }
        Ok(Aifi {
            ma: Mha::parse(m.child("ma")?, c)?,
            fc1,
            fc2,
            norm1: Norm::parse(m.child("norm1")?, c)?,
            norm2: Norm::parse(m.child("norm2")?, c)?,
        })
    }
}

/// `build_2d_sincos_position_embedding(w, h, c)` in f32, as PyTorch computes it: (h·w, c) rows of
/// [sin(y·ω), cos(y·ω), sin(x·ω), cos(x·ω)], ω_i = 1 / 10000^(i / (c/4)).
fn pos_embed_f32(w: usize, h: usize, c: usize) -> BuildResult<Vec<f32>> {
    let d = pos_dim(c)?;
    let omega: Vec<f32> = (0..d)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / d as f32))
        .collect();
    let mut out = Vec::with_capacity(h * w * c);
    for y in 0..h {
        for x in 0..w {
            let (fy, fx) = (y as f32, x as f32);
            out.extend(omega.iter().map(|o| (fy * o).sin()));
            out.extend(omega.iter().map(|o| (fy * o).cos()));
            out.extend(omega.iter().map(|o| (fx * o).sin()));
            out.extend(omega.iter().map(|o| (fx * o).cos()));
        }
    }
    Ok(out)
}

// ---- run ----

/// `nn.Linear` on `rows` rows.
pub(super) fn run_linear(l: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    seq::linear(x, rows, &l.w, l.out, l.b.as_deref())
}

/// `nn.LayerNorm` on every row, in place.
pub(super) fn run_norm(n: &Norm, x: &mut [f32]) {
    seq::layer_norm(x, n.gamma.len(), &n.gamma, &n.beta, n.eps);
}

/// An `MLP` (ReLU between its layers) on `rows` rows.
pub(super) fn run_mlp(p: &Mlp, x: &[f32], rows: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for (i, l) in p.layers.iter().enumerate() {
        y = run_linear(l, &y, rows);
        if i + 1 < p.layers.len() {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    y
}

/// Multi-head attention for one batch item: `q` (nq, e), `k` and `v` (nk, e).
pub(super) fn run_mha(p: &Mha, q: &[f32], k: &[f32], v: &[f32], nq: usize, nk: usize) -> Vec<f32> {
    let e = p.out.out;
    let d = e / p.heads;
    let (q, k, v) = (
        run_linear(&p.q, q, nq),
        run_linear(&p.k, k, nk),
        run_linear(&p.v, v, nk),
    );
    let mut o = vec![0.0f32; nq * e];
    for h in 0..p.heads {
        let at = h * d;
        seq::attention_head(
            (&q[at..], e),
            (&k[at..], e),
            (&v[at..], e),
            (nq, nk, d, d),
            (&mut o[at..], e),
        );
    }
    run_linear(&p.out, &o, nq)
}

/// The position embedding computed in f64 (the emission computes it in f32, as PyTorch does).
fn pos_embed_f64(w: usize, h: usize, c: usize) -> BuildResult<Vec<f32>> {
    let d = pos_dim(c)?;
    let mut out = Vec::with_capacity(h * w * c);
    for y in 0..h {
        for x in 0..w {
            for (p, f) in [
                (y, f64::sin as fn(f64) -> f64),
                (y, f64::cos),
                (x, f64::sin),
                (x, f64::cos),
            ] {
                out.extend((0..d).map(|i| f(p as f64 / 10000f64.powf(i as f64 / d as f64)) as f32));
            }
        }
    }
    Ok(out)
}

impl Reference<'_> {
    pub(crate) fn aifi(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let (n, c, h, w) = shape::nchw(x, "AIFI")?;
        let a = Aifi::parse(m, c)?;
        let hw = h * w;
        let pos = pos_embed_f64(w, h, c)?;
        let mut out = vec![0.0f32; n * c * hw];
        for b in 0..n {
            // (C, H·W) → (H·W, C)
            let mut src = vec![0.0f32; hw * c];
            for ch in 0..c {
                for p in 0..hw {
                    src[p * c + ch] = x.data[(b * c + ch) * hw + p];
                }
            }
            let qk: Vec<f32> = src.iter().zip(&pos).map(|(s, p)| s + p).collect();
            let att = run_mha(&a.ma, &qk, &qk, &src, hw, hw);
            let mut s: Vec<f32> = src.iter().zip(&att).map(|(s, a)| s + a).collect();
            run_norm(&a.norm1, &mut s);
            let mut f = RefTensor::new(run_linear(&a.fc1, &s, hw), vec![hw, a.fc1.out]);
            act::run(m.opt_child("act"), &mut f)?;
            let f = run_linear(&a.fc2, &f.data, hw);
            let mut s: Vec<f32> = s.iter().zip(&f).map(|(s, f)| s + f).collect();
            run_norm(&a.norm2, &mut s);
            for ch in 0..c {
                for p in 0..hw {
                    out[(b * c + ch) * hw + p] = s[p * c + ch];
                }
            }
        }
        Ok(RefTensor::new(out, x.shape.clone()))
    }
}
