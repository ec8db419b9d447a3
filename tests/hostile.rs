//! The hostile corpus (tests/hostile/, made by tests/hostile/generate.py): every file gets the
//! answer its manifest promises — a loud "dangerous", a "not allowed", or one clear error
//! line naming the file — and nothing in it runs, and no command leaves an output behind.

mod common;

use std::path::{Path, PathBuf};

use common::run;

/// Every manifest's files: `manifest.json` (generate.py) and `manifest-container.json`
/// (gen_container.py, the container decisions).
fn corpus() -> Vec<(PathBuf, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut out = Vec::new();
    for file in ["manifest.json", "manifest-container.json"] {
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        out.extend(manifest.as_object().unwrap().iter().map(|(name, v)| {
            (
                dir.join("files").join(name),
                v["expect"].as_str().unwrap().to_string(),
                v["contains"].as_str().unwrap().to_string(),
            )
        }));
    }
    out
}

#[test]
fn corpus_has_at_least_thirty_files() {
    assert!(corpus().len() >= 30, "{} files", corpus().len());
}

#[test]
fn every_hostile_file_gets_its_promised_answer() {
    let marker = Path::new("/tmp/fuse-ema-pwned");
    let _ = std::fs::remove_file(marker);
    let out_dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (path, expect, contains) in corpus() {
        let p = path.to_str().unwrap();
        let r = run(&["inspect", p]);
        let stderr = String::from_utf8_lossy(&r.stderr).to_string();
        let code = r.status.code();
        if code.is_none() || stderr.contains("panicked") {
            failures.push(format!("{p}: crashed: {stderr}"));
            continue;
        }
        let ok = match expect.as_str() {
            "dangerous" => {
                code == Some(1)
                    && String::from_utf8_lossy(&r.stdout).contains(&format!("DANGEROUS {contains}"))
            }
            // Outside the allow-list without a known danger: still exit 1, and --strict names it.
            "not-allowed" => {
                let s = run(&["inspect", "--strict", p]);
                code == Some(1)
                    && String::from_utf8_lossy(&r.stdout)
                        .contains(&format!("NOT ALLOWED {contains}"))
                    && s.status.code() == Some(1)
                    && String::from_utf8_lossy(&s.stderr).contains(&contains)
            }
            _ => {
                code == Some(2)
                    && stderr.trim_end().lines().count() == 1
                    && stderr.contains(p)
                    && stderr.to_lowercase().contains(&contains.to_lowercase())
                    && r.stdout.is_empty()
            }
        };
        if !ok {
            failures.push(format!(
                "{p}: expected {expect} ({contains}), got exit {code:?}: {stderr}"
            ));
        }
        // Whatever the answer, `fold` and `export` under --strict leave nothing behind.
        for (cmd, ext) in [("fold", "safetensors"), ("export", "onnx")] {
            let out = out_dir.path().join(format!("out.{ext}"));
            let r = run(&[
                cmd,
                p,
                "-o",
                out.to_str().unwrap(),
                "--strict",
                if cmd == "export" {
                    "--no-parity"
                } else {
                    "--allow-missing"
                },
            ]);
            let c = r.status.code();
            if c.is_none() || String::from_utf8_lossy(&r.stderr).contains("panicked") {
                failures.push(format!("{p}: {cmd} crashed"));
            }
            if expect != "error" && c == Some(0) {
                failures.push(format!("{p}: {cmd} --strict accepted a {expect} file"));
            }
            if out.exists() {
                std::fs::remove_file(&out).unwrap();
                if expect != "error" || c != Some(0) {
                    failures.push(format!("{p}: {cmd} left {} behind", out.display()));
                }
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
        if !leftovers.is_empty() {
            failures.push(format!("{p}: temporary files left: {leftovers:?}"));
        }
    }
    assert!(!marker.exists(), "a payload ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
