//! Kernels for token sequences (row-major (rows, channels) buffers), as the transformer modules
//! need them: linear layers, layer norm, GELU, multi-head attention, bilinear sampling with
//! `grid_sample`'s conventions, top-k. Plain loops and GEMM, written for the interpreter alone.

use super::ops;

/// `x · Wᵀ + b` for `rows` rows of `w`'s input width; `w` is (out, in) as `nn.Linear` stores it.
pub fn linear(x: &[f32], rows: usize, w: &[f32], out: usize, b: Option<&[f32]>) -> Vec<f32> {
    let inp = w.len() / out.max(1);
    let mut y = super::pages::zeros(rows * out);
    ops::gemm_bt((x, inp), (w, inp), (&mut y, out), (rows, inp, out));
    if let Some(b) = b {
        for row in y.chunks_exact_mut(out) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    y
}

/// Layer norm over each row of `c` values (biased variance, as `nn.LayerNorm`), in place.
pub fn layer_norm(x: &mut [f32], c: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (j, v) in row.iter_mut().enumerate() {
            *v = ((*v as f64 - mean) * inv) as f32 * gamma[j] + beta[j];
        }
    }
}

/// The error function by Abramowitz & Stegun 7.1.28: erf(x) = 1 − 1/(1 + a1·x + … + a6·x⁶)¹⁶
/// for x ≥ 0, odd. Its absolute error (≤ 3e-7) is far below the parity limits.
pub fn erf(x: f64) -> f64 {
    const A: [f64; 6] = [
        0.070_523_078_4,
        0.042_282_012_3,
        0.009_270_527_2,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    let t = x.abs();
    let mut p = 1.0;
    let mut pow = 1.0;
    for a in A {
        pow *= t;
        p += a * pow;
    }
    let y = 1.0 - 1.0 / p.powi(16);
    if x < 0.0 { -y } else { y }
}

/// GELU with the exact (erf) form, `nn.GELU()`'s default.
pub fn gelu(v: f32) -> f32 {
    let x = v as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// Scaled dot-product attention of one head: `q` (nq, d), `k` (nk, d), `v` (nk, dv) with row
/// strides `qs`, `ks`, `vs` (so heads can be read in place from (rows, heads·d) buffers); the
/// result (nq, dv) is written to `out` with row stride `os`. q is scaled before the product, as
/// PyTorch's attention does.
#[allow(clippy::too_many_arguments)]
pub fn attention_head(
    (q, qs): (&[f32], usize),
    (k, ks): (&[f32], usize),
    (v, vs): (&[f32], usize),
    (nq, nk, d, dv): (usize, usize, usize, usize),
    (out, os): (&mut [f32], usize),
) {
    let scale = (1.0 / d as f64).sqrt() as f32;
    let mut qt = vec![0.0f32; nq * d];
    for i in 0..nq {
        for j in 0..d {
            qt[i * d + j] = q[i * qs + j] * scale;
        }
    }
    // The keys, values and output are read and written through their strides: no copies.
    let mut a = super::pages::zeros(nq * nk);
    ops::gemm_bt((&qt, d), (k, ks), (&mut a, nk), (nq, d, nk));
    for row in a.chunks_exact_mut(nk) {
        ops::softmax_strided(row, 0, nk, 1);
    }
    ops::gemm_strided((&a, nk), (v, vs), (out, os), (nq, nk, dv), true);
}

/// `grid_sample` (bilinear, zeros padding, `align_corners=False`) of one point: adds `weight` ×
/// the value at normalised location (`x`, `y`) ∈ [0, 1]² (0 and 1 the outer pixel edges) to
/// `acc`. `value` holds the `h`×`w` map's pixels as rows of `row` floats, of which the `acc.len()`
/// starting at `col` are read.
#[allow(clippy::too_many_arguments)]
pub fn sample_bilinear(
    value: &[f32],
    (h, w, row, col): (usize, usize, usize, usize),
    x: f32,
    y: f32,
    weight: f32,
    acc: &mut [f32],
) {
    // Pixel centres sit at (i + 0.5) / size: the continuous pixel coordinate is loc·size − 0.5.
    let px = x * w as f32 - 0.5;
    let py = y * h as f32 - 0.5;
    if !(px.is_finite() && py.is_finite()) {
        return;
    }
    let (x0, y0) = (px.floor(), py.floor());
    let (fx, fy) = (px - x0, py - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    for (dy, wy) in [(0i64, 1.0 - fy), (1, fy)] {
        for (dx, wx) in [(0i64, 1.0 - fx), (1, fx)] {
            let (yy, xx) = (y0 + dy, x0 + dx);
            if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                continue;
            }
            let f = weight * wy * wx;
            let base = (yy as usize * w + xx as usize) * row + col;
            let n = acc.len();
            for (a, v) in acc.iter_mut().zip(&value[base..base + n]) {
                *a += f * v;
            }
        }
    }
}

/// The indices of the `k` largest values, largest first; equal values keep index order (as ONNX
/// `TopK` breaks ties), NaN sorting above everything.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265_0),
        ] {
            assert!((erf(x) - want).abs() < 5e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn bilinear_sampling_follows_grid_sample() {
        // A 2×2 map with one channel: 1 2 / 3 4.
        let v = [1.0, 2.0, 3.0, 4.0];
        let at = |x: f32, y: f32| {
            let mut a = [0.0f32];
            sample_bilinear(&v, (2, 2, 1, 0), x, y, 1.0, &mut a);
            a[0]
        };
        assert_eq!(at(0.25, 0.25), 1.0, "pixel centre");
        assert_eq!(at(0.5, 0.5), 2.5, "between all four");
        // Half a pixel outside the left edge: half of pixel (0, 0) against zero padding.
        assert_eq!(at(0.0, 0.25), 0.5);
        assert_eq!(at(1.5, 0.5), 0.0, "far outside");
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.5, 0.9, 0.5, 0.1, 0.9], 3), vec![1, 4, 0]);
    }

    #[test]
    fn layer_norm_normalises_rows() {
        let mut x = vec![1.0, 2.0, 3.0, 10.0, 10.0, 10.0];
        layer_norm(&mut x, 3, &[1.0; 3], &[0.5; 3], 1e-5);
        assert!((x[0] + 1.224_74 - 0.5).abs() < 1e-4 && (x[1] - 0.5).abs() < 1e-6);
        assert!(x[3..].iter().all(|v| (v - 0.5).abs() < 1e-6));
    }
}
