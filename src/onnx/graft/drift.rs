//! Output drift: the original and the grafted model run in the same runtime on the same seeded
//! inputs, output by output — the output-level counterpart of `diff`.

use std::path::Path;

use ndarray::ArrayD;

use super::GraftFault;
use super::report::{Drift, OutputDrift};
use crate::onnx::proto::{Dim, ElemType, ValueInfo};
use crate::runtime::Engine;

/// The concrete input shapes: fixed dimensions as they are, a dynamic one as `shapes` gives it,
/// else 1.
fn input_shapes(inputs: &[ValueInfo], shapes: &[Vec<usize>]) -> Vec<(String, Vec<usize>)> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let shape = match shapes.get(i) {
                Some(s) => s.clone(),
                None => v
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) if *n > 0 => *n as usize,
                        _ => 1,
                    })
                    .collect(),
            };
            (v.name.clone(), shape)
        })
        .collect()
}

/// Runs `original` and `grafted` on seeded inputs; the outcome is always a report (a model the
/// runtime cannot run is reported, not fatal), except that the grafted model failing where the
/// original runs is an error.
pub fn measure(
    engine: &Engine,
    inputs: &[ValueInfo],
    shapes: &[Vec<usize>],
    original: &Path,
    grafted: &Path,
) -> Result<Drift, GraftFault> {
    let mut d = Drift {
        runtime: Some(engine.name()),
        inputs: Vec::new(),
        outputs: Vec::new(),
        skipped: None,
    };
    if let Some(v) = inputs.iter().find(|v| v.elem != ElemType::Float) {
        d.skipped = Some(format!(
            "input '{}' is not float32 (seeded inputs are images)",
            v.name
        ));
        return Ok(d);
    }
    let named = input_shapes(inputs, shapes);
    let mut feeds = Vec::new();
    for (i, (name, shape)) in named.iter().enumerate() {
        let t = crate::parity::seeded_images(shape, i as u64);
        let a =
            ArrayD::from_shape_vec(shape.clone(), t.data).map_err(|source| GraftFault::Seed {
                name: name.clone(),
                source,
            })?;
        feeds.push((name.as_str(), a));
    }
    d.inputs = named.clone();
    let before = match engine.run_file(original, &feeds) {
        Ok(o) => o,
        Err(e) => {
            d.skipped = Some(format!("the original model does not run: {e}"));
            return Ok(d);
        }
    };
    let after = engine
        .run_file(grafted, &feeds)
        .map_err(GraftFault::GraftedFails)?;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let (mut max_abs, mut sum, mut reference_max) = (0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(b.iter()) {
            let delta = (*y as f64 - *x as f64).abs();
            max_abs = max_abs.max(delta);
            sum += delta;
            reference_max = reference_max.max((*x as f64).abs());
        }
        d.outputs.push(OutputDrift {
            name: name.clone(),
            shape: a.shape().to_vec(),
            max_abs,
            mean_abs: sum / a.len().max(1) as f64,
            reference_max,
            relative: max_abs / reference_max.max(1e-30),
        });
    }
    Ok(d)
}
