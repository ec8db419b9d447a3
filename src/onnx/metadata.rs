//! The metadata an export writes: the keys and values Ultralytics' exporter writes (in its
//! order, Python literals where Ultralytics reads them back with `ast.literal_eval`), or the
//! classic exporters' own; and the training image size a checkpoint records.

use std::path::Path;

use super::ExportOptions;
use crate::checkpoint::Checkpoint;
use crate::checkpoint::metadata::to_json;
use crate::checkpoint::py::ModuleRef;
use crate::models::foreign::Classic;

/// The `license` metadata Ultralytics writes: the weights are those of an Ultralytics model.
pub const ULTRALYTICS_LICENSE: &str = "AGPL-3.0 License (https://ultralytics.com/license)";

/// The `docs` metadata Ultralytics writes.
pub const ULTRALYTICS_DOCS: &str = "https://docs.ultralytics.com";

/// Python `repr` of JSON-like data, for metadata Ultralytics reads with `ast.literal_eval`.
pub fn py_repr(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "None".into(),
        J::Bool(b) => if *b { "True" } else { "False" }.into(),
        J::Number(n) => n.to_string(),
        J::String(s) => {
            let mut o = String::from("'");
            for c in s.chars() {
                match c {
                    '\'' => o.push_str("\\'"),
                    '\\' => o.push_str("\\\\"),
                    '\n' => o.push_str("\\n"),
                    c => o.push(c),
                }
            }
            o.push('\'');
            o
        }
        J::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        J::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    // Ultralytics class names are keyed by int.
                    let key = if k.parse::<i64>().is_ok() {
                        k.clone()
                    } else {
                        py_repr(&J::String(k.clone()))
                    };
                    format!("{key}: {}", py_repr(v))
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// The training image size recorded in the checkpoint (`train_args.imgsz`, or the model's args).
pub fn training_imgsz(ckpt: &Checkpoint, model: ModuleRef) -> Option<(i64, i64)> {
    let g = &ckpt.graph;
    let from = |v: &crate::checkpoint::value::Value| -> Option<(i64, i64)> {
        if let Some(i) = v.as_int() {
            return Some((i, i));
        }
        match g.seq(v)? {
            [h, w] => Some((h.as_int()?, w.as_int()?)),
            [s] => s.as_int().map(|i| (i, i)),
            _ => None,
        }
    };
    g.dict_get(&ckpt.root, "train_args")
        .and_then(|a| g.dict_get(a, "imgsz"))
        .and_then(from)
        .or_else(|| {
            model
                .attr("args")
                .and_then(|a| g.dict_get(a, "imgsz").or_else(|| g.attr(a, "imgsz")))
                .and_then(from)
        })
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The metadata of an export of `root` (class, task, largest stride, image size, options).
pub(super) fn exported(
    ckpt: &Checkpoint,
    root: ModuleRef,
    task: &str,
    max_stride: i64,
    (h, w): (i64, i64),
    opts: &ExportOptions,
    classic: Option<Classic>,
) -> Vec<(String, String)> {
    let g = &ckpt.graph;
    let class = root.class();
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop().map(|(_, h)| h));
    let names = root
        .attr("names")
        .map(|n| to_json(g, n))
        .unwrap_or(serde_json::Value::Null);
    let mut metadata = vec![
        (
            "description".to_string(),
            format!(
                "{class} exported by fuse-ema from {}",
                file_name(&ckpt.path)
            ),
        ),
        ("author".into(), "fuse-ema".into()),
    ];
    for key in ["date", "version"] {
        if let Some(s) = g.dict_get(&ckpt.root, key).and_then(|v| v.as_str()) {
            metadata.push((key.into(), s.to_string()));
        }
    }
    let kpt_shape = head.and_then(|h| h.ints("kpt_shape"));
    // The keys and values Ultralytics' exporter writes (engine/exporter.py), in its order.
    metadata.extend([
        ("license".into(), ULTRALYTICS_LICENSE.into()),
        ("docs".into(), ULTRALYTICS_DOCS.into()),
        ("stride".into(), max_stride.to_string()),
        ("task".into(), task.to_string()),
        ("head".into(), head.map(|h| h.class()).unwrap_or_default()),
        ("batch".into(), opts.batch.to_string()),
        ("imgsz".into(), format!("[{h}, {w}]")),
        ("names".into(), py_repr(&names)),
        ("channels".into(), "3".into()),
        (
            "end2end".into(),
            if opts.end2end { "True" } else { "False" }.into(),
        ),
        (
            "args".into(),
            format!(
                "{{'batch': {}, 'dynamic': {}, 'half': {}, 'imgsz': [{h}, {w}], 'nms': {}, 'opset': {}}}",
                opts.batch,
                py_bool(opts.dynamic),
                py_bool(opts.half),
                py_bool(opts.nms.is_some()),
                opts.opset
            ),
        ),
        ("producer".into(), format!("fuse-ema {}", env!("CARGO_PKG_VERSION"))),
    ]);
    if let Some(k) = kpt_shape {
        metadata.push((
            "kpt_shape".into(),
            format!(
                "[{}]",
                k.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
        ));
        // Ultralytics ≥ 8.3.x pose models carry `kpt_names` ({class: [name per keypoint]}).
        if let Some(names) = root.attr("kpt_names") {
            metadata.push(("kpt_names".into(), py_repr(&to_json(g, names))));
        }
    }
    if let Some(c) = classic {
        metadata = c.metadata(max_stride, py_repr(&names));
    }
    metadata
}
