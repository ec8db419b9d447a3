//! `AtomicFile` with its fsync started ahead (`sync_ahead`): what the commit leaves, what a
//! drop leaves, and bytes written after the early flush.

use std::io::Write;
use std::path::Path;

use super::{AtomicFile, WriteErrorKind};

/// The names in `dir` (sorted).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An output for `target` holding `bytes`, its fsync started ahead.
fn synced_ahead(target: &Path, inputs: &[&Path], bytes: &[u8]) -> AtomicFile {
    let mut f = AtomicFile::create(target, inputs).unwrap();
    f.file().write_all(bytes).unwrap();
    f.sync_ahead();
    f
}

#[test]
fn a_commit_after_sync_ahead_leaves_the_bytes_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.onnx");
    let mut f = synced_ahead(&target, &[], b"model bytes");
    f.sync_ahead(); // a second call neither starts another flush nor breaks the first
    f.commit().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"model bytes");
    assert_eq!(names(dir.path()), ["out.onnx"]);
}

#[test]
fn bytes_written_after_sync_ahead_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.onnx");
    let mut f = synced_ahead(&target, &[], b"first ");
    f.file().write_all(b"second").unwrap();
    f.commit().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"first second");
    assert_eq!(names(dir.path()), ["out.onnx"]);
}

#[test]
fn a_drop_after_sync_ahead_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.onnx");
    std::fs::write(&target, b"earlier").unwrap();
    drop(synced_ahead(&target, &[], b"never committed"));
    assert_eq!(std::fs::read(&target).unwrap(), b"earlier");
    assert_eq!(names(dir.path()), ["out.onnx"]);
}

#[test]
fn a_refused_commit_as_after_sync_ahead_replaces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (target, input) = (dir.path().join("out.onnx"), dir.path().join("in.pt"));
    std::fs::write(&input, b"checkpoint").unwrap();
    let f = synced_ahead(&target, &[&input], b"model");
    let err = f.commit_as(&input).unwrap_err();
    assert!(matches!(err.kind, WriteErrorKind::IsInput(_)), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), b"checkpoint");
    assert_eq!(names(dir.path()), ["in.pt"]);
}
