//! Process-wide signal handling for the CLI.
//!
//! - SIGINT, SIGTERM, SIGHUP and SIGPIPE remove every temporary output still being written
//!   (registered by [`crate::write::AtomicFile`]) and then terminate the process with the
//!   signal's default action, so the shell still sees "killed by signal" (exit status 128 + n).
//!   SIGPIPE is among them because Rust ignores it by default, which turns `fuse-ema … --json |
//!   head` into a panic in `println!`; a reader that stops early should end us quietly, as it
//!   ends `cat`.
//! - SIGBUS inside a memory-mapped input (another process truncated the file while it was being
//!   read — Ultralytics rewrites `last.pt` in place) prints
//!   `fuse-ema: error: <file>: file changed while reading`, removes temporary outputs and exits 2.
//!   A SIGBUS anywhere else is left to its default action.
//!
//! Handlers may only make async-signal-safe calls, so they never allocate or lock: both
//! registries are push-only linked lists of leaked nodes whose contents are built (paths as C
//! strings, messages pre-formatted) before they are published with an atomic store. Nodes are
//! never freed, so a handler running on another thread can never see freed memory; a slot whose
//! temporary file or map is gone (its guard dropped) is cleared and reused by the next
//! registration.

use std::ffi::{CString, c_char, c_int, c_void};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// One registered temporary file; `path` is null while the slot is free.
#[derive(Debug)]
struct TempSlot {
    path: AtomicPtr<c_char>,
    next: *const TempSlot,
}

/// What a fault inside one registered map reports; leaked, so a handler may hold it forever.
struct MapInfo {
    message: Box<[u8]>,
    path: PathBuf,
}

/// One slot of the map registry. A slot is reused once its map is gone: `seq` is odd while the
/// fields are being rewritten, so a handler that reads an odd or changed `seq` skips the slot
/// rather than pairing one map's address with another's file.
struct MapSlot {
    seq: AtomicUsize,
    /// Held by the [`MapWatch`] of the map now in the slot.
    claimed: AtomicBool,
    live: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    info: AtomicPtr<MapInfo>,
    next: *const MapSlot,
}

static TEMPS: AtomicPtr<TempSlot> = AtomicPtr::new(ptr::null_mut());
static MAPS: AtomicPtr<MapSlot> = AtomicPtr::new(ptr::null_mut());
static INSTALL: Once = Once::new();

/// The termination signals after which temporary outputs are removed.
const TERMINATING: [c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE];

/// Installs the handlers (once per process; later calls do nothing). The CLI calls this at
/// start; a library user who wants the same behaviour calls it too.
pub fn install() {
    INSTALL.call_once(|| {
        for sig in TERMINATING {
            set_handler(sig, on_terminate as extern "C" fn(c_int) as usize, 0);
        }
        let bus: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = on_bus;
        set_handler(libc::SIGBUS, bus as usize, libc::SA_SIGINFO);
    });
}

fn set_handler(sig: c_int, handler: usize, flags: c_int) {
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler functions have the
    // signatures the flags announce and only make async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        for s in TERMINATING {
            // A termination signal arriving while another handler cleans up waits for it.
            libc::sigaddset(&mut action.sa_mask, s);
        }
        libc::sigaction(sig, &action, ptr::null_mut());
    }
}

/// A registered temporary file; dropping it unregisters the path (the file itself is the
/// owner's business).
#[derive(Debug)]
pub struct TempGuard {
    slot: &'static TempSlot,
}

// SAFETY: the slot is only touched through its atomic pointer.
unsafe impl Send for TempGuard {}
unsafe impl Sync for TempGuard {}

impl Drop for TempGuard {
    fn drop(&mut self) {
        // The C string is deliberately leaked: a handler on another thread may still hold it.
        self.slot.path.store(ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Registers `path` to be removed if the process is terminated by a signal before the guard
/// is dropped.
pub fn register_temp(path: &Path) -> TempGuard {
    let c = match CString::new(path.as_os_str().as_bytes()) {
        Ok(c) => c.into_raw(),
        // A path with a NUL byte cannot have been created; nothing to clean up.
        Err(_) => ptr::null_mut(),
    };
    let mut node = TEMPS.load(Ordering::SeqCst) as *const TempSlot;
    while !node.is_null() {
        // SAFETY: published nodes are leaked and never freed.
        let slot = unsafe { &*node };
        if !c.is_null()
            && slot
                .path
                .compare_exchange(ptr::null_mut(), c, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return TempGuard { slot };
        }
        node = slot.next;
    }
    let slot: &'static mut TempSlot = Box::leak(Box::new(TempSlot {
        path: AtomicPtr::new(c),
        next: ptr::null(),
    }));
    let mut head = TEMPS.load(Ordering::SeqCst);
    loop {
        slot.next = head;
        match TEMPS.compare_exchange(head, slot, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    TempGuard { slot }
}

/// A registered memory map; dropping it unregisters the range. Keep it alive exactly as long
/// as the map (declare it so that it drops first), so a fault at an address a later, unwatched
/// mapping reuses is never blamed on this file.
#[must_use = "dropping the watch unregisters the map at once"]
pub struct MapWatch {
    slot: &'static MapSlot,
}

// SAFETY: the slot is only touched through its atomics.
unsafe impl Send for MapWatch {}
unsafe impl Sync for MapWatch {}

impl fmt::Debug for MapWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MapWatch({:#x})", self.slot.start.load(Ordering::SeqCst))
    }
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        // The info is deliberately leaked: a handler on another thread may still hold it.
        self.slot.live.store(false, Ordering::SeqCst);
        self.slot.claimed.store(false, Ordering::SeqCst);
    }
}

/// Registers a memory map of `path` covering `len` bytes from `start`, so a SIGBUS inside it is
/// reported as the file having changed, until the returned watch is dropped.
pub fn watch_mapping(path: &Path, start: *const u8, len: usize) -> MapWatch {
    let message = format!(
        "fuse-ema: error: {}: file changed while reading\n",
        path.display()
    );
    let info = Box::into_raw(Box::new(MapInfo {
        message: message.into_bytes().into_boxed_slice(),
        path: path.to_path_buf(),
    }));
    let slot = claim_map_slot();
    // Odd while rewriting: a handler reading now skips the slot.
    slot.seq.fetch_add(1, Ordering::SeqCst);
    slot.start.store(start as usize, Ordering::SeqCst);
    slot.len.store(len, Ordering::SeqCst);
    slot.info.store(info, Ordering::SeqCst);
    slot.live.store(true, Ordering::SeqCst);
    slot.seq.fetch_add(1, Ordering::SeqCst);
    MapWatch { slot }
}

/// A free slot of the registry, claimed: an unclaimed published one, or a new one pushed.
fn claim_map_slot() -> &'static MapSlot {
    let mut node = MAPS.load(Ordering::SeqCst) as *const MapSlot;
    while !node.is_null() {
        // SAFETY: published nodes are leaked and never freed.
        let slot = unsafe { &*node };
        if slot
            .claimed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return slot;
        }
        node = slot.next;
    }
    let slot: &'static mut MapSlot = Box::leak(Box::new(MapSlot {
        seq: AtomicUsize::new(0),
        claimed: AtomicBool::new(true),
        live: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        info: AtomicPtr::new(ptr::null_mut()),
        next: ptr::null(),
    }));
    let mut head = MAPS.load(Ordering::SeqCst);
    loop {
        slot.next = head;
        match MAPS.compare_exchange(head, slot, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    slot
}

/// The file whose watched map contains `addr`.
pub fn mapped_path(addr: *const u8) -> Option<&'static Path> {
    find_map(addr as usize).map(|m| m.path.as_path())
}

/// The info of the live map containing `addr`. Async-signal-safe: atomic loads only.
fn find_map(addr: usize) -> Option<&'static MapInfo> {
    let mut node = MAPS.load(Ordering::SeqCst) as *const MapSlot;
    while !node.is_null() {
        // SAFETY: published nodes are leaked and never freed.
        let m = unsafe { &*node };
        let seq = m.seq.load(Ordering::SeqCst);
        let live = m.live.load(Ordering::SeqCst);
        let start = m.start.load(Ordering::SeqCst);
        let len = m.len.load(Ordering::SeqCst);
        let info = m.info.load(Ordering::SeqCst);
        let stable = seq % 2 == 0 && m.seq.load(Ordering::SeqCst) == seq;
        if stable && live && !info.is_null() && addr >= start && addr - start < len {
            // SAFETY: infos are leaked and never freed.
            return Some(unsafe { &*info });
        }
        node = m.next;
    }
    None
}

/// Unlinks every registered temporary file. Async-signal-safe: atomic loads and `unlink`.
fn remove_temps() {
    let mut node = TEMPS.load(Ordering::SeqCst) as *const TempSlot;
    while !node.is_null() {
        // SAFETY: published nodes are leaked and never freed; a non-null path is a leaked
        // NUL-terminated string.
        unsafe {
            let p = (*node).path.load(Ordering::SeqCst);
            if !p.is_null() {
                libc::unlink(p);
            }
            node = (*node).next;
        }
    }
}

extern "C" fn on_terminate(sig: c_int) {
    remove_temps();
    // SAFETY: restoring the default action and re-raising are async-signal-safe; the signal is
    // blocked while this handler runs, so it is delivered (and kills) as the handler returns.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

extern "C" fn on_bus(sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    remove_temps();
    if let Some(m) = find_map(addr) {
        // SAFETY: write and _exit are async-signal-safe; the message is a leaked byte string.
        unsafe {
            libc::write(2, m.message.as_ptr().cast(), m.message.len());
            libc::_exit(2);
        }
    }
    // Not one of our maps: a real fault. With the default action restored, returning re-runs
    // the faulting access, which then terminates the process as usual.
    // SAFETY: async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_slots_are_cleared_and_reused() {
        let a = register_temp(Path::new("/nonexistent/a"));
        let slot = a.slot;
        assert!(!slot.path.load(Ordering::SeqCst).is_null());
        drop(a);
        assert!(slot.path.load(Ordering::SeqCst).is_null());
        // Other tests register concurrently; a fresh registration takes some free or new slot.
        let b = register_temp(Path::new("/nonexistent/b"));
        assert!(!b.slot.path.load(Ordering::SeqCst).is_null());
    }

    #[test]
    fn maps_are_found_by_address() {
        let buf = [0u8; 64];
        let watch = watch_mapping(Path::new("/x/model.pt"), buf.as_ptr(), buf.len());
        assert_eq!(
            mapped_path(buf[10..].as_ptr()),
            Some(Path::new("/x/model.pt"))
        );
        assert_eq!(mapped_path(buf.as_ptr().wrapping_add(64)), None);
        drop(watch);
        // Gone with its watch: a later mapping at the same address is not blamed on it.
        assert_eq!(mapped_path(buf[10..].as_ptr()), None);
        let other = [0u8; 64];
        let _w = watch_mapping(Path::new("/x/other.pt"), other.as_ptr(), other.len());
        assert_eq!(mapped_path(buf[10..].as_ptr()), None);
        assert_eq!(
            mapped_path(other[1..].as_ptr()),
            Some(Path::new("/x/other.pt"))
        );
    }
}
