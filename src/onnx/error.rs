//! The ONNX export's error: [`ExportError`] (`<checkpoint>: cannot export: <problem>`) over
//! [`ExportErrorKind`], one variant per way an export fails.

use std::path::PathBuf;

use super::OPSETS;

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
    /// The model's layers cannot be emitted (the layer error names the layer's path and class).
    #[error("{0}")]
    Model(#[source] crate::models::LayerError),
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
    /// A `--conf` threshold outside [0, 1].
    #[error("--conf {0} is not in [0, 1]")]
    Conf(f32),
    /// An `--iou` threshold outside [0, 1].
    #[error("--iou {0} is not in [0, 1]")]
    Iou(f32),
    /// A `--max-det` outside 1..=[`super::nms::MAX_DET_LIMIT`].
    #[error("--max-det {0} is not in 1..={limit}", limit = super::nms::MAX_DET_LIMIT)]
    MaxDet(usize),
    /// `--nms` on a model without a YOLO detection-style head.
    #[error(
        "--nms applies to detect, segment, pose and obb models with a YOLO head; this is a {task} model ({class})"
    )]
    NmsTask {
        /// The model's task.
        task: String,
        /// Its head's class.
        class: String,
    },
    /// `--nms` on a head without a class count.
    #[error("--nms: the {0} head has no class count `nc`")]
    NmsClasses(String),
    /// An option the classic (YOLOv5/YOLOv7) exporters do not have.
    #[error(transparent)]
    Classic(#[from] crate::models::foreign::ClassicOptionError),
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
