//! torch's oldest container (torch < 0.4): a tar with members `storages`, `tensors` and
//! `pickle`, which `torch.load` tries before the pickle sequence whenever a file is not a zip.
//!
//! The tar test is Python's: `tarfile.open(mode="r:")` succeeds when the first 512-byte block is
//! all zeros or is a header whose checksum (unsigned or signed sum) and numeric fields parse.
//! torch then unpickles, from `storages`: a count, one `(key, location, storage type)` pickle per
//! storage each followed by its raw bytes, and a list of storage views; from `tensors`: a count
//! and one `(key, storage key, type)` pickle per tensor each followed by its geometry; and last
//! the main object from `pickle`. Every one of those pickles goes into the checkpoint's graph.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::pickle::{self, Limits, NoPersistentLoad, PersistentIdError, PersistentLoad};
use super::torch_zip::storage_dtype;
use super::{ReadError, ReadErrorKind, TarError, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::{Buffer, MappedFile, Tensor};

const BLOCK: usize = 512;

/// Why a block is not a member header (to Python's `tarfile`).
#[derive(Debug, PartialEq)]
enum NotHeader {
    /// All zeros: the end-of-archive marker.
    Zeros,
    /// A bad checksum or numeric field, or fewer than 512 bytes.
    Invalid,
}

/// A member header's fields that matter here.
#[derive(Debug)]
struct Header {
    name: Vec<u8>,
    kind: u8,
    size: i128,
}

/// Whether Python's `tarfile.open(mode="r:")` opens the file (reads its first header).
pub fn is_tar(b: &[u8]) -> bool {
    b.len() >= BLOCK && !matches!(header(&b[..BLOCK]), Err(NotHeader::Invalid))
}

/// Python's `int(text.strip() or "0", 8)` on a field's text up to its first NUL, or the GNU
/// base-256 form (first byte 0x80 or 0xff); `None` where Python raises.
fn number(field: &[u8]) -> Option<i128> {
    if let Some((&first, rest)) = field.split_first()
        && (first == 0x80 || first == 0xff)
    {
        let n = rest.iter().fold(0i128, |n, &b| (n << 8) | i128::from(b));
        return Some(if first == 0xff {
            n - (1i128 << (8 * rest.len()))
        } else {
            n
        });
    }
    let text = field.split(|&b| b == 0).next().unwrap_or(&[]);
    if !text.is_ascii() {
        return None;
    }
    // str.strip() and int() both skip these (str.isspace() on ASCII).
    let space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f);
    let start = text.iter().position(|c| !space(c)).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|c| !space(c))
        .map_or(start, |p| p + 1);
    let mut t = &text[start..end];
    if t.is_empty() {
        return Some(0);
    }
    let negative = t[0] == b'-';
    if matches!(t[0], b'+' | b'-') {
        t = &t[1..];
    }
    if t.len() >= 2 && t[0] == b'0' && matches!(t[1], b'o' | b'O') {
        t = &t[2..];
        // int("0o_7", 8) is 7: one underscore may follow the prefix.
        t = t.strip_prefix(b"_").unwrap_or(t);
    }
    if t.is_empty() || t.starts_with(b"_") || t.ends_with(b"_") || t.windows(2).any(|w| w == b"__")
    {
        return None;
    }
    let mut n: i128 = 0;
    for &c in t.iter().filter(|&&c| c != b'_') {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        n = n.checked_mul(8)?.checked_add(i128::from(c - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// Parses one 512-byte block the way `TarInfo.frombuf` does.
fn header(block: &[u8]) -> Result<Header, NotHeader> {
    if block.len() != BLOCK {
        return Err(NotHeader::Invalid);
    }
    if block.iter().all(|&b| b == 0) {
        return Err(NotHeader::Zeros);
    }
    let sum = number(&block[148..156]).ok_or(NotHeader::Invalid)?;
    let outside = block[..148].iter().chain(&block[156..]);
    let unsigned: i128 = 256 + outside.clone().map(|&b| i128::from(b)).sum::<i128>();
    let signed: i128 = 256 + outside.map(|&b| i128::from(b as i8)).sum::<i128>();
    if sum != unsigned && sum != signed {
        return Err(NotHeader::Invalid);
    }
    // mode, uid, gid, size, mtime, devmajor, devminor: Python parses them all.
    let fields = [
        100..108,
        108..116,
        116..124,
        124..136,
        136..148,
        329..337,
        337..345,
    ];
    let mut values = [0i128; 7];
    for (v, r) in values.iter_mut().zip(fields) {
        *v = number(&block[r]).ok_or(NotHeader::Invalid)?;
    }
    let cstr = |r: std::ops::Range<usize>| -> Vec<u8> {
        block[r].split(|&b| b == 0).next().unwrap_or(&[]).to_vec()
    };
    let kind = block[156];
    let mut name = cstr(0..100);
    let prefix = cstr(345..500);
    if !prefix.is_empty() && !matches!(kind, b'L' | b'K' | b'S') {
        name = [prefix, b"/".to_vec(), name].concat();
    }
    Ok(Header {
        name,
        kind,
        size: values[3],
    })
}

/// One member: its header and the range of its data.
#[derive(Debug)]
struct Member {
    name: Vec<u8>,
    kind: u8,
    data: std::ops::Range<usize>,
}

/// Lists the members as `tarfile` loads them: up to the first zero, invalid or short block.
fn members(b: &[u8]) -> Result<Vec<Member>, TarError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < b.len() {
        let Ok(h) = header(&b[off..(off + BLOCK).min(b.len())]) else {
            break;
        };
        let shown = String::from_utf8_lossy(&h.name).into_owned();
        if matches!(h.kind, b'L' | b'K' | b'S' | b'x' | b'g' | b'X') {
            return Err(TarError::Extended(shown));
        }
        let regular = matches!(h.kind, b'0' | 0 | b'7');
        let supported = regular || matches!(h.kind, b'1'..=b'6');
        let size = if regular || !supported { h.size } else { 0 };
        let size = usize::try_from(size).map_err(|_| TarError::Size {
            name: shown.clone(),
            size: h.size,
        })?;
        let start = off + BLOCK;
        let padded = size.div_ceil(BLOCK).checked_mul(BLOCK);
        let next = padded
            .and_then(|p| start.checked_add(p))
            .filter(|&n| n <= b.len())
            .ok_or(TarError::PastEnd {
                name: shown,
                offset: off,
            })?;
        out.push(Member {
            name: h.name,
            kind: h.kind,
            data: start..start + size,
        });
        off = next;
    }
    Ok(out)
}

/// Reads a legacy tar checkpoint.
pub fn read(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let mut graph = Graph::new();
    read_into(path, map, &mut graph).map_err(|e| named_anyway(e, &graph))
}

/// Gives an error the globals the pickles read so far named, when it carries none yet: Python
/// would already have imported (and may have called) them.
pub(super) fn named_anyway(e: ReadError, graph: &Graph) -> ReadError {
    if e.named.records().is_empty() {
        e.naming(graph)
    } else {
        e
    }
}

fn read_into(
    path: &Path,
    map: Arc<MappedFile>,
    graph: &mut Graph,
) -> Result<Checkpoint, ReadError> {
    let ambiguous = |m: String| ReadError::new(path, ReadErrorKind::Ambiguous(m));
    let list = members(&map).map_err(|e| ReadError::new(path, ReadErrorKind::Tar(e)))?;
    let (_, mut info) = new_parts(Format::TorchTar, map.len() as u64);
    info.serialization_version = Some("tar".into());
    let member = |graph: &Graph, name: &str| -> Result<std::ops::Range<usize>, ReadError> {
        let found: Vec<&Member> = list.iter().filter(|m| m.name == name.as_bytes()).collect();
        match found.as_slice() {
            [] => Err(ReadError::new(
                path,
                ReadErrorKind::NotACheckpoint(format!(
                    "a tar archive without a {name:?} member (torch.load fails on it){}",
                    super::names_suffix(graph)
                )),
            )
            .naming(graph)),
            [m] if matches!(m.kind, b'0' | 0 | b'7') => Ok(m.data.clone()),
            [_] => Err(ambiguous(format!(
                "tar member {name:?} is not a regular file (extracting it follows a link or \
                 makes a directory or device)"
            ))),
            _ => Err(ambiguous(format!(
                "the tar archive holds {} members named {name:?} (tarfile takes the last, other \
                 readers the first)",
                found.len()
            ))),
        }
    };
    let limits = Limits::for_file(map.len() as u64);
    let mut storages: HashMap<String, Value> = HashMap::new();
    let mut sizes: HashMap<String, (Buffer, crate::tensor::DType)> = HashMap::new();

    let range = member(graph, "storages")?;
    let mut r = Stream::new(path, &map, range, "storages", &limits);
    let count = r.count(graph)?;
    for i in 0..count {
        let args = r.pickle(graph, &mut NoPersistentLoad)?;
        let (key, ty) = match graph.seq(&args) {
            Some([key, _location, ty]) => (key_text(key), ty.clone()),
            _ => return Err(r.err(format!("storage {i}: not a (key, location, type) tuple"))),
        };
        let key = key.ok_or_else(|| r.err(format!("storage {i}: key is not an int or str")))?;
        let dtype = storage_dtype(graph, &ty).map_err(|e| r.err(e.to_string()))?;
        let numel = r.i64()?;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| r.err(format!("storage '{key}' claims {numel} elements")))?;
        let bytes = r.bytes(len)?;
        let t = Tensor::new_view(
            dtype,
            vec![numel as usize],
            vec![1],
            0,
            bytes.clone(),
            key.as_str().into(),
        )
        .map_err(|e| r.err(e.0))?;
        let v = graph.add(Node::Storage(Box::new(t)));
        storages.insert(key.clone(), v);
        sizes.insert(key, (bytes, dtype));
    }
    let views = r.pickle(graph, &mut NoPersistentLoad)?;
    if graph.seq(&views).is_none_or(|v| !v.is_empty()) {
        return Err(ReadError::new(
            path,
            ReadErrorKind::Unsupported("storage views in a legacy tar file".into()),
        ));
    }

    let range = member(graph, "tensors")?;
    let mut r = Stream::new(path, &map, range, "tensors", &limits);
    let count = r.count(graph)?;
    let mut tensors: HashMap<String, Value> = HashMap::new();
    for i in 0..count {
        let args = r.pickle(graph, &mut NoPersistentLoad)?;
        let (key, storage) = match graph.seq(&args) {
            Some([key, storage, _ty]) => (key_text(key), key_text(storage)),
            _ => return Err(r.err(format!("tensor {i}: not a (key, storage, type) tuple"))),
        };
        let (Some(key), Some(storage)) = (key, storage) else {
            return Err(r.err(format!("tensor {i}: keys are not ints or strs")));
        };
        let (bytes, dtype) = sizes
            .get(&storage)
            .cloned()
            .ok_or_else(|| r.err(format!("tensor '{key}' uses unknown storage '{storage}'")))?;
        let ndim = usize::try_from(r.i32()?).map_err(|_| r.err("negative ndim".into()))?;
        r.bytes(4)?;
        let dims = |r: &mut Stream| -> Result<Vec<usize>, ReadError> {
            (0..ndim)
                .map(|_| {
                    let v = r.i64()?;
                    usize::try_from(v).map_err(|_| r.err(format!("tensor '{key}': negative {v}")))
                })
                .collect()
        };
        let shape = dims(&mut r)?;
        let strides = dims(&mut r)?;
        let offset = usize::try_from(r.i64()?).map_err(|_| r.err("negative offset".into()))?;
        let t = Tensor::new_view(
            dtype,
            shape,
            strides,
            offset,
            bytes,
            storage.as_str().into(),
        )
        .map_err(|e| r.err(format!("tensor '{key}': {}", e.0)))?;
        tensors.insert(key, graph.add(Node::Tensor(Box::new(t))));
    }

    let range = member(graph, "pickle")?;
    let mut r = Stream::new(path, &map, range, "pickle", &limits);
    let mut loader = TarObjects { tensors, storages };
    let root = r.pickle(graph, &mut loader)?;
    info.pickle_protocol = super::torch_zip::protocol_of(&map[r.range.clone()]);
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph: std::mem::take(graph),
        root,
    })
}

/// An int or str key as text (`deserialized_objects` keys compare by `int(saved_id)`).
fn key_text(v: &Value) -> Option<String> {
    v.as_int()
        .map(|i| i.to_string())
        .or_else(|| v.as_str().map(str::to_string))
}

/// Reads a member the way torch's file object does: pickles and raw fields in turn.
struct Stream<'a> {
    path: &'a Path,
    map: &'a Arc<MappedFile>,
    range: std::ops::Range<usize>,
    pos: usize,
    member: &'static str,
    limits: &'a Limits,
}

impl<'a> Stream<'a> {
    fn new(
        path: &'a Path,
        map: &'a Arc<MappedFile>,
        range: std::ops::Range<usize>,
        member: &'static str,
        limits: &'a Limits,
    ) -> Stream<'a> {
        Stream {
            path,
            map,
            pos: range.start,
            range,
            member,
            limits,
        }
    }

    fn err(&self, m: String) -> ReadError {
        ReadError::new(
            self.path,
            ReadErrorKind::Storage(format!("tar member {}: {m}", self.member)),
        )
    }

    fn pickle(
        &mut self,
        graph: &mut Graph,
        loader: &mut dyn PersistentLoad,
    ) -> Result<Value, ReadError> {
        let data = &self.map[self.pos..self.range.end];
        let base = self.pos - self.range.start;
        let (v, used) = pickle::unpickle(data, graph, loader, self.limits).map_err(|mut e| {
            e.offset += base;
            ReadError::new(
                self.path,
                ReadErrorKind::Pickle {
                    entry: format!("tar member {}", self.member),
                    source: super::with_names(e, graph),
                },
            )
            .naming(graph)
        })?;
        self.pos += used;
        Ok(v)
    }

    fn count(&mut self, graph: &mut Graph) -> Result<u64, ReadError> {
        let v = self.pickle(graph, &mut NoPersistentLoad)?;
        v.as_int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.err("the count is not a non-negative int".into()))
    }

    fn bytes(&mut self, n: usize) -> Result<Buffer, ReadError> {
        if n > self.range.end - self.pos {
            return Err(self.err(format!(
                "needs {n} bytes at offset {}, {} remain",
                self.pos - self.range.start,
                self.range.end - self.pos
            )));
        }
        let b = Buffer::Mapped {
            map: self.map.clone(),
            range: self.pos..self.pos + n,
        };
        self.pos += n;
        Ok(b)
    }

    fn i64(&mut self) -> Result<i64, ReadError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        // A mapped range never fails to read.
        a.copy_from_slice(b.bytes().unwrap_or(&[0; 8]));
        Ok(i64::from_le_bytes(a))
    }

    fn i32(&mut self) -> Result<i32, ReadError> {
        let b = self.bytes(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b.bytes().unwrap_or(&[0; 4]));
        Ok(i32::from_le_bytes(a))
    }
}

/// The main pickle's persistent ids: a tuple is a module source record (its first item is the
/// object), anything else a tensor or storage key.
struct TarObjects {
    tensors: HashMap<String, Value>,
    storages: HashMap<String, Value>,
}

impl PersistentLoad for TarObjects {
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, PersistentIdError> {
        if let Some(items) = graph.seq(pid) {
            return items.first().cloned().ok_or(PersistentIdError::EmptyTuple);
        }
        let key = key_text(pid).ok_or(PersistentIdError::NotKey)?;
        self.tensors
            .get(&key)
            .or_else(|| self.storages.get(&key))
            .cloned()
            .ok_or(PersistentIdError::Unknown(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_as_python_int_base_8() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  17 \0xx"), Some(0o17));
        assert_eq!(number(b"0o_17\0"), Some(0o17));
        assert_eq!(number(b"1_7\0"), Some(0o17));
        assert_eq!(number(b"-7\0"), Some(-7));
        assert_eq!(number(b"\0garbage"), Some(0));
        assert_eq!(number(b"18\0"), None);
        assert_eq!(number(b"1__7\0"), None);
        assert_eq!(number(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff, 0xff, 0xff, 0xff]), Some(-1));
    }

    fn block(name: &str, size: usize, kind: u8) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[156] = kind;
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    #[test]
    fn tar_test_follows_tarfile() {
        let h = block("storages", 3, b'0');
        assert!(is_tar(&h));
        let mut bad = h.clone();
        bad[0] ^= 1;
        assert!(!is_tar(&bad), "checksum no longer matches");
        assert!(
            is_tar(&[0u8; 512]),
            "a zero block opens as an empty archive"
        );
        assert!(!is_tar(&h[..511]));
        let mut mode = h.clone();
        mode[100] = b'9';
        // Keep the checksum right: Python still refuses the mode field.
        let old: u32 = h.iter().map(|&x| u32::from(x)).sum::<u32>()
            - h[148..156].iter().map(|&x| u32::from(x)).sum::<u32>()
            + 256;
        let new = old - u32::from(b'0') + u32::from(b'9');
        mode[148..155].copy_from_slice(format!("{new:06o}\0").as_bytes());
        assert!(!is_tar(&mode));
    }

    #[test]
    fn members_stop_at_zero_block_and_refuse_truncation() {
        let mut t = block("a", 3, b'0');
        t.extend_from_slice(&[b'x'; BLOCK]);
        t.extend_from_slice(&[0u8; 2 * BLOCK]);
        t.extend_from_slice(&block("hidden", 0, b'0'));
        let m = members(&t).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].data, 512..515);
        let mut cut = block("a", 3, b'0');
        cut.extend_from_slice(b"xyz");
        assert!(matches!(
            members(&cut).unwrap_err(),
            TarError::PastEnd { offset: 0, .. }
        ));
        let pax = block("p", 0, b'x');
        assert!(matches!(members(&pax).unwrap_err(), TarError::Extended(_)));
    }
}
