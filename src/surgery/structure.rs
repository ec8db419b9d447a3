//! `--keep-structure`: the container as it is, with the EMA where the framework loads weights
//! from, the other copy of the weights removed, and optimizer / scheduler state removed unless
//! `--keep-optimizer`.
//!
//! - timm (`CheckpointSaver`): `state_dict` ← `state_dict_ema` (older files: `model_ema`), as
//!   timm's `clean_checkpoint.py --use-ema` chooses; `state_dict_ema` removed.
//! - mmengine (`EMAHook`): `before_save_checkpoint` already swapped the EMA into `state_dict`
//!   and the raw weights into `ema_state_dict` (under `module.`, with `steps`); `state_dict` stays
//!   and `ema_state_dict` is removed — kept, a resuming `EMAHook` would swap the raw weights back.
//! - Lightning (`WeightAveraging`): `state_dict` holds the average; `current_model_state` and
//!   `averaging_state` are removed, so Lightning loads the average as the model and no callback
//!   puts the raw weights back.

use std::collections::HashMap;

use super::{EditFault, Plan, StripOptions, StripReport, dict_entries, keys};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::value::Node;

/// One framework's edit: the key the EMA moves into (and from), the other copy of the weights,
/// the optimizer / scheduler keys, and the rule in words.
struct Rule {
    moved: Option<(&'static str, &'static str)>,
    other_side: &'static [&'static str],
    optimizer: &'static [&'static str],
    words: &'static str,
}

/// Plans `--keep-structure` for a timm, mmengine or Lightning checkpoint.
pub fn plan(ck: &mut Checkpoint, layout: &str, opts: &StripOptions) -> Result<Plan, EditFault> {
    if opts.dtype.is_some() {
        return Err(EditFault::DtypeKeepsStructure);
    }
    let g = &mut ck.graph;
    let mut entries = dict_entries(g, &ck.root, "the checkpoint")?;
    let mut report = StripReport {
        layout: layout.to_string(),
        ..StripReport::default()
    };
    let rule = match layout {
        "timm" => {
            let from = ["state_dict_ema", "model_ema"]
                .into_iter()
                .find(|k| entries.iter().any(|(e, _)| e.as_str() == Some(*k)))
                .ok_or(EditFault::NoTimmEma)?;
            Rule {
                moved: Some(("state_dict", from)),
                other_side: &["state_dict_ema", "model_ema"],
                optimizer: &["optimizer", "amp_scaler"],
                words: "timm: state_dict ← state_dict_ema (clean_checkpoint.py --use-ema)",
            }
        }
        "mmengine" => Rule {
            moved: None,
            other_side: &["ema_state_dict"],
            optimizer: &["optimizer", "param_schedulers"],
            words: "mmengine EMAHook: state_dict already holds the EMA (swapped in at save); \
                    ema_state_dict (the raw weights) removed so no resume swaps them back",
        },
        _ => Rule {
            moved: None,
            other_side: &["current_model_state", "averaging_state"],
            optimizer: &["optimizer_states", "lr_schedulers"],
            words: "Lightning WeightAveraging: state_dict holds the average; current_model_state \
                    and averaging_state removed",
        },
    };
    let Rule {
        moved,
        other_side: removed_side,
        optimizer: optim,
        words: rules,
    } = rule;
    report.rules = rules.to_string();
    if let Some((to, from)) = moved {
        let v = entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(from))
            .map(|(_, v)| v.clone())
            .ok_or(EditFault::Missing(from))?;
        let slot = entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(to))
            .ok_or(EditFault::Missing(to))?;
        slot.1 = v;
        report.moved.push(format!("{to} ← {from}"));
    } else {
        report.moved.push("state_dict (already the EMA)".into());
    }
    let mut drop: Vec<&str> = removed_side.to_vec();
    if !opts.keep_optimizer {
        drop.extend_from_slice(optim);
    }
    let before = keys(&entries);
    entries.retain(|(k, _)| !k.as_str().is_some_and(|k| drop.contains(&k)));
    let after = keys(&entries);
    report.removed = before.into_iter().filter(|k| !after.contains(k)).collect();
    let made_by = ck.root.node().and_then(|id| g.made_by(id)).cloned();
    let root = g.add(Node::Dict(entries));
    if let Some(c) = made_by {
        g.set_made_by(&root, &c);
    }
    Ok(Plan {
        root,
        convert: HashMap::new(),
        report,
    })
}
