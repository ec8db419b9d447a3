//! YOLO11's attention blocks: `Attention`, `PSABlock`, `C2PSA`, `PSA`.

use rayon::prelude::*;

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::{Reference, shape};

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "Attention",
        "multi-head self-attention over H·W with a positional depthwise conv",
        |b, s, m, x| b.attention(s, m, &x.one("Attention")?),
        |r, m, x| r.attention(m, &x.one("Attention")?),
    ),
    layer(
        "PSABlock",
        "attention then feed-forward, each with a residual when `add`",
        |b, s, m, x| b.psablock(s, m, &x.one("PSABlock")?),
        |r, m, x| r.psablock(m, &x.one("PSABlock")?),
    ),
    layer(
        "C2PSA",
        "split, `PSABlock`s on one half, concatenation (YOLO11)",
        |b, s, m, x| b.c2psa(s, m, &x.one("C2PSA")?),
        |r, m, x| r.c2psa(m, &x.one("C2PSA")?),
    ),
    layer(
        "PSA",
        "split, attention and feed-forward on one half, concatenation",
        |b, s, m, x| b.c2psa(s, m, &x.one("PSA")?),
        |r, m, x| r.c2psa(m, &x.one("PSA")?),
    ),
];

// ---- parse (shared) ----

/// `Attention`'s head layout, read and checked once for both backends.
pub struct AttentionParams {
    /// `num_heads`.
    pub heads: i64,
    /// `key_dim`: query and key channels per head.
    pub key_dim: i64,
    /// `head_dim`: value channels per head.
    pub head_dim: i64,
    /// The query scale (`scale`, else key_dim^-0.5).
    pub scale: f32,
}

impl AttentionParams {
    /// Reads `m`, an `Attention`.
    pub fn parse(m: ModuleRef) -> BuildResult<AttentionParams> {
        let dim = |k: &str| {
            m.int(k)
                .filter(|v| (1..=1 << 16).contains(v))
                .ok_or_else(|| {
                    LayerError::bad_attr("Attention", k, m.int(k), "is not a usable size")
                })
        };
        let (heads, key_dim, head_dim) = (dim("num_heads")?, dim("key_dim")?, dim("head_dim")?);
        let scale = m.float("scale").unwrap_or((key_dim as f64).powf(-0.5)) as f32;
        Ok(AttentionParams {
            heads,
            key_dim,
            head_dim,
            scale,
        })
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `Attention`: multi-head self-attention over the H·W positions, plus a depthwise positional
    /// conv of the values, then a projection.
    pub(crate) fn attention(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let AttentionParams {
            heads,
            key_dim,
            head_dim,
            scale,
        } = AttentionParams::parse(m)?;
        let [_, c, h, w] = check::nchw(x, scope)?;
        // With a dynamic input the positions' count and the map's size come from the graph.
        let n = if self.b.dynamic_hw { -1 } else { h * w };
        let qkv = self.sub_conv(scope, m, "qkv", x)?;
        let r = self
            .b
            .reshape(scope, &qkv.name, &[0, heads, 2 * key_dim + head_dim, n]);
        let p = self.b.split(scope, &r, 2, &[key_dim, key_dim, head_dim]);
        let s = self.b.weight(&format!("{scope}/scale"), &[], &[scale]);
        let qs = self.b.bin(scope, "Mul", &p[0], &s);
        let t = vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))];
        let qt = self.b.node(scope, "Transpose", &[&qs], t.clone());
        let logits = self.b.bin(scope, "MatMul", &qt, &p[1]);
        let attn = self
            .b
            .node(scope, "Softmax", &[&logits], vec![("axis", Attr::Int(-1))]);
        let at = self.b.node(scope, "Transpose", &[&attn], t);
        let o = self.b.bin(scope, "MatMul", &p[2], &at);
        let (o, v) = if self.b.dynamic_hw {
            let like = self.b.node(scope, "Shape", &[&x.name], vec![]);
            (
                self.b.node(scope, "Reshape", &[&o, &like], vec![]),
                self.b.node(scope, "Reshape", &[&p[2], &like], vec![]),
            )
        } else {
            (
                self.b.reshape(scope, &o, &[0, c, h, w]),
                self.b.reshape(scope, &p[2], &[0, c, h, w]),
            )
        };
        let v = GraphValue {
            name: v,
            shape: x.shape.clone(),
        };
        let pe = self.sub_conv(scope, m, "pe", &v)?;
        let sum = self.b.bin(scope, "Add", &o, &pe.name);
        let sum = GraphValue {
            name: sum,
            shape: x.shape.clone(),
        };
        self.sub_conv(scope, m, "proj", &sum)
    }

    /// `PSABlock`: attention then feed-forward, each with a residual when `add`.
    /// `PSABlock`: attention then feed-forward, each with a residual when `add`.
    pub(crate) fn psablock(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let add = m.bool("add")?.unwrap_or(true);
        let a = self.attention(&format!("{scope}.attn"), m.child("attn")?, x)?;
        let x = if add { self.add(scope, x, &a) } else { a };
        let f = self.sub(scope, m, "ffn", &x)?;
        Ok(if add { self.add(scope, &x, &f) } else { f })
    }

    /// `C2PSA` (and `PSA`): split cv1's output, run the attention part on the second half,
    /// concatenate, cv2.
    /// `C2PSA` / `PSA`: split cv1's output, attention on the second half, concatenate, cv2.
    pub(crate) fn c2psa(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.sub_conv(scope, m, "cv1", x)?;
        let c = m
            .int("c")
            .ok_or_else(|| LayerError::missing("C2PSA", "c"))?;
        let [an, ac, ah, aw] = check::nchw(&a, scope)?;
        if c <= 0 || 2 * c != ac {
            return Err(LayerError::shape(
                scope,
                format!("C2PSA splits {ac} channels into two halves of {c}"),
            ));
        }
        let parts = self.b.split(scope, &a.name, 1, &[c, c]);
        let half = |name: String| GraphValue {
            name,
            shape: vec![an, c, ah, aw],
        };
        let (first, mut second) = (half(parts[0].clone()), half(parts[1].clone()));
        if m.class() == "PSA" {
            let at = self.attention(&format!("{scope}.attn"), m.child("attn")?, &second)?;
            second = self.add(scope, &second, &at);
            let f = self.sub(scope, m, "ffn", &second)?;
            second = self.add(scope, &second, &f);
        } else {
            second = self.sub(scope, m, "m", &second)?;
        }
        let cat = self.cat(scope, &[first, second], 1)?;
        self.sub_conv(scope, m, "cv2", &cat)
    }
}

// ---- run ----

impl Reference<'_> {
    pub(crate) fn c2psa(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.sub(m, "cv1", x)?;
        let c = shape::nchw(&a, "C2PSA")?.1 / 2;
        shape::channels(&a, c, 2 * c, "C2PSA")?;
        let first = ops::channels(&a, 0, c);
        let second = ops::channels(&a, c, 2 * c);
        let second = if m.class() == "PSA" {
            // PSA: b + attn(b), then that plus ffn of it.
            let at = self.attention(m.child("attn")?, &second)?;
            shape::same_shape(&second, &at, "PSA")?;
            let b1 = ops::add(&second, &at);
            let f = self.sub(m, "ffn", &b1)?;
            shape::same_shape(&b1, &f, "PSA")?;
            ops::add(&b1, &f)
        } else {
            self.sub(m, "m", &second)?
        };
        shape::same_maps(&[&first, &second], "C2PSA")?;
        self.sub(m, "cv2", &ops::cat_channels(&[&first, &second]))
    }

    pub(crate) fn psablock(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let add = m.bool("add")?.unwrap_or(true);
        let a = self.attention(m.child("attn")?, x)?;
        if add {
            shape::same_shape(x, &a, "PSABlock")?;
        }
        let x1 = if add { ops::add(x, &a) } else { a };
        let f = self.sub(m, "ffn", &x1)?;
        if add {
            shape::same_shape(&x1, &f, "PSABlock")?;
        }
        Ok(if add { ops::add(&x1, &f) } else { f })
    }

    /// Multi-head attention over H·W positions plus the positional depthwise conv of the values.
    pub(crate) fn attention(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let (n, c, h, w) = shape::nchw(x, "Attention")?;
        let hw = h * w;
        let p = AttentionParams::parse(m)?;
        let (heads, kd, hd) = (p.heads as usize, p.key_dim as usize, p.head_dim as usize);
        let scale = p.scale;
        let qkv = self.sub(m, "qkv", x)?;
        let per = 2 * kd + hd;
        if qkv.shape != [n, heads * per, h, w] || heads * hd != c {
            return Err(LayerError::shape(
                "Attention",
                format!(
                    "qkv {:?} does not split into {heads} heads of {kd}+{kd}+{hd} over {c} channels",
                    qkv.shape
                ),
            ));
        }
        let mut out = vec![0.0f32; n * c * hw];
        let mut v_all = vec![0.0f32; n * c * hw];
        for b in 0..n {
            for hh in 0..heads {
                let base = (b * heads + hh) * per * hw;
                let q = &qkv.data[base..base + kd * hw];
                let k = &qkv.data[base + kd * hw..base + 2 * kd * hw];
                let v = &qkv.data[base + 2 * kd * hw..base + per * hw];
                // attn[i][j] = softmax_j( Σ_d q[d][i]·scale · k[d][j] )
                let mut qt = vec![0.0f32; hw * kd];
                for d in 0..kd {
                    for i in 0..hw {
                        qt[i * kd + d] = q[d * hw + i] * scale;
                    }
                }
                let mut attn = ops::matmul(&qt, k, hw, kd, hw);
                attn.par_chunks_mut(hw.max(1))
                    .for_each(|row| ops::softmax_strided(row, 0, hw, 1));
                // out[d][i] = Σ_j v[d][j]·attn[i][j]: attn read through its strides as attnᵀ,
                // the product written in place.
                let dst = (b * c + hh * hd) * hw;
                let o = &mut out[dst..dst + hd * hw];
                ops::gemm_bt((v, hw), (&attn, hw), (o, hw), (hd, hw, hw));
                v_all[dst..dst + hd * hw].copy_from_slice(v);
            }
        }
        let pe = self.sub(m, "pe", &RefTensor::new(v_all, vec![n, c, h, w]))?;
        let sum = ops::add(&RefTensor::new(out, vec![n, c, h, w]), &pe);
        self.sub(m, "proj", &sum)
    }
}
