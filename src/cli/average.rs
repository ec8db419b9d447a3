//! `average`: several checkpoints into one state dict (logic in `crate::average`).

use serde_json::json;

use super::commands::{out_dtype, print_json, torch_output};
use super::progress::Bar;
use super::{AverageArgs, AverageSource, EXIT_OK, fail};
use crate::surgery::{self, StripOptions};
use crate::tensor::DType;
use crate::write::{self, OutDType};
use std::path::Path;

pub(super) fn average(a: AverageArgs) -> i32 {
    use crate::average::{self, Input, Method, Source};
    let dtype = match out_dtype(&a.dtype) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let method = match (&a.weights, a.ema_decay) {
        (Some(w), _) => Method::Weighted { weights: w.clone() },
        (None, Some(decay)) => Method::Ema {
            decay,
            every: a.every,
        },
        (None, None) => Method::Uniform,
    };
    if let Err(e) = method.check(a.files.len()) {
        return fail(e);
    }
    let torch_out = match torch_output(&a.output) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // --strip: the dtype strip writes (None: f16, as strip_optimizer's `half()`).
    let strip_dtype = match (a.strip, dtype) {
        (false, _) => None,
        (true, _) if !torch_out => {
            return fail(format_args!(
                "{}: --strip writes a deployable `.pt`; name the output .pt",
                a.output.display()
            ));
        }
        (true, OutDType::Keep) => None,
        (true, OutDType::To(d)) if matches!(d, DType::F16 | DType::F32) => Some(d),
        (true, OutDType::To(d)) => {
            return fail(format_args!("--strip writes f16 or f32, not {d}"));
        }
    };
    let source = match a.source {
        AverageSource::Ema => Source::Ema,
        AverageSource::Raw => Source::Raw,
    };
    let mut contributions = Vec::with_capacity(a.files.len());
    let mut input_paths = Vec::new();
    for f in &a.files {
        let ckpt = match super::open_checked(f, &a.strict) {
            Ok(c) => c,
            Err(code) => return code,
        };
        input_paths.extend(write::checkpoint_inputs(f, &ckpt));
        match average::contribution(&ckpt, source) {
            Ok((tensors, from)) => {
                let tensors = match contributions.first() {
                    Some((_, (first, _))) => average::in_order_of(first, tensors),
                    None => tensors,
                };
                contributions.push((f.display().to_string(), (tensors, from)));
            }
            Err(e) => return fail(e),
        }
    }
    let inputs: Vec<Input> = contributions
        .iter()
        .map(|(file, (tensors, _))| Input { file, tensors })
        .collect();
    let plan = match average::Plan::new(&inputs, &method) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let report = plan.report();
    let paths: Vec<&std::path::Path> = input_paths.iter().map(|p| p.as_path()).collect();
    let mut deployable = None;
    let written = if a.strip {
        let dir = write::output_dir(&a.output);
        let scratch = match tempfile::tempfile_in(&dir) {
            Ok(f) => f,
            Err(e) => return fail(format_args!("{}: scratch file: {e}", dir.display())),
        };
        let tensors = match plan.to_scratch(scratch) {
            Ok(t) => t,
            Err(e @ average::AverageError::Scratch(_)) => {
                return fail(format_args!("{}: {e}", dir.display()));
            }
            Err(e) => return fail(e),
        };
        match stripped(&a, &tensors, &paths, strip_dtype) {
            Ok(rules) => {
                deployable = Some(rules);
                Ok(())
            }
            Err(code) => return code,
        }
    } else if torch_out {
        plan.write_torch(&a.output, &paths, dtype, &Bar::new("average"))
    } else {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            "producer".to_string(),
            format!("fuse-ema {} average", env!("CARGO_PKG_VERSION")),
        );
        meta.insert(
            "average".to_string(),
            serde_json::to_string(report).unwrap_or_default(),
        );
        plan.write_safetensors(&a.output, &paths, dtype, &meta, &Bar::new("average"))
    };
    let written = match written.map(|()| vec![a.output.clone()]) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if a.json {
        let v = json!({
            "inputs": contributions.iter().map(|(f, (_, origin))| json!({"file": f, "weights": origin})).collect::<Vec<_>>(),
            "average": report,
            "strip": deployable,
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        if let Err(code) = print_json(&v) {
            return code;
        }
    } else {
        for ((f, (_, origin)), w) in contributions.iter().zip(&report.weights) {
            println!("  {w:.6}  {f}: {origin}");
        }
        println!(
            "wrote {} ({} tensors: {} averaged, {} from the last checkpoint)",
            a.output.display(),
            report.tensors,
            report.averaged,
            report.from_last.len()
        );
        if let Some(rules) = &deployable {
            println!(
                "  deployable: the last checkpoint stripped as {rules}, the average as its model"
            );
        }
    }
    EXIT_OK
}

/// `--strip`: the last checkpoint stripped as `fuse-ema strip` strips it (`crate::surgery`),
/// with `tensors` as its model's weights, written as a torch archive. Returns the rules followed.
fn stripped(
    a: &AverageArgs,
    tensors: &crate::ema::Named,
    inputs: &[&Path],
    dtype: Option<DType>,
) -> Result<String, i32> {
    let last = a.files.last().ok_or(super::EXIT_BAD_INPUT)?;
    let allow = a.strict.allow_list()?;
    let mut ck = super::open_checked(last, &a.strict)?;
    super::strip::refuse_reemit(last, &ck, &allow, a.strict.strict)?;
    let layout = crate::ema::locate(&ck, &crate::ema::Selectors::default()).map(|l| l.layout);
    if layout.as_ref().ok() != Some(&"ultralytics") {
        return Err(fail(format_args!(
            "{}: --strip writes a deployable Ultralytics checkpoint, and this is not one ({})",
            last.display(),
            match layout {
                Ok(l) => format!("its layout is `{l}`"),
                Err(e) => e.to_string(),
            }
        )));
    }
    let opts = StripOptions {
        dtype,
        ..StripOptions::default()
    };
    let plan = surgery::plan(&mut ck, &opts).map_err(fail)?;
    surgery::replace_model_weights(&mut ck.graph, &plan, tensors)
        .map_err(|m| fail(format_args!("{}: --strip: {m}", last.display())))?;
    let out = write::repickle::repickle(&ck.graph, &plan.root, &plan.convert).map_err(|m| {
        fail(format_args!(
            "{}: cannot write it again: {m}",
            last.display()
        ))
    })?;
    write::torch_zip::write_graph(&a.output, inputs, &out, &Bar::new("average")).map_err(fail)?;
    Ok(plan.report.rules)
}
