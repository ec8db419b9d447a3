//! The export and verify pipelines: which weights an export takes, the order its files are
//! written in (the external data before the model that names it, both removed again when the run
//! fails), where a model that fails parity goes, how parity runs, and what an ONNX file says
//! about how to check it.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::checkpoint::py::ModuleRef;
use crate::ema::Located;
use crate::models::layers::heads::HeadOptions;
use crate::onnx::proto::{Dim, ElemType, Model};
use crate::parity::{self, NmsOutput, OnnxModel, ParityReport, Tolerance};
use crate::runtime::Engine;
use crate::write::{self, AtomicFile, WriteError, Writeback, WritebackFile};

/// Why an export or verify pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Export reads pickled Ultralytics models; the file is another layout.
    #[error(
        "{}: export reads Ultralytics checkpoints (pickled model modules); this file's layout is {layout}",
        file.display()
    )]
    NotUltralytics {
        /// The checkpoint.
        file: PathBuf,
        /// Its layout id.
        layout: &'static str,
    },
    /// The raw weights were asked for and the file has none.
    #[error(
        "{}: --source raw: the file holds no raw weights ({})",
        file.display(),
        if *stripped { "stripped checkpoint: `model` is the EMA" } else { "`model` is None" }
    )]
    NoRawWeights {
        /// The checkpoint.
        file: PathBuf,
        /// Whether the model slot holds the EMA (a stripped checkpoint).
        stripped: bool,
    },
    /// The parity report would replace a file the export writes.
    #[error("--report {}: would overwrite the model this export writes", .0.display())]
    ReportOverwrites(PathBuf),
    /// An output could not be placed or written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Streaming the model or its data to the temporary file failed.
    #[error("{}: {source}", path.display())]
    Stream {
        /// The output being written.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The parity check could not run (not: it ran and failed).
    #[error("{}: parity check could not run: {source}", file.display())]
    Parity {
        /// The file the check is about (the checkpoint for export, the model for verify).
        file: PathBuf,
        /// Why, from the parity layer.
        #[source]
        source: Box<parity::ParityError>,
    },
    /// An ONNX model without an input.
    #[error("{}: the model has no input", .0.display())]
    NoInput(PathBuf),
    /// An ONNX output that is one of its inputs: nothing is computed that could be compared.
    #[error("{}: output `{name}` is the graph input itself, not something the model computes", file.display())]
    OutputIsInput {
        /// The ONNX.
        file: PathBuf,
        /// The output.
        name: String,
    },
    /// `verify` cannot tell how an ONNX with NMS inside was made, so cannot judge its rows.
    #[error("{}: the ONNX embeds NMS, but {what}; cannot judge its detection rows", file.display())]
    NmsUnknown {
        /// The ONNX.
        file: PathBuf,
        /// What could not be determined.
        what: String,
    },
    /// The report could not be encoded.
    #[error("{}: {source}", path.display())]
    Report {
        /// The report file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: serde_json::Error,
    },
}

/// Which weights an export takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightSource {
    /// The EMA (the default).
    Ema,
    /// The raw trained weights, deliberately.
    Raw,
}

/// The checkpoint key of the model module an export reads: the EMA's, or the raw model's.
pub fn module_key(
    file: &Path,
    located: &Located,
    source: WeightSource,
) -> Result<String, PipelineError> {
    if located.layout != "ultralytics" {
        return Err(PipelineError::NotUltralytics {
            file: file.to_path_buf(),
            layout: located.layout,
        });
    }
    match source {
        WeightSource::Ema => Ok(located.ema.origin.clone()),
        WeightSource::Raw => match &located.raw {
            Some(r) => Ok(r.origin.clone()),
            None => Err(PipelineError::NoRawWeights {
                file: file.to_path_buf(),
                stripped: located.stripped,
            }),
        },
    }
}

/// The module `key` of `ckpt` (a key [`module_key`] returned and the export accepted).
pub fn module_at<'c>(ckpt: &'c Checkpoint, key: &str) -> Option<ModuleRef<'c>> {
    let g = &ckpt.graph;
    g.dict_get(&ckpt.root, key).map(|v| ModuleRef { g, v })
}

/// The files an export to `model` may write.
#[derive(Clone, Debug)]
pub struct ExportPaths {
    /// The model, when parity passes (or does not run).
    pub model: PathBuf,
    /// The external data file beside it (`<model file name>.data`), when the weights go there.
    pub data: PathBuf,
    /// Where the model goes when parity fails (`<stem>.parity-failed.onnx`), never at `model`.
    pub failed: PathBuf,
}

impl ExportPaths {
    /// The paths of an export to `model`.
    pub fn new(model: &Path) -> ExportPaths {
        let stem = model.file_stem().unwrap_or_default().to_string_lossy();
        ExportPaths {
            model: model.to_path_buf(),
            data: model.with_file_name(Self::data_name(model)),
            failed: model.with_file_name(format!("{stem}.parity-failed.onnx")),
        }
    }

    /// The external data file's name, as the model refers to it.
    pub fn data_name(model: &Path) -> String {
        let name = model.file_name().map(|n| n.to_string_lossy().to_string());
        format!("{}.data", name.as_deref().unwrap_or("model.onnx"))
    }

    /// Refuses a parity report path that is one of the export's outputs or inputs.
    pub fn check_report(&self, report: &Path, inputs: &[&Path]) -> Result<(), PipelineError> {
        if [&self.model, &self.data, &self.failed]
            .iter()
            .any(|o| write::same_target(report, o))
        {
            return Err(PipelineError::ReportOverwrites(report.to_path_buf()));
        }
        write::check_target(report, inputs)?;
        Ok(())
    }
}

/// Writes to `file` through a buffer (the encoder's small writes would each be a system call),
/// flushes and starts the disk writeback of every byte (the fsync at the commit then finds them
/// written, after the parity check); returns what `write` reports.
fn stream(
    file: &mut std::fs::File,
    write: impl FnOnce(&mut std::io::BufWriter<WritebackFile>) -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    let mut writeback = Writeback::default();
    let mut w =
        std::io::BufWriter::with_capacity(1 << 16, WritebackFile::new(file, &mut writeback)?);
    let n = write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.finish();
    Ok(n)
}

/// An exported model written to a temporary file beside its target, its external data (when
/// any) in another temporary file that the staged model names. Parity reads the model from
/// [`StagedExport::model_path`]; nothing takes a final name before [`StagedExport::commit`], so a
/// failed or interrupted run replaces nothing (an existing `OUT.onnx.data` of an earlier export
/// included) and leaves nothing behind.
pub struct StagedExport {
    model: Option<AtomicFile>,
    data: Option<AtomicFile>,
    paths: ExportPaths,
    inputs: Vec<PathBuf>,
    /// The staged model's length in bytes.
    pub model_len: u64,
}

/// Where a committed export went.
#[derive(Debug)]
pub struct Committed {
    /// The model: the target, or the `.parity-failed.onnx` path.
    pub model: PathBuf,
    /// Its external data file, when it has one (named after the model it belongs to).
    pub data: Option<PathBuf>,
    /// The model's length in bytes.
    pub model_len: u64,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes `exported` for `paths` to temporary files: the external data first, then the model
/// naming it, so parity can load the pair.
pub fn stage(
    exported: &crate::onnx::Exported,
    paths: &ExportPaths,
    inputs: &[&Path],
) -> Result<StagedExport, PipelineError> {
    let mut staged = StagedExport {
        model: None,
        data: None,
        paths: paths.clone(),
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        model_len: 0,
    };
    let mut data_name = None;
    if let Some(name) = &exported.external {
        let target = paths.model.with_file_name(name);
        let mut f = AtomicFile::create(&target, inputs)?;
        stream(f.file(), |w| exported.write_external_data(w)).map_err(|source| {
            PipelineError::Stream {
                path: target.clone(),
                source,
            }
        })?;
        data_name = Some(file_name(f.path()));
        f.sync_ahead();
        staged.data = Some(f);
    }
    let mut f = AtomicFile::create(&paths.model, inputs)?;
    staged.model_len = stream(f.file(), |w| match &data_name {
        Some(n) => exported.write_model_naming(w, n),
        None => exported.write_model(w),
    })
    .map_err(|source| PipelineError::Stream {
        path: paths.model.clone(),
        source,
    })?;
    // With external data the commit writes the model again, naming the data's final file.
    if data_name.is_none() {
        f.sync_ahead();
    }
    staged.model = Some(f);
    Ok(staged)
}

impl StagedExport {
    /// The model's temporary file (complete, with its data file beside it).
    pub fn model_path(&self) -> Option<&Path> {
        self.model.as_ref().map(AtomicFile::path)
    }

    /// Where [`StagedExport::commit`] will put the model and its external data.
    pub fn targets(
        &self,
        passed: bool,
        exported: &crate::onnx::Exported,
    ) -> (PathBuf, Option<PathBuf>) {
        let target = if passed {
            self.paths.model.clone()
        } else {
            self.paths.failed.clone()
        };
        let data = self
            .data
            .as_ref()
            .map(|_| match (&exported.external, passed) {
                (Some(name), true) => target.with_file_name(name),
                _ => target.with_file_name(ExportPaths::data_name(&target)),
            });
        (target, data)
    }

    /// Renames the model to its target when `passed`, else to the `.parity-failed.onnx` path.
    /// With external data, the model is written once more naming the data file it will sit
    /// beside (`OUT.onnx.data`, or `OUT.parity-failed.onnx.data`), and the data is renamed to
    /// that name just before the model: a failed check never replaces the target's data. An
    /// earlier data file of that name is kept under a backup name until the model is in place,
    /// and put back if the model cannot be; only a crash between the two renames leaves the
    /// earlier model beside the new data.
    pub fn commit(
        mut self,
        passed: bool,
        exported: &crate::onnx::Exported,
    ) -> Result<Committed, PipelineError> {
        let (target, data_target) = self.targets(passed, exported);
        let (Some(data), Some(data_target)) = (self.data.take(), data_target) else {
            if let Some(f) = self.model.take() {
                if passed {
                    f.commit()
                } else {
                    f.commit_as(&target)
                }?;
            }
            return Ok(Committed {
                model: target,
                data: None,
                model_len: self.model_len,
            });
        };
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        let mut model = AtomicFile::create(&target, &inputs)?;
        let model_len = stream(model.file(), |w| {
            exported.write_model_naming(w, &file_name(&data_target))
        })
        .map_err(|source| PipelineError::Stream {
            path: target.clone(),
            source,
        })?;
        // The staged model named the temporary data file; it goes with this drop.
        self.model = None;
        let backup = keep_aside(&data_target);
        data.commit_as(&data_target)?;
        if let Err(e) = model.commit() {
            // The new data is in place but no model names it: the earlier data goes back (or,
            // with none, the debris goes). A step that fails leaves a file the user can see;
            // the commit's error is what is reported.
            match &backup {
                Some(b) => {
                    let _ = std::fs::rename(b, &data_target);
                }
                None => {
                    let _ = std::fs::remove_file(&data_target);
                }
            }
            return Err(e.into());
        }
        if let Some(b) = backup {
            let _ = std::fs::remove_file(b);
        }
        Ok(Committed {
            model: target,
            data: Some(data_target),
            model_len,
        })
    }
}

/// A hard link to an existing `path` under a hidden name beside it, so the file survives being
/// replaced; `None` when there is no such file or the link cannot be made (then a failed commit
/// cannot restore it, as before).
fn keep_aside(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = file_name(path);
    let backup = dir.join(format!(".{name}.fuse-ema-{}.keep", std::process::id()));
    std::fs::hard_link(path, &backup).ok().map(|_| backup)
}

/// Writes `report` to a temporary file beside `path`, to be committed once the model is.
pub fn stage_report(
    path: &Path,
    report: &ParityReport,
    inputs: &[&Path],
) -> Result<AtomicFile, PipelineError> {
    let text = serde_json::to_string_pretty(report).map_err(|source| PipelineError::Report {
        path: path.to_path_buf(),
        source,
    })? + "\n";
    let mut f = AtomicFile::create(path, inputs)?;
    std::io::Write::write_all(f.file(), text.as_bytes()).map_err(|source| {
        PipelineError::Stream {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(f)
}

/// How a parity check runs: where, on what, within which tolerance.
pub struct ParityPlan<'a> {
    /// The runtime that runs the ONNX.
    pub engine: &'a Engine,
    /// A golden `.npz` to compare with instead of the reference interpreter.
    pub golden: Option<&'a Path>,
    /// An image to compare on (letterboxed) instead of seeded inputs.
    pub image: Option<&'a Path>,
    /// Seeded input batches.
    pub samples: usize,
    /// The first seeded batch's seed.
    pub seed: u64,
    /// `--parity-budget`: stop after the batch during which the parity run exceeded this.
    pub budget: Option<std::time::Duration>,
    /// The user's `atol` and `rtol`, when given.
    pub atol: Option<f64>,
    /// See `atol`.
    pub rtol: Option<f64>,
}

impl ParityPlan<'_> {
    /// The tolerance for a model computing in f16 (`half`) or f32, with the user's overrides.
    pub fn tolerance(&self, half: bool) -> Tolerance {
        let d = if half { Tolerance::F16 } else { Tolerance::F32 };
        Tolerance {
            atol: self.atol.unwrap_or(d.atol),
            rtol: self.rtol.unwrap_or(d.rtol),
            f16_noise: d.f16_noise,
        }
    }

    /// Runs `model` against the checkpoint module `root` (or the golden file) on inputs of
    /// `shape`; `file` is what the error names.
    pub fn run(
        &self,
        file: &Path,
        model: OnnxModel,
        root: ModuleRef,
        shape: &[usize],
        (half, head): (bool, HeadOptions),
        nms: Option<NmsOutput>,
    ) -> Result<ParityReport, PipelineError> {
        let rt = self.engine;
        let task = crate::onnx::task_and_classes(root);
        // RT-DETR's default output is already rows (the top 300 of queries × classes), which
        // reorder on score ties: compared as a set, as end-to-end rows are.
        let head = HeadOptions {
            end2end: head.end2end || crate::models::layers::rtdetr::rows_output(root),
            ..head
        };
        let tol = self.tolerance(half);
        // Pose rows hold keypoints; the head says how many values each has.
        let nms = nms.map(|n| NmsOutput {
            kpt_dim: (root.child("model").ok())
                .and_then(|l| l.children().pop())
                .and_then(|(_, h)| h.ints("kpt_shape"))
                .and_then(|k| k.get(1).map(|&d| d as usize)),
            ..n
        });
        let compare = || -> Result<ParityReport, parity::ParityError> {
            if let Some(g) = self.golden {
                let npz = parity::npz::Npz::open(g)?;
                return parity::against_golden(rt, model, &npz, (&task.0, task.1), head, tol, nms);
            }
            let inputs = match self.image {
                Some(img) => {
                    let t = parity::letterbox::letterbox(img, shape[0], shape[2], shape[3])?;
                    let name = img
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    parity::Inputs::Image(t, name)
                }
                None => parity::Inputs::Seeded {
                    shape,
                    first: self.seed,
                    samples: self.samples,
                    budget: self.budget,
                },
            };
            let how = (head, nms);
            parity::against_reference(rt, model, root, (&task.0, task.1), how, inputs, tol)
        };
        compare().map_err(|source| PipelineError::Parity {
            file: file.to_path_buf(),
            source: Box::new(source),
        })
    }
}

/// Writes a parity report as JSON to `path`, atomically, never over `inputs`.
pub fn write_report(
    path: &Path,
    report: &ParityReport,
    inputs: &[&Path],
) -> Result<(), PipelineError> {
    stage_report(path, report, inputs)?.commit()?;
    Ok(())
}

/// What an ONNX file says about how to check it against a checkpoint.
pub struct OnnxCheck {
    /// The input shape: the model's fixed dimensions, dynamic ones from the checkpoint's training
    /// size (batch 1, 3 channels).
    pub shape: Vec<usize>,
    /// Whether its weights are f16.
    pub half: bool,
    /// End-to-end rows (metadata `end2end`) and their count.
    pub head: HeadOptions,
    /// The NMS it embeds, if any.
    pub nms: Option<NmsOutput>,
}

/// Reads from `model` (at `path`) how to run and compare it against the module `root` of
/// `ckpt`.
pub fn onnx_check(
    path: &Path,
    model: &Model,
    ckpt: &Checkpoint,
    root: ModuleRef,
) -> Result<OnnxCheck, PipelineError> {
    let input = model
        .inputs
        .first()
        .ok_or_else(|| PipelineError::NoInput(path.to_path_buf()))?;
    // An output that merely passes an input through has nothing to compare (review 6: an ONNX
    // whose only output was `images` passed against a golden file).
    if let Some(o) = (model.outputs.iter()).find(|o| model.inputs.iter().any(|i| i.name == o.name))
    {
        return Err(PipelineError::OutputIsInput {
            file: path.to_path_buf(),
            name: o.name.clone(),
        });
    }
    let train = crate::onnx::training_imgsz(ckpt, root).unwrap_or((640, 640));
    let shape: Vec<usize> = input
        .dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) if *n > 0 => *n as usize,
            _ => [1, 3, train.0 as usize, train.1 as usize][i.min(3)],
        })
        .collect();
    let half = model
        .initializers
        .iter()
        .any(|t| t.elem == ElemType::Float16);
    // An end-to-end export (Ultralytics' `nms=False`, or ours with --end2end) says so in its
    // metadata; its rows count is its max_det.
    let end2end = model
        .metadata
        .iter()
        .any(|(k, v)| k == "end2end" && v == "True");
    let head = HeadOptions {
        end2end,
        max_det: output_rows(model).unwrap_or(300),
    };
    Ok(OnnxCheck {
        shape,
        half,
        head,
        nms: super::embedded_nms::embedded_nms(model).map_err(|what| {
            PipelineError::NmsUnknown {
                file: path.to_path_buf(),
                what,
            }
        })?,
    })
}

/// The fixed second dimension of `output0` (rows per image), when it has one.
fn output_rows(model: &Model) -> Option<usize> {
    match model.outputs.first()?.dims.get(1)? {
        Dim::Fixed(n) if *n > 0 => Some(*n as usize),
        _ => None,
    }
}
