//! A comparison whose input cannot be read to the end fails; it never reports tensors as skipped.

mod common;

use common::fixture;
use fuse_ema::diff::{DiffError, Side};
use fuse_ema::ema::{self, Selectors};
use fuse_ema::progress::Silent;

#[test]
fn an_input_that_shrinks_after_opening_fails_the_diff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    std::fs::copy(fixture("ema-prefixed.safetensors"), &path).unwrap();
    let ckpt = fuse_ema::io::open(&path).unwrap();
    let l = ema::locate(&ckpt, &Selectors::default()).unwrap();
    let raw = l.raw.as_ref().expect("the fixture has raw weights");
    // Intact, the comparison runs and reads every tensor.
    let drift = fuse_ema::diff::diff(&l.ema.tensors, &raw.tensors, &Silent).unwrap();
    assert!(!drift.tensors.is_empty());
    // Only integer buffers are skipped (they are not compared).
    assert!(
        drift
            .skipped
            .iter()
            .all(|n| n.ends_with("num_batches_tracked")),
        "{:?}",
        drift.skipped
    );
    // Cut to its header: every tensor's bytes are gone.
    let header = 8 + u64::from_le_bytes(std::fs::read(&path).unwrap()[..8].try_into().unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(header)
        .unwrap();
    let err = fuse_ema::diff::diff(&l.ema.tensors, &raw.tensors, &Silent).unwrap_err();
    let DiffError::Read { name, side, source } = &err;
    assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(matches!(side, Side::Subject | Side::Reference));
    assert!(
        err.to_string()
            .starts_with(&format!("tensor '{name}': file changed while reading")),
        "{err}"
    );
}
