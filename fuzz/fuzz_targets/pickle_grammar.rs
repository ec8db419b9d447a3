#![no_main]
//! Structure-aware pickles (grammar.rs) judged by fuse-ema: no panic, no global lost between the
//! bytes and the report, no flagged call judged clean; with FUSE_EMA_FUZZ_ROLES=1 also issue 13's
//! role-aware allow-list (any global outside its role makes the pickle not clean).

#[path = "grammar.rs"]
mod grammar;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let roles = std::env::var_os("FUSE_EMA_FUZZ_ROLES").is_some();
    let p = grammar::generate(data);
    if let Err(e) = grammar::check(&p, &grammar::Today, roles) {
        panic!("oracle: {e}\npickle: {:?}", p.bytes);
    }
});
