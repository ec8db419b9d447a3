//! docs/ci.md cannot rot: every `fuse-ema` command in its code blocks runs here, in order, in a
//! scratch folder that holds the paths the page uses (filled with committed fixtures), and must
//! exit 0. (The page's `pip install` steps are run by scripts/wheel-check.)

mod common;

use std::path::Path;

/// The `fuse-ema …` command lines of the page's code blocks, `- run:` and `- ` prefixes removed.
fn commands(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let t = line.trim();
        let t = t.strip_prefix("- run:").unwrap_or(t).trim();
        let t = t.strip_prefix("- ").unwrap_or(t).trim();
        if t.starts_with("fuse-ema ") {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn every_command_on_the_ci_page_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/ci.md")).unwrap();
    let cmds = commands(&page);
    assert!(cmds.len() >= 8, "found only {cmds:?}");
    let dir = tempfile::tempdir().unwrap();
    for (to, from) in [
        ("models/best.pt", "yolov8-best.pt"),
        ("models/yolo11.pt", "yolo11-detect.pt"),
        ("runs/train/weights/best.pt", "yolov8-best.pt"),
        ("output/train/last.pth.tar", "timm-last.pth.tar"),
    ] {
        let to = dir.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(common::fixture(from), &to).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_fuse-ema")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for c in &cmds {
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("set -o pipefail; {c}")])
            .current_dir(dir.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "docs/ci.md: `{c}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the jobs upload exists and parses.
    for json in [
        "parity.json",
        "drift.json",
        "verify.json",
        "fuse-ema.sarif",
        "inspect.json",
    ] {
        let bytes = std::fs::read(dir.path().join(json)).unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or_else(|e| panic!("{json}: {e}"));
    }
    assert!(dir.path().join("drift.svg").exists());
    assert!(dir.path().join("model.onnx").exists());
}
