//! `RepConv` in the forms the family fixtures do not hold (fixtures/repconv/generate.py): with
//! the identity-branch BatchNorm and strided without it, as trained (`conv1`, `conv2`, `bn`), and
//! after `fuse()` (one `conv`). Each exports with its own parity check against the reference
//! interpreter (which runs the branches unfolded) and matches PyTorch's golden.
//!
//! ONNX Runtime must be available (`./scripts/test` provides it); these tests never skip.

mod common;

use common::{fixture, run};

fn export(name: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{name}.onnx"));
    let ckpt = fixture(&format!("repconv/{name}.pt"));
    let mut args = vec![
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--runtime",
        "ort",
    ];
    args.extend_from_slice(extra);
    let r = run(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{name} {extra:?}: {stdout}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        stdout.contains("parity: PASS"),
        "{name} {extra:?}: {stdout}"
    );
    assert!(out.exists(), "{name}: nothing written");
}

fn check(name: &str) {
    // Against the reference interpreter (RepConv unfolded, BatchNorm as BatchNorm).
    export(name, &[]);
    // Against PyTorch's fused export-mode forward.
    let golden = fixture(&format!("repconv/{name}.npz"));
    export(name, &["--golden", golden.to_str().unwrap()]);
}

#[test]
fn repconv_with_identity_batchnorm() {
    check("repconv");
}

#[test]
fn repconv_fused() {
    check("repconv-fused");
}
