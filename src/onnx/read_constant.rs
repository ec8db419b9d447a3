//! `Constant` nodes' tensor values, read as the equivalent scalar or list attributes.

use super::{Buf, Field, Once, R, packed_varints, text};
use crate::onnx::proto::Attr;

/// A `Constant`'s `value` tensor attribute (type TENSOR) of float32 or int64 with at most one
/// dimension, as the equivalent `value_float` / `value_floats` / `value_int` / `value_ints`
/// attribute: how `verify` reads the thresholds `yolo export nms=True` writes as Constant
/// nodes. Other tensor attributes are not kept (`None`), as before.
pub(super) fn value(b: &[u8]) -> R<Option<(String, Attr)>> {
    let mut p = Buf::new(b);
    let (mut name, mut ty, mut t) = (String::new(), 0u64, None);
    while let Some((fnum, v)) = p.next()? {
        match (fnum, v) {
            (1, Field::Bytes(x)) => name = text(x),
            (5, Field::Bytes(x)) => t = Some(x),
            (20, Field::Varint(x)) => ty = x,
            _ => {}
        }
    }
    let (Some(t), 4, "value") = (t, ty, name.as_str()) else {
        return Ok(None);
    };
    let mut p = Buf::new(t);
    let (mut dims, mut code, mut raw) = (Vec::new(), 0u64, Vec::new());
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    let mut once = Once::new(&super::once::TENSOR);
    while let Some((f, v)) = p.next()? {
        once.see(f)?;
        match (f, v) {
            (1, Field::Bytes(d)) => dims.extend(packed_varints(d)?),
            (1, Field::Varint(d)) => dims.push(d as i64),
            (2, Field::Varint(c)) => code = c,
            (4, Field::Bytes(d)) => floats.extend(crate::convert::f32s_le(d)),
            (4, Field::Fixed32(d)) => floats.push(f32::from_le_bytes(d)),
            (7, Field::Bytes(d)) => ints.extend(packed_varints(d)?),
            (7, Field::Varint(d)) => ints.push(d as i64),
            (9, Field::Bytes(r)) => raw = r.to_vec(),
            _ => {}
        }
    }
    let count: i64 = dims.iter().product();
    if dims.len() > 1 || count > 64 {
        return Ok(None);
    }
    let scalar = dims.is_empty();
    Ok(match code {
        1 => {
            if !raw.is_empty() {
                floats = crate::convert::f32s_le(&raw).collect();
            }
            match (scalar, floats.len() as i64 == count) {
                (true, true) => Some(("value_float".into(), Attr::Float(floats[0]))),
                (false, true) => Some(("value_floats".into(), Attr::Floats(floats))),
                _ => None,
            }
        }
        7 => {
            if !raw.is_empty() {
                ints = raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
            }
            match (scalar, ints.len() as i64 == count) {
                (true, true) => Some(("value_int".into(), Attr::Int(ints[0]))),
                (false, true) => Some(("value_ints".into(), Attr::Ints(ints))),
                _ => None,
            }
        }
        _ => None,
    })
}
