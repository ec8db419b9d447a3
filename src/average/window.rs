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

/// Steps ahead of its mapping that a window is asked to be read from disk.
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
/// The readers map inputs for random access (no read-ahead on faults), so each window is also
/// announced [`READAHEAD`] steps before it is needed (`MADV_WILLNEED`): the kernel then reads it
/// from disk in large requests while earlier windows are averaged.
pub(super) fn prefetch(steps: &[Step], inputs: &[Input<'_>], done: SyncSender<()>) {
    let each = |s: &Step, advice| {
        for inp in inputs {
            if let Some(w) = mapped_window(&inp.tensors[s.k].1, &s.elems) {
                advise(w, advice);
            }
        }
    };
    for s in steps.iter().take(READAHEAD) {
        each(s, libc::MADV_WILLNEED);
    }
    for (j, s) in steps.iter().enumerate() {
        if let Some(later) = steps.get(j + READAHEAD) {
            each(later, libc::MADV_WILLNEED);
        }
        each(s, libc::MADV_POPULATE_READ);
        if done.send(()).is_err() {
            return;
        }
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
    if bytes.is_empty() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = bytes.as_ptr() as usize & !(page.max(1) - 1);
    let end = bytes.as_ptr() as usize + bytes.len();
    // SAFETY: the range lies within a read-only shared file mapping that outlives this call
    // (rounded out to whole pages of that same mapping). Neither advice changes its contents:
    // POPULATE_READ only faults pages in, and after DONTNEED the next access maps the same
    // file pages again.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, advice);
    }
}
