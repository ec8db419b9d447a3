//! Folding: one state dict under the model's own names, floating tensors from the EMA,
//! non-floating buffers (`num_batches_tracked`) from the raw model, and a report of every
//! disagreement between the two.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{EmaError, EmaErrorKind, Located, Named};

/// How strict folding is.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldOptions {
    /// Accept names missing on either side and shape mismatches (taking the raw tensor where the
    /// EMA has none that fits), instead of failing.
    pub allow_missing: bool,
}

/// What folding did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FoldReport {
    /// Tensors written.
    pub tensors: usize,
    /// Of which taken from the EMA.
    pub from_ema: usize,
    /// Taken from the raw model: non-floating buffers, and tensors the layout does not average.
    pub from_raw: Vec<String>,
    /// EMA names with no raw counterpart (left out).
    pub ema_only: Vec<String>,
    /// Raw names the EMA lacks (taken from raw under `--allow-missing`).
    pub raw_only: Vec<String>,
    /// Names whose shapes differ (`name: ema [..] vs raw [..]`).
    pub shape_mismatch: Vec<String>,
    /// Names whose dtypes differ (the EMA's dtype is kept).
    pub dtype_mismatch: Vec<String>,
}

/// The folded weights.
#[derive(Clone, Debug)]
pub struct Folded {
    /// The state dict, in the raw model's order (the EMA's when there is no raw).
    pub tensors: Named,
    /// What happened.
    pub report: FoldReport,
}

/// Folds a located EMA.
pub fn fold(l: &Located, path: &std::path::Path, opts: FoldOptions) -> Result<Folded, EmaError> {
    let mut report = FoldReport::default();
    let Some(raw) = &l.raw else {
        report.tensors = l.ema.tensors.len();
        report.from_ema = l.ema.tensors.len();
        return Ok(Folded {
            tensors: l.ema.tensors.clone(),
            report,
        });
    };
    let ema: HashMap<&str, &crate::tensor::Tensor> =
        l.ema.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Vec::with_capacity(raw.tensors.len());
    for (name, r) in &raw.tensors {
        match ema.get(name.as_str()) {
            Some(e) if e.shape() != r.shape() => {
                report.shape_mismatch.push(format!(
                    "{name}: ema {:?} vs raw {:?}",
                    e.shape(),
                    r.shape()
                ));
                out.push((name.clone(), r.clone()));
            }
            Some(e) => {
                if e.dtype() != r.dtype() {
                    report.dtype_mismatch.push(format!(
                        "{name}: ema {} vs raw {}",
                        e.dtype(),
                        r.dtype()
                    ));
                }
                if r.dtype().is_float() || l.integers_from_ema {
                    report.from_ema += 1;
                    out.push((name.clone(), (*e).clone()));
                } else {
                    report.from_raw.push(name.clone());
                    out.push((name.clone(), r.clone()));
                }
            }
            None if l.params_only => {
                report.from_raw.push(name.clone());
                out.push((name.clone(), r.clone()));
            }
            None => {
                report.raw_only.push(name.clone());
                out.push((name.clone(), r.clone()));
            }
        }
    }
    let raw_names: HashSet<&str> = raw.tensors.iter().map(|(n, _)| n.as_str()).collect();
    report.ema_only = l
        .ema
        .tensors
        .iter()
        .filter(|(n, _)| !raw_names.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    report.tensors = out.len();
    let problems = report.ema_only.len() + report.raw_only.len() + report.shape_mismatch.len();
    if problems > 0 && !opts.allow_missing {
        let mut parts = Vec::new();
        let show = |v: &[String]| {
            let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 3 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        if !report.raw_only.is_empty() {
            parts.push(format!(
                "raw keys missing from the EMA: {}",
                show(&report.raw_only)
            ));
        }
        if !report.ema_only.is_empty() {
            parts.push(format!(
                "EMA keys with no raw counterpart: {}",
                show(&report.ema_only)
            ));
        }
        if !report.shape_mismatch.is_empty() {
            parts.push(format!(
                "shape mismatches: {}",
                show(&report.shape_mismatch)
            ));
        }
        return Err(EmaError {
            path: path.to_path_buf(),
            kind: EmaErrorKind::Mismatch {
                ema: l.ema.origin.clone(),
                raw: raw.origin.clone(),
                parts,
            },
        });
    }
    Ok(Folded {
        tensors: out,
        report,
    })
}
