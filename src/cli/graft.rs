//! `fuse-ema graft MODEL.onnx --checkpoint CKPT -o OUT.onnx`: the EMA put into an ONNX exported
//! from the raw weights (logic in `onnx::graft`), the drift measured, the report printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::commands::print_json;
use super::{EXIT_CHECK_FAILED, EXIT_OK, GraftArgs, VerifyArgs, fail};
use crate::ema::{self, FoldOptions, Selectors};
use crate::onnx::graft::report::{Counts, GraftReport};
use crate::onnx::graft::{self, Source, weights::Weights};
use crate::write;

fn parse_shapes(s: &[String]) -> Result<Vec<Vec<usize>>, String> {
    s.iter()
        .map(|x| {
            x.split(',')
                .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    format!("--input-shape {x}: expected positive sizes like 1,3,224,224")
                })
        })
        .collect()
}

fn print(r: &GraftReport, json: bool, all: bool) -> Result<(), i32> {
    if json {
        return print_json(r);
    }
    print!("{}", r.text(all));
    Ok(())
}

pub(super) fn graft(a: GraftArgs) -> i32 {
    let shapes = match parse_shapes(&a.input_shape) {
        Ok(s) => s,
        Err(m) => return fail(m),
    };
    let engine = if a.no_drift {
        None
    } else {
        match crate::runtime::Engine::choose(&a.runtime, None) {
            Ok(e) => Some(e),
            Err(e) => return fail(e),
        }
    };
    let src = match Source::open(&a.model) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let ckpt = match super::open_checked(&a.checkpoint, &a.strict) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sel = Selectors {
        ema: a.select.ema.clone(),
        raw: a.select.raw.clone(),
    };
    let (located, ema_files) = match super::commands::locate(&ckpt, &sel, &a.strict) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(raw) = &located.raw else {
        return fail(format_args!(
            "{}: the checkpoint keeps no raw weights ({}), so nothing tells which initializers came from them; give a checkpoint that holds both, or name them with --raw",
            a.checkpoint.display(),
            if located.stripped {
                "stripped: the model slot is the EMA"
            } else {
                "only the EMA"
            }
        ));
    };
    // The EMA under the raw names; buffers a layout does not average come from raw.
    let folded = match ema::fold(
        &located,
        &a.checkpoint,
        FoldOptions {
            allow_missing: true,
        },
    ) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let at = |f: graft::GraftFault| f.at(&a.model, &a.checkpoint);
    let weights = match Weights::new(&raw.tensors, &folded.tensors) {
        Ok(w) => w,
        Err(f) => return fail(at(f)),
    };
    let mut plan = match graft::plan(&src, &weights) {
        Ok(p) => p,
        Err(f) => return fail(at(f)),
    };
    if let Err(f) = plan.measure_changes(&src, &weights) {
        return fail(at(f));
    }
    let counts = Counts::of(&plan.entries);
    let mut report = GraftReport {
        model: a.model.display().to_string(),
        checkpoint: a.checkpoint.display().to_string(),
        output: Some(a.output.display().to_string()),
        layout: located.report(),
        max_change: plan
            .entries
            .iter()
            .filter_map(|e| e.max_change)
            .fold(0.0, f64::max),
        counts,
        initializers: plan.entries.clone(),
        drift: None,
        written: false,
    };
    if plan.has_unmatched() && !a.allow_unmatched {
        if let Err(code) = print(&report, a.json, a.all) {
            return code;
        }
        eprintln!(
            "fuse-ema: error: {}: {} initializer(s) look like weights but match no raw tensor of {} ({} ambiguous); nothing written (--allow-unmatched leaves them as they are)",
            a.model.display(),
            report.counts.unmatched + report.counts.ambiguous,
            a.checkpoint.display(),
            report.counts.ambiguous
        );
        return EXIT_CHECK_FAILED;
    }
    let mut inputs: Vec<PathBuf> = write::checkpoint_inputs(&a.checkpoint, &ckpt);
    inputs.push(a.model.clone());
    inputs.extend(ema_files);
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let mut out = match write::AtomicFile::create(&a.output, &input_refs) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let replaced = report.counts.name + report.counts.value + report.counts.bn_fold;
    let file_name = a
        .checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let metadata = vec![(
        "fuse_ema_graft".to_string(),
        format!(
            "EMA of {file_name} ({}, '{}'): {replaced} initializers replaced by fuse-ema {}",
            located.layout,
            located.ema.origin,
            env!("CARGO_PKG_VERSION")
        ),
    )];
    let written = {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, out.file());
        plan.write(&src, &weights, &metadata, &mut w)
            .and_then(|n| w.flush().map(|_| n).map_err(graft::GraftFault::from))
    };
    match written {
        Ok(_) => {}
        Err(f) if f.in_output() => {
            return fail(format_args!("{}: cannot write: {f}", a.output.display()));
        }
        Err(f) => return fail(at(f)),
    }
    // Run before the rename: a grafted model the runtime rejects is never left as OUT.
    if let Some(engine) = engine {
        match graft::drift::measure(&engine, &src.scanned.inputs, &shapes, &a.model, out.path()) {
            Ok(d) => report.drift = Some(d),
            Err(m) => {
                eprintln!(
                    "fuse-ema: error: {}: {m}; nothing written",
                    a.output.display()
                );
                return EXIT_CHECK_FAILED;
            }
        }
    }
    if let Err(e) = out.commit() {
        return fail(e);
    }
    report.written = true;
    match print(&report, a.json, a.all) {
        Ok(()) => EXIT_OK,
        Err(code) => code,
    }
}

/// `verify` for a checkpoint whose model fuse-ema does not build (not Ultralytics): no parity
/// run, the initializers matched against the EMA and the raw weights as `graft` matches them.
pub(super) fn verify_weights(a: &VerifyArgs, located: &ema::Located) -> i32 {
    let folded = match ema::fold(
        located,
        &a.checkpoint,
        FoldOptions {
            allow_missing: true,
        },
    ) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let w = match crate::onnx::origin::weights_origin_matched(
        located,
        &folded.tensors,
        &a.model,
        &a.checkpoint,
    ) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let pass = w.verdict == "ema";
    let why = "fuse-ema builds only Ultralytics graphs; the weights were compared instead";
    if a.json {
        let v = serde_json::json!({
            "model": a.model.display().to_string(),
            "checkpoint": a.checkpoint.display().to_string(),
            "layout": located.layout,
            "parity": null,
            "parity_skipped": why,
            "weights": w,
            "pass": pass,
        });
        if let Err(code) = print_json(&v) {
            return code;
        }
    } else {
        println!(
            "{} vs the EMA of {} (layout {})",
            a.model.display(),
            a.checkpoint.display(),
            located.layout
        );
        println!("parity: not run ({why})");
        println!("weights: {}", w.summary);
    }
    if pass { EXIT_OK } else { EXIT_CHECK_FAILED }
}
