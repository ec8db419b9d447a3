//! `average`: several checkpoints into one state dict (logic in `crate::average`).

use serde_json::json;

use super::commands::{print_json, torch_output};
use super::progress::Bar;
use super::{AverageArgs, AverageSource, EXIT_OK, fail};
use crate::write::{self, OutDType};

pub(super) fn average(a: AverageArgs) -> i32 {
    use crate::average::{self, Input, Method, Source};
    let Some(dtype) = OutDType::parse(&a.dtype) else {
        return fail(format_args!(
            "--dtype {}: expected keep, f32, f16 or bf16",
            a.dtype
        ));
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
            Ok(c) => contributions.push((f.display().to_string(), c)),
            Err(e) => return fail(e),
        }
    }
    let inputs: Vec<Input> = contributions
        .iter()
        .map(|(file, (tensors, _))| Input { file, tensors })
        .collect();
    let dir = write::output_dir(&a.output);
    let scratch = match tempfile::tempfile_in(&dir) {
        Ok(f) => f,
        Err(e) => return fail(format_args!("{}: scratch file: {e}", dir.display())),
    };
    let (tensors, report) = match average::average(&inputs, &method, scratch) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let paths: Vec<&std::path::Path> = input_paths.iter().map(|p| p.as_path()).collect();
    let written = if torch_out {
        write::torch_zip::write(&a.output, &paths, &tensors, dtype, &Bar::new("average"))
            .map(|()| vec![a.output.clone()])
    } else {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            "producer".to_string(),
            format!("fuse-ema {} average", env!("CARGO_PKG_VERSION")),
        );
        meta.insert(
            "average".to_string(),
            serde_json::to_string(&report).unwrap_or_default(),
        );
        write::safetensors::write(
            &a.output,
            &paths,
            &tensors,
            dtype,
            &meta,
            None,
            &Bar::new("average"),
        )
    };
    let written = match written {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if a.json {
        let v = json!({
            "inputs": contributions.iter().map(|(f, (_, origin))| json!({"file": f, "weights": origin})).collect::<Vec<_>>(),
            "average": report,
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
    }
    EXIT_OK
}
