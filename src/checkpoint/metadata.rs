//! The metadata training code stores beside the weights (epoch, versions, training arguments,
//! class names), read into JSON for reports.

use serde_json::{Map, Value as Json, json};

use super::Checkpoint;
use super::module;
use super::value::{Graph, Node, Value};

/// Containers deeper than this, or longer than [`MAX_ITEMS`], are summarised, not expanded.
const MAX_JSON_DEPTH: usize = 6;
const MAX_ITEMS: usize = 256;
/// Values emitted for one conversion at most: shared references (a memo bomb) cannot make the
/// output grow beyond this however they are arranged.
const MAX_EMITTED: usize = 20_000;

/// Converts a value to JSON: scalars as themselves, containers expanded up to a bounded depth and
/// size, tensors and objects as short descriptions.
pub fn to_json(graph: &Graph, v: &Value) -> Json {
    let mut budget = MAX_EMITTED;
    to_json_at(graph, v, 0, &mut budget)
}

fn to_json_at(graph: &Graph, v: &Value, depth: usize, budget: &mut usize) -> Json {
    if *budget == 0 {
        return json!("<truncated>");
    }
    *budget -= 1;
    match v {
        Value::None => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::BigInt(s) => json!(s.to_string()),
        Value::Float(f) if f.is_finite() => json!(f),
        Value::Float(f) => json!(f.to_string()),
        Value::Str(s) => json!(s.to_string()),
        Value::Node(_) => {
            let node = graph.get(v).expect("node value refers to the graph");
            if depth >= MAX_JSON_DEPTH {
                return json!(format!("<{}>", node.kind()));
            }
            match node {
                Node::Tuple(items)
                | Node::List(items)
                | Node::Set(items)
                | Node::FrozenSet(items) => {
                    if items.len() > MAX_ITEMS {
                        return json!(format!("<{} of {} items>", node.kind(), items.len()));
                    }
                    Json::Array(
                        items
                            .iter()
                            .map(|i| to_json_at(graph, i, depth + 1, budget))
                            .collect(),
                    )
                }
                Node::Dict(entries) => {
                    if entries.len() > MAX_ITEMS {
                        return json!(format!("<dict of {} items>", entries.len()));
                    }
                    let mut m = Map::new();
                    for (k, val) in entries {
                        m.insert(
                            super::sets::key_text(k),
                            to_json_at(graph, val, depth + 1, budget),
                        );
                    }
                    Json::Object(m)
                }
                Node::Bytes(b) => json!(format!("<{} bytes>", b.len())),
                Node::Global(g) => json!(format!("<global {}>", g.dotted())),
                Node::Tensor(t) | Node::Storage(t) => {
                    if let Some(x) = crate::convert::scalar_f64(t) {
                        return json!(x);
                    }
                    json!(format!("<tensor {} {:?}>", t.dtype(), t.shape()))
                }
                Node::Object(o) => {
                    // Namespaces (argparse, Ultralytics IterableSimpleNamespace) are plain data.
                    if let Some(attrs) = graph.attrs(v)
                        && !module::is_module(graph, v)
                    {
                        let mut m = Map::new();
                        for (k, val) in attrs.iter().take(MAX_ITEMS) {
                            m.insert(
                                super::sets::key_text(k),
                                to_json_at(graph, val, depth + 1, budget),
                            );
                        }
                        return Json::Object(m);
                    }
                    let class = o.class.as_ref().map(|g| g.dotted()).unwrap_or_default();
                    json!(format!("<object {class}>"))
                }
            }
        }
    }
}

/// Which training library wrote the checkpoint, judged from its keys and classes.
pub fn framework(ckpt: &Checkpoint) -> Option<&'static str> {
    let g = &ckpt.graph;
    let has = |k: &str| g.dict_get(&ckpt.root, k).is_some();
    let module_class = ["ema", "model"]
        .iter()
        .filter_map(|k| g.dict_get(&ckpt.root, k))
        .find_map(|m| module::class_name(g, m));
    if let Some(c) = &module_class {
        if c.starts_with("ultralytics.") {
            return Some("ultralytics");
        }
        // The classic repository's classes, or the pip package's copy of them.
        if c.starts_with("models.yolo.") || c.starts_with("yolov5.models.yolo.") {
            return Some("yolov5");
        }
    }
    if has("train_args") {
        return Some("ultralytics");
    }
    if has("pytorch-lightning_version") || has("lightning_version") {
        return Some("lightning");
    }
    if let Some(meta) = g.dict_get(&ckpt.root, "meta")
        && (g.dict_get(meta, "mmengine_version").is_some()
            || g.dict_get(meta, "mmcv_version").is_some())
    {
        return Some("mmengine");
    }
    if has("arch") && has("state_dict") {
        return Some("timm");
    }
    None
}

/// Metadata worth showing: the framework, every top-level scalar, and the known nested records
/// (Ultralytics `train_args` and class `names`, mmengine `meta`, the safetensors header metadata).
pub fn metadata(ckpt: &Checkpoint) -> Map<String, Json> {
    let g = &ckpt.graph;
    let mut m = Map::new();
    if let Some(f) = framework(ckpt) {
        m.insert("framework".into(), json!(f));
    }
    if let Some(entries) = g.dict(&ckpt.root) {
        for (k, v) in entries {
            let scalar = matches!(
                v,
                Value::Bool(_) | Value::Int(_) | Value::BigInt(_) | Value::Float(_) | Value::Str(_)
            );
            if scalar {
                m.insert(super::sets::key_text(k), to_json(g, v));
            }
        }
    }
    if let Some(args) = g.dict_get(&ckpt.root, "train_args") {
        let full = to_json(g, args);
        let keys = [
            "task",
            "mode",
            "model",
            "data",
            "epochs",
            "imgsz",
            "batch",
            "optimizer",
        ];
        let summary: Map<String, Json> = keys
            .iter()
            .filter_map(|k| full.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        m.insert("train_args".into(), Json::Object(summary));
    }
    if let Some(meta) = g.dict_get(&ckpt.root, "meta") {
        let mut sub = Map::new();
        for (k, v) in g.dict(meta).unwrap_or_default() {
            if !matches!(v, Value::Node(_)) {
                sub.insert(super::sets::key_text(k), to_json(g, v));
            }
        }
        m.insert("meta".into(), Json::Object(sub));
    }
    for key in ["ema", "model"] {
        if let Some(model) = g.dict_get(&ckpt.root, key)
            && let Some(names) = g.attr(model, "names")
        {
            m.insert("names".into(), to_json(g, names));
            break;
        }
    }
    if !ckpt.info.metadata.is_empty() {
        let sub: Map<String, Json> = ckpt
            .info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        m.insert("safetensors".into(), Json::Object(sub));
    }
    m
}
