//! Reading ONNX files (any exporter's) into [`Model`]: graph, nodes, attributes, initializers
//! (raw, typed or external data), inputs, outputs, metadata. Unknown fields are skipped; every
//! length is checked against the bytes left.

use std::path::{Path, PathBuf};

use super::proto::{Dim, ElemType, Model, TensorProto, ValueInfo};

type R<T> = Result<T, OnnxReadError>;

/// Why an ONNX file could not be read: one variant per failure, naming the byte offset, the
/// initializer or the external data file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxReadError {
    /// A varint runs past the end of its message.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint longer than 64 bits.
    #[error("varint longer than 10 bytes")]
    LongVarint,
    /// A length that does not fit this machine's address space.
    #[error("length overflows")]
    LengthOverflow,
    /// A protobuf wire type ONNX does not use.
    #[error("wire type {wire} at byte {pos}")]
    WireType {
        /// The wire type.
        wire: u64,
        /// Where its field's key ends.
        pos: usize,
    },
    /// A field longer than the bytes left.
    #[error("a field of {len} bytes at byte {pos} runs past the end ({total} bytes)")]
    PastEnd {
        /// The field's length.
        len: usize,
        /// Where it starts.
        pos: usize,
        /// The message's length.
        total: usize,
    },
    /// A tensor element type the reader does not decode.
    #[error("tensor data type {0} is not read")]
    DataType(u64),
    /// An initializer whose element type is not read.
    #[error("initializer '{name}': {source}")]
    Initializer {
        /// The initializer.
        name: String,
        /// What is wrong with it.
        #[source]
        source: Box<OnnxReadError>,
    },
    /// External data ranges that overlap (their sum exceeds the data files' size).
    #[error(
        "initializer '{name}': external data ranges overlap (they add up to {used} bytes, more than the {mapped} bytes of the data files)"
    )]
    ExternalOverlap {
        /// The initializer that went over.
        name: String,
        /// Bytes handed out so far.
        used: u64,
        /// Bytes of all data files.
        mapped: u64,
    },
    /// External data without a `location`.
    #[error("initializer '{0}': external data without location")]
    NoLocation(String),
    /// An `offset` that is not a number.
    #[error("initializer '{0}': bad external offset")]
    BadOffset(String),
    /// A `length` that is not a number.
    #[error("initializer '{0}': bad external length")]
    BadLength(String),
    /// A range past the end of its data file.
    #[error(
        "initializer '{name}': external range {offset}+{len} lies past the end of {location} ({size} bytes)"
    )]
    RangePastEnd {
        /// The initializer.
        name: String,
        /// Its offset.
        offset: usize,
        /// Its length.
        len: usize,
        /// The data file.
        location: String,
        /// The data file's size.
        size: usize,
    },
    /// A location that is absolute, climbs out, or uses backslashes.
    #[error("initializer '{name}': external data location '{location}' leaves the model's folder")]
    LeavesFolder {
        /// The initializer.
        name: String,
        /// Its location.
        location: String,
    },
    /// External data in a model read from bytes without a path.
    #[error("initializer '{0}': external data needs the model's path")]
    NeedsPath(String),
    /// The operating system refused a data file (or the model's folder).
    #[error("{}: {source}", path.display())]
    ExternalIo {
        /// The file or folder.
        path: PathBuf,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// A data file that is a symbolic link.
    #[error("{}: external data is a symbolic link, which is not followed", .0.display())]
    ExternalSymlink(PathBuf),
    /// A data file whose real path lies outside the model's folder.
    #[error("{}: external data resolves to {}, outside the model's folder", path.display(), real.display())]
    ExternalOutside {
        /// The path as named.
        path: PathBuf,
        /// Where it resolves.
        real: PathBuf,
    },
    /// A data file that is not a regular file.
    #[error("{}: external data is not a regular file", .0.display())]
    ExternalNotFile(PathBuf),
    /// A name that initializers, node outputs (`Constant` nodes' among them) and graph inputs
    /// define twice: ONNX Runtime takes one copy (the last initializer), the reader could take
    /// another, so neither is trusted (review 7).
    #[error("'{0}' is defined twice (as an initializer, a node output or a graph input)")]
    DefinedTwice(String),
    /// A metadata key given twice (ONNX Runtime keeps the last).
    #[error("metadata key '{0}' is given twice")]
    MetadataTwice(String),
    /// An external data key given twice (ONNX Runtime takes the last).
    #[error("initializer '{name}': external data key '{key}' is given twice")]
    ExternalKeyTwice {
        /// The initializer.
        name: String,
        /// The key.
        key: String,
    },
    /// An external data key ONNX Runtime does not take.
    #[error("initializer '{name}': unknown external data key '{key}'")]
    ExternalKey {
        /// The initializer.
        name: String,
        /// The key.
        key: String,
    },
    /// External data entries without `data_location = EXTERNAL`, or that location with
    /// inline data: ONNX Runtime reads one, the reader could read the other.
    #[error("initializer '{0}': its data location and its external data entries disagree")]
    ExternalLocation(String),
    /// Two initializers whose external bytes overlap.
    #[error(
        "initializer '{name}': its external data range overlaps another initializer's in {location}"
    )]
    ExternalRangesOverlap {
        /// The initializer.
        name: String,
        /// The data file.
        location: String,
    },
    /// The bytes hold no graph.
    #[error("no graph: not an ONNX model")]
    NoGraph,
    /// The bytes hold two graphs, which readers resolve differently.
    #[error("two graphs in one model")]
    TwoGraphs,
    /// A singular field given twice: protobuf merges the copies (review 8 G3).
    #[error("{message}.{field} is given twice (ONNX Runtime would merge the copies)")]
    FieldTwice {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A sparse initializer: ONNX Runtime densifies it (and lets it replace a dense one of the
    /// same name); fuse-ema never writes one and does not read them (review 8 G4).
    #[error("sparse initializer '{0}' is not read")]
    SparseInitializer(String),
    /// A `Constant` whose value is not exactly one of its value attributes: ONNX Runtime builds
    /// it from the first attribute, whatever follows (review 8 G6); or its value is sparse.
    #[error("a Constant needs exactly one value attribute, not {0}")]
    ConstantValues(String),
    /// Something wrong inside a node.
    #[error("node '{node}': {source}")]
    Node {
        /// The node's name (or its position when it has none).
        node: String,
        /// What is wrong with it.
        #[source]
        source: Box<OnnxReadError>,
    },
}

pub(crate) struct Buf<'a> {
    b: &'a [u8],
    pub(crate) pos: usize,
}

/// One protobuf field.
pub(crate) enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Buf<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Buf<'a> {
        Buf { b, pos: 0 }
    }

    fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or(OnnxReadError::TruncatedVarint)?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OnnxReadError::LongVarint)
    }

    pub(crate) fn next(&mut self) -> R<Option<(u32, Field<'a>)>> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n =
                    usize::try_from(self.varint()?).map_err(|_| OnnxReadError::LengthOverflow)?;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
            w => {
                return Err(OnnxReadError::WireType {
                    wire: w,
                    pos: self.pos,
                });
            }
        };
        Ok(Some((field, f)))
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(OnnxReadError::PastEnd {
                len: n,
                pos: self.pos,
                total: self.b.len(),
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `StringStringEntryProto` (key 1, value 2).
pub(crate) fn string_pair(b: &[u8]) -> R<(String, String)> {
    let mut q = Buf::new(b);
    let (mut k, mut v) = (String::new(), String::new());
    let mut once = Once::new(&once::ENTRY);
    while let Some((f, x)) = q.next()? {
        once.see(f)?;
        match (f, x) {
            (1, Field::Bytes(s)) => k = text(s),
            (2, Field::Bytes(s)) => v = text(s),
            _ => {}
        }
    }
    Ok((k, v))
}

pub(crate) fn packed_varints(b: &[u8]) -> R<Vec<i64>> {
    let mut p = Buf::new(b);
    let mut out = Vec::new();
    while p.pos < b.len() {
        out.push(p.varint()? as i64);
    }
    Ok(out)
}

fn elem(code: u64) -> R<ElemType> {
    match code {
        1 => Ok(ElemType::Float),
        7 => Ok(ElemType::Int64),
        9 => Ok(ElemType::Bool),
        10 => Ok(ElemType::Float16),
        other => Err(OnnxReadError::DataType(other)),
    }
}

/// The element type of a graph input or output: an initializer's, or an integer class map's.
fn value_elem(code: u64) -> R<ElemType> {
    match code {
        2 => Ok(ElemType::Uint8),
        6 => Ok(ElemType::Int32),
        other => elem(other),
    }
}

fn tensor(b: &[u8], ext: &mut External<'_>) -> R<TensorProto> {
    let mut p = Buf::new(b);
    let (mut name, mut dims, mut code, mut raw) = (String::new(), Vec::new(), 0u64, Vec::new());
    let (mut floats, mut ints, mut small) = (Vec::new(), Vec::new(), Vec::new());
    let mut external: Vec<(String, String)> = Vec::new();
    let mut location = 0u64;
    let mut once = Once::new(&once::TENSOR);
    while let Some((f, v)) = p.next()? {
        once.see(f)?;
        match (f, v) {
            (1, Field::Bytes(d)) => dims.extend(packed_varints(d)?),
            (1, Field::Varint(d)) => dims.push(d as i64),
            (2, Field::Varint(c)) => code = c,
            (8, Field::Bytes(s)) => name = text(s),
            (9, Field::Bytes(r)) => raw = r.to_vec(),
            (4, Field::Bytes(d)) => floats.extend(crate::convert::f32s_le(d)),
            (4, Field::Fixed32(d)) => floats.push(f32::from_le_bytes(d)),
            // int32_data: bool (and other small types) when not in raw_data.
            (5, Field::Bytes(d)) => small.extend(packed_varints(d)?),
            (5, Field::Varint(d)) => small.push(d as i64),
            (7, Field::Bytes(d)) => ints.extend(packed_varints(d)?),
            (7, Field::Varint(d)) => ints.push(d as i64),
            (13, Field::Bytes(kv)) => external.push(string_pair(kv)?),
            (14, Field::Varint(l)) => location = l,
            _ => {}
        }
    }
    let elem = elem(code).map_err(|source| OnnxReadError::Initializer {
        name: name.clone(),
        source: Box::new(source),
    })?;
    let inline = !(raw.is_empty() && floats.is_empty() && ints.is_empty() && small.is_empty());
    check_external(&name, &external, location, !inline)?;
    if raw.is_empty() {
        if !floats.is_empty() {
            raw = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        } else if !ints.is_empty() {
            raw = ints.iter().flat_map(|i| i.to_le_bytes()).collect();
        } else if !small.is_empty() && elem == ElemType::Bool {
            raw = small.iter().map(|&v| u8::from(v != 0)).collect();
        } else if !external.is_empty() {
            raw = ext.bytes(&name, &external)?;
        }
    }
    Ok(TensorProto {
        name,
        elem,
        dims,
        raw,
    })
}

/// External data as ONNX Runtime reads it: with `data_location = EXTERNAL` (1) and nothing
/// inline (its keys are checked where they are read, [`External`]).
fn check_external(name: &str, kv: &[(String, String)], location: u64, no_inline: bool) -> R<()> {
    if (location == 1) == kv.is_empty() || (location == 1 && !no_inline) {
        return Err(OnnxReadError::ExternalLocation(name.to_string()));
    }
    Ok(())
}

/// Refuses a name defined twice among initializers, node outputs and graph inputs (a graph
/// input may share an initializer's name: older exporters list initializers as inputs), and a
/// metadata key given twice.
fn check_unique(m: &Model) -> R<()> {
    let mut seen = std::collections::HashSet::new();
    let init: std::collections::HashSet<&str> =
        m.initializers.iter().map(|t| t.name.as_str()).collect();
    let defined = (m.initializers.iter().map(|t| t.name.as_str()))
        .chain(
            m.nodes
                .iter()
                .flat_map(|n| n.outputs.iter().map(String::as_str)),
        )
        .chain((m.inputs.iter().map(|i| i.name.as_str())).filter(|n| !init.contains(n)));
    for name in defined.filter(|n| !n.is_empty()) {
        if !seen.insert(name) {
            return Err(OnnxReadError::DefinedTwice(name.to_string()));
        }
    }
    let mut keys = std::collections::HashSet::new();
    for (k, _) in &m.metadata {
        if !keys.insert(k.as_str()) {
            return Err(OnnxReadError::MetadataTwice(k.clone()));
        }
    }
    Ok(())
}

pub(crate) fn value_info(b: &[u8]) -> R<ValueInfo> {
    let mut p = Buf::new(b);
    let mut v = ValueInfo {
        name: String::new(),
        elem: ElemType::Float,
        dims: Vec::new(),
    };
    let mut once = Once::new(&once::VALUE_INFO);
    while let Some((f, x)) = p.next()? {
        once.see(f)?;
        match (f, x) {
            (1, Field::Bytes(s)) => v.name = text(s),
            (2, Field::Bytes(ty)) => type_proto(ty, &mut v)?,
            _ => {}
        }
    }
    Ok(v)
}

/// A `TypeProto`: a tensor type's element type and shape into `v`.
fn type_proto(ty: &[u8], v: &mut ValueInfo) -> R<()> {
    let mut t = Buf::new(ty);
    let mut once = Once::new(&once::TYPE);
    while let Some((f, tt)) = t.next()? {
        once.see(f)?;
        let (1, Field::Bytes(tt)) = (f, tt) else {
            continue;
        };
        let mut q = Buf::new(tt);
        let mut once = Once::new(&once::TYPE_TENSOR);
        while let Some((f, y)) = q.next()? {
            once.see(f)?;
            match (f, y) {
                (1, Field::Varint(c)) => v.elem = value_elem(c).unwrap_or(ElemType::Float),
                (2, Field::Bytes(shape)) => {
                    let mut sh = Buf::new(shape);
                    while let Some((f, dim)) = sh.next()? {
                        if let (1, Field::Bytes(dim)) = (f, dim) {
                            v.dims.push(dimension(dim)?);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A `TensorShapeProto.Dimension`.
fn dimension(dim: &[u8]) -> R<Dim> {
    let mut d = Buf::new(dim);
    let mut got = Dim::Param("?".into());
    let mut once = Once::new(&once::DIMENSION);
    while let Some((f, z)) = d.next()? {
        once.see(f)?;
        match (f, z) {
            (1, Field::Varint(n)) => got = Dim::Fixed(n as i64),
            (2, Field::Bytes(s)) => got = Dim::Param(text(s)),
            _ => {}
        }
    }
    Ok(got)
}

/// Parses an ONNX model; `path` (the model file) locates external data.
pub fn parse(bytes: &[u8], path: Option<&Path>) -> R<Model> {
    let mut ext = External::new(path.and_then(Path::parent));
    let mut p = Buf::new(bytes);
    let mut m = Model {
        opset: 0,
        graph_name: String::new(),
        nodes: vec![],
        initializers: vec![],
        inputs: vec![],
        outputs: vec![],
        metadata: vec![],
        producer_version: String::new(),
    };
    let mut has_graph = false;
    let mut once = Once::new(&once::MODEL);
    // Protobuf merges a graph given twice: its repeated fields append (as here), its singular
    // fields are counted over every copy.
    let mut graph_once = Once::new(&once::GRAPH);
    while let Some((f, v)) = p.next()? {
        once.see(f)?;
        match (f, v) {
            (3, Field::Bytes(s)) => m.producer_version = text(s),
            (7, Field::Bytes(g)) => {
                has_graph = true;
                let mut q = Buf::new(g);
                while let Some((f, x)) = q.next()? {
                    graph_once.see(f)?;
                    match (f, x) {
                        (1, Field::Bytes(n)) => {
                            let (node, t) = node::node_and_tensor(n, m.nodes.len())?;
                            match constant_tensor(&node, t, &mut ext)? {
                                Some(t) => m.initializers.push(t),
                                None => m.nodes.push(node),
                            }
                        }
                        (2, Field::Bytes(s)) => m.graph_name = text(s),
                        (5, Field::Bytes(t)) => m.initializers.push(tensor(t, &mut ext)?),
                        (11, Field::Bytes(v)) => m.inputs.push(value_info(v)?),
                        (12, Field::Bytes(v)) => m.outputs.push(value_info(v)?),
                        (15, Field::Bytes(t)) => return Err(sparse(t)),
                        _ => {}
                    }
                }
            }
            (8, Field::Bytes(o)) => {
                let mut q = Buf::new(o);
                let (mut domain, mut version) = (String::new(), 0);
                let mut once = Once::new(&once::OPSET);
                while let Some((f, x)) = q.next()? {
                    once.see(f)?;
                    match (f, x) {
                        (1, Field::Bytes(s)) => domain = text(s),
                        (2, Field::Varint(n)) => version = n as i64,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    m.opset = version;
                }
            }
            (14, Field::Bytes(kv)) => m.metadata.push(string_pair(kv)?),
            _ => {}
        }
    }
    if !has_graph {
        return Err(OnnxReadError::NoGraph);
    }
    check_unique(&m)?;
    // Graph inputs that are initializers (older exporters list them) are not model inputs.
    let init: std::collections::HashSet<&str> =
        m.initializers.iter().map(|t| t.name.as_str()).collect();
    let inputs = std::mem::take(&mut m.inputs);
    m.inputs = inputs
        .into_iter()
        .filter(|i| !init.contains(i.name.as_str()))
        .collect();
    Ok(m)
}

#[path = "read_node.rs"]
mod node;
use node::constant_tensor;
pub(crate) use node::{node, sparse};
#[path = "read_constant.rs"]
mod constant;
#[path = "read_once.rs"]
mod once;
use once::Once;
#[path = "read_external.rs"]
mod external;
#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
pub(crate) use external::External;
