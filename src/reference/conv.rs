//! The interpreter's convolutions: im2col + GEMM, 1×1 convolutions as one GEMM on the input,
//! direct loops for depthwise, and the choice of Winograd (`winograd.rs`) for 3×3 stride-1 ones.
//!
//! Threads: a convolution is ONE parallel loop. Its unit of work is a tile of output columns
//! (whole output rows, or Winograd tile rows): the task builds its own column matrix (or
//! transformed input), runs a single-threaded GEMM, and applies bias and epilogue to the result
//! while it is still in cache, with no fork-join inside. A layer whose map is too small for
//! [`TARGET_TILES`] such tiles (the deep 20×20 and 40×40 layers) is split over blocks of output
//! channels instead, all blocks sharing one column matrix built beforehand. Every split is chosen
//! from the shapes alone, never from the thread count, and each output element is one GEMM's
//! column computed by the same single-threaded call whatever thread runs it: the results are the
//! same bits on any number of threads (`ops_tests.rs` checks 1, 2 and 3).

use rayon::prelude::*;

use super::ops::{ConvSpec, RefTensor, gemm_strided, min_items};

/// The scratch one tile of work aims at (floats: 1 MiB, one core's L2): its column matrix and
/// its output block (a Winograd tile: transformed input and products). [`MIN_WIDTH`] and
/// [`TARGET_TILES`] come first, so a tile may hold more.
const TILE_BUDGET: usize = 1 << 18;

/// The most floats a column matrix shared by blocks of output channels holds (4 MiB) unless
/// [`MIN_WIDTH`] asks for more. Unbounded, a deep layer's column matrix would be kdim × oh × ow
/// (yolo11x at 20×20: 6912 × 400, 11 MB). Every float of scratch is a fresh page the first time
/// it is touched (a page fault and the kernel zeroing it): at 16 MiB the faults were ~10 % of
/// yolo11n's interpreter time (docs/benchmarks.md, issue 14).
const SHARED_BUDGET: usize = 1 << 20;

/// The fewest GEMM columns (output pixels, or Winograd tiles) one tile holds whatever the
/// budget: narrower, the GEMM repacks the weights for too little work.
const MIN_WIDTH: usize = 128;

/// How many tiles a layer is cut into when its size allows: enough that two or three threads
/// balance (rayon hands out whole tiles; 8 on 2 or 3 threads leave at most one tile's worth
/// idle). A layer too small for this many splits over blocks of output channels instead.
pub(super) const TARGET_TILES: usize = 8;

/// How a convolution divides its work, from its shapes alone.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiling {
    /// Soft cap on one tile's scratch, floats ([`TILE_BUDGET`]).
    pub(super) budget: usize,
    /// Cap on a column matrix shared by channel blocks, floats ([`SHARED_BUDGET`]).
    pub(super) shared: usize,
    /// Whether 3×3 stride-1 convolutions take the Winograd path (tests turn it off).
    pub(super) wino: bool,
    /// The fewest GEMM columns per tile ([`MIN_WIDTH`]).
    pub(super) min_width: usize,
    /// The fewest tiles a layer splits into by columns; fewer, it splits over output channels
    /// ([`TARGET_TILES`]; tests force either way with 1 or `usize::MAX`).
    pub(super) min_tiles: usize,
}

/// The tiling every convolution of a model uses.
pub(super) const TILING: Tiling = Tiling {
    budget: TILE_BUDGET,
    shared: SHARED_BUDGET,
    wino: true,
    min_width: MIN_WIDTH,
    min_tiles: TARGET_TILES,
};

/// A convolution's division of its output, in units of rows (output rows, or Winograd tile
/// rows) of `width` GEMM columns each, or of single columns for a 1×1 convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Split {
    /// One task per tile of this many units.
    Tiles(usize),
    /// Chunks of `span` units one after the other, each one column matrix built on the pool,
    /// then one task per `block` output channels.
    Channels {
        /// Units per chunk.
        span: usize,
        /// Output channels per task.
        block: usize,
    },
}

impl Tiling {
    /// The split of `units` rows of `width` columns into tasks, for an output of `og` channels,
    /// where a tile's scratch is `per_col` floats per column and a shared column matrix
    /// `shared_per_col`.
    pub(super) fn split(
        &self,
        (units, width): (usize, usize),
        (per_col, shared_per_col): (usize, usize),
        og: usize,
    ) -> Split {
        let width = width.max(1);
        let fit = |floats: usize, per: usize| (floats / (width * per).max(1)).max(1);
        let least = self.min_width.div_ceil(width).max(1);
        let span = fit(self.budget, per_col)
            .min(units.div_ceil(TARGET_TILES))
            .max(least)
            .clamp(1, units.max(1));
        let block = og.div_ceil(TARGET_TILES).next_multiple_of(16);
        if units.div_ceil(span) >= self.min_tiles || og <= block {
            return Split::Tiles(span);
        }
        let span = fit(self.shared, shared_per_col)
            .max(least)
            .clamp(1, units.max(1));
        Split::Channels { span, block }
    }
}

thread_local! {
    /// Each thread's scratch, reused across convolutions: a tile's column matrix (Winograd:
    /// its transformed input). A fresh buffer per layer costs a page fault per 4 KiB touched.
    /// Taken and put back rather than borrowed, so a task that ran inside another on the same
    /// thread would allocate instead of panicking.
    pub(super) static COLS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's second scratch, as [`COLS`]: a tile's output block before it is copied
    /// out (Winograd: its products). Separate, so that the tasks splitting a layer over output
    /// channels keep theirs while the column matrix they share is taken.
    pub(super) static ACC: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Makes `buf` at least `len` floats long. Its contents are scratch, overwritten by the caller:
/// a buffer too short is replaced (freed first, so old and new are never both held), not grown,
/// because growing copies the old contents to the new allocation.
pub(super) fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        drop(std::mem::take(buf));
        *buf = super::pages::zeros(len);
    }
}

/// `out` (channels of `plane` values each) cut at the same columns in every channel:
/// `[tile][channel]`, tile i holding columns `[i·span, min((i + 1)·span, plane))`, so the tasks
/// of one parallel loop each own their tile's runs.
pub(super) fn split_columns(out: &mut [f32], plane: usize, span: usize) -> Vec<Vec<&mut [f32]>> {
    let (plane, span) = (plane.max(1), span.max(1));
    let mut tiles: Vec<Vec<&mut [f32]>> = (0..plane.div_ceil(span))
        .map(|_| Vec::with_capacity(out.len() / plane))
        .collect();
    for ch in out.chunks_exact_mut(plane) {
        for (tile, run) in tiles.iter_mut().zip(ch.chunks_mut(span)) {
            tile.push(run);
        }
    }
    tiles
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
    conv2d_tiled(x, (w, wshape), (bias, None), s, &TILING)
}

/// [`conv2d`] followed by `then` on each output channel (after the bias).
pub fn conv2d_then(
    x: &RefTensor,
    (w, wshape): (&[f32], &[usize]),
    bias: Option<&[f32]>,
    s: &ConvSpec,
    then: Epilogue,
) -> RefTensor {
    conv2d_tiled(x, (w, wshape), (bias, Some(then)), s, &TILING)
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

/// One group's shapes: input (C, h, w), weights (og, kh, kw), output (oh, ow), and its first
/// output channel.
struct Group {
    chw: (usize, usize, usize),
    okk: (usize, usize, usize),
    out: (usize, usize),
    ch0: usize,
}

/// [`conv2d`] divided as `t` says (tests vary it).
pub(super) fn conv2d_tiled(
    x: &RefTensor,
    (w, wshape): (&[f32], &[usize]),
    post: (Option<&[f32]>, Option<Epilogue>),
    s: &ConvSpec,
    t: &Tiling,
) -> RefTensor {
    let (n, c, h, wd) = x.nchw();
    let (o, cg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
    let oh = (h + 2 * s.pad.0 - s.dil.0 * (kh - 1) - 1) / s.stride.0 + 1;
    let ow = (wd + 2 * s.pad.1 - s.dil.1 * (kw - 1) - 1) / s.stride.1 + 1;
    let plane = oh * ow;
    let mut out = super::pages::zeros(n * o * plane);
    let og = o / s.groups;
    let depthwise = s.groups == c && cg == 1 && og == 1;
    let kdim = cg * kh * kw;
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
                    let dw = DwChannel {
                        x: xc,
                        hw: (h, wd),
                        w: wc,
                        k: (kh, kw),
                        s,
                        ow,
                    };
                    depthwise_plane(&dw, oc);
                    channel_finish(oc, ch, post);
                });
            continue;
        }
        if t.wino && super::winograd::applies(wshape, s) {
            super::winograd::conv3x3(xb, (c, h, wd), (w, o), s.pad, ob, post, t);
            continue;
        }
        for g in 0..s.groups {
            let xg = &xb[g * cg * h * wd..(g + 1) * cg * h * wd];
            let wg = &w[g * og * kdim..(g + 1) * og * kdim];
            let og_out = &mut ob[g * og * plane..(g + 1) * og * plane];
            let grp = Group {
                chw: (cg, h, wd),
                okk: (og, kh, kw),
                out: (oh, ow),
                ch0: g * og,
            };
            gemm_conv(xg, wg, &grp, s, og_out, post, t);
        }
    }
    RefTensor::new(out, vec![n, o, oh, ow])
}

/// One group of an im2col (or 1×1) convolution into `out` (og × oh × ow).
fn gemm_conv(
    x: &[f32],
    w: &[f32],
    g: &Group,
    s: &ConvSpec,
    out: &mut [f32],
    post: (Option<&[f32]>, Option<Epilogue>),
    t: &Tiling,
) {
    let ((cg, h, wd), (og, kh, kw), (oh, ow)) = (g.chw, g.okk, g.out);
    let (plane, kdim) = (oh * ow, cg * kh * kw);
    if plane == 0 || og == 0 {
        return;
    }
    // A 1×1 convolution is the GEMM on the input itself: no column matrix, and its tiles are
    // runs of columns rather than whole rows.
    let pointwise = kh == 1 && kw == 1 && s.stride == (1, 1) && s.pad == (0, 0);
    let (units, width) = if pointwise { (plane, 1) } else { (oh, ow) };
    let per_col = if pointwise { og } else { kdim + og };
    let shared = if pointwise { 0 } else { kdim };
    // Columns [c0, c1) of the product: its B operand (rows kdim apart by `ldb`), built in
    // `cols` when it is a column matrix, on the pool when `par`.
    let operand = |(c0, c1): (usize, usize), cols: &mut Vec<f32>, par: bool| {
        if !pointwise {
            let n = c1 - c0;
            grow(cols, kdim * n);
            let rows = (c0 / ow, c1.div_ceil(ow));
            im2col(
                x,
                (cg, h, wd),
                (kh, kw),
                (rows.0, rows.1, ow),
                s,
                &mut cols[..kdim * n],
                par,
            );
        }
    };
    match t.split((units, width), (per_col, shared), og) {
        Split::Tiles(span) => {
            let span = span * width;
            let tiles = split_columns(out, plane, span);
            tiles.into_par_iter().enumerate().for_each(|(i, mut runs)| {
                let (c0, c1) = (i * span, ((i + 1) * span).min(plane));
                let n = c1 - c0;
                let (mut cols, mut acc) = (COLS.take(), ACC.take());
                operand((c0, c1), &mut cols, false);
                let b = if pointwise {
                    (&x[c0..], plane)
                } else {
                    (&cols[..], n)
                };
                grow(&mut acc, og * n);
                gemm_strided((w, kdim), b, (&mut acc[..og * n], n), (og, kdim, n), false);
                for (j, (run, src)) in runs.iter_mut().zip(acc.chunks_exact_mut(n)).enumerate() {
                    channel_finish(src, g.ch0 + j, post);
                    run.copy_from_slice(src);
                }
                COLS.set(cols);
                ACC.set(acc);
            });
        }
        Split::Channels { span, block } => {
            let span = span * width;
            let mut cols = COLS.take();
            for c0 in (0..plane).step_by(span) {
                let c1 = (c0 + span).min(plane);
                let n = c1 - c0;
                operand((c0, c1), &mut cols, true);
                let b = if pointwise {
                    (&x[c0..], plane)
                } else {
                    (&cols[..], n)
                };
                out.par_chunks_mut(block * plane)
                    .enumerate()
                    .for_each(|(i, ob)| {
                        let m = ob.len() / plane;
                        let wb = &w[i * block * kdim..];
                        gemm_strided((wb, kdim), b, (&mut ob[c0..], plane), (m, kdim, n), false);
                        for (j, oc) in ob.chunks_exact_mut(plane).enumerate() {
                            channel_finish(&mut oc[c0..c1], g.ch0 + i * block + j, post);
                        }
                    });
            }
            COLS.set(cols);
        }
    }
}

/// One channel of a depthwise convolution: its input `x` (h × w), its filter `w` (kh × kw),
/// and the output width.
struct DwChannel<'a> {
    x: &'a [f32],
    hw: (usize, usize),
    w: &'a [f32],
    k: (usize, usize),
    s: &'a ConvSpec,
    ow: usize,
}

/// One channel of a depthwise convolution into `oc`: [`depthwise_loops`] compiled for AVX2
/// where the CPU has it (8 floats a step where the baseline build has SSE2's 4; multiply and
/// add stay separate, not FMA, so the bits are the baseline's on every CPU).
fn depthwise_plane(ch: &DwChannel, oc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { depthwise_avx2(ch, oc) };
        return;
    }
    depthwise_loops(ch, oc);
}

/// [`depthwise_loops`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_avx2(ch: &DwChannel, oc: &mut [f32]) {
    depthwise_loops(ch, oc);
}

/// The loops of [`depthwise_plane`]; the taps that fall inside the input are found once per
/// output row and column range, so the inner loop has no bounds tests.
#[inline(always)]
fn depthwise_loops(ch: &DwChannel, oc: &mut [f32]) {
    let DwChannel {
        x: xc,
        hw: (h, wd),
        w: wc,
        k: (kh, kw),
        s,
        ow,
    } = *ch;
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
/// With `par`, each channel's `kh·kw` rows are filled by one task on the pool.
fn im2col(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (oy0, oy1, ow): (usize, usize, usize),
    s: &ConvSpec,
    cols: &mut [f32],
    par: bool,
) {
    let per = kh * kw * (oy1 - oy0) * ow;
    if per == 0 {
        return;
    }
    let one = |(ch, dst): (usize, &mut [f32])| {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        im2col_channel(xc, (h, w), (kh, kw), (oy0, oy1, ow), s, dst);
    };
    if par {
        cols[..c * per]
            .par_chunks_mut(per)
            .with_min_len(min_items(per))
            .enumerate()
            .for_each(one);
    } else {
        cols[..c * per].chunks_mut(per).enumerate().for_each(one);
    }
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
                } else if s.stride.1 == 2 && lo < hi {
                    every_other(&mut dst[lo..hi], &src[(2 * lo as isize + off) as usize..]);
                } else {
                    for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                        *d = src[((ox * s.stride.1) as isize + off) as usize];
                    }
                }
            }
        }
    }
}

/// `dst[j] = src[2·j]`: a stride-2 convolution's taps from one input row (`src` holds at
/// least `2·dst.len() − 1` values). Whole pairs first, a loop the compiler turns into SIMD
/// loads and shuffles (the plain strided index loop stays scalar: it was most of im2col's
/// time on the stride-2 layers), then the last tap alone when it ends on an unpaired value.
fn every_other(dst: &mut [f32], src: &[f32]) {
    let pairs = dst.len().min(src.len() / 2);
    let (head, tail) = dst.split_at_mut(pairs);
    for (d, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
        *d = pair[0];
    }
    for (j, d) in tail.iter_mut().enumerate() {
        *d = src[2 * (pairs + j)];
    }
}
