//! The checkpoint object model: the decoded object graph of a file, and the views that read
//! training concepts out of it (modules, state dicts, weight sets, metadata).

pub mod judge;
pub mod metadata;
pub mod module;
pub mod py;
pub mod sets;
pub mod uses;
pub mod value;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use value::{Graph, Value};

/// The container format of a checkpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `torch.save` since torch 1.6: a zip with `data.pkl` and one entry per storage.
    #[default]
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)` and torch < 1.6.
    TorchLegacy,
    /// A plain pickle stream without torch storages.
    Pickle,
    /// One safetensors file.
    Safetensors,
    /// A set of safetensors shards with a `*.index.json`.
    SafetensorsSharded,
    /// torch's oldest format (before 0.4): a tar with `storages`, `tensors` and `pickle` members.
    TorchTar,
    /// A zip that is not a torch archive; only its pickle members are read (to judge them).
    Zip,
    /// A numpy `.npy` array of Python objects (a pickle after the header).
    Npy,
}

impl Format {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchZip => "torch-zip",
            Format::TorchLegacy => "torch-legacy",
            Format::Pickle => "pickle",
            Format::Safetensors => "safetensors",
            Format::SafetensorsSharded => "safetensors-sharded",
            Format::TorchTar => "torch-tar",
            Format::Zip => "zip",
            Format::Npy => "npy",
        }
    }
}

/// Facts about the container, as `inspect` reports them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FormatInfo {
    /// The format.
    pub format: Format,
    /// Size of the file (or of all shards) in bytes.
    pub file_size: u64,
    /// The torch serialization version (`archive/version`, or the legacy protocol version).
    pub serialization_version: Option<String>,
    /// Byte order the file declares.
    pub byteorder: Option<String>,
    /// The pickle protocol of the main pickle.
    pub pickle_protocol: Option<u8>,
    /// The zip record folder (`archive/`, `best/`, …).
    pub record: Option<String>,
    /// Whether the archive is a TorchScript model (it has a `code/` folder).
    pub torchscript: bool,
    /// Storages stored compressed (decompressed into memory, when read, instead of mapped).
    pub compressed_storages: usize,
    /// Shard files of a sharded set.
    pub shards: Vec<String>,
    /// The safetensors `__metadata__` (string pairs), empty for torch files.
    pub metadata: BTreeMap<String, String>,
}

/// A decoded checkpoint: its object graph and where it came from.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file that was opened.
    pub path: PathBuf,
    /// Container facts.
    pub info: FormatInfo,
    /// Every decoded node.
    pub graph: Graph,
    /// The top-level object (usually a dict).
    pub root: Value,
}
