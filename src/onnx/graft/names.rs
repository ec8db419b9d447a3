//! Matching by name: exporters that keep parameter names (the TorchScript exporter for tensors
//! it did not fold, the dynamo exporter, Ultralytics) name an initializer after its state-dict
//! key. A name is only a hint: the values must also be the raw tensor's, since some exporters
//! keep the name of a weight they changed (BatchNorm folded into `conv.weight`).

use super::GraftFault;
use super::weights::{Weights, max_abs, max_diff};

/// The raw key `name` refers to: itself, without a wrapper prefix (`module.`, `_orig_mod.`), or
/// the one key that it ends with (or that ends with it) at a `.` boundary.
pub fn key_for(name: &str, w: &Weights) -> Option<String> {
    if w.raw.has(name) {
        return Some(name.to_string());
    }
    let mut n = name;
    while let Some(rest) = n
        .strip_prefix("module.")
        .or_else(|| n.strip_prefix("_orig_mod."))
    {
        if w.raw.has(rest) {
            return Some(rest.to_string());
        }
        n = rest;
    }
    // Names with no dot (`t`, `val_12`, `expand`) are the exporter's own, never a suffix.
    if !n.contains('.') {
        return None;
    }
    let mut hits = w.raw.names().iter().filter(|k| {
        let (long, short) = if k.len() > n.len() {
            (k.as_str(), n)
        } else {
            (n, k.as_str())
        };
        long.len() > short.len()
            && long.ends_with(short)
            && long.as_bytes()[long.len() - short.len() - 1] == b'.'
    });
    let first = hits.next()?;
    hits.next().is_none().then(|| first.clone())
}

/// The raw key an initializer named `name` with values `v` holds unchanged (same elements in
/// the same order): `(key, max |Δ|)`.
pub fn by_name(
    name: &str,
    v: &[f32],
    w: &Weights,
    rtol: f64,
) -> Result<Option<(String, f64)>, GraftFault> {
    let Some(key) = key_for(name, w) else {
        return Ok(None);
    };
    let rv = w.raw.values(&key)?;
    if rv.len() != v.len() {
        return Ok(None);
    }
    let d = max_diff(&rv, v);
    let limit = rtol * max_abs(&rv).max(max_abs(v)) + f32::MIN_POSITIVE as f64;
    Ok((d <= limit).then_some((key, d)))
}
