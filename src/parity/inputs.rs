//! What parity runs on: seeded or prepared input images, and the ONNX (bytes or a file) run on
//! them.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::reference::ops::RefTensor;
use crate::runtime::{Engine, ModelSource, Prepared, RuntimeError};

/// Deterministic uniform [0, 1) images (splitmix64), the same for every runtime and run.
pub fn seeded_images(shape: &[usize], seed: u64) -> RefTensor {
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    RefTensor::new(data, shape.to_vec())
}

/// What the reference comparison runs on.
pub enum Inputs<'a> {
    /// `samples` seeded uniform batches of `shape`, seeds `first`, `first + 1`, ….
    Seeded {
        /// Input shape.
        shape: &'a [usize],
        /// The first batch's seed.
        first: u64,
        /// How many batches.
        samples: usize,
        /// `--parity-budget`: after each batch, stop when the parity run has taken longer than
        /// this (at least one batch always runs).
        budget: Option<Duration>,
    },
    /// A prepared image and its file name.
    Image(RefTensor, String),
}

/// How many seeded batches a parity run checked, and whether `--parity-budget` cut it short.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SampleCount {
    /// `--parity-samples`.
    pub requested: usize,
    /// Batches compared (the first `checked` seeds).
    pub checked: usize,
    /// The first batch's seed (`--seed`; `verify` draws one per run unless given).
    pub first_seed: u64,
    /// `--parity-budget` in seconds, when given.
    pub budget_seconds: Option<f64>,
    /// Whether the budget stopped the run before every requested batch was checked.
    pub cut_by_budget: bool,
}

/// The batches of one parity run, made one at a time (so a budget cut costs nothing and N
/// batches never sit in memory together), with the budget checked between them.
pub(super) struct Batches<'a> {
    inputs: Inputs<'a>,
    started: Instant,
    /// Batches handed out so far.
    given: usize,
    cut: bool,
    /// An image's description, taken before the image is handed out.
    image: String,
}

impl<'a> Batches<'a> {
    /// Starts the clock of `--parity-budget`.
    pub(super) fn new(inputs: Inputs<'a>) -> Batches<'a> {
        let image = match &inputs {
            Inputs::Image(t, name) => format!("{name} letterboxed to {:?}", t.shape),
            Inputs::Seeded { .. } => String::new(),
        };
        Batches {
            inputs,
            started: Instant::now(),
            given: 0,
            cut: false,
            image,
        }
    }

    /// The next batch, or `None` when all were given or the budget is spent. The budget is
    /// checked between batches: the first always runs, and a batch once begun is finished.
    pub(super) fn next(&mut self) -> Option<RefTensor> {
        let t = match &mut self.inputs {
            Inputs::Seeded {
                shape,
                first,
                samples,
                budget,
            } => {
                if self.given >= (*samples).max(1) {
                    return None;
                }
                if self.given > 0 && budget.is_some_and(|b| self.started.elapsed() > b) {
                    self.cut = true;
                    return None;
                }
                seeded_images(shape, first.wrapping_add(self.given as u64))
            }
            Inputs::Image(t, _) if self.given == 0 => {
                std::mem::replace(t, RefTensor::new(vec![], vec![0]))
            }
            Inputs::Image(..) => return None,
        };
        self.given += 1;
        Some(t)
    }

    /// What was compared, in words, and the count of seeded batches.
    pub(super) fn finish(self) -> (String, Option<SampleCount>) {
        match self.inputs {
            Inputs::Seeded {
                shape,
                first,
                samples,
                budget,
            } => {
                let requested = samples.max(1);
                let count = SampleCount {
                    requested,
                    checked: self.given,
                    first_seed: first,
                    budget_seconds: budget.map(|b| b.as_secs_f64()),
                    cut_by_budget: self.cut,
                };
                let described = if self.cut {
                    format!(
                        "{} of {requested} seeded uniform [0,1) batch(es) of shape {shape:?} (splitmix64, seeds {first}..{}; the --parity-budget of {} s cut the other {})",
                        self.given,
                        first.wrapping_add(self.given as u64),
                        count.budget_seconds.unwrap_or_default(),
                        requested - self.given
                    )
                } else {
                    format!(
                        "{requested} seeded uniform [0,1) batch(es) of shape {shape:?} (splitmix64, seeds {first}..{})",
                        first.wrapping_add(requested as u64)
                    )
                };
                (described, Some(count))
            }
            Inputs::Image(..) => (self.image, None),
        }
    }
}

/// Where the ONNX comes from.
pub enum OnnxModel<'a> {
    /// Serialised bytes.
    Bytes(&'a [u8]),
    /// A file (external data beside it).
    File(&'a std::path::Path),
}

/// The largest ONNX whose ONNX Runtime session is kept from one batch to the next. Beside the
/// interpreter, a session holds about twice the model's weights (its initializers and their
/// prepacked copies): for yolo11n (10.6 MB) that is little, for yolo11x (~230 MB) it would put
/// ORT's ~700 MB beside the interpreter's ~200 MB. (Creating the session beside the reference,
/// on a third thread, was measured and not kept: on 2 cores it slowed the reference by as much
/// as it hid; docs/benchmarks.md, issue 14, "nano".)
const KEEP_MAX: u64 = 48 << 20;

/// Below this the ONNX holds its weights elsewhere (external data), which the size above
/// would not count.
const KEEP_MIN: u64 = 1 << 20;

impl OnnxModel<'_> {
    /// The model as the runtime takes it.
    pub(super) fn source(&self) -> ModelSource<'_> {
        match self {
            OnnxModel::Bytes(b) => ModelSource::Bytes(b),
            OnnxModel::File(p) => ModelSource::File(p),
        }
    }

    /// Whether the runtime's session is kept for the next batch: a self-contained model of
    /// [`KEEP_MIN`] to [`KEEP_MAX`] bytes. A file's size is read from the file system (one it
    /// cannot read is not kept).
    pub fn keeps_session(&self) -> bool {
        let len = match self {
            OnnxModel::Bytes(b) => b.len() as u64,
            OnnxModel::File(p) => match std::fs::metadata(p) {
                Ok(m) => m.len(),
                Err(_) => return false,
            },
        };
        (KEEP_MIN..=KEEP_MAX).contains(&len)
    }
}

/// Runs the ONNX on `images` (made ready once, run once).
pub(super) fn run_onnx(
    rt: &Engine,
    model: &OnnxModel,
    images: &RefTensor,
) -> Result<Vec<(String, RefTensor)>, RuntimeError> {
    run_prepared(&mut rt.prepare(model.source())?, images)
}

/// Runs a prepared ONNX on `images`.
pub(super) fn run_prepared(
    model: &mut Prepared,
    images: &RefTensor,
) -> Result<Vec<(String, RefTensor)>, RuntimeError> {
    // A view accepts a longer buffer than its shape; the input must be exactly the batch.
    if images.data.len() != images.shape.iter().product::<usize>() {
        return Err(ndarray::ShapeError::from_kind(ndarray::ErrorKind::IncompatibleShape).into());
    }
    let a = ndarray::ArrayViewD::from_shape(images.shape.clone(), &images.data)?;
    let outs = model.run(&[("images", a)])?;
    Ok(outs
        .into_iter()
        .map(|(n, a)| {
            let shape = a.shape().to_vec();
            // The array's own vector when it holds exactly the values in order, else a copy.
            let len = a.len();
            let data = if a.is_standard_layout() {
                match a.into_raw_vec_and_offset() {
                    (v, None | Some(0)) if v.len() == len => v,
                    (v, o) => v[o.unwrap_or(0)..o.unwrap_or(0) + len].to_vec(),
                }
            } else {
                a.iter().copied().collect()
            };
            (n, RefTensor::new(data, shape))
        })
        .collect())
}
