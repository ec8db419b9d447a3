//! Checks and small helpers the emissions in `src/models/layers/` share: output sizes and the
//! shape checks that keep a malformed module tree from indexing out of range (errors name the
//! layer); the attribute checks come from `models::attrs`, shared with the reference.

use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;

pub(crate) use crate::models::attrs::{check_geometry, pair, per_channel, weight4};

/// Output size of a convolution or pooling along one axis.
pub(crate) fn out_size(size: i64, k: i64, s: i64, p: i64, d: i64) -> i64 {
    (size + 2 * p - d * (k - 1) - 1).div_euclid(s) + 1
}

/// A layer's output must have positive spatial size: a kernel larger than its (padded) input, a
/// stride or scale from a malformed checkpoint would otherwise give negative sizes that later size
/// computations turn into huge allocations. The batch dimension is left alone (-1 when dynamic).
pub(crate) fn positive(what: &str, shape: Vec<i64>) -> BuildResult<Vec<i64>> {
    if shape.iter().skip(1).any(|&d| d <= 0) {
        return Err(LayerError::shape(
            what,
            format!("the output would have shape {shape:?}"),
        ));
    }
    Ok(shape)
}

/// The (N, C, H, W) dims of a feature map, or an error naming the layer: a malformed module tree
/// can route a flat output (a classifier's) into a layer that expects a feature map.
pub(crate) fn nchw(x: &GraphValue, what: &str) -> BuildResult<[i64; 4]> {
    match x.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(LayerError::shape(
            what,
            format!("expects a 4-D feature map, got shape {:?}", x.shape),
        )),
    }
}
