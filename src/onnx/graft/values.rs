//! Matching by value: an initializer whose elements are a raw tensor's, unchanged, reshaped, or
//! with its axes permuted (a Linear weight transposed for `MatMul`, a `cls_token` expanded to
//! batch 1). Fingerprints pick the candidates; each is then compared element by element.

use super::GraftFault;
use super::weights::{Print, Weights, max_abs, max_diff, permutations, permute};

/// One raw tensor the values equal.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Raw key.
    pub key: String,
    /// Axis permutation applied to the raw tensor (`None`: the same elements in the same order).
    pub perm: Option<Perm>,
    /// max |Δ| between the initializer and the raw tensor so transformed.
    pub error: f64,
}

/// The outcome of a search.
#[derive(Debug)]
pub enum Found {
    /// No raw tensor holds these values.
    None,
    /// One raw tensor (or several whose EMA counterparts agree: tied weights); the rest are
    /// listed in `also`.
    One(Hit, Vec<String>),
    /// Several raw tensors hold these values and their EMA counterparts differ.
    Ambiguous(Vec<String>),
}

/// A transpose: the raw tensor's elements viewed in `view` (its own shape, or a 2-D grouping
/// of its dimensions), then the axes permuted.
#[derive(Clone, Debug, PartialEq)]
pub struct Perm {
    /// The shape the elements are viewed in.
    pub view: Vec<usize>,
    /// Output axis i = view axis `axes[i]`.
    pub axes: Vec<usize>,
}

/// `rv` transformed as `perm` says.
pub fn apply(rv: &[f32], perm: &Option<Perm>) -> Vec<f32> {
    match perm {
        Some(p) => permute(rv, &p.view, &p.axes),
        None => rv.to_vec(),
    }
}

/// Every way the raw tensor `key` can become `v` (of `dims`).
fn hits_for(
    key: &str,
    dims: &[i64],
    v: &[f32],
    w: &Weights,
    rtol: f64,
) -> Result<Vec<Hit>, GraftFault> {
    let rv = w.raw.values(key)?;
    let limit = rtol * max_abs(&rv).max(max_abs(v)) + f32::MIN_POSITIVE as f64;
    let d = max_diff(&rv, v);
    if d <= limit {
        return Ok(vec![Hit {
            key: key.to_string(),
            perm: None,
            error: d,
        }]);
    }
    let shape = w.raw.shape(key).unwrap_or_default().to_vec();
    // The axes permuted in the tensor's own shape, when that gives the initializer's shape; and
    // every 2-D grouping of its dimensions transposed (a weight reshaped, then transposed:
    // `[8, 8, 3, 3]` seen as `[8, 72]`, stored as `[1, 72, 8]`).
    let mut tries: Vec<Perm> = permutations(shape.len())
        .into_iter()
        .filter(|p| p.iter().map(|&i| shape[i] as i64).collect::<Vec<_>>() == dims)
        .map(|axes| Perm {
            view: shape.clone(),
            axes,
        })
        .collect();
    for k in 1..shape.len() {
        let (a, b): (usize, usize) = (shape[..k].iter().product(), shape[k..].iter().product());
        let p = Perm {
            view: vec![a, b],
            axes: vec![1, 0],
        };
        if a > 1
            && b > 1
            && !(shape.len() == 2
                && tries.contains(&Perm {
                    view: shape.clone(),
                    axes: vec![1, 0],
                }))
        {
            tries.push(p);
        }
    }
    let mut out = Vec::new();
    for p in tries {
        let t = permute(&rv, &p.view, &p.axes);
        let d = max_diff(&t, v);
        if d <= limit {
            out.push(Hit {
                key: key.to_string(),
                perm: Some(p),
                error: d,
            });
            break;
        }
    }
    Ok(out)
}

/// Searches the raw weights for `v` (an initializer of `dims`); `prefer` (the key its name
/// suggests) wins among equals.
pub fn by_value(
    dims: &[i64],
    v: &[f32],
    w: &Weights,
    rtol: f64,
    prefer: Option<&str>,
) -> Result<Found, GraftFault> {
    let p = Print::of(v);
    let mut hits = Vec::new();
    for (key, print) in w
        .prints
        .get(&v.len())
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if print.may_equal(&p, rtol.max(1e-6) * 4.0) {
            hits.extend(hits_for(key, dims, v, w, rtol)?);
        }
    }
    if hits.is_empty() {
        return Ok(Found::None);
    }
    if let Some(pref) = prefer
        && let Some(i) = hits.iter().position(|h| h.key == pref)
    {
        hits.swap(0, i);
    }
    // Several raw tensors with these values (tied weights, or untrained copies): fine when the
    // EMA agrees on all of them, since any gives the same result.
    let first = ema_of(&hits[0], w)?;
    let mut also = Vec::new();
    let mut conflict = Vec::new();
    for h in &hits[1..] {
        let e = ema_of(h, w)?;
        let limit = rtol * max_abs(&first).max(max_abs(&e)) + f32::MIN_POSITIVE as f64;
        if max_diff(&first, &e) <= limit {
            also.push(h.key.clone());
        } else {
            conflict.push(h.key.clone());
        }
    }
    if !conflict.is_empty() {
        let mut keys = vec![hits[0].key.clone()];
        keys.extend(conflict);
        return Ok(Found::Ambiguous(keys));
    }
    Ok(Found::One(hits.swap_remove(0), also))
}

/// The EMA counterpart of a hit, transformed the same way.
pub fn ema_of(h: &Hit, w: &Weights) -> Result<Vec<f32>, GraftFault> {
    let ev = w.ema.values(&h.key)?;
    let shape = w
        .ema
        .shape(&h.key)
        .ok_or_else(|| GraftFault::EmaMissing { key: h.key.clone() })?;
    if Some(shape) != w.raw.shape(&h.key) {
        return Err(GraftFault::EmaShape {
            key: h.key.clone(),
            ema: shape.to_vec(),
            raw: w.raw.shape(&h.key).unwrap_or_default().to_vec(),
        });
    }
    Ok(apply(&ev, &h.perm))
}

/// A raw tensor times one constant: `(key, factor, max |Δ|)`.
pub type Scaled = (String, f64, f64);

/// Searches the raw weights for a tensor whose elements, in order, times one constant give `v`
/// (a scale folded in by the exporter: timm's `ScaledStdConv2d` passes `gain · scale` to
/// `batch_norm`). A raw tensor of one repeated value counts only when its EMA is the same. `Err` lists the candidates when several fit with different EMAs.
pub fn by_multiple(
    v: &[f32],
    w: &Weights,
    rtol: f64,
) -> Result<Result<Option<Scaled>, Vec<String>>, GraftFault> {
    let limit = rtol * max_abs(v) + f32::MIN_POSITIVE as f64;
    let mut found: Vec<Scaled> = Vec::new();
    for (key, print) in w
        .prints
        .get(&v.len())
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if print.sumsq == 0.0 {
            continue;
        }
        let rv = w.raw.values(key)?;
        // A constant times anything says nothing, unless its EMA is the same constant (a gain
        // no gradient reached): then any such match leaves the values as they are.
        let first = rv.first().copied().unwrap_or_default();
        if rv.iter().all(|&x| x == first) && w.ema.values(key)?.as_slice() != rv.as_slice() {
            continue;
        }
        let dot: f64 = rv.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
        let c = dot / print.sumsq;
        if c == 0.0 || !c.is_finite() {
            continue;
        }
        let d = rv
            .iter()
            .zip(v)
            .map(|(&a, &b)| (a as f64 * c - b as f64).abs())
            .fold(0.0, f64::max);
        if d <= limit {
            found.push((key.clone(), c, d));
        }
    }
    let Some(first) = found.first() else {
        return Ok(Ok(None));
    };
    let scaled = |k: &str, c: f64| -> Result<Vec<f32>, GraftFault> {
        Ok(w.ema
            .values(k)?
            .iter()
            .map(|&x| (x as f64 * c) as f32)
            .collect())
    };
    let a = scaled(&first.0, first.1)?;
    for (k, c, _) in &found[1..] {
        let b = scaled(k, *c)?;
        if max_diff(&a, &b) > rtol * max_abs(&a).max(max_abs(&b)) + f32::MIN_POSITIVE as f64 {
            return Ok(Err(found.iter().map(|f| f.0.clone()).collect()));
        }
    }
    Ok(Ok(Some(first.clone())))
}
