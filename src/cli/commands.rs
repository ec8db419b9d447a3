//! One function per command: call the library, render, choose the exit code.

use serde_json::json;

use super::progress::Bar;

use super::{
    DiffArgs, EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, FoldArgs, InspectArgs, InspectFormat,
    SelectArgs, fail, render,
};
use crate::ema::{self, FoldOptions, Selectors};
use crate::write::{self, OutDType};

fn selectors(s: &SelectArgs) -> Selectors {
    Selectors {
        ema: s.ema.clone(),
        raw: s.raw.clone(),
    }
}

/// The EMA of `ckpt` as the selectors say, and the files of any other checkpoint it came from:
/// `--ema PATH` opens that checkpoint (judged like the first under `--strict`), whose files are
/// inputs too (never written over).
pub(super) fn locate(
    ckpt: &crate::checkpoint::Checkpoint,
    sel: &Selectors,
    strict: &super::StrictArgs,
) -> Result<(ema::Located, Vec<std::path::PathBuf>), i32> {
    let Some(path) = sel.ema_path() else {
        return ema::locate(ckpt, sel)
            .map(|l| (l, Vec::new()))
            .map_err(fail);
    };
    let other = super::open_checked(path, strict)?;
    let l = ema::locate_in(ckpt, &other, sel).map_err(fail)?;
    Ok((l, write::checkpoint_inputs(path, &other)))
}

/// Whether a weights output is a torch `.pt` / `.pth` / `.bin` (else `.safetensors`); any other
/// extension is a usage error.
pub(super) fn torch_output(path: &std::path::Path) -> Result<bool, i32> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let torch = matches!(ext.as_str(), "pt" | "pth" | "bin");
    if !torch && ext != "safetensors" {
        return Err(fail(format_args!(
            "{}: output must end in .safetensors, .pt, .pth or .bin",
            path.display()
        )));
    }
    Ok(torch)
}

/// The `--dtype` of a weights output (`keep`, `f32`, `f16` or `bf16`); anything else is a usage
/// error.
pub(super) fn out_dtype(s: &str) -> Result<OutDType, i32> {
    OutDType::parse(s)
        .ok_or_else(|| fail(format_args!("--dtype {s}: expected keep, f32, f16 or bf16")))
}

/// Prints `v` as pretty JSON on stdout (the `--json` output of every command).
pub(super) fn print_json(v: &impl serde::Serialize) -> Result<(), i32> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// What `inspect` found in one file.
enum Verdict {
    /// Read and judged.
    Read(Box<crate::inspect::Report>),
    /// Not readable; the globals its pickles named before the failure, judged.
    Unreadable(String, crate::checkpoint::judge::Judgement),
}

impl Verdict {
    fn findings(&self) -> &[crate::checkpoint::judge::Finding] {
        match self {
            Verdict::Read(r) => &r.findings,
            Verdict::Unreadable(_, j) => &j.findings,
        }
    }
}

fn verdict(
    file: &std::path::Path,
    tree: bool,
    allow: &crate::checkpoint::judge::AllowList,
) -> Verdict {
    let ckpt = match crate::io::open(file) {
        Ok(c) => c,
        Err(e) => {
            let judged = crate::checkpoint::judge::judge(&e.named, allow);
            return Verdict::Unreadable(e.to_string(), judged);
        }
    };
    match crate::inspect::inspect(&ckpt, tree, allow) {
        Ok(r) => Verdict::Read(Box::new(r)),
        Err(e) => Verdict::Unreadable(
            format!("{}: {e}", file.display()),
            crate::checkpoint::judge::Judgement::default(),
        ),
    }
}

pub(super) fn inspect(a: InspectArgs) -> i32 {
    let allow = match a.strict.allow_list() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let format = if a.json {
        InspectFormat::Json
    } else {
        a.format
    };
    let verdicts: Vec<Verdict> = a.files.iter().map(|f| verdict(f, a.tree, &allow)).collect();
    let printed = match format {
        InspectFormat::Text if a.quiet => Ok(()),
        InspectFormat::Text => {
            print_text(&a, &verdicts);
            Ok(())
        }
        InspectFormat::Json => {
            let each: Result<Vec<serde_json::Value>, _> = a
                .files
                .iter()
                .zip(&verdicts)
                .map(|(f, v)| verdict_json(f, v))
                .collect();
            match each {
                Err(e) => Err(fail(e)),
                Ok(each) if each.len() == 1 => print_json(&each[0]),
                Ok(each) => print_json(&each),
            }
        }
        InspectFormat::Sarif => {
            let names: Vec<String> = a.files.iter().map(|f| f.display().to_string()).collect();
            let files: Vec<crate::sarif::FileVerdict> = names
                .iter()
                .zip(&verdicts)
                .map(|(path, v)| crate::sarif::FileVerdict {
                    path,
                    findings: v.findings(),
                    error: match v {
                        Verdict::Unreadable(e, _) => Some(e.clone()),
                        Verdict::Read(_) => None,
                    },
                })
                .collect();
            print_json(&crate::sarif::log(&files))
        }
    };
    if let Err(code) = printed {
        return code;
    }
    // Exit: 1 when any file has a finding (the security verdict comes first), else 2 when any
    // cannot be read, else 0.
    let mut code = EXIT_OK;
    for (file, v) in a.files.iter().zip(&verdicts) {
        match v {
            Verdict::Unreadable(e, j) if j.findings.is_empty() => {
                eprintln!("fuse-ema: error: {e}");
                if code == EXIT_OK {
                    code = EXIT_BAD_INPUT;
                }
            }
            Verdict::Unreadable(e, j) => {
                eprintln!("fuse-ema: error: {e}");
                danger(file, &a, &j.findings, true);
                code = EXIT_CHECK_FAILED;
            }
            Verdict::Read(r) if !r.findings.is_empty() => {
                danger(file, &a, &r.findings, false);
                code = EXIT_CHECK_FAILED;
            }
            Verdict::Read(_) => {}
        }
    }
    code
}

/// The one-line verdict on stderr for a file with findings.
fn danger(
    file: &std::path::Path,
    a: &InspectArgs,
    findings: &[crate::checkpoint::judge::Finding],
    unreadable: bool,
) {
    let dangerous = findings
        .iter()
        .any(|f| f.kind == crate::checkpoint::judge::FindingKind::Dangerous);
    if a.strict.strict && !unreadable {
        super::strict_message(file, findings);
    } else {
        let label = if dangerous || unreadable {
            "DANGER"
        } else {
            "NOT ALLOWED"
        };
        eprintln!(
            "fuse-ema: {label}: {}: {} (torch.load would import or run these; see docs/security.md)",
            file.display(),
            crate::checkpoint::judge::summary(findings)
        );
    }
}

fn print_text(a: &InspectArgs, verdicts: &[Verdict]) {
    let several = verdicts.len() > 1;
    for (i, (file, v)) in a.files.iter().zip(verdicts).enumerate() {
        if several {
            if i > 0 {
                println!();
            }
            println!("== {} ==", file.display());
        }
        match v {
            Verdict::Read(r) => print!("{}", render::inspect_text(r)),
            Verdict::Unreadable(_, j) => {
                for f in &j.findings {
                    println!("  {f} (named by the file's pickles before it was refused)");
                }
            }
        }
    }
}

fn verdict_json(
    file: &std::path::Path,
    v: &Verdict,
) -> Result<serde_json::Value, serde_json::Error> {
    match v {
        Verdict::Read(r) => serde_json::to_value(r),
        Verdict::Unreadable(e, j) => Ok(json!({
            "file": file.display().to_string(),
            "error": e,
            "globals": j.globals,
            "findings": j.findings,
        })),
    }
}

pub(super) fn fold(a: FoldArgs) -> i32 {
    let dtype = match out_dtype(&a.dtype) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let max_shard = match &a.max_shard_size {
        None => None,
        Some(s) => match write::parse_size(s) {
            Some(n) => Some(n),
            None => {
                return fail(format_args!(
                    "--max-shard-size {s}: expected a size such as 2GB or 500MB"
                ));
            }
        },
    };
    let torch_out = match torch_output(&a.output) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if torch_out && max_shard.is_some() {
        return fail("--max-shard-size writes safetensors shards; use a .safetensors output");
    }
    let ckpt = match super::open_checked(&a.file, &a.strict) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (located, ema_inputs) = match locate(&ckpt, &selectors(&a.select), &a.strict) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let folded = match ema::fold(
        &located,
        &a.file,
        FoldOptions {
            allow_missing: a.allow_missing,
        },
    ) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut input_paths = write::checkpoint_inputs(&a.file, &ckpt);
    input_paths.extend(ema_inputs);
    let inputs: Vec<&std::path::Path> = input_paths.iter().map(|p| p.as_path()).collect();
    let written = if torch_out {
        write::torch_zip::write(
            &a.output,
            &inputs,
            &folded.tensors,
            dtype,
            &Bar::new("fold"),
        )
        .map(|()| vec![a.output.clone()])
    } else {
        let meta = located.output_metadata(&a.file);
        write::safetensors::write(
            &a.output,
            &inputs,
            &folded.tensors,
            dtype,
            &meta,
            max_shard,
            &Bar::new("fold"),
        )
    };
    let written = match written {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let bytes: u64 = written
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    if a.json {
        let v = json!({
            "file": a.file.display().to_string(),
            "layout": located.report(),
            "fold": folded.report,
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "bytes": bytes,
        });
        if let Err(code) = print_json(&v) {
            return code;
        }
    } else {
        print!(
            "{}",
            render::fold_text(&located, &folded.report, &written, bytes)
        );
    }
    EXIT_OK
}

pub(super) fn diff(a: DiffArgs) -> i32 {
    let sel = selectors(&a.select);
    let ckpt = match crate::io::open(&a.file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (located, _) = match locate(&ckpt, &sel, &super::StrictArgs::default()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let against = match &a.against {
        Some(other) => match crate::io::open(other) {
            Ok(c) => Some((other, c)),
            Err(e) => return fail(e),
        },
        None => None,
    };
    // The chart's title names files without their directories: a full path would not fit.
    let file_name = |p: &std::path::Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let (subject, reference, what, plot_title) = match &against {
        Some((other, other_ckpt)) => {
            let other_l = match ema::locate(other_ckpt, &Selectors::default()) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            let what = format!("EMA of {} vs EMA of {}", a.file.display(), other.display());
            let title = format!(
                "EMA of {} vs EMA of {}",
                file_name(&a.file),
                file_name(other)
            );
            (
                located.ema.tensors.clone(),
                other_l.ema.tensors,
                what,
                title,
            )
        }
        None => match &located.raw {
            Some(raw) => (
                located.ema.tensors.clone(),
                raw.tensors.clone(),
                format!(
                    "EMA ({}) vs raw ({}) of {}",
                    located.ema.origin,
                    raw.origin,
                    a.file.display()
                ),
                format!(
                    "EMA ({}) vs raw ({}) of {}",
                    located.ema.origin,
                    raw.origin,
                    file_name(&a.file)
                ),
            ),
            None => {
                return fail(format_args!(
                    "{}: has no raw weights to compare the EMA with ({}); use --against OTHER",
                    a.file.display(),
                    if located.stripped {
                        "stripped checkpoint"
                    } else {
                        "EMA only"
                    }
                ));
            }
        },
    };
    // Both checkpoints (every shard of either) are inputs the chart must not replace; checked
    // before the comparison runs.
    let mut input_paths = write::checkpoint_inputs(&a.file, &ckpt);
    if let Some((path, c)) = &against {
        input_paths.extend(write::checkpoint_inputs(path, c));
    }
    let inputs: Vec<&std::path::Path> = input_paths.iter().map(|p| p.as_path()).collect();
    if let Some(svg) = &a.plot
        && let Err(e) = write::check_target(svg, &inputs)
    {
        return fail(e);
    }
    let drift = match crate::diff::diff(&subject, &reference, &Bar::new("diff")) {
        Ok(d) => d,
        Err(e) => {
            let crate::diff::DiffError::Read { side, .. } = &e;
            let file = match (side, &against) {
                (crate::diff::Side::Reference, Some((other, _))) => other.as_path(),
                _ => a.file.as_path(),
            };
            return fail(format_args!("{}: {e}", file.display()));
        }
    };
    if let Some(svg) = &a.plot {
        let text = crate::diff::svg::chart(&drift, &plot_title);
        let mut f = match write::AtomicFile::create(svg, &inputs) {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        if let Err(e) = std::io::Write::write_all(f.file(), text.as_bytes()) {
            return fail(format_args!("{}: {e}", svg.display()));
        }
        if let Err(e) = f.commit() {
            return fail(e);
        }
    }
    let above = a.fail_above.map(|l| drift.above(l)).unwrap_or_default();
    if a.json {
        let v = json!({
            "compared": what,
            "layout": located.report(),
            "summary": {
                "tensors": drift.tensors.len(),
                "max_rel_l2": drift.tensors.iter().filter_map(|t| t.rel_l2).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
                "fail_above": a.fail_above,
                "above": above.iter().map(|t| &t.name).collect::<Vec<_>>(),
            },
            "top": drift.top(a.top),
            "layers": drift.layers,
            "tensors": drift.tensors,
            "only_ema": drift.only_a,
            "only_reference": drift.only_b,
            "skipped": drift.skipped,
        });
        if let Err(code) = print_json(&v) {
            return code;
        }
    } else {
        print!(
            "{}",
            render::diff_text(&what, &drift, a.top, a.fail_above, &above)
        );
    }
    if above.is_empty() {
        EXIT_OK
    } else {
        EXIT_CHECK_FAILED
    }
}
