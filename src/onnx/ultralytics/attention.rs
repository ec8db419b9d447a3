//! YOLO11's attention blocks: `Attention`, `PSABlock`, `C2PSA`, `PSA`.

use super::Builder;
use super::layers::In;
use crate::checkpoint::py::{M, R};
use crate::onnx::graph::V;
use crate::onnx::proto::Attr;

impl Builder<'_> {
    /// `Attention`: multi-head self-attention over the H·W positions, plus a depthwise positional
    /// conv of the values, then a projection.
    pub fn attention(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let heads = m.int("num_heads").ok_or("Attention without num_heads")?;
        let key_dim = m.int("key_dim").ok_or("Attention without key_dim")?;
        let head_dim = m.int("head_dim").ok_or("Attention without head_dim")?;
        let scale = m.float("scale").unwrap_or((key_dim as f64).powf(-0.5)) as f32;
        let [_, c, h, w] = super::layers::nchw(x, scope)?;
        let n = h * w;
        let qkv = self.conv_block(&format!("{scope}.qkv"), m.child("qkv")?, x)?;
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
        let o = self.b.reshape(scope, &o, &[0, c, h, w]);
        let v = self.b.reshape(scope, &p[2], &[0, c, h, w]);
        let v = V {
            name: v,
            shape: x.shape.clone(),
        };
        let pe = self.conv_block(&format!("{scope}.pe"), m.child("pe")?, &v)?;
        let sum = self.b.bin(scope, "Add", &o, &pe.name);
        let sum = V {
            name: sum,
            shape: x.shape.clone(),
        };
        self.conv_block(&format!("{scope}.proj"), m.child("proj")?, &sum)
    }

    /// `PSABlock`: attention then feed-forward, each with a residual when `add`.
    pub fn psablock(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let add = m.bool("add").unwrap_or(true);
        let a = self.attention(&format!("{scope}.attn"), m.child("attn")?, x)?;
        let x = if add { self.add(scope, x, &a) } else { a };
        let f = self.module(&format!("{scope}.ffn"), m.child("ffn")?, In::One(x.clone()))?;
        Ok(if add { self.add(scope, &x, &f) } else { f })
    }

    /// `C2PSA` (and `PSA`): split cv1's output, run the attention part on the second half,
    /// concatenate, cv2.
    pub fn c2psa(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        let c = m.int("c").ok_or("C2PSA without c")?;
        let [an, ac, ah, aw] = super::layers::nchw(&a, scope)?;
        if c <= 0 || 2 * c != ac {
            return Err(format!(
                "{scope}: C2PSA splits {ac} channels into two halves of {c}"
            ));
        }
        let parts = self.b.split(scope, &a.name, 1, &[c, c]);
        let half = |name: String| V {
            name,
            shape: vec![an, c, ah, aw],
        };
        let (first, mut second) = (half(parts[0].clone()), half(parts[1].clone()));
        if m.class() == "PSA" {
            let at = self.attention(&format!("{scope}.attn"), m.child("attn")?, &second)?;
            second = self.add(scope, &second, &at);
            let f = self.module(
                &format!("{scope}.ffn"),
                m.child("ffn")?,
                In::One(second.clone()),
            )?;
            second = self.add(scope, &second, &f);
        } else {
            second = self.module(&format!("{scope}.m"), m.child("m")?, In::One(second))?;
        }
        let cat = self.cat(scope, &[first, second], 1)?;
        self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &cat)
    }

    /// `Classify`: conv, global average pool, linear, softmax (export form): output (B, classes).
    pub fn classify(&mut self, scope: &str, m: M, x: In) -> R<V> {
        let x = match x {
            In::One(v) => v,
            In::Many(vs) => self.cat(scope, &vs, 1)?,
        };
        let c = self.conv_block(&format!("{scope}.conv"), m.child("conv")?, &x)?;
        let p = self.b.node(scope, "GlobalAveragePool", &[&c.name], vec![]);
        let f = self
            .b
            .node(scope, "Flatten", &[&p], vec![("axis", Attr::Int(1))]);
        let lin = m.child("linear")?;
        let (w, ws) = lin.need_f32("weight")?;
        let [xn, ..] = super::layers::nchw(&x, scope)?;
        let &[classes, _] = ws.as_slice() else {
            return Err(format!("{scope}.linear weight has shape {ws:?}, not 2-D"));
        };
        let b = lin
            .tensor_f32("bias")?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; classes.max(0) as usize]);
        let wn = self.b.weight(&format!("{scope}.linear.weight"), &ws, &w);
        let bn = self
            .b
            .weight(&format!("{scope}.linear.bias"), &[classes], &b);
        let y = self.b.node(
            scope,
            "Gemm",
            &[&f, &wn, &bn],
            vec![("transB", Attr::Int(1))],
        );
        let s = self
            .b
            .node(scope, "Softmax", &[&y], vec![("axis", Attr::Int(1))]);
        Ok(V {
            name: s,
            shape: vec![xn, classes],
        })
    }
}
