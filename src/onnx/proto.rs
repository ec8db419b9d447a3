//! The ONNX protobuf messages fuse-ema writes, and their wire encoding (field numbers from
//! `onnx.proto`). Encoding is deterministic: the same model gives the same bytes.

/// Element types (`TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ElemType {
    /// float32
    Float = 1,
    /// int64
    Int64 = 7,
    /// float16
    Float16 = 10,
}

/// A tensor (initializer or attribute value) with little-endian raw data.
#[derive(Clone, Debug)]
pub struct TensorProto {
    /// Name (initializers are referenced by it).
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Little-endian element bytes.
    pub raw: Vec<u8>,
}

/// One dimension of a value's shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic size (`batch`, `height`).
    Param(String),
}

/// A graph input or output.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    /// Name.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Shape.
    pub dims: Vec<Dim>,
}

/// A node attribute.
#[derive(Clone, Debug)]
pub enum Attr {
    /// `INT`
    Int(i64),
    /// `INTS`
    Ints(Vec<i64>),
    /// `FLOAT`
    Float(f32),
    /// `FLOATS`
    Floats(Vec<f32>),
    /// `STRING`
    Str(String),
}

/// An operator application.
#[derive(Clone, Debug)]
pub struct Node {
    /// Operator (`Conv`, `Sigmoid`, …).
    pub op: String,
    /// Unique node name.
    pub name: String,
    /// Input value names (empty string for an omitted optional input).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes, in the order they were given.
    pub attrs: Vec<(String, Attr)>,
}

/// A whole model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Opset of the default domain.
    pub opset: i64,
    /// Graph name.
    pub graph_name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Weights.
    pub initializers: Vec<TensorProto>,
    /// Graph inputs.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props`, in order.
    pub metadata: Vec<(String, String)>,
    /// Producer version string.
    pub producer_version: String,
}

/// The IR version written for a default-domain opset: the IR version of the ONNX release that
/// introduced that opset (onnx's `VERSION_TABLE`, as `onnx.helper.find_min_ir_version_for`
/// computes it), so a runtime that reads the opset reads the header too. Opsets 13–14 came with
/// IR 7 (onnx 1.8–1.9), 15–18 with IR 8 (1.10–1.13), 19–20 with IR 9 (1.14–1.15), 21 with IR 10
/// (1.16), 22 with IR 10 (1.17). `None` outside that range.
pub fn ir_version(opset: i64) -> Option<i64> {
    Some(match opset {
        13..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => return None,
    })
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}

fn packed_ints(out: &mut Vec<u8>, field: u32, v: &[i64]) {
    let mut inner = Vec::new();
    for &x in v {
        varint(&mut inner, x as u64);
    }
    bytes(out, field, &inner);
}

/// Where a tensor's bytes went when they were moved to the external data file.
struct External<'a> {
    location: &'a str,
    offset: usize,
}

fn tensor(out: &mut Vec<u8>, t: &TensorProto, ext: Option<External>) {
    packed_ints(out, 1, &t.dims);
    int(out, 2, t.elem as i64);
    string(out, 8, &t.name);
    match ext {
        None => bytes(out, 9, &t.raw),
        Some(e) => {
            for (k, v) in [
                ("location", e.location.to_string()),
                ("offset", e.offset.to_string()),
                ("length", t.raw.len().to_string()),
            ] {
                message(out, 13, |m| {
                    string(m, 1, k);
                    string(m, 2, &v);
                });
            }
            int(out, 14, 1);
        }
    }
}

fn value_info(out: &mut Vec<u8>, v: &ValueInfo) {
    string(out, 1, &v.name);
    message(out, 2, |ty| {
        message(ty, 1, |tt| {
            int(tt, 1, v.elem as i64);
            message(tt, 2, |shape| {
                for d in &v.dims {
                    message(shape, 1, |dim| match d {
                        Dim::Fixed(n) => int(dim, 1, *n),
                        Dim::Param(p) => string(dim, 2, p),
                    });
                }
            });
        });
    });
}

fn attribute(out: &mut Vec<u8>, name: &str, a: &Attr) {
    string(out, 1, name);
    match a {
        Attr::Float(f) => {
            key(out, 2, 5);
            out.extend_from_slice(&f.to_le_bytes());
            int(out, 20, 1);
        }
        Attr::Int(i) => {
            int(out, 3, *i);
            int(out, 20, 2);
        }
        Attr::Str(s) => {
            string(out, 4, s);
            int(out, 20, 3);
        }
        Attr::Floats(v) => {
            let mut inner = Vec::new();
            for f in v {
                inner.extend_from_slice(&f.to_le_bytes());
            }
            bytes(out, 7, &inner);
            int(out, 20, 6);
        }
        Attr::Ints(v) => {
            packed_ints(out, 8, v);
            int(out, 20, 7);
        }
    }
}

fn node(out: &mut Vec<u8>, n: &Node) {
    for i in &n.inputs {
        string(out, 1, i);
    }
    for o in &n.outputs {
        string(out, 2, o);
    }
    string(out, 3, &n.name);
    string(out, 4, &n.op);
    for (name, a) in &n.attrs {
        message(out, 5, |m| attribute(m, name, a));
    }
}

/// Initializers at least this large go to the external data file when one is used.
const EXTERNAL_MIN: usize = 1024;

impl Model {
    /// The serialised `ModelProto`.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None).0
    }

    /// The `ModelProto` with large initializers moved to an external data file named `location`
    /// (beside the model), each 4096-byte aligned; returns the model and the data file's bytes.
    pub fn encode_external(&self, location: &str) -> (Vec<u8>, Vec<u8>) {
        self.encode_with(Some(location))
    }

    fn encode_with(&self, location: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        let mut out = Vec::new();
        // The exporter accepts only opsets the table covers (crate::onnx::OPSETS).
        int(&mut out, 1, ir_version(self.opset).unwrap_or(10));
        string(&mut out, 2, "fuse-ema");
        string(&mut out, 3, &self.producer_version);
        message(&mut out, 7, |g| {
            for n in &self.nodes {
                message(g, 1, |m| node(m, n));
            }
            string(g, 2, &self.graph_name);
            for t in &self.initializers {
                let ext = match location {
                    Some(loc) if t.raw.len() >= EXTERNAL_MIN => {
                        while data.len() % 4096 != 0 {
                            data.push(0);
                        }
                        let offset = data.len();
                        data.extend_from_slice(&t.raw);
                        Some(External {
                            location: loc,
                            offset,
                        })
                    }
                    _ => None,
                };
                message(g, 5, |m| tensor(m, t, ext));
            }
            for v in &self.inputs {
                message(g, 11, |m| value_info(m, v));
            }
            for v in &self.outputs {
                message(g, 12, |m| value_info(m, v));
            }
        });
        message(&mut out, 8, |o| {
            string(o, 1, "");
            int(o, 2, self.opset);
        });
        for (k, v) in &self.metadata {
            message(&mut out, 14, |m| {
                string(m, 1, k);
                string(m, 2, v);
            });
        }
        (out, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_protobuf() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        v.clear();
        varint(&mut v, -1i64 as u64);
        assert_eq!(v.len(), 10, "negative int64 takes ten bytes");
    }
}
