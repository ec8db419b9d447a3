//! Reading the inputs through their memory maps a window at a time: a helper thread maps the
//! windows ahead of the one being averaged (`MADV_POPULATE_READ`: one call sets up a window's page
//! tables from the page cache, or reads it from disk), and each window is dropped from this
//! process's page tables once averaged (`MADV_DONTNEED`), so resident memory stays a few windows
//! per input however large the inputs are. No byte is copied out of the page cache.

use std::sync::mpsc::{Receiver, SyncSender};

use super::Input;
use crate::tensor::Tensor;

/// Steps the helper thread may run ahead of the averaging.
pub(super) const AHEAD: usize = 2;

/// Steps per read-ahead request: every `READAHEAD` steps, each input's windows of the block of
/// steps after the next are requested from disk at once (8 MiB of f32 per input).
const READAHEAD: usize = 8;

/// One step of the averaging: elements `elems` of tensor `k` of every input.
#[derive(Clone, Debug)]
pub(super) struct Step {
    /// Index of the tensor (in the first input's order).
    pub k: usize,
    /// The elements.
    pub elems: std::ops::Range<usize>,
}

/// The bytes of `t`'s elements `elems` when they lie contiguously in a memory map (the only
/// bytes the page-table advice applies to).
pub(super) fn mapped_window<'t>(t: &'t Tensor, elems: &std::ops::Range<usize>) -> Option<&'t [u8]> {
    if !t.storage.is_mapped() {
        return None;
    }
    let es = t.dtype.size();
    let all = t.contiguous_bytes().ok().flatten()?;
    all.get(elems.start * es..elems.end * es)
}

/// Maps every input's window of each step ahead of the averaging, at most [`AHEAD`] steps
/// ahead; one message per step says its windows are mapped. Stops when the receiver is gone.
///
/// The readers map inputs for random access (no read-ahead on faults), so windows are also
/// requested a block of [`READAHEAD`] steps before they are needed (`MADV_WILLNEED`): the kernel
/// then reads them from disk in large requests while earlier windows are averaged.
pub(super) fn prefetch(steps: &[Step], inputs: &[Input<'_>], done: SyncSender<()>) {
    let each = |s: &Step, advice| {
        for inp in inputs {
            if let Some(w) = mapped_window(&inp.tensors[s.k].1, &s.elems) {
                advise(w, advice);
            }
        }
    };
    for (j, s) in steps.iter().enumerate() {
        if j % READAHEAD == 0 {
            let from = if j == 0 { 0 } else { j + READAHEAD };
            let ahead = steps.get(from..(j + 2 * READAHEAD).min(steps.len()));
            for inp in inputs {
                read_ahead(inp, ahead.unwrap_or_default());
            }
        }
        each(s, libc::MADV_POPULATE_READ);
        if done.send(()).is_err() {
            return;
        }
    }
}

/// Asks the kernel to read `inp`'s windows of `steps` from disk, adjacent windows merged into one
/// request each (large requests per input keep the disk streaming although the inputs are read
/// in turn).
fn read_ahead(inp: &Input<'_>, steps: &[Step]) {
    // (address, length) of the run of adjacent windows so far.
    let mut run: Option<(usize, usize)> = None;
    for s in steps {
        let Some(w) = mapped_window(&inp.tensors[s.k].1, &s.elems) else {
            continue;
        };
        let (at, len) = (w.as_ptr() as usize, w.len());
        run = match run {
            Some((a, l)) if a + l == at => Some((a, l + len)),
            Some((a, l)) => {
                advise_range(a, l, libc::MADV_WILLNEED);
                Some((at, len))
            }
            None => Some((at, len)),
        };
    }
    if let Some((a, l)) = run {
        advise_range(a, l, libc::MADV_WILLNEED);
    }
}

/// Waits until the helper has mapped the next step's windows (or has stopped). Without a
/// helper, asks for the step's windows to be read in one request each.
pub(super) fn wait(ready: Option<&Receiver<()>>, step: &Step, inputs: &[Input<'_>]) {
    match ready {
        Some(r) => {
            let _ = r.recv();
        }
        None => {
            for inp in inputs {
                if let Some(w) = mapped_window(&inp.tensors[step.k].1, &step.elems) {
                    advise(w, libc::MADV_WILLNEED);
                }
            }
        }
    }
}

/// Drops `bytes` (part of a read-only file map) from this process's page tables.
pub(super) fn release(bytes: &[u8]) {
    advise(bytes, libc::MADV_DONTNEED);
}

/// Advice on the pages holding `bytes`; a kernel that does not know it just does not take it.
fn advise(bytes: &[u8], advice: libc::c_int) {
    advise_range(bytes.as_ptr() as usize, bytes.len(), advice);
}

/// Advice on the pages of `len` bytes at `addr`, which lie in the inputs' read-only file maps.
fn advise_range(addr: usize, len: usize, advice: libc::c_int) {
    if len == 0 {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = addr & !(page.max(1) - 1);
    let end = addr + len;
    // SAFETY: the range lies within read-only shared file mappings that outlive this call
    // (rounded out to whole pages of those mappings). None of the advice used changes their
    // contents: WILLNEED only starts reads into the page cache, POPULATE_READ only faults pages
    // in, and after DONTNEED the next access maps the same file pages again.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, advice);
    }
}
