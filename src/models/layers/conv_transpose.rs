//! `nn.ConvTranspose2d` (YOLOv6's upsampling; `Proto` and the dense heads read one too): one
//! parse for both backends, the ONNX `ConvTranspose` node, and the reference's scatter loop.

use crate::checkpoint::py::ModuleRef;
use crate::models::registry::{Layer, layer};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::RefTensor;
use crate::reference::shape;

/// The classes of this file.
pub const LAYERS: &[Layer] = &[layer(
    "ConvTranspose2d",
    "transposed convolution (YOLOv6's upsampling; `Proto` reads one too)",
    |b, s, m, x| b.conv_transpose(s, m, &x.one("ConvTranspose2d")?),
    |_, m, x| conv_transpose(m, &x.one("ConvTranspose2d")?),
)];

// ---- parse (shared) ----

/// `nn.ConvTranspose2d`'s weights and geometry, read and checked once for both backends.
pub struct ConvTransposeParams {
    /// The weight, (I, O/groups, kh, kw) row-major, as ONNX expects it too.
    pub weight: Vec<f32>,
    /// The weight's shape.
    pub shape: [i64; 4],
    /// One bias per output channel, if the module has one.
    pub bias: Option<Vec<f32>>,
    /// Stride (h, w).
    pub stride: [i64; 2],
    /// Padding on each side (h, w).
    pub pad: [i64; 2],
    /// Dilation (h, w).
    pub dil: [i64; 2],
    /// Extra rows and columns on the bottom and right (h, w).
    pub out_pad: [i64; 2],
    /// Groups.
    pub groups: i64,
}

impl ConvTransposeParams {
    /// Reads `m`, an `nn.ConvTranspose2d`.
    pub fn parse(m: ModuleRef) -> BuildResult<ConvTransposeParams> {
        let (weight, ws) = m.need_f32("weight")?;
        let shape = check::weight4(&m, &weight, &ws)?;
        let groups = m.int("groups").unwrap_or(1);
        if !(1..=1 << 16).contains(&groups) {
            return Err(LayerError::bad_attr(
                m.class(),
                "groups",
                groups,
                "is not in 1..=65536",
            ));
        }
        let bias = m.tensor_f32("bias")?.map(|(b, _)| b);
        if let Some(b) = &bias {
            check::per_channel(&m, "bias", b, (shape[1] * groups) as usize)?;
        }
        let stride = check::pair(&m, "stride", 1)?;
        let pad = check::pair(&m, "padding", 0)?;
        let dil = check::pair(&m, "dilation", 1)?;
        let out_pad = check::pair(&m, "output_padding", 0)?;
        check::check_geometry(&m, &[stride, dil], &[pad, out_pad])?;
        Ok(ConvTransposeParams {
            weight,
            shape,
            bias,
            stride,
            pad,
            dil,
            out_pad,
            groups,
        })
    }
}

// ---- emit ----

impl Builder<'_> {
    /// `nn.ConvTranspose2d` (weights laid out as ONNX expects: in, out/groups, kh, kw).
    pub(crate) fn conv_transpose(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let p = ConvTransposeParams::parse(m)?;
        let [xn, _, xh, xw] = check::nchw(x, scope)?;
        let (w, ws, groups) = (p.weight, p.shape, p.groups);
        let out_c = ws[1] * groups;
        let b = p.bias.unwrap_or_else(|| vec![0.0; out_c as usize]);
        let ([sh, sw], [ph, pw], [dh, dw], [oh, ow]) = (p.stride, p.pad, p.dil, p.out_pad);
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
        let shape = check::positive(
            scope,
            vec![
                xn,
                out_c,
                size(xh, ws[2], sh, ph, dh, oh),
                size(xw, ws[3], sw, pw, dw, ow),
            ],
        )?;
        Ok(GraphValue { name: y, shape })
    }
}

// ---- run ----

/// `nn.ConvTranspose2d` by scattering each input pixel through the kernel.
pub(crate) fn conv_transpose(m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let ConvTransposeParams {
        weight: w,
        shape: ws,
        bias,
        stride,
        pad,
        dil,
        out_pad,
        groups,
    } = ConvTransposeParams::parse(m)?;
    // The scatter loop below handles what Ultralytics uses: one group, square stride and
    // padding, no dilation or output padding.
    let (true, true, [1, 1], [0, 0], 1) = (
        stride[0] == stride[1],
        pad[0] == pad[1],
        dil,
        out_pad,
        groups,
    ) else {
        return Err(LayerError::unsupported(
            "ConvTranspose2d",
            format!(
                "groups {groups}, stride {stride:?}, padding {pad:?}, dilation {dil:?}, output padding {out_pad:?}"
            ),
        ));
    };
    let (s, p) = (stride[0] as usize, pad[0] as usize);
    let (n, c, h, wd) = shape::nchw(x, "ConvTranspose2d")?;
    let [ci, o, kh, kw] = ws.map(|d| d as usize);
    if s == 0
        || ci != c
        || o == 0
        || kh == 0
        || kw == 0
        || ci * o * kh * kw != w.len()
        || h.saturating_sub(1) * s + kh < 2 * p + 1
        || wd.saturating_sub(1) * s + kw < 2 * p + 1
    {
        return Err(LayerError::shape(
            "ConvTranspose2d",
            format!(
                "weight {ws:?} (stride {s}, padding {p}) does not fit input {:?}",
                x.shape
            ),
        ));
    }
    if let Some(b) = &bias {
        shape::per_channel(b.len(), o, "ConvTranspose2d bias")?;
    }
    let oh = (h - 1) * s + kh - 2 * p;
    let ow = (wd - 1) * s + kw - 2 * p;
    let mut out = vec![0.0f32; n * o * oh * ow];
    for b in 0..n {
        for ci in 0..c {
            for iy in 0..h {
                for ix in 0..wd {
                    let v = x.data[((b * c + ci) * h + iy) * wd + ix];
                    for oc in 0..o {
                        for ky in 0..kh {
                            let y = (iy * s + ky) as isize - p as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let xx = (ix * s + kx) as isize - p as isize;
                                if xx < 0 || xx >= ow as isize {
                                    continue;
                                }
                                out[((b * o + oc) * oh + y as usize) * ow + xx as usize] +=
                                    v * w[((ci * o + oc) * kh + ky) * kw + kx];
                            }
                        }
                    }
                }
            }
        }
        if let Some(bias) = &bias {
            for oc in 0..o {
                for v in &mut out[(b * o + oc) * oh * ow..(b * o + oc + 1) * oh * ow] {
                    *v += bias[oc];
                }
            }
        }
    }
    Ok(RefTensor::new(out, vec![n, o, oh, ow]))
}
