//! Singular protobuf fields given more than once. Protobuf does not replace such a field: it
//! merges a message given twice (scalars of the later copy win, repeated fields append, fields
//! the later copy lacks stay), so ONNX Runtime can read a value no single copy holds (review 8
//! G3). The reader keeps one copy; rather than model the merge, it refuses the file.

use super::{OnnxReadError, R};

/// `ModelProto`'s singular fields (`graph` is merged by the reader, as protobuf does).
pub(super) const MODEL: Msg = Msg(
    "ModelProto",
    &[
        (1, "ir_version"),
        (2, "producer_name"),
        (3, "producer_version"),
        (4, "domain"),
        (5, "model_version"),
        (6, "doc_string"),
    ],
);
/// `GraphProto`'s (counted over every copy of the graph).
pub(super) const GRAPH: Msg = Msg("GraphProto", &[(2, "name"), (10, "doc_string")]);
/// `NodeProto`'s.
pub(super) const NODE: Msg = Msg(
    "NodeProto",
    &[
        (3, "name"),
        (4, "op_type"),
        (6, "doc_string"),
        (7, "domain"),
        (8, "overload"),
    ],
);
/// `AttributeProto`'s.
pub(super) const ATTRIBUTE: Msg = Msg(
    "AttributeProto",
    &[
        (1, "name"),
        (2, "f"),
        (3, "i"),
        (4, "s"),
        (5, "t"),
        (6, "g"),
        (13, "doc_string"),
        (14, "tp"),
        (20, "type"),
        (21, "ref_attr_name"),
        (22, "sparse_tensor"),
    ],
);
/// `TensorProto`'s.
pub(super) const TENSOR: Msg = Msg(
    "TensorProto",
    &[
        (2, "data_type"),
        (3, "segment"),
        (8, "name"),
        (9, "raw_data"),
        (12, "doc_string"),
        (14, "data_location"),
    ],
);
/// `ValueInfoProto`'s.
pub(super) const VALUE_INFO: Msg = Msg(
    "ValueInfoProto",
    &[(1, "name"), (2, "type"), (3, "doc_string")],
);
/// `TypeProto`'s (the members of its `value` oneof count as one field: a later one replaces
/// an earlier one).
pub(super) const TYPE: Msg = Msg(
    "TypeProto",
    &[
        (1, "value"),
        (4, "value"),
        (5, "value"),
        (6, "denotation"),
        (8, "value"),
        (9, "value"),
    ],
);
/// `TypeProto.Tensor`'s.
pub(super) const TYPE_TENSOR: Msg = Msg("TypeProto.Tensor", &[(1, "elem_type"), (2, "shape")]);
/// `TensorShapeProto.Dimension`'s (`dim_value` / `dim_param` are one oneof).
pub(super) const DIMENSION: Msg = Msg(
    "TensorShapeProto.Dimension",
    &[(1, "value"), (2, "value"), (3, "denotation")],
);
/// `StringStringEntryProto`'s.
pub(super) const ENTRY: Msg = Msg("StringStringEntryProto", &[(1, "key"), (2, "value")]);
/// `OperatorSetIdProto`'s.
pub(super) const OPSET: Msg = Msg("OperatorSetIdProto", &[(1, "domain"), (2, "version")]);

/// A message's name and its singular fields (number, name).
pub(super) struct Msg(&'static str, &'static [(u32, &'static str)]);

/// The singular fields one message has given so far.
pub(super) struct Once {
    msg: &'static Msg,
    seen: Vec<&'static str>,
}

impl Once {
    /// Nothing seen yet in a `msg`.
    pub(super) fn new(msg: &'static Msg) -> Once {
        Once {
            msg,
            seen: Vec::new(),
        }
    }

    /// Notes field `f`; a singular field (or oneof) met a second time is an error.
    pub(super) fn see(&mut self, f: u32) -> R<()> {
        let Some(&(_, name)) = self.msg.1.iter().find(|(n, _)| *n == f) else {
            return Ok(());
        };
        if self.seen.contains(&name) {
            return Err(OnnxReadError::FieldTwice {
                message: self.msg.0,
                field: name,
            });
        }
        self.seen.push(name);
        Ok(())
    }
}
