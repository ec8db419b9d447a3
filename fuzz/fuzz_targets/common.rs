//! Shared by the file-format targets: write the input to a tmpfs file, open it as a user would,
//! and walk everything a command would touch (weight sets, tensor bytes, inspect, EMA location).

use std::path::PathBuf;

pub fn scratch(ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    PathBuf::from(format!("{dir}/fuse-ema-fuzz-{}.{ext}", std::process::id()))
}

pub fn open_and_walk(data: &[u8], ext: &str) {
    let path = scratch(ext);
    std::fs::write(&path, data).expect("scratch file");
    if let Ok(ckpt) = fuse_ema::io::open(&path) {
        let allow = fuse_ema::checkpoint::judge::AllowList::builtin();
        let _ = fuse_ema::inspect::inspect(&ckpt, true, &allow);
        if let Ok(sets) = ckpt.weight_sets() {
            for s in sets {
                for (_, t) in s.tensors.iter().take(64) {
                    if t.nbytes() <= 1 << 20 {
                        let _ = t.to_contiguous_bytes();
                    }
                }
            }
        }
        if let Ok(l) = fuse_ema::ema::locate(&ckpt, &Default::default()) {
            let _ = fuse_ema::ema::fold(
                &l,
                &path,
                fuse_ema::ema::FoldOptions {
                    allow_missing: true,
                },
            );
        }
    }
}
