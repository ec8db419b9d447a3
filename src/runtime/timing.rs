//! Per-phase figures for benchmarking the parity check: with `FUSE_EMA_TIMING` set in the
//! environment, each timed phase prints `fuse-ema: timing: <phase>: <wall> s wall, <cpu> s CPU
//! (process), peak RSS <MB> MB, ends at <t> s` on stderr when it ends (the peak is the process's so
//! far, so a phase's own peak shows where it rises; `t` counts from the process's start). Off (the default) it costs one environment look-up
//! per process.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Notes the process's start, from which each phase's end is reported; `main` calls it first.
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Seconds since [`start`] (or since the first phase, when `start` was not called).
fn since_start() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Reports the time since the process started as point `name` when timing is enabled.
pub fn mark(name: &str) {
    if enabled() {
        say(format_args!("{name}: at {:.3} s", since_start()));
    }
}

/// Whether `FUSE_EMA_TIMING` is set (read once).
pub fn enabled() -> bool {
    mode().is_some()
}

fn mode() -> Option<&'static str> {
    static MODE: OnceLock<Option<String>> = OnceLock::new();
    MODE.get_or_init(|| {
        std::env::var_os("FUSE_EMA_TIMING").map(|v| v.to_string_lossy().into_owned())
    })
    .as_deref()
}

/// (user + system CPU seconds of the whole process, peak RSS in MB).
fn usage() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return (f64::NAN, f64::NAN);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(u.ru_utime) + secs(u.ru_stime),
        u.ru_maxrss as f64 / 1024.0,
    )
}

/// Runs `f`, reporting its wall time, the process's CPU time over it and the peak RSS so far as
/// phase `name` when timing is enabled.
pub fn phase<R>(name: &str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let (cpu0, _) = usage();
    let start = Instant::now();
    let out = f();
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, rss) = usage();
    say(format_args!(
        "{name}: {wall:.3} s wall, {:.3} s CPU (process), peak RSS {rss:.0} MB, ends at {:.3} s",
        cpu1 - cpu0,
        since_start()
    ));
    out
}

/// One timing line on stderr; a stderr that cannot be written (a closed pipe) loses the line,
/// never the run.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "fuse-ema: timing: {line}");
}
