//! Kernels of the reference interpreter, on plain row-major f32 buffers: convolution (im2col +
//! GEMM, direct loops for depthwise), batch norm, activations, pooling, resizing.
//!
//! Threads: the GEMM is the `gemm` crate's (its AVX-512 kernel where the CPU has it, chosen by
//! CPU feature, never by thread count), on rayon's pool (docs/benchmarks.md says why that
//! one); every other pass over a feature map (im2col, depthwise, bias, batch norm, activations,
//! sums) is split over channels or chunks on the same pool. The GEMM splits only the output
//! (never the sum over k), and every other element is computed by the same expression in the
//! same order as on one thread, so the results do not depend on the thread count.

use rayon::prelude::*;

pub use super::maps::{add, cat_channels, channels, max_pool, upsample_nearest};
use super::winograd::WINO_BUDGET;

/// The fewest elements worth one task on the pool: below this, handing work to another thread
/// costs more than the work (a few microseconds).
const PAR_MIN: usize = 1 << 14;

/// How many items of `per` elements make one task of at least [`PAR_MIN`] elements.
pub(super) fn min_items(per: usize) -> usize {
    (PAR_MIN / per.max(1)).max(1)
}

/// The interpreter's tensor: dense, row-major f32 with its shape.
#[derive(Debug)]
pub struct RefTensor {
    /// Elements.
    pub data: Vec<f32>,
    /// Shape (NCHW for feature maps).
    pub shape: Vec<usize>,
}

impl RefTensor {
    /// Wraps data of a shape.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> RefTensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        RefTensor { data, shape }
    }

    /// (N, C, H, W) of a feature map.
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}

impl Clone for RefTensor {
    /// A copy made on the pool (layers hand their inputs on by value, so the blocks that reuse
    /// a map copy it: `C2f`'s chain, `SPPF`'s pools).
    fn clone(&self) -> RefTensor {
        RefTensor {
            data: super::maps::concat(&[&self.data]),
            shape: self.shape.clone(),
        }
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
    gemm_strided((a, k), (b, n), (out, n), (m, k, n), true);
}

/// `c = a · b` (c overwritten) for row-major operands whose rows lie `lda`, `ldb`, `ldc` floats
/// apart: a is m×k, b k×n, c m×n; on the pool when `parallel` and the product is large enough,
/// else on the calling thread alone (`gemm`'s `Parallelism::None` spawns nothing). The bits do
/// not depend on which (gemm_tests.rs).
pub(super) fn gemm_strided(
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    // The raw-pointer call below reads and writes exactly these extents.
    assert!(
        lda >= k && a.len() >= (m - 1) * lda + k,
        "gemm: a too short"
    );
    assert!(
        ldb >= n && b.len() >= (k - 1) * ldb + n,
        "gemm: b too short"
    );
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm: c too short"
    );
    let threads = if !parallel || m * k * n < PAR_MIN * 16 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the asserts above keep every element the call touches inside the three slices
    // (column stride 1, row strides as given); `c` is borrowed mutably, so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

/// The most floats one im2col tile holds (4 MiB), unless [`MIN_WIDTH`] asks for more. Unbounded,
/// the column matrix of an early layer at 640 is kdim × oh × ow floats (yolo11x's second conv:
/// 864 × 160 × 160, 88 MB, over twice its largest activation); a tile of whole output rows keeps
/// it bounded and cache-friendlier. Every float of scratch is a fresh page the first time it is
/// touched (a page fault and the kernel zeroing it), and the interpreter runs once per check, so
/// the scratch's size is paid for directly: at 16 MiB (with Winograd's 2 × 8 MiB) the faults
/// were ~10 % of yolo11n's interpreter time (docs/benchmarks.md, issue 14).
const COLS_BUDGET: usize = 1 << 20;

/// The fewest GEMM columns (output pixels, or Winograd tiles) one tile of work holds whatever
/// the budget: below a few hundred, the GEMM repacks the weights for too little work.
const MIN_WIDTH: usize = 512;

thread_local! {
    /// The im2col scratch, reused across convolutions of one thread: a fresh buffer per layer
    /// costs a page fault per 4 KiB touched.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes `buf` at least `len` floats long. Its contents are scratch, overwritten by the caller:
/// a buffer too short is replaced (freed first, so old and new are never both held), not grown,
/// because growing copies the old contents to the new allocation.
pub(super) fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        drop(std::mem::take(buf));
        *buf = vec![0.0; len];
    }
}

/// What a convolution applies to its output, channel by channel, in the same pass that adds
/// its bias: called with an output channel and a run of that channel's outputs (a tile's rows),
/// while they are still in cache. The `Conv` block's BatchNorm and activation ride here.
pub type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// 2-D convolution; `w` is (O, C/groups, kh, kw), `bias` per output channel.
pub fn conv2d(
    x: &RefTensor,
    w: &[f32],
    wshape: &[usize],
    bias: Option<&[f32]>,
    s: &ConvSpec,
) -> RefTensor {
    conv2d_tiled(
        x,
        (w, wshape),
        (bias, None),
        s,
        (COLS_BUDGET, Some(WINO_BUDGET), MIN_WIDTH),
    )
}

/// [`conv2d`] followed by `then` on each output channel (after the bias).
pub fn conv2d_then(
    x: &RefTensor,
    (w, wshape): (&[f32], &[usize]),
    bias: Option<&[f32]>,
    s: &ConvSpec,
    then: Epilogue,
) -> RefTensor {
    conv2d_tiled(
        x,
        (w, wshape),
        (bias, Some(then)),
        s,
        (COLS_BUDGET, Some(WINO_BUDGET), MIN_WIDTH),
    )
}

/// Adds `bias` to each channel's run and applies `then`: `out` holds channels `ch0..` of
/// `plane` outputs each, of which `[from, to)` are this pass's.
fn finish(
    out: &mut [f32],
    (ch0, plane): (usize, usize),
    (from, to): (usize, usize),
    (bias, then): (Option<&[f32]>, Option<Epilogue>),
) {
    if bias.is_none() && then.is_none() {
        return;
    }
    out.par_chunks_mut(plane.max(1))
        .with_min_len(min_items(to - from))
        .enumerate()
        .for_each(|(i, oc)| channel_finish(&mut oc[from..to], ch0 + i, (bias, then)));
}

/// One channel's run of outputs: bias, then the epilogue.
pub(super) fn channel_finish(
    run: &mut [f32],
    ch: usize,
    (bias, then): (Option<&[f32]>, Option<Epilogue>),
) {
    if let Some(bias) = bias {
        let bv = bias[ch];
        for v in run.iter_mut() {
            *v += bv;
        }
    }
    if let Some(then) = then {
        then(ch, run);
    }
}

/// [`conv2d`] with im2col tiles of at most `budget` floats, and Winograd chunks of at most
/// `wino` floats where it applies (`None`: never, for tests); either at least one output row
/// and at least `min_width` GEMM columns.
pub(super) fn conv2d_tiled(
    x: &RefTensor,
    (w, wshape): (&[f32], &[usize]),
    post: (Option<&[f32]>, Option<Epilogue>),
    s: &ConvSpec,
    (budget, wino, min_width): (usize, Option<usize>, usize),
) -> RefTensor {
    let (n, c, h, wd) = x.nchw();
    let (o, cg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
    let oh = (h + 2 * s.pad.0 - s.dil.0 * (kh - 1) - 1) / s.stride.0 + 1;
    let ow = (wd + 2 * s.pad.1 - s.dil.1 * (kw - 1) - 1) / s.stride.1 + 1;
    let plane = oh * ow;
    let mut out = vec![0.0f32; n * o * plane];
    let og = o / s.groups;
    let depthwise = s.groups == c && cg == 1 && og == 1;
    let kdim = cg * kh * kw;
    let pointwise = kh == 1 && kw == 1 && s.stride == (1, 1) && s.pad == (0, 0);
    // Output rows per im2col tile.
    let rows = (budget / (kdim * ow).max(1))
        .max(min_width.div_ceil(ow.max(1)))
        .clamp(1, oh.max(1));
    for b in 0..n {
        let xb = &x.data[b * c * h * wd..(b + 1) * c * h * wd];
        let ob = &mut out[b * o * plane..(b + 1) * o * plane];
        if depthwise {
            ob.par_chunks_mut(plane.max(1))
                .with_min_len(min_items(plane * kh * kw))
                .enumerate()
                .for_each(|(ch, oc)| {
                    let xc = &xb[ch * h * wd..(ch + 1) * h * wd];
                    let wc = &w[ch * kh * kw..(ch + 1) * kh * kw];
                    depthwise_plane(xc, (h, wd), wc, (kh, kw), s, oc, ow);
                    channel_finish(oc, ch, post);
                });
            continue;
        }
        if let Some(wino) = wino.filter(|_| super::winograd::applies(wshape, s)) {
            let (xw, pad) = ((w, o), s.pad);
            super::winograd::conv3x3(xb, (c, h, wd), xw, pad, ob, post, (wino, min_width));
            continue;
        }
        for g in 0..s.groups {
            let xg = &xb[g * cg * h * wd..(g + 1) * cg * h * wd];
            let wg = &w[g * og * kdim..(g + 1) * og * kdim];
            let og_out = &mut ob[g * og * plane..(g + 1) * og * plane];
            if pointwise {
                // A 1×1 convolution is the GEMM on the input itself: no column matrix.
                gemm(wg, xg, og_out, og, kdim, plane);
                finish(og_out, (g * og, plane), (0, plane), post);
                continue;
            }
            COLS.with_borrow_mut(|cols| {
                let mut oy = 0;
                while oy < oh {
                    let oy1 = (oy + rows).min(oh);
                    let cols_n = (oy1 - oy) * ow;
                    grow(cols, kdim * cols_n);
                    let tile = &mut cols[..kdim * cols_n];
                    im2col(xg, (cg, h, wd), (kh, kw), (oy, oy1, ow), s, tile);
                    gemm_strided(
                        (wg, kdim),
                        (tile, cols_n),
                        (&mut og_out[oy * ow..], plane),
                        (og, kdim, cols_n),
                        true,
                    );
                    finish(og_out, (g * og, plane), (oy * ow, oy1 * ow), post);
                    oy = oy1;
                }
            });
        }
    }
    RefTensor::new(out, vec![n, o, oh, ow])
}

/// One channel of a depthwise convolution; the taps that fall inside the input are found once
/// per output row and column range, so the inner loop has no bounds tests.
fn depthwise_plane(
    xc: &[f32],
    (h, wd): (usize, usize),
    wc: &[f32],
    (kh, kw): (usize, usize),
    s: &ConvSpec,
    oc: &mut [f32],
    ow: usize,
) {
    if ow == 0 {
        return;
    }
    for (oy, orow) in oc.chunks_exact_mut(ow).enumerate() {
        for ky in 0..kh {
            let iy = (oy * s.stride.0 + ky * s.dil.0) as isize - s.pad.0 as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &xc[iy as usize * wd..(iy as usize + 1) * wd];
            for kx in 0..kw {
                let wv = wc[ky * kw + kx];
                let off = (kx * s.dil.1) as isize - s.pad.1 as isize;
                // Output columns whose tap ix = ox·stride + off lies in [0, wd).
                let (lo, hi) = taps_inside(off, s.stride.1, wd, ow);
                if lo == hi {
                    continue;
                }
                if s.stride.1 == 1 {
                    // Contiguous taps: a plain zip of two slices, which vectorises.
                    let start = (lo as isize + off) as usize;
                    let taps = &src[start..start + (hi - lo)];
                    for (o, v) in orow[lo..hi].iter_mut().zip(taps) {
                        *o += v * wv;
                    }
                    continue;
                }
                for (ox, o) in (lo..hi).zip(&mut orow[lo..hi]) {
                    *o += src[((ox * s.stride.1) as isize + off) as usize] * wv;
                }
            }
        }
    }
}

/// The output columns `[lo, hi)` (of `ow`) whose input column `ox·stride + off` lies in `[0, w)`.
fn taps_inside(off: isize, stride: usize, w: usize, ow: usize) -> (usize, usize) {
    let lo = if off < 0 {
        ((-off) as usize).div_ceil(stride).min(ow)
    } else {
        0
    };
    let hi = if (w as isize) > off {
        ((w as isize - off) as usize).div_ceil(stride).min(ow)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// The column matrix of output rows `[oy0, oy1)`: row (ch, ky, kx), column (oy − oy0)·ow + ox.
/// Each channel's `kh·kw` rows are filled by one task.
fn im2col(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (oy0, oy1, ow): (usize, usize, usize),
    s: &ConvSpec,
    cols: &mut [f32],
) {
    let per = kh * kw * (oy1 - oy0) * ow;
    if per == 0 {
        return;
    }
    cols[..c * per]
        .par_chunks_mut(per)
        .with_min_len(min_items(per))
        .enumerate()
        .for_each(|(ch, dst)| {
            let xc = &x[ch * h * w..(ch + 1) * h * w];
            im2col_channel(xc, (h, w), (kh, kw), (oy0, oy1, ow), s, dst);
        });
}

/// One input channel's `kh·kw` rows of the column matrix.
fn im2col_channel(
    x: &[f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (oy0, oy1, ow): (usize, usize, usize),
    s: &ConvSpec,
    cols: &mut [f32],
) {
    let n = (oy1 - oy0) * ow;
    for ky in 0..kh {
        for kx in 0..kw {
            let row = (ky * kw + kx) * n;
            let off = (kx * s.dil.1) as isize - s.pad.1 as isize;
            // Columns whose tap ox·stride + off lies inside the row; zeros outside.
            let (lo, hi) = taps_inside(off, s.stride.1, w, ow);
            for oy in oy0..oy1 {
                let iy = (oy * s.stride.0 + ky * s.dil.0) as isize - s.pad.0 as isize;
                let dst = &mut cols[row + (oy - oy0) * ow..row + (oy - oy0 + 1) * ow];
                if iy < 0 || iy >= h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &x[iy as usize * w..(iy as usize + 1) * w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                // With no tap inside (a kernel wider than a small map), `lo + off` may lie
                // before the row: nothing to copy.
                if s.stride.1 == 1 && lo < hi {
                    let start = (lo as isize + off) as usize;
                    dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                } else {
                    for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                        *d = src[((ox * s.stride.1) as isize + off) as usize];
                    }
                }
            }
        }
    }
}

/// Inference batch norm: (x − mean) / sqrt(var + eps) · γ + β, per channel.
pub fn batch_norm(
    x: &mut RefTensor,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) {
    let (_, c, h, w) = x.nchw();
    let plane = (h * w).max(1);
    x.data
        .par_chunks_mut(plane)
        .with_min_len(min_items(plane))
        .enumerate()
        .for_each(|(p, xs)| {
            let ch = p % c;
            batch_norm_run(xs, (gamma[ch], beta[ch], mean[ch], var[ch], eps), |v| v);
        });
}

/// Batch norm of one channel's run of values (γ, β, mean, var, eps), then `act` on each.
#[inline]
pub fn batch_norm_run(
    xs: &mut [f32],
    (gamma, beta, mean, var, eps): (f32, f32, f32, f32, f32),
    act: impl Fn(f32) -> f32,
) {
    let inv = 1.0 / (var + eps).sqrt();
    map_run(xs, |v| act((v - mean) * inv * gamma + beta));
}

/// Applies `f` to each value of a run in place.
#[inline]
pub fn map_run(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { map_run_avx2(xs, &f) };
        return;
    }
    map_loop(xs, &f);
}

/// The loop of [`map_run`], for the compiler to vectorise at whatever width its caller allows.
#[inline(always)]
fn map_loop(xs: &mut [f32], f: &impl Fn(f32) -> f32) {
    for v in xs {
        *v = f(*v);
    }
}

/// [`map_loop`] compiled for AVX2: 8 floats a step where the baseline build has SSE2's 4. Not
/// FMA, which would fuse a multiply and an add into one rounding: the results are the same
/// bits as the baseline loop's, on every CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_run_avx2(xs: &mut [f32], f: &impl Fn(f32) -> f32) {
    map_loop(xs, f);
}

/// Applies an elementwise function in place.
pub fn map(x: &mut RefTensor, f: impl Fn(f32) -> f32 + Sync) {
    x.data
        .par_chunks_mut(PAR_MIN)
        .for_each(|xs| map_run(xs, &f));
}

/// Logistic sigmoid, on the interpreter's vectorisable `exp` (within 2 ulp of eˣ; see
/// `vmath.rs`), so an activation pass over a run of values compiles to SIMD.
#[inline(always)]
pub fn sigmoid(v: f32) -> f32 {
    super::vmath::sigmoid(v)
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

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod gemm_tests;
