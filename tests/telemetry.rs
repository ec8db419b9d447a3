//! ONNX Runtime 1.32's official builds send telemetry from Linux unless `ORT_DISABLE_TELEMETRY`
//! is set before the library initialises: a device id under `~/.cache/Microsoft/DeveloperTools`,
//! DNS look-ups and uploads of the models' producer and metadata. fuse-ema sets the variable
//! itself (`runtime::opt_out_of_telemetry`, first thing in `main`), so a parity check through
//! ONNX Runtime leaves nothing behind in the user's home. Needs the ONNX Runtime library
//! (`ORT_DYLIB_PATH`, as `scripts/test` provides); never skips.

mod common;

use std::process::Command;

use common::fixture;

#[test]
fn a_parity_check_through_onnx_runtime_writes_no_telemetry_state() {
    let home = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let onnx = out_dir.path().join("m.onnx");
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH must name libonnxruntime (scripts/test sets it)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .arg("export")
        .arg(fixture("yolov8-epoch1.pt"))
        .arg("-o")
        .arg(&onnx)
        .args(["--imgsz", "64", "--runtime", "ort"])
        .env("HOME", home.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("ORT_DISABLE_TELEMETRY")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("parity: PASS — onnxruntime"), "{text}");
    let cache = home.path().join(".cache");
    let left: Vec<_> = walk(&cache);
    assert!(
        left.is_empty(),
        "ONNX Runtime left telemetry state in HOME: {left:?}"
    );
}

/// Every path under `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        all.extend(walk(&p));
        all.push(p);
    }
    all
}
