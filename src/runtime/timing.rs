//! Per-phase wall times for benchmarking the parity check: with `FUSE_EMA_TIMING` set in the
//! environment, each timed phase prints `fuse-ema: timing: <phase>: <seconds> s` on stderr when
//! it ends. Off (the default) it costs one environment look-up per process.

use std::sync::OnceLock;
use std::time::Instant;

/// Whether `FUSE_EMA_TIMING` is set (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUSE_EMA_TIMING").is_some())
}

/// Runs `f`, reporting its wall time as phase `name` when timing is enabled.
pub fn phase<R>(name: &str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    eprintln!(
        "fuse-ema: timing: {name}: {:.3} s",
        start.elapsed().as_secs_f64()
    );
    out
}
