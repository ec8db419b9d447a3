//! The ONNX protobuf messages fuse-ema writes (and reads back), as plain data; their wire
//! encoding is in [`super::encode`].

/// Element types (`TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ElemType {
    /// float32
    Float = 1,
    /// uint8 (class maps)
    Uint8 = 2,
    /// int32 (class maps of more than 256 classes)
    Int32 = 6,
    /// int64
    Int64 = 7,
    /// bool (one byte each; read from other exporters' files, e.g. `yolo export nms=True`)
    Bool = 9,
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
    /// `GRAPH` / `GRAPHS` (`If`, `Loop`, `Scan` and some contrib operators): a subgraph, whose
    /// nodes and initializers this reader does not read. Read only so that the checks that rest
    /// on the graph's weights can refuse to judge one; never written.
    Graph,
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
