//! ONNX export: the graph is built from the checkpoint's own pickled module tree (the EMA's, by
//! default), dispatching on class names and pickled attributes, and written as protobuf.

pub mod encode;
pub mod graft;
pub mod graph;
pub mod nms;
pub mod origin;
pub mod proto;
pub mod read;
pub mod ultralytics;

use std::path::{Path, PathBuf};

use crate::checkpoint::py::ModuleRef;
use graph::{GraphBuilder, GraphValue, Spilled};
use proto::{Attr, Dim, ElemType, Model, ValueInfo};

use crate::checkpoint::Checkpoint;
use crate::checkpoint::metadata::to_json;
use crate::checkpoint::module;
use crate::models::layers::heads::{self, HeadOptions};

/// Opsets the builder's operators are valid in (Split with a sizes input, Softmax over one axis,
/// Resize with scales: 13 and later).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// The `license` metadata Ultralytics writes: the weights are those of an Ultralytics model.
pub const ULTRALYTICS_LICENSE: &str = "AGPL-3.0 License (https://ultralytics.com/license)";

/// The `docs` metadata Ultralytics writes.
pub const ULTRALYTICS_DOCS: &str = "https://docs.ultralytics.com";

/// What to export and how.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Input height and width; `None` takes the checkpoint's training size.
    pub imgsz: Option<(i64, i64)>,
    /// Batch size of the static input.
    pub batch: i64,
    /// Dynamic batch, height and width (Ultralytics' `dynamic=True`); `imgsz` is then the
    /// nominal size the export is built and checked at.
    pub dynamic: bool,
    /// NMS inside the graph (`--nms`, Ultralytics' `nms=True`): `output0` becomes
    /// (B, `max_det`, 6 + extra) detection rows.
    pub nms: Option<nms::Nms>,
    /// Detection rows per image of an NMS or end-to-end output.
    pub max_det: usize,
    /// Default-domain opset.
    pub opset: i64,
    /// f16 weights and compute, f32 inputs and outputs.
    pub half: bool,
    /// The module to export: a top-level key (`ema`, `model`).
    pub module_key: String,
    /// Always put the weights in the external data file.
    pub force_external: bool,
    /// The external data file's name (beside the model), used when the weights go there: when
    /// forced, or when they exceed [`EXTERNAL_DATA_ABOVE`].
    pub external_name: String,
    /// Where the weights wait, in an unnamed scratch file, while the graph is built (the
    /// output's directory, so they never use more memory than the file system's cache);
    /// `None` keeps them in memory, in each initializer's `raw`.
    pub scratch_dir: Option<PathBuf>,
    /// The NMS-free output of YOLOv10 / YOLO26 heads: their one-to-one branches, top-k rows
    /// (B, max_det, 6 + extra), as `yolo export nms=False` gives (`max_det` clamped to the anchor
    /// count there, as Ultralytics does).
    pub end2end: bool,
}

/// Protobuf messages cannot exceed 2 GiB; weights above this go to an external data file.
pub const EXTERNAL_DATA_ABOVE: usize = 1_900_000_000;

/// An exported model, not yet written: [`Exported::write_model`] streams it to a file (and
/// [`Exported::write_external_data`] its data file), so the bytes never sit in memory whole.
#[derive(Debug)]
pub struct Exported {
    /// The model.
    pub model: Model,
    /// The external data file's name (beside the model), when the weights are moved there.
    pub external: Option<String>,
    /// Input shape (batch −1 when dynamic; height and width are then the nominal size).
    pub input: Vec<i64>,
    /// Output names and shapes.
    pub outputs: Vec<(String, Vec<i64>)>,
    /// Task (`detect`, …).
    pub task: String,
    /// `metadata_props` written.
    pub metadata: Vec<(String, String)>,
    /// The initializer bytes the builder spilled (see [`ExportOptions::scratch_dir`]).
    spill: Option<Spilled>,
}

impl Exported {
    /// Writes the `ModelProto` (referring to the external data file when there is one) and
    /// returns its length.
    pub fn write_model(&self, w: &mut impl std::io::Write) -> std::io::Result<u64> {
        self.model
            .write_spilled(w, self.external.as_deref(), self.spill.as_ref())
    }

    /// [`Exported::write_model`] with the external data under another file name (a staged
    /// temporary, or the parity-failed model's own data file); the same as `write_model` when
    /// the weights stay inline.
    pub fn write_model_naming(
        &self,
        w: &mut impl std::io::Write,
        data_name: &str,
    ) -> std::io::Result<u64> {
        let name = self.external.as_ref().map(|_| data_name);
        self.model.write_spilled(w, name, self.spill.as_ref())
    }

    /// Writes the external data file's contents and returns their length (nothing is written
    /// when the weights stay inline).
    pub fn write_external_data(&self, w: &mut impl std::io::Write) -> std::io::Result<u64> {
        match self.external {
            Some(_) => self.model.write_external_data(w, self.spill.as_ref()),
            None => Ok(0),
        }
    }
}

/// The ONNX layer's error: the checkpoint, and why it cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot export: {kind}", path.display())]
pub struct ExportError {
    /// The checkpoint.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub kind: ExportErrorKind,
}

/// One way an export fails.
#[derive(Debug, thiserror::Error)]
pub enum ExportErrorKind {
    /// An opset outside the supported range.
    #[error("opset {opset} is not supported (supported: {}–{})", OPSETS.start(), OPSETS.end())]
    Opset {
        /// The opset asked for.
        opset: i64,
    },
    /// The key does not hold a pickled module.
    #[error("'{0}' is not a pickled model module")]
    NotAModule(String),
    /// A model of another framework under Ultralytics' class names (the text names it).
    #[error("{0}")]
    Foreign(String),
    /// A module that is not an Ultralytics model class.
    #[error("'{key}' is a {class}, not an Ultralytics model")]
    NotUltralytics {
        /// The checkpoint key.
        key: String,
        /// Its class.
        class: String,
    },
    /// The model's layers cannot be emitted (the text names the layer path and class).
    #[error("{0}")]
    Model(String),
    /// An end-to-end export of a model without layers.
    #[error("the model has no layers")]
    NoLayers,
    /// An input size the model's strides do not divide.
    #[error("image size {h}x{w} is not a multiple of the model stride {stride}")]
    ImageSize {
        /// Height.
        h: i64,
        /// Width.
        w: i64,
        /// The largest stride.
        stride: i64,
    },
    /// `--nms` on an output that is not (batch, 4 + nc + extra, anchors).
    #[error("--nms needs a (batch, 4 + nc + extra, anchors) output; the model gives {0:?}")]
    NmsShape(Vec<i64>),
    /// `--nms` on an output with fewer rows than boxes and classes need.
    #[error("--nms: the output has {rows} rows for 4 box rows and {nc} classes")]
    NmsRows {
        /// Rows of the output.
        rows: i64,
        /// Classes.
        nc: i64,
    },
    /// `--nms` on an OBB output without exactly one angle row.
    #[error("--nms: an obb output has one angle row after the scores, this one {0}")]
    ObbAngle(i64),
    /// The weights could not be spilled to the scratch file.
    #[error("cannot write the weights to a scratch file in {}: {source}", dir.display())]
    Scratch {
        /// The scratch folder.
        dir: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// The task of an Ultralytics model class (from the module registry).
fn task_of(class: &str) -> Option<&'static str> {
    crate::models::registry::task_of_model(class)
}

/// Python `repr` of JSON-like data, for metadata Ultralytics reads with `ast.literal_eval`.
fn py_repr(v: &serde_json::Value) -> String {
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

/// Exports the Ultralytics model at `opts.module_key`.
pub fn export(ckpt: &Checkpoint, opts: &ExportOptions) -> Result<Exported, ExportError> {
    let err = |kind: ExportErrorKind| ExportError {
        path: ckpt.path.clone(),
        kind,
    };
    let model_err = |m: String| err(ExportErrorKind::Model(m));
    if !OPSETS.contains(&opts.opset) {
        return Err(err(ExportErrorKind::Opset { opset: opts.opset }));
    }
    let g = &ckpt.graph;
    let v = g
        .dict_get(&ckpt.root, &opts.module_key)
        .filter(|v| module::is_module(g, v))
        .ok_or_else(|| err(ExportErrorKind::NotAModule(opts.module_key.clone())))?;
    let root = ModuleRef { g, v };
    let class = root.class();
    if let Some(why) = crate::models::foreign::refusal(root, &opts.module_key) {
        return Err(err(ExportErrorKind::Foreign(why)));
    }
    let classic = crate::models::foreign::classic(root);
    if let Some(c) = classic {
        c.check_options(opts.nms.is_some(), opts.end2end)
            .map_err(model_err)?;
    }
    let task = match classic {
        Some(_) => crate::models::foreign::CLASSIC_TASK,
        None => task_of(&class).ok_or_else(|| {
            err(ExportErrorKind::NotUltralytics {
                key: opts.module_key.clone(),
                class: class.clone(),
            })
        })?,
    };
    let layers = root.child("model").map_err(|e| model_err(e.into()))?;
    crate::models::registry::check(layers).map_err(model_err)?;
    if opts.end2end {
        let head = crate::models::Net::new(root).map_err(model_err)?.head();
        heads::check_end2end(head.ok_or_else(|| err(ExportErrorKind::NoLayers))?)
            .map_err(model_err)?;
    }
    let strides = root.attr_tensor_f64("stride").unwrap_or_else(|| vec![32.0]);
    let max_stride = strides.iter().cloned().fold(1.0, f64::max) as i64;
    let (h, w) = opts
        .imgsz
        .or_else(|| training_imgsz(ckpt, root))
        .unwrap_or((640, 640));
    if h % max_stride != 0 || w % max_stride != 0 || h <= 0 || w <= 0 {
        return Err(err(ExportErrorKind::ImageSize {
            h,
            w,
            stride: max_stride,
        }));
    }
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop().map(|(_, h)| h));
    let nms_layout = match &opts.nms {
        Some(n) => Some(nms_layout(task, head, n, opts.max_det).map_err(model_err)?),
        None => None,
    };
    let batch = if opts.dynamic { -1 } else { opts.batch };
    let dtype = if opts.half {
        ElemType::Float16
    } else {
        ElemType::Float
    };
    let mut graph = GraphBuilder::new(dtype);
    graph.dynamic_hw = opts.dynamic;
    // Without a scratch file the weights stay in memory; a directory that takes no file fails
    // the export anyway, when the model is written there, with that path in the message.
    if let Some(file) = (opts.scratch_dir.as_ref()).and_then(|d| tempfile::tempfile_in(d).ok()) {
        graph.spill_to(file);
    }
    let mut bld = ultralytics::Builder::new(graph);
    bld.opset = opts.opset;
    // The BatchNorm fold stays 8.0–8.4.138's order for every release: following 8.4.139+'s
    // (`BnFold::for_version`) makes the folded weights Ultralytics' own, but moves ONNX Runtime's
    // outputs only by rounding noise, and that noise takes yolov8n-p6-detect at 2×64×128 — where
    // PyTorch's own f32 forward is 0.77 of the limit from its f64 one — over the limit
    // (docs/export.md, "BatchNorm fold").
    bld.head = HeadOptions {
        end2end: opts.end2end,
        max_det: opts.max_det,
    };
    let mut input = GraphValue {
        name: "images".into(),
        shape: vec![batch, 3, h, w],
    };
    if opts.half {
        let c = bld.b.node(
            "input",
            "Cast",
            &["images"],
            vec![("to", Attr::Int(ElemType::Float16 as i64))],
        );
        input = GraphValue {
            name: c,
            shape: input.shape,
        };
    }
    let main = ultralytics::forward(&mut bld, root, input).map_err(model_err)?;
    let mut results = vec![main];
    results.append(&mut bld.extra_outputs);
    let mut outputs = Vec::new();
    // A class map (integer) output is not cast back to float in half mode.
    let elems: Vec<Option<ElemType>> = results.iter().map(|v| bld.integer_elem(&v.name)).collect();
    for (i, out) in results.iter().enumerate() {
        let name = match classic {
            Some(c) => c.output_name(i),
            None => format!("output{i}"),
        };
        let mut last = if opts.half && elems[i].is_none() {
            bld.b.node(
                &name,
                "Cast",
                &[&out.name],
                vec![("to", Attr::Int(ElemType::Float as i64))],
            )
        } else {
            out.name.clone()
        };
        let mut shape = out.shape.clone();
        if let (0, Some((n, nc))) = (i, &nms_layout) {
            let [b, rows, _] = shape[..] else {
                return Err(err(ExportErrorKind::NmsShape(out.shape.clone())));
            };
            if rows < 4 + nc {
                return Err(err(ExportErrorKind::NmsRows { rows, nc: *nc }));
            }
            let layout = nms::Layout {
                nc: *nc,
                extra: rows - 4 - nc,
            };
            if task == "obb" && layout.extra != 1 {
                return Err(err(ExportErrorKind::ObbAngle(layout.extra)));
            }
            let rows = nms::Rows {
                max_det: opts.max_det,
                rotated: task == "obb",
                anchors: (!opts.dynamic).then_some(shape[2]),
            };
            last = nms::emit(&mut bld.b, &last, "images", layout, n, rows);
            shape = vec![b, opts.max_det as i64, 6 + layout.extra];
        }
        // An Identity gives every output its Ultralytics name whatever produced it.
        bld.b.nodes.push(proto::Node {
            op: "Identity".into(),
            name: format!("{name}/Identity"),
            inputs: vec![last],
            outputs: vec![name.clone()],
            attrs: vec![],
        });
        outputs.push((name, shape));
    }
    let dim = |d: i64, p: &str| {
        if d < 0 {
            Dim::Param(p.into())
        } else {
            Dim::Fixed(d)
        }
    };
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
    let model = Model {
        opset: opts.opset,
        graph_name: class.clone(),
        nodes: std::mem::take(&mut bld.b.nodes),
        initializers: std::mem::take(&mut bld.b.initializers),
        inputs: vec![ValueInfo {
            name: "images".into(),
            elem: ElemType::Float,
            dims: vec![
                dim(batch, "batch"),
                Dim::Fixed(3),
                dim(if opts.dynamic { -1 } else { h }, "height"),
                dim(if opts.dynamic { -1 } else { w }, "width"),
            ],
        }],
        outputs: outputs
            .iter()
            .zip(&elems)
            .enumerate()
            .map(|(o, ((name, shape), elem))| ValueInfo {
                name: name.clone(),
                elem: elem.unwrap_or(ElemType::Float),
                dims: shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match i {
                        0 => dim(batch, "batch"),
                        _ if !opts.dynamic => Dim::Fixed(d),
                        _ => match dynamic_dim(task, o, shape.len(), i, opts.nms.is_some()) {
                            Some(p) => Dim::Param(p.into()),
                            None => Dim::Fixed(d),
                        },
                    })
                    .collect(),
            })
            .collect(),
        metadata: metadata.clone(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
    };
    let spill = bld.b.finish_spill().map_err(|source| {
        err(ExportErrorKind::Scratch {
            dir: opts.scratch_dir.clone().unwrap_or_default(),
            source,
        })
    })?;
    let weights: u64 = (model.initializers.iter().enumerate())
        .map(|(i, t)| {
            (spill.as_ref())
                .and_then(|s| s.len(i))
                .unwrap_or(t.raw.len() as u64)
        })
        .sum();
    let external = (opts.force_external || weights > EXTERNAL_DATA_ABOVE as u64)
        .then(|| opts.external_name.clone());
    Ok(Exported {
        model,
        external,
        input: vec![batch, 3, h, w],
        outputs,
        task: task.into(),
        metadata,
        spill,
    })
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The name of dimension `dim` of output `output` (of `rank` dimensions) when height and width
/// are dynamic, as Ultralytics' exporter names them; `None` for a fixed one (channels, classes,
/// NMS rows).
fn dynamic_dim(
    task: &str,
    output: usize,
    rank: usize,
    dim: usize,
    nms: bool,
) -> Option<&'static str> {
    match (output, rank, dim) {
        // Classic YOLOv5 / YOLOv7 rows: (batch, anchors, 5 + nc), as YOLOv5's export.py names them.
        (0, 3, 1) if task == crate::models::foreign::CLASSIC_TASK => Some("anchors"),
        (0, 3, 2) if !nms && matches!(task, "detect" | "segment" | "pose" | "obb") => {
            Some("anchors")
        }
        (0, 3, 1 | 2) if task == "semantic" => Some(["height", "width"][dim - 1]),
        (0, 4, 2 | 3) => Some(["height", "width"][dim - 2]),
        (_, 4, 2 | 3) => Some(["mask_height", "mask_width"][dim - 2]),
        _ => None,
    }
}

/// Checks that `--nms` applies to the model (a detection-style head; Ultralytics refuses
/// classification and turns it off for the others) and returns the options with the class count.
fn nms_layout(
    task: &str,
    head: Option<ModuleRef>,
    n: &nms::Nms,
    max_det: usize,
) -> Result<(nms::Nms, i64), String> {
    n.check(max_det)?;
    let class = head.map(|h| h.class()).unwrap_or_default();
    if !matches!(task, "detect" | "segment" | "pose" | "obb") || class == "RTDETRDecoder" {
        return Err(format!(
            "--nms applies to detect, segment, pose and obb models with a YOLO head; this is a {task} model ({class})"
        ));
    }
    let nc = head
        .and_then(|h| h.int("nc"))
        .ok_or_else(|| format!("--nms: the {class} head has no class count `nc`"))?;
    Ok((*n, nc))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The task and class count of an Ultralytics model module (from its last layer).
pub fn task_and_classes(root: ModuleRef) -> (String, usize) {
    let task = match crate::models::foreign::classic(root) {
        Some(_) => crate::models::foreign::CLASSIC_TASK,
        None => task_of(&root.class()).unwrap_or("detect"),
    }
    .to_string();
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop().map(|(_, h)| h));
    let nc = head
        .and_then(|h| {
            h.int("nc").or_else(|| {
                h.child("linear")
                    .ok()
                    .and_then(|l| l.need_f32("weight").ok())
                    .map(|(_, s)| s[0])
            })
        })
        .unwrap_or(0);
    (task, nc as usize)
}
