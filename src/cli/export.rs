//! `export` (with its parity check) and `verify`.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{EXIT_CHECK_FAILED, EXIT_OK, ExportArgs, ParityArgs, VerifyArgs, fail, render};
use crate::checkpoint::py::M;
use crate::ema::{self, Selectors};
use crate::models::layers::heads::HeadOptions;
use crate::parity::{self, OnnxModel, ParityReport, Tolerance};
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

fn tolerance(p: &ParityArgs, half: bool) -> Tolerance {
    let d = if half { Tolerance::F16 } else { Tolerance::F32 };
    Tolerance {
        atol: p.atol.unwrap_or(d.atol),
        rtol: p.rtol.unwrap_or(d.rtol),
        f16_noise: d.f16_noise,
    }
}

/// Runs parity for an ONNX against the checkpoint module `root` (or a golden file).
fn run_parity(
    p: &ParityArgs,
    model: OnnxModel,
    root: M,
    shape: &[usize],
    (half, head): (bool, HeadOptions),
    nms: Option<parity::NmsOutput>,
) -> Result<ParityReport, String> {
    let rt = runtime(p)?;
    let rt = &rt;
    let task = crate::onnx::task_and_classes(root);
    // RT-DETR's default output is already rows (the top 300 of queries × classes), which
    // reorder on score ties: compared as a set, as end-to-end rows are.
    let head = HeadOptions {
        end2end: head.end2end || crate::models::layers::rtdetr::rows_output(root),
        ..head
    };
    let tol = tolerance(p, half);
    // Pose rows hold keypoints; the head says how many values each has.
    let nms = nms.map(|n| parity::NmsOutput {
        kpt_dim: (root.child("model").ok())
            .and_then(|l| l.children().pop())
            .and_then(|(_, h)| h.ints("kpt_shape"))
            .and_then(|k| k.get(1).map(|&d| d as usize)),
        ..n
    });
    match &p.golden {
        Some(g) => {
            let npz = parity::npz::Npz::open(g)?;
            parity::against_golden(rt, model, &npz, (&task.0, task.1), head, tol, nms)
        }
        None => {
            let inputs = match &p.parity_input {
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
                    samples: p.parity_samples,
                },
            };
            parity::against_reference(rt, model, root, (&task.0, task.1), (head, nms), inputs, tol)
        }
    }
}

/// The files a parity check reads besides the checkpoint and the model.
fn parity_inputs(p: &ParityArgs) -> Vec<PathBuf> {
    p.golden.iter().chain(&p.parity_input).cloned().collect()
}

fn write_report(path: &Option<PathBuf>, r: &ParityReport, inputs: &[&Path]) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let mut f = write::AtomicFile::create(path, inputs).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())? + "\n";
    std::io::Write::write_all(f.file(), text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.commit().map_err(|e| e.to_string())
}

/// Writes to `file` through a buffer (the encoder's small writes would each be a system call)
/// and flushes; returns what `write` reports.
fn stream(
    file: &mut std::fs::File,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
    let n = write(&mut w)?;
    std::io::Write::flush(&mut w)?;
    Ok(n)
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
    // Settle the runtime before any work, so a missing one fails fast.
    if !a.no_parity
        && let Err(m) = runtime(&a.parity)
    {
        return fail(m);
    }
    if let Some(report) = &a.parity.report {
        let stem = a.output.file_stem().unwrap_or_default().to_string_lossy();
        let data = a.output.with_file_name(format!(
            "{}.data",
            a.output.file_name().unwrap_or_default().to_string_lossy()
        ));
        let failed = a
            .output
            .with_file_name(format!("{stem}.parity-failed.onnx"));
        if [&a.output, &data, &failed]
            .iter()
            .any(|o| write::same_target(report, o))
        {
            return fail(format_args!(
                "--report {}: would overwrite the model this export writes",
                report.display()
            ));
        }
        // The checkpoint's shards are checked again when the report is written.
        let mut early = parity_inputs(&a.parity);
        early.push(a.file.clone());
        let early: Vec<&Path> = early.iter().map(PathBuf::as_path).collect();
        if let Err(e) = write::check_target(report, &early) {
            return fail(e);
        }
    }
    let ckpt = match super::open_strict(&a.file, &a.strict) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(code) = super::strict_refusal(&ckpt, &a.strict) {
        return code;
    }
    let located = match ema::locate(&ckpt, &Selectors::default()) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if located.layout != "ultralytics" {
        return fail(format_args!(
            "{}: export reads Ultralytics checkpoints (pickled model modules); this file's layout is {}",
            a.file.display(),
            located.layout
        ));
    }
    let module_key = if a.source == "raw" {
        match &located.raw {
            Some(r) => r.origin.clone(),
            None => {
                return fail(format_args!(
                    "{}: --source raw: the file holds no raw weights ({})",
                    a.file.display(),
                    if located.stripped {
                        "stripped checkpoint: `model` is the EMA"
                    } else {
                        "`model` is None"
                    }
                ));
            }
        }
    } else {
        located.ema.origin.clone()
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
        external_name: format!(
            "{}.data",
            a.output
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "model.onnx".into())
        ),
        scratch_dir: Some(match a.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }),
        end2end: a.end2end,
    };
    let exported = match crate::onnx::export(&ckpt, &opts) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let mut input_paths = write::checkpoint_inputs(&a.file, &ckpt);
    input_paths.extend(parity_inputs(&a.parity));
    let inputs: Vec<&Path> = input_paths.iter().map(PathBuf::as_path).collect();
    // The data file (when any) goes in first, so a model never points at a missing file.
    if let Some(name) = &exported.external {
        let target = a.output.with_file_name(name);
        let written = write::AtomicFile::create(&target, &inputs).and_then(|mut f| {
            stream(f.file(), |w| exported.write_external_data(w))
                .map_err(|e| write::WriteError::new(&target, e.to_string()))?;
            f.commit()
        });
        if let Err(e) = written {
            return fail(e);
        }
    }
    // The data file had to be in place before the model (parity loads the model, which names
    // it); when no model follows it, it is removed again, so a failed run leaves nothing behind.
    let data_path = exported
        .external
        .as_ref()
        .map(|name| a.output.with_file_name(name));
    let orphaned = |code: i32| {
        if let Some(p) = &data_path {
            let _ = std::fs::remove_file(p);
        }
        code
    };
    let mut model_file = match write::AtomicFile::create(&a.output, &inputs) {
        Ok(f) => f,
        Err(e) => return orphaned(fail(e)),
    };
    let model_len = match stream(model_file.file(), |w| exported.write_model(w)) {
        Ok(n) => n,
        Err(e) => return orphaned(fail(format_args!("{}: {e}", a.output.display()))),
    };
    // The weights are on disk now; parity reads the model from there.
    let crate::onnx::Exported {
        external,
        input,
        outputs,
        task,
        ..
    } = exported;
    let g = &ckpt.graph;
    let root_v = g
        .dict_get(&ckpt.root, &module_key)
        .expect("export checked the module");
    let root = M { g, v: root_v };
    let shape: Vec<usize> = input.iter().map(|&d| d.max(1) as usize).collect();
    let report = if a.no_parity {
        None
    } else {
        let model = OnnxModel::File(model_file.path());
        let head = HeadOptions {
            end2end: a.end2end,
            max_det: a.max_det,
        };
        match run_parity(&a.parity, model, root, &shape, (a.half, head), nms_output) {
            Ok(r) => Some(r),
            Err(m) => {
                return orphaned(fail(format_args!(
                    "{}: parity check could not run: {m}",
                    a.file.display()
                )));
            }
        }
    };
    let passed = report.as_ref().is_none_or(|r| r.pass);
    let final_path = if passed {
        a.output.clone()
    } else {
        let name = a
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        a.output
            .with_file_name(format!("{name}.parity-failed.onnx"))
    };
    let committed = if passed {
        model_file.commit()
    } else {
        model_file.commit_as(&final_path)
    };
    if let Err(e) = committed {
        return orphaned(fail(e));
    }
    // The report must replace neither an input nor what this run just wrote.
    let mut written = inputs.clone();
    written.push(&final_path);
    let external_target = external.as_ref().map(|name| a.output.with_file_name(name));
    written.extend(external_target.as_deref());
    if let Some(r) = &report
        && let Err(m) = write_report(&a.parity.report, r, &written)
    {
        return fail(m);
    }
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
        match serde_json::to_string_pretty(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
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

/// The NMS an ONNX embeds, from the metadata `yolo export nms=True` (and `--nms`) writes: `args`
/// with `'nms': True`, rows per image from `output0`'s shape. The thresholds are not recorded;
/// Ultralytics' defaults (conf 0.25, IoU 0.7, per class) are what both exporters use by default.
fn embedded_nms(model: &crate::onnx::proto::Model) -> Option<parity::NmsOutput> {
    let args = model.metadata.iter().find(|(k, _)| k == "args")?;
    if !args.1.contains("'nms': True") {
        return None;
    }
    match model.outputs.first()?.dims.get(1)? {
        crate::onnx::proto::Dim::Fixed(n) if *n > 0 => Some(parity::NmsOutput {
            nms: crate::onnx::nms::Nms::DEFAULT,
            max_det: *n as usize,
            kpt_dim: None,
        }),
        _ => None,
    }
}

pub(super) fn verify(a: VerifyArgs) -> i32 {
    if let Err(m) = runtime(&a.parity) {
        return fail(m);
    }
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
    let g = &ckpt.graph;
    let ema_root = M {
        g,
        v: g.dict_get(&ckpt.root, &located.ema.origin)
            .expect("located"),
    };
    let input = match model.inputs.first() {
        Some(i) => i,
        None => {
            return fail(format_args!(
                "{}: the model has no input",
                a.model.display()
            ));
        }
    };
    let (task, _) = crate::onnx::task_and_classes(ema_root);
    let train = crate::onnx::training_imgsz(&ckpt, ema_root).unwrap_or((640, 640));
    let shape: Vec<usize> = input
        .dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            crate::onnx::proto::Dim::Fixed(n) if *n > 0 => *n as usize,
            _ => [1, 3, train.0 as usize, train.1 as usize][i.min(3)],
        })
        .collect();
    let half = model
        .initializers
        .iter()
        .any(|t| t.elem == crate::onnx::proto::ElemType::Float16);
    // An end-to-end export (Ultralytics' `nms=False`, or ours with --end2end) says so in its
    // metadata; its rows count is its max_det.
    let end2end = model
        .metadata
        .iter()
        .any(|(k, v)| k == "end2end" && v == "True");
    let rows = model.outputs.first().and_then(|o| match o.dims.get(1) {
        Some(crate::onnx::proto::Dim::Fixed(n)) if *n > 0 => Some(*n as usize),
        _ => None,
    });
    let head = HeadOptions {
        end2end,
        max_det: rows.unwrap_or(300),
    };
    let nms = embedded_nms(&model);
    let onnx = OnnxModel::File(&a.model);
    let report = match run_parity(&a.parity, onnx, ema_root, &shape, (half, head), nms) {
        Ok(r) => r,
        Err(m) => {
            return fail(format_args!(
                "{}: parity check could not run: {m}",
                a.model.display()
            ));
        }
    };
    let weights = crate::onnx::origin::weights_origin(&ckpt, &located, &model);
    let weights = match weights {
        Ok(w) => w,
        Err(m) => return fail(format_args!("{}: {m}", a.checkpoint.display())),
    };
    let pass = report.pass && weights.verdict == "ema";
    let mut input_paths = write::checkpoint_inputs(&a.checkpoint, &ckpt);
    input_paths.push(a.model.clone());
    input_paths.extend(parity_inputs(&a.parity));
    let inputs: Vec<&Path> = input_paths.iter().map(PathBuf::as_path).collect();
    if let Err(m) = write_report(&a.parity.report, &report, &inputs) {
        return fail(m);
    }
    if a.json {
        let v = json!({
            "model": a.model.display().to_string(),
            "checkpoint": a.checkpoint.display().to_string(),
            "task": task,
            "input_shape": shape,
            "parity": report,
            "weights": weights,
            "pass": pass,
        });
        match serde_json::to_string_pretty(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
        }
    } else {
        println!(
            "{} vs the EMA of {} ({task}, input {shape:?})",
            a.model.display(),
            a.checkpoint.display()
        );
        print!("{}", render::parity_text(&report));
        println!("weights: {}", weights.summary);
    }
    if pass { EXIT_OK } else { EXIT_CHECK_FAILED }
}
