//! Parity: does the ONNX compute what the checkpoint's EMA model computes? The ONNX runs in ONNX
//! Runtime; the checkpoint runs in the independent reference interpreter; outputs are compared
//! numerically and at task level (detections after NMS, classification top-k).

mod channels;
mod error;
mod inputs;
pub mod labels;
pub mod letterbox;
mod nms_output;
pub mod nms_tail;
pub mod npy;
pub mod npz;
pub mod reselect;
mod rows;
mod task;

use serde::Serialize;

use crate::checkpoint::py::ModuleRef;
use crate::models::layers::heads::HeadOptions;
use crate::reference::Reference;
use crate::runtime::{Engine, timing};

pub use channels::{channel_axis, channel_noise, compare, compare_along, compare_f16};
pub use error::ParityError;
use inputs::{Batches, run_onnx, run_prepared};
pub use inputs::{Inputs, OnnxModel, SampleCount, seeded_images};
pub use nms_output::NmsOutput;
pub use reselect::Reselection;
pub use rows::{
    RowsTolerance, Suppression, compare_rows, detection_sets, nms_rows_check, rows_check,
};
pub use task::{Agreement, TaskCheck, task_check};

/// Pass criterion, per channel of each output: max |Δ| ≤ atol + rtol · max |reference| over that
/// channel. Per channel, because one output mixes scales — box coordinates in the hundreds beside
/// class scores below one — and a tolerance scaled by the largest would hide every score error.
///
/// For f16 models the limit of each channel also allows `f16_noise` times that channel's f16
/// rounding noise: how far the reference itself moves when it stores its input and every
/// module's output in f16 (docs/parity.md derives this).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part (of the channel's largest reference magnitude).
    pub rtol: f64,
    /// f16 models: the multiple of each channel's emulated f16 rounding noise added to its limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f16_noise: Option<f64>,
}

impl Tolerance {
    /// Defaults for f32 models. The interpreter applies BatchNorm unfolded and accumulates in
    /// its own order; on calibrated deep models box coordinates then differ from any runtime by up
    /// to ~2e-4 relative, so rtol is 1e-3 (a class-score channel still fails at 1.1e-3).
    pub const F32: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-3,
        f16_noise: None,
    };
    /// Defaults for `--half` models: a fixed part for what f16 storage of the weights and the
    /// runtime's own rounding order add, plus a multiple of the emulated noise of each channel.
    pub const F16: Tolerance = Tolerance {
        atol: 1e-2,
        rtol: 1e-2,
        f16_noise: Some(F16_NOISE_FACTOR),
    };
}

/// How many times the emulated f16 noise of a channel an f16 runtime may deviate. The emulation
/// rounds at module boundaries only; a runtime also rounds inside each module (after the
/// convolution, the activation, each Add and Concat input) and stores the weights in f16, about
/// four rounding points for each emulated one. Independent roundings add in quadrature (×2), and
/// the worst element over a channel of random-signed errors varies between runs by a further ×2.
/// Measured on Ultralytics' own half exports (yolo11 at 640, yolov8-seg at 320) the largest
/// ratio of runtime deviation to emulated noise is recorded in docs/parity.md.
pub const F16_NOISE_FACTOR: f64 = 6.0;

/// Statistics of one output.
#[derive(Clone, Debug, Serialize)]
pub struct OutputStats {
    /// Output name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// max |onnx − reference|.
    pub max_abs: f64,
    /// max |Δ| / (|reference| + 1e-6).
    pub max_rel: f64,
    /// mean |Δ|.
    pub mean_abs: f64,
    /// Cosine similarity of the flattened outputs.
    pub cosine: f64,
    /// max |reference|.
    pub reference_max: f64,
    /// The channel (index along dimension 1) nearest to or furthest over its limit.
    pub worst_channel: usize,
    /// max |Δ| in that channel.
    pub worst_channel_max_abs: f64,
    /// Its limit, atol + rtol · max |reference| in that channel (plus the f16 noise allowance).
    pub worst_channel_limit: f64,
    /// f16 models: the emulated f16 rounding noise of that channel (max |Δ| of the f16-rounding
    /// reference against the exact one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_channel_f16_noise: Option<f64>,
    /// Whether every channel is within its limit.
    pub pass: bool,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    /// Runtime that ran the ONNX (`onnxruntime 1.32.0`).
    pub runtime: String,
    /// What the ONNX was compared with.
    pub compared_with: String,
    /// Inputs used.
    pub inputs: String,
    /// Tolerance applied.
    pub tolerance: Tolerance,
    /// Per output, worst over all samples.
    pub outputs: Vec<OutputStats>,
    /// Task-level checks, per image.
    pub task: Vec<TaskCheck>,
    /// Seeded inputs: how many batches were asked for and checked (absent for an image or a
    /// golden file, which are one batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<SampleCount>,
    /// RT-DETR: images whose rows failed with the interpreter's query selection, and what
    /// decoding its near-tie swaps found (docs/parity.md, "Query selection").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_reselections: Vec<Reselection>,
    /// Everything passed.
    pub pass: bool,
}

/// The task-level check's idea of alike: scores within the output tolerance at score scale (≤ 1)
/// and boxes at IoU ≥ 0.99, or else each coordinate within its row's channel limit; for f16
/// models the score allowance grows by that of the noisiest score channel (rows 4 onward of
/// `output0`) and each box row gets its own channel limit plus its noise, in place of the IoU.
fn agreement(
    tol: Tolerance,
    shape: &[usize],
    emulated: Option<&[f32]>,
    exact: &[f32],
) -> Agreement {
    let base = tol.atol + tol.rtol;
    // Each box row's channel limit (atol + rtol · max |row| over the batch).
    let mut rows = [base; 4];
    if shape.len() == 3 && shape[1] > 4 && exact.len() == shape.iter().product::<usize>() {
        let a = shape[2];
        for (r, b) in rows.iter_mut().enumerate() {
            let peak = (0..shape[0])
                .flat_map(|i| exact[(i * shape[1] + r) * a..][..a].iter())
                .fold(0f64, |m, &v| m.max((v as f64).abs()));
            *b = tol.atol + tol.rtol * peak;
        }
    }
    match (tol.f16_noise, emulated) {
        (Some(k), Some(e)) if e.len() == exact.len() && shape.len() == 3 && shape[1] > 4 => {
            let noise = channel_noise(shape, e, exact);
            let mut boxes = rows;
            for (b, n) in boxes.iter_mut().zip(&noise) {
                *b += k * n;
            }
            Agreement {
                score: base + k * noise.iter().skip(4).copied().fold(0.0, f64::max),
                boxes: Some(boxes),
                rows,
            }
        }
        _ => Agreement {
            score: base,
            boxes: None,
            rows,
        },
    }
}

/// Merges per-sample statistics, keeping the worst of each.
fn worst(acc: &mut Vec<OutputStats>, new: Vec<OutputStats>) {
    if acc.is_empty() {
        *acc = new;
        return;
    }
    for (a, n) in acc.iter_mut().zip(new) {
        a.max_abs = a.max_abs.max(n.max_abs);
        a.max_rel = a.max_rel.max(n.max_rel);
        a.mean_abs = a.mean_abs.max(n.mean_abs);
        a.cosine = a.cosine.min(n.cosine);
        a.reference_max = a.reference_max.max(n.reference_max);
        if n.worst_channel_max_abs / n.worst_channel_limit
            > a.worst_channel_max_abs / a.worst_channel_limit
        {
            a.worst_channel = n.worst_channel;
            a.worst_channel_max_abs = n.worst_channel_max_abs;
            a.worst_channel_limit = n.worst_channel_limit;
            a.worst_channel_f16_noise = n.worst_channel_f16_noise;
        }
        a.pass &= n.pass;
    }
}

/// The value of a scoped thread, its panic carried on.
fn join<X>(h: std::thread::ScopedJoinHandle<'_, X>) -> X {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs the ONNX and the reference on `samples` seeded inputs of `shape` and compares them;
/// `head` says what the model's detection head outputs (end-to-end rows are compared as sets),
/// `nms` the NMS the export embeds (its rows, too).
pub fn against_reference(
    rt: &Engine,
    model: OnnxModel,
    reference: ModuleRef,
    (task, nc): (&str, usize),
    (head, nms): (HeadOptions, Option<NmsOutput>),
    inputs: Inputs,
    tol: Tolerance,
) -> Result<ParityReport, ParityError> {
    timing::mark("parity starts");
    let mut r = Reference::new(reference)
        .map_err(ParityError::Reference)?
        .with_head(head)
        .keeping_selections();
    let mut r16 = match tol.f16_noise {
        Some(_) => Some(
            Reference::new(reference)
                .map_err(ParityError::Reference)?
                .with_head(head)
                .emulating_f16(),
        ),
        None => None,
    };
    let (mut outputs, mut tasks, mut reselections) = (Vec::new(), Vec::new(), Vec::new());
    let mut batches = Batches::new(inputs);
    let mut batch = 0;
    // A small model's session, made ready once for every batch.
    let mut session = None;
    let keep = model.keeps_session();
    while let Some(images) = batches.next() {
        batch += 1;
        let input_shape = images.shape.clone();
        // The reference first, then the runtime: each one's memory is freed before the other
        // starts, so the peak is the larger of the two, not their sum. Side by side they took
        // as long on the 2-core benchmark machine (docs/benchmarks.md) and held ~130 MB more.
        // The f16 emulation runs beside the exact reference: same work, no shared state.
        let (want, emulated) = std::thread::scope(|s| {
            let e16 = r16.as_mut().map(|r16| {
                let images = images.clone();
                s.spawn(move || timing::phase("reference (f16 emulation)", || r16.run(images)))
            });
            let want = timing::phase("reference", || r.run(images.clone()));
            (want, e16.map(join))
        });
        let got = timing::phase("ONNX", || {
            let mut ready = match session.take() {
                Some(p) => p,
                None => rt.prepare(model.source())?,
            };
            let got = run_prepared(&mut ready, &images);
            // A large model's session goes before the next batch's reference starts.
            if keep {
                session = Some(ready);
            }
            got
        });
        let got = got?;
        let mut want = want.map_err(ParityError::ReferenceRun)?;
        let logits = r.class_logits.take();
        let selections = std::mem::take(&mut r.selections);
        let emulated = emulated.transpose().map_err(ParityError::EmulationRun)?;
        let mut row_noise = [0f64; 5];
        let mut candidates = None;
        if let (Some(p), Some(raw)) = (&nms, want.first_mut()) {
            if let (Some(k), Some(e)) = (tol.f16_noise, emulated.as_ref().and_then(|e| e.first()))
                && e.shape == raw.shape
            {
                row_noise = p.noise(raw, e, nc).map(|n| k * n);
            }
            let rows = p.rows(raw, task, nc, &input_shape)?;
            let rt = RowsTolerance {
                noise: row_noise,
                ..p.tolerance(tol, task, Some(&input_shape))
            };
            let near = 2.0 * rows::score_limit(&rows, &rt);
            candidates = Some(p.candidates(raw, task, nc, near as f32));
            *raw = rows;
        }
        if got.len() != want.len() {
            return Err(ParityError::OutputCount {
                onnx: got.len(),
                model: want.len(),
            });
        }
        // Detection rows are compared as sets below, not channel by channel.
        let skip = usize::from(nms.is_some());
        let stats = got
            .iter()
            .zip(&want)
            .enumerate()
            .skip(skip)
            .map(|(i, ((name, g), w))| {
                if head.end2end && i == 0 && g.shape == w.shape {
                    // f16: each column group's limit grows by the emulated f16 noise of the rows,
                    // as each channel's does for raw outputs.
                    let mut rt = RowsTolerance::top_k(tol);
                    let e = emulated.as_ref().and_then(|e| e.first());
                    if let (Some(k), Some(e)) = (tol.f16_noise, e) {
                        rt.noise = rows::f16_noise(w, e, rt).map(|n| k * n);
                    }
                    let (mut s, mut t) = detection_sets(name, &g.shape, &g.data, &w.data, rt);
                    if t.iter().any(|t| !t.pass) && !selections.is_empty() {
                        let mut w = w.clone();
                        let done = timing::phase("query reselection", || {
                            reselect::retry(batch - 1, g, &mut w, &t, &selections, (tol, rt))
                        });
                        if done.iter().any(|d| d.accepted.is_some()) {
                            (s, t) = detection_sets(name, &g.shape, &g.data, &w.data, rt);
                        }
                        reselect::annotate(&mut t, &done);
                        reselections.extend(done);
                    }
                    if tol.f16_noise.is_some() && e.is_some() {
                        s.worst_channel_f16_noise = Some(
                            rt.noise[rows::group(s.worst_channel, None)]
                                / tol.f16_noise.unwrap_or(1.0),
                        );
                    }
                    tasks.extend(t);
                    s
                } else if g.shape != w.shape {
                    let mut s = compare(name, &[], &[], &[], tol);
                    s.shape = g.shape.clone();
                    s.max_abs = f64::INFINITY;
                    s.pass = false;
                    s
                } else if let (0, Some(l)) = (i, logits.as_ref()) {
                    labels::compare_labels(name, &g.shape, &g.data, &w.data, Some(&l.data), tol)
                } else {
                    let e = emulated
                        .as_ref()
                        .and_then(|e| e.get(i))
                        .map(|t| &t.data[..]);
                    let axis = channel_axis(task, &g.shape);
                    compare_along(name, &g.shape, axis, &g.data, &w.data, e, tol)
                }
            })
            .collect();
        worst(&mut outputs, stats);
        if let (Some(p), Some((_, g)), Some(w)) = (&nms, got.first(), want.first()) {
            let rt = RowsTolerance {
                noise: row_noise,
                ..p.tolerance(tol, task, Some(&input_shape))
            };
            tasks.extend(nms_rows_check(g, w, candidates.as_ref(), rt));
        } else if let (Some((_, g)), Some(w)) = (got.first(), want.first())
            && g.shape == w.shape
            && !head.end2end
        {
            let e = emulated
                .as_ref()
                .and_then(|e| e.first())
                .map(|t| &t.data[..]);
            let agree = agreement(tol, &w.shape, e, &w.data);
            tasks.extend(task_check(task, nc, g, w, agree));
        }
    }
    let (described, samples) = batches.finish();
    let pass = outputs.iter().all(|o| o.pass) && tasks.iter().all(|t| t.pass);
    Ok(ParityReport {
        runtime: rt.name(),
        compared_with:
            "reference interpreter on the checkpoint's EMA module tree (BatchNorm unfolded, f32)"
                .into(),
        inputs: described,
        samples,
        tolerance: tol,
        outputs,
        task: tasks,
        query_reselections: reselections,
        pass,
    })
}

/// Whether a golden array is one of the model's outputs (`output0`, `output1`, …, or YOLOv7's
/// single `output`; not the second size's `output0_BxHxW`, nor `images` or `logits`).
fn is_output_name(n: &str) -> bool {
    n.strip_prefix("output")
        .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
}

/// A failed check for each output on one side only (`onnx` against the golden's `golden`).
fn output_set<'a>(
    onnx: impl Iterator<Item = &'a str>,
    golden: impl Iterator<Item = &'a str>,
) -> Vec<TaskCheck> {
    let (onnx, golden): (Vec<&str>, Vec<&str>) = (onnx.collect(), golden.collect());
    let missing = golden.iter().filter(|n| !onnx.contains(n));
    let extra = onnx.iter().filter(|n| !golden.contains(n));
    missing
        .map(|n| format!("the ONNX has no `{n}`, which the golden file holds"))
        .chain(extra.map(|n| format!("the ONNX's output `{n}` is not in the golden file")))
        .map(|detail| TaskCheck {
            kind: "outputs",
            image: 0,
            pass: false,
            detail,
        })
        .collect()
}

/// Runs the ONNX on a golden file's `images` and compares with its `output0`, `output1`, …;
/// end-to-end rows (`head`) as sets.
pub fn against_golden(
    rt: &Engine,
    model: OnnxModel,
    golden: &npz::Npz,
    (task, nc): (&str, usize),
    head: HeadOptions,
    tol: Tolerance,
    nms: Option<NmsOutput>,
) -> Result<ParityReport, ParityError> {
    let images = golden
        .get("images")
        .ok_or_else(|| ParityError::GoldenMissing("images".into()))?;
    let got = run_onnx(rt, &model, images)?;
    let mut outputs = Vec::new();
    // The ONNX must give exactly the golden's outputs: one it lacks was never compared, and a
    // file could drop the outputs it gets wrong (review 6: a segmentation ONNX without its
    // prototypes passed).
    let mut tasks = output_set(
        got.iter().map(|(n, _)| n.as_str()),
        golden.names().filter(|n| is_output_name(n)),
    );
    for (name, g) in &got {
        let Some(w) = golden.get(name) else {
            continue;
        };
        if w.shape != g.shape {
            // As on the reference path: an output of another shape than the model's is a
            // failed comparison, not an unreadable input.
            let mut s = compare(name, &[], &[], &[], tol);
            s.shape = g.shape.clone();
            s.max_abs = f64::INFINITY;
            s.pass = false;
            outputs.push(s);
            tasks.push(TaskCheck {
                kind: "outputs",
                image: 0,
                pass: false,
                detail: format!(
                    "`{name}`: the ONNX gives {:?}, the golden file holds {:?}",
                    g.shape, w.shape
                ),
            });
            continue;
        }
        if head.end2end && name == "output0" {
            let (s, t) = compare_rows(name, &g.shape, &g.data, &w.data, tol);
            outputs.push(s);
            tasks.extend(t);
            continue;
        }
        if name == "output0"
            && let Some(p) = &nms
        {
            tasks.extend(rows_check(g, w, p.tolerance(tol, task, None)));
            continue;
        }
        // A class map is compared as labels, judged by the golden's `logits` where it has them.
        outputs.push(if name == "output0" && task == "semantic" {
            let logits = golden.get("logits").map(|l| &l.data[..]);
            labels::compare_labels(name, &g.shape, &g.data, &w.data, logits, tol)
        } else {
            let axis = channel_axis(task, &g.shape);
            compare_along(name, &g.shape, axis, &g.data, &w.data, None, tol)
        });
        if name == "output0" {
            tasks.extend(task_check(
                task,
                nc,
                g,
                w,
                agreement(tol, &w.shape, None, &w.data),
            ));
        }
    }
    let pass = outputs.iter().all(|o| o.pass) && tasks.iter().all(|t| t.pass);
    Ok(ParityReport {
        runtime: rt.name(),
        compared_with: "golden outputs".into(),
        inputs: format!("golden `images` {:?}", images.shape),
        tolerance: tol,
        outputs,
        task: tasks,
        samples: None,
        query_reselections: Vec::new(),
        pass,
    })
}
