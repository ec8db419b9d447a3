//! Times GEMM backends on the shapes the reference interpreter issues (logged from
//! `gemm_strided` on yolo11n, yolo11x and rtdetr-l at 640), on one thread and on two.
//!
//! Usage: `cargo run --release --manifest-path bench/gemm/Cargo.toml [--features rten,faer] [-- SECONDS]`
//! (SECONDS: the least time spent per shape, backend and thread count; default 0.3;
//! `GEMM_BENCH_LOG=bench/gemm/shapes/yolo11x.txt` projects one inference's GEMM time instead). Every
//! backend's result is checked against `gemm` 0.18.2's before it is timed. Prints one markdown
//! table of GFLOP/s (best repetition: the machine is shared, and the best run is the one least
//! disturbed by other work; CPU time on one thread, wall time on two).

use std::time::{Duration, Instant};

/// One product as the interpreter issues it: a (m×k, rows `lda` apart) · b (k×n, rows `ldb`
/// apart) → c (m×n, rows `ldc` apart).
struct Shape {
    /// Where it comes from (model, layer kind, calls per inference).
    what: &'static str,
    m: usize,
    k: usize,
    n: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
}

const fn shape(
    what: &'static str,
    (m, k, n): (usize, usize, usize),
    (lda, ldb, ldc): (usize, usize, usize),
) -> Shape {
    Shape {
        what,
        m,
        k,
        n,
        lda,
        ldb,
        ldc,
    }
}

/// The shapes that carry most of the FLOPs of the three models, and yolo11n's narrow ones.
const SHAPES: &[Shape] = &[
    shape(
        "11x 3×3 im2col tile ×3",
        (768, 6912, 520),
        (6912, 520, 1600),
    ),
    shape(
        "11x 3×3 im2col tile ×11",
        (384, 3456, 560),
        (3456, 560, 6400),
    ),
    shape("11x 1×1 ×4", (768, 1536, 1600), (1536, 1600, 1600)),
    shape("11x winograd ×384", (192, 192, 400), (192, 6400, 400)),
    shape(
        "11x 3×3 im2col tile ×22",
        (192, 864, 1120),
        (864, 1120, 25600),
    ),
    shape("11x winograd ×816", (96, 96, 520), (96, 8320, 520)),
    shape("11x 1×1 ×1", (384, 384, 25600), (384, 25600, 25600)),
    shape("11x 1×1 ×1", (384, 1536, 6400), (1536, 6400, 6400)),
    shape("rtdetr winograd ×144", (256, 256, 520), (256, 8320, 520)),
    shape("rtdetr linear ×7", (8400, 256, 256), (256, 256, 256)),
    shape("rtdetr 1×1 ×2", (512, 2176, 1600), (2176, 1600, 1600)),
    shape("rtdetr winograd ×960", (48, 48, 640), (48, 10240, 640)),
    shape("rtdetr decoder ×44", (300, 256, 256), (256, 256, 256)),
    shape("11n winograd ×96", (64, 64, 520), (64, 8320, 520)),
    shape("11n 3×3 im2col tile ×3", (64, 576, 1760), (576, 1760, 6400)),
    shape("11n 1×1 ×4", (128, 192, 1600), (192, 1600, 1600)),
    shape(
        "11n 3×3 im2col tile ×3",
        (32, 144, 7200),
        (144, 7200, 25600),
    ),
    shape("11n 1×1 ×1", (64, 48, 25600), (48, 25600, 25600)),
    shape(
        "11n stem im2col tile ×2",
        (16, 27, 38720),
        (27, 38720, 102400),
    ),
    shape("11n winograd ×144", (64, 64, 100), (64, 1600, 100)),
];

/// A backend: computes `c = a · b` for a shape, on the current rayon pool (`threads` threads).
type Backend = fn(&Shape, &[f32], &[f32], &mut [f32], usize);

fn gemm18(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let par = if threads > 1 {
        gemm18::Parallelism::Rayon(threads)
    } else {
        gemm18::Parallelism::None
    };
    // SAFETY: the buffers are allocated with the shape's extents (see `buffers`).
    unsafe {
        gemm18::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.ldc as isize,
            false,
            a.as_ptr(),
            1,
            s.lda as isize,
            b.as_ptr(),
            1,
            s.ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn gemm19(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let par = if threads > 1 {
        gemm19::Parallelism::Rayon(threads)
    } else {
        gemm19::Parallelism::None
    };
    // SAFETY: as in `gemm18`.
    unsafe {
        gemm19::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.ldc as isize,
            false,
            a.as_ptr(),
            1,
            s.lda as isize,
            b.as_ptr(),
            1,
            s.ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// matrixmultiply threads on a pool of its own (MATMUL_NUM_THREADS), not rayon's: one thread
/// only here.
fn mm(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], _threads: usize) {
    // SAFETY: as in `gemm18`.
    unsafe {
        matrixmultiply::sgemm(
            s.m,
            s.k,
            s.n,
            1.0,
            a.as_ptr(),
            s.lda as isize,
            1,
            b.as_ptr(),
            s.ldb as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            s.ldc as isize,
            1,
        );
    }
}

#[cfg(feature = "rten")]
fn rten(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], _threads: usize) {
    use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions};
    use rten_tensor::NdTensorView;
    thread_local! {
        static EXEC: GemmExecutor<f32> = GemmExecutor::default();
        static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let av =
        NdTensorView::from_data_with_strides([s.m, s.k], &a[..(s.m - 1) * s.lda + s.k], [s.lda, 1])
            .expect("a view");
    let bv =
        NdTensorView::from_data_with_strides([s.k, s.n], &b[..(s.k - 1) * s.ldb + s.n], [s.ldb, 1])
            .expect("b view");
    EXEC.with(|exec| {
        // rten-gemm writes a contiguous output only: a strided c costs a copy.
        if s.ldc == s.n {
            exec.gemm(
                &mut c[..s.m * s.n],
                GemmInputA::Unpacked(av),
                GemmInputB::Unpacked(bv),
                GemmOptions::default(),
            )
            .expect("rten gemm");
            return;
        }
        OUT.with_borrow_mut(|out| {
            out.resize(s.m * s.n, 0.0);
            exec.gemm(
                out,
                GemmInputA::Unpacked(av),
                GemmInputB::Unpacked(bv),
                GemmOptions::default(),
            )
            .expect("rten gemm");
            for (row, src) in c.chunks_mut(s.ldc).zip(out.chunks(s.n)) {
                row[..s.n].copy_from_slice(src);
            }
        });
    });
}

#[cfg(feature = "faer")]
fn faer(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    use faer::{Accum, MatMut, MatRef, Par};
    let par = if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    // SAFETY: as in `gemm18`.
    let (av, bv, cv) = unsafe {
        (
            MatRef::<f32>::from_raw_parts(a.as_ptr(), s.m, s.k, s.lda as isize, 1),
            MatRef::<f32>::from_raw_parts(b.as_ptr(), s.k, s.n, s.ldb as isize, 1),
            MatMut::<f32>::from_raw_parts_mut(c.as_mut_ptr(), s.m, s.n, s.ldc as isize, 1),
        )
    };
    faer::linalg::matmul::matmul(cv, Accum::Replace, av, bv, 1.0, par);
}

fn backends() -> Vec<(&'static str, Backend, bool)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Backend, bool)> = vec![
        ("gemm 0.18.2", gemm18, true),
        ("gemm 0.19 x86-v4", gemm19, true),
        ("matrixmultiply 0.3", mm, false),
    ];
    #[cfg(feature = "rten")]
    v.push(("rten-gemm 0.27", rten, true));
    #[cfg(feature = "faer")]
    v.push(("faer 0.24", faer, true));
    // GEMM_BENCH_ONLY=<part of a name> times one backend (e.g. under `perf record`).
    if let Some(only) = std::env::var_os("GEMM_BENCH_ONLY") {
        let only = only.to_string_lossy().into_owned();
        v.retain(|(name, _, _)| name.contains(&only));
    }
    v
}

/// Deterministic values in [-1, 1).
fn fill(v: &mut [f32], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for e in v {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *e = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
}

fn buffers(s: &Shape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0; (s.m - 1) * s.lda + s.k];
    let mut b = vec![0.0; (s.k - 1) * s.ldb + s.n];
    fill(&mut a, 1);
    fill(&mut b, 2);
    (a, b, vec![0.0; (s.m - 1) * s.ldc + s.n])
}

/// This process's CPU time (all threads).
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The time of repetitions run for at least `least`: on one thread the median CPU time (the
/// other builders on this 2-core machine preempt a long product, and CPU time does not count
/// that; the median, because the least of thousands of microsecond readings is an outlier), on
/// two the best wall time.
fn time(f: &mut dyn FnMut(), least: Duration, threads: usize) -> Duration {
    f();
    let (start, mut all) = (Instant::now(), Vec::new());
    while all.len() < 3 || start.elapsed() < least {
        let (t, c) = (Instant::now(), cpu_now());
        f();
        all.push(if threads == 1 {
            cpu_now() - c
        } else {
            t.elapsed()
        });
    }
    all.sort();
    if threads == 1 {
        all[all.len() / 2]
    } else {
        all[0]
    }
}

/// Projects one inference's GEMM time per backend from a shape log (bench/gemm/shapes/*.txt:
/// `calls m k n lda ldb ldc parallel` per line): every distinct shape timed on one thread,
/// times its calls.
fn project(path: &str, least: Duration, backends: &[(&'static str, Backend, bool)]) {
    let text = std::fs::read_to_string(path).expect("shape log");
    let rows: Vec<(usize, Shape)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let v: Vec<usize> = l
                .split_whitespace()
                .take(7)
                .map(|x| x.parse().expect("number"))
                .collect();
            (v[0], shape("", (v[1], v[2], v[3]), (v[4], v[5], v[6])))
        })
        .filter(|(_, s)| s.m > 0 && s.n > 0 && s.k > 0)
        .collect();
    let flops: f64 = rows
        .iter()
        .map(|(c, s)| (2 * c * s.m * s.k * s.n) as f64)
        .sum();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut totals = vec![0.0f64; backends.len()];
    for (calls, s) in &rows {
        let (a, b, mut c) = buffers(s);
        for (i, (_, f, _)) in backends.iter().enumerate() {
            let d = pool.install(|| time(&mut || f(s, &a, &b, &mut c, 1), least, 1));
            totals[i] += d.as_secs_f64() * *calls as f64;
        }
    }
    for (i, (name, _, _)) in backends.iter().enumerate() {
        println!(
            "{path}: {name}: {:.3} s GEMM per inference on one thread ({:.1} GFLOP, {:.0} GFLOP/s)",
            totals[i],
            flops / 1e9,
            flops / totals[i] / 1e9
        );
    }
}

/// FLOP/s of independent FMAs on 256-bit registers (what `gemm` 0.18.2's AVX2 kernel issues)
/// and on 512-bit ones (its 0.19 AVX-512 kernel): the ceiling for any kernel on this core.
#[cfg(target_arch = "x86_64")]
fn peak() {
    use std::arch::x86_64::*;
    const ITERS: usize = 20_000_000;
    // Twelve independent accumulators hide the FMA latency (4 cycles × 2 pipes on Zen 4).
    #[target_feature(enable = "avx2,fma")]
    fn fma256() -> f32 {
        let (x, y) = (_mm256_set1_ps(1.000_001), _mm256_set1_ps(0.999_999));
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..ITERS {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        acc.iter().map(|a| _mm256_cvtss_f32(*a)).sum()
    }
    #[target_feature(enable = "avx512f")]
    fn fma512() -> f32 {
        let (x, y) = (_mm512_set1_ps(1.000_001), _mm512_set1_ps(0.999_999));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..ITERS {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }
    let run = |lanes: usize, f: &dyn Fn() -> f32| {
        let c = cpu_now();
        std::hint::black_box(f());
        let t = (cpu_now() - c).as_secs_f64();
        (2 * lanes * 12 * ITERS) as f64 / t / 1e9
    };
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were detected.
        println!(
            "peak 256-bit FMA: {:.0} GFLOP/s (one thread, CPU time)",
            run(8, &|| unsafe { fma256() })
        );
    }
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected.
        println!(
            "peak 512-bit FMA: {:.0} GFLOP/s (one thread, CPU time)",
            run(16, &|| unsafe { fma512() })
        );
    }
}

fn main() {
    let least = Duration::from_secs_f64(
        std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0.3),
    );
    let backends = backends();
    // GEMM_BENCH_LOG=<shape log>[,<shape log>…]: the per-model projection instead of the table.
    if let Some(logs) = std::env::var_os("GEMM_BENCH_LOG") {
        for path in logs.to_string_lossy().split(',') {
            project(path, least, &backends);
        }
        return;
    }
    let pools: Vec<rayon::ThreadPool> = [1, 2]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("pool")
        })
        .collect();
    #[cfg(target_arch = "x86_64")]
    peak();
    print!("| shape (m×k×n) | where |");
    for (name, _, _) in &backends {
        print!(" {name} 1T | 2T |");
    }
    println!();
    print!("|---|---|");
    for _ in &backends {
        print!("---|---|");
    }
    println!();
    let mut totals = vec![[0.0f64; 2]; backends.len()];
    for s in SHAPES {
        let (a, b, mut c) = buffers(s);
        let mut want = c.clone();
        gemm18(s, &a, &b, &mut want, 1);
        let flop = 2.0 * (s.m * s.k * s.n) as f64;
        print!("| {}×{}×{} | {} |", s.m, s.k, s.n, s.what);
        for (i, (name, f, threaded)) in backends.iter().enumerate() {
            c.fill(f32::NAN);
            f(s, &a, &b, &mut c, 1);
            let worst = (0..s.m)
                .flat_map(|r| (0..s.n).map(move |j| r * s.ldc + j))
                .map(|i| (c[i] - want[i]).abs())
                .fold(
                    0.0f32,
                    |w, d| if d.is_nan() { f32::INFINITY } else { w.max(d) },
                );
            assert!(
                worst < 1e-3 * (s.k as f32).sqrt(),
                "{name}: off by {worst} on {}",
                s.what
            );
            for (t, pool) in pools.iter().enumerate() {
                if t == 1 && !threaded {
                    print!(" – |");
                    continue;
                }
                let d = pool.install(|| time(&mut || f(s, &a, &b, &mut c, t + 1), least, t + 1));
                totals[i][t] += d.as_secs_f64();
                print!(" {:.0} |", flop / d.as_secs_f64() / 1e9);
            }
        }
        println!();
    }
    let flops: f64 = SHAPES.iter().map(|s| 2.0 * (s.m * s.k * s.n) as f64).sum();
    print!("| all shapes once | harmonic |");
    for (i, (_, _, threaded)) in backends.iter().enumerate() {
        print!(" {:.0} |", flops / totals[i][0] / 1e9);
        if *threaded {
            print!(" {:.0} |", flops / totals[i][1] / 1e9);
        } else {
            print!(" – |");
        }
    }
    println!();
}
