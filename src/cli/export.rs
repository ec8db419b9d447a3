//! `export` (with its parity check) and `verify`.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{EXIT_CHECK_FAILED, EXIT_OK, ExportArgs, ParityArgs, VerifyArgs, fail, render};
use crate::ema::{self, Selectors};
use crate::models::layers::heads::HeadOptions;
use crate::parity::{self, OnnxModel, ParityReport};
use crate::pipeline::export::{self, ParityPlan, WeightSource};
use crate::runtime::timing;
use crate::write;

fn parse_imgsz(s: &str) -> Option<(i64, i64)> {
    let parts: Vec<i64> = s
        .split([',', 'x'])
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [n] => Some((*n, *n)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

/// The runtime the parity check runs the ONNX in; forcing one that is missing is an error,
/// `auto` falls back to tract only when ONNX Runtime is absent (and the report says so).
fn runtime(p: &ParityArgs) -> Result<crate::runtime::Engine, String> {
    let ep = p.ep.as_deref().and_then(crate::runtime::Ep::parse);
    crate::runtime::Engine::choose(&p.runtime, ep)
        .map_err(|e| format!("--runtime {}: {e}", p.runtime))
}

/// The runtime, chosen and loaded on a thread while the checkpoint is read and exported
/// (loading ONNX Runtime, ~25 ms of one core, then overlaps that work). Its outcome is settled
/// before any failure of that work is reported, so the errors and exit codes are those of
/// settling it first: a runtime that cannot be had is reported, and the other failure is not.
struct PendingRuntime {
    thread: Option<std::thread::JoinHandle<Result<crate::runtime::Engine, String>>>,
    engine: Option<crate::runtime::Engine>,
}

impl PendingRuntime {
    /// Starts choosing the runtime (nothing with `--no-parity`).
    fn start(no_parity: bool, p: &ParityArgs) -> PendingRuntime {
        let p = p.clone();
        PendingRuntime {
            thread: (!no_parity).then(|| std::thread::spawn(move || runtime(&p))),
            engine: None,
        }
    }

    /// The runtime (`None` with `--no-parity`), or the exit code of its error, printed.
    fn settle(&mut self) -> Result<Option<crate::runtime::Engine>, i32> {
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(e)) => self.engine = Some(e),
                Ok(Err(m)) => return Err(fail(m)),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(self.engine)
    }

    /// The exit code for a failure whose report `report` prints: the runtime's error instead
    /// when it has one.
    fn first(&mut self, report: impl FnOnce() -> i32) -> i32 {
        match self.settle() {
            Ok(_) => report(),
            Err(code) => code,
        }
    }
}

/// The files a parity check reads besides the checkpoint and the model (never written over,
/// with or without `--no-parity`).
fn parity_inputs(p: &ParityArgs) -> Vec<PathBuf> {
    p.golden.iter().chain(&p.parity_input).cloned().collect()
}

/// The parity plan the arguments describe, run in `engine`, with `--seed` or else `seed`.
fn plan<'a>(p: &'a ParityArgs, engine: &'a crate::runtime::Engine, seed: u64) -> ParityPlan<'a> {
    ParityPlan {
        engine,
        golden: p.golden.as_deref(),
        image: p.parity_input.as_deref(),
        samples: p.parity_samples,
        seed: p.seed.unwrap_or(seed),
        budget: p.parity_budget,
        atol: p.atol,
        rtol: p.rtol,
    }
}

/// The parity report file, when `--report` was given.
fn write_report(p: &ParityArgs, r: &ParityReport, inputs: &[&Path]) -> Result<(), i32> {
    match &p.report {
        Some(path) => export::write_report(path, r, inputs).map_err(fail),
        None => Ok(()),
    }
}

pub(super) fn export(a: ExportArgs) -> i32 {
    let imgsz = match a.imgsz.as_deref().map(parse_imgsz) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return fail(format_args!(
                "--imgsz {}: expected N or H,W",
                a.imgsz.unwrap_or_default()
            ));
        }
    };
    if a.batch < 1 {
        return fail("--batch must be at least 1");
    }
    // The runtime is settled before the export is staged, and before any earlier failure is
    // reported, so a missing one still fails first.
    let mut pending = PendingRuntime::start(a.no_parity, &a.parity);
    let paths = export::ExportPaths::new(&a.output);
    if let Some(report) = &a.parity.report {
        // The checkpoint's shards are checked again when the report is written.
        let mut early = parity_inputs(&a.parity);
        early.push(a.file.clone());
        let early: Vec<&Path> = early.iter().map(PathBuf::as_path).collect();
        if let Err(e) = paths.check_report(report, &early) {
            return pending.first(|| fail(e));
        }
    }
    let ckpt = match super::open_deferred(&a.file, &a.strict) {
        Ok(c) => c,
        Err(report) => return pending.first(report),
    };
    timing::mark("checkpoint read");
    let located = match ema::locate(&ckpt, &Selectors::default()) {
        Ok(l) => l,
        Err(e) => return pending.first(|| fail(e)),
    };
    let source = if a.source == "raw" {
        WeightSource::Raw
    } else {
        WeightSource::Ema
    };
    let module_key = match export::module_key(&a.file, &located, source) {
        Ok(k) => k,
        Err(e) => return pending.first(|| fail(e)),
    };
    let nms = crate::onnx::nms::Nms {
        conf: a.conf,
        iou: a.iou,
        agnostic: a.agnostic,
    };
    let nms_output = a.nms.then_some(parity::NmsOutput {
        nms,
        max_det: a.max_det,
        kpt_dim: None,
    });
    let opts = crate::onnx::ExportOptions {
        imgsz,
        batch: a.batch,
        dynamic: a.dynamic,
        nms: a.nms.then_some(nms),
        max_det: a.max_det,
        opset: a.opset,
        half: a.half,
        module_key: module_key.clone(),
        force_external: a.external_data,
        external_name: export::ExportPaths::data_name(&a.output),
        scratch_dir: Some(write::output_dir(&a.output)),
        end2end: a.end2end,
    };
    let exported = match timing::phase("export", || crate::onnx::export(&ckpt, &opts)) {
        Ok(e) => e,
        Err(e) => return pending.first(|| fail(e)),
    };
    let engine = match timing::phase("runtime wait", || pending.settle()) {
        Ok(e) => e,
        Err(code) => return code,
    };
    // export checks the ONNX it has just built: fixed seeds keep its verdict reproducible.
    let parity_plan = engine.as_ref().map(|e| plan(&a.parity, e, 0));
    let mut input_paths = write::checkpoint_inputs(&a.file, &ckpt);
    input_paths.extend(parity_inputs(&a.parity));
    let inputs: Vec<&Path> = input_paths.iter().map(PathBuf::as_path).collect();
    let staged = match timing::phase("stage", || export::stage(&exported, &paths, &inputs)) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // The weights are on disk now; parity reads the model from there.
    let crate::onnx::Exported {
        external,
        input,
        outputs,
        task,
        ..
    } = &exported;
    let Some(root) = export::module_at(&ckpt, &module_key) else {
        return fail(format_args!(
            "{}: '{module_key}' vanished",
            a.file.display()
        ));
    };
    let shape: Vec<usize> = input.iter().map(|&d| d.max(1) as usize).collect();
    let report = match (&parity_plan, staged.model_path()) {
        (Some(plan), Some(model)) => {
            let head = HeadOptions {
                end2end: a.end2end,
                max_det: a.max_det,
            };
            let path = model;
            let model = OnnxModel::File(path);
            if model.keeps_session() {
                crate::runtime::alloc::keep_freed_memory();
            }
            let mut report =
                match plan.run(&a.file, model, root, &shape, (a.half, head), nms_output) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
            if let Some(nms) = &nms_output {
                // The file just written, read back as `verify` reads it.
                let bytes = match crate::io::read_regular(path, 2 << 30) {
                    Ok(b) => b,
                    Err(e) => return fail(e),
                };
                let parsed = match crate::onnx::read::parse(&bytes, Some(path)) {
                    Ok(m) => m,
                    Err(m) => return fail(format_args!("{}: {m}", path.display())),
                };
                let tail = (&bytes[..], &parsed, &shape[..], a.half);
                if let Err(m) = nms_tail(
                    (&a.file, path),
                    tail,
                    (plan.engine, plan),
                    root,
                    nms,
                    &mut report,
                ) {
                    return fail(m);
                }
            }
            timing::mark("parity done");
            Some(report)
        }
        _ => None,
    };
    let passed = report.as_ref().is_none_or(|r| r.pass);
    // The report is written before the model is committed, so a report that cannot be written
    // leaves no model behind; it must replace neither an input nor what this run writes.
    let (model_target, data_target) = staged.targets(passed, &exported);
    let mut written = inputs.clone();
    written.push(&model_target);
    written.extend(data_target.as_deref());
    let staged_report = match (&report, &a.parity.report) {
        (Some(r), Some(path)) => match export::stage_report(path, r, &written) {
            Ok(f) => Some(f),
            Err(e) => return fail(e),
        },
        _ => None,
    };
    let committed = match timing::phase("commit", || staged.commit(passed, &exported)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(f) = staged_report
        && let Err(e) = f.commit()
    {
        return fail(e);
    }
    let (final_path, model_len) = (&committed.model, committed.model_len);
    if a.json {
        let v = json!({
            "file": a.file.display().to_string(),
            "output": final_path.display().to_string(),
            "source": a.source,
            "weights_from": module_key,
            "layout": located.report(),
            "task": task,
            "input": {"name": "images", "shape": input},
            "outputs": outputs.iter().map(|(n, s)| json!({"name": n, "shape": s})).collect::<Vec<_>>(),
            "opset": a.opset,
            "half": a.half,
            "external_data": external,
            "bytes": model_len,
            "parity": report,
        });
        if let Err(code) = super::commands::print_json(&v) {
            return code;
        }
    } else {
        let shapes: Vec<String> = outputs.iter().map(|(n, s)| format!("{n} {s:?}")).collect();
        println!(
            "{} → {} ({}, {} weights from '{}', images {:?} → {}, opset {}{}), {}",
            a.file.display(),
            final_path.display(),
            task,
            a.source.to_uppercase(),
            module_key,
            input,
            shapes.join(", "),
            a.opset,
            if a.half { ", f16" } else { "" },
            render::bytes(model_len)
        );
        match &report {
            None => println!("parity: not run (--no-parity)"),
            Some(r) => print!("{}", render::parity_text(r)),
        }
    }
    if passed { EXIT_OK } else { EXIT_CHECK_FAILED }
}

/// Runs the NMS tail of the ONNX at `onnx` (its bytes, parsed model, input shape, and whether it
/// computes in f16) alone on synthetic predictions over the whole score range (review 8: seeded
/// images never score above ~0.9) and adds what disagrees to `report`; the error line when the
/// tail cannot be run on its own, naming `file`.
fn nms_tail(
    (file, onnx): (&Path, &Path),
    (bytes, model, shape, half): (&[u8], &crate::onnx::proto::Model, &[usize], bool),
    (engine, plan): (&crate::runtime::Engine, &ParityPlan),
    root: crate::checkpoint::py::ModuleRef,
    nms: &parity::NmsOutput,
    report: &mut ParityReport,
) -> Result<(), String> {
    let strides = root.attr_tensor_f64("stride").ok().flatten();
    let (task, nc) = crate::onnx::task_and_classes(root);
    let tail = parity::nms_tail::TailModel {
        bytes,
        model,
        input: shape,
        strides: strides.as_deref().unwrap_or(&[]),
        task: (&task, nc),
        half,
        dir: Some(onnx.parent().unwrap_or(Path::new("."))),
    };
    let failed = parity::nms_tail::check(engine, &tail, nms, plan.tolerance(half), plan.seed)
        .map_err(|what| {
            format!(
                "{}: the NMS tail cannot be checked on its own: {what}",
                file.display()
            )
        })?;
    report.pass &= failed.is_empty();
    report.task.extend(failed);
    Ok(())
}

/// A seed no one can know before the run: the process's randomly keyed hasher over the time.
/// 48 bits keep it short to type back as `--seed`.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now();
    std::collections::hash_map::RandomState::new().hash_one(now) & ((1 << 48) - 1)
}

pub(super) fn verify(a: VerifyArgs) -> i32 {
    let engine = match runtime(&a.parity) {
        Ok(e) => e,
        Err(m) => return fail(m),
    };
    // Protobuf caps a model at 2 GiB; a FIFO or device is refused without blocking.
    let bytes = match crate::io::read_regular(&a.model, 2 << 30) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let model = match crate::onnx::read::parse(&bytes, Some(&a.model)) {
        Ok(m) => m,
        Err(m) => {
            return fail(format_args!(
                "{}: not a readable ONNX model: {m}",
                a.model.display()
            ));
        }
    };
    let ckpt = match crate::io::open(&a.checkpoint) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let located = match ema::locate(&ckpt, &Selectors::default()) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if located.layout != "ultralytics" {
        // No graph to run the checkpoint in: the weights alone are compared, as graft matches them.
        return super::graft::verify_weights(&a, &located);
    }
    let Some(ema_root) = export::module_at(&ckpt, &located.ema.origin) else {
        return fail(format_args!(
            "{}: '{}' vanished",
            a.checkpoint.display(),
            located.ema.origin
        ));
    };
    let check = match export::onnx_check(&a.model, &model, &ckpt, ema_root) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (task, _) = crate::onnx::task_and_classes(ema_root);
    // A public fixed input could be recognised by a doctored graph (review 7, F4).
    let plan = plan(&a.parity, &engine, random_seed());
    let onnx = OnnxModel::File(&a.model);
    let shape = &check.shape;
    let report = match plan.run(
        &a.model,
        onnx,
        ema_root,
        shape,
        (check.half, check.head),
        check.nms,
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut report = report;
    if let Some(nms) = &check.nms {
        let tail = (&bytes[..], &model, &shape[..], check.half);
        if let Err(m) = nms_tail(
            (&a.model, &a.model),
            tail,
            (&engine, &plan),
            ema_root,
            nms,
            &mut report,
        ) {
            return fail(m);
        }
    }
    let weights = match crate::onnx::origin::weights_origin(&ckpt, &located, &model) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let metadata = crate::pipeline::metadata_check::check_metadata(&model, &ckpt, ema_root);
    let pass = report.pass && weights.verdict == "ema" && metadata.pass;
    let mut input_paths = write::checkpoint_inputs(&a.checkpoint, &ckpt);
    input_paths.push(a.model.clone());
    input_paths.extend(parity_inputs(&a.parity));
    let inputs: Vec<&Path> = input_paths.iter().map(PathBuf::as_path).collect();
    if let Err(code) = write_report(&a.parity, &report, &inputs) {
        return code;
    }
    if a.json {
        let v = json!({
            "model": a.model.display().to_string(),
            "checkpoint": a.checkpoint.display().to_string(),
            "task": task,
            "input_shape": shape,
            "parity": report,
            "weights": weights,
            "metadata": metadata,
            "pass": pass,
        });
        if let Err(code) = super::commands::print_json(&v) {
            return code;
        }
    } else {
        println!(
            "{} vs the EMA of {} ({task}, input {shape:?})",
            a.model.display(),
            a.checkpoint.display()
        );
        print!("{}", render::parity_text(&report));
        if let Some(s) = &report.samples {
            println!("seed: {0} (`--seed {0}` reruns these inputs)", s.first_seed);
        }
        println!("weights: {}", weights.summary);
        println!("metadata: {}", metadata.summary());
    }
    if pass { EXIT_OK } else { EXIT_CHECK_FAILED }
}
