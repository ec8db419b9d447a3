//! The named checkpoint layouts, each a detector that either recognises the file or passes.
//! Order matters: more specific layouts come first (see [`NAMED`]); `docs/layouts.md` is the
//! table users read.

use std::collections::HashMap;

use super::{EmaErrorKind, Located, Named, Side, strip_wrappers};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::module;
use crate::checkpoint::sets::WeightSet;
use crate::checkpoint::value::Value;
use crate::convert::scalar_f64;

/// A detector: `Ok(None)` when the layout does not apply, `Err` when it applies but the file is
/// inconsistent (an ambiguity the user must resolve).
pub type Detector = fn(&Checkpoint, &[WeightSet]) -> Result<Option<Located>, EmaErrorKind>;

/// The named layouts in the order they are tried.
pub const NAMED: &[(&str, Detector)] = &[
    ("ultralytics", ultralytics),
    ("mmengine", mmengine),
    ("lightning-weight-averaging", lightning),
    ("timm", timm),
    ("diffusers-ema-model", super::wild::diffusers),
    ("ema-pytorch", super::wild::ema_pytorch),
    ("dino", dino),
    ("ldm-litema", litema),
    ("mmcv-ema-buffers", mmcv),
    ("averaged-model", averaged_model),
    ("prefixed-keys", prefixed),
];

pub(super) fn set<'a>(sets: &'a [WeightSet], path: &str) -> Option<&'a WeightSet> {
    sets.iter().find(|s| s.path == path)
}

fn side(origin: &str, tensors: Named) -> Side {
    Side {
        origin: origin.to_string(),
        tensors,
    }
}

fn root_number(ck: &Checkpoint, key: &str) -> Option<f64> {
    let v = ck.graph.dict_get(&ck.root, key)?;
    v.as_f64()
        .or_else(|| ck.graph.tensor(v).and_then(scalar_f64))
}

pub(super) fn located(
    layout: &'static str,
    rule: impl Into<String>,
    ema: Side,
    raw: Option<Side>,
) -> Located {
    Located {
        layout,
        rule: rule.into(),
        ema,
        raw,
        stripped: false,
        params_only: false,
        integers_from_ema: false,
        updates: None,
        decay: None,
    }
}

/// Ultralytics ≥ 8.1 (`ema` module, `model: None`), Ultralytics 8.0 / YOLOv5/6/7/9 (`model` and
/// `ema` modules), stripped files (`ema: None`, `model` is the EMA), RT-DETR / D-FINE
/// (`ema: {module, updates}`).
fn ultralytics(ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let g = &ck.graph;
    let Some(ema) = g.dict_get(&ck.root, "ema") else {
        return Ok(None);
    };
    let model = g.dict_get(&ck.root, "model");
    let model_is_module = model.is_some_and(|m| module::is_module(g, m));
    let updates = root_number(ck, "updates");
    let mut l = if module::is_module(g, ema) {
        let e = set(sets, "ema").ok_or(EmaErrorKind::NoStateDict("ema"))?;
        let ema_side = side("ema", e.tensors.clone());
        if model_is_module {
            let m = set(sets, "model").ok_or(EmaErrorKind::NoStateDict("model"))?;
            let raw = side("model", m.tensors.clone());
            located(
                "ultralytics",
                "`model` and `ema` modules (Ultralytics 8.0, YOLOv5/6/7/9)",
                ema_side,
                Some(raw),
            )
        } else {
            located(
                "ultralytics",
                "`ema` module with `model: None` (Ultralytics ≥ 8.1)",
                ema_side,
                None,
            )
        }
    } else if *ema == Value::None && model_is_module {
        let m = set(sets, "model").ok_or(EmaErrorKind::NoStateDict("model"))?;
        let mut l = located(
            "ultralytics",
            "stripped checkpoint: `ema: None`, `model` already holds the EMA (strip_optimizer)",
            side("model", m.tensors.clone()),
            None,
        );
        l.stripped = true;
        l
    } else if let Some(m) = set(sets, "ema.module") {
        // RT-DETR / D-FINE: ModelEMA.state_dict() == {module, updates}.
        let raw = set(sets, "model").map(|r| side("model", strip_wrappers(r.tensors.clone())));
        let mut l = located(
            "rtdetr",
            "`ema: {module, updates}` (RT-DETR / D-FINE ModelEMA)",
            side("ema.module", strip_wrappers(m.tensors.clone())),
            raw,
        );
        let updates = g.dict_get(ema, "updates").and_then(Value::as_f64);
        l.updates = updates;
        // RT-DETR's export loads `ema.module` whole, its never-updated num_batches_tracked
        // included (tools/export_onnx.py; fixtures/real/generate.py).
        l.integers_from_ema = true;
        return Ok(Some(l));
    } else {
        return Ok(None);
    };
    l.updates = updates;
    Ok(Some(l))
}

/// timm `CheckpointSaver`: `state_dict` + `state_dict_ema` (older: `model_ema`).
fn timm(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let Some(raw) = set(sets, "state_dict") else {
        return Ok(None);
    };
    let Some((path, ema)) = ["state_dict_ema", "model_ema"]
        .iter()
        .find_map(|p| set(sets, p).map(|s| (*p, s)))
    else {
        return Ok(None);
    };
    Ok(Some(located(
        "timm",
        format!("timm `state_dict` + `{path}`"),
        side(path, strip_wrappers(ema.tensors.clone())),
        Some(side("state_dict", strip_wrappers(raw.tensors.clone()))),
    )))
}

/// The entries of `named` under `prefix`, with the prefix taken off (others dropped).
fn under_prefix(named: &Named, prefix: &str) -> Named {
    named
        .iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
        .collect()
}

/// mmengine `EMAHook`: after its swap, `state_dict` holds the EMA and `ema_state_dict` the raw
/// weights under `module.` (plus `steps`).
fn mmengine(ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let (Some(sd), Some(ema_sd)) = (set(sets, "state_dict"), set(sets, "ema_state_dict")) else {
        return Ok(None);
    };
    if !ema_sd.tensors.iter().any(|(n, _)| n.starts_with("module.")) {
        return Ok(None);
    }
    let raw = under_prefix(&ema_sd.tensors, "module.");
    let steps = ema_sd.get("steps").and_then(scalar_f64);
    let mut l = located(
        "mmengine",
        "mmengine EMAHook: `state_dict` holds the EMA, `ema_state_dict` the raw weights",
        side("state_dict", sd.tensors.clone()),
        Some(side("ema_state_dict", raw)),
    );
    l.updates = steps;
    let _ = ck;
    Ok(Some(l))
}

/// Lightning `WeightAveraging`: `state_dict` holds the average, `current_model_state` the raw.
fn lightning(ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let (Some(sd), Some(cur)) = (set(sets, "state_dict"), set(sets, "current_model_state")) else {
        return Ok(None);
    };
    let mut l = located(
        "lightning-weight-averaging",
        "Lightning WeightAveraging: `state_dict` holds the average, `current_model_state` the raw",
        side("state_dict", sd.tensors.clone()),
        Some(side("current_model_state", cur.tensors.clone())),
    );
    l.updates = set(sets, "averaging_state")
        .and_then(|s| s.get("n_averaged"))
        .and_then(scalar_f64);
    let _ = ck;
    Ok(Some(l))
}

/// DINO: `teacher` is the EMA of `student`.
fn dino(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let (Some(t), Some(s)) = (set(sets, "teacher"), set(sets, "student")) else {
        return Ok(None);
    };
    Ok(Some(located(
        "dino",
        "DINO: `teacher` is the EMA of `student`",
        side("teacher", strip_wrappers(t.tensors.clone())),
        Some(side("student", strip_wrappers(s.tensors.clone()))),
    )))
}

/// Maps EMA names derived from raw names by `derive` back onto the raw names. A derived name
/// shared by two raw names that the EMA actually holds is ambiguous: an error, not a guess.
fn map_derived(
    raw: &Named,
    ema: &HashMap<&str, &crate::tensor::Tensor>,
    derive: impl Fn(&str) -> Option<String>,
) -> Result<Named, EmaErrorKind> {
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut out = Vec::new();
    for (n, _) in raw {
        let Some(d) = derive(n) else { continue };
        let Some(t) = ema.get(d.as_str()) else {
            continue;
        };
        if let Some(prev) = owner.insert(d.clone(), n) {
            return Err(EmaErrorKind::DerivedClash {
                derived: d,
                first: prev.to_string(),
                second: n.clone(),
            });
        }
        out.push((n.clone(), (*t).clone()));
    }
    Ok(out)
}

/// LDM / Stable Diffusion `LitEma`: `model_ema.<name without dots>` beside `model.<name>`, plus
/// `model_ema.decay` and `model_ema.num_updates`.
fn litema(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let Some(s) = sets
        .iter()
        .find(|s| s.get("model_ema.decay").is_some() && s.get("model_ema.num_updates").is_some())
    else {
        return Ok(None);
    };
    let ema: HashMap<&str, &crate::tensor::Tensor> = s
        .tensors
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("model_ema.").map(|k| (k, t)))
        .filter(|(k, _)| *k != "decay" && *k != "num_updates")
        .collect();
    let raw: Named = s
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("model_ema."))
        .cloned()
        .collect();
    let mapped = map_derived(&raw, &ema, |n| {
        n.strip_prefix("model.").map(|rest| rest.replace('.', ""))
    })?;
    let origin = if s.path.is_empty() {
        "model_ema.".to_string()
    } else {
        format!("{}/model_ema.", s.path)
    };
    let mut l = located(
        "ldm-litema",
        "LDM LitEma: `model_ema.<name without dots>` mapped onto `model.<name>`",
        side(&origin, mapped),
        Some(side(
            if s.path.is_empty() { "(root)" } else { &s.path },
            raw,
        )),
    );
    l.params_only = true;
    l.decay = s.get("model_ema.decay").and_then(scalar_f64);
    l.updates = s.get("model_ema.num_updates").and_then(scalar_f64);
    Ok(Some(l))
}

/// mmcv 1.x / mmdet 2.x `EMAHook`: `ema_<name with dots as underscores>` buffers inside the
/// state dict, one per parameter.
fn mmcv(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    for s in sets {
        let ema: HashMap<&str, &crate::tensor::Tensor> = s
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("ema_"))
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        if ema.is_empty() {
            continue;
        }
        let raw: Named = s
            .tensors
            .iter()
            .filter(|(n, _)| !n.starts_with("ema_"))
            .cloned()
            .collect();
        let mapped = map_derived(&raw, &ema, |n| Some(format!("ema_{}", n.replace('.', "_"))))?;
        // Most ema_ buffers must map, or this is a model that merely has ema_-named tensors.
        if mapped.len() * 2 < ema.len() {
            continue;
        }
        let path = if s.path.is_empty() {
            "(root)"
        } else {
            s.path.as_str()
        };
        let buffers = format!("{path}/ema_*");
        // mmdet 2.x's EMA hooks also keep `ema_` copies of the integer buffers, never updated:
        // the side whose num_batches_tracked grew is the trained one. The hook swaps EMA and
        // trained weights at each epoch's end, and YOLOX's configs run it before CheckpointHook,
        // so there the plain keys hold the EMA.
        let integers = mapped.iter().any(|(_, t)| !t.dtype().is_float());
        let mut l = if batches_tracked(&mapped) > batches_tracked(&raw) {
            let plain: HashMap<&str, _> = raw.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let ema: Named = mapped
                .iter()
                .filter_map(|(n, _)| plain.get(n.as_str()).map(|t| (n.clone(), (*t).clone())))
                .collect();
            located(
                "mmcv-ema-buffers",
                "mmdet EMA hook swapped before the save (`ema_*` buffers hold the trained weights, \
                 told by their larger num_batches_tracked): the plain keys are the EMA",
                side(path, ema),
                Some(side(&buffers, mapped)),
            )
        } else {
            located(
                "mmcv-ema-buffers",
                "mmcv EMAHook: `ema_<name_with_underscores>` buffers beside each parameter",
                side(&buffers, mapped),
                Some(side(path, raw)),
            )
        };
        l.params_only = true;
        l.integers_from_ema = integers;
        return Ok(Some(l));
    }
    Ok(None)
}

/// The sum of a state dict's `num_batches_tracked` counters.
fn batches_tracked(t: &Named) -> f64 {
    t.iter()
        .filter(|(n, _)| n.ends_with("num_batches_tracked"))
        .filter_map(|(_, t)| scalar_f64(t))
        .sum()
}

/// A `torch.optim.swa_utils.AveragedModel` state dict: `module.*` plus `n_averaged`.
fn averaged_model(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    let Some(s) = sets.iter().find(|s| {
        s.get("n_averaged").is_some()
            && s.tensors
                .iter()
                .all(|(n, _)| n == "n_averaged" || n.starts_with("module."))
    }) else {
        return Ok(None);
    };
    let ema = under_prefix(&s.tensors, "module.");
    let ema = strip_wrappers(ema);
    let raw = super::matching_raw(sets, &s.path, &ema);
    let path = if s.path.is_empty() {
        "(root)"
    } else {
        s.path.as_str()
    };
    let mut l = located(
        "averaged-model",
        "torch AveragedModel state dict (`module.*` + `n_averaged`)",
        side(path, ema),
        raw,
    );
    l.updates = s.get("n_averaged").and_then(scalar_f64);
    Ok(Some(l))
}

/// Keys carrying an `ema.` / `model_ema.` / `ema_model.` prefix beside the raw keys (typical of
/// safetensors exports of training state).
fn prefixed(_ck: &Checkpoint, sets: &[WeightSet]) -> Result<Option<Located>, EmaErrorKind> {
    for s in sets {
        for prefix in ["ema.", "model_ema.", "ema_model."] {
            let ema: Named = s
                .tensors
                .iter()
                .filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
                .collect();
            if ema.is_empty() {
                continue;
            }
            let ema = strip_wrappers(ema);
            let mut raw: Named = s
                .tensors
                .iter()
                .filter(|(n, _)| !n.starts_with(prefix))
                .cloned()
                .collect();
            // `model.x` beside `model_ema.x`: the shared wrapper name is not the model's.
            if !raw.is_empty() && raw.iter().all(|(n, _)| n.starts_with("model.")) {
                let names: std::collections::HashSet<&str> =
                    ema.iter().map(|(n, _)| n.as_str()).collect();
                let hits = raw
                    .iter()
                    .filter(|(n, _)| names.contains(&n["model.".len()..]))
                    .count();
                if hits * 2 >= raw.len() {
                    for (n, _) in raw.iter_mut() {
                        n.drain(.."model.".len());
                    }
                }
            }
            let path = if s.path.is_empty() {
                String::new()
            } else {
                format!("{}/", s.path)
            };
            let raw_side = (!raw.is_empty()).then(|| {
                side(
                    &format!("{path}(keys without {prefix})"),
                    strip_wrappers(raw),
                )
            });
            return Ok(Some(located(
                "prefixed-keys",
                format!("keys prefixed `{prefix}` hold the EMA"),
                side(&format!("{path}{prefix}"), ema),
                raw_side,
            )));
        }
    }
    Ok(None)
}
