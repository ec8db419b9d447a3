#![no_main]
//! `export` (ONNX builder) and the reference interpreter on well-formed but wrong module pickles:
//! real Ultralytics checkpoints with attributes, shapes and classes rewritten (module_mutate.rs).

#[path = "module_mutate.rs"]
mod module_mutate;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static FIXTURES: OnceLock<Vec<module_mutate::Entries>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fixtures = FIXTURES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        module_mutate::load_fixtures(&dir)
    });
    let _ = module_mutate::run(fixtures, data);
});
