#![no_main]
//! The ONNX reader (`verify` parses any exporter's file), then re-encoding what it read.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = fuse_ema::onnx::read::parse(data, None) {
        let _ = m.encode();
    }
});
