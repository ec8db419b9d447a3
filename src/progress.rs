//! Progress reporting for long work on large files. The library only counts bytes; the CLI
//! decides whether and how to show them (a bar on a terminal, nothing otherwise).

/// Receives the amount of tensor data processed.
pub trait Progress: Sync {
    /// Work of `total` bytes begins.
    fn start(&self, _total: u64) {}
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The work is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn advance(&self, _bytes: u64) {}
}
