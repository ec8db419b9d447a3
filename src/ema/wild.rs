//! EMA layouts written by general-purpose EMA libraries rather than a training framework:
//! diffusers `EMAModel` (a nameless list of shadow parameters) and lucidrains `ema-pytorch`
//! (`ema_model.*` beside `online_model.*` in one state dict). `docs/layouts.md` has their rows.

use super::{EmaErrorKind, Located, Named, Side, strip_wrappers};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::module;
use crate::checkpoint::sets::WeightSet;
use crate::checkpoint::value::Value;
use crate::convert::scalar_f64;
use crate::tensor::Tensor;

/// Buffer names (the last component) that a bare state dict holds beside parameters: BatchNorm
/// statistics, and the buffers diffusers and transformers models register persistently.
const BUFFER_NAMES: &[&str] = &[
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "position_ids",
    "token_type_ids",
    "inv_freq",
];

fn side(origin: &str, tensors: Named) -> Side {
    Side {
        origin: origin.to_string(),
        tensors,
    }
}

/// diffusers `EMAModel.state_dict()` under a top-level key: `shadow_params` is a list of tensors
/// in the shadowed model's `parameters()` order, without names, beside `decay`,
/// `optimization_step`, … The names come from the model it shadows, found beside it: a pickled
/// module (its `_parameters`, in `named_parameters()` order, shared ones once) or a state dict
/// (its entries minus buffers). Every shape must match in order; anything else is an error that
/// names the first disagreeing index.
pub(super) fn diffusers(
    ck: &Checkpoint,
    sets: &[WeightSet],
) -> Result<Option<Located>, EmaErrorKind> {
    let g = &ck.graph;
    let Some(entries) = g.dict(&ck.root) else {
        return Ok(None);
    };
    let Some((key, state)) = entries.iter().find_map(|(k, v)| {
        let k = k.as_str()?;
        let shadow = g.dict_get(v, "shadow_params")?;
        g.seq(shadow)?;
        (g.dict_get(v, "decay").is_some() || g.dict_get(v, "optimization_step").is_some())
            .then_some((k, v))
    }) else {
        return Ok(None);
    };
    let items = g
        .dict_get(state, "shadow_params")
        .and_then(|s| g.seq(s))
        .unwrap_or_default();
    let mut shadow = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let t = g.tensor(v).ok_or_else(|| EmaErrorKind::ShadowNotTensor {
            key: key.to_string(),
            index: i,
        })?;
        shadow.push(t.clone());
    }
    // The model it shadows: every other weight set whose parameters match, shape for shape.
    let mut fits = Vec::new();
    let mut misfits = Vec::new();
    for s in sets.iter().filter(|s| s.path != key) {
        let params = parameters(ck, s)?;
        match first_disagreement(&shadow, &params) {
            None => fits.push((s, params)),
            Some(why) => misfits.push(format!("`{}`: {why}", s.path)),
        }
    }
    let (raw_set, params) = match fits.len() {
        1 => fits.remove(0),
        0 if misfits.is_empty() => {
            return Err(EmaErrorKind::ShadowUnnamed {
                key: key.to_string(),
                count: shadow.len(),
            });
        }
        0 => {
            return Err(EmaErrorKind::ShadowMisfit {
                key: key.to_string(),
                count: shadow.len(),
                misfits,
            });
        }
        _ => {
            return Err(EmaErrorKind::ShadowSeveral {
                key: key.to_string(),
                models: fits.iter().map(|(s, _)| format!("`{}`", s.path)).collect(),
            });
        }
    };
    let ema: Named = params
        .iter()
        .zip(shadow)
        .map(|((name, _), t)| (name.clone(), t))
        .collect();
    let mut l = super::layouts::located(
        "diffusers-ema-model",
        format!(
            "diffusers EMAModel: `{key}.shadow_params` named by `{}`'s parameters in order",
            raw_set.path
        ),
        side(&format!("{key}.shadow_params"), strip_wrappers(ema)),
        Some(side(&raw_set.path, strip_wrappers(raw_set.tensors.clone()))),
    );
    // EMAModel averages parameters only: buffers come from the model.
    l.params_only = true;
    l.decay = g.dict_get(state, "decay").and_then(Value::as_f64);
    l.updates = g
        .dict_get(state, "optimization_step")
        .and_then(Value::as_f64);
    Ok(Some(l))
}

/// The parameters of a weight set in `parameters()` order: from the module tree when the set is
/// a pickled module (buffers known exactly), else its entries minus [`BUFFER_NAMES`].
fn parameters(ck: &Checkpoint, s: &WeightSet) -> Result<Vec<(String, Tensor)>, EmaErrorKind> {
    if s.class.is_some() {
        let v = lookup(ck, &s.path).ok_or_else(|| EmaErrorKind::Vanished(s.path.clone()))?;
        let names = module::parameter_names(&ck.graph, v)?;
        return Ok(names
            .into_iter()
            .filter_map(|n| s.get(&n).map(|t| (n, t.clone())))
            .collect());
    }
    Ok(s.tensors
        .iter()
        .filter(|(n, _)| {
            let last = n.rsplit('.').next().unwrap_or(n);
            !BUFFER_NAMES.contains(&last)
        })
        .cloned()
        .collect())
}

/// The value at a dotted path of top-level keys (`model`, `ema.module`).
fn lookup<'a>(ck: &'a Checkpoint, path: &str) -> Option<&'a Value> {
    let mut v = &ck.root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = ck.graph.dict_get(v, part)?;
    }
    Some(v)
}

/// Why `params` cannot be what `shadow` shadows, naming the first index that disagrees.
fn first_disagreement(shadow: &[Tensor], params: &[(String, Tensor)]) -> Option<String> {
    for (i, t) in shadow.iter().enumerate() {
        match params.get(i) {
            None => {
                return Some(format!(
                    "{} parameters for {} shadow tensors (index {i} has no parameter)",
                    params.len(),
                    shadow.len()
                ));
            }
            Some((name, p)) if p.shape() != t.shape() => {
                return Some(format!(
                    "index {i}: shadow shape {:?} but `{name}` is {:?}",
                    t.shape(),
                    p.shape()
                ));
            }
            Some(_) => {}
        }
    }
    (params.len() > shadow.len()).then(|| {
        format!(
            "{} parameters for {} shadow tensors (`{}` has no shadow)",
            params.len(),
            shadow.len(),
            params[shadow.len()].0
        )
    })
}

/// lucidrains `ema-pytorch`: the `EMA` wrapper's state dict holds `ema_model.*` (the EMA),
/// `online_model.*` (the raw model, when it was included) and the `initted` / `step` buffers.
/// The raw weights may also sit beside it as a plain state dict (`model`); when both are there
/// they must hold the same tensors.
pub(super) fn ema_pytorch(
    _ck: &Checkpoint,
    sets: &[WeightSet],
) -> Result<Option<Located>, EmaErrorKind> {
    let Some(s) = sets.iter().find(|s| {
        s.get("initted").is_some() && s.tensors.iter().any(|(n, _)| n.starts_with("ema_model."))
    }) else {
        return Ok(None);
    };
    let under = |prefix: &str| -> Named {
        s.tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
            .collect()
    };
    let ema = strip_wrappers(under("ema_model."));
    let online = strip_wrappers(under("online_model."));
    let beside = super::matching_raw(sets, &s.path, &ema);
    let raw = match (online.is_empty(), beside) {
        (true, beside) => beside,
        (false, None) => Some(side(&format!("{}.online_model", s.path), online)),
        (false, Some(b)) => {
            let online_origin = format!("{}.online_model", s.path);
            if let Some(why) = disagree((&online_origin, &online), (&b.origin, &b.tensors))? {
                return Err(EmaErrorKind::OnlineDiffers {
                    path: s.path.clone(),
                    beside: b.origin.clone(),
                    why,
                });
            }
            Some(b)
        }
    };
    let mut l = super::layouts::located(
        "ema-pytorch",
        format!("ema-pytorch EMA wrapper: `{}.ema_model.*`", s.path),
        side(&format!("{}.ema_model.", s.path), ema),
        raw,
    );
    l.updates = s.get("step").and_then(scalar_f64);
    // The EMA is a whole model copy: what `ema.ema_model` loads includes its own integer
    // buffers, which ema-pytorch never updates.
    l.integers_from_ema = true;
    Ok(Some(l))
}

/// The first way two raw copies (each with its origin, for errors) differ: a name only one has,
/// a shape, or a value; an error when a tensor's bytes cannot be read.
fn disagree(
    (a_origin, a): (&str, &Named),
    (b_origin, b): (&str, &Named),
) -> Result<Option<String>, EmaErrorKind> {
    let by: std::collections::HashMap<&str, &Tensor> =
        b.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if a.len() != b.len() {
        return Ok(Some(format!("{} vs {} tensors", a.len(), b.len())));
    }
    let unreadable = |set: &str, n: &str| {
        let (set, name) = (set.to_string(), n.to_string());
        move |source| EmaErrorKind::Unreadable { set, name, source }
    };
    // Values compared as numbers (-0.0 equals 0.0, as torch.equal has it); a dtype without
    // real values (complex, f8) as bytes.
    let read =
        |set: &str, n: &str, t: &Tensor| -> Result<Result<Vec<f64>, Vec<u8>>, EmaErrorKind> {
            match crate::convert::to_f64_vec(t).map_err(unreadable(set, n))? {
                Some(v) => Ok(Ok(v)),
                None => Ok(Err(t
                    .to_contiguous_bytes()
                    .map_err(unreadable(set, n))?
                    .to_vec())),
            }
        };
    for (n, t) in a {
        let Some(o) = by.get(n.as_str()) else {
            return Ok(Some(format!("`{n}` only in one")));
        };
        if o.shape() != t.shape() || o.dtype() != t.dtype() {
            return Ok(Some(format!("`{n}`: {:?} vs {:?}", t.shape(), o.shape())));
        }
        // Same dtype on both sides: either both have real values or neither has.
        if read(a_origin, n, t)? != read(b_origin, n, o)? {
            return Ok(Some(format!("`{n}` holds other values")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor whose storage does not decompress is an error naming the set and the tensor,
    /// with the reader's error as its source, not a difference and not equal.
    #[test]
    fn an_unreadable_tensor_is_an_error_not_a_difference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/hostile/files/deflate-bomb-512m.pt");
        let ck = crate::io::open(&path).unwrap();
        let g = &ck.graph;
        let sd = g.dict_get(&ck.root, "state_dict").unwrap();
        let bomb = g.tensor(g.dict_get(sd, "weight").unwrap()).unwrap().clone();
        let a: Named = vec![("w".into(), bomb.clone())];
        let b: Named = vec![("w".into(), bomb)];
        let e = disagree(("m.online_model", &a), ("model", &b)).unwrap_err();
        let EmaErrorKind::Unreadable { set, name, source } = &e else {
            panic!("{e}")
        };
        assert_eq!((set.as_str(), name.as_str()), ("m.online_model", "w"));
        assert!(source.to_string().contains("decompression bomb"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
