//! The averaging pass: each output tensor's bytes produced in the order its writer lays the file
//! out, straight into that writer. f32/f16/bf16 tensors go a step of [`STEP`] elements at a time
//! across all inputs, each input's window read ahead by a helper thread ([`super::reader`]);
//! f64 tensors whole; integer buffers are the last input's own bytes.

use std::io::Write;

use super::method::{Method, combine};
use super::{AverageError, Input, kernel, reader};
use crate::convert;
use crate::tensor::DType;

/// Elements per step: the accumulator (1 MiB of f32) stays in cache while the matching chunk of
/// every input is folded into it, and each input is read in windows of this many elements.
pub(super) const STEP: usize = 1 << 18;

/// Dtypes averaged step by step in f32.
pub(super) fn chunked_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// Produces the averaged tensors one after the other, in the order given when it was made.
pub(super) struct Averager<'a> {
    inputs: &'a [Input<'a>],
    method: &'a Method,
    weights: &'a [f64],
    order: &'a [usize],
    next: usize,
    feed: reader::Feed,
    bufs: Bufs,
}

/// Buffers reused across steps.
#[derive(Default)]
struct Bufs {
    acc: Vec<f32>,
    wide: Vec<f64>,
    widened: Vec<f32>,
    encoded: Vec<u8>,
    converted: Vec<u8>,
}

/// Runs `body` with an [`Averager`] that produces the tensors `order` (indices into the inputs'
/// state dicts) in that order; a helper thread reads the inputs ahead of it while `body` runs
/// when there is a second core.
pub(super) fn run<T>(
    inputs: &[Input<'_>],
    method: &Method,
    weights: &[f64],
    order: &[usize],
    body: impl FnOnce(&mut Averager<'_>) -> T,
) -> T {
    let steps: Vec<reader::Step> = order
        .iter()
        .filter_map(|&k| {
            let t = &inputs[0].tensors[k].1;
            chunked_dtype(t.dtype()).then(|| (k, t.numel()))
        })
        .flat_map(|(k, n)| {
            (0..n).step_by(STEP).map(move |e0| reader::Step {
                k,
                elems: e0..(e0 + STEP).min(n),
            })
        })
        .collect();
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    std::thread::scope(|s| {
        let feed = if two_cores {
            let (tx, ready) = std::sync::mpsc::sync_channel(reader::AHEAD);
            let (spare, back) = std::sync::mpsc::channel();
            let steps = &steps;
            s.spawn(move || reader::read_ahead(steps, inputs, tx, back));
            reader::Feed::Helper { ready, spare }
        } else {
            reader::Feed::Inline { pool: Vec::new() }
        };
        let mut averager = Averager {
            inputs,
            method,
            weights,
            order,
            next: 0,
            feed,
            bufs: Bufs::default(),
        };
        body(&mut averager)
        // Dropping the averager drops the feed, which stops the helper at its next step.
    })
}

impl Averager<'_> {
    /// Writes tensor `k` (the next one in the order), averaged, as `out` to `w`.
    pub(super) fn write(
        &mut self,
        k: usize,
        out: DType,
        w: &mut dyn Write,
    ) -> Result<(), AverageError> {
        let due = self.order.get(self.next).copied();
        if due != Some(k) {
            return Err(AverageError::Order { due, asked: k });
        }
        self.next += 1;
        let t0 = &self.inputs[0].tensors[k].1;
        let own = t0.dtype();
        if !own.is_float() {
            let Some(last) = self.inputs.last() else {
                return Err(AverageError::Order { due, asked: k });
            };
            return crate::write::write_tensor(&mut &mut *w, &last.tensors[k].1, out)
                .map_err(AverageError::Output);
        }
        if chunked_dtype(own) {
            return self.chunked(k, out, w);
        }
        let v = combine::<f64>(
            self.inputs,
            k,
            self.method,
            self.weights,
            convert::to_f64_vec,
        )?;
        let mut bytes = Vec::with_capacity(v.len() * 8);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        emit(&bytes, own, out, &mut self.bufs.converted, w)
    }

    /// Tensor `k` of every input (f32, f16 or bf16) combined step by step and written to `w` as
    /// `out`. The same arithmetic per element, in the same order over the inputs, as
    /// [`combine`]: only the loop order differs.
    fn chunked(&mut self, k: usize, out: DType, w: &mut dyn Write) -> Result<(), AverageError> {
        let inputs = self.inputs;
        let unreadable = |i: usize, source| AverageError::Unreadable {
            file: inputs[i].file.to_string(),
            name: inputs[i].tensors[k].0.clone(),
            source,
        };
        let t0 = &inputs[0].tensors[k].1;
        let (dtype, n, es) = (t0.dtype(), t0.numel(), t0.dtype().size());
        let mut src = Vec::with_capacity(inputs.len());
        for (i, inp) in inputs.iter().enumerate() {
            let t = &inp.tensors[k].1;
            let b = t.to_contiguous_bytes().map_err(|e| unreadable(i, e))?;
            if b.len() != n * es {
                let short = format!("{} bytes where {} were expected", b.len(), n * es);
                return Err(unreadable(
                    i,
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, short),
                ));
            }
            src.push(b);
        }
        let update = |i: usize| match self.method {
            Method::Ema { decay, every } => {
                let d = decay.powf(f64::from(*every));
                kernel::Update::Ema(d as f32, (1.0 - d) as f32)
            }
            // AveragedModel: a + (x − a) / (n + 1), n inputs averaged so far.
            _ => kernel::Update::Mean((i + 1) as f32),
        };
        for e0 in (0..n).step_by(STEP) {
            let elems = e0..(e0 + STEP).min(n);
            let step = reader::Step {
                k,
                elems: elems.clone(),
            };
            let windows = (self.feed.next(inputs, &step)).map_err(|(i, e)| unreadable(i, e))?;
            let bytes = |i: usize| match &windows[i] {
                Some(b) => b.bytes(),
                None => &src[i][elems.start * es..elems.end * es],
            };
            let Bufs {
                acc,
                wide,
                widened,
                encoded,
                converted,
            } = &mut self.bufs;
            acc.clear();
            if let Method::Weighted { .. } = self.method {
                // Σ wᵢxᵢ in f64, rounded once.
                wide.clear();
                wide.resize(elems.len(), 0.0);
                for (i, wt) in self.weights.iter().enumerate() {
                    kernel::weighted(wide, kernel::as_f32(dtype, bytes(i), widened), *wt);
                }
                acc.extend(wide.iter().map(|&a| a as f32));
            } else {
                acc.extend_from_slice(kernel::as_f32(dtype, bytes(0), widened));
                for i in 1..inputs.len() {
                    kernel::update(acc, kernel::as_f32(dtype, bytes(i), widened), update(i));
                }
            }
            self.feed.give_back(windows);
            // Rounded to the tensor's own dtype first, then converted: the same bytes as an
            // averaged tensor written with `--dtype`.
            let own = kernel::encode(acc, dtype, encoded);
            emit(own, dtype, out, converted, w)?;
        }
        Ok(())
    }
}

/// Writes `bytes` (elements of `own`) to `w` as `out`.
fn emit(
    bytes: &[u8],
    own: DType,
    out: DType,
    converted: &mut Vec<u8>,
    w: &mut dyn Write,
) -> Result<(), AverageError> {
    let bytes = if out == own {
        bytes
    } else {
        converted.clear();
        convert::convert_float(own, bytes, out, converted);
        &converted[..]
    };
    w.write_all(bytes).map_err(AverageError::Output)
}
