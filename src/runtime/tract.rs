//! tract, the pure-Rust ONNX runtime: the parity check still runs where ONNX Runtime is absent.

use std::path::Path;

use ndarray::{ArrayD, ArrayViewD};
use tract_onnx::prelude::*;

use super::RuntimeError;

/// The version of tract built in.
pub const VERSION: &str = "0.23";

fn err(step: &'static str) -> impl Fn(TractError) -> RuntimeError {
    move |e| RuntimeError::Tract {
        step,
        message: format!("{e:#}"),
    }
}

/// Whether any value in the typed model is f16.
fn has_f16(model: &TypedModel) -> bool {
    model.nodes().iter().any(|n| {
        n.outputs
            .iter()
            .any(|o| o.fact.datum_type == DatumType::F16)
    })
}

/// Runs an ONNX model (bytes, or a file for external data) on named f32 inputs. A model with
/// f16 weights or arithmetic is run in f32 (its f16 values widened exactly).
pub fn run(
    bytes: Option<&[u8]>,
    path: Option<&Path>,
    inputs: &[(&str, ArrayViewD<f32>)],
) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
    let onnx = tract_onnx::onnx();
    let mut model = match (bytes, path) {
        (Some(b), _) => onnx.model_for_read(&mut std::io::Cursor::new(b)),
        (None, Some(p)) => onnx.model_for_path(p),
        _ => return Err(RuntimeError::TractNoModel),
    }
    .map_err(err("cannot load the model"))?;
    for (i, (_, a)) in inputs.iter().enumerate() {
        model = model
            .with_input_fact(i, f32::fact(a.shape()).into())
            .map_err(err("input shape"))?;
    }
    let names: Vec<String> = model
        .output_outlets()
        .map_err(err("outputs"))?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();
    let mut typed = model.into_typed().map_err(err("typing"))?;
    if has_f16(&typed) {
        // tract's f16 kernels are reference loops on most CPUs (yolov8n at 640: 51 s). The
        // weights stay f16-rounded, but the arithmetic runs in f32: seconds instead of a minute,
        // at the price of not reproducing f16 activation rounding (the report says so).
        typed = tract_onnx::tract_core::transform::get_transform("f16_to_f32")
            .map_err(err("f16 to f32"))?
            .ok_or(RuntimeError::NoF16Transform)?
            .transform_into(typed)
            .map_err(err("f16 to f32"))?;
    }
    let runnable = super::timing::phase("tract optimisation", || typed.into_optimized())
        .map_err(err("optimisation"))?
        .into_runnable()
        .map_err(err("plan"))?;
    let values: TVec<TValue> = inputs
        .iter()
        .map(|(_, a)| Tensor::from(a.to_owned()).into())
        .collect();
    let out = super::timing::phase("tract run", || runnable.run(values)).map_err(err("run"))?;
    out.iter()
        .zip(names)
        .map(|(t, n)| {
            // Integer class maps (uint8, int32) are widened to f32, exact up to 2^24 labels.
            let t = if t.datum_type().is_integer() {
                t.cast_to::<f32>().map_err(err("output"))?.into_owned()
            } else {
                t.clone().into_tensor()
            };
            let v = t.to_plain_array_view::<f32>().map_err(err("output"))?;
            Ok((
                n,
                ArrayD::from_shape_vec(v.shape().to_vec(), v.iter().copied().collect())?,
            ))
        })
        .collect()
}
