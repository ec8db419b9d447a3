//! `gemm_strided` against the definition, `gemm_bt` against it on a transposed copy, and its bits against the thread count and against
//! `parallel` (the convolution workers call it with `parallel = false`, the rest of the
//! interpreter with `true`: one layer must give the same bits either way).

use super::{gemm_bt, gemm_strided};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// (m, k, n) of a product.
type Dims = (usize, usize, usize);
/// (lda, ldb, ldc): how many floats apart the rows of a, b and c lie.
type Strides = (usize, usize, usize);

/// Shapes in the interpreter's ranges: narrow m (yolo11n's 16–64), m past the AVX-512 kernel's
/// 64-row tile with a ragged edge, k past one cache block (several partial sums per element),
/// n ragged against every column tile, and the strided layouts of im2col tiles (ldc > n) and
/// Winograd (ldb > n).
const SHAPES: &[(Dims, Strides)] = &[
    ((16, 27, 1000), (27, 1000, 1200)),
    ((48, 48, 640), (48, 1280, 640)),
    ((64, 576, 330), (576, 330, 400)),
    ((130, 1100, 97), (1100, 97, 97)),
    ((200, 64, 1301), (70, 1301, 1400)),
];

fn product((m, k, n): Dims, (lda, ldb, ldc): Strides, parallel: bool) -> Vec<f32> {
    let a = values((m - 1) * lda + k, 1);
    let b = values((k - 1) * ldb + n, 2);
    // NaN outside the product: the GEMM must leave the gaps of a strided c alone.
    let mut c = vec![f32::NAN; (m - 1) * ldc + n];
    gemm_strided((&a, lda), (&b, ldb), (&mut c, ldc), (m, k, n), parallel);
    c
}

#[test]
fn products_match_the_definition() {
    for &((m, k, n), (lda, ldb, ldc)) in SHAPES {
        let c = product((m, k, n), (lda, ldb, ldc), true);
        let (a, b) = (values((m - 1) * lda + k, 1), values((k - 1) * ldb + n, 2));
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| f64::from(a[i * lda + p]) * f64::from(b[p * ldb + j]))
                    .sum();
                let got = c[i * ldc + j];
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                    "{m}×{k}×{n} at ({i}, {j}): {got} vs {want}"
                );
            }
            if i + 1 < m {
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
        }
    }
}

#[test]
fn bits_do_not_depend_on_threads_or_parallel() {
    for &(dims, strides) in SHAPES {
        let want: Vec<u32> = product(dims, strides, false)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            for parallel in [false, true] {
                let got: Vec<u32> = pool
                    .install(|| product(dims, strides, parallel))
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert!(
                    got == want,
                    "{dims:?}: {threads} threads, parallel = {parallel} differ"
                );
            }
        }
    }
}

#[test]
fn transposed_weights_give_the_bits_of_a_transposed_copy() {
    // (rows, in, out) of `nn.Linear` products: RT-DETR's 256-wide layers on 300 queries and a
    // ragged 20×20 encoder map, a narrow head, and one past a cache block in k.
    for (m, k, n) in [
        (300, 256, 1024),
        (400, 256, 256),
        (300, 256, 4),
        (37, 1100, 130),
    ] {
        let a = values(m * k, 3);
        let w = values(n * k, 4);
        let mut wt = vec![0.0; k * n];
        for j in 0..n {
            for i in 0..k {
                wt[i * n + j] = w[j * k + i];
            }
        }
        let mut want = vec![f32::NAN; m * n];
        gemm_strided((&a, k), (&wt, n), (&mut want, n), (m, k, n), true);
        let mut got = vec![f32::NAN; m * n];
        gemm_bt((&a, k), (&w, k), (&mut got, n), (m, k, n));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&got) == bits(&want), "{m}×{k}×{n}: bits differ");
        for (i, row) in got.chunks(n).enumerate() {
            for (j, &g) in row.iter().enumerate() {
                let d: f64 = (0..k)
                    .map(|p| f64::from(a[i * k + p]) * f64::from(w[j * k + p]))
                    .sum();
                assert!((f64::from(g) - d).abs() <= 1e-5 * (k as f64).sqrt() * 4.0);
            }
        }
    }
}

#[test]
#[should_panic(expected = "gemm: b too short")]
fn a_short_transposed_operand_is_refused() {
    let (m, k, n) = (20, 30, 40);
    let (a, w) = (values(m * k, 5), values(n * k - 1, 6));
    let mut c = vec![0.0; m * n];
    gemm_bt((&a, k), (&w, k), (&mut c, n), (m, k, n));
}

#[test]
#[should_panic(expected = "gemm: a too short")]
fn strides_that_wrap_are_refused() {
    // (m − 1)·lda overflows usize: a wrapping check would pass and the call read anywhere.
    let (a, b) = (values(4, 7), values(4, 8));
    let mut c = vec![0.0; 4];
    gemm_strided(
        (&a, usize::MAX / 2 + 2),
        (&b, 2),
        (&mut c, 2),
        (3, 2, 2),
        false,
    );
}
