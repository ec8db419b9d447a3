//! The allow-list gate through the binary: every real fixture passes `inspect` and `--strict`;
//! files with findings exit 1 with one line per finding naming the global; `--strict` refuses
//! and writes nothing; `--allow` values are checked.

mod common;

use std::path::PathBuf;

use common::{fixture, run};

/// Every committed checkpoint written by a real library (all but the deliberately malicious one),
/// with the allow-list samples (fixtures/allowlist/samples.py).
fn real_fixtures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [
        fixture(""),
        fixture("pickles"),
        fixture("allowlist/samples"),
        fixture("releases"),
    ] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let is_checkpoint = [".pt", ".pth", ".ckpt", ".tar", ".pkl"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if is_checkpoint && name != "malicious.pt" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_real_fixture_passes_inspect_and_strict() {
    let files = real_fixtures();
    assert!(files.len() >= 25, "{} fixtures", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let p = f.to_str().unwrap();
        for args in [vec!["inspect", p], vec!["inspect", "--strict", p]] {
            let r = run(&args);
            if r.status.code() != Some(0) {
                failures.push(format!(
                    "{args:?}: exit {:?}\n{}{}",
                    r.status.code(),
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_global_of_the_real_fixtures_has_a_role() {
    for f in real_fixtures() {
        let r = run(&["inspect", "--json", f.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(v["findings"], serde_json::json!([]), "{}", f.display());
        for g in v["globals"].as_array().unwrap() {
            assert!(g["role"].is_string(), "{}: {g}", f.display());
            assert_eq!(g["allowed"], true, "{}: {g}", f.display());
        }
    }
}

#[test]
fn findings_are_one_line_each_naming_the_global() {
    let p = fixture("malicious.pt");
    let p = p.to_str().unwrap();
    let r = run(&["inspect", p]);
    assert_eq!(r.status.code(), Some(1));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.lines()
            .any(|l| l.trim() == "DANGEROUS posix.system — runs commands or touches files"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("DANGER") && err.contains("posix.system"),
        "{err}"
    );
    let s = run(&["inspect", "--strict", p]);
    assert_eq!(s.status.code(), Some(1));
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(
        err.contains("strict") && err.contains("posix.system"),
        "{err}"
    );
    let j = run(&["inspect", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["findings"][0]["kind"], "dangerous");
    assert_eq!(v["findings"][0]["name"], "posix.system");
    assert_eq!(v["findings"][0]["category"], "code-execution");
    assert_eq!(v["not_allowed"], serde_json::json!(["posix.system"]));
}

#[test]
fn an_unknown_class_fails_by_default_and_passes_with_its_package_allowed() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/files/unknown-class.pt");
    let p = p.to_str().unwrap();
    let r = run(&["inspect", p]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stdout)
            .contains("NOT ALLOWED mypkg.models.Innocent — not on the allow-list")
    );
    for allow in ["mypkg.models.*", "mypkg.*", "mypkg.models.Innocent"] {
        let r = run(&["inspect", "--strict", "--allow", allow, p]);
        assert_eq!(r.status.code(), Some(0), "--allow {allow}");
    }
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("w.safetensors");
    let r = run(&[
        "fold",
        p,
        "-o",
        target.to_str().unwrap(),
        "--strict",
        "--allow-missing",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(!target.exists(), "nothing written under --strict");
}

#[test]
fn bad_allow_values_are_usage_errors() {
    let p = fixture("yolov8-best.pt");
    let p = p.to_str().unwrap();
    for bad in [
        "mypkg.models.",
        "os.system",
        "builtins.*",
        "x.Y=getattr",
        "Net",
    ] {
        let r = run(&["inspect", "--allow", bad, p]);
        assert_eq!(r.status.code(), Some(2), "--allow {bad}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.starts_with("fuse-ema: error: --allow"), "{err}");
        assert!(r.stdout.is_empty());
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("w.safetensors");
        let r = run(&["fold", p, "-o", target.to_str().unwrap(), "--allow", bad]);
        assert_eq!(r.status.code(), Some(2), "fold --allow {bad}");
        assert!(!target.exists());
    }
}

/// SHORT_BINUNICODE of `s`.
fn text(s: &str) -> Vec<u8> {
    let mut v = vec![0x8c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// A protocol 4 pickle: `parts` concatenated after PROTO, then STOP.
fn pickle4(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![0x80, 4];
    for p in parts {
        v.extend_from_slice(p);
    }
    v.push(b'.');
    v
}

/// STACK_GLOBAL of module and name.
fn global(m: &str, n: &str) -> Vec<u8> {
    [text(m), text(n), vec![0x93]].concat()
}

#[test]
fn issue_13_attacks_through_the_binary() {
    let one_arg_call = |m: &str, n: &str| pickle4(&[&global(m, n), &text("x"), &[0x85, b'R']]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotted-torch-load",
            one_arg_call("torch.nn.modules.module", "torch.load"),
            "ATTRIBUTE LOOKUP torch.nn.modules.module:torch.load",
        ),
        (
            "dotted-eval-call",
            one_arg_call("builtins", "eval.__call__"),
            "ATTRIBUTE LOOKUP builtins:eval.__call__",
        ),
        (
            "dotted-argparse-os",
            one_arg_call("argparse", "_os.system"),
            "ATTRIBUTE LOOKUP argparse:_os.system",
        ),
        (
            "dotted-builtins-get",
            one_arg_call("torch.nn.modules.module", "__builtins__.get"),
            "ATTRIBUTE LOOKUP torch.nn.modules.module:__builtins__.get",
        ),
        (
            "parse-model",
            one_arg_call("ultralytics.nn.tasks", "parse_model"),
            "DANGEROUS ultralytics.nn.tasks.parse_model",
        ),
        (
            "detection-model-init",
            one_arg_call("ultralytics.nn.tasks", "DetectionModel"),
            "NOT ALLOWED ultralytics.nn.tasks.DetectionModel — class called by REDUCE (runs __init__)",
        ),
        (
            "timm-load-state-dict",
            one_arg_call("timm.models", "load_state_dict"),
            "DANGEROUS timm.models.load_state_dict",
        ),
        (
            "getattr-private",
            pickle4(&[
                &global("builtins", "getattr"),
                &global("ultralytics.nn.modules.head", "Detect"),
                &text("__init__"),
                &[0x86, b'R'],
            ]),
            "DANGEROUS builtins.getattr",
        ),
        (
            "getattr-result-called",
            pickle4(&[
                &global("builtins", "getattr"),
                &global("ultralytics.nn.modules.head", "Detect"),
                &text("forward"),
                &[0x86, b'R'],
                &text("x"),
                &[0x85, b'R'],
            ]),
            "DANGEROUS builtins.getattr",
        ),
        (
            "timeit",
            one_arg_call("timeit", "timeit"),
            "DANGEROUS timeit.timeit",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, data, line) in cases {
        let path = dir.path().join(format!("{name}.pkl"));
        std::fs::write(&path, &data).unwrap();
        let p = path.to_str().unwrap();
        let r = run(&["inspect", p]);
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{name}: {out}");
        assert!(out.contains(line), "{name}: {out}");
        let s = run(&["inspect", "--strict", p]);
        assert_eq!(s.status.code(), Some(1), "{name}");
        let target = dir.path().join("out.safetensors");
        let f = run(&["fold", p, "-o", target.to_str().unwrap(), "--strict"]);
        assert_eq!(f.status.code(), Some(1), "{name}");
        assert!(!target.exists(), "{name}");
    }
}
