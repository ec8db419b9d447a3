//! Nodes and their attributes; a `Constant` must give exactly one value (review 8 G6).

use super::{
    Buf, External, Field, Once, OnnxReadError, R, constant, once, packed_varints, tensor, text,
};
use crate::onnx::proto::{Attr, Node, TensorProto};

fn attribute(b: &[u8]) -> R<(String, Option<Attr>)> {
    let mut p = Buf::new(b);
    let (mut name, mut f, mut i, mut s, mut ty) = (String::new(), None, None, None, 0u64);
    let (mut floats, mut ints, mut graph) = (Vec::new(), Vec::new(), false);
    let mut once = Once::new(&once::ATTRIBUTE);
    while let Some((fnum, v)) = p.next()? {
        once.see(fnum)?;
        match (fnum, v) {
            (1, Field::Bytes(x)) => name = text(x),
            (2, Field::Fixed32(x)) => f = Some(f32::from_le_bytes(x)),
            (3, Field::Varint(x)) => i = Some(x as i64),
            (4, Field::Bytes(x)) => s = Some(text(x)),
            (7, Field::Bytes(x)) => floats.extend(crate::convert::f32s_le(x)),
            (7, Field::Fixed32(x)) => floats.push(f32::from_le_bytes(x)),
            (8, Field::Bytes(x)) => ints.extend(packed_varints(x)?),
            (8, Field::Varint(x)) => ints.push(x as i64),
            (20, Field::Varint(x)) => ty = x,
            // `g` and `graphs`: a subgraph, whatever the type field says.
            (6 | 11, Field::Bytes(_)) => graph = true,
            _ => {}
        }
    }
    if graph || matches!(ty, 5 | 10) {
        return Ok((name, Some(Attr::Graph)));
    }
    let a = match ty {
        1 => f.map(Attr::Float),
        2 => i.map(Attr::Int),
        3 => s.map(Attr::Str),
        6 => Some(Attr::Floats(floats)),
        7 => Some(Attr::Ints(ints)),
        _ => None,
    };
    Ok((name, a))
}

/// The attributes that give a `Constant` its value.
const CONSTANT_VALUES: [&str; 8] = [
    "value",
    "value_float",
    "value_floats",
    "value_int",
    "value_ints",
    "value_string",
    "value_strings",
    "sparse_value",
];

/// A node; an error names it (by name, else by its position `index` in the graph).
pub(crate) fn node(b: &[u8], index: usize) -> R<Node> {
    node_and_tensor(b, index).map(|(n, _)| n)
}

/// A node and, for a `Constant` whose `value` tensor is not kept as a scalar or list
/// attribute, that tensor's bytes: weights can reach the graph there (review 8 G9).
pub(crate) fn node_and_tensor(b: &[u8], index: usize) -> R<(Node, Option<&[u8]>)> {
    node_fields(b).map_err(|e| OnnxReadError::Node {
        node: node_label(b).unwrap_or_else(|| format!("#{index}")),
        source: Box::new(e),
    })
}

/// The `t` field of an attribute.
fn tensor_field(a: &[u8]) -> R<Option<&[u8]>> {
    let mut p = Buf::new(a);
    let mut t = None;
    while let Some((f, v)) = p.next()? {
        if let (5, Field::Bytes(x)) = (f, v) {
            t = Some(x);
        }
    }
    Ok(t)
}

/// A node's name, read leniently for an error message.
fn node_label(b: &[u8]) -> Option<String> {
    let mut p = Buf::new(b);
    while let Ok(Some((f, v))) = p.next() {
        if let (3, Field::Bytes(s)) = (f, v) {
            return Some(text(s)).filter(|s| !s.is_empty());
        }
    }
    None
}

fn node_fields(b: &[u8]) -> R<(Node, Option<&[u8]>)> {
    let mut p = Buf::new(b);
    let mut n = Node {
        op: String::new(),
        name: String::new(),
        inputs: vec![],
        outputs: vec![],
        attrs: vec![],
    };
    let mut tensors = Vec::new();
    let mut unkept = None;
    let mut names = Vec::new();
    let mut once = Once::new(&once::NODE);
    let mut domain = String::new();
    while let Some((f, v)) = p.next()? {
        once.see(f)?;
        match (f, v) {
            (7, Field::Bytes(s)) => domain = text(s),
            (1, Field::Bytes(s)) => n.inputs.push(text(s)),
            (2, Field::Bytes(s)) => n.outputs.push(text(s)),
            (3, Field::Bytes(s)) => n.name = text(s),
            (4, Field::Bytes(s)) => n.op = text(s),
            (5, Field::Bytes(a)) => {
                let (name, plain) = attribute(a)?;
                names.push(name.clone());
                if let Some(a) = plain {
                    n.attrs.push((name, a));
                } else if let Some(a) = constant::value(a)? {
                    tensors.push(a);
                } else if name == "value" {
                    unkept = tensor_field(a)?;
                }
            }
            _ => {}
        }
    }
    // An operator of another domain is another operator, whatever its name: `com.microsoft`'s
    // `Gelu` is not ONNX's. Qualified, it matches none of the names the checks look for.
    if !matches!(domain.as_str(), "" | "ai.onnx") {
        n.op = format!("{domain}.{}", n.op);
    }
    // Only `Constant` may take its tensor as `value_float(s)` / `value_int(s)` (the same value);
    // another operator's tensor attribute (ConstantOfShape's `value`) stays out, as before.
    if n.op == "Constant" {
        let values: Vec<&String> = (names.iter())
            .filter(|a| CONSTANT_VALUES.contains(&a.as_str()))
            .collect();
        if values.len() != 1 {
            let list = values.iter().map(|s| s.as_str()).collect::<Vec<_>>();
            return Err(OnnxReadError::ConstantValues(match list.is_empty() {
                true => "none".into(),
                false => list.join(", "),
            }));
        }
        if values[0] == "sparse_value" {
            return Err(OnnxReadError::ConstantValues("a sparse_value".into()));
        }
        n.attrs.extend(tensors);
        return Ok((n, unkept));
    }
    Ok((n, None))
}

/// A `Constant` node's float tensor `t` (not kept as a scalar or list attribute) as the
/// initializer it is equivalent to, so that weights given this way are weights to every check
/// (review 8 G9). Other element types stay unread, as before.
pub(super) fn constant_tensor(
    node: &Node,
    t: Option<&[u8]>,
    ext: &mut External<'_>,
) -> R<Option<TensorProto>> {
    let Some(t) = t else { return Ok(None) };
    let mut p = Buf::new(t);
    let mut code = 0;
    while let Some((f, v)) = p.next()? {
        if let (2, Field::Varint(c)) = (f, v) {
            code = c;
        }
    }
    if code != 1 && code != 10 {
        return Ok(None);
    }
    let mut tensor = tensor(t, ext).map_err(|e| OnnxReadError::Node {
        node: node.name.clone(),
        source: Box::new(e),
    })?;
    tensor.name = node.outputs.first().cloned().unwrap_or_default();
    Ok(Some(tensor))
}

/// A `SparseTensorProto`'s refusal, naming it by its `values` tensor's name.
pub(crate) fn sparse(b: &[u8]) -> OnnxReadError {
    let mut p = Buf::new(b);
    let mut name = String::new();
    while let Ok(Some((f, v))) = p.next() {
        if let (1, Field::Bytes(values)) = (f, v) {
            let mut q = Buf::new(values);
            while let Ok(Some((f, x))) = q.next() {
                if let (8, Field::Bytes(s)) = (f, x) {
                    name = text(s);
                }
            }
        }
    }
    OnnxReadError::SparseInitializer(name)
}
