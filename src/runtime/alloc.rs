//! The process's allocator policy for a parity check of a small model.
//!
//! glibc's `malloc` hands blocks of a few MB and more back to the kernel when they are freed
//! (`munmap`, or trimming the top of the heap), so each of the interpreter's and ONNX Runtime's
//! fresh buffers faults its pages in zeroed again: ~34 000 minor faults for the whole yolo11n
//! check. Keeping freed memory for reuse (blocks under 32 MiB from the heap, freed memory kept
//! up to 1 GiB) cuts that by 20 % and the check's wall time by ~10–15 ms (docs/benchmarks.md,
//! issue 14, "nano"), at the same peak RSS. On yolo11x the same policy raised the peak RSS by
//! ~70–100 MB (the interpreter's 10–30 MB maps then fragment the heap instead of being
//! unmapped), so it is applied to small models only, decided by the caller.

/// Tells glibc's allocator to keep freed memory for reuse (see the module documentation).
/// Only allocations made afterwards are affected; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of the allocator's thresholds; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
