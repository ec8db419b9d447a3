//! An ONNX's external data files: where initializers with `data_location = EXTERNAL` keep their
//! bytes, opened and mapped once per file and bounded by the files' sizes.

use std::collections::HashMap;
use std::path::Path;

use super::{OnnxReadError, R};

/// The external data files of one model: each opened, checked and mapped once, however many
/// initializers point into it, with the bytes handed out counted against the files' sizes.
pub(crate) struct External<'p> {
    dir: Option<&'p Path>,
    /// Each file's map (`None` for an empty file, which cannot be mapped), watched for faults
    /// for as long as it is mapped (the watch drops first).
    files: HashMap<String, Option<(crate::signals::MapWatch, memmap2::Mmap)>>,
    /// Bytes of all files mapped so far.
    mapped: u64,
    /// Bytes copied out of them so far.
    used: u64,
    /// The ranges handed out, per file: start → end.
    ranges: HashMap<String, std::collections::BTreeMap<usize, usize>>,
}

impl<'p> External<'p> {
    pub(crate) fn new(dir: Option<&'p Path>) -> External<'p> {
        External {
            dir,
            files: HashMap::new(),
            mapped: 0,
            used: 0,
            ranges: HashMap::new(),
        }
    }

    /// The initializer's bytes at `location`, `offset`, `length`.
    pub(super) fn bytes(&mut self, name: &str, kv: &[(String, String)]) -> R<Vec<u8>> {
        let (loc, off, len) = self.locate(name, kv)?;
        // Two initializers sharing bytes are no layout an exporter writes; where they do,
        // a doctored file could let two readers see different values for one name.
        let taken = self.ranges.entry(loc.clone()).or_default();
        let before = taken
            .range(..=off)
            .next_back()
            .is_some_and(|(_, end)| *end > off);
        let after = (taken.range(off..).next()).is_some_and(|(start, _)| *start < off + len);
        if len > 0 && (before || after) {
            return Err(OnnxReadError::ExternalRangesOverlap {
                name: name.to_string(),
                location: loc,
            });
        }
        if len > 0 {
            taken.insert(off, off + len);
        }
        // Exporters lay initializers end to end; ranges that overlap (every initializer naming
        // the whole file) would multiply memory by their count.
        self.used += len as u64;
        if self.used > self.mapped {
            return Err(OnnxReadError::ExternalOverlap {
                name: name.to_string(),
                used: self.used,
                mapped: self.mapped,
            });
        }
        Ok(self.slice(name, kv)?.to_vec())
    }

    /// The initializer's bytes in place, in the mapped data file (checked like [`Self::bytes`],
    /// but not counted: the caller copies out one tensor at a time).
    pub(crate) fn slice(&mut self, name: &str, kv: &[(String, String)]) -> R<&[u8]> {
        let (loc, off, len) = self.locate(name, kv)?;
        let data: &[u8] = self.files[&loc].as_ref().map_or(&[], |(_, m)| &m[..]);
        Ok(&data[off..off + len])
    }

    /// The data file, offset and length of an initializer's bytes, checked to lie in the file
    /// (opened and mapped on first use). Each key is read once: the reader refuses repeated
    /// keys, which ONNX Runtime would read as the last.
    fn locate(&mut self, name: &str, kv: &[(String, String)]) -> R<(String, usize, usize)> {
        for (i, (k, _)) in kv.iter().enumerate() {
            if !matches!(k.as_str(), "location" | "offset" | "length" | "checksum") {
                return Err(OnnxReadError::ExternalKey {
                    name: name.to_string(),
                    key: k.clone(),
                });
            }
            if kv[..i].iter().any(|(o, _)| o == k) {
                return Err(OnnxReadError::ExternalKeyTwice {
                    name: name.to_string(),
                    key: k.clone(),
                });
            }
        }
        let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        let loc = get("location").ok_or_else(|| OnnxReadError::NoLocation(name.to_string()))?;
        if !self.files.contains_key(loc) {
            let map = self.open(name, loc)?;
            self.mapped += map.as_ref().map_or(0, |(_, m)| m.len() as u64);
            self.files.insert(loc.to_string(), map);
        }
        let data: &[u8] = self.files[loc].as_ref().map_or(&[], |(_, m)| &m[..]);
        let off: usize = get("offset")
            .unwrap_or("0")
            .parse()
            .map_err(|_| OnnxReadError::BadOffset(name.to_string()))?;
        let len: usize = match get("length") {
            Some(l) => l
                .parse()
                .map_err(|_| OnnxReadError::BadLength(name.to_string()))?,
            None => data.len().saturating_sub(off),
        };
        if off.checked_add(len).is_none_or(|end| end > data.len()) {
            return Err(OnnxReadError::RangePastEnd {
                name: name.to_string(),
                offset: off,
                len,
                location: loc.to_string(),
                size: data.len(),
            });
        }
        Ok((loc.to_string(), off, len))
    }

    /// Opens and maps `loc`, which must be a regular file inside the model's folder.
    fn open(&self, name: &str, loc: &str) -> R<Option<(crate::signals::MapWatch, memmap2::Mmap)>> {
        let leaves = Path::new(loc).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if leaves || loc.is_empty() || loc.contains('\\') {
            return Err(OnnxReadError::LeavesFolder {
                name: name.to_string(),
                location: loc.to_string(),
            });
        }
        let dir = self
            .dir
            .ok_or_else(|| OnnxReadError::NeedsPath(name.to_string()))?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let path = dir.join(loc);
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |source| OnnxReadError::ExternalIo { path, source }
        };
        let link = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if link.file_type().is_symlink() {
            return Err(OnnxReadError::ExternalSymlink(path));
        }
        // A linked folder on the way could still lead elsewhere.
        let base = std::fs::canonicalize(dir).map_err(io(dir))?;
        let real = std::fs::canonicalize(&path).map_err(io(&path))?;
        if !real.starts_with(&base) {
            return Err(OnnxReadError::ExternalOutside { path, real });
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
        }
        let file = opts.open(&path).map_err(io(&path))?;
        let meta = file.metadata().map_err(io(&path))?;
        if !meta.is_file() {
            return Err(OnnxReadError::ExternalNotFile(path));
        }
        if meta.len() == 0 {
            return Ok(None);
        }
        // SAFETY: read-only map of a regular file; the bytes are copied out before the model is
        // used. A file truncated meanwhile faults: the SIGBUS handler reports it as changed.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
        let watch = crate::signals::watch_mapping(&path, map.as_ptr(), map.len());
        Ok(Some((watch, map)))
    }
}
