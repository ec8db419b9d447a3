//! Text rendering of reports.

use std::fmt::Write;

use crate::checkpoint::module::TreeNode;
use crate::checkpoint::sets::{EntryKind, Stats};
use crate::inspect::Report;

/// `12.3 MB` style sizes (decimal units, as file managers show).
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < units.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// `3.01 M` style counts.
pub fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

fn stats_text(s: &Stats) -> String {
    let dtypes: Vec<String> = s.dtypes.iter().map(|(d, n)| format!("{d}×{n}")).collect();
    format!(
        "{} tensors, {} parameters, {}, {}",
        s.tensors,
        count(s.parameters),
        dtypes.join(" "),
        bytes(s.bytes)
    )
}

/// The human-readable `inspect` output.
pub fn inspect_text(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.container;
    let mut facts = vec![c.format.name().to_string()];
    if let Some(v) = &c.serialization_version {
        facts.push(format!("serialization {v}"));
    }
    if let Some(p) = c.pickle_protocol {
        facts.push(format!("pickle protocol {p}"));
    }
    if let Some(rec) = &c.record {
        facts.push(format!("record {rec:?}"));
    }
    if c.torchscript {
        facts.push("TorchScript".into());
    }
    if !c.shards.is_empty() {
        facts.push(format!("{} shards", c.shards.len()));
    }
    if c.compressed_storages > 0 {
        facts.push(format!("{} compressed storages", c.compressed_storages));
    }
    let _ = writeln!(
        o,
        "{}: {}, {}",
        r.file,
        facts.join(", "),
        bytes(c.file_size)
    );

    if !r.metadata.is_empty() {
        let _ = writeln!(o, "metadata:");
        for (k, v) in &r.metadata {
            let text = match v {
                serde_json::Value::String(s) => s.escape_debug().to_string(),
                other => other.to_string(),
            };
            let text = if text.chars().count() > 100 {
                format!("{}…", text.chars().take(99).collect::<String>())
            } else {
                text
            };
            let _ = writeln!(o, "  {k:<20} {text}");
        }
    }

    let _ = writeln!(o, "entries:");
    let width = r
        .entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(0)
        .max(6);
    for e in &r.entries {
        let key = if e.key.is_empty() { "(root)" } else { &e.key };
        let what = match &e.kind {
            EntryKind::Module { class } => format!("module {class}"),
            EntryKind::TensorDict => "tensor dict".into(),
            EntryKind::Tensor => "tensor".into(),
            EntryKind::Optimizer => "optimizer state".into(),
            EntryKind::None => "None".into(),
            EntryKind::Scalar => {
                let v = e.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                let v: String = v.chars().take(60).collect();
                format!("= {v}")
            }
            EntryKind::Dict => "dict".into(),
            EntryKind::List => "list".into(),
            EntryKind::Object { class } => {
                format!("object {}", class.as_deref().unwrap_or("?"))
            }
        };
        let _ = write!(o, "  {key:<width$}  {what}");
        if let Some(s) = &e.stats {
            let _ = write!(o, " — {}", stats_text(s));
        }
        o.push('\n');
    }

    let _ = writeln!(o, "weight sets:");
    if r.weight_sets.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for s in &r.weight_sets {
        let path = if s.path.is_empty() { "(root)" } else { &s.path };
        let class = s
            .class
            .as_deref()
            .map(|c| format!(" ({})", c.rsplit('.').next().unwrap_or(c)))
            .unwrap_or_default();
        let _ = writeln!(o, "  {path}{class}: {}", stats_text(&s.stats));
    }

    match (&r.layout, &r.layout_error) {
        (Some(l), _) => {
            let raw = l
                .raw
                .as_deref()
                .map(|r| format!(", raw in '{r}'"))
                .unwrap_or_default();
            let _ = writeln!(o, "EMA: {} — {}; EMA in '{}'{raw}", l.layout, l.rule, l.ema);
        }
        (None, Some(e)) => {
            let e = e.strip_prefix(&format!("{}: ", r.file)).unwrap_or(e);
            let first = e.split(". ").next().unwrap_or(e);
            let _ = writeln!(o, "EMA: not located — {first}");
        }
        _ => {}
    }
    let _ = writeln!(
        o,
        "globals: {} referenced, {} finding(s), {} dangerous",
        r.globals.len(),
        r.findings.len(),
        r.dangerous.len()
    );
    // One line each; a file naming thousands of globals is summarised (--json lists all).
    const SHOWN: usize = 1000;
    for f in r.findings.iter().take(SHOWN) {
        let _ = writeln!(o, "  {f}");
    }
    if r.findings.len() > SHOWN {
        let _ = writeln!(
            o,
            "  … and {} more (--json lists all)",
            r.findings.len() - SHOWN
        );
    }
    if !r.findings.is_empty() {
        let _ = writeln!(
            o,
            "  (never executed by fuse-ema; torch.load(weights_only=False) would import or run them)"
        );
    }
    if let Some(trees) = &r.tree {
        let _ = writeln!(o, "module tree:");
        for t in trees {
            tree_text(&mut o, t, 1);
        }
    }
    o
}

fn tree_text(o: &mut String, t: &TreeNode, depth: usize) {
    let class = t.class.rsplit('.').next().unwrap_or(&t.class);
    let name = if t.name.is_empty() { "(root)" } else { &t.name };
    let own = if t.tensors > 0 {
        format!(" [{} tensors]", t.tensors)
    } else {
        String::new()
    };
    let _ = writeln!(o, "{}{name}: {class}{own}", "  ".repeat(depth));
    for c in &t.children {
        tree_text(o, c, depth + 1);
    }
}

/// The `fold` summary.
pub fn fold_text(
    l: &crate::ema::Located,
    r: &crate::ema::FoldReport,
    written: &[std::path::PathBuf],
    total: u64,
) -> String {
    let mut o = String::new();
    let raw = l
        .raw
        .as_ref()
        .map(|r| format!(", raw from '{}'", r.origin))
        .unwrap_or_default();
    let _ = writeln!(o, "layout: {} — {}", l.layout, l.rule);
    let _ = writeln!(o, "EMA from '{}'{raw}", l.ema.origin);
    if let Some(u) = l.updates {
        let _ = writeln!(o, "EMA updates: {u}");
    }
    let _ = writeln!(
        o,
        "folded {} tensors: {} from the EMA, {} from the raw model",
        r.tensors,
        r.from_ema,
        r.from_raw.len()
    );
    for (what, v) in [
        (
            "raw keys missing from the EMA (taken from raw)",
            &r.raw_only,
        ),
        ("EMA keys with no raw counterpart (left out)", &r.ema_only),
        ("shape mismatches (taken from raw)", &r.shape_mismatch),
        ("dtype differences (EMA dtype kept)", &r.dtype_mismatch),
    ] {
        if !v.is_empty() {
            let _ = writeln!(
                o,
                "  {} {what}: {}",
                v.len(),
                v.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    for p in written {
        let _ = writeln!(o, "wrote {}", p.display());
    }
    let _ = writeln!(o, "{} in all", bytes(total));
    o
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3e}"))
        .unwrap_or_else(|| "undefined".into())
}

/// The `diff` summary.
pub fn diff_text(
    what: &str,
    d: &crate::diff::Drift,
    top: usize,
    fail_above: Option<f64>,
    above: &[&crate::diff::TensorDrift],
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{what}: {} tensors compared", d.tensors.len());
    let _ = writeln!(o, "layers (relative L2 drift, max |Δ|):");
    for l in &d.layers {
        let _ = writeln!(
            o,
            "  {:<24} {:>10}  {:.3e}  ({} tensors)",
            l.layer,
            opt(l.rel_l2),
            l.max_abs,
            l.tensors
        );
    }
    let _ = writeln!(
        o,
        "most drifted tensors (rel L2, max |Δ|, mean |Δ|, cosine):"
    );
    for t in d.top(top) {
        let _ = writeln!(
            o,
            "  {:<40} {:>10}  {:.3e}  {:.3e}  {}",
            t.name,
            opt(t.rel_l2),
            t.max_abs,
            t.mean_abs,
            t.cosine
                .map(|c| format!("{c:.6}"))
                .unwrap_or_else(|| "undefined".into())
        );
    }
    for (what, v) in [
        ("only in the EMA", &d.only_a),
        ("only in the reference", &d.only_b),
        ("skipped (not float or shapes differ)", &d.skipped),
    ] {
        if !v.is_empty() {
            let _ = writeln!(o, "{} {what}", v.len());
        }
    }
    if let Some(limit) = fail_above {
        if above.is_empty() {
            let _ = writeln!(o, "PASS: no tensor drifted above {limit}");
        } else {
            let _ = writeln!(
                o,
                "FAIL: {} tensor(s) drifted above {limit}: {}",
                above.len(),
                above
                    .iter()
                    .take(10)
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    o
}

/// The parity result: one summary line, then one line per output and any task mismatch.
pub fn parity_text(r: &crate::parity::ParityReport) -> String {
    let mut o = String::new();
    let tasks_ok = r.task.iter().filter(|t| t.pass).count();
    let _ = writeln!(
        o,
        "parity: {} — {} vs {}; {}",
        if r.pass { "PASS" } else { "FAIL" },
        r.runtime,
        r.compared_with,
        r.inputs
    );
    for s in &r.outputs {
        let _ = writeln!(
            o,
            "  {} {:?}: max |Δ| {:.3e}, mean |Δ| {:.3e}, cosine {:.6}; tightest channel {}: |Δ| {:.3e} vs limit {:.3e} — {}",
            s.name,
            s.shape,
            s.max_abs,
            s.mean_abs,
            s.cosine,
            s.worst_channel,
            s.worst_channel_max_abs,
            s.worst_channel_limit,
            if s.pass { "ok" } else { "FAIL" }
        );
    }
    if !r.task.is_empty() {
        let _ = writeln!(
            o,
            "  {}: {tasks_ok}/{} images agree",
            r.task[0].kind,
            r.task.len()
        );
        for t in r.task.iter().filter(|t| !t.pass) {
            let _ = writeln!(o, "    image {}: {}", t.image, t.detail);
        }
    }
    // A pass that needed another query selection says so (a failed retry is in its image's line).
    for q in r.query_reselections.iter().filter(|q| q.accepted.is_some()) {
        let _ = writeln!(o, "  query selection: {}", q.describe());
    }
    o
}
