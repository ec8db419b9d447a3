//! Tests of the interpreter's kernels (`ops.rs`, `maps.rs`): the convolutions against their
//! definition, and every pass's bits against the thread count.

use super::super::conv::{TILING, Tiling, conv2d_tiled};
use super::*;

/// The default tiling with another scratch budget and minimum tile count, no Winograd, tiles
/// as narrow as one column.
fn tiling(budget: usize, min_tiles: usize) -> Tiling {
    Tiling {
        budget,
        shared: budget,
        wino: false,
        min_width: 1,
        min_tiles,
    }
}

/// Convolution by its definition, one output at a time.
fn direct(x: &RefTensor, w: &[f32], ws: [usize; 4], s: &ConvSpec) -> Vec<f32> {
    let (n, c, h, wd) = x.nchw();
    let [o, cg, kh, kw] = ws;
    let oh = (h + 2 * s.pad.0 - s.dil.0 * (kh - 1) - 1) / s.stride.0 + 1;
    let ow = (wd + 2 * s.pad.1 - s.dil.1 * (kw - 1) - 1) / s.stride.1 + 1;
    let og = o / s.groups;
    let mut out = vec![0.0f32; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f64;
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy =
                                    (oy * s.stride.0 + ky * s.dil.0) as isize - s.pad.0 as isize;
                                let ix =
                                    (ox * s.stride.1 + kx * s.dil.1) as isize - s.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * c + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oc * cg + ci) * kh + ky) * kw + kx;
                                acc += x.data[xi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    out[((b * o + oc) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    out
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

#[test]
fn tiled_convolutions_match_the_definition() {
    // (channels, out, kernel, stride, pad, dilation, groups) over a 2×C×13×11 input; tiles
    // of one to a few output rows, and the whole map at once; split by columns, and (with
    // `min_tiles` out of reach) over blocks of 16 output channels.
    let cases = [
        (6, 4, 3, 1, 1, 1, 1),
        (6, 4, 3, 2, 1, 1, 1),
        (6, 6, 3, 2, 1, 1, 6),
        (6, 6, 5, 1, 2, 1, 6),
        (6, 4, 3, 1, 2, 2, 2),
        (6, 4, 1, 1, 0, 1, 1),
        (6, 4, 1, 2, 0, 1, 1),
        (4, 8, 2, 2, 0, 1, 1),
        (5, 40, 3, 1, 1, 1, 1),
        (6, 36, 1, 1, 0, 1, 1),
        (6, 34, 3, 2, 1, 1, 2),
    ];
    for (i, &(c, o, k, st, p, d, g)) in cases.iter().enumerate() {
        let x = RefTensor::new(values(2 * c * 13 * 11, i as u32), vec![2, c, 13, 11]);
        let ws = [o, c / g, k, k];
        let w = values(ws.iter().product(), 7 + i as u32);
        let bias = values(o, 99);
        let s = ConvSpec {
            stride: (st, st),
            pad: (p, p),
            dil: (d, d),
            groups: g,
        };
        let mut want = direct(&x, &w, ws, &s);
        let plane = want.len() / (2 * o);
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / plane) % o];
        }
        // The epilogue must see every output exactly once, after the bias, with its
        // channel: doubling plus the channel number tells a missed or repeated run.
        let then = |ch: usize, run: &mut [f32]| map_run(run, |v| 2.0 * v + ch as f32);
        for (budget, min_tiles) in [
            (1, 1),
            (40, 1),
            (1 << 20, 1),
            (1, usize::MAX),
            (1 << 20, usize::MAX),
        ] {
            let t = tiling(budget, min_tiles);
            let got = conv2d_tiled(&x, (&w, &ws), (Some(&bias), None), &s, &t);
            let post = conv2d_tiled(&x, (&w, &ws), (Some(&bias), Some(&then)), &s, &t);
            assert_eq!(got.data.len(), want.len(), "case {i}");
            assert_eq!(post.data.len(), want.len(), "case {i}");
            for (j, ((a, p), b)) in got.data.iter().zip(&post.data).zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4,
                    "case {i}, budget {budget}: {a} vs {b}"
                );
                let ch = (j / plane) % o;
                assert_eq!(
                    *p,
                    2.0 * a + ch as f32,
                    "case {i}, budget {budget}, epilogue"
                );
            }
        }
    }
}

#[test]
fn kernels_wider_than_the_map_match_the_definition() {
    // YOLO12's 7×7 position convolutions (pad 3) meet 2×2 maps at small input sizes: for the
    // outer taps no output column reads inside the row (a stride-1 run once started before it).
    // (channels, out, kernel, stride, pad, groups, h, w) on 1×C×h×w maps.
    let cases = [
        (4, 4, 7, 1, 3, 4, 2, 2),
        (4, 4, 7, 1, 3, 1, 2, 2),
        (4, 4, 7, 2, 3, 4, 1, 3),
        (4, 4, 7, 2, 3, 1, 3, 1),
        (3, 3, 5, 1, 2, 3, 1, 1),
    ];
    for (i, &(c, o, k, st, p, g, h, w)) in cases.iter().enumerate() {
        let x = RefTensor::new(values(c * h * w, i as u32), vec![1, c, h, w]);
        let ws = [o, c / g, k, k];
        let wt = values(ws.iter().product(), 3 + i as u32);
        let s = ConvSpec {
            stride: (st, st),
            pad: (p, p),
            dil: (1, 1),
            groups: g,
        };
        let want = direct(&x, &wt, ws, &s);
        let got = conv2d(&x, &wt, &ws, None, &s);
        assert_eq!(got.data.len(), want.len(), "case {i}");
        for (a, b) in got.data.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "case {i}: {a} vs {b}");
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Large enough that every pass splits into several tasks: the convolutions (im2col + GEMM,
    // Winograd, depthwise) with an SiLU-like epilogue, each divided by tiles of columns and
    // over blocks of output channels; pooling, upsampling, concatenation.
    let x = RefTensor::new(values(16 * 48 * 40, 5), vec![1, 16, 48, 40]);
    let run = || {
        let mut outs = Vec::new();
        for (k, st, g) in [(3, 1, 1), (3, 2, 1), (1, 1, 1), (5, 1, 16)] {
            let o = if g == 1 { 40 } else { 16 };
            let ws = [o, 16 / g, k, k];
            let w = values(ws.iter().product(), 11);
            let s = ConvSpec {
                stride: (st, st),
                pad: (k / 2, k / 2),
                dil: (1, 1),
                groups: g,
            };
            let then = |_: usize, run: &mut [f32]| map_run(run, |v| v * sigmoid(v));
            outs.push(conv2d_then(&x, (&w, &ws), None, &s, &then).data);
            for min_tiles in [1, usize::MAX] {
                let t = Tiling {
                    min_tiles,
                    ..TILING
                };
                let post = (None, Some(&then as Epilogue));
                outs.push(conv2d_tiled(&x, (&w, &ws), post, &s, &t).data);
            }
        }
        let pooled = max_pool(&x, 5, 1, 2);
        outs.push(pooled.data.clone());
        outs.push(upsample_nearest(&x, 2).data);
        outs.push(cat_channels(&[&x, &pooled, &x]).data);
        outs.push(channels(&x, 3, 11).data);
        outs
    };
    let bits = |outs: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        outs.iter()
            .map(|o| o.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let mut first = None;
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        let got = bits(pool.install(run));
        match &first {
            None => first = Some(got),
            Some(want) => assert!(&got == want, "{threads} threads differ from one"),
        }
    }
}

#[test]
fn the_in_place_sum_is_the_sum() {
    // Several copy tasks long and not a multiple of one, with values of every sign and
    // magnitude, so a run the in-place sum missed or misaligned shows in the bits.
    let n = 200_003;
    let big: Vec<f32> = values(n, 7).iter().map(|v| v * 1e3).collect();
    let a = RefTensor::new(big, vec![1, 1, 1, n]);
    let b = RefTensor::new(values(n, 8), vec![1, 1, 1, n]);
    let want = add(&a, &b);
    let mut got = RefTensor::new(b.data.clone(), b.shape.clone());
    add_to(&mut got, &a);
    assert_eq!(got.shape, want.shape);
    assert!(
        got.data
            .iter()
            .zip(&want.data)
            .all(|(g, w)| g.to_bits() == w.to_bits()),
        "add_to differs from add"
    );
}
