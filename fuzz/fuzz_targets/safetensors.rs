#![no_main]
//! Opening a safetensors file as the CLI does, then walking all it holds.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::open_and_walk(data, "safetensors"));
