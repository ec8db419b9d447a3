//! The model layers' error: [`LayerError`], one variant per way a module cannot be emitted (the
//! ONNX builder) or run (the reference interpreter). Both backends use it; the layer-list walk
//! ([`super::Net::forward`]) wraps a layer's error in [`LayerError::At`] with the layer's path
//! and class (`model.22 (Detect): nc missing`), and the callers wrap it in their own errors.

use crate::checkpoint::py::AttrError;

/// Result type of the model layers (both backends).
pub type BuildResult<T> = Result<T, LayerError>;

/// Why a module cannot be emitted or run. Each message names the module (its class, or its
/// scope `model.2.m.0` on the emit side) and the attribute or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A layer of the model's layer list failed: where, and what went wrong inside it.
    #[error("{path} ({class}): {source}")]
    At {
        /// The layer's path (`model.22`).
        path: String,
        /// Its class (`Detect`).
        class: String,
        /// The cause.
        #[source]
        source: Box<LayerError>,
    },
    /// A child module or a weight that cannot be read (the class and key are in the message;
    /// an unreadable storage keeps the reader's I/O error as its source).
    #[error(transparent)]
    Attr(#[from] AttrError),
    /// A required attribute that is absent, or not of the type the class reads.
    #[error("{attr} missing")]
    Missing {
        /// The module's class.
        class: String,
        /// The attribute (`nc`).
        attr: String,
    },
    /// An attribute whose value the class cannot use (a 3-D stride, an area of 0).
    #[error("{class}.{attr} = {value} {problem}")]
    BadAttr {
        /// The module's class.
        class: String,
        /// The attribute.
        attr: String,
        /// Its value, as read.
        value: String,
        /// What is wrong with it (`is not 2-D`).
        problem: String,
    },
    /// A configuration that neither backend implements (a padding mode, `ceil_mode=True`).
    #[error("{class}: {what} is not supported")]
    Unsupported {
        /// The module's class.
        class: String,
        /// The configuration.
        what: String,
    },
    /// A weight or buffer of a shape or size the class cannot use.
    #[error("{class}.{name} {problem}")]
    Weight {
        /// The module's class.
        class: String,
        /// The weight (`weight`, `bias`, `in_proj_weight`).
        name: String,
        /// What is wrong with it (`has shape [3, 3], not 4-D`).
        problem: String,
    },
    /// Values that do not fit the module or each other: an input of another rank or size than
    /// the weights need, two maps of different sizes added, a channel count that does not split.
    #[error("{at}: {problem}")]
    Shape {
        /// The module: its scope (`model.2.m.0`) or its class.
        at: String,
        /// The mismatch.
        problem: String,
    },
    /// A list of inputs where the class reads one value.
    #[error("{class} expects one input, got a list")]
    NotOne {
        /// The class.
        class: String,
    },
    /// Inputs of another number or kind than the class reads.
    #[error("{class}: {problem}")]
    Inputs {
        /// The class.
        class: String,
        /// What was given instead.
        problem: String,
    },
    /// A class neither backend handles where it was met.
    #[error("unsupported module class {0}")]
    UnknownClass(String),
    /// Classes below the layer list that the registry does not know.
    #[error("unsupported module classes: {}", .0.join(", "))]
    UnknownClasses(Vec<String>),
    /// An opset older than the operators the model needs.
    #[error("{model} needs opset {min} or later ({operators}); opset {asked} was asked for")]
    Opset {
        /// The model family (`RT-DETR`).
        model: &'static str,
        /// The oldest opset that has the operators.
        min: i64,
        /// The operators it needs.
        operators: &'static str,
        /// The opset asked for.
        asked: i64,
    },
    /// `--end2end` on a head without one-to-one branches.
    #[error(
        "--end2end needs a head with one-to-one branches (YOLOv10, YOLO26); this model's head {head} has none"
    )]
    NoOneToOne {
        /// The head's class.
        head: String,
    },
    /// A head whose one-to-many branches `Detect.fuse()` removed, exported without `--end2end`.
    #[error(
        "{head}'s one-to-many branches were removed (a fused checkpoint); export it with --end2end"
    )]
    NoOneToMany {
        /// The head's class.
        head: String,
    },
    /// `--max-det 0`.
    #[error("--max-det must be at least 1")]
    MaxDet,
    /// A layer whose `f` names an output that is not kept (a later layer, or none).
    #[error("reads layer {from}, which is not kept")]
    NotKept {
        /// The entry of `f`.
        from: i64,
    },
    /// A layer list whose last layer gives no value.
    #[error("model: no layer output")]
    NoOutput,
}

impl LayerError {
    /// A [`LayerError::Shape`] at `at`.
    pub fn shape(at: impl Into<String>, problem: impl Into<String>) -> LayerError {
        LayerError::Shape {
            at: at.into(),
            problem: problem.into(),
        }
    }

    /// A [`LayerError::Unsupported`] of `class`.
    pub fn unsupported(class: impl Into<String>, what: impl Into<String>) -> LayerError {
        LayerError::Unsupported {
            class: class.into(),
            what: what.into(),
        }
    }

    /// A [`LayerError::BadAttr`]: `class.attr = value problem`.
    pub fn bad_attr(
        class: impl Into<String>,
        attr: impl Into<String>,
        value: impl std::fmt::Debug,
        problem: impl Into<String>,
    ) -> LayerError {
        LayerError::BadAttr {
            class: class.into(),
            attr: attr.into(),
            value: format!("{value:?}"),
            problem: problem.into(),
        }
    }

    /// A [`LayerError::Weight`]: `class.name problem`.
    pub fn weight(
        class: impl Into<String>,
        name: impl Into<String>,
        problem: impl Into<String>,
    ) -> LayerError {
        LayerError::Weight {
            class: class.into(),
            name: name.into(),
            problem: problem.into(),
        }
    }

    /// A [`LayerError::Inputs`] of `class`.
    pub fn inputs(class: impl Into<String>, problem: impl Into<String>) -> LayerError {
        LayerError::Inputs {
            class: class.into(),
            problem: problem.into(),
        }
    }

    /// A [`LayerError::Missing`] of `class`.
    pub fn missing(class: impl Into<String>, attr: impl Into<String>) -> LayerError {
        LayerError::Missing {
            class: class.into(),
            attr: attr.into(),
        }
    }
}
