//! fuse-ema: read training checkpoints without executing them, find the EMA weights, and ship
//! them. The modules follow the pipeline: [`io`] reads files into the [`checkpoint`] object model,
//! [`inspect`] reports on it, and [`cli`] parses arguments and renders results.

pub mod average;
pub mod checkpoint;
pub mod cli;
pub mod convert;
pub mod diff;
pub mod dtype;
pub mod ema;
pub mod inflate;
pub mod inspect;
pub mod io;
pub mod models;
pub mod onnx;
pub mod parity;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod runtime;
pub mod sarif;
pub mod signals;
pub mod surgery;
pub mod tensor;
pub mod write;
