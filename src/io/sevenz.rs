//! 7z archives. `torch.load` cannot read them, but a model scanner is asked about them: pickles
//! travel inside 7z files (picklescan's public samples include one). Members that look like
//! pickles are decompressed under a budget and judged; the file is then refused as not a
//! checkpoint, and the refusal carries the globals its pickles name, so `inspect` reports a
//! hostile archive as dangerous rather than only as unreadable.

use std::io::Read;
use std::path::Path;

use super::pickle::{self, Limits};
use super::{InertPersistentLoad, ReadError, ReadErrorKind};
use crate::checkpoint::value::Graph;

/// The signature every 7z archive starts with.
pub const MAGIC: &[u8] = b"7z\xBC\xAF\x27\x1C";

/// Decompressed bytes judged at most, over all members: a member that would go past it stops the
/// walk (a decompression bomb costs at most this much memory and the time to produce it).
const BUDGET: u64 = 64 << 20;

/// Decoder memory (dictionaries, header buffers) allowed, in KiB.
const DECODER_KIB: usize = 256 << 10;

/// Whether the bytes start with the 7z signature.
pub fn is_7z(b: &[u8]) -> bool {
    b.starts_with(MAGIC)
}

/// Judges the pickles of a 7z archive and returns the refusal that names them.
pub fn refuse(path: &Path, map: &[u8]) -> ReadError {
    let mut graph = Graph::new();
    let limits = Limits::for_file(map.len() as u64);
    let mut judged = 0usize;
    let walk = sevenz_rust2::ArchiveReader::new_with_memory_limit(
        std::io::Cursor::new(map),
        sevenz_rust2::Password::empty(),
        DECODER_KIB,
    )
    .and_then(|mut archive| {
        archive.set_thread_count(1);
        let mut left = BUDGET;
        archive.for_each_entries(|entry, data| {
            if entry.is_directory() || !looks_like_pickle(entry.name()) {
                return Ok(true);
            }
            if entry.size() > left {
                return Err(sevenz_rust2::Error::Other(
                    "members decompress to more than the 64 MiB judged".into(),
                ));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            data.take(left)
                .read_to_end(&mut bytes)
                .map_err(|e| sevenz_rust2::Error::Io(e, "reading a member".into()))?;
            left -= bytes.len() as u64;
            let mut pos = 0;
            while let Ok((_, used)) =
                pickle::unpickle(&bytes[pos..], &mut graph, &mut InertPersistentLoad, &limits)
            {
                pos += used;
            }
            judged += 1;
            Ok(true)
        })
    });
    let why = match walk {
        Ok(()) => format!(
            "a 7z archive ({judged} pickle member(s) judged): torch.load does not read 7z{}",
            super::names_suffix(&graph)
        ),
        Err(e) => {
            let e = match e {
                sevenz_rust2::Error::Other(m) => m.to_string(),
                other => other.to_string(),
            };
            format!(
                "a 7z archive that could not be read whole ({e}): torch.load does not read 7z{}",
                super::names_suffix(&graph)
            )
        }
    };
    ReadError::new(path, ReadErrorKind::NotACheckpoint(why)).naming(&graph)
}

/// Members judged: what pickle-based loaders open (`.pkl`, `.pickle`, `.pt`, `.pth`, `.bin`,
/// `.ckpt`, `data.pkl`), or anything without an extension.
fn looks_like_pickle(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let file = lower.rsplit('/').next().unwrap_or(&lower);
    !file.contains('.')
        || [
            ".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".dat",
        ]
        .iter()
        .any(|ext| file.ends_with(ext))
}
