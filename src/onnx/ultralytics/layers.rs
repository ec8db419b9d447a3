//! torch.nn and Ultralytics building blocks: convolutions (BatchNorm folded), activations,
//! pooling, resizing, concatenation, and the Bottleneck / C2f / C3 / SPPF blocks.

use super::Builder;
use crate::checkpoint::py::{M, R};
use crate::onnx::graph::V;
use crate::onnx::proto::Attr;

/// What a layer receives: one tensor, or several (Concat, Detect).
pub enum In {
    /// A single input.
    One(V),
    /// A list of inputs.
    Many(Vec<V>),
}

impl In {
    /// The single input, or an error naming the layer.
    pub fn one(self, what: &str) -> R<V> {
        match self {
            In::One(v) => Ok(v),
            In::Many(_) => Err(format!("{what} expects one input, got a list")),
        }
    }
}

fn pair(m: &M, name: &str, default: i64) -> R<[i64; 2]> {
    match m.ints(name).as_deref() {
        None => Ok([default, default]),
        Some([a]) => Ok([*a, *a]),
        Some([a, b]) => Ok([*a, *b]),
        Some(other) => Err(format!("{}.{name} = {other:?} is not 2-D", m.class())),
    }
}

fn out_size(size: i64, k: i64, s: i64, p: i64, d: i64) -> i64 {
    (size + 2 * p - d * (k - 1) - 1).div_euclid(s) + 1
}

/// The (N, C, H, W) dims of a feature map, or an error naming the layer: a malformed module tree
/// can route a flat output (a classifier's) into a layer that expects a feature map.
pub(super) fn nchw(x: &V, what: &str) -> R<[i64; 4]> {
    match x.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(format!(
            "{what} expects a 4-D feature map, got shape {:?}",
            x.shape
        )),
    }
}

/// A layer's output must have positive spatial size: a kernel larger than its (padded) input, a
/// stride or scale from a malformed checkpoint would otherwise give negative sizes that later size
/// computations turn into huge allocations. The batch dimension is left alone (-1 when dynamic).
pub(super) fn positive(what: &str, shape: Vec<i64>) -> R<Vec<i64>> {
    if shape.iter().skip(1).any(|&d| d <= 0) {
        return Err(format!("{what}: the output would have shape {shape:?}"));
    }
    Ok(shape)
}

/// A convolution weight's (O, I, kh, kw) dims, checked against the data and for sizes the
/// arithmetic below can hold.
fn weight4(m: &M, data: &[f32], ws: &[i64]) -> R<[i64; 4]> {
    let [o, i, kh, kw] = ws[..] else {
        return Err(format!("{} weight has shape {ws:?}, not 4-D", m.class()));
    };
    let limit = 1 << 20;
    if [o, i, kh, kw].iter().any(|&d| d <= 0 || d > limit)
        || (o * i * kh * kw) as usize != data.len()
    {
        return Err(format!("{} weight shape {ws:?} is not usable", m.class()));
    }
    Ok([o, i, kh, kw])
}

/// Strides and dilations must be positive, paddings non-negative, all small.
fn check_geometry(m: &M, positive: &[[i64; 2]], non_negative: &[[i64; 2]]) -> R<()> {
    let bad_pos = positive
        .iter()
        .flatten()
        .any(|&v| !(1..=1 << 16).contains(&v));
    let bad_nonneg = non_negative
        .iter()
        .flatten()
        .any(|&v| !(0..=1 << 16).contains(&v));
    if bad_pos || bad_nonneg {
        return Err(format!(
            "{} has an unusable stride, dilation or padding ({positive:?}, {non_negative:?})",
            m.class()
        ));
    }
    Ok(())
}

/// A per-channel vector of a module (BatchNorm parameter, bias) must have one value per channel.
fn per_channel(m: &M, name: &str, v: &[f32], channels: usize) -> R<()> {
    if v.len() != channels {
        return Err(format!(
            "{}.{name} has {} values for {channels} channels",
            m.class(),
            v.len()
        ));
    }
    Ok(())
}

impl Builder<'_> {
    /// `nn.Conv2d`, with an optional `nn.BatchNorm2d` folded into its weights in f32.
    pub fn conv2d(&mut self, scope: &str, m: M, bn: Option<M>, x: &V) -> R<V> {
        let (mut w, ws) = m.need_f32("weight")?;
        let ws = weight4(&m, &w, &ws)?;
        let [xn, _, xh, xw] = nchw(x, scope)?;
        let bias = m.tensor_f32("bias")?.map(|(b, _)| b);
        let [sh, sw] = pair(&m, "stride", 1)?;
        let [dh, dw] = pair(&m, "dilation", 1)?;
        let [ph, pw] = match m.str("padding") {
            Some("valid") => [0, 0],
            Some("same") => [dh * (ws[2] - 1) / 2, dw * (ws[3] - 1) / 2],
            Some(other) => return Err(format!("Conv2d padding '{other}'")),
            None => pair(&m, "padding", 0)?,
        };
        if m.str("padding_mode").is_some_and(|p| p != "zeros") {
            return Err(format!("Conv2d padding_mode {:?}", m.str("padding_mode")));
        }
        check_geometry(&m, &[[sh, sw], [dh, dw]], &[[ph, pw]])?;
        let groups = m.int("groups").unwrap_or(1);
        let out_c = ws[0] as usize;
        let per = w.len() / out_c.max(1);
        let mut b = bias.unwrap_or_else(|| vec![0.0; out_c]);
        per_channel(&m, "bias", &b, out_c)?;
        if let Some(bn) = bn {
            // Same operations, in the same order and precision, as Ultralytics' fuse_conv_and_bn.
            let (gamma, _) = bn.need_f32("weight")?;
            let (beta, _) = bn.need_f32("bias")?;
            let (mean, _) = bn.need_f32("running_mean")?;
            let (var, _) = bn.need_f32("running_var")?;
            for (name, v) in [
                ("weight", &gamma),
                ("bias", &beta),
                ("running_mean", &mean),
                ("running_var", &var),
            ] {
                per_channel(&bn, name, v, out_c)?;
            }
            let eps = bn.float("eps").unwrap_or(1e-5) as f32;
            for o in 0..out_c {
                let scale = gamma[o] / (eps + var[o]).sqrt();
                for v in &mut w[o * per..(o + 1) * per] {
                    *v *= scale;
                }
                let b_bn = beta[o] - gamma[o] * mean[o] / (var[o] + eps).sqrt();
                b[o] = scale * b[o] + b_bn;
            }
        }
        let wn = self.b.weight(&format!("{scope}.weight"), &ws, &w);
        let bn_ = self.b.weight(&format!("{scope}.bias"), &[out_c as i64], &b);
        let y = self.b.node(
            scope,
            "Conv",
            &[&x.name, &wn, &bn_],
            vec![
                ("dilations", Attr::Ints(vec![dh, dw])),
                ("group", Attr::Int(groups)),
                ("kernel_shape", Attr::Ints(vec![ws[2], ws[3]])),
                ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                ("strides", Attr::Ints(vec![sh, sw])),
            ],
        );
        let shape = positive(
            scope,
            vec![
                xn,
                ws[0],
                out_size(xh, ws[2], sh, ph, dh),
                out_size(xw, ws[3], sw, pw, dw),
            ],
        )?;
        Ok(V { name: y, shape })
    }

    /// `nn.ConvTranspose2d` (weights laid out as ONNX expects: in, out/groups, kh, kw).
    pub fn conv_transpose(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let (w, ws) = m.need_f32("weight")?;
        let ws = weight4(&m, &w, &ws)?;
        let [xn, _, xh, xw] = nchw(x, scope)?;
        let groups = m.int("groups").unwrap_or(1);
        if !(1..=1 << 16).contains(&groups) {
            return Err(format!("{} groups = {groups}", m.class()));
        }
        let out_c = ws[1] * groups;
        let b = m
            .tensor_f32("bias")?
            .map(|(b, _)| b)
            .unwrap_or_else(|| vec![0.0; out_c as usize]);
        per_channel(&m, "bias", &b, out_c as usize)?;
        let [sh, sw] = pair(&m, "stride", 1)?;
        let [ph, pw] = pair(&m, "padding", 0)?;
        let [dh, dw] = pair(&m, "dilation", 1)?;
        let [oh, ow] = pair(&m, "output_padding", 0)?;
        check_geometry(&m, &[[sh, sw], [dh, dw]], &[[ph, pw], [oh, ow]])?;
        let wn = self.b.weight(&format!("{scope}.weight"), &ws, &w);
        let bn = self.b.weight(&format!("{scope}.bias"), &[out_c], &b);
        let y = self.b.node(
            scope,
            "ConvTranspose",
            &[&x.name, &wn, &bn],
            vec![
                ("dilations", Attr::Ints(vec![dh, dw])),
                ("group", Attr::Int(groups)),
                ("kernel_shape", Attr::Ints(vec![ws[2], ws[3]])),
                ("output_padding", Attr::Ints(vec![oh, ow])),
                ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                ("strides", Attr::Ints(vec![sh, sw])),
            ],
        );
        let size = |i: i64, k: i64, s: i64, p: i64, d: i64, o: i64| {
            (i - 1) * s - 2 * p + d * (k - 1) + o + 1
        };
        let shape = positive(
            scope,
            vec![
                xn,
                out_c,
                size(xh, ws[2], sh, ph, dh, oh),
                size(xw, ws[3], sw, pw, dw, ow),
            ],
        )?;
        Ok(V { name: y, shape })
    }

    /// An activation module applied to `x` (Identity returns `x`).
    pub fn act(&mut self, scope: &str, m: Option<M>, x: V) -> R<V> {
        let Some(m) = m else { return Ok(x) };
        let s = format!("{scope}/act");
        let name = match m.class().as_str() {
            "Identity" => return Ok(x),
            "SiLU" => {
                let sig = self.b.node(&s, "Sigmoid", &[&x.name], vec![]);
                self.b.bin(&s, "Mul", &x.name, &sig)
            }
            "ReLU" => self.b.node(&s, "Relu", &[&x.name], vec![]),
            "Sigmoid" => self.b.node(&s, "Sigmoid", &[&x.name], vec![]),
            "Tanh" => self.b.node(&s, "Tanh", &[&x.name], vec![]),
            "Hardswish" => self.b.node(&s, "HardSwish", &[&x.name], vec![]),
            "LeakyReLU" => {
                let alpha = m.float("negative_slope").unwrap_or(0.01) as f32;
                self.b.node(
                    &s,
                    "LeakyRelu",
                    &[&x.name],
                    vec![("alpha", Attr::Float(alpha))],
                )
            }
            "Mish" => {
                let sp = self.b.node(&s, "Softplus", &[&x.name], vec![]);
                let t = self.b.node(&s, "Tanh", &[&sp], vec![]);
                self.b.bin(&s, "Mul", &x.name, &t)
            }
            other => return Err(format!("activation {other}")),
        };
        Ok(V {
            name,
            shape: x.shape,
        })
    }

    /// Ultralytics `Conv` / `DWConv`: conv, batch norm (folded), activation.
    pub fn conv_block(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let y = self.conv2d(
            &format!("{scope}.conv"),
            m.child("conv")?,
            m.opt_child("bn"),
            x,
        )?;
        self.act(scope, m.opt_child("act"), y)
    }

    /// `nn.MaxPool2d`.
    pub fn maxpool(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let [kh, kw] = pair(&m, "kernel_size", 1)?;
        let [sh, sw] = match m.attr("stride") {
            None | Some(crate::checkpoint::value::Value::None) => [kh, kw],
            _ => pair(&m, "stride", 1)?,
        };
        let [ph, pw] = pair(&m, "padding", 0)?;
        let [dh, dw] = pair(&m, "dilation", 1)?;
        if m.bool("ceil_mode") == Some(true) {
            return Err("MaxPool2d ceil_mode=True".into());
        }
        check_geometry(&m, &[[kh, kw], [sh, sw], [dh, dw]], &[[ph, pw]])?;
        let [xn, xc, xh, xw] = nchw(x, scope)?;
        let y = self.b.node(
            scope,
            "MaxPool",
            &[&x.name],
            vec![
                ("dilations", Attr::Ints(vec![dh, dw])),
                ("kernel_shape", Attr::Ints(vec![kh, kw])),
                ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                ("strides", Attr::Ints(vec![sh, sw])),
            ],
        );
        let shape = positive(
            scope,
            vec![
                xn,
                xc,
                out_size(xh, kh, sh, ph, dh),
                out_size(xw, kw, sw, pw, dw),
            ],
        )?;
        Ok(V { name: y, shape })
    }

    /// `nn.Upsample(scale_factor, mode='nearest')` as `Resize`.
    pub fn upsample(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let mode = m.str("mode").unwrap_or("nearest");
        if mode != "nearest" {
            return Err(format!("Upsample mode '{mode}'"));
        }
        let f = m
            .float("scale_factor")
            .or_else(|| {
                m.ints("scale_factor")
                    .and_then(|v| v.first().map(|&i| i as f64))
            })
            .ok_or("Upsample without scale_factor")?;
        if !(f.is_finite() && f > 0.0 && f <= 64.0) {
            return Err(format!("Upsample scale_factor {f}"));
        }
        let [xn, xc, xh, xw] = nchw(x, scope)?;
        let scales = self
            .b
            .f32s(&format!("{scope}/scales"), &[1.0, 1.0, f as f32, f as f32]);
        let y = self.b.node(
            scope,
            "Resize",
            &[&x.name, "", &scales],
            vec![
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("mode", Attr::Str("nearest".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        );
        let shape = positive(
            scope,
            vec![
                xn,
                xc,
                (xh as f64 * f).floor() as i64,
                (xw as f64 * f).floor() as i64,
            ],
        )?;
        Ok(V { name: y, shape })
    }

    /// Concatenation of several values of one rank along `axis`.
    pub fn cat(&mut self, scope: &str, xs: &[V], axis: i64) -> R<V> {
        let first = xs
            .first()
            .ok_or_else(|| format!("{scope}: nothing to concatenate"))?;
        let rank = first.shape.len();
        if rank == 0 || xs.iter().any(|v| v.shape.len() != rank) {
            return Err(format!(
                "{scope}: cannot concatenate values of different ranks"
            ));
        }
        let names: Vec<&str> = xs.iter().map(|v| v.name.as_str()).collect();
        let y = self.b.concat(scope, &names, axis);
        let mut shape = first.shape.clone();
        let ax = axis.rem_euclid(rank as i64) as usize;
        shape[ax] = xs.iter().map(|v| v.shape[ax]).sum();
        Ok(V { name: y, shape })
    }

    /// Elementwise sum of two same-shaped values.
    pub fn add(&mut self, scope: &str, a: &V, b: &V) -> V {
        V {
            name: self.b.bin(scope, "Add", &a.name, &b.name),
            shape: a.shape.clone(),
        }
    }

    /// `Bottleneck`: cv2(cv1(x)), plus x when `add`.
    pub fn bottleneck(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        let y = self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &a)?;
        Ok(if m.bool("add").unwrap_or(false) {
            self.add(scope, x, &y)
        } else {
            y
        })
    }

    /// `C2f`: split cv1's output in two, chain the bottlenecks on the second half, concatenate all.
    pub fn c2f(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        let [an, ac, ah, aw] = nchw(&a, scope)?;
        let c = m.int("c").unwrap_or(ac / 2);
        if c <= 0 || 2 * c != ac {
            return Err(format!(
                "{scope}: C2f splits {ac} channels into two halves of {c}"
            ));
        }
        let parts = self.b.split(scope, &a.name, 1, &[c, c]);
        let mut ys: Vec<V> = parts
            .into_iter()
            .map(|name| V {
                name,
                shape: vec![an, c, ah, aw],
            })
            .collect();
        for (i, (_, b)) in m.child("m")?.children().into_iter().enumerate() {
            let last = ys.last().expect("two halves").clone();
            ys.push(self.module(&format!("{scope}.m.{i}"), b, In::One(last))?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &cat)
    }

    /// `C3`: cv3(cat(m(cv1(x)), cv2(x))).
    pub fn c3(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let mut a = self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?;
        for (i, (_, b)) in m.child("m")?.children().into_iter().enumerate() {
            a = self.module(&format!("{scope}.m.{i}"), b, In::One(a))?;
        }
        let b = self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, x)?;
        let cat = self.cat(scope, &[a, b], 1)?;
        self.conv_block(&format!("{scope}.cv3"), m.child("cv3")?, &cat)
    }

    /// `SPPF`: cv1, `n` chained max pools, concatenation, cv2, plus x when `add`.
    pub fn sppf(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        let mut ys = vec![self.conv_block(&format!("{scope}.cv1"), m.child("cv1")?, x)?];
        let pool = m.child("m")?;
        for _ in 0..m.int("n").unwrap_or(3) {
            let last = ys.last().expect("cv1 output").clone();
            ys.push(self.maxpool(&format!("{scope}.m"), pool, &last)?);
        }
        let cat = self.cat(scope, &ys, 1)?;
        let y = self.conv_block(&format!("{scope}.cv2"), m.child("cv2")?, &cat)?;
        Ok(if m.bool("add").unwrap_or(false) {
            self.add(scope, x, &y)
        } else {
            y
        })
    }
}
