//! The parity layer's error: why a comparison could not run (not: it ran and failed, which is a
//! report with `pass: false`).

use std::path::PathBuf;

use super::npy::NpyError;
use crate::reference::RefError;
use crate::runtime::RuntimeError;

/// Why a parity check could not run.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// The reference interpreter cannot be built for the module tree.
    #[error("{0}")]
    Reference(#[source] RefError),
    /// The reference interpreter failed on the inputs.
    #[error("reference interpreter: {0}")]
    ReferenceRun(#[source] RefError),
    /// The f16-emulating reference failed on the inputs.
    #[error("reference interpreter (f16 emulation): {0}")]
    EmulationRun(#[source] RefError),
    /// The runtime could not run the ONNX.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The ONNX and the reference give different numbers of outputs.
    #[error("the ONNX has {onnx} outputs, the model {model}")]
    OutputCount {
        /// Outputs of the ONNX.
        onnx: usize,
        /// Outputs of the reference.
        model: usize,
    },
    /// `--nms` on a raw output that is not (batch, 4 + nc + extra, anchors).
    #[error("--nms needs a (B, 4 + {nc} + extra, anchors) output; the model gives {shape:?}")]
    NmsShape {
        /// Classes.
        nc: usize,
        /// The raw output's shape.
        shape: Vec<usize>,
    },
    /// `--nms` on an OBB output without exactly one angle row.
    #[error("an obb output with {0} angle rows")]
    ObbAngles(i64),
    /// A golden file without an array the comparison needs.
    #[error("the golden file has no `{0}` array")]
    GoldenMissing(String),
    /// The golden file cannot be opened (the reader's error names it).
    #[error("{0}")]
    GoldenOpen(#[source] crate::io::ReadError),
    /// The golden file is not a zip archive.
    #[error("{}: not an .npz: {source}", path.display())]
    NotNpz {
        /// The golden file.
        path: PathBuf,
        /// The zip reader's refusal.
        #[source]
        source: zip::result::ZipError,
    },
    /// A member of the golden archive cannot be read.
    #[error("{}: {source}", path.display())]
    NpzMember {
        /// The golden file.
        path: PathBuf,
        /// The zip reader's refusal.
        #[source]
        source: zip::result::ZipError,
    },
    /// A member's bytes cannot be read.
    #[error("{}: {name}: {source}", path.display())]
    NpzRead {
        /// The golden file.
        path: PathBuf,
        /// The array.
        name: String,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// A member larger than an array fuse-ema reads.
    #[error("{}: {name}: larger than 4 GiB", path.display())]
    NpzTooLarge {
        /// The golden file.
        path: PathBuf,
        /// The array.
        name: String,
    },
    /// Members that together would expand far beyond the file's size.
    #[error(
        "{}: {name}: the arrays would expand to more than {limit_mib} MiB, more than a file of this size can honestly hold (a decompression bomb?)",
        path.display()
    )]
    NpzBomb {
        /// The golden file.
        path: PathBuf,
        /// The array that went over.
        name: String,
        /// The limit.
        limit_mib: u64,
    },
    /// A member that holds another number of bytes than it declares.
    #[error("{}: {name}: declares {declared} bytes, holds {held}", path.display())]
    NpzShort {
        /// The golden file.
        path: PathBuf,
        /// The array.
        name: String,
        /// Bytes declared.
        declared: u64,
        /// Bytes read.
        held: usize,
    },
    /// A member that is not a readable `.npy` array.
    #[error("{}: {name}.npy: {source}", path.display())]
    Npy {
        /// The golden file.
        path: PathBuf,
        /// The array.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NpyError,
    },
    /// The `--image` cannot be read as an image.
    #[error("{}: {source}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// The decoder's refusal.
        #[source]
        source: image::ImageError,
    },
}
