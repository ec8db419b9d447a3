//! `average`: one state dict from several checkpoints — SWA or a model soup (uniform), a weighted
//! average, or an EMA replayed over a sequence of saved checkpoints.
//!
//! Streaming: each output tensor is computed when its writer reaches it and written straight
//! into the output's temporary file ([`Plan::write_safetensors`], [`Plan::write_torch`]; the
//! safetensors header is planned up front from the first input's names, dtypes and shapes, and
//! the tensors are averaged in the order the file lays them out). f32/f16/bf16 tensors are
//! averaged a step of elements at a time across all inputs, each input's window read with one
//! positioned read ([`reader`]: a helper thread reads ahead while the other averages), with
//! vectorised element loops ([`kernel`]). Memory is a few windows per input and one step's
//! accumulator, whatever the model size. `--strip`, whose writer needs the averaged tensors as
//! tensors, averages into an unnamed scratch file instead ([`Plan::to_scratch`]).
//!
//! Arithmetic follows what PyTorch computes on CPU, so results are reproducible bit for bit:
//! uniform is `torch.optim.swa_utils.AveragedModel`'s running mean, `a + (x − a) / (n + 1)` in
//! the tensor's precision; the EMA replay is `get_ema_avg_fn`'s `d·e + (1 − d)·x` with both
//! factors rounded to the tensor's precision; a weighted average is `Σ wᵢxᵢ / Σ wᵢ` accumulated
//! in f64 and rounded once (PyTorch's own f32 sums may differ from it by one ulp). Non-floating
//! tensors (`num_batches_tracked`) come from the last checkpoint. f16 and bf16 tensors are
//! computed in f32 and rounded to their dtype once at the end.

mod kernel;
mod method;
mod reader;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::ema::Named;
use crate::progress::Progress;
use crate::tensor::{Buffer, DType, MappedFile, Tensor};
use crate::write::{OutDType, WriteError};
pub use method::{Method, UsageError};

/// Why averaging failed.
#[derive(Debug, thiserror::Error)]
pub enum AverageError {
    /// Fewer than two inputs, bad weights or decay.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The inputs are not checkpoints of one model.
    #[error("{file}: {problem}")]
    Mismatch {
        /// The input that differs from the first.
        file: String,
        /// How.
        problem: String,
    },
    /// A tensor could not be read.
    #[error("{file}: tensor '{name}' cannot be read: {source}")]
    Unreadable {
        /// The input.
        file: String,
        /// The tensor.
        name: String,
        /// The reader's error (or what is wrong with the bytes it gave).
        #[source]
        source: std::io::Error,
    },
    /// Writing an averaged tensor's bytes failed (the writer names the output).
    #[error("{0}")]
    Output(#[source] std::io::Error),
    /// The output could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The scratch file (for `--strip`) failed.
    #[error("scratch file for the output: {0}")]
    Scratch(#[source] std::io::Error),
    /// A writer asked for the tensors in another order than the one planned (a bug).
    #[error("internal error: tensor {asked} asked for where {due:?} was due")]
    Order {
        /// The tensor due next, if any.
        due: Option<usize>,
        /// The one asked for.
        asked: usize,
    },
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

/// Which weights of each checkpoint are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The EMA (folded with the raw model's integer buffers) where the file has one, else its
    /// only weight set.
    Ema,
    /// The raw (trained) weights.
    Raw,
}

/// `other` in the order of `first`'s names when both hold the same names once each (a
/// safetensors file lists its tensors sorted by name, a `.pt` state dict in module order), else
/// unchanged, for [`Plan::new`] to name the first difference.
pub fn in_order_of(first: &Named, other: Named) -> Named {
    if first.len() != other.len() {
        return other;
    }
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(other.len());
    for (i, (n, _)) in other.iter().enumerate() {
        if by_name.insert(n.as_str(), i).is_some() {
            return other;
        }
    }
    let order: Option<Vec<usize>> = first
        .iter()
        .map(|(n, _)| by_name.get(n.as_str()).copied())
        .collect();
    let Some(order) = order else {
        return other;
    };
    let mut slots: Vec<Option<(String, Tensor)>> = other.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
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

/// One input: where it came from (for messages) and its state dict.
pub struct Input<'a> {
    /// The file, as given.
    pub file: &'a str,
    /// The tensors it contributes.
    pub tensors: &'a Named,
}

/// An average checked and ready to write: the inputs (at least two, all with the first one's
/// names, shapes and dtypes), the method and what the result will hold.
pub struct Plan<'a> {
    inputs: &'a [Input<'a>],
    method: &'a Method,
    report: AverageReport,
}

impl<'a> Plan<'a> {
    /// Checks the method against the inputs and the inputs against each other.
    pub fn new(inputs: &'a [Input<'a>], method: &'a Method) -> Result<Plan<'a>, AverageError> {
        method.check(inputs.len())?;
        let first = &inputs[0];
        for inp in &inputs[1..] {
            check_same(first, inp)?;
        }
        let from_last: Vec<String> = first
            .tensors
            .iter()
            .filter(|(_, t)| !t.dtype().is_float())
            .map(|(n, _)| n.clone())
            .collect();
        let report = AverageReport {
            method: method.clone(),
            weights: method.weights(inputs.len()),
            tensors: first.tensors.len(),
            averaged: first.tensors.len() - from_last.len(),
            from_last,
        };
        Ok(Plan {
            inputs,
            method,
            report,
        })
    }

    /// What the result holds and each input's weight in it.
    pub fn report(&self) -> &AverageReport {
        &self.report
    }

    /// The first input's tensors: the names, dtypes and shapes of the result.
    fn like(&self) -> &'a Named {
        self.inputs[0].tensors
    }

    /// Runs `write` (a writer that asks for the tensors in `order`, each through its `fill`
    /// callback) with the averaging; an averaging failure inside a callback is reported as
    /// itself rather than as the writer's failure to write.
    fn through_writer(
        &self,
        order: &[usize],
        write: impl FnOnce(
            &mut dyn FnMut(usize, DType, &mut dyn Write) -> std::io::Result<()>,
        ) -> Result<(), WriteError>,
    ) -> Result<(), AverageError> {
        let mut failed = None;
        let written = stream::run(
            self.inputs,
            self.method,
            &self.report.weights,
            order,
            |avg| {
                write(&mut |k, d, w| {
                    avg.write(k, d, w).map_err(|e| {
                        let io = std::io::Error::other(e.to_string());
                        failed = Some(e);
                        io
                    })
                })
            },
        );
        match (failed, written) {
            (Some(AverageError::Output(_)), Err(e)) | (None, Err(e)) => Err(e.into()),
            (Some(e), _) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Writes the average to `target` as one safetensors file with `metadata`, each tensor
    /// averaged straight into the output in the file's order.
    pub fn write_safetensors(
        &self,
        target: &Path,
        input_paths: &[&Path],
        dtype: OutDType,
        metadata: &BTreeMap<String, String>,
        progress: &dyn Progress,
    ) -> Result<(), AverageError> {
        use crate::write::safetensors;
        let like = self.like();
        let layout = safetensors::Layout::new(target, like, dtype, metadata)?;
        let mut writeback = crate::write::Writeback::default();
        self.through_writer(&layout.order(), |fill| {
            safetensors::write_filled(
                target,
                input_paths,
                like,
                dtype,
                &layout,
                progress,
                |i, d, f| {
                    fill(
                        i,
                        d,
                        &mut crate::write::WritebackFile::new(f, &mut writeback)?,
                    )
                },
            )
        })
    }

    /// Writes the average to `target` as a torch state dict (`.pt`), each tensor averaged
    /// straight into the output in state-dict order.
    pub fn write_torch(
        &self,
        target: &Path,
        input_paths: &[&Path],
        dtype: OutDType,
        progress: &dyn Progress,
    ) -> Result<(), AverageError> {
        let like = self.like();
        let order: Vec<usize> = (0..like.len()).collect();
        self.through_writer(&order, |fill| {
            crate::write::torch_zip::write_filled(target, input_paths, like, dtype, progress, fill)
        })
    }

    /// The averaged tensors, in state-dict order, as views of `scratch` (an unnamed file beside
    /// the output) where they were averaged; integer buffers are the last input's own tensors.
    pub fn to_scratch(&self, scratch: std::fs::File) -> Result<Named, AverageError> {
        let like = self.like();
        let order: Vec<usize> = (0..like.len())
            .filter(|&k| like[k].1.dtype().is_float())
            .collect();
        let mut out = std::io::BufWriter::with_capacity(4 << 20, scratch);
        let mut ranges = Vec::with_capacity(like.len());
        stream::run(
            self.inputs,
            self.method,
            &self.report.weights,
            &order,
            |avg| {
                let mut offset = 0usize;
                for (k, (_, t)) in like.iter().enumerate() {
                    if !t.dtype().is_float() {
                        ranges.push(None);
                        continue;
                    }
                    avg.write(k, t.dtype(), &mut out)?;
                    let len = t.numel() * t.dtype().size();
                    ranges.push(Some(offset..offset + len));
                    offset += len;
                }
                Ok::<(), AverageError>(())
            },
        )?;
        // No fsync: the scratch file is unnamed and read back through the page cache; only the
        // output, which the writers sync before renaming it into place, has to reach the disk.
        let file = out
            .into_inner()
            .map_err(|e| AverageError::Scratch(e.into_error()))?;
        // An empty map is not allowed; a file of integer buffers only has nothing averaged.
        let map = if ranges.iter().any(Option::is_some) {
            // SAFETY: the scratch file is unnamed (no other process can reach it) and this
            // process writes nothing more to it.
            let m = unsafe { memmap2::Mmap::map(&file) }.map_err(AverageError::Scratch)?;
            Some(Arc::new(MappedFile::new(m, file)))
        } else {
            None
        };
        let last = self.inputs[self.inputs.len() - 1].tensors;
        like.iter()
            .zip(ranges)
            .enumerate()
            .map(|(k, ((name, t0), range))| {
                let t = match (range, &map) {
                    (Some(range), Some(map)) => {
                        let storage = Buffer::Mapped {
                            map: Arc::clone(map),
                            range,
                        };
                        Tensor::contiguous(
                            t0.dtype(),
                            t0.shape().to_vec(),
                            storage,
                            Arc::from(name.as_str()),
                        )
                        .map_err(|source| AverageError::View {
                            name: name.clone(),
                            source,
                        })?
                    }
                    _ => last[k].1.clone(),
                };
                Ok((name.clone(), t))
            })
            .collect()
    }
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

/// `bytes` as a 1-D f32 tensor mapped from a temporary file, and the file (for tests that
/// change it underneath).
#[cfg(test)]
fn mapped_f32(bytes: &[u8]) -> (Tensor, std::fs::File) {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    // SAFETY: a private temporary file of this test.
    let m = unsafe { memmap2::Mmap::map(&f).unwrap() };
    let map = Arc::new(MappedFile::new(m, f.try_clone().unwrap()));
    let storage = Buffer::Mapped {
        map,
        range: 0..bytes.len(),
    };
    let t = Tensor::contiguous(DType::F32, vec![bytes.len() / 4], storage, "0".into()).unwrap();
    (t, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f32 tensor of `n` elements mapped from a temporary file, and the file.
    fn mapped(n: usize, seed: f32) -> (Tensor, std::fs::File) {
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| (i as f32 * seed).to_le_bytes())
            .collect();
        mapped_f32(&bytes)
    }

    #[test]
    fn inputs_listing_the_same_names_in_another_order_are_aligned_by_name() {
        let (t, _f) = mapped(4, 1.0);
        let named = |names: &[&str]| -> Named {
            names.iter().map(|n| (n.to_string(), t.clone())).collect()
        };
        let names = |v: &Named| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let first = named(&["b", "a", "c"]);
        // Sorted, as safetensors lists them: put in the first input's order.
        assert_eq!(
            names(&in_order_of(&first, named(&["a", "b", "c"]))),
            ["b", "a", "c"]
        );
        // Different names, a duplicate or a different count: left for the plan to refuse.
        assert_eq!(
            names(&in_order_of(&first, named(&["a", "b", "d"]))),
            ["a", "b", "d"]
        );
        assert_eq!(
            names(&in_order_of(&first, named(&["a", "a", "c"]))),
            ["a", "a", "c"]
        );
        assert_eq!(names(&in_order_of(&first, named(&["a", "b"]))), ["a", "b"]);
    }

    #[test]
    fn written_straight_to_the_output_and_an_unreadable_input_leaves_nothing() {
        let n = stream::STEP + 5;
        let (a, _fa) = mapped(n, 1.0);
        let (b, fb) = mapped(n, 3.0);
        let (na, nb) = (vec![("w".to_string(), a)], vec![("w".to_string(), b)]);
        let inputs = [
            Input {
                file: "a.pt",
                tensors: &na,
            },
            Input {
                file: "b.pt",
                tensors: &nb,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("avg.safetensors");
        let plan = Plan::new(&inputs, &Method::Uniform).unwrap();
        let silent = crate::progress::Silent;
        plan.write_safetensors(&out, &[], OutDType::Keep, &BTreeMap::new(), &silent)
            .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let got = st.tensor("w").unwrap();
        let want: Vec<u8> = (0..n)
            .flat_map(|i| {
                let (x, y) = (i as f32, i as f32 * 3.0);
                (x + (y - x) / 2.0).to_le_bytes()
            })
            .collect();
        assert_eq!(got.data(), &want[..]);
        // The second input shrinks: the error names it, and no output is left.
        fb.set_len(100).unwrap();
        let out2 = dir.path().join("again.pt");
        let e = plan
            .write_torch(&out2, &[], OutDType::Keep, &silent)
            .unwrap_err();
        assert!(
            matches!(&e, AverageError::Unreadable { file, name, .. } if file == "b.pt" && name == "w"),
            "{e}"
        );
        assert!(!out2.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
