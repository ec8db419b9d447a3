//! One file per concept. Each declares its classes in a `LAYERS` list (gathered by
//! [`super::registry`]) and holds, side by side, their emission (`impl Builder`, BatchNorm
//! folded) and their reference implementation (`impl Reference` or plain functions, BatchNorm
//! unfolded). The two sides share attribute reading, never arithmetic: emission writes ONNX
//! nodes through `onnx::graph`, the reference computes with `reference::ops`.

pub mod act;
pub mod area_attention;
pub mod attention;
pub mod basic;
pub mod classic;
pub mod classic_v7;
pub mod classify;
pub mod conv;
pub mod conv_transpose;
pub mod csp;
pub mod dense;
pub mod elan;
pub mod ghost;
pub mod heads;
pub mod resnet;
pub mod rtdetr;
pub mod v10;
pub mod v9;
