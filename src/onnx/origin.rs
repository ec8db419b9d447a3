//! Which weights an ONNX file was exported from: its initializers compared with what the EMA and
//! the raw weights give once BatchNorm is folded (as every exporter folds it), tensor by tensor.

use serde::Serialize;

use super::graft::{GraftError, GraftFault};
use super::proto::{Attr, ElemType, Model, Node, TensorProto};
use super::{ExportError, ExportOptions, export};
use crate::checkpoint::Checkpoint;
use crate::ema::Located;

/// The finding.
#[derive(Clone, Debug, Serialize)]
pub struct WeightsOrigin {
    /// `ema`, `raw`, `mixed`, `neither` or `unknown`.
    pub verdict: &'static str,
    /// Initializers that had a same-shaped counterpart.
    pub compared: usize,
    /// Of which within tolerance of the EMA.
    pub matching_ema: usize,
    /// Of which within tolerance of the raw weights.
    pub matching_raw: usize,
    /// Of which nearer the EMA than the raw weights.
    pub closer_to_ema: usize,
    /// Of which nearer the raw weights.
    pub closer_to_raw: usize,
    /// Of which within tolerance of the EMA only (not of the raw weights).
    pub only_ema: usize,
    /// Of which within tolerance of the raw weights only: one such tensor is raw weights in
    /// the graph, whatever the others hold.
    pub only_raw: usize,
    /// One sentence for people.
    pub summary: String,
}

impl WeightsOrigin {
    /// Nothing counted yet; the verdict and summary come once every tensor is.
    fn counting() -> WeightsOrigin {
        WeightsOrigin {
            verdict: "unknown",
            compared: 0,
            matching_ema: 0,
            matching_raw: 0,
            closer_to_ema: 0,
            closer_to_raw: 0,
            only_ema: 0,
            only_raw: 0,
            summary: String::new(),
        }
    }
}

fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    match t.elem {
        ElemType::Float => Some(crate::convert::f32s_le(&t.raw).collect()),
        ElemType::Float16 => Some(
            t.raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        ElemType::Uint8 | ElemType::Int32 | ElemType::Int64 | ElemType::Bool => None,
    }
}

/// Float initializers: dimensions and values.
type Pool = Vec<(Vec<i64>, Vec<f32>)>;

/// Our own export of `key`'s weights (initializers only matter, so nothing is encoded).
fn folded(ckpt: &Checkpoint, key: &str) -> Result<Pool, ExportError> {
    let opts = ExportOptions {
        imgsz: None,
        batch: 1,
        dynamic: false,
        nms: None,
        max_det: 300,
        opset: 17,
        half: false,
        module_key: key.to_string(),
        force_external: false,
        external_name: String::new(),
        // The initializers are compared in memory.
        scratch_dir: None,
        end2end: false,
    };
    let e = export(ckpt, &opts)?;
    Ok(e.model
        .initializers
        .iter()
        .filter_map(|t| floats(t).map(|f| (t.dims.clone(), f)))
        .collect())
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += ((x - y) as f64).powi(2);
        n += (y as f64).powi(2);
    }
    d.sqrt() / n.sqrt().max(1e-12)
}

fn nearest(t: &[f32], dims: &[i64], pool: &Pool) -> Option<f64> {
    pool.iter()
        .filter(|(d, v)| d == dims && v.len() == t.len())
        .map(|(_, v)| distance(t, v))
        .min_by(f64::total_cmp)
}

/// The verdict `unknown` for a graph with a subgraph (`If`, `Loop`, `Scan`, …): its nodes and
/// initializers are not read here, and a branch may compute with other weights than the main
/// graph holds, so no count of the main graph's tensors says which weights run.
fn with_subgraph(nodes: &[Node]) -> Option<WeightsOrigin> {
    let n = nodes
        .iter()
        .find(|n| n.attrs.iter().any(|(_, a)| matches!(a, Attr::Graph)))?;
    let mut w = WeightsOrigin::counting();
    w.summary = format!(
        "node '{}' ({}) holds a subgraph, whose weights this check does not read: cannot tell which weights run",
        n.name, n.op
    );
    Some(w)
}

/// Compares `model`'s initializers with the EMA and (when the file keeps them) raw weights.
pub fn weights_origin(
    ckpt: &Checkpoint,
    located: &Located,
    model: &Model,
) -> Result<WeightsOrigin, ExportError> {
    if let Some(w) = with_subgraph(&model.nodes) {
        return Ok(w);
    }
    let ema = folded(ckpt, &located.ema.origin)?;
    let raw = match &located.raw {
        Some(r) => Some(folded(ckpt, &r.origin)?),
        None => None,
    };
    let half = model
        .initializers
        .iter()
        .any(|t| t.elem == ElemType::Float16);
    let tol = if half { 5e-3 } else { 1e-3 };
    let mut w = WeightsOrigin::counting();
    // Only what the graph computes with says which weights it runs: an initializer no node
    // reads proves nothing, however well it matches (review 8 G9). Constant nodes' float
    // tensors are initializers to the reader, so they are compared too.
    let used: std::collections::HashSet<&str> = (model.nodes.iter())
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .collect();
    let initializers = (model.initializers.iter())
        .filter(|t| used.contains(t.name.as_str()))
        .filter_map(|t| floats(t).map(|v| (t.dims.clone(), v)));
    // Small one-dimensional Constant tensors are read as `value_floats`: a bias can be one.
    let constants = (model.nodes.iter().filter(|n| n.op == "Constant"))
        .flat_map(|n| n.attrs.iter())
        .filter_map(|(_, a)| match a {
            Attr::Floats(v) => Some((vec![v.len() as i64], v.clone())),
            _ => None,
        });
    for (dims, v) in initializers.chain(constants) {
        if v.len() < 16 {
            continue;
        }
        let de = nearest(&v, &dims, &ema);
        let dr = raw.as_ref().and_then(|r| nearest(&v, &dims, r));
        if de.is_none() && dr.is_none() {
            continue;
        }
        w.compared += 1;
        let (e, r) = (de.is_some_and(|d| d <= tol), dr.is_some_and(|d| d <= tol));
        w.matching_ema += e as usize;
        w.matching_raw += r as usize;
        w.only_ema += (e && !r) as usize;
        w.only_raw += (r && !e) as usize;
        if let (Some(de), Some(dr)) = (de, dr)
            && (de - dr).abs() > 1e-7
        {
            if de < dr {
                w.closer_to_ema += 1;
            } else {
                w.closer_to_raw += 1;
            }
        }
    }
    w.verdict = verdict(&w);
    w.summary = match w.verdict {
        "unknown" => "no initializer has the shape of a checkpoint weight: cannot tell which weights were exported".to_string(),
        "mixed" => mixed_summary(&w),
        "raw" => format!(
            "this ONNX was exported from the raw weights, not the EMA ({} of {} tensors nearer the raw weights, {} match them)",
            w.closer_to_raw, w.compared, w.matching_raw
        ),
        "ema" => format!(
            "exported from the EMA: {} of {} weight tensors the graph reads match it{}",
            w.matching_ema,
            w.compared,
            if raw.is_some() {
                format!(" ({} nearer the EMA than the raw weights)", w.closer_to_ema)
            } else {
                " (the checkpoint keeps no raw weights to compare)".into()
            }
        ),
        _ => format!(
            "the weights match neither the EMA nor the raw weights ({} of {} match the EMA): another checkpoint?",
            w.matching_ema, w.compared
        ),
    };
    Ok(w)
}

/// For a model whose graph fuse-ema does not build (any exporter, any architecture): each
/// initializer identified as `graft` identifies it — by name, by value, or as a Conv+BatchNorm
/// fold — once against the raw weights and once against the EMA (`ema`: the EMA under the raw
/// names, as `fold` gives it). A tensor only one side explains counts for that side.
pub fn weights_origin_matched(
    located: &Located,
    ema: &crate::ema::Named,
    model: &std::path::Path,
    checkpoint: &std::path::Path,
) -> Result<WeightsOrigin, GraftError> {
    use super::graft::{self, Source, weights::Weights};
    let src = Source::open(model)?;
    if let Some(w) = with_subgraph(&src.scanned.nodes) {
        return Ok(w);
    }
    let replaced = |raw: &crate::ema::Named, avg: &crate::ema::Named| {
        let w = Weights::new(raw, avg)?;
        let plan = graft::plan(&src, &w)?;
        Ok::<_, GraftFault>(
            plan.entries
                .iter()
                .map(|e| e.how.replaced())
                .collect::<Vec<_>>(),
        )
    };
    let replaced = |raw, avg| replaced(raw, avg).map_err(|f| f.at(model, checkpoint));
    let on_ema = replaced(ema, ema)?;
    let on_raw = match &located.raw {
        Some(r) => Some(replaced(&r.tensors, ema)?),
        None => None,
    };
    let mut w = WeightsOrigin::counting();
    for (i, &e) in on_ema.iter().enumerate() {
        let r = on_raw.as_ref().is_some_and(|v| v[i]);
        if !e && !r {
            continue;
        }
        w.compared += 1;
        w.matching_ema += e as usize;
        w.matching_raw += r as usize;
        w.closer_to_ema += (e && !r) as usize;
        w.closer_to_raw += (r && !e) as usize;
        w.only_ema += (e && !r) as usize;
        w.only_raw += (r && !e) as usize;
    }
    w.verdict = verdict(&w);
    w.summary = match w.verdict {
        "unknown" => "no initializer matches the EMA or the raw weights: cannot tell which weights were exported (another checkpoint?)".to_string(),
        "mixed" => mixed_summary(&w),
        "raw" => format!(
            "this ONNX holds the raw weights, not the EMA ({} of {} weight tensors match only the raw weights; `fuse-ema graft` puts the EMA in)",
            w.closer_to_raw, w.compared
        ),
        "ema" => format!(
            "holds the EMA: {} of {} weight tensors match it ({} only the EMA)",
            w.matching_ema, w.compared, w.closer_to_ema
        ),
        _ => format!(
            "the weights match neither the EMA nor the raw weights ({} of {} match the EMA)",
            w.matching_ema, w.compared
        ),
    };
    Ok(w)
}

fn mixed_summary(w: &WeightsOrigin) -> String {
    format!(
        "this ONNX mixes the EMA and the raw weights: {} of {} weight tensors match only the raw weights, {} only the EMA",
        w.only_raw, w.compared, w.only_ema
    )
}

/// The verdict from the counts, one rule for both ways of matching: nothing compared; tensors
/// that only the raw weights explain beside tensors only the EMA explains (a graph partly
/// swapped: however few, they are not the EMA's); more tensors nearer the raw weights than the
/// EMA (never without raw weights: then nothing is nearer them); at least half matching the
/// EMA; else neither.
fn verdict(w: &WeightsOrigin) -> &'static str {
    if w.compared == 0 {
        "unknown"
    } else if w.only_raw > 0 && w.only_ema > 0 {
        "mixed"
    } else if w.only_raw > 0 || w.closer_to_raw > w.closer_to_ema {
        "raw"
    } else if w.matching_ema * 2 >= w.compared {
        "ema"
    } else {
        "neither"
    }
}
