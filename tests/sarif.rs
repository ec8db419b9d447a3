//! `inspect --format sarif`: valid SARIF 2.1.0 (checked against the OASIS schema committed in
//! fixtures/sarif/ with a JSON-schema validator), one result per finding at its file, a rule per
//! category, unreadable files as notifications; and `inspect` over several files, as a
//! pre-commit hook calls it.

mod common;

use common::{fixture, run};
use serde_json::Value;

fn hostile(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/files")
        .join(name);
    assert!(p.exists(), "{}", p.display());
    p.to_str().unwrap().to_string()
}

fn validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(fixture("sarif/sarif-schema-2.1.0.json")).unwrap())
            .unwrap();
    jsonschema::validator_for(&schema).expect("the OASIS schema compiles")
}

fn sarif(files: &[&str]) -> (i32, Value) {
    let mut args = vec!["inspect", "--format", "sarif"];
    args.extend_from_slice(files);
    let r = run(&args);
    let v: Value = serde_json::from_slice(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
    });
    let errors: Vec<String> = validator()
        .iter_errors(&v)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not SARIF 2.1.0: {errors:#?}");
    (r.status.code().unwrap(), v)
}

fn results(v: &Value) -> &Vec<Value> {
    v["runs"][0]["results"].as_array().unwrap()
}

#[test]
fn the_validator_rejects_a_broken_log() {
    // The schema test must be able to fail: a result without a message is not SARIF.
    let (_, mut v) = sarif(&[&hostile("builtins-eval.pt")]);
    v["runs"][0]["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("message");
    assert!(!validator().is_valid(&v));
    v["version"] = Value::from("2.0.0");
    assert!(!validator().is_valid(&v));
}

#[test]
fn a_clean_checkpoint_has_no_results() {
    let best = fixture("yolov8-best.pt");
    let (code, v) = sarif(&[best.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(results(&v).is_empty());
    assert_eq!(v["runs"][0]["invocations"][0]["executionSuccessful"], true);
    assert_eq!(v["runs"][0]["tool"]["driver"]["name"], "fuse-ema");
}

#[test]
fn each_finding_is_a_result_at_its_file_under_its_categorys_rule() {
    let cases = [
        ("builtins-eval.pt", "FE001", "builtins.eval"),
        ("fk-shutil.pkl", "FE002", "shutil."),
        ("fk-socket.pkl", "FE003", "socket."),
        // A dotted name is filed under what it reaches when a deny category knows it.
        (
            "dotted-torch-load.pt",
            "FE004",
            "torch.nn.modules.module:torch.load",
        ),
        (
            "dotted-builtins-get.pt",
            "FE011",
            "torch.nn.modules.module:__builtins__.get",
        ),
        ("unknown-class.pt", "FE010", "mypkg.models.Innocent"),
    ];
    let paths: Vec<String> = cases.iter().map(|(f, _, _)| hostile(f)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (code, v) = sarif(&refs);
    assert_eq!(code, 1);
    let rules: Vec<&str> = v["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for ((file, rule, global), path) in cases.iter().zip(&paths) {
        let at_file: Vec<&Value> = results(&v)
            .iter()
            .filter(|r| {
                r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    == fuse_ema::sarif::uri(path).as_str()
            })
            .collect();
        assert!(!at_file.is_empty(), "{file}: no result");
        let hit = at_file.iter().find(|r| r["ruleId"] == *rule);
        let hit = hit.unwrap_or_else(|| panic!("{file}: no {rule} result in {at_file:#?}"));
        assert!(
            hit["properties"]["global"]
                .as_str()
                .unwrap()
                .starts_with(global),
            "{file}: {hit}"
        );
        let index = hit["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index], *rule, "{file}: ruleIndex");
        assert!(
            hit["message"]["text"].as_str().unwrap().contains(path),
            "{file}: the message names the file"
        );
    }
}

#[test]
fn an_unreadable_file_is_a_notification_and_exit_2() {
    let t = hostile("truncated-in-data.pt");
    let (code, v) = sarif(&[&t]);
    assert_eq!(code, 2);
    assert!(results(&v).is_empty());
    let inv = &v["runs"][0]["invocations"][0];
    assert_eq!(inv["executionSuccessful"], false);
    let note = &inv["toolExecutionNotifications"][0];
    assert!(note["message"]["text"].as_str().unwrap().contains(&t));
}

#[test]
fn several_files_exit_1_on_any_finding_else_2_on_any_unreadable() {
    let best = fixture("yolov8-best.pt");
    let best = best.to_str().unwrap();
    let bad = hostile("builtins-eval.pt");
    let broken = hostile("truncated-in-data.pt");
    let code = |files: &[&str]| {
        let mut args = vec!["inspect", "--strict"];
        args.extend_from_slice(files);
        let r = run(&args);
        (
            r.status.code().unwrap(),
            String::from_utf8_lossy(&r.stderr).to_string(),
        )
    };
    assert_eq!(code(&[best, best]).0, 0);
    let (c, err) = code(&[best, &bad, &broken]);
    assert_eq!(c, 1);
    assert!(err.contains("builtins.eval"), "{err}");
    assert!(err.contains("truncated-in-data.pt"), "{err}");
    assert_eq!(code(&[best, &broken]).0, 2);
    // JSON: one report per file, in order.
    let r = run(&["inspect", "--json", best, &bad]);
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(v[1]["findings"][0]["name"], "builtins.eval");
}
