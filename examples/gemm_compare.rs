//! Compares the two GEMMs the reference interpreter could use on yolo11x's convolution shapes at
//! 640 (docs/benchmarks.md, "GEMM choice"): matrixmultiply (through ndarray, with its threading)
//! and the `gemm` crate (on rayon's pool). `cargo run --release --example gemm_compare`; prints,
//! per shape, the wall and process CPU time of one product (median of 5, the two alternating).

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// User + system CPU seconds of this process so far.
fn cpu_s() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn with_matrixmultiply(a: &[f32], b: &[f32], c: &mut [f32], (m, k, n): (usize, usize, usize)) {
    let a = ArrayView2::from_shape((m, k), a).expect("a");
    let b = ArrayView2::from_shape((k, n), b).expect("b");
    let mut c = ArrayViewMut2::from_shape((m, n), c).expect("c");
    general_mat_mul(1.0, &a, &b, 0.0, &mut c);
}

fn with_gemm(a: &[f32], b: &[f32], c: &mut [f32], (m, k, n): (usize, usize, usize)) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    // SAFETY: all three operands are dense row-major with exactly the extents asserted above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

fn main() {
    // (out channels, in channels × kernel, output pixels) of yolo11x's convolutions at 640.
    let shapes = [
        (160, 864, 25600),
        (160, 1440, 25600),
        (320, 320, 6400),
        (320, 2880, 6400),
        (640, 640, 1600),
        (640, 2880, 1600),
        (640, 5760, 1600),
    ];
    println!(
        "| m × k × n | matrixmultiply wall (CPU) | gemm wall (CPU) | GFLOP per CPU-s, mm → gemm |"
    );
    println!("|---|---|---|---|");
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 997) as f32 / 997.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 991) as f32 / 991.0 - 0.5).collect();
        let mut c = vec![0.0f32; m * n];
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..5 {
            for (which, t) in times.iter_mut().enumerate() {
                let (w0, c0) = (std::time::Instant::now(), cpu_s());
                if which == 0 {
                    with_matrixmultiply(&a, &b, &mut c, (m, k, n));
                } else {
                    with_gemm(&a, &b, &mut c, (m, k, n));
                }
                t.push((w0.elapsed().as_secs_f64(), cpu_s() - c0));
            }
        }
        let med = |v: &mut Vec<(f64, f64)>| {
            v.sort_by(|x, y| x.1.total_cmp(&y.1));
            v[2]
        };
        let (mm, gm) = (med(&mut times[0]), med(&mut times[1]));
        let gf = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "| {m} × {k} × {n} | {:.1} ms ({:.1} ms) | {:.1} ms ({:.1} ms) | {:.0} → {:.0} |",
            mm.0 * 1e3,
            mm.1 * 1e3,
            gm.0 * 1e3,
            gm.1 * 1e3,
            gf / mm.1,
            gf / gm.1
        );
    }
}
