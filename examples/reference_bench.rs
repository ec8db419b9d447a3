//! Times the reference interpreter: `cargo run --release --example reference_bench -- CKPT [SIZE]
//! [RUNS]`. Runs one 1×3×SIZE×SIZE seeded image through the checkpoint's EMA RUNS times (default
//! 5) and prints, per run, wall time, the process's CPU time (and the kernel's share of it:
//! mostly page faults) and its minor page faults over the run (the first run is what `export`'s
//! parity check pays: it runs the interpreter once), then the median, and a checksum of the
//! outputs' bits (equal between builds or thread counts iff the results are bit-identical).

/// (user + system CPU seconds, system CPU seconds, minor page faults) of the process so far.
fn usage() -> (f64, f64, i64) {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return (f64::NAN, f64::NAN, -1);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(u.ru_utime) + secs(u.ru_stime),
        secs(u.ru_stime),
        u.ru_minflt,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: reference_bench CKPT [SIZE] [RUNS]");
    let size: usize = args.next().map(|s| s.parse().expect("size")).unwrap_or(640);
    let runs: usize = args
        .next()
        .map(|s| s.parse().expect("runs"))
        .unwrap_or(5)
        .max(1);
    let ckpt = fuse_ema::io::open(std::path::Path::new(&path)).expect("readable checkpoint");
    let located = fuse_ema::ema::locate(&ckpt, &Default::default()).expect("EMA");
    let g = &ckpt.graph;
    let v = g.dict_get(&ckpt.root, &located.ema.origin).expect("module");
    let mut r = fuse_ema::reference::Reference::new(fuse_ema::checkpoint::py::ModuleRef { g, v })
        .expect("model");
    let images = fuse_ema::parity::seeded_images(&[1, 3, size, size], 0);
    let mut times = Vec::new();
    let mut sum = 0u64;
    for i in 0..runs {
        let input = images.clone();
        let (c0, s0, f0) = usage();
        let t = std::time::Instant::now();
        let out = r.run(input).expect("runs");
        let wall = t.elapsed().as_secs_f64();
        let (c1, s1, f1) = usage();
        println!(
            "run {i}: {wall:.4} s wall, {:.4} s CPU ({:.4} s system), {} minor faults",
            c1 - c0,
            s1 - s0,
            f1 - f0
        );
        times.push(wall);
        sum = out
            .iter()
            .flat_map(|t| &t.data)
            .fold(0u64, |s, v| s.rotate_left(5) ^ u64::from(v.to_bits()));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "reference interpreter, 1x3x{size}x{size}: median {:.4} s (min {:.4} s); output bits checksum {sum:016x}",
        times[runs / 2],
        times[0]
    );
}
