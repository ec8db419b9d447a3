//! Constant values in an ONNX graph, folded through the operators that only move or retype
//! them, as ONNX Runtime computes them: what a threshold really is when the graph spells it
//! `Identity(Cast(c))` rather than `c` (review 7).

use crate::onnx::proto::{Attr, ElemType, Model};

/// How deep a chain of pass-through operators is followed (a cycle or a long chain is no
/// constant this reader trusts).
const MAX_DEPTH: usize = 16;

/// The elements of `name` when it is a constant: an initializer (float32, float16, int64 or
/// bool), a
/// `Constant` node's value, or one of these through `Identity`, `Cast` (to a float type),
/// `Reshape`, `Squeeze`, `Unsqueeze` or `Expand` (which move or repeat elements but keep
/// their values). `None` for anything computed.
pub(super) fn constant(model: &Model, name: &str) -> Option<Vec<f64>> {
    fold(model, name, 0)
}

/// The one value every element of `name` has, when it is a constant with at least one element
/// and no two that differ.
pub(super) fn uniform(model: &Model, name: &str) -> Option<f64> {
    let v = constant(model, name)?;
    let first = *v.first()?;
    v.iter()
        .all(|x| x.to_bits() == first.to_bits())
        .then_some(first)
}

fn fold(model: &Model, name: &str, depth: usize) -> Option<Vec<f64>> {
    if depth > MAX_DEPTH || name.is_empty() {
        return None;
    }
    if let Some(t) = model.initializers.iter().find(|t| t.name == name) {
        return match t.elem {
            ElemType::Float => Some(crate::convert::f32s_le(&t.raw).map(f64::from).collect()),
            ElemType::Float16 => Some(
                (t.raw.chunks_exact(2))
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            ElemType::Int64 => Some(
                (t.raw.chunks_exact(8))
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
            ),
            ElemType::Bool => Some(t.raw.iter().map(|&b| f64::from(u8::from(b != 0))).collect()),
            _ => None,
        };
    }
    let node = model
        .nodes
        .iter()
        .find(|n| n.outputs.iter().any(|o| o == name))?;
    let input = |i: usize| node.inputs.get(i).map(String::as_str).unwrap_or_default();
    match node.op.as_str() {
        "Constant" => node.attrs.iter().find_map(|(k, a)| match (k.as_str(), a) {
            ("value_float", Attr::Float(v)) => Some(vec![f64::from(*v)]),
            ("value_floats", Attr::Floats(v)) => Some(v.iter().map(|x| f64::from(*x)).collect()),
            ("value_int", Attr::Int(v)) => Some(vec![*v as f64]),
            ("value_ints", Attr::Ints(v)) => Some(v.iter().map(|x| *x as f64).collect()),
            _ => None,
        }),
        "Identity" | "Reshape" | "Squeeze" | "Unsqueeze" | "Expand" => {
            fold(model, input(0), depth + 1)
        }
        "Cast" => {
            let to = node.attrs.iter().find_map(|(k, a)| match (k.as_str(), a) {
                ("to", Attr::Int(t)) => Some(*t),
                _ => None,
            })?;
            let v = fold(model, input(0), depth + 1)?;
            match to {
                // float32: rounded to f32; float16: to f16; double: as is.
                1 => Some(v.into_iter().map(|x| f64::from(x as f32)).collect()),
                10 => Some(
                    v.into_iter()
                        .map(|x| half::f16::from_f64(x).to_f64())
                        .collect(),
                ),
                11 => Some(v),
                _ => None,
            }
        }
        _ => None,
    }
}
