//! The reader layer's error: which file, and what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checkpoint::uses::UseLog;
use crate::checkpoint::value::Graph;

/// A checkpoint could not be read. Displays as `<file>: <problem>`.
#[derive(Debug)]
pub struct ReadError {
    /// The file (or the shard of a set) that is at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: ReadErrorKind,
    /// The globals the file named before a pickle failed: Python imports each one as it reaches
    /// it, so a broken pickle may already have run them (empty for other failures).
    pub named: Box<UseLog>,
}

/// The kinds of reading failure, each with the offending entry, key or offset in its text.
#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    /// The operating system refused (missing file, permissions, …).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a format fuse-ema reads.
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(String),
    /// The zip container is damaged or hostile.
    #[error("broken zip archive: {0}")]
    Zip(String),
    /// A pickle could not be decoded.
    #[error("{entry}: {source}")]
    Pickle {
        /// The pickle's entry name or role (`archive/data.pkl`, `main pickle`).
        entry: String,
        /// The failure and its offset.
        source: Box<super::pickle::PickleError>,
    },
    /// A storage or tensor does not fit the bytes the file holds.
    #[error("{0}")]
    Storage(String),
    /// A safetensors header or shard index is invalid.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// Two readers (torch's and another, or two of torch's own) could read the bytes
    /// differently, so no judgement of them can be trusted.
    #[error("ambiguous: {0}")]
    Ambiguous(String),
    /// The file is valid but uses a feature fuse-ema does not read.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ReadError {
    /// An error about `path`.
    pub fn new(path: &Path, kind: impl Into<ReadErrorKind>) -> ReadError {
        ReadError {
            path: path.to_path_buf(),
            kind: kind.into(),
            named: Box::default(),
        }
    }

    /// Records the globals `graph` holds as named before the failure.
    pub(crate) fn naming(mut self, graph: &Graph) -> ReadError {
        self.named = Box::new(graph.uses().clone());
        self
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}
