//! Fresh feature-map buffers on transparent huge pages.
//!
//! Each layer's output is a new buffer, most of them megabytes, which glibc maps fresh (`mmap`)
//! and unmaps when it is freed: every 4 KiB of every output used to be a page fault (and the
//! kernel zeroing the page) just before a kernel overwrote it — ~100 000 faults per yolo11x run
//! at 640, a tenth of its CPU time. Where transparent huge pages are enabled for regions that ask
//! for them (`madvise`, the usual default), asking for them on a new buffer makes the kernel
//! fault it in 2 MiB at a time: the same zeroing, 512 times fewer faults and TLB entries. Where
//! they are off, the advice does nothing. Recycling dropped buffers in a pool instead was measured
//! and dropped: it saved a fifth of the faults and raised the run's peak memory by up to the
//! pool's size (docs/benchmarks.md, "Feature-map buffers recycled").

/// A transparent huge page (x86-64, and the size the advice is worth asking for).
const HUGE: usize = 2 << 20;

/// `len` zeros, on huge pages where the buffer spans them.
pub(super) fn zeros(len: usize) -> Vec<f32> {
    // `calloc` of a fresh mapping touches none of its pages, so the advice comes before the
    // first fault.
    let v = vec![0.0; len];
    advise(&v);
    v
}

/// An empty vector with room for `len` floats, on huge pages where it spans them (for a caller
/// that writes it through its spare capacity).
pub(crate) fn with_capacity(len: usize) -> Vec<f32> {
    let v = Vec::with_capacity(len);
    advise(&v);
    v
}

/// Asks for huge pages on the whole 2 MiB pages inside `v`'s allocation.
fn advise(v: &Vec<f32>) {
    let bytes = v.capacity() * size_of::<f32>();
    if bytes < HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = v.as_ptr() as usize;
        let (from, to) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if from < to {
            // SAFETY: [from, to) lies inside `v`'s allocation, which `v` owns; MADV_HUGEPAGE
            // only tells the kernel how to back those pages and changes none of their contents.
            // A failure (no THP support) leaves the buffer as it was, so the result is ignored.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The advised buffers are plain zeroed or empty vectors of the asked size, small or large
    /// (the advice must not change a value).
    #[test]
    fn buffers_are_what_was_asked() {
        for len in [0, 1, 1000, (4 << 20) / 4 + 3] {
            let z = super::zeros(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&v| v.to_bits() == 0));
            let e = super::with_capacity(len);
            assert!(e.is_empty() && e.capacity() >= len);
        }
    }
}
