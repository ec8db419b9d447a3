//! `--parity-budget`: seeded batches run in order, the budget is checked after each, the first
//! always runs, and the reports say how many were checked; the cut never changes the exit code.

mod common;

use common::{fixture, run, run_json};

/// `export` of the committed yolov8 fixture at 64×64 (tract: no ONNX Runtime needed) with
/// `extra` arguments, as JSON.
fn export(extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let mut args: Vec<String> = vec![
        "export".into(),
        fixture("yolov8-best.pt").to_str().unwrap().to_string(),
        "-o".into(),
        out.to_str().unwrap().to_string(),
        "--imgsz".into(),
        "64".into(),
        "--runtime".into(),
        "tract".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, v) = run_json(&args);
    assert!(out.exists() == (code == 0), "{v}");
    (code, v)
}

#[test]
fn the_json_report_counts_the_samples_checked() {
    // (arguments, requested, checked, budget, cut): a budget of 0 s is spent by the first
    // batch, so the rest are cut; an ample one or none lets every batch run.
    let cases: [(&[&str], u64, u64, serde_json::Value, bool); 3] = [
        (
            &["--parity-samples", "3", "--parity-budget", "0"],
            3,
            1,
            0.0.into(),
            true,
        ),
        (
            &["--parity-samples", "2", "--parity-budget", "3600"],
            2,
            2,
            3600.0.into(),
            false,
        ),
        (
            &["--parity-samples", "2"],
            2,
            2,
            serde_json::Value::Null,
            false,
        ),
    ];
    for (extra, requested, checked, budget, cut) in cases {
        let (code, v) = export(extra);
        assert_eq!(code, 0, "{extra:?}: {v}");
        assert_eq!(
            v["parity"]["samples"],
            serde_json::json!({
                "requested": requested,
                "checked": checked,
                "first_seed": 0,
                "budget_seconds": budget,
                "cut_by_budget": cut
            }),
            "{extra:?}"
        );
        assert_eq!(v["parity"]["pass"], true, "{extra:?}");
        // One image's task check per checked batch.
        let tasks = v["parity"]["task"].as_array().unwrap().len() as u64;
        assert_eq!(tasks, checked, "{extra:?}");
    }
    let (_, v) = export(&["--parity-samples", "3", "--parity-budget", "0"]);
    assert_eq!(
        v["parity"]["inputs"],
        "1 of 3 seeded uniform [0,1) batch(es) of shape [1, 3, 64, 64] (splitmix64, seeds 0..1; \
         the --parity-budget of 0 s cut the other 2)"
    );
}

#[test]
fn the_text_report_names_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let r = run(&[
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--imgsz",
        "64",
        "--runtime",
        "tract",
        "--parity-samples",
        "4",
        "--parity-budget",
        "0",
    ]);
    assert_eq!(r.status.code(), Some(0));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains(
            "1 of 4 seeded uniform [0,1) batch(es) of shape [1, 3, 64, 64] (splitmix64, seeds \
             0..1; the --parity-budget of 0 s cut the other 3)"
        ),
        "{text}"
    );
}

#[test]
fn a_budget_that_is_no_duration_is_a_usage_error() {
    for bad in ["-1", "soon", "NaN", "inf"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.onnx");
        let r = run(&[
            "export",
            fixture("yolov8-best.pt").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            &format!("--parity-budget={bad}"),
        ]);
        assert_eq!(r.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(&format!("expected seconds (a number ≥ 0), got `{bad}`")),
            "{bad}: {err}"
        );
        assert!(!out.exists());
    }
}
