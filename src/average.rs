//! `average`: one state dict from several checkpoints — SWA or a model soup (uniform), a weighted
//! average, or an EMA replayed over a sequence of saved checkpoints.
//!
//! Streaming: f32/f16/bf16 tensors are averaged a step of elements at a time across all inputs,
//! each input's window read with one positioned read ([`reader`]: a helper thread reads ahead
//! while the other averages), with vectorised element loops ([`kernel`]); each result goes to an
//! unnamed scratch file beside the output, which the writers then copy. Memory is a few windows
//! per input and one step's accumulator, whatever the model size.
//!
//! Arithmetic follows what PyTorch computes on CPU, so results are reproducible bit for bit:
//! uniform is `torch.optim.swa_utils.AveragedModel`'s running mean, `a + (x − a) / (n + 1)` in
//! the tensor's precision; the EMA replay is `get_ema_avg_fn`'s `d·e + (1 − d)·x` with both
//! factors rounded to the tensor's precision; a weighted average is `Σ wᵢxᵢ / Σ wᵢ` accumulated
//! in f64 and rounded once (PyTorch's own f32 sums may differ from it by one ulp). Non-floating
//! tensors (`num_batches_tracked`) come from the last checkpoint. f16 and bf16 tensors are
//! computed in f32 and rounded to their dtype once at the end.

mod kernel;
mod reader;

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::convert;
use crate::ema::Named;
use crate::tensor::{Buffer, DType, MappedFile, Tensor};

/// How the inputs are combined.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum Method {
    /// Equal weights, as SWA and uniform model soups average.
    Uniform,
    /// Normalised weights, one per input.
    Weighted {
        /// As given (normalised by their sum).
        weights: Vec<f64>,
    },
    /// `e ← d·e + (1 − d)·x` over the inputs in order, starting from the first; `every` > 1
    /// means the checkpoints were saved `every` steps apart, so each stands for that many steps
    /// (decay `d^every` per checkpoint).
    Ema {
        /// Per-step decay.
        decay: f64,
        /// Steps between checkpoints.
        every: u32,
    },
}

/// Why averaging failed.
#[derive(Debug, thiserror::Error)]
pub enum AverageError {
    /// Fewer than two inputs, bad weights or decay.
    #[error("{0}")]
    Usage(String),
    /// The inputs are not checkpoints of one model.
    #[error("{file}: {problem}")]
    Mismatch {
        /// The input that differs from the first.
        file: String,
        /// How.
        problem: String,
    },
    /// A tensor could not be read.
    #[error("{file}: tensor '{name}' cannot be read")]
    Unreadable {
        /// The input.
        file: String,
        /// The tensor.
        name: String,
    },
    /// The scratch file failed.
    #[error("scratch file beside the output: {0}")]
    Scratch(#[from] std::io::Error),
    /// An averaged tensor does not fit the scratch bytes written for it.
    #[error("averaged tensor '{name}': {source}")]
    View {
        /// The tensor.
        name: String,
        /// Why its view does not fit.
        #[source]
        source: crate::tensor::ViewError,
    },
}

/// What averaging did.
#[derive(Clone, Debug, Serialize)]
pub struct AverageReport {
    /// The method, with its parameters.
    #[serde(flatten)]
    pub method: Method,
    /// Each input's weight in the result (for the EMA: its effective weight).
    pub weights: Vec<f64>,
    /// Tensors written.
    pub tensors: usize,
    /// Of which averaged (floating point).
    pub averaged: usize,
    /// Taken from the last input (not floating point).
    pub from_last: Vec<String>,
}

impl Method {
    /// Checks the parameters against the number of inputs.
    pub fn check(&self, inputs: usize) -> Result<(), AverageError> {
        if inputs < 2 {
            return Err(AverageError::Usage(format!(
                "average needs at least two checkpoints, got {inputs}"
            )));
        }
        match self {
            Method::Uniform => Ok(()),
            Method::Weighted { weights } => {
                if weights.len() != inputs {
                    return Err(AverageError::Usage(format!(
                        "--weights has {} values for {inputs} checkpoints",
                        weights.len()
                    )));
                }
                if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                    return Err(AverageError::Usage(
                        "--weights must be finite and not negative".into(),
                    ));
                }
                if weights.iter().sum::<f64>() <= 0.0 {
                    return Err(AverageError::Usage("--weights sum to zero".into()));
                }
                Ok(())
            }
            Method::Ema { decay, every } => {
                if !(0.0..1.0).contains(decay) || *every == 0 {
                    return Err(AverageError::Usage(format!(
                        "--ema-decay {decay} must be in [0, 1) and --every {every} at least 1"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Each input's weight in the result.
    fn weights(&self, n: usize) -> Vec<f64> {
        match self {
            Method::Uniform => vec![1.0 / n as f64; n],
            Method::Weighted { weights } => {
                let s: f64 = weights.iter().sum();
                weights.iter().map(|w| w / s).collect()
            }
            Method::Ema { decay, every } => {
                let d = decay.powf(f64::from(*every));
                (0..n)
                    .map(|i| {
                        let later = (n - 1 - i) as i32;
                        let own = if i == 0 { 1.0 } else { 1.0 - d };
                        own * d.powi(later)
                    })
                    .collect()
            }
        }
    }
}

/// The arithmetic of one method in one precision (f32 for f32/f16/bf16, f64 for f64).
trait Real: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
}

impl Real for f32 {
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn mul(self, o: f32) -> f32 {
        self * o
    }
    fn div(self, o: f32) -> f32 {
        self / o
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn mul(self, o: f64) -> f64 {
        self * o
    }
    fn div(self, o: f64) -> f64 {
        self / o
    }
}

/// Folds input `i`'s elements `x` into the accumulator `acc` (which holds input 0 after the
/// first call), as the method does.
fn step<R: Real>(method: &Method, weights: &[f64], i: usize, acc: &mut [R], x: &[R]) {
    match method {
        Method::Uniform => {
            // AveragedModel: a + (x − a) / (n + 1), n inputs averaged so far.
            let n1 = R::from_f64((i + 1) as f64);
            for (a, &v) in acc.iter_mut().zip(x) {
                *a = *a + (v - *a).div(n1);
            }
        }
        Method::Ema { decay, every } => {
            let d = decay.powf(f64::from(*every));
            let (keep, take) = (R::from_f64(d), R::from_f64(1.0 - d));
            for (a, &v) in acc.iter_mut().zip(x) {
                *a = keep.mul(*a) + take.mul(v);
            }
        }
        // Weighted sums accumulate in f64 elsewhere.
        Method::Weighted { .. } => {
            let _ = weights;
        }
    }
}

/// Which weights of each checkpoint are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The EMA (folded with the raw model's integer buffers) where the file has one, else its
    /// only weight set.
    Ema,
    /// The raw (trained) weights.
    Raw,
}

/// What one checkpoint contributes: its state dict and, in words, where it came from.
pub fn contribution(
    ck: &crate::checkpoint::Checkpoint,
    source: Source,
) -> Result<(Named, String), crate::ema::EmaError> {
    use crate::ema::{self, EmaError, EmaErrorKind, FoldOptions, Selectors};
    let located = ema::locate(ck, &Selectors::default());
    let only_set = || -> Result<Option<(Named, String)>, EmaError> {
        let sets = ck.weight_sets().map_err(|e| EmaError {
            path: ck.path.clone(),
            kind: EmaErrorKind::Module(e),
        })?;
        Ok(match sets.as_slice() {
            [one] => Some((
                ema::strip_wrappers(one.tensors.clone()),
                format!(
                    "`{}` (its only weights; no EMA in the file)",
                    name_of(&one.path)
                ),
            )),
            _ => None,
        })
    };
    match (located, source) {
        (Ok(l), Source::Ema) => {
            let f = ema::fold(&l, &ck.path, FoldOptions::default())?;
            Ok((f.tensors, format!("EMA `{}` ({})", l.ema.origin, l.layout)))
        }
        (Ok(l), Source::Raw) => match l.raw {
            Some(r) => Ok((r.tensors, format!("raw `{}` ({})", r.origin, l.layout))),
            None => Err(EmaError {
                path: ck.path.clone(),
                kind: EmaErrorKind::Selector(format!(
                    "--source raw: the file keeps no raw weights beside its EMA `{}` ({})",
                    l.ema.origin, l.layout
                )),
            }),
        },
        (Err(e), _) => match (&e.kind, only_set()?) {
            (EmaErrorKind::NotFound { .. }, Some(found)) => Ok(found),
            _ => Err(e),
        },
    }
}

fn name_of(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

/// Where one output tensor is: averaged bytes in the scratch file (dtype, shape, byte range), or
/// the last input's own tensor.
type Placed = Result<(DType, Vec<usize>, std::ops::Range<usize>), Tensor>;

/// One input: where it came from (for messages) and its state dict.
pub struct Input<'a> {
    /// The file, as given.
    pub file: &'a str,
    /// The tensors it contributes.
    pub tensors: &'a Named,
}

/// Elements per step: the accumulator (1 MiB of f32) stays in cache while the matching chunk of
/// every input is folded into it, and each input is read in windows of this many elements.
const STEP: usize = 1 << 18;

/// Averages `inputs` (at least two, all with the first one's names, shapes and dtypes). Results
/// go to `scratch` (an unnamed file beside the output); the returned tensors are views of it
/// (integer buffers are the last input's own tensors).
///
/// f32, f16 and bf16 tensors are averaged a step of [`STEP`] elements at a time across all
/// inputs (a helper thread reads the next steps meanwhile, see [`reader`]); f64 tensors whole,
/// one input at a time.
pub fn average(
    inputs: &[Input<'_>],
    method: &Method,
    scratch: std::fs::File,
) -> Result<(Named, AverageReport), AverageError> {
    method.check(inputs.len())?;
    let first = &inputs[0];
    for inp in &inputs[1..] {
        check_same(first, inp)?;
    }
    let weights = method.weights(inputs.len());
    let steps: Vec<reader::Step> = first
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, (_, t))| chunked_dtype(t.dtype()))
        .flat_map(|(k, (_, t))| {
            let n = t.numel();
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
        average_all(inputs, method, &weights, scratch, feed)
        // Returning drops the feed, which stops the helper at its next step.
    })
}

/// Dtypes averaged step by step in f32.
fn chunked_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

fn average_all(
    inputs: &[Input<'_>],
    method: &Method,
    weights: &[f64],
    scratch: std::fs::File,
    mut feed: reader::Feed,
) -> Result<(Named, AverageReport), AverageError> {
    let first = &inputs[0];
    let last = inputs.last().expect("two inputs");
    let mut out = std::io::BufWriter::with_capacity(4 << 20, scratch);
    // (name, dtype, shape, byte range in the scratch file) or the last input's tensor.
    let mut placed: Vec<(String, Placed)> = Vec::with_capacity(first.tensors.len());
    let mut offset = 0usize;
    let mut report = AverageReport {
        method: method.clone(),
        weights: weights.to_vec(),
        tensors: first.tensors.len(),
        averaged: 0,
        from_last: Vec::new(),
    };
    let mut bufs = Bufs::default();
    for (k, (name, t0)) in first.tensors.iter().enumerate() {
        if !t0.dtype().is_float() {
            report.from_last.push(name.clone());
            placed.push((name.clone(), Err(last.tensors[k].1.clone())));
            continue;
        }
        let len = if chunked_dtype(t0.dtype()) {
            chunked(inputs, k, method, weights, &mut feed, &mut bufs, &mut out)?
        } else {
            let v = combine::<f64>(inputs, k, method, weights, convert::to_f64_vec)?;
            let mut bytes = Vec::with_capacity(v.len() * 8);
            for x in v {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            out.write_all(&bytes)?;
            bytes.len()
        };
        placed.push((
            name.clone(),
            Ok((t0.dtype(), t0.shape().to_vec(), offset..offset + len)),
        ));
        offset += len;
        report.averaged += 1;
    }
    // No fsync: the scratch file is unnamed and read back through the page cache; only the
    // output, which the writers sync before renaming it into place, has to reach the disk.
    let file = out.into_inner().map_err(|e| e.into_error())?;
    // An empty map is not allowed; a file of integer buffers only has nothing averaged.
    let map = if offset == 0 {
        None
    } else {
        // SAFETY: the scratch file is unnamed (no other process can reach it) and this process
        // writes nothing more to it.
        let m = unsafe { memmap2::Mmap::map(&file)? };
        Some(Arc::new(MappedFile::new(m, file)))
    };
    let tensors = placed
        .into_iter()
        .map(|(name, p)| {
            let t = match p {
                Err(t) => t,
                Ok((dtype, shape, range)) => {
                    let storage = Buffer::Mapped {
                        map: Arc::clone(map.as_ref().expect("bytes were written")),
                        range,
                    };
                    Tensor::contiguous(dtype, shape, storage, Arc::from(name.as_str())).map_err(
                        |source| AverageError::View {
                            name: name.clone(),
                            source,
                        },
                    )?
                }
            };
            Ok((name, t))
        })
        .collect::<Result<_, AverageError>>()?;
    Ok((tensors, report))
}

/// Buffers reused across steps.
#[derive(Default)]
struct Bufs {
    acc: Vec<f32>,
    wide: Vec<f64>,
    widened: Vec<f32>,
    encoded: Vec<u8>,
}

/// Tensor `k` of every input (f32, f16 or bf16) combined step by step and written to `out` in
/// its dtype; returns the bytes written. The same arithmetic per element, in the same order over
/// the inputs, as [`combine`] and [`step`]: only the loop order differs.
fn chunked(
    inputs: &[Input<'_>],
    k: usize,
    method: &Method,
    weights: &[f64],
    feed: &mut reader::Feed,
    bufs: &mut Bufs,
    out: &mut impl Write,
) -> Result<usize, AverageError> {
    let unreadable = |i: usize| AverageError::Unreadable {
        file: inputs[i].file.to_string(),
        name: inputs[i].tensors[k].0.clone(),
    };
    let t0 = &inputs[0].tensors[k].1;
    let (dtype, n, es) = (t0.dtype(), t0.numel(), t0.dtype().size());
    let mut src = Vec::with_capacity(inputs.len());
    for (i, inp) in inputs.iter().enumerate() {
        let t = &inp.tensors[k].1;
        let b = t.to_contiguous_bytes().map_err(|_| unreadable(i))?;
        if b.len() != n * es {
            return Err(unreadable(i));
        }
        src.push(b);
    }
    let update = |i: usize| match method {
        Method::Ema { decay, every } => {
            let d = decay.powf(f64::from(*every));
            kernel::Update::Ema(d as f32, (1.0 - d) as f32)
        }
        // AveragedModel: a + (x − a) / (n + 1), n inputs averaged so far.
        _ => kernel::Update::Mean((i + 1) as f32),
    };
    let mut written = 0;
    for e0 in (0..n).step_by(STEP) {
        let elems = e0..(e0 + STEP).min(n);
        let step = reader::Step {
            k,
            elems: elems.clone(),
        };
        let windows = feed.next(inputs, &step).map_err(unreadable)?;
        let bytes = |i: usize| match &windows[i] {
            Some(b) => &b[..],
            None => &src[i][elems.start * es..elems.end * es],
        };
        let Bufs {
            acc,
            wide,
            widened,
            encoded,
        } = &mut *bufs;
        acc.clear();
        if let Method::Weighted { .. } = method {
            // Σ wᵢxᵢ in f64, rounded once.
            wide.clear();
            wide.resize(elems.len(), 0.0);
            for (i, w) in weights.iter().enumerate() {
                kernel::weighted(wide, kernel::as_f32(dtype, bytes(i), widened), *w);
            }
            acc.extend(wide.iter().map(|&a| a as f32));
        } else {
            acc.extend_from_slice(kernel::as_f32(dtype, bytes(0), widened));
            for i in 1..inputs.len() {
                kernel::update(acc, kernel::as_f32(dtype, bytes(i), widened), update(i));
            }
        }
        feed.give_back(windows);
        encoded.clear();
        kernel::encode(acc, dtype, encoded);
        out.write_all(encoded)?;
        written += encoded.len();
    }
    Ok(written)
}

/// Input `k`'s tensor of every checkpoint combined, in precision `R`.
fn combine<R: Real>(
    inputs: &[Input<'_>],
    k: usize,
    method: &Method,
    weights: &[f64],
    read: impl Fn(&Tensor) -> Option<Vec<R>>,
) -> Result<Vec<R>, AverageError> {
    let load = |i: usize| -> Result<Vec<R>, AverageError> {
        let (name, t) = &inputs[i].tensors[k];
        read(t).ok_or_else(|| AverageError::Unreadable {
            file: inputs[i].file.to_string(),
            name: name.clone(),
        })
    };
    if let Method::Weighted { .. } = method {
        let mut acc: Vec<f64> = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let x = load(i)?;
            if acc.is_empty() {
                acc = vec![0.0; x.len()];
            }
            for (a, v) in acc.iter_mut().zip(&x) {
                *a += w * v.to_f64();
            }
        }
        return Ok(acc.into_iter().map(R::from_f64).collect());
    }
    let mut acc = load(0)?;
    for i in 1..inputs.len() {
        let x = load(i)?;
        step(method, weights, i, &mut acc, &x);
    }
    Ok(acc)
}

/// `b` must hold `a`'s names in the same order, with the same shapes and dtypes.
fn check_same(a: &Input<'_>, b: &Input<'_>) -> Result<(), AverageError> {
    let mismatch = |problem: String| AverageError::Mismatch {
        file: b.file.to_string(),
        problem,
    };
    if a.tensors.len() != b.tensors.len() {
        return Err(mismatch(format!(
            "{} tensors, but {} has {}",
            b.tensors.len(),
            a.file,
            a.tensors.len()
        )));
    }
    for ((na, ta), (nb, tb)) in a.tensors.iter().zip(b.tensors) {
        if na != nb {
            return Err(mismatch(format!(
                "tensor '{nb}' where {} has '{na}' (not checkpoints of one model)",
                a.file
            )));
        }
        if ta.shape() != tb.shape() || ta.dtype() != tb.dtype() {
            return Err(mismatch(format!(
                "'{na}' is {} {:?}, but {} {:?} in {}",
                tb.dtype(),
                tb.shape(),
                ta.dtype(),
                ta.shape(),
                a.file
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_weights_sum_to_one_and_favour_the_last() {
        let w = Method::Ema {
            decay: 0.5,
            every: 1,
        }
        .weights(3);
        assert_eq!(w, vec![0.25, 0.25, 0.5]);
        let w = Method::Uniform.weights(4);
        assert_eq!(w, vec![0.25; 4]);
    }

    #[test]
    fn uniform_is_the_running_mean() {
        let mut acc = vec![1.0f32, 4.0];
        step(&Method::Uniform, &[], 1, &mut acc, &[3.0, 0.0]);
        step(&Method::Uniform, &[], 2, &mut acc, &[5.0, 2.0]);
        assert_eq!(acc, vec![3.0, 2.0]);
    }

    #[test]
    fn bad_parameters_are_usage_errors() {
        assert!(Method::Uniform.check(1).is_err());
        let w = Method::Weighted {
            weights: vec![1.0, -1.0],
        };
        assert!(w.check(2).is_err());
        let e = Method::Ema {
            decay: 1.0,
            every: 1,
        };
        assert!(e.check(3).is_err());
    }
}
