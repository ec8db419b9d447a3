//! Finding the EMA: where a checkpoint keeps its averaged weights and its raw weights
//! ([`locate`]), the recognised layouts ([`layouts`]), and folding the EMA into one state dict
//! under the model's own names ([`fold`]).

pub mod error;
pub mod fold;
pub mod layouts;
pub mod locate;
pub mod wild;

use serde::Serialize;

use crate::tensor::Tensor;

pub use error::{EmaError, EmaErrorKind};
pub use fold::{FoldOptions, FoldReport, Folded, fold};
pub use locate::{Selectors, locate, locate_in};

/// Tensors under names, in order.
pub type Named = Vec<(String, Tensor)>;

/// One side (EMA or raw) of a located checkpoint.
#[derive(Clone, Debug)]
pub struct Side {
    /// Where it came from, as a user would select it (`ema`, `state_dict_ema`, `model_ema.`).
    pub origin: String,
    /// The tensors under the model's own names.
    pub tensors: Named,
}

/// What the locator found.
#[derive(Clone, Debug)]
pub struct Located {
    /// The recognised layout's id (see `docs/layouts.md`).
    pub layout: &'static str,
    /// Which rule matched, in words.
    pub rule: String,
    /// The EMA weights.
    pub ema: Side,
    /// The raw (trained) weights, when the file still has them.
    pub raw: Option<Side>,
    /// The file holds only the EMA in the model slot (e.g. a stripped Ultralytics `best.pt`).
    pub stripped: bool,
    /// Whether this layout keeps an EMA of parameters only, so buffers (BatchNorm statistics)
    /// legitimately come from the raw model.
    pub params_only: bool,
    /// Whether the EMA's own integer buffers (`num_batches_tracked`) are what the framework loads
    /// as the EMA model (ema-pytorch keeps a whole model copy), rather than the raw model's.
    pub integers_from_ema: bool,
    /// EMA update count, where the file records it.
    pub updates: Option<f64>,
    /// EMA decay, where the file records it.
    pub decay: Option<f64>,
}

/// A located EMA as reported (`inspect`, `fold --json`).
#[derive(Clone, Debug, Serialize)]
pub struct LayoutReport {
    /// Layout id.
    pub layout: &'static str,
    /// Rule that matched.
    pub rule: String,
    /// Where the EMA was taken from.
    pub ema: String,
    /// Where the raw weights were taken from.
    pub raw: Option<String>,
    /// Whether the model slot already holds the EMA.
    pub stripped: bool,
    /// EMA update count.
    pub updates: Option<f64>,
    /// EMA decay.
    pub decay: Option<f64>,
}

impl Located {
    /// The report form.
    pub fn report(&self) -> LayoutReport {
        LayoutReport {
            layout: self.layout,
            rule: self.rule.clone(),
            ema: self.ema.origin.clone(),
            raw: self.raw.as_ref().map(|r| r.origin.clone()),
            stripped: self.stripped,
            updates: self.updates,
            decay: self.decay,
        }
    }
}

/// The weight set (other than `exclude`) whose names and shapes match `ema`'s best: at least half
/// of the EMA's names, and every shared name with the same shape.
pub(super) fn matching_raw(
    sets: &[crate::checkpoint::sets::WeightSet],
    exclude: &str,
    ema: &Named,
) -> Option<Side> {
    let by_name: std::collections::HashMap<&str, &Tensor> =
        ema.iter().map(|(n, t)| (n.as_str(), t)).collect();
    sets.iter()
        .filter(|s| s.path != exclude)
        .filter_map(|s| {
            let raw = strip_wrappers(s.tensors.clone());
            let mut hits = 0;
            for (n, t) in &raw {
                if let Some(e) = by_name.get(n.as_str()) {
                    if e.shape() != t.shape() {
                        return None;
                    }
                    hits += 1;
                }
            }
            (hits > 0 && hits * 2 >= ema.len()).then_some((hits, s.path.clone(), raw))
        })
        .max_by_key(|(hits, _, _)| *hits)
        .map(|(_, path, tensors)| Side {
            origin: path,
            tensors,
        })
}

/// Removes wrapper prefixes (`module.` from DDP / DataParallel / AveragedModel, `_orig_mod.` from
/// `torch.compile`) when every name carries them.
pub fn strip_wrappers(mut t: Named) -> Named {
    loop {
        let mut changed = false;
        for prefix in ["module.", "_orig_mod."] {
            if !t.is_empty() && t.iter().all(|(n, _)| n.starts_with(prefix)) {
                for (n, _) in t.iter_mut() {
                    n.drain(..prefix.len());
                }
                changed = true;
            }
        }
        if !changed {
            return t;
        }
    }
}

impl Located {
    /// Metadata recorded in written files: where the weights came from and how.
    pub fn output_metadata(
        &self,
        source: &std::path::Path,
    ) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("format".into(), "pt".into());
        let name = source.file_name().map(|n| n.to_string_lossy().to_string());
        m.insert("source".into(), name.unwrap_or_default());
        m.insert("layout".into(), self.layout.into());
        m.insert("ema".into(), self.ema.origin.clone());
        if let Some(u) = self.updates {
            m.insert("ema_updates".into(), u.to_string());
        }
        if let Some(d) = self.decay {
            m.insert("ema_decay".into(), d.to_string());
        }
        m.insert(
            "producer".into(),
            format!("fuse-ema {}", env!("CARGO_PKG_VERSION")),
        );
        m
    }
}
