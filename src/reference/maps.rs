//! Passes of the interpreter that move values rather than compute them: pooling, upsampling,
//! concatenation, channel slices, copies, sums. Each runs on rayon's pool, one plane or run per
//! task, every element computed by the same expression as on one thread (the results do not
//! depend on the thread count). On one thread they held one core while the other waited.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::ops::{RefTensor, min_items};

/// The most floats one copy task moves (256 KiB: a few microseconds of `memcpy`).
const COPY_RUN: usize = 1 << 16;

/// The concatenation of `parts`, copied on the pool in runs of at most [`COPY_RUN`] floats,
/// straight into the new vector's storage (no zeroing pass before the copy).
pub(super) fn concat(parts: &[&[f32]]) -> Vec<f32> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len < 2 * COPY_RUN {
        return parts.concat();
    }
    let mut out: Vec<f32> = super::pages::with_capacity(len);
    let mut rest = &mut out.spare_capacity_mut()[..len];
    let mut jobs: Vec<(&mut [MaybeUninit<f32>], &[f32])> = Vec::new();
    for part in parts {
        for src in part.chunks(COPY_RUN) {
            let (dst, r) = std::mem::take(&mut rest).split_at_mut(src.len());
            rest = r;
            jobs.push((dst, src));
        }
    }
    jobs.into_par_iter().for_each(|(dst, src)| {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
    });
    // SAFETY: the jobs split the first `len` slots of the spare capacity between them, each
    // exactly as long as its source, and every job wrote each of its slots above.
    unsafe { out.set_len(len) };
    out
}

/// Max pooling with −∞ padding, one channel plane per task.
pub fn max_pool(x: &RefTensor, k: usize, stride: usize, pad: usize) -> RefTensor {
    let (n, c, h, w) = x.nchw();
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    // Every output is written below but for an empty input's: −∞.
    let mut out = super::pages::zeros(n * c * oh * ow);
    if oh * ow == 0 || h * w == 0 {
        out.fill(f32::NEG_INFINITY);
        return RefTensor::new(out, vec![n, c, oh, ow]);
    }
    out.par_chunks_mut(oh * ow)
        .with_min_len(min_items(oh * ow * k * k))
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| max_pool_plane(src, (h, w), (k, stride, pad), dst, ow));
    RefTensor::new(out, vec![n, c, oh, ow])
}

/// One plane of [`max_pool`]: each output takes the maximum over its window's rows and
/// columns that lie inside the input, the window clipped once per output.
fn max_pool_plane(
    src: &[f32],
    (h, w): (usize, usize),
    (k, stride, pad): (usize, usize, usize),
    dst: &mut [f32],
    ow: usize,
) {
    for (oy, orow) in dst.chunks_exact_mut(ow).enumerate() {
        let y1 = (oy * stride + k).saturating_sub(pad).min(h);
        let y0 = (oy * stride).saturating_sub(pad).min(y1);
        for (ox, o) in orow.iter_mut().enumerate() {
            let x1 = (ox * stride + k).saturating_sub(pad).min(w);
            let x0 = (ox * stride).saturating_sub(pad).min(x1);
            let mut m = f32::NEG_INFINITY;
            for row in src[y0 * w..y1 * w].chunks_exact(w) {
                for &v in &row[x0..x1] {
                    m = m.max(v);
                }
            }
            *o = m;
        }
    }
}

/// Nearest-neighbour upsampling by an integer factor, one channel plane per task.
pub fn upsample_nearest(x: &RefTensor, f: usize) -> RefTensor {
    let (n, c, h, w) = x.nchw();
    let (oh, ow) = (h * f, w * f);
    let mut out = super::pages::zeros(n * c * oh * ow);
    if oh * ow == 0 {
        return RefTensor::new(out, vec![n, c, oh, ow]);
    }
    out.par_chunks_mut(oh * ow)
        .with_min_len(min_items(oh * ow))
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (oy, orow) in dst.chunks_exact_mut(ow).enumerate() {
                let srow = &src[(oy / f) * w..(oy / f + 1) * w];
                for (o, v) in orow.chunks_exact_mut(f).zip(srow) {
                    o.fill(*v);
                }
            }
        });
    RefTensor::new(out, vec![n, c, oh, ow])
}

/// Concatenation of feature maps along channels.
pub fn cat_channels(xs: &[&RefTensor]) -> RefTensor {
    let (n, _, h, w) = xs[0].nchw();
    let c: usize = xs.iter().map(|x| x.shape[1]).sum();
    let parts: Vec<&[f32]> = (0..n)
        .flat_map(|b| {
            xs.iter().map(move |x| {
                let per = x.shape[1] * h * w;
                &x.data[b * per..(b + 1) * per]
            })
        })
        .collect();
    RefTensor::new(concat(&parts), vec![n, c, h, w])
}

/// Channels `[from, to)` of a feature map.
pub fn channels(x: &RefTensor, from: usize, to: usize) -> RefTensor {
    let (n, c, h, w) = x.nchw();
    let parts: Vec<&[f32]> = (0..n)
        .map(|b| &x.data[(b * c + from) * h * w..(b * c + to) * h * w])
        .collect();
    RefTensor::new(concat(&parts), vec![n, to - from, h, w])
}

/// Elementwise sum.
pub fn add(a: &RefTensor, b: &RefTensor) -> RefTensor {
    let mut out = super::pages::zeros(a.data.len());
    out.par_chunks_mut(COPY_RUN)
        .zip(a.data.par_chunks(COPY_RUN).zip(b.data.par_chunks(COPY_RUN)))
        .for_each(|(o, (x, y))| {
            for (o, (x, y)) in o.iter_mut().zip(x.iter().zip(y)) {
                *o = x + y;
            }
        });
    RefTensor::new(out, a.shape.clone())
}

/// `acc += x` elementwise, in place: the same sums as [`add`]`(x, acc)` (addition commutes)
/// without a new map.
pub fn add_to(acc: &mut RefTensor, x: &RefTensor) {
    acc.data
        .par_chunks_mut(COPY_RUN)
        .zip(x.data.par_chunks(COPY_RUN))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o += x;
            }
        });
}
