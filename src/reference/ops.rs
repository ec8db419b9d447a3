//! Kernels of the reference interpreter, on plain row-major f32 buffers: the GEMM, batch norm,
//! activations, pooling, resizing; the convolutions are in `conv.rs` (re-exported here).
//!
//! Threads: the GEMM is the `gemm` crate's (its AVX-512 kernel where the CPU has it, chosen by
//! CPU feature, never by thread count), on rayon's pool (docs/benchmarks.md says why that
//! one); the convolutions call it single-threaded from their own one parallel loop
//! (`conv.rs`); every other pass over a feature map (batch norm, activations, sums) is split
//! over channels or chunks on the same pool. The GEMM splits only the output (never the sum
//! over k), and every other element is computed by the same expression in the same order as on
//! one thread, so the results do not depend on the thread count.

use rayon::prelude::*;

pub use super::conv::{Epilogue, conv2d, conv2d_then};
pub use super::maps::{add, add_to, cat_channels, channels, max_pool, upsample_nearest};

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
    a: (&[f32], usize),
    (b, ldb): (&[f32], usize),
    c: (&mut [f32], usize),
    dims: (usize, usize, usize),
    parallel: bool,
) {
    assert!(ldb >= dims.2, "gemm: b's rows overlap");
    gemm_checked(a, (b, ldb, 1), c, dims, parallel);
}

/// `c = a · wᵀ` (c overwritten) for row-major a (m×k) and w (n×k, as `nn.Linear` stores its
/// weight, or attention its keys), rows `lda`, `ldw`, `ldc` floats apart: the GEMM reads w
/// through its strides, so no transposed copy is made. The bits are those of [`gemm_strided`] on
/// the transposed copy (gemm_tests.rs).
pub(crate) fn gemm_bt(
    a: (&[f32], usize),
    (w, ldw): (&[f32], usize),
    c: (&mut [f32], usize),
    (m, k, n): (usize, usize, usize),
) {
    // For small or degenerate products the `gemm` crate may pick its kernel by the operands'
    // layout (a horizontal-reduction kernel for m·n ≤ 256, a row-major GEMV for one row or
    // column, its own loop for k ≤ 2), which would round differently: those go through the
    // copy, so the bits never depend on how w is stored. They are small, and so is the copy.
    if m * n <= 256 || m <= 1 || n <= 1 || k <= 2 {
        let mut wt = vec![0.0; k * n];
        for (j, row) in w.chunks(ldw.max(1)).take(n).enumerate() {
            for (i, &v) in row[..k].iter().enumerate() {
                wt[i * n + j] = v;
            }
        }
        return gemm_checked(a, (&wt, n, 1), c, (m, k, n), true);
    }
    gemm_checked(a, (w, 1, ldw), c, (m, k, n), true);
}

/// [`gemm_unchecked`] after checking that every element it reads or writes lies inside its
/// slice (and that c's rows do not overlap); an empty product writes nothing, an empty sum
/// zeros.
fn gemm_checked(
    (a, lda): (&[f32], usize),
    (b, rs, cs): (&[f32], usize, usize),
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
    // The last element each operand's strides reach, without wrapping (release builds do not
    // check overflow), and strides the crate's `isize` offsets can hold.
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows - 1)
            .checked_mul(rs)
            .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
            .filter(|_| rs <= isize::MAX as usize && cs <= isize::MAX as usize)
    };
    assert!(
        lda >= k && last(m, lda, k, 1).is_some_and(|e| e < a.len()),
        "gemm: a too short"
    );
    assert!(
        last(k, rs, n, cs).is_some_and(|e| e < b.len()),
        "gemm: b too short"
    );
    assert!(
        ldc >= n && last(m, ldc, n, 1).is_some_and(|e| e < c.len()),
        "gemm: c too short"
    );
    // SAFETY: the asserts above keep every element the call touches inside the three slices.
    unsafe { gemm_unchecked((a, lda), (b, rs, cs), (c, ldc), (m, k, n), parallel) }
}

/// The `gemm` crate's call: a's rows `lda` apart (columns adjacent), b's element (i, j) at
/// `b[i·rs + j·cs]`, c's rows `ldc` apart; on the pool when `parallel` and the product is large
/// enough.
///
/// # Safety
/// Every element those strides reach for the given extents lies inside its slice.
unsafe fn gemm_unchecked(
    (a, lda): (&[f32], usize),
    (b, rs, cs): (&[f32], usize, usize),
    (c, ldc): (&mut [f32], usize),
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) {
    let threads = if !parallel || m.saturating_mul(k).saturating_mul(n) < PAR_MIN * 16 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the caller's promise; `c` is borrowed mutably, so nothing aliases it.
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
            cs as isize,
            rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
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
    let mut out = super::pages::zeros(m * n);
    gemm(a, b, &mut out, m, k, n);
    out
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod gemm_tests;
