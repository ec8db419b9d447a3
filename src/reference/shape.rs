//! Shape checks run before the reference's kernels index anything: a well-formed pickle can still
//! hold a module tree whose weights do not fit the feature maps they meet (a fuzzed or hand-edited
//! checkpoint). Each check fails with an error naming the layer instead of a panic.

use super::R;
use super::ops::{ConvSpec, RefTensor};
use crate::models::LayerError;

/// The largest stride, dilation, padding, kernel or scale factor the interpreter accepts; real
/// models stay far below it, and it keeps every size computation well inside `usize`.
const LIMIT: usize = 1 << 16;

/// (N, C, H, W) of a feature map.
pub fn nchw(x: &RefTensor, what: &str) -> R<(usize, usize, usize, usize)> {
    match x.shape[..] {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => Err(LayerError::shape(
            what,
            format!("expects a 4-D feature map, got shape {:?}", x.shape),
        )),
    }
}

/// A convolution of `x` with weights `ws` (O, C/groups, kh, kw) holding `w_len` values.
pub fn conv(
    x: &RefTensor,
    w_len: usize,
    ws: &[usize],
    bias: Option<usize>,
    s: &ConvSpec,
    what: &str,
) -> R<()> {
    let (_, c, h, w) = nchw(x, what)?;
    let [o, cg, kh, kw] = ws[..] else {
        return Err(LayerError::shape(
            what,
            format!("weight has shape {ws:?}, not 4-D"),
        ));
    };
    let small = |v: usize| (1..=LIMIT).contains(&v);
    let geometry_ok = [s.stride.0, s.stride.1, s.dil.0, s.dil.1, kh, kw, s.groups]
        .into_iter()
        .all(small)
        && s.pad.0 <= LIMIT
        && s.pad.1 <= LIMIT;
    if !geometry_ok || o == 0 || cg == 0 {
        return Err(LayerError::shape(
            what,
            format!(
                "unusable convolution (weight {ws:?}, stride {:?}, padding {:?}, dilation {:?}, groups {})",
                s.stride, s.pad, s.dil, s.groups
            ),
        ));
    }
    if o.checked_mul(cg * kh * kw) != Some(w_len) {
        return Err(LayerError::shape(
            what,
            format!("weight {ws:?} holds {w_len} values"),
        ));
    }
    if cg * s.groups != c || o % s.groups != 0 {
        return Err(LayerError::shape(
            what,
            format!(
                "weight {ws:?} with {} groups does not fit {c} input channels",
                s.groups
            ),
        ));
    }
    if s.dil.0 * (kh - 1) + 1 > h + 2 * s.pad.0 || s.dil.1 * (kw - 1) + 1 > w + 2 * s.pad.1 {
        return Err(LayerError::shape(
            what,
            format!("kernel {kh}x{kw} is larger than the {h}x{w} input"),
        ));
    }
    if let Some(b) = bias {
        per_channel(b, o, &format!("{what} bias"))?;
    }
    Ok(())
}

/// A per-channel vector (BatchNorm parameter, bias) has one value per channel.
pub fn per_channel(len: usize, channels: usize, what: &str) -> R<()> {
    if len != channels {
        return Err(LayerError::shape(
            what,
            format!("has {len} values for {channels} channels"),
        ));
    }
    Ok(())
}

/// Max pooling of `x` with a `k`×`k` window.
pub fn pool(x: &RefTensor, k: usize, stride: usize, pad: usize, what: &str) -> R<()> {
    let (_, _, h, w) = nchw(x, what)?;
    if !(1..=LIMIT).contains(&k)
        || !(1..=LIMIT).contains(&stride)
        || pad > k / 2
        || k > h.min(w) + 2 * pad
    {
        return Err(LayerError::shape(
            what,
            format!("unusable pooling (kernel {k}, stride {stride}, padding {pad}) on {h}x{w}"),
        ));
    }
    Ok(())
}

/// Integer upsampling factor `f` of `x`.
pub fn upsample(x: &RefTensor, f: usize, what: &str) -> R<()> {
    nchw(x, what)?;
    if !(1..=64).contains(&f) {
        return Err(LayerError::shape(what, format!("scale factor {f}")));
    }
    Ok(())
}

/// Feature maps concatenated along channels: same batch and spatial size.
pub fn same_maps(xs: &[&RefTensor], what: &str) -> R<()> {
    let first = xs
        .first()
        .ok_or_else(|| LayerError::shape(what, "nothing to concatenate"))?;
    let (n, _, h, w) = nchw(first, what)?;
    for x in xs {
        let (xn, _, xh, xw) = nchw(x, what)?;
        if (xn, xh, xw) != (n, h, w) {
            return Err(LayerError::shape(
                what,
                format!("cannot concatenate {:?} with {:?}", first.shape, x.shape),
            ));
        }
    }
    Ok(())
}

/// Two values added elementwise have one shape.
pub fn same_shape(a: &RefTensor, b: &RefTensor, what: &str) -> R<()> {
    if a.shape != b.shape {
        return Err(LayerError::shape(
            what,
            format!("cannot add {:?} and {:?}", a.shape, b.shape),
        ));
    }
    Ok(())
}

/// A channel range `[from, to)` of `x`.
pub fn channels(x: &RefTensor, from: usize, to: usize, what: &str) -> R<()> {
    let (_, c, _, _) = nchw(x, what)?;
    if from >= to || to > c {
        return Err(LayerError::shape(
            what,
            format!("channels {from}..{to} of {c}"),
        ));
    }
    Ok(())
}
