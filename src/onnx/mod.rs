//! ONNX export: the graph is built from the checkpoint's own pickled module tree (the EMA's, by
//! default), dispatching on class names and pickled attributes, and written as protobuf.

pub mod encode;
mod error;
pub mod graft;
pub mod graph;
mod metadata;
pub mod nms;
pub mod origin;
pub mod proto;
pub mod read;
pub mod ultralytics;

use std::path::PathBuf;

use crate::checkpoint::py::ModuleRef;
use graph::{GraphBuilder, GraphValue, Spilled};
use proto::{Attr, Dim, ElemType, Model, ValueInfo};

use crate::checkpoint::Checkpoint;
use crate::checkpoint::module;
use crate::models::layers::heads::{self, HeadOptions};
pub use error::{ExportError, ExportErrorKind};
pub use metadata::{ULTRALYTICS_DOCS, ULTRALYTICS_LICENSE, py_repr, training_imgsz};

/// Opsets the builder's operators are valid in (Split with a sizes input, Softmax over one axis,
/// Resize with scales: 13 and later).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

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

/// The task of an Ultralytics model class (from the module registry).
fn task_of(class: &str) -> Option<&'static str> {
    crate::models::registry::task_of_model(class)
}

/// Exports the Ultralytics model at `opts.module_key`.
pub fn export(ckpt: &Checkpoint, opts: &ExportOptions) -> Result<Exported, ExportError> {
    let err = |kind: ExportErrorKind| ExportError {
        path: ckpt.path.clone(),
        kind,
    };
    let model_err = |m: crate::models::LayerError| err(ExportErrorKind::Model(m));
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
            .map_err(|e| err(e.into()))?;
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
    // A model without strides (a classifier) pads to 32, as Ultralytics' check_imgsz does.
    let strides = root
        .attr_tensor_f64("stride")
        .map_err(|e| model_err(e.into()))?
        .unwrap_or_else(|| vec![32.0]);
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
        Some(n) => Some(nms_layout(task, head, n, opts.max_det).map_err(err)?),
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
    // The BatchNorm fold in the operation order of the checkpoint's own Ultralytics release
    // (8.4.139 changed it), so the folded weights are the ones its `yolo export` computes
    // (docs/export.md, "BatchNorm fold").
    bld.bn_fold = crate::models::layers::conv::BnFold::for_version(
        g.dict_get(&ckpt.root, "version").and_then(|v| v.as_str()),
    );
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
    let metadata = metadata::exported(ckpt, root, task, max_stride, (h, w), opts, classic);
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
) -> Result<(nms::Nms, i64), ExportErrorKind> {
    n.check(max_det)?;
    let class = head.map(|h| h.class()).unwrap_or_default();
    if !matches!(task, "detect" | "segment" | "pose" | "obb") || class == "RTDETRDecoder" {
        return Err(ExportErrorKind::NmsTask {
            task: task.to_string(),
            class,
        });
    }
    let Some(nc) = head.and_then(|h| h.int("nc")) else {
        return Err(ExportErrorKind::NmsClasses(class));
    };
    Ok((*n, nc))
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
