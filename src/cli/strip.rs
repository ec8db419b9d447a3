//! `strip`: a training checkpoint made deployable (`src/surgery/`), written as a torch archive.

use super::progress::Bar;
use super::{EXIT_CHECK_FAILED, EXIT_OK, StripArgs, fail};
use crate::checkpoint::judge::{self, FindingKind};
use crate::surgery::{self, StripOptions};
use crate::tensor::DType;
use crate::write;

pub(super) fn strip(a: StripArgs) -> i32 {
    let dtype = match a.dtype.as_deref() {
        None => None,
        Some("f16" | "float16" | "half") => Some(DType::F16),
        Some("f32" | "float32" | "float") => Some(DType::F32),
        Some(other) => return fail(format_args!("--dtype {other}: expected f16 or f32")),
    };
    if a.keep_optimizer && !a.keep_structure {
        return fail("--keep-optimizer keeps optimizer state with --keep-structure; add it");
    }
    let allow = match a.strict.allow_list() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut ckpt = match super::open_checked(&a.file, &a.strict) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = refuse_reemit(&a.file, &ckpt, &allow, a.strict.strict) {
        return code;
    }
    let opts = StripOptions {
        keep_structure: a.keep_structure,
        keep_optimizer: a.keep_optimizer,
        dtype,
    };
    let mut plan = match surgery::plan(&mut ckpt, &opts) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let out = match write::repickle::repickle(&ckpt.graph, &plan.root, &plan.convert) {
        Ok(r) => r,
        Err(m) => {
            return fail(format_args!(
                "{}: cannot write it again: {m}",
                a.file.display()
            ));
        }
    };
    let input_paths = write::checkpoint_inputs(&a.file, &ckpt);
    let inputs: Vec<&std::path::Path> = input_paths.iter().map(|p| p.as_path()).collect();
    if let Err(e) = write::torch_zip::write_graph(&a.output, &inputs, &out, &Bar::new("strip")) {
        return fail(e);
    }
    let r = &mut plan.report;
    r.file = a.file.display().to_string();
    r.output = a.output.display().to_string();
    r.storages = out.storages.len();
    r.tensor_bytes = out.storages.iter().map(|s| s.nbytes()).sum();
    r.input_bytes = std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0);
    r.output_bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    if a.json {
        if let Err(code) = super::commands::print_json(&plan.report) {
            return code;
        }
    } else {
        print!("{}", text(&plan.report));
    }
    EXIT_OK
}

/// Re-emitting a file writes its globals again: one that would run code is never written, with
/// or without `--strict`; `--strict` refuses anything off the allow-list too; and a global whose
/// meaning would change when written again at protocol 2 is refused either way.
pub(super) fn refuse_reemit(
    file: &std::path::Path,
    ckpt: &crate::checkpoint::Checkpoint,
    allow: &judge::AllowList,
    strict: bool,
) -> Result<(), i32> {
    let verdict = judge::judge(ckpt.graph.uses(), allow);
    let mut refused: Vec<_> = verdict
        .findings
        .iter()
        .filter(|f| strict || f.kind != FindingKind::NotAllowed)
        .cloned()
        .collect();
    refused.extend(write::reemit::refusals(ckpt.graph.uses(), allow));
    if refused.is_empty() {
        return Ok(());
    }
    if strict {
        super::strict_message(file, &refused);
    } else {
        eprintln!(
            "fuse-ema: refused: {}: writing it again would write {} (see docs/security.md)",
            file.display(),
            judge::summary(&refused)
        );
    }
    Err(EXIT_CHECK_FAILED)
}

fn text(r: &surgery::StripReport) -> String {
    let mut s = format!("{} → {}\n  rules: {}\n", r.file, r.output, r.rules);
    let line = |s: &mut String, label: &str, items: &[String]| {
        if !items.is_empty() {
            s.push_str(&format!("  {label}: {}\n", items.join(", ")));
        }
    };
    line(&mut s, "weights", &r.moved);
    line(&mut s, "set to None", &r.cleared);
    line(&mut s, "removed", &r.removed);
    line(&mut s, "edits", &r.edits);
    if let Some(d) = &r.dtype {
        s.push_str(&format!(
            "  dtype: {d} ({} tensors converted)\n",
            r.converted
        ));
    }
    s.push_str(&format!(
        "  {} storages, {:.1} MB → {:.1} MB\n",
        r.storages,
        r.input_bytes as f64 / 1e6,
        r.output_bytes as f64 / 1e6
    ));
    s
}
