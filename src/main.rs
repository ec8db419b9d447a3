fn main() {
    fuse_ema::runtime::timing::start();
    // SAFETY: first thing in `main`: the process has one thread, nothing reads the environment
    // concurrently.
    unsafe { fuse_ema::runtime::opt_out_of_telemetry() };
    fuse_ema::signals::install();
    fuse_ema::runtime::exit(fuse_ema::cli::run());
}
