//! `fuse-ema inspect --json` on the fixtures, asserted field by field against what the generator
//! recorded from PyTorch.

mod common;

use common::{Expected, fixture, run, run_json};
use serde_json::{Value, json};

fn inspect(file: &str) -> (i32, Value) {
    run_json(&["inspect", "--json", fixture(file).to_str().unwrap()])
}

fn entry<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no entry {key}"))
}

fn set<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["weight_sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("no weight set {path}"))
}

/// Figures PyTorch's tensors give for one set: count, elements, bytes, dtype histogram.
fn expected_stats(exp: &Expected, path: &str) -> (usize, u64, u64, Value) {
    let tensors = exp.tensors();
    let names = exp.sets().into_iter().find(|(p, _)| p == path).unwrap().1;
    let mut elements = 0u64;
    let mut bytes = 0u64;
    let mut dtypes = serde_json::Map::new();
    for n in &names {
        let t = tensors.tensor(&format!("{path}/{n}")).unwrap();
        elements += t.shape().iter().product::<usize>() as u64;
        bytes += t.data().len() as u64;
        let d = common::dtype_name(t.dtype());
        let c = dtypes.get(d).and_then(Value::as_u64).unwrap_or(0);
        dtypes.insert(d.into(), json!(c + 1));
    }
    (names.len(), elements, bytes, Value::Object(dtypes))
}

fn assert_set(report: &Value, exp: &Expected, path: &str) {
    let s = set(report, path);
    let (n, elements, bytes, dtypes) = expected_stats(exp, path);
    assert_eq!(s["tensors"], json!(n), "{path} tensors");
    assert_eq!(s["parameters"], json!(elements), "{path} parameters");
    assert_eq!(s["bytes"], json!(bytes), "{path} bytes");
    assert_eq!(s["dtypes"], dtypes, "{path} dtypes");
}

#[test]
fn ultralytics_mid_training_checkpoint() {
    let (code, r) = inspect("yolov8-epoch1.pt");
    let exp = Expected::load("yolov8-epoch1");
    assert_eq!(code, 0);
    assert_eq!(r["schema"], 1);
    assert_eq!(r["container"]["format"], "torch-zip");
    assert_eq!(r["container"]["serialization_version"], "3");
    assert_eq!(r["container"]["byteorder"], "little");
    assert_eq!(r["container"]["pickle_protocol"], 2);
    assert_eq!(r["container"]["record"], "archive/");
    assert_eq!(entry(&r, "model")["kind"], "none");
    assert_eq!(entry(&r, "ema")["kind"], "module");
    assert_eq!(
        entry(&r, "ema")["class"],
        "ultralytics.nn.tasks.DetectionModel"
    );
    assert_eq!(entry(&r, "optimizer")["kind"], "optimizer");
    assert_eq!(
        entry(&r, "optimizer")["stats"]["tensors"],
        *exp.fact("optimizer_tensors")
    );
    assert_eq!(entry(&r, "epoch")["value"], *exp.fact("epoch"));
    assert_eq!(r["metadata"]["framework"], "ultralytics");
    assert_eq!(r["metadata"]["epoch"], *exp.fact("epoch"));
    assert_eq!(r["metadata"]["updates"], *exp.fact("updates"));
    assert_eq!(r["metadata"]["names"], *exp.fact("names"));
    assert_eq!(r["metadata"]["train_args"]["epochs"], 2);
    assert_eq!(r["metadata"]["train_args"]["imgsz"], 64);
    assert_eq!(r["weight_sets"].as_array().unwrap().len(), 1);
    assert_eq!(set(&r, "ema")["source"], "module");
    assert_set(&r, &exp, "ema");
    assert_eq!(r["dangerous"], json!([]));
    let globals: Vec<&str> = r["globals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(globals.contains(&"torch._utils._rebuild_tensor_v2"));
    assert!(globals.contains(&"ultralytics.nn.modules.conv.Conv"));
}

#[test]
fn ultralytics_stripped_best_and_80_style() {
    let (code, r) = inspect("yolov8-best.pt");
    let exp = Expected::load("yolov8-best");
    assert_eq!(code, 0);
    assert_eq!(entry(&r, "ema")["kind"], "none");
    assert_eq!(entry(&r, "model")["class"], *exp.fact("model_class"));
    assert_eq!(r["metadata"]["version"], *exp.fact("version"));
    assert_eq!(r["metadata"]["epoch"], -1);
    assert_set(&r, &exp, "model");

    let (_, r) = inspect("yolov8-v80-style.pt");
    let exp = Expected::load("yolov8-v80-style");
    assert_set(&r, &exp, "model");
    assert_set(&r, &exp, "ema");
    assert_eq!(r["metadata"]["version"], "8.0.0");
}

#[test]
fn timm_checkpoint() {
    let (code, r) = inspect("timm-last.pth.tar");
    let exp = Expected::load("timm-last");
    assert_eq!(code, 0);
    assert_eq!(r["metadata"]["framework"], "timm");
    assert_eq!(r["metadata"]["arch"], *exp.fact("arch"));
    assert_eq!(r["metadata"]["epoch"], *exp.fact("epoch"));
    assert_eq!(r["metadata"]["metric"], *exp.fact("metric"));
    assert_eq!(entry(&r, "state_dict_ema")["kind"], "tensor-dict");
    assert_eq!(entry(&r, "args")["class"], "argparse.Namespace");
    assert_set(&r, &exp, "state_dict");
    assert_set(&r, &exp, "state_dict_ema");
    assert_eq!(set(&r, "state_dict")["source"], "tensor-dict");
}

#[test]
fn safetensors_and_legacy_and_sharded() {
    let (code, r) = inspect("ema-prefixed.safetensors");
    assert_eq!(code, 0);
    assert_eq!(r["container"]["format"], "safetensors");
    let exp = Expected::load("ema-prefixed");
    assert_eq!(r["metadata"]["safetensors"], *exp.fact("metadata"));
    assert_set(&r, &exp, "");
    assert_eq!(r["globals"], json!([]));

    let (_, r) = inspect("legacy.pt");
    assert_eq!(r["container"]["format"], "torch-legacy");
    assert_eq!(r["container"]["serialization_version"], "1001");
    assert_set(&r, &Expected::load("legacy"), "");

    let (_, r) = inspect("sharded");
    let exp = Expected::load("sharded");
    assert_eq!(r["container"]["format"], "safetensors-sharded");
    assert_eq!(
        r["container"]["shards"].as_array().unwrap().len() as u64,
        exp.fact("shards").as_u64().unwrap()
    );
    assert_set(&r, &exp, "");
}

#[test]
fn malicious_file_is_reported_and_nothing_runs() {
    // The marker is the file malicious.pt's payload writes (its own path: no other test uses it),
    // and tests/hostile/generate.py proved with Python that the payload does write it.
    let marker = std::path::Path::new("/tmp/fuse-ema-pwned");
    let bytes = std::fs::read(fixture("malicious.pt")).unwrap();
    let needle = marker.to_str().unwrap().as_bytes();
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "malicious.pt's payload writes the marker checked here"
    );
    let controls: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/controls.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        controls["fixtures/malicious.pt"]["python_created_marker"], true,
        "positive control: Python running the payload creates the marker"
    );
    assert_eq!(
        controls["fixtures/malicious.pt"]["marker"],
        "/tmp/fuse-ema-pwned"
    );
    let _ = std::fs::remove_file(marker);
    let (code, r) = inspect("malicious.pt");
    assert_eq!(code, 1, "dangerous globals fail the check");
    assert_eq!(r["dangerous"][0]["name"], "posix.system");
    assert!(
        r["dangerous"][0]["danger"]
            .as_str()
            .unwrap()
            .contains("commands")
    );
    assert_eq!(entry(&r, "payload")["class"], "posix.system");
    let out = run(&["inspect", fixture("malicious.pt").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DANGEROUS posix.system"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("DANGER"));
    assert!(!marker.exists(), "the payload must never run");
}

#[test]
fn tree_lists_modules_with_classes() {
    let out = run(&[
        "inspect",
        "--tree",
        fixture("yolov8-best.pt").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("module tree:"));
    assert!(text.contains("model: DetectionModel"));
    assert!(text.contains("      0: Conv"), "{text}");
    assert!(text.contains("conv: Conv2d [1 tensors]"), "{text}");
    let (_, r) = run_json(&[
        "inspect",
        "--json",
        "--tree",
        fixture("yolov8-best.pt").to_str().unwrap(),
    ]);
    assert_eq!(r["tree"][0]["class"], "ultralytics.nn.tasks.DetectionModel");
    assert_eq!(r["tree"][0]["children"][0]["name"], "model");
}

#[test]
fn help_has_examples() {
    for args in [&["--help"][..], &["inspect", "--help"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
    }
    let out = run(&["inspect"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing argument is a usage error"
    );
}
