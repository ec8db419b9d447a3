//! Winograd F(2×2, 3×3) for the interpreter's 3×3, stride-1, undilated, ungrouped convolutions
//! (the bulk of a YOLO model's arithmetic: the C3k2 / C2f bottlenecks).
//!
//! Each 4×4 input tile `d` becomes `V = Bᵀ d B`, each 3×3 filter `g` becomes `U = G g Gᵀ`; for
//! each of the 16 positions ξ of a transformed tile the products over input channels are one
//! GEMM `M[ξ] = U[ξ] · V[ξ]` ([Cout × Cin] · [Cin × tiles], the `gemm` crate), and each 2×2
//! output block is `Aᵀ m A`. That is 16·Cin multiplies per 2×2 outputs and output channel where
//! the direct convolution (im2col + GEMM) does 36·Cin: 2.25× fewer, for three cheap passes of
//! additions. The transforms' coefficients are 0, ±1 and ±½ (exact in binary), and F(2×2, 3×3)
//! is the best-conditioned member of the family: the results differ from the direct
//! convolution's by a few rounding steps (the unit tests below measure it against an f64
//! direct convolution; docs/benchmarks.md records the end-to-end margins).
//!
//! The work is one parallel loop over chunks of whole tile rows (see `conv.rs`): each task
//! transforms its chunk's input, runs the 16 GEMMs on one thread and transforms, biases and
//! finishes its output rows while they are in cache. A map with too few tile rows for that
//! (20×20 and 40×40 outputs) shares one transformed input per chunk among tasks that each take a
//! block of output channels.

use rayon::prelude::*;

use super::conv::{ACC, COLS, Epilogue, Split, Tiling, channel_finish, grow, split_columns};
use super::ops::{ConvSpec, min_items};

/// Whether a convolution of this shape takes the Winograd path: 3×3, stride 1, dilation 1, one
/// group, and enough channels that the transforms (whose cost grows with Cin + Cout, not their
/// product) stay small beside the GEMMs. `FUSE_EMA_REFERENCE_DIRECT=1` turns the path off, for
/// benchmarking and debugging only (docs/benchmarks.md).
pub(super) fn applies(wshape: &[usize], s: &ConvSpec) -> bool {
    let [o, cg, kh, kw] = [wshape[0], wshape[1], wshape[2], wshape[3]];
    kh == 3
        && kw == 3
        && s.stride == (1, 1)
        && s.dil == (1, 1)
        && s.groups == 1
        && cg >= 8
        && o >= 8
        && !forced_direct()
}

/// `FUSE_EMA_REFERENCE_DIRECT` set to anything but empty or `0`, read once.
fn forced_direct() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| {
        std::env::var_os("FUSE_EMA_REFERENCE_DIRECT").is_some_and(|v| !v.is_empty() && v != "0")
    })
}

/// The filters' transforms `U = G g Gᵀ`, laid out `[ξ][o][c]` (one Cout × Cin matrix per ξ).
/// `w` is (O, C, 3, 3). Done once per call: 16·O·C values, negligible beside the convolution.
fn filter_transform(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = super::pages::zeros(16 * o * c);
    for (oc_c, g) in w.chunks_exact(9).enumerate() {
        // G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]: rows first (G g), then columns ((G g) Gᵀ).
        let mut t = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        for (i, row) in t.iter().enumerate() {
            let [g0, g1, g2] = *row;
            let vals = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
            for (j, v) in vals.into_iter().enumerate() {
                u[(4 * i + j) * o * c + oc_c] = v;
            }
        }
    }
    u
}

/// One image's geometry: input (C, h, w), padding, output (O, oh, ow), tiles per row.
struct Geo {
    chw: (usize, usize, usize),
    pad: (usize, usize),
    out: (usize, usize, usize),
    tw: usize,
}

/// 3×3 stride-1 convolution of one image `x` (C × h × w) into `out` (O × oh × ow), bias and
/// epilogue applied; the caller checked [`applies`]. `t` divides the work (see `conv.rs`).
pub(super) fn conv3x3(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    (wt, o): (&[f32], usize),
    pad: (usize, usize),
    out: &mut [f32],
    post: (Option<&[f32]>, Option<Epilogue>),
    t: &Tiling,
) {
    let oh = (h + 2 * pad.0).saturating_sub(2);
    let ow = (w + 2 * pad.1).saturating_sub(2);
    if oh == 0 || ow == 0 || o == 0 {
        return;
    }
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let u = filter_transform(wt, o, c);
    let geo = Geo {
        chw: (c, h, w),
        pad,
        out: (o, oh, ow),
        tw,
    };
    let plane = oh * ow;
    match t.split((th, tw), (16 * (c + o), 16 * c), o) {
        Split::Tiles(rows) => {
            let chunks = split_columns(&mut out[..o * plane], plane, 2 * rows * ow);
            chunks
                .into_par_iter()
                .enumerate()
                .for_each(|(i, mut runs)| {
                    let (ty0, ty1) = (i * rows, ((i + 1) * rows).min(th));
                    let n = (ty1 - ty0) * tw;
                    let (mut v, mut m) = (COLS.take(), ACC.take());
                    grow(&mut v, 16 * c * n);
                    grow(&mut m, 16 * o * n);
                    input_transform(x, &geo, (ty0, ty1), &mut v[..16 * c * n], false);
                    products(
                        (&u, o, 0),
                        &v[..16 * c * n],
                        &mut m[..16 * o * n],
                        (o, c, n),
                    );
                    for (oc, run) in runs.iter_mut().enumerate() {
                        output_channel(&m[..16 * o * n], (o, oc, n), &geo, (ty0, ty1), run);
                        channel_finish(run, oc, post);
                    }
                    COLS.set(v);
                    ACC.set(m);
                });
        }
        Split::Channels { span, block } => {
            let mut v = COLS.take();
            for ty0 in (0..th).step_by(span) {
                let ty1 = (ty0 + span).min(th);
                let n = (ty1 - ty0) * tw;
                grow(&mut v, 16 * c * n);
                input_transform(x, &geo, (ty0, ty1), &mut v[..16 * c * n], true);
                let v = &v[..16 * c * n];
                let (r0, r1) = (2 * ty0, (2 * ty1).min(oh));
                out[..o * plane]
                    .par_chunks_mut(block * plane)
                    .enumerate()
                    .for_each(|(i, ob)| {
                        let (o0, mb) = (i * block, ob.len() / plane);
                        let mut m = ACC.take();
                        grow(&mut m, 16 * mb * n);
                        products((&u, o, o0), v, &mut m[..16 * mb * n], (mb, c, n));
                        for (j, op) in ob.chunks_exact_mut(plane).enumerate() {
                            let run = &mut op[r0 * ow..r1 * ow];
                            output_channel(&m[..16 * mb * n], (mb, j, n), &geo, (ty0, ty1), run);
                            channel_finish(run, o0 + j, post);
                        }
                        ACC.set(m);
                    });
            }
            COLS.set(v);
        }
    }
}

/// `V = Bᵀ d B` for every channel and every tile of tile rows `[ty0, ty1)`, laid out `[c][ξ][t]`
/// (t = tile within the chunk), with `par` one channel per task on the pool. Tile (ty, tx) reads
/// input rows `2ty − pad.0 ..+4` and columns `2tx − pad.1 ..+4`, zeros outside the image.
fn input_transform(x: &[f32], geo: &Geo, (ty0, ty1): (usize, usize), v: &mut [f32], par: bool) {
    let ((_, h, w), tw) = (geo.chw, geo.tw);
    let t = (ty1 - ty0) * tw;
    let one = |(ch, vc): (usize, &mut [f32])| {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        input_channel(xc, geo, (ty0, ty1), vc);
    };
    if par {
        v.par_chunks_mut(16 * t)
            .with_min_len(min_items(16 * t))
            .enumerate()
            .for_each(one);
    } else {
        v.chunks_mut(16 * t).enumerate().for_each(one);
    }
}

/// One channel's part of [`input_transform`]: `vc` is its `[ξ][t]`.
fn input_channel(xc: &[f32], geo: &Geo, (ty0, ty1): (usize, usize), vc: &mut [f32]) {
    let ((_, h, w), pad, tw) = (geo.chw, geo.pad, geo.tw);
    let t = (ty1 - ty0) * tw;
    let line = 2 * tw + 2;
    // The tile row's four input rows, zero-padded to whole tiles, so the tile loop below reads
    // without bounds tests.
    let mut buf = vec![0.0f32; 4 * line];
    let mut scratch = Vec::new();
    for ty in ty0..ty1 {
        for (r, dst) in buf.chunks_exact_mut(line).enumerate() {
            dst.fill(0.0);
            let iy = (2 * ty + r) as isize - pad.0 as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &xc[iy as usize * w..(iy as usize + 1) * w];
            // dst[j] = src[j − pad.1] where that lies inside the row.
            let lo = pad.1.min(line);
            let n = w.min(line - lo);
            dst[lo..lo + n].copy_from_slice(&src[..n]);
        }
        tile_row(&buf, tw, &mut scratch);
        let base = (ty - ty0) * tw;
        for (xi, src) in scratch[..16 * tw].chunks_exact(tw).enumerate() {
            vc[xi * t + base..xi * t + base + tw].copy_from_slice(src);
        }
    }
}

/// `V = Bᵀ d B` of one tile row's `tw` tiles from its four zero-padded input rows (`buf`,
/// `2·tw + 2` floats each), into `out[ξ·tw + tx]`. Each step is an elementwise operation on
/// whole rows of tiles (even and odd input columns split apart first), which the compiler
/// turns into SIMD; the arithmetic per value is that of the definition, in the same order.
/// Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1].
fn tile_row(buf: &[f32], tw: usize, out: &mut Vec<f32>) {
    let line = 2 * tw + 2;
    out.resize(16 * tw + 8 * (tw + 1) + 16 * tw, 0.0);
    let (v, rest) = out.split_at_mut(16 * tw);
    let (eo, p) = rest.split_at_mut(8 * (tw + 1));
    // eo[2r] = row r's even columns, eo[2r + 1] its odd ones: tile tx's d_r = (e[tx], o[tx],
    // e[tx + 1], o[tx + 1]).
    for (r, row) in buf.chunks_exact(line).enumerate() {
        let (e, o) = eo[2 * r * (tw + 1)..(2 * r + 2) * (tw + 1)].split_at_mut(tw + 1);
        for (j, pair) in row.chunks_exact(2).enumerate() {
            e[j] = pair[0];
            o[j] = pair[1];
        }
    }
    // p[4r + k] = (d_r B)[k]: [d0 − d2, d1 + d2, d2 − d1, d1 − d3].
    for r in 0..4 {
        let (e, o) = eo[2 * r * (tw + 1)..(2 * r + 2) * (tw + 1)].split_at(tw + 1);
        let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
        let pr = &mut p[4 * r * tw..4 * (r + 1) * tw];
        let (p0, rest) = pr.split_at_mut(tw);
        let (p1, rest) = rest.split_at_mut(tw);
        let (p2, p3) = rest.split_at_mut(tw);
        for tx in 0..tw {
            p0[tx] = e0[tx] - e1[tx];
            p1[tx] = o0[tx] + e1[tx];
            p2[tx] = e1[tx] - o0[tx];
            p3[tx] = o0[tx] - o1[tx];
        }
    }
    // V[4i + k] = (Bᵀ (d B))[i][k] from the rows' p[·][k].
    let row = |r: usize, k: usize| &p[(4 * r + k) * tw..(4 * r + k + 1) * tw];
    for k in 0..4 {
        let (q0, q1, q2, q3) = (row(0, k), row(1, k), row(2, k), row(3, k));
        let (v0, rest) = v[k * tw..].split_at_mut(4 * tw);
        let (v1, rest) = rest.split_at_mut(4 * tw);
        let (v2, v3) = rest.split_at_mut(4 * tw);
        let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
        for tx in 0..tw {
            v0[tx] = q0[tx] - q2[tx];
            v1[tx] = q1[tx] + q2[tx];
            v2[tx] = q2[tx] - q1[tx];
            v3[tx] = q1[tx] - q3[tx];
        }
    }
}

/// `M[ξ] = U[ξ] · V[ξ]` for the 16 ξ, on the calling thread, for the `mb` output channels from
/// `o0` of U's `o`: `m` is laid out `[ξ][mb][t]`. Each product is the same single-threaded call
/// whatever thread runs it, so the results do not depend on the thread count.
fn products(
    (u, o, o0): (&[f32], usize, usize),
    v: &[f32],
    m: &mut [f32],
    (mb, c, t): (usize, usize, usize),
) {
    for (xi, mx) in m.chunks_exact_mut(mb * t).enumerate() {
        let ux = &u[(xi * o + o0) * c..];
        // Row ci of V[ξ] is at ci·16t + ξ·t: V is channel-major for the input transform.
        super::ops::gemm_strided((ux, c), (&v[xi * t..], 16 * t), (mx, t), (mb, c, t), false);
    }
}

/// `Y = Aᵀ m A` for output channel `oc` of the `mb` in `m` (`[ξ][mb][t]`) over tile rows
/// `[ty0, ty1)`, written to `run`: that channel's output rows `[2·ty0, min(2·ty1, oh))`.
/// Aᵀ = [1 1 1 0; 0 1 −1 −1]; a tile's second row or column past the edge of an odd-sized
/// output is dropped.
fn output_channel(
    m: &[f32],
    (mb, oc, t): (usize, usize, usize),
    geo: &Geo,
    (ty0, ty1): (usize, usize),
    run: &mut [f32],
) {
    let ((_, oh, ow), tw) = (geo.out, geo.tw);
    let mo = |xi: usize| &m[(xi * mb + oc) * t..(xi * mb + oc + 1) * t];
    let mx: [&[f32]; 16] = std::array::from_fn(mo);
    let mut a = vec![0.0f32; 8 * tw];
    for ty in ty0..ty1 {
        let base = (ty - ty0) * tw;
        let mi = |xi: usize| &mx[xi][base..base + tw];
        // Rows of Aᵀ m, a row of tiles at a time: a[4·dy + k] (dy = output row).
        for k in 0..4 {
            let (m0, m1, m2, m3) = (mi(k), mi(4 + k), mi(8 + k), mi(12 + k));
            let (a0, a1) = a.split_at_mut(4 * tw);
            let (a0, a1) = (&mut a0[k * tw..(k + 1) * tw], &mut a1[k * tw..(k + 1) * tw]);
            for tx in 0..tw {
                a0[tx] = m0[tx] + m1[tx] + m2[tx];
                a1[tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        // (Aᵀ m) A into the output rows; a tile's column past an odd width is dropped.
        for dy in 0..2 {
            let y = 2 * ty + dy;
            if y >= oh {
                break;
            }
            let r = |k: usize| &a[(4 * dy + k) * tw..(4 * dy + k + 1) * tw];
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let row = &mut run[(y - 2 * ty0) * ow..(y - 2 * ty0 + 1) * ow];
            for (tx, pair) in row.chunks_exact_mut(2).enumerate() {
                pair[0] = r0[tx] + r1[tx] + r2[tx];
                pair[1] = r1[tx] - r2[tx] - r3[tx];
            }
            if ow % 2 == 1 {
                row[ow - 1] = r0[tw - 1] + r1[tw - 1] + r2[tw - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::{TILING, conv2d_tiled};
    use super::super::ops::{RefTensor, map_run};
    use super::*;

    /// Convolution by its definition in f64: the truth both paths are measured against.
    fn exact(x: &RefTensor, w: &[f32], o: usize, pad: usize) -> Vec<f64> {
        let (n, c, h, wd) = x.nchw();
        let (oh, ow) = (h + 2 * pad - 2, wd + 2 * pad - 2);
        let mut out = vec![0.0f64; n * o * oh * ow];
        for b in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f64;
                        for ci in 0..c {
                            for k in 0..9 {
                                let iy = (oy + k / 3) as isize - pad as isize;
                                let ix = (ox + k % 3) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x.data[((b * c + ci) * h + iy as usize) * wd + ix as usize];
                                acc += xv as f64 * w[(oc * c + ci) * 9 + k] as f64;
                            }
                        }
                        out[((b * o + oc) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    /// Pseudo-random values of a trained network's magnitudes: activations mostly in
    /// [−0.3, 3] (SiLU outputs, a few large), weights ~ ±1/√(9·Cin) around a small offset.
    fn values(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                // A heavier upper tail than uniform: u³ stretches a few values to `scale`.
                offset + scale * (2.0 * u - 1.0) * (0.3 + 0.7 * u * u)
            })
            .collect()
    }

    /// Max over channels of max |Δ| / (max |channel| + 1): the parity limit's own shape
    /// (1e-4·max|channel| + 1e-4) divided by 1e-4.
    fn worst(got: &[f32], want: &[f64], plane: usize) -> f64 {
        got.chunks(plane)
            .zip(want.chunks(plane))
            .map(|(g, w)| {
                let peak = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let err = g
                    .iter()
                    .zip(w)
                    .fold(0.0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
                err / (peak + 1.0)
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn winograd_matches_an_f64_direct_convolution() {
        // (batch, channels, out, h, w, pad): odd sizes (a tile's second row / column dropped),
        // pad 0 and 2, channel counts that are multiples of nothing, batch 2.
        let cases = [
            (2, 8, 8, 7, 5, 1),
            (2, 13, 17, 9, 11, 1),
            (1, 16, 24, 10, 12, 0),
            (1, 9, 11, 6, 7, 2),
            (1, 64, 40, 23, 20, 1),
            (1, 320, 48, 13, 12, 1),
        ];
        for (i, &(n, c, o, h, wd, pad)) in cases.iter().enumerate() {
            let x = RefTensor::new(
                values(n * c * h * wd, i as u64, 3.0, 0.8),
                vec![n, c, h, wd],
            );
            let ws = [o, c, 3, 3];
            let w = values(
                o * c * 9,
                50 + i as u64,
                1.0 / (9.0 * c as f32).sqrt(),
                0.01,
            );
            let bias = values(o, 99, 0.5, 0.0);
            let mut want = exact(&x, &w, o, pad);
            let plane = want.len() / (n * o);
            for (j, v) in want.iter_mut().enumerate() {
                *v += bias[(j / plane) % o] as f64;
            }
            let s = ConvSpec {
                stride: (1, 1),
                pad: (pad, pad),
                dil: (1, 1),
                groups: 1,
            };
            assert!(applies(&ws, &s), "case {i} should take the Winograd path");
            let whole = Tiling {
                budget: 1 << 22,
                wino: false,
                min_width: 1,
                ..TILING
            };
            let direct = conv2d_tiled(&x, (&w, &ws), (Some(&bias), None), &s, &whole);
            let direct_err = worst(&direct.data, &want, plane);
            let then = |ch: usize, run: &mut [f32]| map_run(run, |v| 2.0 * v + ch as f32);
            // One tile row per chunk, a few, and the whole map at once; by chunks of tile rows,
            // and (with `min_tiles` out of reach) over blocks of 16 output channels.
            let splits = [1, 16 * 64 * 12, 1 << 22].into_iter().flat_map(|budget| {
                [1, usize::MAX].map(|min_tiles| Tiling {
                    budget,
                    shared: budget,
                    wino: true,
                    min_width: 1,
                    min_tiles,
                })
            });
            for t in splits {
                let budget = (t.budget, t.min_tiles);
                let got = conv2d_tiled(&x, (&w, &ws), (Some(&bias), None), &s, &t);
                let post = conv2d_tiled(&x, (&w, &ws), (Some(&bias), Some(&then)), &s, &t);
                assert_eq!(got.shape, direct.shape, "case {i}");
                let err = worst(&got.data, &want, plane);
                eprintln!(
                    "case {i}, budget {budget:?}: winograd {err:.2e}, direct {direct_err:.2e}"
                );
                // Parity allows 1e-4 on this scale; the kernel may use at most 2 % of it, and
                // round at most 3× worse than the direct path (F(2×2, 3×3) measures ≤ 2×).
                assert!(
                    err < 3.0 * direct_err + 1e-7,
                    "case {i}: {err:e} against the direct path's {direct_err:e}"
                );
                assert!(
                    err < 2e-6,
                    "case {i}, budget {budget:?}: {err:e} of the channel scale"
                );
                // The epilogue sees every output exactly once, after the bias, with its channel.
                for (j, (a, p)) in got.data.iter().zip(&post.data).enumerate() {
                    let ch = (j / plane) % o;
                    assert_eq!(
                        *p,
                        2.0 * a + ch as f32,
                        "case {i}, budget {budget:?}, epilogue"
                    );
                }
            }
        }
    }

    #[test]
    fn winograd_takes_only_3x3_stride_1_ungrouped_convolutions() {
        let spec = |stride, dil, groups| ConvSpec {
            stride: (stride, stride),
            pad: (1, 1),
            dil: (dil, dil),
            groups,
        };
        assert!(applies(&[16, 16, 3, 3], &spec(1, 1, 1)));
        assert!(!applies(&[16, 16, 3, 3], &spec(2, 1, 1)));
        assert!(!applies(&[16, 16, 3, 3], &spec(1, 2, 1)));
        assert!(!applies(&[16, 8, 3, 3], &spec(1, 1, 2)));
        assert!(!applies(&[16, 16, 1, 1], &spec(1, 1, 1)));
        assert!(!applies(&[16, 16, 5, 5], &spec(1, 1, 1)));
        assert!(!applies(&[16, 3, 3, 3], &spec(1, 1, 1)));
    }
}
