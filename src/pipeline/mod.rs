//! The commands' work as library calls, so the CLI only parses arguments, calls these and
//! renders what they return: opening a checkpoint under `--strict` ([`open`]), and the export
//! and verify pipelines ([`export`]: which weights, the order outputs are written in, what a
//! failed parity check leaves, what an ONNX file says about how to check it).

mod embedded_nms;
pub mod export;
pub mod metadata_check;
pub mod open;

pub use open::{OpenError, open_checked};
