#![no_main]
//! The pickle VM on arbitrary bytes, then the value-to-JSON walk over what it built and the judge.

use fuse_ema::checkpoint::value::Graph;
use fuse_ema::io::pickle::{Limits, NoPersistentLoad, unpickle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut g = Graph::new();
    // Tighter limits keep each run short; the same code paths check them.
    let limits = Limits {
        max_ops: 1_000_000,
        max_nodes: 100_000,
        max_values: 200_000,
        max_depth: 1_000,
        max_bytes: 64 << 20,
    };
    if let Ok((v, _)) = unpickle(data, &mut g, &mut NoPersistentLoad, &limits) {
        let _ = fuse_ema::checkpoint::metadata::to_json(&g, &v);
        let _ = fuse_ema::checkpoint::module::state_dict(&g, &v);
    }
    // The judge reads whatever was recorded, also from pickles that failed part way.
    let _ = fuse_ema::checkpoint::judge::judge(
        g.uses(),
        &fuse_ema::checkpoint::judge::AllowList::builtin(),
    );
});
