//! The graft report: one row per initializer (how it was matched, from what, how far its
//! values moved), the totals, and the output drift; rendered as text or serialised as JSON.

use serde::Serialize;

/// How an initializer was identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// Its name is a raw key and its values are that tensor's.
    Name,
    /// Its values are a raw tensor's (possibly reshaped or transposed).
    Value,
    /// A Conv weight or bias with a BatchNorm folded in, recomputed from raw tensors.
    BnFold,
    /// From no weight: left alone.
    Constant,
    /// Looks like a weight but matches none: an error unless `--allow-unmatched`.
    Unmatched,
    /// Matches several raw tensors whose EMA counterparts differ: an error unless
    /// `--allow-unmatched` (then left alone).
    Ambiguous,
}

impl How {
    /// The word in the text report.
    pub fn word(self) -> &'static str {
        match self {
            How::Name => "name",
            How::Value => "value",
            How::BnFold => "bn-fold",
            How::Constant => "constant",
            How::Unmatched => "UNMATCHED",
            How::Ambiguous => "AMBIGUOUS",
        }
    }

    /// Whether the initializer is replaced by its EMA counterpart.
    pub fn replaced(self) -> bool {
        matches!(self, How::Name | How::Value | How::BnFold)
    }
}

/// One initializer.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Initializer name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Element type (`float32`, `float16`, `int64`, …).
    pub dtype: String,
    /// How it was identified.
    pub how: How,
    /// What it is a function of, in words (`blocks.0.attn.qkv.weight transposed [1, 0]`,
    /// `stem.0.weight ⊗ BatchNorm stem.1 (eps 1e-5)`); empty for constants.
    pub source: String,
    /// The operators that read it (`Conv[1]`: Conv's input 1).
    pub used_as: Vec<String>,
    /// max |initializer − recomputation from the raw weights| (how exact the match is).
    pub match_error: Option<f64>,
    /// max |EMA value − original value|: how far grafting moved it.
    pub max_change: Option<f64>,
    /// Other raw keys with the same values (tied weights), or the candidates of an ambiguity.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

/// Drift of one output between the original and the grafted model.
#[derive(Clone, Debug, Serialize)]
pub struct OutputDrift {
    /// Output name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// max |grafted − original|.
    pub max_abs: f64,
    /// mean |grafted − original|.
    pub mean_abs: f64,
    /// max |original|.
    pub reference_max: f64,
    /// max_abs / reference_max.
    pub relative: f64,
}

/// Output drift, or why it was not measured.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    /// `onnxruntime 1.x` / `tract 0.x`, when run.
    pub runtime: Option<String>,
    /// Input shapes fed (seeded uniform [0, 1)).
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Per output.
    pub outputs: Vec<OutputDrift>,
    /// Why the models were not run (no runtime, non-float inputs, `--no-drift`).
    pub skipped: Option<String>,
}

/// Totals.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Initializers.
    pub initializers: usize,
    /// Replaced, matched by name.
    pub name: usize,
    /// Replaced, matched by value.
    pub value: usize,
    /// Replaced, recomputed Conv+BatchNorm folds.
    pub bn_fold: usize,
    /// Left alone.
    pub constant: usize,
    /// Weight-like, matched nothing.
    pub unmatched: usize,
    /// Matched several raw tensors with different EMAs.
    pub ambiguous: usize,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct GraftReport {
    /// The input ONNX.
    pub model: String,
    /// The checkpoint.
    pub checkpoint: String,
    /// The output (`None` when nothing was written).
    pub output: Option<String>,
    /// The EMA layout (`docs/layouts.md`) and where the EMA and raw weights were taken from.
    pub layout: crate::ema::LayoutReport,
    /// Totals.
    pub counts: Counts,
    /// Largest `max_change` over replaced initializers.
    pub max_change: f64,
    /// Per initializer, in file order.
    pub initializers: Vec<Entry>,
    /// Output drift (original vs grafted).
    pub drift: Option<Drift>,
    /// Whether the output was written.
    pub written: bool,
}

impl Counts {
    /// Counts `entries`.
    pub fn of(entries: &[Entry]) -> Counts {
        let mut c = Counts {
            initializers: entries.len(),
            ..Counts::default()
        };
        for e in entries {
            *match e.how {
                How::Name => &mut c.name,
                How::Value => &mut c.value,
                How::BnFold => &mut c.bn_fold,
                How::Constant => &mut c.constant,
                How::Unmatched => &mut c.unmatched,
                How::Ambiguous => &mut c.ambiguous,
            } += 1;
        }
        c
    }
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3e}"))
}

impl GraftReport {
    /// The text form.
    pub fn text(&self, all: bool) -> String {
        let c = &self.counts;
        let mut s = format!(
            "graft: {} ← EMA of {} (layout {}, EMA '{}', raw '{}')\n",
            self.model,
            self.checkpoint,
            self.layout.layout,
            self.layout.ema,
            self.layout.raw.as_deref().unwrap_or("-")
        );
        s += &format!(
            "initializers: {} — replaced {} (name {}, value {}, bn-fold {}), constants {}, unmatched {}, ambiguous {}\n",
            c.initializers,
            c.name + c.value + c.bn_fold,
            c.name,
            c.value,
            c.bn_fold,
            c.constant,
            c.unmatched,
            c.ambiguous
        );
        s += &format!("largest change: {:.3e}\n", self.max_change);
        for e in &self.initializers {
            if !all && e.how == How::Constant {
                continue;
            }
            s += &format!(
                "  {:<9} {:<40} {:<16} {:<8} Δmax {:<10} match {:<10} {}{}\n",
                e.how.word(),
                e.name,
                format!("{:?}", e.dims),
                e.dtype,
                num(e.max_change),
                num(e.match_error),
                e.source,
                if e.also.is_empty() {
                    String::new()
                } else {
                    format!(" (also {})", e.also.join(", "))
                }
            );
        }
        if !all && c.constant > 0 {
            s += &format!(
                "  ({} constants left alone; --all lists them)\n",
                c.constant
            );
        }
        match &self.drift {
            None => {}
            Some(d) => match &d.skipped {
                Some(why) => s += &format!("output drift: not measured: {why}\n"),
                None => {
                    s += &format!(
                        "output drift (original vs grafted, {}, seeded inputs {:?}):\n",
                        d.runtime.as_deref().unwrap_or("?"),
                        d.inputs
                    );
                    for o in &d.outputs {
                        s += &format!(
                            "  {:<20} {:?}: max |Δ| {:.3e} (relative {:.3e}), mean |Δ| {:.3e}\n",
                            o.name, o.shape, o.max_abs, o.relative, o.mean_abs
                        );
                    }
                }
            },
        }
        match &self.output {
            Some(o) if self.written => s += &format!("wrote {o}\n"),
            _ => s += "nothing written\n",
        }
        s
    }
}
