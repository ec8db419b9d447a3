//! YOLO12's area attention: `AAttn`, `ABlock`, `A2C2f`.
//!
//! `AAttn` cuts the H·W positions, in raster order, into `area` equal runs and attends within
//! each run only; per head, the `qkv` conv's channels hold the head's query, key and value
//! (`head_dim` each) in that order. Ultralytics 8.4's forward is plain matrix products and a
//! softmax (no fused or flash attention kernel), so the export matches it exactly.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
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
        "AAttn",
        "area attention: multi-head attention within `area` runs of positions, plus a positional depthwise conv",
        |b, s, m, x| b.aattn(s, m, &x.one("AAttn")?),
        |r, m, x| r.aattn(m, &x.one("AAttn")?),
    ),
    layer(
        "ABlock",
        "`AAttn` then an MLP, each with a residual",
        |b, s, m, x| b.ablock(s, m, &x.one("ABlock")?),
        |r, m, x| r.ablock(m, &x.one("ABlock")?),
    ),
    layer(
        "A2C2f",
        "cv1, chained `ABlock` pairs (or `C3k`s), concatenation, cv2, plus the input scaled by `gamma` when residual (YOLO12)",
        |b, s, m, x| b.a2c2f(s, m, &x.one("A2C2f")?),
        |r, m, x| r.a2c2f(m, &x.one("A2C2f")?),
    ),
];

// ---- parse (shared) ----

/// `AAttn`'s layout, read and checked once for both backends.
pub struct AreaAttnParams {
    /// `num_heads`.
    pub heads: i64,
    /// `head_dim`: query, key and value channels per head.
    pub head_dim: i64,
    /// `all_head_dim` = heads · head_dim (older checkpoints lack it and Ultralytics derives it).
    pub all: i64,
    /// Runs of positions attended separately (`area`; 1 or less: all positions together).
    pub area: i64,
    /// The query scale, head_dim^-0.5.
    pub scale: f32,
}

impl AreaAttnParams {
    /// Reads `m`, an `AAttn`.
    pub fn parse(m: ModuleRef) -> BuildResult<AreaAttnParams> {
        let dim = |k: &str| {
            m.int(k)
                .filter(|v| (1..=1 << 16).contains(v))
                .ok_or_else(|| LayerError::bad_attr("AAttn", k, m.int(k), "is not a usable size"))
        };
        let (heads, head_dim) = (dim("num_heads")?, dim("head_dim")?);
        let all = heads * head_dim;
        if m.int("all_head_dim").is_some_and(|a| a != all) {
            return Err(LayerError::bad_attr(
                "AAttn",
                "all_head_dim",
                m.int("all_head_dim"),
                format!("for {heads} heads of {head_dim}"),
            ));
        }
        let area = m
            .int("area")
            .ok_or_else(|| LayerError::missing("AAttn", "area"))?;
        if area > 1 << 16 {
            return Err(LayerError::bad_attr("AAttn", "area", area, "is over 65536"));
        }
        Ok(AreaAttnParams {
            heads,
            head_dim,
            all,
            area: area.max(1),
            scale: (head_dim as f64).powf(-0.5) as f32,
        })
    }

    /// The positions per area of an `h`×`w` map; Ultralytics' reshape fails unless `area`
    /// divides them.
    fn run_length(&self, h: i64, w: i64) -> BuildResult<i64> {
        let n = h * w;
        if n % self.area != 0 {
            return Err(LayerError::shape(
                "AAttn",
                format!(
                    "cannot cut {h}x{w} = {n} positions into {} equal areas",
                    self.area
                ),
            ));
        }
        Ok(n / self.area)
    }
}

/// `A2C2f`'s `gamma` (one scale per output channel, when residual), checked against `channels`.
fn gamma(m: ModuleRef, channels: usize) -> BuildResult<Option<Vec<f32>>> {
    let Some((g, _)) = m.tensor_f32("gamma")? else {
        return Ok(None);
    };
    check::per_channel(&m, "gamma", &g, channels)?;
    Ok(Some(g))
}

/// Two values a residual adds must have one shape.
fn same_shape(scope: &str, a: &GraphValue, b: &GraphValue) -> BuildResult<()> {
    if a.shape != b.shape {
        return Err(LayerError::shape(
            scope,
            format!("adds {:?} to {:?}", b.shape, a.shape),
        ));
    }
    Ok(())
}

// ---- emit ----

impl Builder<'_> {
    /// `AAttn`: the qkv conv's output as (B, area, heads, 3·head_dim, positions per area),
    /// attention within each area, values back to (B, C, H, W) for the positional conv `pe`,
    /// their sum through `proj`.
    pub(crate) fn aattn(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let p = AreaAttnParams::parse(m)?;
        let [b, c, h, w] = check::nchw(x, scope)?;
        p.run_length(h, w)?;
        let (nh, hd, a) = (p.heads, p.head_dim, p.area);
        let qkv = self.sub_conv(scope, m, "qkv", x)?;
        if check::nchw(&qkv, scope)?[1] != 3 * p.all {
            return Err(LayerError::shape(
                scope,
                format!("qkv gives {:?}, not 3 x {nh} heads of {hd}", qkv.shape),
            ));
        }
        let perm = |p: &[i64]| vec![("perm", Attr::Ints(p.to_vec()))];
        // Position n = area·np + i; channel = head·3·hd + j. No shape below holds the spatial
        // size (np is inferred, the maps take the input's shape: every Ultralytics AAttn has
        // all_head_dim == its input's channels), so the nodes also serve a dynamic input.
        let like = (c == p.all).then(|| self.b.node(scope, "Shape", &[&x.name], vec![]));
        let r = if a > 1 {
            let r = self.b.reshape(scope, &qkv.name, &[0, nh, 3 * hd, a, -1]);
            self.b
                .node(scope, "Transpose", &[&r], perm(&[0, 3, 1, 2, 4]))
        } else {
            self.b.reshape(scope, &qkv.name, &[0, 1, nh, 3 * hd, -1])
        };
        let qkv = self.b.split(scope, &r, 3, &[hd, hd, hd]);
        let s = self.b.weight(&format!("{scope}/scale"), &[], &[p.scale]);
        let qs = self.b.bin(scope, "Mul", &qkv[0], &s);
        let swap = [0, 1, 2, 4, 3];
        let qt = self.b.node(scope, "Transpose", &[&qs], perm(&swap));
        let logits = self.b.bin(scope, "MatMul", &qt, &qkv[1]);
        let attn = self
            .b
            .node(scope, "Softmax", &[&logits], vec![("axis", Attr::Int(-1))]);
        let at = self.b.node(scope, "Transpose", &[&attn], perm(&swap));
        let o = self.b.bin(scope, "MatMul", &qkv[2], &at);
        let map = vec![b, p.all, h, w];
        let mut back = |t: &str| {
            let t = if a > 1 {
                self.b
                    .node(scope, "Transpose", &[t], perm(&[0, 2, 3, 1, 4]))
            } else {
                t.to_string()
            };
            let name = match &like {
                Some(like) => self.b.node(scope, "Reshape", &[&t, like], vec![]),
                None => self.b.reshape(scope, &t, &[0, p.all, h, w]),
            };
            GraphValue {
                name,
                shape: map.clone(),
            }
        };
        let (o, v) = (back(&o), back(&qkv[2]));
        let pe = self.sub_conv(scope, m, "pe", &v)?;
        if pe.shape != map {
            return Err(LayerError::shape(
                scope,
                format!("pe gives {:?}, not {map:?}", pe.shape),
            ));
        }
        let sum = self.add(scope, &o, &pe);
        self.sub_conv(scope, m, "proj", &sum)
    }

    /// `ABlock`: x + attn(x), then that plus mlp of it.
    pub(crate) fn ablock(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let a = self.aattn(&format!("{scope}.attn"), m.child("attn")?, x)?;
        same_shape(scope, x, &a)?;
        let x1 = self.add(scope, x, &a);
        let f = self.sub(scope, m, "mlp", &x1)?;
        same_shape(scope, &x1, &f)?;
        Ok(self.add(scope, &x1, &f))
    }

    /// `A2C2f`: cv1, each block of `m` on the previous output, all concatenated, cv2; with
    /// `gamma`, x + gamma·y.
    pub(crate) fn a2c2f(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let mut ys = vec![self.sub_conv(scope, m, "cv1", x)?];
        for (i, (_, blk)) in m.child("m")?.children().into_iter().enumerate() {
            let last = ys.last().expect("cv1 output").clone();
            ys.push(self.module(&format!("{scope}.m.{i}"), blk, LayerInput::One(last))?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        let y = self.sub_conv(scope, m, "cv2", &cat)?;
        let c = check::nchw(&y, scope)?[1];
        let Some(g) = gamma(m, c as usize)? else {
            return Ok(y);
        };
        same_shape(scope, x, &y)?;
        let gn = self.b.weight(&format!("{scope}.gamma"), &[1, c, 1, 1], &g);
        let scaled = GraphValue {
            name: self.b.bin(scope, "Mul", &gn, &y.name),
            shape: y.shape.clone(),
        };
        Ok(self.add(scope, x, &scaled))
    }
}

// ---- run ----

/// Attention of `n` positions: q and k are (kd, n), v is (vd, n), row-major; returns (vd, n)
/// with out[d][i] = Σ_j v[d][j]·softmax_j(Σ_c q[c][i]·scale·k[c][j]).
fn attend(q: &[f32], k: &[f32], v: &[f32], kd: usize, vd: usize, n: usize, scale: f32) -> Vec<f32> {
    let mut qt = vec![0.0f32; n * kd];
    for c in 0..kd {
        for i in 0..n {
            qt[i * kd + c] = q[c * n + i] * scale;
        }
    }
    let mut attn = ops::matmul(&qt, k, n, kd, n);
    for row in attn.chunks_mut(n) {
        ops::softmax_strided(row, 0, n, 1);
    }
    let mut at = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            at[j * n + i] = attn[i * n + j];
        }
    }
    ops::matmul(v, &at, vd, n, n)
}

impl Reference<'_> {
    /// `AAttn`: per image, area and head, gathers the area's query, key and value rows,
    /// attends, and scatters the result and the values back to (C, H·W).
    pub(crate) fn aattn(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let (n, _, h, w) = shape::nchw(x, "AAttn")?;
        let p = AreaAttnParams::parse(m)?;
        let np = p.run_length(h as i64, w as i64)? as usize;
        let (nh, hd, a, all) = (
            p.heads as usize,
            p.head_dim as usize,
            p.area as usize,
            p.all as usize,
        );
        let qkv = self.sub(m, "qkv", x)?;
        if qkv.shape != [n, 3 * all, h, w] {
            return Err(LayerError::shape(
                "AAttn",
                format!(
                    "qkv {:?} does not hold {nh} heads of 3 x {hd} at {h}x{w}",
                    qkv.shape
                ),
            ));
        }
        let hw = h * w;
        let mut out = vec![0.0f32; n * all * hw];
        let mut vs = vec![0.0f32; n * all * hw];
        let mut part = vec![0.0f32; 3 * hd * np];
        for b in 0..n {
            for area in 0..a {
                for head in 0..nh {
                    // Rows head·3·hd .. (head+1)·3·hd, columns area·np .. (area+1)·np.
                    for (r, row) in part.chunks_mut(np).enumerate() {
                        let src = ((b * 3 * all) + head * 3 * hd + r) * hw + area * np;
                        row.copy_from_slice(&qkv.data[src..src + np]);
                    }
                    let (q, rest) = part.split_at(hd * np);
                    let (k, v) = rest.split_at(hd * np);
                    let o = attend(q, k, v, hd, hd, np, p.scale);
                    for d in 0..hd {
                        let dst = (b * all + head * hd + d) * hw + area * np;
                        out[dst..dst + np].copy_from_slice(&o[d * np..(d + 1) * np]);
                        vs[dst..dst + np].copy_from_slice(&v[d * np..(d + 1) * np]);
                    }
                }
            }
        }
        let pe = self.sub(m, "pe", &RefTensor::new(vs, vec![n, all, h, w]))?;
        let out = RefTensor::new(out, vec![n, all, h, w]);
        shape::same_shape(&out, &pe, "AAttn pe")?;
        self.sub(m, "proj", &ops::add(&out, &pe))
    }

    pub(crate) fn ablock(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let a = self.aattn(m.child("attn")?, x)?;
        shape::same_shape(x, &a, "ABlock")?;
        let x1 = ops::add(x, &a);
        let f = self.sub(m, "mlp", &x1)?;
        shape::same_shape(&x1, &f, "ABlock")?;
        Ok(ops::add(&x1, &f))
    }

    pub(crate) fn a2c2f(&mut self, m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
        let mut ys = vec![self.sub(m, "cv1", x)?];
        for (_, blk) in m.child("m")?.children() {
            let last = ys.last().expect("cv1").clone();
            ys.push(self.module(blk, LayerInput::One(last))?);
        }
        let refs = ys.iter().collect::<Vec<_>>();
        shape::same_maps(&refs, "A2C2f")?;
        let mut y = self.sub(m, "cv2", &ops::cat_channels(&refs))?;
        let (_, c, h, w) = shape::nchw(&y, "A2C2f")?;
        let Some(g) = gamma(m, c)? else {
            return Ok(y);
        };
        shape::same_shape(x, &y, "A2C2f")?;
        for (i, v) in y.data.iter_mut().enumerate() {
            *v = x.data[i] + g[(i / (h * w)) % c] * *v;
        }
        Ok(y)
    }
}
