//! The ONNX file's layout for grafting: where each top-level and graph field lies, each
//! initializer's header and where its data is, the nodes and the graph inputs. The file is
//! memory-mapped and only field headers are touched here; tensor data is read later, one
//! tensor at a time, with positioned reads (so a large model never becomes resident).

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::onnx::proto::{Node, ValueInfo};
use crate::onnx::read::{self, Buf, Field};

/// ONNX `TensorProto.DataType` codes of the floating types grafting reads and writes.
pub const FLOAT: u64 = 1;
/// float16.
pub const FLOAT16: u64 = 10;
/// bfloat16.
pub const BFLOAT16: u64 = 16;
/// float64.
pub const DOUBLE: u64 = 11;

/// Where an initializer's element bytes are.
#[derive(Clone, Debug)]
pub enum Data {
    /// Little-endian elements in the model file (`raw_data`, or packed `float_data`/`double_data`,
    /// which hold the same bytes for f32/f64).
    Inline(Range<usize>),
    /// In an external data file: the `external_data` entries.
    External(Vec<(String, String)>),
    /// Another encoding (typed fields of other types, unpacked values): never a graft target.
    Other,
}

/// One initializer.
#[derive(Clone, Debug)]
pub struct Init {
    /// Name.
    pub name: String,
    /// `TensorProto.DataType`.
    pub code: u64,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// The whole field (key, length and message) in the file.
    pub field: Range<usize>,
    /// The message's fields other than data, copied unchanged when the tensor is replaced.
    pub keep: Vec<Range<usize>>,
    /// The data.
    pub data: Data,
}

impl Init {
    /// Element count (`None` when a dimension is negative or the product overflows).
    pub fn numel(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        })
    }

    /// Bytes per element for the floating types, `None` for the rest.
    pub fn float_size(&self) -> Option<usize> {
        match self.code {
            FLOAT => Some(4),
            FLOAT16 | BFLOAT16 => Some(2),
            DOUBLE => Some(8),
            _ => None,
        }
    }
}

/// A field of the model or graph message: its number and its whole extent in the file.
#[derive(Clone, Debug)]
pub struct Span {
    /// Field number.
    pub field: u32,
    /// Key, length and contents.
    pub range: Range<usize>,
}

/// The scanned model.
#[derive(Debug)]
pub struct Scanned {
    /// The model file.
    pub path: PathBuf,
    /// Top-level `ModelProto` fields in file order.
    pub top: Vec<Span>,
    /// Index in `top` of the graph field.
    pub graph: usize,
    /// `GraphProto` fields in file order.
    pub graph_fields: Vec<Span>,
    /// Initializers in file order (index into `graph_fields` is found through `field`).
    pub inits: Vec<Init>,
    /// Nodes in order.
    pub nodes: Vec<Node>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    /// Default-domain opset.
    pub opset: i64,
}

/// Offset of `inner` (a slice of `outer`) from `outer`'s start.
fn offset(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Walks `msg` (a slice of `file`), returning each field with its absolute extent.
fn fields<'a>(
    file: &'a [u8],
    msg: &'a [u8],
) -> Result<Vec<(u32, Field<'a>, Range<usize>)>, read::OnnxReadError> {
    let base = offset(file, msg);
    let mut b = Buf::new(msg);
    let mut out = Vec::new();
    loop {
        let start = b.pos;
        let Some((f, v)) = b.next()? else { break };
        out.push((f, v, base + start..base + b.pos));
    }
    Ok(out)
}

fn tensor(file: &[u8], msg: &[u8], field: Range<usize>) -> Result<Init, read::OnnxReadError> {
    let mut t = Init {
        name: String::new(),
        code: 0,
        dims: Vec::new(),
        field,
        keep: Vec::new(),
        data: Data::Other,
    };
    let mut external = Vec::new();
    let mut typed: Option<(u32, Range<usize>)> = None;
    let mut raw = None;
    for (f, v, range) in fields(file, msg)? {
        match (f, &v) {
            (1, Field::Bytes(d)) => t.dims.extend(read::packed_varints(d)?),
            (1, Field::Varint(d)) => t.dims.push(*d as i64),
            (2, Field::Varint(c)) => t.code = *c,
            (8, Field::Bytes(s)) => t.name = read::text(s),
            (9, Field::Bytes(r)) => raw = Some(offset(file, r)..offset(file, r) + r.len()),
            (4 | 10, Field::Bytes(d)) => {
                typed = Some((f, offset(file, d)..offset(file, d) + d.len()))
            }
            (13, Field::Bytes(kv)) => external.push(read::string_pair(kv)?),
            _ => {}
        }
        // Data fields (typed values of every type, raw, external, its location flag) are
        // dropped from a replaced tensor; everything else (name, dims, type, doc) is kept.
        if !matches!(f, 4..=7 | 9..=11 | 13 | 14) {
            t.keep.push(range);
        }
    }
    t.data = if let Some(r) = raw {
        Data::Inline(r)
    } else if !external.is_empty() {
        Data::External(external)
    } else {
        match typed {
            Some((4, r)) if t.code == FLOAT => Data::Inline(r),
            Some((10, r)) if t.code == DOUBLE => Data::Inline(r),
            // No data at all: an empty tensor.
            None => Data::Inline(0..0),
            _ => Data::Other,
        }
    };
    Ok(t)
}

/// Scans `file` (the bytes of the model at `path`).
pub fn scan(file: &[u8], path: &Path) -> Result<Scanned, read::OnnxReadError> {
    let mut s = Scanned {
        path: path.to_path_buf(),
        top: Vec::new(),
        graph: usize::MAX,
        graph_fields: Vec::new(),
        inits: Vec::new(),
        nodes: Vec::new(),
        inputs: Vec::new(),
        opset: 0,
    };
    let mut all_inputs = Vec::new();
    for (f, v, range) in fields(file, file)? {
        match (f, v) {
            (7, Field::Bytes(g)) => {
                if s.graph != usize::MAX {
                    return Err(read::OnnxReadError::TwoGraphs);
                }
                s.graph = s.top.len();
                for (gf, gv, grange) in fields(file, g)? {
                    match (gf, gv) {
                        (1, Field::Bytes(n)) => s.nodes.push(read::node(n, s.nodes.len())?),
                        (5, Field::Bytes(t)) => s.inits.push(tensor(file, t, grange.clone())?),
                        (11, Field::Bytes(v)) => all_inputs.push(read::value_info(v)?),
                        // ONNX Runtime densifies a sparse initializer and lets it replace a
                        // dense one of its name: a grafted EMA weight would not be what runs.
                        (15, Field::Bytes(t)) => return Err(read::sparse(t)),
                        _ => {}
                    }
                    s.graph_fields.push(Span {
                        field: gf,
                        range: grange,
                    });
                }
            }
            (8, Field::Bytes(o)) => {
                let (mut domain, mut version) = (String::new(), 0);
                for (of, ov, _) in fields(file, o)? {
                    match (of, ov) {
                        (1, Field::Bytes(d)) => domain = read::text(d),
                        (2, Field::Varint(n)) => version = n as i64,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    s.opset = version;
                }
            }
            _ => {}
        }
        s.top.push(Span { field: f, range });
    }
    if s.graph == usize::MAX {
        return Err(read::OnnxReadError::NoGraph);
    }
    let names: std::collections::HashSet<&str> = s.inits.iter().map(|t| t.name.as_str()).collect();
    s.inputs = all_inputs
        .into_iter()
        .filter(|i| !names.contains(i.name.as_str()))
        .collect();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{ElemType, Model, TensorProto};

    #[test]
    fn initializer_layout_is_found() {
        let m = Model {
            opset: 17,
            graph_name: "g".into(),
            nodes: vec![],
            initializers: vec![TensorProto {
                name: "w".into(),
                elem: ElemType::Float,
                dims: vec![2, 3],
                raw: (0..24).collect(),
            }],
            inputs: vec![],
            outputs: vec![],
            metadata: vec![],
            producer_version: "0".into(),
        };
        let bytes = m.encode();
        let s = scan(&bytes, Path::new("m.onnx")).unwrap();
        assert_eq!(s.opset, 17);
        let t = &s.inits[0];
        assert_eq!(
            (t.name.as_str(), t.code, t.dims.as_slice()),
            ("w", FLOAT, &[2i64, 3][..])
        );
        let Data::Inline(r) = &t.data else { panic!() };
        assert_eq!(&bytes[r.clone()], (0..24).collect::<Vec<u8>>().as_slice());
        assert_eq!(t.keep.len(), 3, "dims, type and name are kept");
        assert!(scan(b"\x08\x07", Path::new("x")).is_err(), "no graph");
    }
}
