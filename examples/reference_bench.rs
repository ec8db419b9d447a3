//! Times the reference interpreter: `cargo run --release --example reference_bench -- CKPT [SIZE]`.
//! Prints the median of 5 runs of one 1×3×SIZE×SIZE image through the checkpoint's EMA.

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: reference_bench CKPT [SIZE]");
    let size: usize = args.next().map(|s| s.parse().expect("size")).unwrap_or(640);
    let ckpt = fuse_ema::io::open(std::path::Path::new(&path)).expect("readable checkpoint");
    let located = fuse_ema::ema::locate(&ckpt, &Default::default()).expect("EMA");
    let g = &ckpt.graph;
    let v = g.dict_get(&ckpt.root, &located.ema.origin).expect("module");
    let mut r = fuse_ema::reference::Reference::new(fuse_ema::checkpoint::py::ModuleRef { g, v })
        .expect("model");
    let images = fuse_ema::parity::seeded_images(&[1, 3, size, size], 0);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let out = r.run(images.clone()).expect("runs");
        times.push(t.elapsed().as_secs_f64());
        assert!(!out.is_empty());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "reference interpreter, 1x3x{size}x{size}: median {:.3} s (min {:.3} s)",
        times[2], times[0]
    );
}
