//! Reading module attributes with checks, shared by both backends' parsing: a malformed pickle
//! fails here, with the class in the message, instead of in either backend's arithmetic.

use super::{BuildResult, LayerError};
use crate::checkpoint::py::ModuleRef;

/// A 2-D attribute (`stride`, `padding`): one value for both sides, or two.
pub(crate) fn pair(m: &ModuleRef, name: &str, default: i64) -> BuildResult<[i64; 2]> {
    match m.ints(name).as_deref() {
        None => Ok([default, default]),
        Some([a]) => Ok([*a, *a]),
        Some([a, b]) => Ok([*a, *b]),
        Some(other) => Err(LayerError::bad_attr(m.class(), name, other, "is not 2-D")),
    }
}

/// A convolution weight's (O, I, kh, kw) dims, checked against the data and for sizes the
/// arithmetic below can hold.
pub(crate) fn weight4(m: &ModuleRef, data: &[f32], ws: &[i64]) -> BuildResult<[i64; 4]> {
    let [o, i, kh, kw] = ws[..] else {
        return Err(LayerError::weight(
            m.class(),
            "weight",
            format!("has shape {ws:?}, not 4-D"),
        ));
    };
    let limit = 1 << 20;
    let count = [o, i, kh, kw]
        .iter()
        .try_fold(1i64, |n, &d| n.checked_mul(d));
    if [o, i, kh, kw].iter().any(|&d| d <= 0 || d > limit)
        || count.and_then(|n| usize::try_from(n).ok()) != Some(data.len())
    {
        return Err(LayerError::weight(
            m.class(),
            "weight",
            format!("has shape {ws:?}, not usable"),
        ));
    }
    Ok([o, i, kh, kw])
}

/// Strides and dilations must be positive, paddings non-negative, all small.
pub(crate) fn check_geometry(
    m: &ModuleRef,
    positive: &[[i64; 2]],
    non_negative: &[[i64; 2]],
) -> BuildResult<()> {
    let bad_pos = positive
        .iter()
        .flatten()
        .any(|&v| !(1..=1 << 16).contains(&v));
    let bad_nonneg = non_negative
        .iter()
        .flatten()
        .any(|&v| !(0..=1 << 16).contains(&v));
    if bad_pos || bad_nonneg {
        return Err(LayerError::bad_attr(
            m.class(),
            "stride/dilation/padding",
            (positive, non_negative),
            "is not usable",
        ));
    }
    Ok(())
}

/// A per-channel vector of a module (BatchNorm parameter, bias) must have one value per channel.
pub(crate) fn per_channel(
    m: &ModuleRef,
    name: &str,
    v: &[f32],
    channels: usize,
) -> BuildResult<()> {
    if v.len() != channels {
        return Err(LayerError::weight(
            m.class(),
            name,
            format!("has {} values for {channels} channels", v.len()),
        ));
    }
    Ok(())
}
