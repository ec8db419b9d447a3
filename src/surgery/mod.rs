//! Checkpoint surgery: `strip` turns a training checkpoint into its deployable form by editing
//! the decoded object graph and writing it again ([`crate::write::repickle`]).
//!
//! - Ultralytics / YOLOv5 ([`ultralytics`]): what that release's `strip_optimizer` writes — the
//!   EMA in `model`, f16, `requires_grad` off, training state set to `None`.
//! - timm, mmengine, Lightning ([`structure`], `--keep-structure`): the container as it is, with
//!   the EMA where the framework loads its weights from and optimizer state dropped.
//!
//! Edits add nodes to the graph or replace values in dicts; nothing is executed and no class is
//! looked up. Tensors are re-typed through a conversion map the writer applies while streaming.

pub mod structure;
pub mod ultralytics;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::checkpoint::value::{Graph, Node, NodeId, Value};
use crate::tensor::DType;

/// What `strip` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct StripOptions {
    /// Keep the container (timm, mmengine, Lightning) and move the EMA into place.
    pub keep_structure: bool,
    /// With `keep_structure`, keep optimizer and scheduler state.
    pub keep_optimizer: bool,
    /// dtype of the model's floating parameters and buffers (Ultralytics: f16 unless f32 asked).
    pub dtype: Option<DType>,
}

/// An edited graph ready to write: the new root and the tensors to convert.
#[derive(Debug)]
pub struct Plan {
    /// The value to pickle as the file's top-level object.
    pub root: Value,
    /// Tensors (by node) written in another dtype.
    pub convert: HashMap<NodeId, DType>,
    /// What was done, for the text and JSON reports.
    pub report: StripReport,
}

/// What `strip` did, as reported (`--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StripReport {
    /// The input.
    pub file: String,
    /// The output.
    pub output: String,
    /// The EMA layout found (`ultralytics`, `timm`, `mmengine`, `lightning-weight-averaging`).
    pub layout: String,
    /// The framework release the rules follow (Ultralytics: the checkpoint's `version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Which `strip_optimizer` (or structure rule) was reproduced, in words.
    pub rules: String,
    /// Where the weights now come from, e.g. `model ← ema`.
    pub moved: Vec<String>,
    /// Top-level keys set to `None` (as `strip_optimizer` does).
    pub cleared: Vec<String>,
    /// Top-level keys removed.
    pub removed: Vec<String>,
    /// Other edits, in words (`model.args → dict`, `train_args: 3 keys dropped`).
    pub edits: Vec<String>,
    /// dtype of the model's floating tensors, when changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Tensors converted to that dtype.
    pub converted: usize,
    /// Storages written.
    pub storages: usize,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
    /// Input size in bytes.
    pub input_bytes: u64,
    /// Output size in bytes.
    pub output_bytes: u64,
}

/// Why a checkpoint cannot be stripped.
#[derive(Debug, thiserror::Error)]
pub enum SurgeryError {
    /// No EMA (or no single one) could be found.
    #[error(transparent)]
    Ema(#[from] crate::ema::EmaError),
    /// The layout is known but its objects are not as its framework writes them, or it is a
    /// layout `strip` does not edit.
    #[error("{}: {fault}", path.display())]
    Edit {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        #[source]
        fault: EditFault,
    },
}

impl SurgeryError {
    fn new(ck: &Checkpoint, fault: EditFault) -> SurgeryError {
        SurgeryError::Edit {
            path: ck.path.clone(),
            fault,
        }
    }
}

/// Why `strip` does not edit a checkpoint: one variant per refusal.
#[derive(Debug, thiserror::Error)]
pub enum EditFault {
    /// `--keep-structure` on an Ultralytics checkpoint.
    #[error(
        "an Ultralytics checkpoint is stripped as its release's strip_optimizer does; --keep-structure is for timm, mmengine and Lightning checkpoints"
    )]
    UltralyticsKeepsNoStructure,
    /// A timm, mmengine or Lightning checkpoint without `--keep-structure`.
    #[error(
        "a {0} checkpoint is not an Ultralytics one; add --keep-structure to keep its container and put the EMA where {0} loads its weights from"
    )]
    NeedsKeepStructure(&'static str),
    /// A layout `strip` does not edit.
    #[error(
        "strip knows Ultralytics/YOLOv5, timm, mmengine and Lightning checkpoints; this one has the `{0}` layout (use `fuse-ema fold` to write its EMA as a state dict)"
    )]
    UnknownLayout(&'static str),
    /// `--dtype` with `--keep-structure`.
    #[error(
        "--dtype applies to Ultralytics checkpoints; --keep-structure keeps the tensors as they are"
    )]
    DtypeKeepsStructure,
    /// An entry that should be a dict is not (its role).
    #[error("{0} is not a dict")]
    NotADict(&'static str),
    /// An entry the layout's rule moves is absent.
    #[error("no `{0}`")]
    Missing(&'static str),
    /// A timm checkpoint without its EMA entry.
    #[error("timm checkpoint without state_dict_ema")]
    NoTimmEma,
    /// Neither `ema` nor `model` holds a module.
    #[error("neither `ema` nor `model` holds a module")]
    NoModule,
    /// A distillation checkpoint, whose student fuse-ema does not unwrap.
    #[error(
        "a DistillationModel checkpoint (strip_optimizer keeps its student, which fuse-ema does not unwrap)"
    )]
    Distillation,
    /// No `version` entry to choose the release's rules by.
    #[error(
        "no `version` entry: cannot tell which Ultralytics release's strip_optimizer to follow"
    )]
    NoVersion,
    /// A `version` that is not a release number.
    #[error("version {0:?} is not an Ultralytics release number")]
    BadVersion(String),
    /// A major release other than 8.
    #[error("version {0}: fuse-ema knows the strip_optimizer of Ultralytics 8.0 to 8.4")]
    UnknownRelease(String),
    /// `model.args` that `dict()` cannot read.
    #[error("model.args is neither a dict nor a namespace (dict() of it fails)")]
    ArgsNotDict,
    /// The built-in defaults table does not parse.
    #[error("built-in defaults: {0}")]
    DefaultsJson(#[source] serde_json::Error),
    /// The built-in defaults table lacks a release.
    #[error("no built-in defaults for Ultralytics 8.{0}")]
    NoDefaults(u32),
    /// The built-in defaults table is not the expected shape.
    #[error("built-in defaults are malformed")]
    MalformedDefaults,
}

/// Plans the edits for `ck`: finds its layout and applies the matching rules to its graph.
pub fn plan(ck: &mut Checkpoint, opts: &StripOptions) -> Result<Plan, SurgeryError> {
    let located = crate::ema::locate(ck, &crate::ema::Selectors::default())?;
    let layout = located.layout;
    match layout {
        "ultralytics" => {
            if opts.keep_structure {
                return Err(SurgeryError::new(
                    ck,
                    EditFault::UltralyticsKeepsNoStructure,
                ));
            }
            ultralytics::plan(ck, opts).map_err(|f| SurgeryError::new(ck, f))
        }
        "timm" | "mmengine" | "lightning-weight-averaging" => {
            if !opts.keep_structure {
                return Err(SurgeryError::new(ck, EditFault::NeedsKeepStructure(layout)));
            }
            structure::plan(ck, layout, opts).map_err(|f| SurgeryError::new(ck, f))
        }
        other => Err(SurgeryError::new(ck, EditFault::UnknownLayout(other))),
    }
}

/// The entries of the dict behind `v`, or an error naming `what`.
pub(crate) fn dict_entries(
    g: &Graph,
    v: &Value,
    what: &'static str,
) -> Result<Vec<(Value, Value)>, EditFault> {
    g.dict(v)
        .map(<[_]>::to_vec)
        .ok_or(EditFault::NotADict(what))
}

/// The dict node holding an object's attributes (its BUILD state, or the first half of a
/// `(dict, slots)` state).
pub(crate) fn attrs_node(g: &Graph, obj: &Value) -> Option<NodeId> {
    let state = g.object(obj)?.state.as_ref()?;
    if g.dict(state).is_some() {
        return state.node();
    }
    let pair = g.seq(state)?;
    let first = pair.first()?;
    g.dict(first).and(first.node())
}

/// Replaces (or appends) `key` in the dict node `id`.
pub(crate) fn set_key(g: &mut Graph, id: NodeId, key: &str, value: Value) {
    if let Node::Dict(entries) = g.node_mut(id) {
        match entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            Some(slot) => slot.1 = value,
            None => entries.push((Value::Str(key.into()), value)),
        }
    }
}

/// The string keys of a dict's entries.
pub(crate) fn keys(entries: &[(Value, Value)]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|(k, _)| k.as_str().map(str::to_string))
        .collect()
}

/// Puts `tensors` (a state dict by name, such as `average`'s result) in place of the weights of
/// the module a [`plan`] made the checkpoint's `model`: every entry of that module's
/// `state_dict()` must be in `tensors` with the same shape and dtype, and every tensor of
/// `tensors` must be one of them. Each replaced tensor keeps its node (so the plan's dtype
/// conversion and `requires_grad` marks still apply) and whether it was a parameter. Returns
/// how many entries were replaced.
pub fn replace_model_weights(
    g: &mut Graph,
    plan: &Plan,
    tensors: &crate::ema::Named,
) -> Result<usize, ReplaceError> {
    let model = g
        .dict_get(&plan.root, "model")
        .cloned()
        .ok_or(ReplaceError::NoModel)?;
    let entries = crate::checkpoint::module::state_dict(g, &model)?;
    let by_name: HashMap<&str, &crate::tensor::Tensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let prefix = fresh_prefix(g, "average");
    let mut used = std::collections::HashSet::new();
    for (name, v) in &entries {
        let new = by_name
            .get(name.as_str())
            .ok_or_else(|| ReplaceError::Missing(name.clone()))?;
        let Some(id) = v.node() else {
            return Err(ReplaceError::NotATensor(name.clone()));
        };
        let Node::Tensor(old) = g.node_mut(id) else {
            return Err(ReplaceError::NotATensor(name.clone()));
        };
        if old.shape() != new.shape() || old.dtype() != new.dtype() {
            return Err(ReplaceError::Differs {
                name: name.clone(),
                model: format!("{} {:?}", old.dtype(), old.shape()),
                average: format!("{} {:?}", new.dtype(), new.shape()),
            });
        }
        // Its own storage key, under a prefix no storage of the checkpoint has.
        let t = (*new)
            .clone()
            .with_parameter(old.is_parameter())
            .with_storage_key(format!("{prefix}{name}").into());
        **old = t;
        used.insert(name.as_str());
    }
    if let Some((extra, _)) = tensors.iter().find(|(n, _)| !used.contains(n.as_str())) {
        return Err(ReplaceError::Extra(extra.clone()));
    }
    Ok(entries.len())
}

/// `base/`, or `base2/`, `base3/`, … : the first prefix that no storage key of `g` starts with.
/// Checkpoints name their storages "0", "1", …, but any string is a legal record name.
fn fresh_prefix(g: &Graph, base: &str) -> String {
    let keys: Vec<std::sync::Arc<str>> = (0..g.len())
        .filter_map(
            |i| match g.node(crate::checkpoint::value::NodeId(i as u32)) {
                Node::Tensor(t) | Node::Storage(t) => Some(t.storage_key().clone()),
                _ => None,
            },
        )
        .collect();
    (1..)
        .map(|n| match n {
            1 => format!("{base}/"),
            n => format!("{base}{n}/"),
        })
        .find(|p| !keys.iter().any(|k| k.starts_with(p.as_str())))
        .unwrap_or_else(|| format!("{base}/"))
}

/// Why [`replace_model_weights`] cannot put the given tensors into the stripped model.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The stripped root has no `model` entry.
    #[error("the stripped checkpoint has no `model`")]
    NoModel,
    /// The model's state dict cannot be listed.
    #[error(transparent)]
    Module(#[from] crate::checkpoint::module::ModuleError),
    /// An entry of the model's state dict is not among the tensors.
    #[error("the model's `{0}` is not among the averaged tensors")]
    Missing(String),
    /// An entry of the model's state dict is not a tensor node.
    #[error("the model's `{0}` is not a tensor")]
    NotATensor(String),
    /// An entry's shape or dtype differs from the tensor given for it.
    #[error("`{name}` is {model} in the model but {average} in the average")]
    Differs {
        /// The entry.
        name: String,
        /// Its dtype and shape in the model.
        model: String,
        /// Its dtype and shape among the tensors.
        average: String,
    },
    /// A tensor given is not in the model's state dict.
    #[error("the averaged `{0}` is not in the model's state dict")]
    Extra(String),
}
