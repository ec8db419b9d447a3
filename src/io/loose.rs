//! Pickles outside torch's layouts, read only so that their globals can be judged: the pickle
//! members of a zip that is not a torch archive (`numpy.load`, `joblib` and hand-made archives
//! unpickle them), and `.npy` arrays of Python objects (`numpy.load(allow_pickle=True)`
//! unpickles what follows the header).
//!
//! torch.load fails on both before unpickling anything, but other loaders run them, and scanners
//! are expected to flag them.

use std::path::Path;
use std::sync::Arc;

use super::pickle::{self, Limits};
use super::torch_zip::{Entry, entry_bytes};
use super::zipdir::{ZipDir, ZipEntry};
use super::{InertPersistentLoad, NpyHeaderError, ReadError, ReadErrorKind, new_parts};
use crate::checkpoint::value::{Graph, Node, Value};
use crate::checkpoint::{Checkpoint, Format};
use crate::tensor::MappedFile;

/// The most a member read for its pickle may decompress to.
const MAX_MEMBER: usize = 256 << 20;

/// How a member is read: as a pickle (by its name, or by a PROTO opcode first), as a `.npy`
/// array (pickled when its dtype holds objects), or not at all.
#[derive(PartialEq)]
enum Member {
    Pickle,
    Npy,
    Skip,
}

fn classify(name: &str, first: Option<u8>) -> Member {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".npy") {
        Member::Npy
    } else if [".pkl", ".pickle", ".joblib"]
        .iter()
        .any(|s| lower.ends_with(s))
        || first == Some(0x80)
    {
        Member::Pickle
    } else {
        Member::Skip
    }
}

/// A member's first byte, decompressing no more than that.
fn first_byte(map: &[u8], e: &Entry) -> Option<u8> {
    let raw = map.get(e.data_start..e.data_start + e.compressed_size)?;
    if e.method == zip::CompressionMethod::Stored {
        return raw.first().copied();
    }
    let mut b = [0u8; 1];
    let mut dec = flate2::read::DeflateDecoder::new(raw);
    std::io::Read::read_exact(&mut dec, &mut b).ok()?;
    Some(b[0])
}

/// Reads every pickle member of a zip that torch would not read as a checkpoint; the root is a
/// dict from member name to its (first) unpickled value.
pub fn read_zip(path: &Path, map: Arc<MappedFile>, dir: &ZipDir) -> Result<Checkpoint, ReadError> {
    let (mut graph, info) = new_parts(Format::Zip, map.len() as u64);
    let limits = Limits::for_file(map.len() as u64);
    let mut items = Vec::new();
    for e in &dir.entries {
        let name = e.display();
        if name.ends_with('/') || e.size == 0 {
            continue;
        }
        let entry = Entry::from(e);
        let kind = classify(&name, first_byte(&map, &entry));
        if kind == Member::Skip {
            continue;
        }
        let data =
            entry_bytes(&map, &entry, &name, MAX_MEMBER).map_err(|k| ReadError::new(path, k))?;
        let bytes = data.as_slice();
        let at = match kind {
            Member::Npy => npy_pickle_offset(bytes).map_err(|m| npy_err(path, &name, m))?,
            _ => Some(0),
        };
        let Some(at) = at else { continue };
        let (v, used) = judge(path, &name, bytes, at, &mut graph, &limits)?;
        // Pickles after the first (a legacy torch file, a multi-dump stream) are judged as far
        // as they parse: a reader that loads on runs them.
        let mut pos = at + used;
        while let Ok((_, used)) =
            pickle::unpickle(&bytes[pos..], &mut graph, &mut InertPersistentLoad, &limits)
        {
            pos += used;
        }
        items.push((Value::Str(name.into()), v));
    }
    if items.is_empty() {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotACheckpoint(
                "a zip archive without a torch data.pkl record and without pickle members (not \
                 saved by torch.save)"
                    .into(),
            ),
        ));
    }
    let root = graph.add(Node::Dict(items));
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// Unpickles the pickle at `at` of `data` (an `entry` of the file) into `graph`, returning it and
/// its length; its persistent ids become `None`, since the pickle is only judged.
fn judge(
    path: &Path,
    entry: &str,
    data: &[u8],
    at: usize,
    graph: &mut Graph,
    limits: &Limits,
) -> Result<(Value, usize), ReadError> {
    match pickle::unpickle(&data[at..], graph, &mut InertPersistentLoad, limits) {
        Ok(v) => Ok(v),
        Err(mut e) => {
            e.offset += at;
            Err(ReadError::new(
                path,
                ReadErrorKind::Pickle {
                    entry: entry.to_string(),
                    source: super::with_names(e, graph),
                },
            )
            .naming(graph))
        }
    }
}

/// Judges every member that looks like a pickle, as far as each parses, into `graph`: only the
/// globals matter (for an archive that is refused anyway), so every failure is ignored.
pub fn judge_members(map: &Arc<MappedFile>, entries: &[ZipEntry], graph: &mut Graph) {
    let limits = Limits::for_file(map.len() as u64);
    for e in entries {
        let entry = Entry::from(e);
        let kind = classify(&e.display(), first_byte(map, &entry));
        if kind == Member::Skip {
            continue;
        }
        let Ok(data) = entry_bytes(map, &entry, "", MAX_MEMBER) else {
            continue;
        };
        let bytes = data.as_slice();
        let mut pos = match kind {
            Member::Npy => match npy_pickle_offset(bytes) {
                Ok(Some(at)) => at,
                _ => continue,
            },
            _ => 0,
        };
        while let Ok((_, used)) =
            pickle::unpickle(&bytes[pos..], graph, &mut InertPersistentLoad, &limits)
        {
            pos += used;
        }
    }
}

fn npy_err(path: &Path, name: &str, source: NpyHeaderError) -> ReadError {
    ReadError::new(
        path,
        ReadErrorKind::Npy {
            name: name.to_string(),
            source,
        },
    )
}

/// Whether the file starts with the `.npy` magic.
pub fn is_npy(b: &[u8]) -> bool {
    b.starts_with(b"\x93NUMPY")
}

/// Reads a `.npy` file: only an object array (a pickle after the header) is read.
pub fn read_npy(path: &Path, map: Arc<MappedFile>) -> Result<Checkpoint, ReadError> {
    let name = path.display().to_string();
    let at = npy_pickle_offset(&map)
        .map_err(|m| npy_err(path, &name, m))?
        .ok_or_else(|| {
            ReadError::new(
                path,
                ReadErrorKind::NotACheckpoint(
                    "a numpy array of numbers, not a checkpoint (convert it with numpy)".into(),
                ),
            )
        })?;
    let (mut graph, info) = new_parts(Format::Npy, map.len() as u64);
    let limits = Limits::for_file(map.len() as u64);
    let (root, _) = judge(path, "object array", &map, at, &mut graph, &limits)?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        info,
        graph,
        root,
    })
}

/// Where the pickle of an object array starts, `None` for arrays of plain numbers.
///
/// The header is `\x93NUMPY`, a version, a little-endian length (2 bytes in version 1, 4 after)
/// and a Python dict literal whose `'descr'` is the dtype: `'|O'` or a list of fields, any of
/// which can be an object field.
fn npy_pickle_offset(b: &[u8]) -> Result<Option<usize>, NpyHeaderError> {
    if !is_npy(b) || b.len() < 10 {
        return Err(NpyHeaderError::NoMagic);
    }
    let (len, start): (usize, usize) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 => {
            let l = b.get(8..12).ok_or(NpyHeaderError::Truncated)?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        }
        v => return Err(NpyHeaderError::Version(v)),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or(NpyHeaderError::Truncated)?;
    let text = String::from_utf8_lossy(&b[start..end]);
    let descr = descr_value(&text).ok_or(NpyHeaderError::NoDescr)?;
    Ok(has_object_field(descr).then_some(end))
}

/// The text of the `'descr'` value: a quoted string, or a bracketed list up to its matching
/// bracket (quotes respected).
fn descr_value(header: &str) -> Option<&str> {
    let key = header
        .find("'descr'")
        .or_else(|| header.find("\"descr\""))?;
    let rest = header[key + 7..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether a dtype description names an object type: a type string (not a field name, which
/// follows an opening parenthesis) whose type character, after an optional byte-order mark, is
/// `O`.
fn has_object_field(descr: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut is_name = false;
    let mut before = ' ';
    let mut current = String::new();
    for c in descr.chars() {
        match quote {
            Some(q) if c == q => {
                let t = current.trim_start_matches(['<', '>', '|', '=']);
                if !is_name && t.starts_with('O') {
                    return true;
                }
                current.clear();
                quote = None;
            }
            Some(_) => current.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                is_name = before == '(';
            }
            None if !c.is_whitespace() => before = c,
            None => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn object_arrays_are_found_by_their_descr() {
        let h = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }";
        assert_eq!(
            npy_pickle_offset(&npy(h, b"x")).unwrap(),
            Some(10 + h.len())
        );
        let f = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        assert_eq!(npy_pickle_offset(&npy(f, b"xxxx")).unwrap(), None);
        // A structured dtype with an object field; a field *named* 'O...' is not one.
        let s = "{'descr': [('Obj', '<f8'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }";
        assert!(npy_pickle_offset(&npy(s, b"")).unwrap().is_some());
        let n = "{'descr': [('b', '<f8')], 'fortran_order': False, 'shape': (1,), }";
        assert_eq!(npy_pickle_offset(&npy(n, b"")).unwrap(), None);
        assert!(npy_pickle_offset(b"\x93NUMPY\x01\x00\xff\xff{").is_err());
    }
}
