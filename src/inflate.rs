//! Compressed zip entries decompressed lazily: only when a command reads their bytes, once, and
//! within a per-file budget, so a decompression bomb costs nothing to open or `inspect` and
//! cannot expand past a bound proportional to the file.

use std::ops::Range;
use std::sync::Arc;

use crate::tensor::MappedFile;

/// A deflated entry of the memory-mapped input, decompressed at most once, under its file's
/// [`InflateBudget`].
pub struct Deflated {
    map: Arc<MappedFile>,
    range: Range<usize>,
    size: usize,
    /// The entry's name in the archive, for messages.
    entry: String,
    budget: Arc<InflateBudget>,
    bytes: std::sync::OnceLock<Result<Vec<u8>, Arc<InflateFailure>>>,
}

/// Why a deflated entry could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// The file's entries together would exceed its [`InflateBudget`].
    #[error(
        "compressed entries would expand to more than {limit_mib} MiB in memory, more than a file of this size can honestly hold (a decompression bomb?)"
    )]
    Bomb {
        /// The budget.
        limit_mib: usize,
    },
    /// The deflate stream is corrupt.
    #[error("cannot decompress: {0}")]
    Corrupt(#[source] std::io::Error),
    /// The stream holds another number of bytes than the entry declares.
    #[error("decompresses to {}{got} bytes but declares {declared}", if *more { "more than " } else { "" })]
    Size {
        /// Bytes decompressed (at most the declared size plus one is read).
        got: usize,
        /// Whether the stream went on past the declared size.
        more: bool,
        /// Bytes declared.
        declared: usize,
    },
}

/// An [`InflateError`] with the file and entry it happened in: `<file>: <entry>: <problem>`
/// (either name left out when empty). Reaches callers inside an `io::Error` of kind
/// `InvalidData`, as its source.
#[derive(Debug, thiserror::Error)]
#[error("{}", at(file, entry, fault))]
pub struct InflateFailure {
    /// The file (empty when the caller names it).
    pub file: String,
    /// The entry (empty when the caller names it).
    pub entry: String,
    /// What went wrong.
    #[source]
    pub fault: InflateError,
}

fn at(file: &str, entry: &str, fault: &InflateError) -> String {
    let mut at: Vec<String> = vec![file.to_string(), entry.to_string()];
    at.retain(|s| !s.is_empty());
    at.push(fault.to_string());
    at.join(": ")
}

/// How many decompressed bytes one file may hold in memory, all its entries together: a few
/// megabytes of deflated zeros would otherwise expand to gigabytes (a decompression bomb).
pub struct InflateBudget {
    left: std::sync::atomic::AtomicUsize,
    total: usize,
    /// The file, for messages (empty when the caller names it itself).
    file: String,
}

impl InflateBudget {
    /// Room for 128 MiB plus eight times the compressed file's size: real tensors barely
    /// compress (1.1:1 is typical), so only a bomb comes near it. `file` names the file in
    /// messages (a later command, such as `fold`, reports them).
    pub fn for_file(file: &std::path::Path, file_size: usize) -> Arc<InflateBudget> {
        let total = (128usize << 20).saturating_add(file_size.saturating_mul(8));
        InflateBudget::of(file, total)
    }

    /// Room for 64 MiB plus twice the file's size, for the pickle and the small records read
    /// when a file is opened: a pickle is text and structure, never megabytes of one repeated
    /// byte, and what it decodes to is copied again.
    pub fn for_records(file_size: usize) -> Arc<InflateBudget> {
        let total = (64usize << 20).saturating_add(file_size.saturating_mul(2));
        InflateBudget::of(std::path::Path::new(""), total)
    }

    fn of(file: &std::path::Path, total: usize) -> Arc<InflateBudget> {
        Arc::new(InflateBudget {
            left: std::sync::atomic::AtomicUsize::new(total),
            total,
            file: file.display().to_string(),
        })
    }

    /// Takes `n` bytes from the budget, or says why not.
    fn take(&self, n: usize) -> Result<(), InflateError> {
        use std::sync::atomic::Ordering;
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
            .map(|_| ())
            .map_err(|_| InflateError::Bomb {
                limit_mib: self.total >> 20,
            })
    }
}

impl Deflated {
    /// The deflated entry `entry` at `range` of `map` that declares `size` bytes.
    pub fn new(
        map: Arc<MappedFile>,
        range: Range<usize>,
        size: usize,
        entry: String,
        budget: Arc<InflateBudget>,
    ) -> Deflated {
        Deflated {
            map,
            range,
            size,
            entry,
            budget,
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// The declared (decompressed) size.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the entry declares no bytes.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The decompressed bytes (decompressed on the first call, then kept).
    pub fn bytes(&self) -> std::io::Result<&[u8]> {
        self.bytes
            .get_or_init(|| {
                self.inflate().map_err(|fault| {
                    Arc::new(InflateFailure {
                        file: self.budget.file.clone(),
                        entry: self.entry.clone(),
                        fault,
                    })
                })
            })
            .as_deref()
            .map_err(|f| std::io::Error::new(std::io::ErrorKind::InvalidData, f.clone()))
    }

    fn inflate(&self) -> Result<Vec<u8>, InflateError> {
        use std::io::Read;
        self.budget.take(self.size)?;
        // Never trust the declared size for more than the allocation: read one byte past it to
        // catch an entry that expands further than it claims.
        let mut out = Vec::with_capacity(self.size);
        let dec = flate2::read::DeflateDecoder::new(&self.map[self.range.clone()]);
        dec.take(self.size as u64 + 1)
            .read_to_end(&mut out)
            .map_err(InflateError::Corrupt)?;
        if out.len() != self.size {
            return Err(InflateError::Size {
                got: out.len().min(self.size),
                more: out.len() > self.size,
                declared: self.size,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// `data` deflated, in a mapped temporary file.
    fn mapped_deflate(data: &[u8]) -> (Arc<MappedFile>, Range<usize>) {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        let z = enc.finish().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&z).unwrap();
        // SAFETY: a private temporary file nobody else writes.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        (Arc::new(MappedFile::new(map, f)), 0..z.len())
    }

    #[test]
    fn decompresses_once_exactly_the_declared_size_within_the_budget() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let (map, range) = mapped_deflate(&data);
        let budget = InflateBudget::of(std::path::Path::new("f.pt"), 150_000);
        let d = Deflated::new(map.clone(), range.clone(), data.len(), "e/0".into(), budget);
        assert_eq!(d.bytes().unwrap(), &data[..]);
        // A second entry would pass the budget: refused, naming file and entry.
        let budget = InflateBudget::of(std::path::Path::new("f.pt"), 150_000);
        let a = Deflated::new(
            map.clone(),
            range.clone(),
            data.len(),
            "e/1".into(),
            budget.clone(),
        );
        let b = Deflated::new(map.clone(), range.clone(), data.len(), "e/2".into(), budget);
        a.bytes().unwrap();
        let err = b.bytes().unwrap_err().to_string();
        assert!(
            err.starts_with("f.pt: e/2: ") && err.contains("decompression bomb"),
            "{err}"
        );
        // A declared size the stream does not produce, either way.
        let budget = InflateBudget::of(std::path::Path::new(""), usize::MAX);
        for size in [data.len() - 1, data.len() + 1] {
            let d = Deflated::new(map.clone(), range.clone(), size, "e".into(), budget.clone());
            let err = d.bytes().unwrap_err().to_string();
            assert!(err.starts_with("e: decompresses to"), "{err}");
        }
    }
}
