//! Weight standardization folded into a constant. timm's `StdConv2d` and `ScaledStdConv2d`
//! (NFNet, BiT) standardize their weight in `forward` with a training-mode `batch_norm` over
//! each output channel; the dynamo exporter folds that into an initializer:
//!
//! ```text
//! W' = g_o · (w − mean_o) / √(var_o + ε)     mean, biased variance over output channel o
//! g  = 1 (StdConv2d) or c · gain (ScaledStdConv2d: gain times the constant scale)
//! ```
//!
//! Recognised by standardizing each raw tensor of the initializer's shape (ε among the usual
//! values), fitting one factor per channel, and finding those factors as 1 or a multiple of a
//! raw tensor; the EMA is then standardized the same way.

use super::GraftFault;
use super::values;
use super::weights::{Side, Weights, max_abs};

/// ε values tried (timm's default 1e-6 first).
const EPS: [f64; 5] = [1e-6, 1e-5, 1e-4, 1e-8, 0.0];

/// A standardized Conv weight.
#[derive(Clone, Debug)]
pub struct StdFold {
    /// Raw Conv weight key.
    pub conv: String,
    /// ε.
    pub eps: f64,
    /// The per-channel factor's tensor and constant (`None`: 1).
    pub gain: Option<(String, f64)>,
    /// max |Δ| of the recomputation.
    pub error: f64,
}

/// `w` standardized per output channel.
fn standardize(w: &[f32], channels: usize, eps: f64) -> Vec<f64> {
    let per = w.len() / channels.max(1);
    let mut out = Vec::with_capacity(w.len());
    for c in w.chunks(per.max(1)) {
        let n = c.len() as f64;
        let mean = c.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = c.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let d = (var + eps).sqrt();
        out.extend(c.iter().map(|&x| (x as f64 - mean) / d));
    }
    out
}

/// The standardized weight from `side`.
pub fn compute(side: &Side, f: &StdFold) -> Result<Vec<f32>, GraftFault> {
    let w = side.values(&f.conv)?;
    let channels = side
        .shape(&f.conv)
        .and_then(|s| s.first().copied())
        .unwrap_or(1);
    let gain = match &f.gain {
        Some((k, c)) => Some((side.values(k)?, *c)),
        None => None,
    };
    let per = w.len() / channels.max(1);
    Ok(standardize(&w, channels, f.eps)
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            let g = gain
                .as_ref()
                .map_or(1.0, |(g, c)| g[i / per.max(1)] as f64 * c);
            (x * g) as f32
        })
        .collect())
}

/// Finds the raw Conv weight whose standardization gives `v` (of `dims`).
pub fn find(
    dims: &[i64],
    v: &[f32],
    w: &Weights,
    rtol: f64,
) -> Result<Option<StdFold>, GraftFault> {
    let Some(channels) = dims.first().and_then(|&d| usize::try_from(d).ok()) else {
        return Ok(None);
    };
    if channels == 0 || !v.len().is_multiple_of(channels) || v.len() == channels {
        return Ok(None);
    }
    let per = v.len() / channels;
    let limit = rtol * max_abs(v) + f32::MIN_POSITIVE as f64;
    let mut best: Option<StdFold> = None;
    for conv in w.raw.names() {
        let shape = w.raw.shape(conv).unwrap_or_default();
        if shape.len() != dims.len() || shape.iter().zip(dims).any(|(&a, &b)| a as i64 != b) {
            continue;
        }
        let cw = w.raw.values(conv)?;
        for eps in EPS {
            let n = standardize(&cw, channels, eps);
            // One factor per channel, fitted, then checked element by element.
            let mut r = Vec::with_capacity(channels);
            let mut fits = true;
            for o in 0..channels {
                let (a, b) = (&v[o * per..(o + 1) * per], &n[o * per..(o + 1) * per]);
                let den: f64 = b.iter().map(|x| x * x).sum();
                let f = if den > 0.0 {
                    a.iter().zip(b).map(|(&x, y)| x as f64 * y).sum::<f64>() / den
                } else {
                    0.0
                };
                if a.iter()
                    .zip(b)
                    .any(|(&x, y)| (x as f64 - f * y).abs() > limit)
                {
                    fits = false;
                    break;
                }
                r.push(f);
            }
            if !fits {
                continue;
            }
            let gain = if r.iter().all(|f| (f - 1.0).abs() <= 1e-5) {
                None
            } else {
                let rf: Vec<f32> = r.iter().map(|&x| x as f32).collect();
                match values::by_multiple(&rf, w, rtol.max(1e-5))? {
                    Ok(Some((k, c, _))) => Some((k, c)),
                    _ => continue,
                }
            };
            let f = StdFold {
                conv: conv.clone(),
                eps,
                gain,
                error: 0.0,
            };
            let got = compute(&w.raw, &f)?;
            let error = super::weights::max_diff(&got, v);
            if error <= limit && best.as_ref().is_none_or(|b| error < b.error) {
                best = Some(StdFold { error, ..f });
            }
        }
    }
    Ok(best)
}
