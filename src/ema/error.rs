//! The EMA layer's error: [`EmaError`] (`<file>: <problem>`) over [`EmaErrorKind`], one variant
//! per way choosing or folding an EMA fails.

use std::path::PathBuf;

/// The EMA layer's error: the file, and why no EMA could be chosen.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct EmaError {
    /// The checkpoint.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub kind: EmaErrorKind,
}

/// Why no EMA could be chosen or folded.
#[derive(Debug, thiserror::Error)]
pub enum EmaErrorKind {
    /// No rule found an EMA.
    #[error(
        "no EMA found. Looked for the Ultralytics/YOLOv5 `ema` entry, timm \
         `state_dict_ema`/`model_ema`, mmengine `ema_state_dict`, mmcv `ema_*` buffers, \
         LDM `model_ema.*`, AveragedModel `n_averaged`, Lightning `current_model_state`, \
         RT-DETR `ema.module`, DINO `teacher`, `ema.`/`model_ema.`/`ema_model.` key \
         prefixes, and any `ema`/`shadow`/`swa`/`teacher`/`averaged` set matching the raw \
         weights. The file holds: {}. Name the EMA with --ema SELECTOR.",
        if holds.is_empty() { "no weight sets".to_string() } else { holds.join("; ") }
    )]
    NotFound {
        /// What the file holds (weight sets with sizes).
        holds: Vec<String>,
    },
    /// Several candidates fit; each with the flag that picks it.
    #[error("{} EMA candidates fit; choose one:{}", .0.len(), choices(.0))]
    Ambiguous(Vec<(String, String)>),
    /// A selector for callers that compose their own text (`average`).
    #[error("{0}")]
    Selector(String),
    /// `--ema PATH` names a file with more than one weight set.
    #[error("--ema {}: the file holds {sets} weight sets, not one EMA", file.display())]
    EmaFileSets {
        /// The EMA file.
        file: PathBuf,
        /// Its weight sets.
        sets: usize,
    },
    /// A selector ending in `.` that no tensor name starts with.
    #[error("no tensor name starts with '{prefix}' (weight sets: {available})")]
    NoPrefix {
        /// The selector.
        prefix: String,
        /// The weight sets there are.
        available: String,
    },
    /// A key prefix found in several weight sets.
    #[error(
        "names starting with '{prefix}' appear in several weight sets ({sets}); select the set by path"
    )]
    PrefixInSeveral {
        /// The selector.
        prefix: String,
        /// The sets holding it.
        sets: String,
    },
    /// A selector that names no weight set.
    #[error("no weight set '{name}' (weight sets: {available}; a key prefix must end with '.')")]
    NoSet {
        /// The selector.
        name: String,
        /// The weight sets there are.
        available: String,
    },
    /// A layout's module (`ema`, `model`) without a state dict.
    #[error("the {0} module has no state dict")]
    NoStateDict(&'static str),
    /// An EMA key derived from two raw names.
    #[error("EMA key '{derived}' could belong to '{first}' or '{second}'; choose with --ema/--raw")]
    DerivedClash {
        /// The EMA key.
        derived: String,
        /// One raw name.
        first: String,
        /// The other.
        second: String,
    },
    /// A diffusers `shadow_params` entry that is not a tensor.
    #[error("`{key}.shadow_params[{index}]` is not a tensor")]
    ShadowNotTensor {
        /// The EMAModel state's key.
        key: String,
        /// The entry.
        index: usize,
    },
    /// A diffusers EMAModel state with nothing beside it to name its parameters.
    #[error(
        "`{key}` is a diffusers EMAModel state ({count} shadow parameters, in parameters() \
         order, without names), and nothing beside it names them: save the model's \
         state_dict() with it"
    )]
    ShadowUnnamed {
        /// The EMAModel state's key.
        key: String,
        /// Shadow parameters.
        count: usize,
    },
    /// A diffusers EMAModel state no model beside it fits.
    #[error(
        "`{key}` is a diffusers EMAModel state ({count} shadow parameters without names) \
         and no model beside it has those parameters in that order: {}",
        misfits.join("; ")
    )]
    ShadowMisfit {
        /// The EMAModel state's key.
        key: String,
        /// Shadow parameters.
        count: usize,
        /// Each model beside it and why it does not fit.
        misfits: Vec<String>,
    },
    /// A diffusers EMAModel state several models beside it fit.
    #[error(
        "`{key}` is a diffusers EMAModel state and several models beside it have its \
         parameters ({}); name the one it shadows with --raw",
        models.join(", ")
    )]
    ShadowSeveral {
        /// The EMAModel state's key.
        key: String,
        /// The models that fit (quoted).
        models: Vec<String>,
    },
    /// ema-pytorch's online model and the raw model beside it differ.
    #[error(
        "ema-pytorch: `{path}.online_model.*` and `{beside}` should both be the raw model but \
         differ ({why}); choose one with --raw"
    )]
    OnlineDiffers {
        /// The wrapper's path.
        path: String,
        /// The raw set beside it.
        beside: String,
        /// The first difference.
        why: String,
    },
    /// The EMA and raw weights disagree (names, shapes), and `--allow-missing` was not given.
    #[error(
        "EMA ({ema}) and raw ({raw}) weights disagree — {}. Pass --allow-missing to fold anyway \
         (missing tensors are taken from the raw model), or choose other sets with --ema/--raw",
        parts.join("; ")
    )]
    Mismatch {
        /// The EMA's origin.
        ema: String,
        /// The raw weights' origin.
        raw: String,
        /// Each disagreement.
        parts: Vec<String>,
    },
    /// A tensor whose bytes cannot be read (a compressed storage that does not decompress).
    #[error("`{set}` tensor '{name}' cannot be read: {source}")]
    Unreadable {
        /// The weight set holding it.
        set: String,
        /// The tensor.
        name: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// A module weight set whose path no longer resolves in the graph it was found in.
    #[error("`{0}` vanished")]
    Vanished(String),
    /// The checkpoint's module tree is broken.
    #[error("{0}")]
    Module(#[from] crate::checkpoint::module::ModuleError),
}

fn choices(c: &[(String, String)]) -> String {
    c.iter()
        .map(|(what, flag)| format!(" [{what}: {flag}]"))
        .collect()
}
