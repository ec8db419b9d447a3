#![no_main]
//! A sharded set's `model.safetensors.index.json` (shards: one small valid file, `a.safetensors`).

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch("d");
    let _ = std::fs::create_dir_all(&dir);
    let shard = dir.join("a.safetensors");
    if !shard.exists() {
        let h = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0u8; 8]);
        std::fs::write(&shard, f).expect("shard");
    }
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, data).expect("index");
    if let Ok(ckpt) = fuse_ema::io::open(&index) {
        let _ = ckpt.weight_sets();
    }
});
