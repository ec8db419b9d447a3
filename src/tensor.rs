//! The tensor abstraction shared by every reader: a dtype, a shape, strides and an offset into a
//! storage whose bytes usually live in the memory-mapped input file.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

pub use crate::dtype::DType;

pub use crate::inflate::{Deflated, InflateBudget};

/// An input file, memory-mapped for in-place reads, with its handle kept for positioned reads
/// and kernel-side copies when whole tensors are streamed.
pub struct MappedFile {
    /// Declared before `map` so the range is unregistered before it is unmapped.
    _watch: Option<crate::signals::MapWatch>,
    map: Mmap,
    file: std::fs::File,
    /// Held while [`Buffer::copy_to`] uses the handle's file position.
    copy_position: std::sync::Mutex<()>,
}

impl MappedFile {
    /// Wraps a map of `file`.
    pub fn new(map: Mmap, file: std::fs::File) -> MappedFile {
        MappedFile {
            _watch: None,
            map,
            file,
            copy_position: std::sync::Mutex::new(()),
        }
    }

    /// Wraps a map of the input `path`, watched for the life of the map: a SIGBUS inside it
    /// reports `path` as changed while reading (see [`crate::signals`]).
    pub fn watched(map: Mmap, file: std::fs::File, path: &std::path::Path) -> MappedFile {
        let watch = crate::signals::watch_mapping(path, map.as_ptr(), map.len());
        MappedFile {
            _watch: Some(watch),
            map,
            file,
            copy_position: std::sync::Mutex::new(()),
        }
    }

    /// The file handle.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// The map itself.
    pub fn map(&self) -> &Mmap {
        &self.map
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFile({} bytes)", self.map.len())
    }
}

/// Bytes of one storage: a range of the memory-mapped input (zero copy), an owned buffer, or a
/// compressed zip entry decompressed the first time its bytes are needed.
#[derive(Clone)]
pub enum Buffer {
    /// A range inside a memory map shared by every tensor of the file.
    Mapped {
        /// The whole file.
        map: Arc<MappedFile>,
        /// Where this buffer lies in it.
        range: Range<usize>,
    },
    /// Bytes that exist only in memory (numpy arrays pickled inline).
    Owned(Arc<[u8]>),
    /// A deflated zip entry: nothing is decompressed until a command reads the bytes, so opening
    /// (and `inspect`) costs nothing however far the entry would expand.
    Deflated(Arc<Deflated>),
}

impl Buffer {
    /// Whether `other` is this very buffer (the same mapped range, owned allocation or zip
    /// entry), not merely equal bytes.
    pub fn is_same(&self, other: &Buffer) -> bool {
        match (self, other) {
            (Buffer::Mapped { map: a, range: r }, Buffer::Mapped { map: b, range: s }) => {
                Arc::ptr_eq(a, b) && r == s
            }
            (Buffer::Owned(a), Buffer::Owned(b)) => Arc::ptr_eq(a, b),
            (Buffer::Deflated(a), Buffer::Deflated(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The bytes; a deflated buffer is decompressed here (once), which fails for a corrupt entry
    /// or past the file's [`InflateBudget`].
    pub fn bytes(&self) -> std::io::Result<&[u8]> {
        match self {
            Buffer::Mapped { map, range } => Ok(&map[range.clone()]),
            Buffer::Owned(v) => Ok(v),
            Buffer::Deflated(d) => d.bytes(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Buffer::Mapped { range, .. } => range.len(),
            Buffer::Owned(v) => v.len(),
            Buffer::Deflated(d) => d.len(),
        }
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are read in place from the memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Buffer::Mapped { .. })
    }

    /// Passes the bytes in `range` (relative to this buffer) to `f` in chunks of at most 8 MiB
    /// (multiples of 64 bytes). Mapped bytes are fetched with positioned reads into one reused
    /// buffer rather than faulted in through the map, so streaming a file of any size keeps the
    /// resident set flat.
    pub fn for_each_chunk(
        &self,
        range: Range<usize>,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        const CHUNK: usize = 8 << 20;
        match self {
            Buffer::Owned(v) => f(&v[range]),
            Buffer::Deflated(d) => f(&d.bytes()?[range]),
            Buffer::Mapped { map, range: base } => {
                use std::os::unix::fs::FileExt;
                let start = base.start + range.start;
                let end = base.start + range.end;
                let mut buf = vec![0u8; (end - start).min(CHUNK)];
                let mut at = start;
                while at < end {
                    let n = (end - at).min(CHUNK);
                    map.file().read_exact_at(&mut buf[..n], at as u64)?;
                    f(&buf[..n])?;
                    at += n;
                }
                Ok(())
            }
        }
    }

    /// Replaces `buf`'s contents with the bytes in `range` (a positioned read for mapped bytes,
    /// so nothing stays mapped; `buf` is reused across calls).
    pub fn read_into(&self, range: Range<usize>, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Buffer::Owned(_) | Buffer::Deflated(_) => {
                buf.clear();
                buf.extend_from_slice(&self.bytes()?[range]);
                Ok(())
            }
            Buffer::Mapped { map, range: base } => {
                use std::os::unix::fs::FileExt;
                buf.resize(range.len(), 0);
                map.file()
                    .read_exact_at(buf, (base.start + range.start) as u64)
            }
        }
    }

    /// Copies the bytes in `range` to `out` at its current position. For mapped bytes this is
    /// `std::io::copy` between the two files, which on Linux copies kernel-side
    /// (`copy_file_range`, falling back to a read/write loop where the kernel cannot), so a
    /// large contiguous tensor never passes through this process. An input that ends before
    /// `range` does (it shrank while being read) is an `UnexpectedEof` error.
    pub fn copy_to(&self, range: Range<usize>, out: &mut std::fs::File) -> std::io::Result<()> {
        use std::io::{Read, Seek, Write};
        let (map, base) = match self {
            Buffer::Owned(_) | Buffer::Deflated(_) => return out.write_all(&self.bytes()?[range]),
            Buffer::Mapped { map, range: base } => (map, base),
        };
        // Every other read of the input is positioned (`read_exact_at`); this copy alone uses
        // the handle's file position, and holds the lock while it does.
        let _position = map.copy_position.lock().unwrap_or_else(|e| e.into_inner());
        let mut src = map.file();
        src.seek(std::io::SeekFrom::Start((base.start + range.start) as u64))?;
        let want = range.len() as u64;
        let copied = std::io::copy(&mut src.take(want), out)?;
        if copied != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "input file shrank while being read",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Buffer::Mapped { range, .. } => write!(f, "Mapped({range:?})"),
            Buffer::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Buffer::Deflated(d) => write!(f, "Deflated({} bytes)", d.len()),
        }
    }
}

/// A view into a storage, as torch describes it: element offset, shape and element strides.
///
/// The fields are private so that every view in hand has passed [`Tensor::check_view`]: each
/// constructor checks it, except [`Tensor::pending`], whose view gets its bytes (and its check)
/// from [`Tensor::attach_storage`].
#[derive(Clone, Debug)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    storage: Buffer,
    storage_key: Arc<str>,
    is_parameter: bool,
}

/// Why a tensor view does not fit its storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ViewError(pub String);

impl Tensor {
    /// Builds a view after checking that every element it addresses lies inside the storage and
    /// that no size computation overflows.
    pub fn new_view(
        dtype: DType,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        storage: Buffer,
        storage_key: Arc<str>,
    ) -> Result<Tensor, ViewError> {
        let t = Tensor::pending(dtype, shape, strides, offset, storage, storage_key);
        t.check_view()?;
        Ok(t)
    }

    /// A contiguous tensor of `shape` over the whole of `storage`, checked.
    pub fn contiguous(
        dtype: DType,
        shape: Vec<usize>,
        storage: Buffer,
        storage_key: Arc<str>,
    ) -> Result<Tensor, ViewError> {
        let strides = contiguous_strides(&shape);
        Tensor::new_view(dtype, shape, strides, 0, storage, storage_key)
    }

    /// A view whose storage's bytes are not known yet (torch < 1.6 files list the storages
    /// after the pickle that views them): unchecked until [`Tensor::attach_storage`] gives it
    /// its bytes. Only readers make these, and they attach every one before handing it out.
    pub(crate) fn pending(
        dtype: DType,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        storage: Buffer,
        storage_key: Arc<str>,
    ) -> Tensor {
        Tensor {
            dtype,
            shape,
            strides,
            offset,
            storage,
            storage_key,
            is_parameter: false,
        }
    }

    /// Gives a pending view its storage's bytes and checks it (a whole-storage node, `whole`,
    /// takes the storage's length as its shape).
    pub(crate) fn attach_storage(&mut self, storage: Buffer, whole: bool) -> Result<(), ViewError> {
        self.storage = storage;
        if whole {
            self.shape = vec![self.storage.len() / self.dtype.size()];
            self.strides = vec![1];
            self.offset = 0;
        }
        self.check_view()
    }

    /// The whole storage under this view, as a one-dimensional tensor.
    pub fn whole_storage(&self) -> Tensor {
        let n = self.storage.len() / self.dtype.size();
        Tensor {
            shape: vec![n],
            strides: vec![1],
            offset: 0,
            is_parameter: false,
            ..self.clone()
        }
    }

    /// The same view, marked as an `nn.Parameter` (or not).
    pub fn with_parameter(self, is_parameter: bool) -> Tensor {
        Tensor {
            is_parameter,
            ..self
        }
    }

    /// The same view under another storage key (a tensor placed into a checkpoint whose
    /// storages must not share its key).
    pub fn with_storage_key(self, storage_key: Arc<str>) -> Tensor {
        Tensor {
            storage_key,
            ..self
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The storage's bytes, shared with every view of the same storage.
    pub fn storage(&self) -> &Buffer {
        &self.storage
    }

    /// Identifies the storage inside its file (torch storage key or safetensors name), so that
    /// views of one storage can be recognised.
    pub fn storage_key(&self) -> &Arc<str> {
        &self.storage_key
    }

    /// Whether the tensor was pickled as an `nn.Parameter`.
    pub fn is_parameter(&self) -> bool {
        self.is_parameter
    }

    /// Checks that every element the view addresses lies inside its storage.
    pub fn check_view(&self) -> Result<(), ViewError> {
        let (shape, strides, offset, dtype) = (&self.shape, &self.strides, self.offset, self.dtype);
        if shape.len() != strides.len() {
            return Err(ViewError(format!(
                "shape {shape:?} and stride {strides:?} differ in rank"
            )));
        }
        let numel =
            checked_numel(shape).ok_or_else(|| ViewError(format!("shape {shape:?} overflows")))?;
        let capacity = self.storage.len() / dtype.size();
        // A view with zero or overlapping strides can address more elements than its storage
        // holds (torch's expand). Checkpoints do not store those, and a tiny file could otherwise
        // describe a tensor of 2^62 elements that every later step would try to materialise.
        // (Found by fuzzing: the byte size of such a view overflowed.)
        if numel > capacity && !self.storage.is_empty() || numel.checked_mul(dtype.size()).is_none()
        {
            return Err(ViewError(format!(
                "view of shape {shape:?} (stride {strides:?}) has {numel} elements but its storage holds {capacity}"
            )));
        }
        if numel > 0 {
            let mut last = offset;
            for (&d, &s) in shape.iter().zip(strides.iter()) {
                let span = (d - 1)
                    .checked_mul(s)
                    .ok_or_else(|| ViewError(format!("stride {strides:?} overflows")))?;
                last = last
                    .checked_add(span)
                    .ok_or_else(|| ViewError(format!("stride {strides:?} overflows")))?;
            }
            if last >= capacity {
                return Err(ViewError(format!(
                    "view (offset {offset}, shape {shape:?}, stride {strides:?}) reaches element {last} \
                     but the storage holds {capacity} {dtype} elements"
                )));
            }
        }
        Ok(())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the elements in bytes (not of the storage).
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Where the elements' bytes lie in the storage, when the view is contiguous.
    pub fn contiguous_range(&self) -> Option<Range<usize>> {
        self.is_contiguous().then(|| {
            let start = self.offset * self.dtype.size();
            start..start + self.nbytes()
        })
    }

    /// The elements' bytes without copying, when the view is contiguous (`Ok(None)` when not).
    pub fn contiguous_bytes(&self) -> std::io::Result<Option<&[u8]>> {
        let Some(range) = self.contiguous_range() else {
            return Ok(None);
        };
        Ok(self.storage.bytes()?.get(range))
    }

    /// Passes the elements' bytes in row-major order to `f`, in chunks (see
    /// [`Buffer::for_each_chunk`]); a non-contiguous view is gathered first.
    pub fn for_each_chunk(
        &self,
        f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if self.is_contiguous() {
            let start = self.offset * self.dtype.size();
            return self.storage.for_each_chunk(start..start + self.nbytes(), f);
        }
        let mut f = f;
        f(&self.to_contiguous_bytes()?)
    }

    /// The elements' bytes in row-major order: borrowed when contiguous, gathered otherwise.
    /// Fails only for a compressed storage that cannot be decompressed.
    pub fn to_contiguous_bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        if let Some(b) = self.contiguous_bytes()? {
            return Ok(std::borrow::Cow::Borrowed(b));
        }
        let es = self.dtype.size();
        let src = self.storage.bytes()?;
        let mut out = Vec::with_capacity(self.nbytes());
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..self.numel() {
            let el: usize = self.offset
                + index
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&src[el * es..(el + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(std::borrow::Cow::Owned(out))
    }
}

/// Product of dimensions, `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major element strides for a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1]);
    }
    strides
}

#[cfg(test)]
mod tests {

    use super::*;

    fn owned(n: usize) -> Buffer {
        Buffer::Owned((0..n as u8).collect::<Vec<_>>().into())
    }

    #[test]
    fn strided_view_gathers_in_row_major_order() {
        // 2x3 u8 matrix viewed transposed (3x2, strides 1,3).
        let t =
            Tensor::new_view(DType::U8, vec![3, 2], vec![1, 3], 0, owned(6), "0".into()).unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(&*t.to_contiguous_bytes().unwrap(), &[0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn view_past_storage_end_is_rejected() {
        let err = Tensor::new_view(DType::F32, vec![2], vec![1], 1, owned(8), "0".into());
        assert!(err.is_err());
        let err = Tensor::new_view(
            DType::U8,
            vec![usize::MAX, 3],
            vec![1, 1],
            0,
            owned(8),
            "0".into(),
        );
        assert!(err.unwrap_err().0.contains("overflows"));
    }
}

// check_view's cases, kept apart so that this file stays a readable size.
#[cfg(test)]
#[path = "tensor_view_tests.rs"]
mod view_tests;
