//! Kernels of the reference interpreter, on plain row-major f32 buffers: convolution (im2col +
//! GEMM, direct loops for depthwise), batch norm, activations, pooling, resizing.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// A dense tensor, row-major.
#[derive(Clone, Debug)]
pub struct T {
    /// Elements.
    pub data: Vec<f32>,
    /// Shape (NCHW for feature maps).
    pub shape: Vec<usize>,
}

impl T {
    /// Wraps data of a shape.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> T {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        T { data, shape }
    }

    /// (N, C, H, W) of a feature map.
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}

/// Convolution parameters.
pub struct ConvSpec {
    /// Stride (h, w).
    pub stride: (usize, usize),
    /// Padding (h, w).
    pub pad: (usize, usize),
    /// Dilation (h, w).
    pub dil: (usize, usize),
    /// Groups.
    pub groups: usize,
}

/// `out = a · b` for row-major slices (m×k)·(k×n).
fn gemm(a: &[f32], b: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    let a = ArrayView2::from_shape((m, k), a).expect("a shape");
    let b = ArrayView2::from_shape((k, n), b).expect("b shape");
    let mut c = ArrayViewMut2::from_shape((m, n), out).expect("c shape");
    general_mat_mul(1.0, &a, &b, 0.0, &mut c);
}

/// 2-D convolution; `w` is (O, C/groups, kh, kw), `bias` per output channel.
pub fn conv2d(x: &T, w: &[f32], wshape: &[usize], bias: Option<&[f32]>, s: &ConvSpec) -> T {
    let (n, c, h, wd) = x.nchw();
    let (o, cg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
    let oh = (h + 2 * s.pad.0 - s.dil.0 * (kh - 1) - 1) / s.stride.0 + 1;
    let ow = (wd + 2 * s.pad.1 - s.dil.1 * (kw - 1) - 1) / s.stride.1 + 1;
    let mut out = vec![0.0f32; n * o * oh * ow];
    let og = o / s.groups;
    let depthwise = s.groups == c && cg == 1 && og == 1;
    for b in 0..n {
        let xb = &x.data[b * c * h * wd..(b + 1) * c * h * wd];
        let ob = &mut out[b * o * oh * ow..(b + 1) * o * oh * ow];
        if depthwise {
            for ch in 0..c {
                let xc = &xb[ch * h * wd..(ch + 1) * h * wd];
                let wc = &w[ch * kh * kw..(ch + 1) * kh * kw];
                let oc = &mut ob[ch * oh * ow..(ch + 1) * oh * ow];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f32;
                        for ky in 0..kh {
                            let iy = (oy * s.stride.0 + ky * s.dil.0) as isize - s.pad.0 as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix =
                                    (ox * s.stride.1 + kx * s.dil.1) as isize - s.pad.1 as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += xc[iy as usize * wd + ix as usize] * wc[ky * kw + kx];
                            }
                        }
                        oc[oy * ow + ox] = acc;
                    }
                }
            }
        } else {
            let kdim = cg * kh * kw;
            let pointwise = kh == 1 && kw == 1 && s.stride == (1, 1) && s.pad == (0, 0);
            let mut cols = if pointwise {
                Vec::new()
            } else {
                vec![0.0f32; kdim * oh * ow]
            };
            for g in 0..s.groups {
                let xg = &xb[g * cg * h * wd..(g + 1) * cg * h * wd];
                let b_mat: &[f32] = if pointwise {
                    xg
                } else {
                    im2col(xg, cg, h, wd, kh, kw, oh, ow, s, &mut cols);
                    &cols
                };
                let wg = &w[g * og * kdim..(g + 1) * og * kdim];
                gemm(
                    wg,
                    b_mat,
                    &mut ob[g * og * oh * ow..(g + 1) * og * oh * ow],
                    og,
                    kdim,
                    oh * ow,
                );
            }
        }
        if let Some(bias) = bias {
            for (ch, &bv) in bias.iter().enumerate() {
                for v in &mut ob[ch * oh * ow..(ch + 1) * oh * ow] {
                    *v += bv;
                }
            }
        }
    }
    T::new(out, vec![n, o, oh, ow])
}

#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: &ConvSpec,
    cols: &mut [f32],
) {
    for ch in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = ((ch * kh + ky) * kw + kx) * oh * ow;
                for oy in 0..oh {
                    let iy = (oy * s.stride.0 + ky * s.dil.0) as isize - s.pad.0 as isize;
                    let dst = &mut cols[row + oy * ow..row + (oy + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &x[ch * h * w + iy as usize * w..ch * h * w + (iy as usize + 1) * w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * s.stride.1 + kx * s.dil.1) as isize - s.pad.1 as isize;
                        *d = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        }
    }
}

/// Inference batch norm: (x − mean) / sqrt(var + eps) · γ + β, per channel.
pub fn batch_norm(x: &mut T, gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) {
    let (n, c, h, w) = x.nchw();
    for b in 0..n {
        for ch in 0..c {
            let inv = 1.0 / (var[ch] + eps).sqrt();
            let base = (b * c + ch) * h * w;
            for v in &mut x.data[base..base + h * w] {
                *v = (*v - mean[ch]) * inv * gamma[ch] + beta[ch];
            }
        }
    }
}

/// Applies an elementwise function in place.
pub fn map(x: &mut T, f: impl Fn(f32) -> f32) {
    for v in &mut x.data {
        *v = f(*v);
    }
}

/// Logistic sigmoid.
pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Max pooling with −∞ padding.
pub fn max_pool(x: &T, k: usize, stride: usize, pad: usize) -> T {
    let (n, c, h, w) = x.nchw();
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    let mut out = vec![f32::NEG_INFINITY; n * c * oh * ow];
    for p in 0..n * c {
        let src = &x.data[p * h * w..(p + 1) * h * w];
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix >= 0 && ix < w as isize {
                            m = m.max(src[iy as usize * w + ix as usize]);
                        }
                    }
                }
                dst[oy * ow + ox] = m;
            }
        }
    }
    T::new(out, vec![n, c, oh, ow])
}

/// Nearest-neighbour upsampling by an integer factor.
pub fn upsample_nearest(x: &T, f: usize) -> T {
    let (n, c, h, w) = x.nchw();
    let (oh, ow) = (h * f, w * f);
    let mut out = vec![0.0; n * c * oh * ow];
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                out[p * oh * ow + oy * ow + ox] = x.data[p * h * w + (oy / f) * w + ox / f];
            }
        }
    }
    T::new(out, vec![n, c, oh, ow])
}

/// Concatenation of feature maps along channels.
pub fn cat_channels(xs: &[&T]) -> T {
    let (n, _, h, w) = xs[0].nchw();
    let c: usize = xs.iter().map(|x| x.shape[1]).sum();
    let mut out = Vec::with_capacity(n * c * h * w);
    for b in 0..n {
        for x in xs {
            let per = x.shape[1] * h * w;
            out.extend_from_slice(&x.data[b * per..(b + 1) * per]);
        }
    }
    T::new(out, vec![n, c, h, w])
}

/// Channels `[from, to)` of a feature map.
pub fn channels(x: &T, from: usize, to: usize) -> T {
    let (n, c, h, w) = x.nchw();
    let mut out = Vec::with_capacity(n * (to - from) * h * w);
    for b in 0..n {
        out.extend_from_slice(&x.data[(b * c + from) * h * w..(b * c + to) * h * w]);
    }
    T::new(out, vec![n, to - from, h, w])
}

/// Elementwise sum.
pub fn add(a: &T, b: &T) -> T {
    T::new(
        a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
        a.shape.clone(),
    )
}

/// Softmax over `len` contiguous values starting at each `stride`-spaced offset group.
pub fn softmax_strided(v: &mut [f32], offset: usize, len: usize, stride: usize) {
    let m = (0..len)
        .map(|i| v[offset + i * stride])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for i in 0..len {
        let e = (v[offset + i * stride] - m).exp();
        v[offset + i * stride] = e;
        sum += e;
    }
    for i in 0..len {
        v[offset + i * stride] /= sum;
    }
}

/// Row-major matrix product helper for the attention blocks.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    gemm(a, b, &mut out, m, k, n);
    out
}
