//! Reading the inputs of `average` a step at a time: each input's window of the step (its
//! elements `elems` of tensor `k`) is read with one positioned read into a buffer that is reused
//! from step to step. A helper thread reads the steps ahead of the one being averaged, so reading
//! (the kernel's copy out of the page cache, or the disk) and arithmetic overlap on two cores.
//!
//! Reads rather than the memory map: reading a window is one copy out of the page cache into a
//! buffer that stays in cache, and each file's sequential reads get the kernel's read-ahead; going
//! through the map instead costs page-table set-up and tear-down for every page (measured: twice
//! the system time of `cat` for the same bytes, see `docs/benchmarks.md`). Nothing of the inputs
//! stays resident: memory is (`AHEAD` + 2) windows per input.

use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use super::Input;
use crate::tensor::{Buffer, Tensor};

/// Steps the helper thread may read ahead of the averaging.
pub(super) const AHEAD: usize = 2;

/// One step of the averaging: elements `elems` of tensor `k` of every input.
#[derive(Clone, Debug)]
pub(super) struct Step {
    /// Index of the tensor (in the first input's order).
    pub k: usize,
    /// The elements.
    pub elems: std::ops::Range<usize>,
}

/// One input's window: the first `len` bytes of a buffer that keeps its largest size, so a short
/// window (a tensor's last step) does not make the next full one zero the buffer again.
#[derive(Debug, PartialEq)]
pub(super) struct Window {
    buf: Vec<u8>,
    len: usize,
}

impl Window {
    /// The window's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// One step's bytes: per input, its window read into a buffer (`Some`), or `None` where the
/// tensor is not a contiguous range of a mapped file (its bytes are then taken from the tensor
/// itself). `Err((i, e))`: input `i` could not be read, for the reason `e`.
pub(super) type Windows = Result<Vec<Option<Window>>, (usize, std::io::Error)>;

/// Where `t`'s elements `elems` lie in its file, when it is a contiguous view of a mapped file.
fn file_range<'t>(
    t: &'t Tensor,
    elems: &std::ops::Range<usize>,
) -> Option<(&'t std::fs::File, u64, usize)> {
    let Buffer::Mapped { map, range } = &t.storage() else {
        return None;
    };
    let r = t.contiguous_range()?;
    let es = t.dtype().size();
    let start = range.start + r.start + elems.start * es;
    let len = elems.len() * es;
    (start + len <= range.end).then_some((map.file(), start as u64, len))
}

/// Reads the windows of `step` for every input, reusing buffers from `spare`.
fn read_step(inputs: &[Input<'_>], step: &Step, spare: &mut Vec<Vec<u8>>) -> Windows {
    let mut out = Vec::with_capacity(inputs.len());
    for (i, inp) in inputs.iter().enumerate() {
        match file_range(&inp.tensors[step.k].1, &step.elems) {
            Some((file, offset, len)) => {
                let mut buf = spare.pop().unwrap_or_default();
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                file.read_exact_at(&mut buf[..len], offset)
                    .map_err(|e| (i, e))?;
                out.push(Some(Window { buf, len }));
            }
            None => out.push(None),
        }
    }
    Ok(out)
}

/// The helper thread: reads each step's windows in order, at most [`AHEAD`] steps ahead of the
/// averaging, taking used buffers back through `spare`. Stops at the first failed read (after
/// sending it) or when the averaging has gone.
pub(super) fn read_ahead(
    steps: &[Step],
    inputs: &[Input<'_>],
    ready: SyncSender<Windows>,
    spare: Receiver<Vec<u8>>,
) {
    let mut pool = Vec::new();
    for s in steps {
        pool.extend(spare.try_iter());
        let w = read_step(inputs, s, &mut pool);
        let failed = w.is_err();
        if ready.send(w).is_err() || failed {
            return;
        }
    }
}

/// The averaging's side: each step's windows, from the helper thread or read in place.
pub(super) enum Feed {
    /// Steps come from [`read_ahead`] on another thread.
    Helper {
        /// Each step's windows, in step order.
        ready: Receiver<Windows>,
        /// Buffers handed back for reuse.
        spare: Sender<Vec<u8>>,
    },
    /// No second core: read each step when it is needed.
    Inline {
        /// Buffers for reuse.
        pool: Vec<Vec<u8>>,
    },
}

impl Feed {
    /// The windows of `step` (the next one in order).
    pub(super) fn next(&mut self, inputs: &[Input<'_>], step: &Step) -> Windows {
        match self {
            Feed::Helper { ready, .. } => match ready.recv() {
                Ok(w) => w,
                // The helper stops early only after sending a failure, which ends the averaging.
                Err(_) => read_step(inputs, step, &mut Vec::new()),
            },
            Feed::Inline { pool } => read_step(inputs, step, pool),
        }
    }

    /// Hands a step's buffers back for reuse.
    pub(super) fn give_back(&mut self, windows: Vec<Option<Window>>) {
        for Window { buf: b, .. } in windows.into_iter().flatten() {
            match self {
                Feed::Helper { spare, .. } => {
                    let _ = spare.send(b);
                }
                Feed::Inline { pool } => pool.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(n: usize, seed: u8) -> (Tensor, std::fs::File) {
        let bytes: Vec<u8> = (0..n * 4).map(|i| (i as u8).wrapping_mul(seed)).collect();
        super::super::mapped_f32(&bytes)
    }

    #[test]
    fn both_feeds_read_each_window_and_a_shrunk_input_is_named() {
        let (a, _fa) = mapped(1000, 3);
        let (b, fb) = mapped(1000, 7);
        let (na, nb) = (vec![("w".to_string(), a)], vec![("w".to_string(), b)]);
        let inputs = [
            Input {
                file: "a",
                tensors: &na,
            },
            Input {
                file: "b",
                tensors: &nb,
            },
        ];
        let steps: Vec<Step> = (0..1000)
            .step_by(300)
            .map(|e| Step {
                k: 0,
                elems: e..(e + 300).min(1000),
            })
            .collect();
        let want = |i: usize, s: &Step| {
            let t = &inputs[i].tensors[0].1;
            t.contiguous_bytes().unwrap().unwrap()[s.elems.start * 4..s.elems.end * 4].to_vec()
        };
        std::thread::scope(|scope| {
            let (tx, ready) = std::sync::mpsc::sync_channel(AHEAD);
            let (spare, back) = std::sync::mpsc::channel();
            let st = &steps;
            let inp = &inputs;
            scope.spawn(move || read_ahead(st, inp, tx, back));
            let mut feeds = [
                Feed::Helper { ready, spare },
                Feed::Inline { pool: Vec::new() },
            ];
            for feed in &mut feeds {
                for s in &steps {
                    let w = feed.next(&inputs, s).unwrap();
                    for (i, got) in w.iter().enumerate() {
                        assert_eq!(got.as_ref().map(Window::bytes), Some(&want(i, s)[..]));
                    }
                    feed.give_back(w);
                }
            }
        });
        fb.set_len(2000).unwrap();
        let mut inline = Feed::Inline { pool: Vec::new() };
        let Err((i, e)) = inline.next(&inputs, &steps[3]) else {
            panic!("a shrunk input is read")
        };
        assert_eq!((i, e.kind()), (1, std::io::ErrorKind::UnexpectedEof));
    }
}
