//! Conv + BatchNorm folds. Exporters fold an eval-mode BatchNorm into the convolution before it
//! (TorchScript's eval peephole, onnxscript's `fuse_batchnorm`, Ultralytics' `fuse_conv_and_bn`),
//! all computing the same function:
//!
//! ```text
//! s  = γ / √(var + ε)          per output channel
//! W' = W · s                   (axis 0 of the Conv weight)
//! b' = (b − mean) · s + β      (b = 0 when the Conv had no bias)
//! ```
//!
//! A folded initializer is recognised by recomputing that function of raw tensors: the Conv
//! weight candidates are the raw tensors of its shape, the per-channel ratio `W'/W` must be one
//! number per channel, and a BatchNorm whose `s` gives those ratios (for ε among the usual
//! values, or the one the ratios imply) completes the match. The EMA side is then folded the
//! same way.

use super::GraftFault;
use super::weights::{Side, Weights, max_abs};

/// A BatchNorm's tensors in the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Bn {
    /// Module path (`stem.1`).
    pub prefix: String,
    /// γ (`None`: affine=False, 1).
    pub gamma: Option<String>,
    /// β (`None`: 0).
    pub beta: Option<String>,
    /// Running mean.
    pub mean: String,
    /// Running variance.
    pub var: String,
    /// Channels.
    pub channels: usize,
}

/// ε values exporters and libraries use (PyTorch 1e-5, Ultralytics and timm's EfficientNet
/// 1e-3, …); the value the ratios imply is tried too.
const EPS: [f64; 6] = [1e-5, 1e-3, 1e-4, 1e-6, 1e-12, 0.0];

/// Every BatchNorm in the raw weights: a `running_var` with a `running_mean` of the same size.
pub fn groups(raw: &Side) -> Vec<Bn> {
    let mut out = Vec::new();
    for k in raw.names() {
        let Some(prefix) = k.strip_suffix("running_var") else {
            continue;
        };
        let Some(channels) = raw.shape(k).map(|s| s.iter().product::<usize>()) else {
            continue;
        };
        let same =
            |n: String| (raw.shape(&n).map(|s| s.iter().product()) == Some(channels)).then_some(n);
        let Some(mean) = same(format!("{prefix}running_mean")) else {
            continue;
        };
        out.push(Bn {
            prefix: prefix.trim_end_matches('.').to_string(),
            gamma: same(format!("{prefix}weight")),
            beta: same(format!("{prefix}bias")),
            mean,
            var: k.clone(),
            channels,
        });
    }
    out
}

/// `s = γ / √(var + ε)` from `side`.
pub fn scale(side: &Side, bn: &Bn, eps: f64) -> Result<Vec<f64>, GraftFault> {
    let var = side.values(&bn.var)?;
    let gamma = match &bn.gamma {
        Some(g) => Some(side.values(g)?),
        None => None,
    };
    Ok((0..bn.channels)
        .map(|o| gamma.as_ref().map_or(1.0, |g| g[o] as f64) / (var[o] as f64 + eps).sqrt())
        .collect())
}

/// The folded Conv weight from `side`: `conv` scaled per output channel.
pub fn fold_weight(side: &Side, conv: &str, bn: &Bn, eps: f64) -> Result<Vec<f32>, GraftFault> {
    let s = scale(side, bn, eps)?;
    let w = side.values(conv)?;
    let per = w.len() / bn.channels.max(1);
    Ok(w.iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 * s[i / per.max(1)]) as f32)
        .collect())
}

/// The folded bias from `side`: `(b − mean)·s + β`, `b` = 0 without a Conv bias.
pub fn fold_bias(
    side: &Side,
    bias: Option<&str>,
    bn: &Bn,
    eps: f64,
) -> Result<Vec<f32>, GraftFault> {
    let s = scale(side, bn, eps)?;
    let mean = side.values(&bn.mean)?;
    let b = match bias {
        Some(k) => Some(side.values(k)?),
        None => None,
    };
    let beta = match &bn.beta {
        Some(k) => Some(side.values(k)?),
        None => None,
    };
    Ok((0..bn.channels)
        .map(|o| {
            let b = b.as_ref().map_or(0.0, |b| b[o] as f64);
            let beta = beta.as_ref().map_or(0.0, |x| x[o] as f64);
            ((b - mean[o] as f64) * s[o] + beta) as f32
        })
        .collect())
}

/// A folded Conv weight found: the raw Conv weight, the BatchNorm, ε, and max |Δ| of the
/// recomputation.
#[derive(Clone, Debug)]
pub struct WeightFold {
    /// Raw Conv weight key.
    pub conv: String,
    /// The BatchNorm.
    pub bn: Bn,
    /// ε.
    pub eps: f64,
    /// max |Δ| between the initializer and the recomputed fold.
    pub error: f64,
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Per output channel, the one factor `v = r·w` (`None` for a channel of zeros), or `None` when
/// the channels are not scaled copies of `w` within `limit`.
fn ratios(v: &[f32], w: &[f32], channels: usize, limit: f64) -> Option<Vec<Option<f64>>> {
    let per = v.len() / channels;
    let mut out = Vec::with_capacity(channels);
    for o in 0..channels {
        let (a, b) = (&v[o * per..(o + 1) * per], &w[o * per..(o + 1) * per]);
        let (mut num, mut den) = (0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            num += x as f64 * y as f64;
            den += y as f64 * y as f64;
        }
        if den == 0.0 {
            if a.iter().any(|x| (*x as f64).abs() > limit) {
                return None;
            }
            out.push(None);
            continue;
        }
        let r = num / den;
        if a.iter()
            .zip(b)
            .any(|(&x, &y)| (x as f64 - r * y as f64).abs() > limit)
        {
            return None;
        }
        out.push(Some(r));
    }
    Some(out)
}

/// The best ε for `bn` against ratios `r`: (ε, max over channels of |s − r|·max|w channel|).
fn best_eps(
    w: &Weights,
    bn: &Bn,
    r: &[Option<f64>],
    wmax: &[f64],
    limit: f64,
) -> Result<(f64, f64), GraftFault> {
    let var = w.raw.values(&bn.var)?;
    let gamma = match &bn.gamma {
        Some(g) => Some(w.raw.values(g)?),
        None => None,
    };
    // ε implied by each channel: (γ/r)² − var; the median resists a few noisy channels.
    let mut implied: Vec<f64> = (0..bn.channels)
        .filter_map(|o| {
            let r = r[o]?;
            let g = gamma.as_ref().map_or(1.0, |g| g[o] as f64);
            (r != 0.0).then(|| (g / r).powi(2) - var[o] as f64)
        })
        .collect();
    implied.sort_by(f64::total_cmp);
    let err = |eps: f64| -> Result<f64, GraftFault> {
        let s = scale(&w.raw, bn, eps)?;
        Ok((0..bn.channels)
            .filter_map(|o| r[o].map(|r| (s[o] - r).abs() * wmax[o]))
            .fold(0.0, f64::max))
    };
    let mut best = (0.0, f64::INFINITY);
    for eps in EPS {
        let e = err(eps)?;
        if e < best.1 {
            best = (eps, e);
        }
    }
    // A usual ε that fits is the library's; only otherwise is the implied one taken.
    if best.1 > limit
        && let Some(&m) = implied.get(implied.len() / 2)
        && m.is_finite()
        && m >= 0.0
    {
        let e = err(m)?;
        if e < best.1 {
            best = (m, e);
        }
    }
    Ok(best)
}

/// Finds the raw Conv weight and BatchNorm whose fold gives `v` (a Conv weight initializer of
/// `dims`). `near` (the initializer's name, or its name's key) breaks ties by shared prefix.
pub fn find_weight(
    dims: &[i64],
    v: &[f32],
    w: &Weights,
    bns: &[Bn],
    rtol: f64,
    near: &str,
) -> Result<Vec<WeightFold>, GraftFault> {
    let Some(&out) = dims.first() else {
        return Ok(Vec::new());
    };
    let channels = usize::try_from(out).unwrap_or(0);
    if channels == 0 || !v.len().is_multiple_of(channels) {
        return Ok(Vec::new());
    }
    let limit = rtol * max_abs(v) + f32::MIN_POSITIVE as f64;
    let mut found = Vec::new();
    for conv in w.raw.names() {
        let shape = w.raw.shape(conv).unwrap_or_default();
        if shape.len() != dims.len() || shape.iter().zip(dims).any(|(&a, &b)| a as i64 != b) {
            continue;
        }
        let cw = w.raw.values(conv)?;
        let Some(r) = ratios(v, &cw, channels, limit) else {
            continue;
        };
        let per = cw.len() / channels;
        let wmax: Vec<f64> = (0..channels)
            .map(|o| max_abs(&cw[o * per..(o + 1) * per]))
            .collect();
        for bn in bns.iter().filter(|b| b.channels == channels) {
            let (eps, err) = best_eps(w, bn, &r, &wmax, limit)?;
            if err <= limit {
                found.push(WeightFold {
                    conv: conv.clone(),
                    bn: bn.clone(),
                    eps,
                    error: err,
                });
            }
        }
    }
    // Nearest names first: the BatchNorm beside the Conv (`stem.0` / `stem.1`, `conv` / `bn`).
    found.sort_by_key(|f| {
        std::cmp::Reverse(
            common_prefix(&f.conv, near) * 1000 + common_prefix(&f.conv, &f.bn.prefix),
        )
    });
    Ok(found)
}

/// The raw Conv bias (or none) that, folded with `bn`, gives `v`: `(bias key, max |Δ|)`.
pub fn find_bias(
    v: &[f32],
    w: &Weights,
    conv: &str,
    bn: &Bn,
    eps: f64,
    rtol: f64,
) -> Result<Option<(Option<String>, f64)>, GraftFault> {
    if v.len() != bn.channels {
        return Ok(None);
    }
    let sibling = conv
        .strip_suffix("weight")
        .map(|p| format!("{p}bias"))
        .filter(|k| {
            w.raw.has(k) && w.raw.shape(k).map(|s| s.iter().product()) == Some(bn.channels)
        });
    let mut best: Option<(Option<String>, f64)> = None;
    for bias in [sibling, None] {
        let b = fold_bias(&w.raw, bias.as_deref(), bn, eps)?;
        let d = super::weights::max_diff(&b, v);
        let limit = rtol.max(1e-5) * max_abs(&b).max(max_abs(v)) + 1e-6;
        if d <= limit && best.as_ref().is_none_or(|(_, e)| d < *e) {
            best = Some((bias, d));
        }
    }
    Ok(best)
}
