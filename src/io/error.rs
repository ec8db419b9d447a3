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
    /// A zip entry whose layout makes its bytes unreadable.
    #[error("broken zip archive: {entry}: {source}")]
    Entry {
        /// The entry's name.
        entry: String,
        /// What is wrong with it.
        #[source]
        source: EntryError,
    },
    /// A zip entry whose bytes cannot be read (a deflate stream that does not decompress).
    #[error("broken zip archive: {entry}: {source}")]
    EntryRead {
        /// The entry's name.
        entry: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A tar container Python's `tarfile` and this reader could list differently.
    #[error("ambiguous: {0}")]
    Tar(#[source] TarError),
    /// An object `.npy` (file or archive member) whose header cannot be read.
    #[error("not a checkpoint: {name}: not a valid .npy array: {source}")]
    Npy {
        /// The file or member.
        name: String,
        /// What is wrong with its header.
        #[source]
        source: NpyHeaderError,
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

/// Why a tar container's member list is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// A PAX or GNU extended header.
    #[error(
        "tar member {0:?} has an extended (PAX or GNU) header, which renames or reshapes members; torch never wrote one"
    )]
    Extended(String),
    /// A size this machine cannot address.
    #[error("tar member {name:?} declares a size of {size}")]
    Size {
        /// The member.
        name: String,
        /// Its declared size (base-256 sizes can be negative).
        size: i128,
    },
    /// A member whose data runs past the end of the file.
    #[error(
        "tar member {name:?} at offset {offset} runs past the end of the file (Python's tarfile fails on it and torch.load then reads the file as a pickle)"
    )]
    PastEnd {
        /// The member.
        name: String,
        /// Its header's offset.
        offset: usize,
    },
}

/// Why a `.npy` header cannot be read far enough to find an object array's pickle.
#[derive(Debug, thiserror::Error)]
pub enum NpyHeaderError {
    /// No `\x93NUMPY` magic (or fewer than 10 bytes).
    #[error("no .npy magic")]
    NoMagic,
    /// The header runs past the bytes.
    #[error("truncated header")]
    Truncated,
    /// A format version other than 1, 2 or 3.
    #[error("unknown version {0}")]
    Version(u8),
    /// A header without a `'descr'`.
    #[error("the header has no 'descr'")]
    NoDescr,
}

/// Why a zip entry's bytes cannot be had, from its directory record alone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A compressed entry larger than its role allows (a version record, a pickle member).
    #[error("declares {size} bytes, more than {limit} expected")]
    OverLimit {
        /// Bytes declared.
        size: usize,
        /// The role's limit.
        limit: usize,
    },
    /// A stored entry whose sizes disagree.
    #[error("stored entry declares {size} bytes but holds {held}")]
    StoredSize {
        /// Bytes declared.
        size: usize,
        /// Bytes it occupies.
        held: usize,
    },
    /// A deflated entry that declares more than deflate can expand its bytes to.
    #[error("declares {size} bytes, more than {compressed} compressed bytes can expand to")]
    Expands {
        /// Bytes declared.
        size: usize,
        /// Compressed bytes.
        compressed: usize,
    },
    /// A deflated entry with more compressed bytes than deflate makes of its size.
    #[error(
        "declares {size} bytes but holds {compressed} compressed bytes, more than deflate makes of so few"
    )]
    Shrinks {
        /// Bytes declared.
        size: usize,
        /// Compressed bytes.
        compressed: usize,
    },
    /// A compression method torch never writes.
    #[error("compression method {0} is not used by torch")]
    Method(String),
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
