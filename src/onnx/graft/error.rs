//! The graft layer's errors: [`GraftError`] names the file at fault, [`GraftFault`] says what
//! went wrong without knowing the file (the matching reads both the model and the checkpoint, and
//! each fault knows which one it is about: [`GraftFault::at`]).

use std::path::{Path, PathBuf};

use crate::onnx::read::OnnxReadError;

/// The graft layer's error, `<file>: <problem>`.
#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    /// The ONNX cannot be opened.
    #[error("{}: not a readable ONNX model: {source}", path.display())]
    Open {
        /// The model.
        path: PathBuf,
        /// The reader's refusal (it names the file too).
        #[source]
        source: crate::io::ReadError,
    },
    /// The ONNX is larger than protobuf allows.
    #[error("{}: not a readable ONNX model: {len} bytes: protobuf models stop at 2 GiB", path.display())]
    TooLarge {
        /// The model.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The ONNX is an empty file.
    #[error("{}: not a readable ONNX model: an empty file", path.display())]
    Empty {
        /// The model.
        path: PathBuf,
    },
    /// The ONNX cannot be mapped.
    #[error("{}: not a readable ONNX model: {source}", path.display())]
    Map {
        /// The model.
        path: PathBuf,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// The ONNX's protobuf cannot be walked.
    #[error("{}: not a readable ONNX model: {source}", path.display())]
    Scan {
        /// The model.
        path: PathBuf,
        /// What is wrong with its bytes.
        #[source]
        source: OnnxReadError,
    },
    /// Matching or writing failed on one file's data.
    #[error("{}: {source}", path.display())]
    At {
        /// The model or the checkpoint, whichever the fault is about.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: GraftFault,
    },
}

/// What went wrong while matching, computing or writing initializers.
#[derive(Debug, thiserror::Error)]
pub enum GraftFault {
    /// An initializer's bytes could not be read from the model file.
    #[error("initializer '{name}': {source}")]
    InitializerRead {
        /// The initializer.
        name: String,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// An initializer's external data could not be read.
    #[error(transparent)]
    External(#[from] OnnxReadError),
    /// An initializer's data does not fit its shape.
    #[error("initializer '{name}': {len} data bytes for {numel} elements of {size} bytes")]
    InitializerSize {
        /// The initializer.
        name: String,
        /// Bytes it holds.
        len: usize,
        /// Elements its dims give.
        numel: usize,
        /// Bytes per element.
        size: usize,
    },
    /// A key the matching chose is not a floating tensor of that side.
    #[error("no tensor '{key}'")]
    NoTensor {
        /// The key.
        key: String,
    },
    /// A tensor's bytes cannot be read.
    #[error("tensor '{key}': {source}")]
    TensorRead {
        /// The key.
        key: String,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// A tensor of a dtype without real values.
    #[error("tensor '{key}' cannot be read as numbers")]
    NotNumbers {
        /// The key.
        key: String,
    },
    /// The EMA side lacks a tensor the raw side matched.
    #[error("the EMA has no '{key}'")]
    EmaMissing {
        /// The key.
        key: String,
    },
    /// The EMA's tensor and the raw one differ in shape.
    #[error("'{key}' has shape {ema:?} in the EMA but {raw:?} in the raw weights")]
    EmaShape {
        /// The key.
        key: String,
        /// The EMA's shape.
        ema: Vec<usize>,
        /// The raw shape.
        raw: Vec<usize>,
    },
    /// A recipe applied to the EMA gives another element count than the initializer holds.
    #[error(
        "initializer '{name}' ({recipe}): the EMA gives {got} elements, the model has {dims:?}"
    )]
    EmaCount {
        /// The initializer.
        name: String,
        /// How it is computed.
        recipe: String,
        /// Elements computed.
        got: usize,
        /// The initializer's dims.
        dims: Vec<i64>,
    },
    /// Writing the output (or reading the model's bytes to copy) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A rewritten initializer came out with another length than measured.
    #[error("initializer '{name}': {made} bytes made, {expected} expected")]
    Made {
        /// The initializer.
        name: String,
        /// Bytes produced.
        made: usize,
        /// Bytes measured.
        expected: u64,
    },
    /// The graph came out with another length than measured.
    #[error("the graph came out {written} bytes long, {measured} measured")]
    GraphLength {
        /// Bytes written.
        written: u64,
        /// Bytes measured.
        measured: u64,
    },
    /// A seeded input does not fit its shape.
    #[error("input '{name}': {source}")]
    Seed {
        /// The input.
        name: String,
        /// The refusal.
        #[source]
        source: ndarray::ShapeError,
    },
    /// A node holds a subgraph (`If`, `Loop`, `Scan`, …), whose initializers graft does not
    /// read: the grafted file would still compute with the raw weights in it.
    #[error("node '{node}' ({op}) holds a subgraph, whose weights graft does not read or replace")]
    Subgraph {
        /// The node.
        node: String,
        /// Its operator.
        op: String,
    },
    /// The grafted model fails in the runtime where the original runs.
    #[error("the grafted model does not run (the original does): {0}")]
    GraftedFails(#[source] crate::runtime::RuntimeError),
}

impl GraftFault {
    /// Whether the fault is in the model's bytes (else in the checkpoint's tensors or the
    /// output).
    pub fn in_model(&self) -> bool {
        matches!(
            self,
            GraftFault::InitializerRead { .. }
                | GraftFault::External(_)
                | GraftFault::InitializerSize { .. }
                | GraftFault::Subgraph { .. }
        )
    }

    /// Whether the fault is in writing the output (or in the run of what was written).
    pub fn in_output(&self) -> bool {
        matches!(
            self,
            GraftFault::Io(_)
                | GraftFault::Made { .. }
                | GraftFault::GraphLength { .. }
                | GraftFault::Seed { .. }
                | GraftFault::GraftedFails(_)
        )
    }

    /// The error naming the file the fault is about: the model, else the checkpoint (the
    /// callers that write name the output for [`GraftFault::in_output`] faults themselves).
    pub fn at(self, model: &Path, checkpoint: &Path) -> GraftError {
        let path = if self.in_model() { model } else { checkpoint };
        GraftError::At {
            path: path.to_path_buf(),
            source: self,
        }
    }
}
