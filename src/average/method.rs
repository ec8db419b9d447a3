//! How `average` combines its inputs: the methods, their parameters' checks, each input's weight
//! in the result, and the per-element arithmetic of whole-tensor averaging (f64 tensors; the
//! f32/f16/bf16 element loops are in [`super::kernel`]).

use serde::Serialize;

use super::{AverageError, Input};

/// How the inputs are combined.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum Method {
    /// Equal weights, as SWA and uniform model soups average.
    Uniform,
    /// Normalised weights, one per input.
    Weighted {
        /// As given (normalised by their sum).
        weights: Vec<f64>,
    },
    /// `e ← d·e + (1 − d)·x` over the inputs in order, starting from the first; `every` > 1
    /// means the checkpoints were saved `every` steps apart, so each stands for that many steps
    /// (decay `d^every` per checkpoint).
    Ema {
        /// Per-step decay.
        decay: f64,
        /// Steps between checkpoints.
        every: u32,
    },
}

/// Why a method's parameters do not fit the inputs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UsageError {
    /// Fewer than two inputs.
    #[error("average needs at least two checkpoints, got {0}")]
    TooFewInputs(usize),
    /// `--weights` does not give one weight per input.
    #[error("--weights has {given} values for {inputs} checkpoints")]
    WeightCount {
        /// Weights given.
        given: usize,
        /// Inputs.
        inputs: usize,
    },
    /// A weight is negative, infinite or NaN.
    #[error("--weights must be finite and not negative")]
    BadWeight,
    /// The weights sum to zero.
    #[error("--weights sum to zero")]
    ZeroWeights,
    /// The weights' sum is not a finite number (each would normalise to zero).
    #[error("--weights sum to more than an f64 holds")]
    WeightsOverflow,
    /// The decay is outside [0, 1) or `--every` is zero.
    #[error("--ema-decay {decay} must be in [0, 1) and --every {every} at least 1")]
    BadDecay {
        /// The decay given.
        decay: f64,
        /// The step count given.
        every: u32,
    },
}

impl Method {
    /// Checks the parameters against the number of inputs.
    pub fn check(&self, inputs: usize) -> Result<(), UsageError> {
        if inputs < 2 {
            return Err(UsageError::TooFewInputs(inputs));
        }
        match self {
            Method::Uniform => Ok(()),
            Method::Weighted { weights } => {
                if weights.len() != inputs {
                    return Err(UsageError::WeightCount {
                        given: weights.len(),
                        inputs,
                    });
                }
                if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                    return Err(UsageError::BadWeight);
                }
                let sum = weights.iter().sum::<f64>();
                if !sum.is_finite() {
                    return Err(UsageError::WeightsOverflow);
                }
                if sum <= 0.0 {
                    return Err(UsageError::ZeroWeights);
                }
                Ok(())
            }
            Method::Ema { decay, every } => {
                if !(0.0..1.0).contains(decay) || *every == 0 {
                    return Err(UsageError::BadDecay {
                        decay: *decay,
                        every: *every,
                    });
                }
                Ok(())
            }
        }
    }

    /// Each input's weight in the result.
    pub(super) fn weights(&self, n: usize) -> Vec<f64> {
        match self {
            Method::Uniform => vec![1.0 / n as f64; n],
            Method::Weighted { weights } => {
                let s: f64 = weights.iter().sum();
                weights.iter().map(|w| w / s).collect()
            }
            Method::Ema { decay, every } => {
                let d = decay.powf(f64::from(*every));
                (0..n)
                    .map(|i| {
                        let later = (n - 1 - i) as i32;
                        let own = if i == 0 { 1.0 } else { 1.0 - d };
                        own * d.powi(later)
                    })
                    .collect()
            }
        }
    }
}

/// The arithmetic of one method in one precision (f64 tensors are averaged whole in f64; the
/// tests check the f32 form against the element loops' rule).
pub(super) trait Real:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self>
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
}

impl Real for f32 {
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn mul(self, o: f32) -> f32 {
        self * o
    }
    fn div(self, o: f32) -> f32 {
        self / o
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn mul(self, o: f64) -> f64 {
        self * o
    }
    fn div(self, o: f64) -> f64 {
        self / o
    }
}

/// Folds input `i`'s elements `x` into the accumulator `acc` (which holds input 0 after the
/// first call), as the method does.
fn step<R: Real>(method: &Method, i: usize, acc: &mut [R], x: &[R]) {
    match method {
        Method::Uniform => {
            // AveragedModel: a + (x − a) / (n + 1), n inputs averaged so far.
            let n1 = R::from_f64((i + 1) as f64);
            for (a, &v) in acc.iter_mut().zip(x) {
                *a = *a + (v - *a).div(n1);
            }
        }
        Method::Ema { decay, every } => {
            let d = decay.powf(f64::from(*every));
            let (keep, take) = (R::from_f64(d), R::from_f64(1.0 - d));
            for (a, &v) in acc.iter_mut().zip(x) {
                *a = keep.mul(*a) + take.mul(v);
            }
        }
        // Weighted sums accumulate in f64 in `combine`.
        Method::Weighted { .. } => {}
    }
}

/// Tensor `k` of every input combined whole, in precision `R`.
pub(super) fn combine<R: Real>(
    inputs: &[Input<'_>],
    k: usize,
    method: &Method,
    weights: &[f64],
    read: impl Fn(&crate::tensor::Tensor) -> std::io::Result<Option<Vec<R>>>,
) -> Result<Vec<R>, AverageError> {
    let load = |i: usize| -> Result<Vec<R>, AverageError> {
        let (name, t) = &inputs[i].tensors[k];
        let unreadable = |source| AverageError::Unreadable {
            file: inputs[i].file.to_string(),
            name: name.clone(),
            source,
        };
        read(t).map_err(unreadable)?.ok_or_else(|| {
            let dtype = t.dtype();
            unreadable(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("dtype {dtype} has no real values"),
            ))
        })
    };
    if let Method::Weighted { .. } = method {
        let mut acc: Vec<f64> = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let x = load(i)?;
            if acc.is_empty() {
                acc = vec![0.0; x.len()];
            }
            for (a, v) in acc.iter_mut().zip(&x) {
                *a += w * v.to_f64();
            }
        }
        return Ok(acc.into_iter().map(R::from_f64).collect());
    }
    let mut acc = load(0)?;
    for i in 1..inputs.len() {
        let x = load(i)?;
        step(method, i, &mut acc, &x);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_weights_sum_to_one_and_favour_the_last() {
        let w = Method::Ema {
            decay: 0.5,
            every: 1,
        }
        .weights(3);
        assert_eq!(w, vec![0.25, 0.25, 0.5]);
        let w = Method::Uniform.weights(4);
        assert_eq!(w, vec![0.25; 4]);
    }

    #[test]
    fn uniform_is_the_running_mean() {
        let mut acc = vec![1.0f32, 4.0];
        step(&Method::Uniform, 1, &mut acc, &[3.0, 0.0]);
        step(&Method::Uniform, 2, &mut acc, &[5.0, 2.0]);
        assert_eq!(acc, vec![3.0, 2.0]);
    }

    #[test]
    fn bad_parameters_are_usage_errors() {
        assert_eq!(Method::Uniform.check(1), Err(UsageError::TooFewInputs(1)));
        let w = Method::Weighted {
            weights: vec![1.0, -1.0],
        };
        assert_eq!(w.check(2), Err(UsageError::BadWeight));
        let e = Method::Ema {
            decay: 1.0,
            every: 1,
        };
        assert!(matches!(e.check(3), Err(UsageError::BadDecay { .. })));
    }
}
