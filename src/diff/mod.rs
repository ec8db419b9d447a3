//! Drift between two sets of weights (EMA vs raw, or one checkpoint against another): per-tensor
//! statistics accumulated in f64, per-layer summaries, and the most drifted tensors.

mod kernel;
pub mod svg;

use std::collections::HashMap;

use serde::Serialize;

use crate::ema::Named;
use crate::progress::Progress;

/// Statistics of one tensor pair, `a` against the reference `b`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorDrift {
    /// State dict name.
    pub name: String,
    /// Elements compared.
    pub numel: usize,
    /// max |a − b|.
    pub max_abs: f64,
    /// mean |a − b|.
    pub mean_abs: f64,
    /// ‖a − b‖ / ‖b‖ (`None` when b is all zeros and a differs).
    pub rel_l2: Option<f64>,
    /// a·b / (‖a‖‖b‖) (`None` when either is all zeros).
    pub cosine: Option<f64>,
}

/// Summary of the tensors of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDrift {
    /// Layer name (`model.3`, `blocks.2`, `head`).
    pub layer: String,
    /// Tensors in it.
    pub tensors: usize,
    /// sqrt(Σ‖a − b‖²) / sqrt(Σ‖b‖²) over its tensors.
    pub rel_l2: Option<f64>,
    /// Largest |a − b| in it.
    pub max_abs: f64,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    /// Per tensor, in state dict order.
    pub tensors: Vec<TensorDrift>,
    /// Per layer, in order of first appearance.
    pub layers: Vec<LayerDrift>,
    /// Names only in `a`.
    pub only_a: Vec<String>,
    /// Names only in `b`.
    pub only_b: Vec<String>,
    /// Names skipped: not floating point, or shapes differ.
    pub skipped: Vec<String>,
}

impl Drift {
    /// The `n` tensors with the largest relative drift (undefined drift first).
    pub fn top(&self, n: usize) -> Vec<&TensorDrift> {
        let mut v: Vec<&TensorDrift> = self.tensors.iter().collect();
        v.sort_by(|x, y| {
            let k = |t: &TensorDrift| t.rel_l2.unwrap_or(f64::INFINITY);
            k(y).total_cmp(&k(x))
        });
        v.truncate(n);
        v
    }

    /// Tensors whose relative drift exceeds `limit` (undefined or NaN drift counts as exceeding).
    pub fn above(&self, limit: f64) -> Vec<&TensorDrift> {
        self.tensors
            .iter()
            .filter(|t| !matches!(t.rel_l2, Some(r) if r <= limit))
            .collect()
    }
}

/// The layer a tensor belongs to: the name up to its first numeric component (`model.3`,
/// `blocks.2`), else its first component.
pub fn layer_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.iter().position(|p| p.parse::<usize>().is_ok()) {
        Some(i) if i + 1 < parts.len() => parts[..=i].join("."),
        _ => parts[0].to_string(),
    }
}

/// Why a comparison could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A tensor's bytes could not be read: an I/O error, or the file shrank or changed while it
    /// was being read.
    #[error("tensor '{name}': {source}")]
    Read {
        /// State dict name.
        name: String,
        /// Which side of the comparison failed.
        side: Side,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

/// A side of a comparison (the file it came from is the caller's to name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The weights compared (`a`).
    Subject,
    /// The weights compared against (`b`).
    Reference,
}

type PairSums = Result<Option<kernel::Sums>, (Side, std::io::Error)>;

/// Computes each pair's sums on all cores (largest tensors first); results in input order.
fn parallel_sums(
    pairs: &[(&crate::tensor::Tensor, &crate::tensor::Tensor)],
    progress: &dyn Progress,
) -> Vec<Option<PairSums>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].0.numel()));
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<PairSums>>> = Mutex::new((0..pairs.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let r = kernel::sums(pairs[i].0, pairs[i].1);
                    progress.advance((pairs[i].0.nbytes() + pairs[i].1.nbytes()) as u64);
                    out.lock().expect("no panics while held")[i] = Some(r);
                }
            });
        }
    });
    out.into_inner().expect("threads joined")
}

/// Compares `a` with `b` tensor by tensor (matched by name). Tensors that are not floating point
/// or differ in shape are listed as skipped; a tensor that cannot be read fails the comparison.
pub fn diff(a: &Named, b: &Named, progress: &dyn Progress) -> Result<Drift, DiffError> {
    let b_map: HashMap<&str, &crate::tensor::Tensor> =
        b.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut skipped = Vec::new();
    let mut names = Vec::new();
    let mut pairs = Vec::new();
    for (name, ta) in a {
        let Some(tb) = b_map.get(name.as_str()) else {
            continue;
        };
        if !ta.dtype().is_float() || !tb.dtype().is_float() || ta.shape() != tb.shape() {
            skipped.push(name.clone());
            continue;
        }
        names.push(name);
        pairs.push((ta, *tb));
    }
    progress.start(
        pairs
            .iter()
            .map(|(x, y)| (x.nbytes() + y.nbytes()) as u64)
            .sum(),
    );
    let sums = parallel_sums(&pairs, progress);
    progress.finish();
    let mut tensors = Vec::new();
    let mut layers: Vec<(String, usize, f64, f64, f64)> = Vec::new();
    for ((name, (ta, _)), acc) in names.into_iter().zip(&pairs).zip(sums) {
        let acc = match acc.expect("every pair computed") {
            Ok(Some(acc)) => acc,
            Ok(None) => {
                skipped.push(name.clone());
                continue;
            }
            Err((side, source)) => {
                return Err(DiffError::Read {
                    name: name.clone(),
                    side,
                    source,
                });
            }
        };
        let n = ta.numel();
        let rel_l2 = if acc.bb > 0.0 {
            Some(acc.dd.sqrt() / acc.bb.sqrt())
        } else if acc.dd == 0.0 {
            Some(0.0)
        } else {
            None
        };
        let cosine =
            (acc.aa > 0.0 && acc.bb > 0.0).then(|| acc.ab / (acc.aa.sqrt() * acc.bb.sqrt()));
        let layer = layer_of(name);
        match layers.iter_mut().find(|l| l.0 == layer) {
            Some(l) => {
                l.1 += 1;
                l.2 += acc.dd;
                l.3 += acc.bb;
                l.4 = l.4.max(acc.max_abs);
            }
            None => layers.push((layer, 1, acc.dd, acc.bb, acc.max_abs)),
        }
        tensors.push(TensorDrift {
            name: name.clone(),
            numel: n,
            max_abs: acc.max_abs,
            mean_abs: if n > 0 { acc.sum_abs / n as f64 } else { 0.0 },
            rel_l2,
            cosine,
        });
    }
    let a_names: std::collections::HashSet<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    Ok(Drift {
        tensors,
        layers: layers
            .into_iter()
            .map(|(layer, tensors, dd, bb, max_abs)| LayerDrift {
                layer,
                tensors,
                rel_l2: if bb > 0.0 {
                    Some(dd.sqrt() / bb.sqrt())
                } else {
                    (dd == 0.0).then_some(0.0)
                },
                max_abs,
            })
            .collect(),
        only_a: a
            .iter()
            .filter(|(n, _)| !b_map.contains_key(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
        only_b: b
            .iter()
            .filter(|(n, _)| !a_names.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::layer_of;

    #[test]
    fn layers() {
        assert_eq!(layer_of("model.3.cv1.conv.weight"), "model.3");
        assert_eq!(layer_of("blocks.2.0.bn1.weight"), "blocks.2");
        assert_eq!(layer_of("conv_stem.weight"), "conv_stem");
        assert_eq!(layer_of("bias"), "bias");
    }
}
