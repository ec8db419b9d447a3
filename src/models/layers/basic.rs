//! Containers and shape plumbing: `Sequential`, `ModuleList`, `Identity`, `Concat`,
//! `MaxPool2d`, `Upsample`, `ZeroPad2d`.

use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::registry::{Layer, layer, part};
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};
use crate::reference::ops::{self, RefTensor};
use crate::reference::shape;

/// The classes of this file.
pub const LAYERS: &[Layer] = &[
    layer(
        "Sequential",
        "its children in order",
        |b, s, m, x| {
            let mut x = x;
            for (name, c) in m.children() {
                x = LayerInput::One(b.module(&format!("{s}.{name}"), c, x)?);
            }
            x.one("Sequential")
        },
        |r, m, x| {
            let mut x = x;
            for (_, c) in m.children() {
                x = LayerInput::One(r.module(c, x)?);
            }
            x.one("Sequential")
        },
    ),
    part(
        "ModuleList",
        "C2f, C3, C3k2, C3k, SPP, Detect, Segment, Pose, OBB, HGBlock, RTDETRDecoder, MLP, DeformableTransformerDecoder, models.yolo.Detect, IDetect, IAuxDetect",
        "a list of branches or blocks its parent indexes",
    ),
    layer(
        "Identity",
        "passes its input on",
        |_, _, _, x| x.one("Identity"),
        |_, _, x| x.one("Identity"),
    ),
    layer(
        "Concat",
        "concatenation along `d` (channels)",
        |b, s, m, x| match x {
            LayerInput::One(v) => Ok(v),
            xs => b.cat(s, &xs.many(), m.int("d").unwrap_or(1)),
        },
        |_, m, x| match x {
            LayerInput::One(t) => Ok(t),
            xs => {
                let xs = xs.many();
                let d = m.int("d").unwrap_or(1);
                if d != 1 && d != -3 {
                    return Err(LayerError::unsupported("Concat", format!("dimension {d}")));
                }
                let refs = xs.iter().collect::<Vec<_>>();
                shape::same_maps(&refs, "Concat")?;
                Ok(ops::cat_channels(&refs))
            }
        },
    ),
    layer(
        "MaxPool2d",
        "max pooling (`ceil_mode=False`)",
        |b, s, m, x| b.maxpool(s, m, &x.one("MaxPool2d")?),
        |_, m, x| maxpool(m, &x.one("MaxPool2d")?),
    ),
    layer(
        "Upsample",
        "nearest-neighbour upsampling by `scale_factor` (`Resize`)",
        |b, s, m, x| b.upsample(s, m, &x.one("Upsample")?),
        |_, m, x| upsample(m, &x.one("Upsample")?),
    ),
    layer(
        "ZeroPad2d",
        "zero padding (left, right, top, bottom), as YOLOv3-tiny pads before a stride-1 pool",
        |b, s, m, x| b.zero_pad(s, m, &x.one("ZeroPad2d")?),
        |_, m, x| zero_pad(m, &x.one("ZeroPad2d")?),
    ),
];

// ---- parse (shared) ----

/// `nn.ZeroPad2d`'s padding (left, right, top, bottom); cropping (negative) is refused, and so is
/// padding beyond 1024 (Ultralytics pads by one), which would only make a hostile file allocate.
pub fn zero_pad_params(m: ModuleRef) -> BuildResult<[i64; 4]> {
    let p = match m.ints("padding").as_deref() {
        Some(&[a]) => [a; 4],
        Some(&[l, r, t, b]) => [l, r, t, b],
        other => {
            return Err(LayerError::bad_attr(
                "ZeroPad2d",
                "padding",
                other,
                "is neither 1 nor 4 ints",
            ));
        }
    };
    if p.iter().any(|v| !(0..=1024).contains(v)) {
        return Err(LayerError::bad_attr(
            "ZeroPad2d",
            "padding",
            p,
            "is outside 0..=1024",
        ));
    }
    if m.float("value").is_some_and(|v| v != 0.0) {
        return Err(LayerError::unsupported(
            "ZeroPad2d",
            format!("value {:?}", m.float("value")),
        ));
    }
    Ok(p)
}

/// `nn.MaxPool2d`'s window, read and checked once for both backends.
pub struct MaxPoolParams {
    /// Window (h, w).
    pub kernel: [i64; 2],
    /// Stride (h, w); the window when the module has none.
    pub stride: [i64; 2],
    /// Padding on each side (h, w).
    pub pad: [i64; 2],
    /// Dilation (h, w).
    pub dil: [i64; 2],
}

impl MaxPoolParams {
    /// Reads `m`, an `nn.MaxPool2d`; `ceil_mode=True` is refused.
    pub fn parse(m: ModuleRef) -> BuildResult<MaxPoolParams> {
        let kernel = check::pair(&m, "kernel_size", 1)?;
        let stride = match m.attr("stride") {
            None | Some(crate::checkpoint::value::Value::None) => kernel,
            _ => check::pair(&m, "stride", 1)?,
        };
        let pad = check::pair(&m, "padding", 0)?;
        let dil = check::pair(&m, "dilation", 1)?;
        if m.bool("ceil_mode")? == Some(true) {
            return Err(LayerError::unsupported("MaxPool2d", "ceil_mode=True"));
        }
        check::check_geometry(&m, &[kernel, stride, dil], &[pad])?;
        Ok(MaxPoolParams {
            kernel,
            stride,
            pad,
            dil,
        })
    }
}

/// `nn.Upsample`'s scale factor; only `mode='nearest'` is handled.
pub fn upsample_factor(m: ModuleRef) -> BuildResult<f64> {
    let mode = m.str("mode").unwrap_or("nearest");
    if mode != "nearest" {
        return Err(LayerError::unsupported(
            "Upsample",
            format!("mode '{mode}'"),
        ));
    }
    let f = m
        .float("scale_factor")
        .or_else(|| {
            m.ints("scale_factor")
                .and_then(|v| v.first().map(|&i| i as f64))
        })
        .ok_or_else(|| LayerError::missing("Upsample", "scale_factor"))?;
    if !(f.is_finite() && f > 0.0 && f <= 64.0) {
        return Err(LayerError::bad_attr(
            "Upsample",
            "scale_factor",
            f,
            "is not in (0, 64]",
        ));
    }
    Ok(f)
}

// ---- emit ----

impl Builder<'_> {
    /// `nn.MaxPool2d`.
    pub(crate) fn maxpool(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let MaxPoolParams {
            kernel: [kh, kw],
            stride: [sh, sw],
            pad: [ph, pw],
            dil: [dh, dw],
        } = MaxPoolParams::parse(m)?;
        let [xn, xc, xh, xw] = check::nchw(x, scope)?;
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
        let shape = check::positive(
            scope,
            vec![
                xn,
                xc,
                check::out_size(xh, kh, sh, ph, dh),
                check::out_size(xw, kw, sw, pw, dw),
            ],
        )?;
        Ok(GraphValue { name: y, shape })
    }

    /// `nn.Upsample(scale_factor, mode='nearest')` as `Resize`.
    pub(crate) fn upsample(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let f = upsample_factor(m)?;
        self.resize_nearest(scope, x, f)
    }

    /// Nearest-neighbour `Resize` of `x` by `f` (`F.interpolate(scale_factor=f)`).
    pub(crate) fn resize_nearest(
        &mut self,
        scope: &str,
        x: &GraphValue,
        f: f64,
    ) -> BuildResult<GraphValue> {
        let [xn, xc, xh, xw] = check::nchw(x, scope)?;
        let y = self.resize_nearest_node(scope, &x.name, [f as f32, f as f32]);
        let shape = check::positive(
            scope,
            vec![
                xn,
                xc,
                (xh as f64 * f).floor() as i64,
                (xw as f64 * f).floor() as i64,
            ],
        )?;
        Ok(GraphValue { name: y, shape })
    }

    /// The `Resize` node of a nearest-neighbour resize of `x` by `[fh, fw]`, picking source
    /// pixels as `F.interpolate(mode='nearest')` does (floor of dst / scale); its output's name.
    pub(crate) fn resize_nearest_node(
        &mut self,
        scope: &str,
        x: &str,
        [fh, fw]: [f32; 2],
    ) -> String {
        let scales = self.b.f32s(&format!("{scope}/scales"), &[1.0, 1.0, fh, fw]);
        self.b.node(
            scope,
            "Resize",
            &[x, "", &scales],
            vec![
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("mode", Attr::Str("nearest".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    }

    /// `nn.ZeroPad2d` as a constant `Pad`.
    pub(crate) fn zero_pad(
        &mut self,
        scope: &str,
        m: ModuleRef,
        x: &GraphValue,
    ) -> BuildResult<GraphValue> {
        let [l, r, t, bt] = zero_pad_params(m)?;
        let [xn, xc, xh, xw] = check::nchw(x, scope)?;
        let pads = self
            .b
            .ints(&format!("{scope}/pads"), &[0, 0, t, l, 0, 0, bt, r]);
        let y = self.b.node(
            scope,
            "Pad",
            &[&x.name, &pads],
            vec![("mode", Attr::Str("constant".into()))],
        );
        Ok(GraphValue {
            name: y,
            shape: vec![xn, xc, xh + t + bt, xw + l + r],
        })
    }

    /// Concatenation of several values of one rank along `axis`.
    pub(crate) fn cat(
        &mut self,
        scope: &str,
        xs: &[GraphValue],
        axis: i64,
    ) -> BuildResult<GraphValue> {
        let first = xs
            .first()
            .ok_or_else(|| LayerError::shape(scope, "nothing to concatenate"))?;
        let rank = first.shape.len();
        if rank == 0 || xs.iter().any(|v| v.shape.len() != rank) {
            return Err(LayerError::shape(
                scope,
                "cannot concatenate values of different ranks",
            ));
        }
        let names: Vec<&str> = xs.iter().map(|v| v.name.as_str()).collect();
        let y = self.b.concat(scope, &names, axis);
        let mut shape = first.shape.clone();
        let ax = axis.rem_euclid(rank as i64) as usize;
        shape[ax] = xs.iter().map(|v| v.shape[ax]).sum();
        Ok(GraphValue { name: y, shape })
    }

    /// Elementwise sum of two same-shaped values.
    pub(crate) fn add(&mut self, scope: &str, a: &GraphValue, b: &GraphValue) -> GraphValue {
        GraphValue {
            name: self.b.bin(scope, "Add", &a.name, &b.name),
            shape: a.shape.clone(),
        }
    }
}

// ---- run ----

/// `nn.MaxPool2d` (square windows without dilation, as Ultralytics uses).
pub fn maxpool(m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let p = MaxPoolParams::parse(m)?;
    let square = |v: [i64; 2]| (v[0] == v[1]).then_some(v[0] as usize);
    let (Some(k), Some(s), Some(pad), [1, 1]) =
        (square(p.kernel), square(p.stride), square(p.pad), p.dil)
    else {
        return Err(LayerError::unsupported(
            "MaxPool2d",
            "a non-square or dilated window",
        ));
    };
    shape::pool(x, k, s, pad, "MaxPool2d")?;
    Ok(ops::max_pool(x, k, s, pad))
}

/// `nn.Upsample` (nearest, integer factor).
pub fn upsample(m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let f = upsample_factor(m)?;
    if f.fract() != 0.0 {
        return Err(LayerError::unsupported(
            "Upsample",
            format!("a non-integer factor {f}"),
        ));
    }
    shape::upsample(x, f as usize, "Upsample")?;
    Ok(ops::upsample_nearest(x, f as usize))
}

/// `nn.ZeroPad2d`: each map copied into a larger zeroed one.
pub fn zero_pad(m: ModuleRef, x: &RefTensor) -> BuildResult<RefTensor> {
    let [l, r, t, b] = zero_pad_params(m)?.map(|v| v as usize);
    let (n, c, h, w) = shape::nchw(x, "ZeroPad2d")?;
    let (oh, ow) = (h + t + b, w + l + r);
    let mut out = vec![0.0f32; n * c * oh * ow];
    for p in 0..n * c {
        for y in 0..h {
            let src = &x.data[(p * h + y) * w..(p * h + y + 1) * w];
            let at = (p * oh + y + t) * ow + l;
            out[at..at + w].copy_from_slice(src);
        }
    }
    Ok(RefTensor::new(out, vec![n, c, oh, ow]))
}
