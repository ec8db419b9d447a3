//! Which values of an ONNX graph are known before its data: shapes that do not depend on the
//! input's values. A `Where` may select on an `Equal` of shapes (torch's exports test a shape
//! for -1), but the shape of `NonZero(Floor(score · 1.05))` is how many scores reach 0.952: an
//! `Equal` on it is a threshold no comparison shows (review 9). Dynamic dimensions of the graph
//! inputs are fine: they are the image's size, not its values.

use super::fold;
use crate::onnx::proto::{Model, Node};

/// Operators whose output shape depends on their inputs' values whatever the shapes given.
const DATA_SHAPED: [&str; 5] = ["NonZero", "NonMaxSuppression", "Compress", "Unique", "Loop"];

/// For operators that take (part of) their output shape as a tensor, the positions of those
/// inputs: their values must be known before the data too.
fn shape_inputs(op: &str) -> &'static [usize] {
    match op {
        "Reshape" | "Expand" | "Tile" | "OneHot" | "Split" | "Squeeze" | "Unsqueeze"
        | "Upsample" | "TopK" => &[1],
        "ConstantOfShape" => &[0],
        "Range" => &[0, 1, 2],
        "Slice" => &[1, 2, 3, 4],
        "Pad" => &[1, 2, 3],
        "Resize" => &[1, 2, 3],
        op if op.starts_with("Reduce") => &[1],
        _ => &[],
    }
}

/// What a walk needs of a value: its elements (computed from constants and static shapes), or
/// only its shape.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Need {
    Value,
    Shape,
}

/// Whether `v`'s value is computed from constants and from shapes that do not depend on the
/// graph input's values. Each (value, need) is visited once; a walk longer than the graph is
/// refused.
pub(super) fn static_value(model: &Model, v: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(v, Need::Value)];
    while let Some((v, need)) = todo.pop() {
        // An initializer is known beforehand: checked by name, so that walking a backbone for
        // its shapes does not decode every weight.
        if v.is_empty()
            || !seen.insert((v, need))
            || model.initializers.iter().any(|t| t.name == v)
            || fold::constant(model, v).is_some()
        {
            continue;
        }
        if seen.len() > 4 * model.nodes.len() + 64 {
            return false;
        }
        let Some(p) = (model.nodes.iter()).find(|n| n.outputs.iter().any(|o| o == v)) else {
            // A graph input: its shape is known before its values, its values are data.
            if need == Need::Shape && model.inputs.iter().any(|i| i.name == v) {
                continue;
            }
            return false;
        };
        if DATA_SHAPED.contains(&p.op.as_str()) {
            return false;
        }
        let shaped = shape_inputs(&p.op);
        match (need, p.op.as_str()) {
            (Need::Value, "Shape" | "Size") => {
                todo.extend(p.inputs.first().map(|i| (i.as_str(), Need::Shape)));
            }
            // A value built from values (arithmetic on shapes), or a shape: every input is
            // needed the same way, except the inputs that give the output's shape, whose values
            // are needed.
            _ => {
                for (k, i) in p.inputs.iter().enumerate() {
                    let n = if shaped.contains(&k) {
                        Need::Value
                    } else {
                        need
                    };
                    todo.push((i.as_str(), n));
                }
            }
        }
    }
    true
}

/// Whether `eq` (an `Equal`) cannot depend on the data however its shapes do: one side a constant
/// of negative numbers, the other shape elements and constants only moved (`Shape`, `Size` and
/// `Gather`, `Slice`, `Concat`, `Squeeze`, `Unsqueeze`, `Cast`, `Identity`, `Reshape` of them).
/// A dimension is never negative, so each element compares a constant with a constant, or is
/// false. torch's exports guard a dynamic reshape so: `Where(Equal(shape, -1), 1, shape)`, also
/// on shapes after an NMS, whose row count the data decides.
pub(super) fn never_true(model: &Model, eq: &Node) -> bool {
    let negative = |v: &str| fold::constant(model, v).is_some_and(|c| c.iter().all(|&x| x < 0.0));
    match eq.inputs.as_slice() {
        [a, b] if negative(b) => moved_shapes(model, a),
        [a, b] if negative(a) => moved_shapes(model, b),
        _ => false,
    }
}

/// Whether every element of `v` is a dimension of some value or a constant, moved but never
/// computed.
fn moved_shapes(model: &Model, v: &str) -> bool {
    walk(model, v, 256, |p| match p.op.as_str() {
        "Shape" | "Size" => Some(&[][..]),
        "Concat" => Some(&p.inputs[..]),
        // Positions, starts and shapes pick elements; only the first input's are moved.
        "Gather" | "Slice" | "Squeeze" | "Unsqueeze" | "Cast" | "Identity" | "Reshape" => {
            Some(p.inputs.get(..1).unwrap_or_default())
        }
        _ => None,
    })
}

/// Walks back from `v` through the values `step` names for each producing node, every value
/// once (a hostile graph of diamonds must not make this exponential): true when every value
/// reached is a constant or its producer's step says `Some` (the values to follow); false at a
/// graph input, at a `None`, or past `limit` values.
pub(super) fn walk<'m>(
    model: &'m Model,
    v: &'m str,
    limit: usize,
    step: impl Fn(&'m Node) -> Option<&'m [String]>,
) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        if v.is_empty() || !seen.insert(v) || fold::constant(model, v).is_some() {
            continue;
        }
        if seen.len() > limit {
            return false;
        }
        let Some(p) = (model.nodes.iter()).find(|n| n.outputs.iter().any(|o| o == v)) else {
            return false;
        };
        match step(p) {
            Some(next) => todo.extend(next.iter().map(String::as_str)),
            None => return false,
        }
    }
    true
}
