//! `fuse-ema graft`: every fixture export (fixtures/graft/, made from the raw weights by the real
//! torch exporters) grafted with its checkpoint's EMA, run in ONNX Runtime, and compared per
//! channel with the EMA model's outputs computed by PyTorch; the report's fields; the exit codes
//! for inputs that do not fit; `verify` on a grafted Ultralytics export; and that graft equals
//! fuse-ema's own EMA export where fuse-ema can build the graph.

mod common;

use std::path::{Path, PathBuf};

use common::{PER_CHANNEL, assert_channels, fixture, run, run_json};
use fuse_ema::parity::npz::Npz;
use ndarray::ArrayD;

fn graft_dir() -> PathBuf {
    fixture("graft")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(graft_dir().join("manifest.json"))
        .expect("fixtures/graft/manifest.json (run fixtures/graft/generate.py)");
    serde_json::from_str(&text).unwrap()
}

fn ort_run(model: &Path, name: &str, x: ArrayD<f32>) -> Vec<(String, ArrayD<f32>)> {
    let rt = fuse_ema::runtime::ort().unwrap_or_else(|e| {
        panic!("{e} — run the suite with ./scripts/test, which provides ONNX Runtime")
    });
    rt.run_file(model, &[(name, x)]).unwrap()
}

fn array(t: &fuse_ema::reference::ops::RefTensor) -> ArrayD<f32> {
    ArrayD::from_shape_vec(t.shape.clone(), t.data.clone()).unwrap()
}

fn graft_json(model: &Path, ckpt: &Path, out: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "graft",
        model.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    run_json(&args)
}

/// What each export must show besides equal outputs: the kinds of match its exporter calls for.
fn expect_kinds(model: &str, export: &str, counts: &serde_json::Value) {
    let n = |k: &str| counts[k].as_u64().unwrap();
    match (model, export) {
        // TorchScript and onnxscript both fold BatchNorm into the convolutions.
        ("cnn", "ts" | "dynamo") => assert!(n("bn_fold") >= 12, "{model}.{export}: {counts}"),
        ("cnn", "ts-nofold") => {
            assert_eq!(n("bn_fold"), 0, "{counts}");
            assert_eq!(n("name"), 37, "every state-dict tensor by name: {counts}");
        }
        // Linear weights transposed for MatMul: found by value.
        ("vit", _) => assert!(n("value") >= 8, "{model}.{export}: {counts}"),
        ("tied", _) => assert!(n("name") >= 7, "{counts}"),
        // TorchScript keeps the standardization but folds gain × scale (a multiple of a raw
        // tensor) and a reshaped, transposed weight; dynamo folds the whole standardization.
        ("stdconv", _) => assert!(n("value") >= 2, "{model}.{export}: {counts}"),
        _ => {}
    }
}

#[test]
fn every_fixture_export_grafts_to_pytorchs_ema_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let mut checked = 0;
    for (model, entry) in m.as_object().unwrap() {
        let ckpt = graft_dir().join(entry["checkpoint"].as_str().unwrap());
        let npz = Npz::open(&graft_dir().join(format!("{model}.io.npz"))).unwrap();
        let input = npz.get("input").unwrap();
        let want = npz.get("output").unwrap();
        let raw = npz.get("raw_output").unwrap();
        for (export, file) in entry["exports"].as_object().unwrap() {
            let src = graft_dir().join(file.as_str().unwrap());
            let out = dir.path().join(format!("{model}.{export}.ema.onnx"));
            let (code, r) = graft_json(&src, &ckpt, &out, &[]);
            assert_eq!(code, 0, "{model}.{export}: {r}");
            assert_eq!(r["written"], true);
            assert_eq!(r["layout"]["layout"], entry["layout"], "{model}");
            assert_eq!(r["counts"]["unmatched"], 0);
            assert_eq!(r["counts"]["ambiguous"], 0);
            expect_kinds(model, export, &r["counts"]);
            // Every initializer read as a weight was replaced, and moved.
            for e in r["initializers"].as_array().unwrap() {
                let weighty = e["used_as"].as_array().unwrap().iter().any(|u| {
                    let u = u.as_str().unwrap();
                    ["Conv[1]", "Gemm[1]", "MatMul[1]", "LayerNormalization[1]"].contains(&u)
                });
                if weighty {
                    assert!(
                        ["name", "value", "bn-fold"].contains(&e["how"].as_str().unwrap()),
                        "{model}.{export}: {e}"
                    );
                    assert!(e["max_change"].as_f64().unwrap() > 0.0, "{e}");
                }
            }
            let drift = &r["drift"]["outputs"][0];
            assert!(
                drift["max_abs"].as_f64().unwrap() > 1e-3,
                "{model}: {drift}"
            );
            let got = ort_run(&out, "input", array(input)).remove(0).1;
            let got: Vec<f32> = got.iter().copied().collect();
            let what = format!("{model}.{export} grafted vs PyTorch EMA");
            assert_channels(&what, &want.shape, &got, &want.data, PER_CHANNEL);
            // `verify` (no graph of its own for these: the weights are compared) tells the two
            // files apart.
            for (file, code, verdict) in [(&out, 0, "ema"), (&src, 1, "raw")] {
                let (c, v) = run_json(&[
                    "verify",
                    file.to_str().unwrap(),
                    "--checkpoint",
                    ckpt.to_str().unwrap(),
                    "--json",
                ]);
                assert_eq!(
                    (c, v["weights"]["verdict"].as_str()),
                    (code, Some(verdict)),
                    "{v}"
                );
            }
            // The comparison can fail: the raw outputs are outside the same limits.
            let s =
                fuse_ema::parity::compare(&what, &want.shape, &raw.data, &want.data, PER_CHANNEL);
            assert!(!s.pass, "{model}: raw and EMA outputs must differ");
            checked += 1;
        }
    }
    assert_eq!(checked, 9, "exports in the manifest");
}

#[test]
fn report_names_each_match() {
    let dir = tempfile::tempdir().unwrap();
    let g = graft_dir();
    let out = dir.path().join("t.onnx");
    let (code, r) = graft_json(&g.join("tied.dynamo.onnx"), &g.join("tied.pt"), &out, &[]);
    assert_eq!(code, 0, "{r}");
    for k in [
        "model",
        "checkpoint",
        "output",
        "layout",
        "counts",
        "max_change",
        "initializers",
        "drift",
        "written",
    ] {
        assert!(r.get(k).is_some(), "report field {k}: {r}");
    }
    let by_name = |n: &str| {
        r["initializers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .clone()
    };
    // The dynamo exporter keeps the transposed use of a tied weight as its own constant.
    let t = by_name("t");
    assert_eq!(t["how"], "value");
    assert_eq!(t["source"], "enc.weight as [16, 192] permuted [1, 0]");
    assert_eq!(t["match_error"], 0.0);
    // `head2.weight` is `head.weight` (tied): both raw keys hold it.
    let h = by_name("head2.weight");
    assert_eq!(h["how"], "name");
    let shape = by_name("val_3");
    assert_eq!(
        (shape["how"].as_str(), shape["dtype"].as_str()),
        (Some("constant"), Some("int64"))
    );
    assert!(
        r["drift"]["runtime"]
            .as_str()
            .unwrap()
            .starts_with("onnxruntime")
    );

    // The text form lists the same.
    let text = run(&[
        "graft",
        g.join("cnn.ts.onnx").to_str().unwrap(),
        "--checkpoint",
        g.join("cnn.pt").to_str().unwrap(),
        "-o",
        dir.path().join("c.onnx").to_str().unwrap(),
    ]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("bn-fold   onnx::Conv_72"), "{text}");
    assert!(
        text.contains("stem.0.weight ⊗ BatchNorm stem.1 (eps 1e-5)"),
        "{text}"
    );
    assert!(text.contains("output drift"), "{text}");
}

#[test]
fn a_model_from_another_checkpoint_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let g = graft_dir();
    let out = dir.path().join("x.onnx");
    // The CNN's ONNX against the ViT's checkpoint: its weights match nothing.
    let (code, r) = graft_json(&g.join("cnn.ts.onnx"), &g.join("vit.pt"), &out, &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["written"], false);
    assert_eq!(r["counts"]["unmatched"], 18, "{}", r["counts"]);
    assert!(!out.exists(), "nothing written");
    let (code, r) = graft_json(
        &g.join("cnn.ts.onnx"),
        &g.join("vit.pt"),
        &out,
        &["--allow-unmatched"],
    );
    assert_eq!(code, 0, "{r}");
    assert!(out.exists());
    let drift = r["drift"]["outputs"][0]["max_abs"].as_f64().unwrap();
    assert_eq!(drift, 0.0, "nothing replaced, nothing moved");
}

#[test]
fn bad_inputs_exit_2_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let g = graft_dir();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").unwrap();
    let out = dir.path().join("o.onnx");
    let ck = g.join("cnn.pt");
    let ts = g.join("cnn.ts.onnx");
    let best = fixture("yolov8-best.pt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                garbage.to_str().unwrap(),
                "--checkpoint",
                ck.to_str().unwrap(),
            ],
            "not a readable ONNX model",
        ),
        (
            vec![
                ts.to_str().unwrap(),
                "--checkpoint",
                garbage.to_str().unwrap(),
            ],
            "garbage.onnx",
        ),
        // A stripped checkpoint keeps only the EMA: nothing says which initializers are raw.
        (
            vec![ts.to_str().unwrap(), "--checkpoint", best.to_str().unwrap()],
            "keeps no raw weights",
        ),
    ];
    for (mut args, msg) in cases {
        args.insert(0, "graft");
        args.extend(["-o", out.to_str().unwrap()]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("fuse-ema: error: ") && err.contains(msg),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    // Never over an input.
    let copy = dir.path().join("m.onnx");
    std::fs::copy(g.join("cnn.ts.onnx"), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let o = run(&[
        "graft",
        copy.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "-o",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, key: u8, body: &[u8]) {
    out.push(key);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// `model` with one more initializer: an int64 tensor whose external data file does not exist.
fn with_missing_external_data(model: &[u8], path: &Path) -> Vec<u8> {
    let s = fuse_ema::onnx::graft::scan::scan(model, path).unwrap();
    let mut entry = Vec::new();
    field(&mut entry, 0x0a, b"location");
    field(&mut entry, 0x12, b"missing.bin");
    let mut t = vec![0x08, 0x02, 0x10, 0x07]; // dims [2], INT64
    field(&mut t, 0x42, b"ext_ids");
    field(&mut t, 0x6a, &entry);
    t.extend_from_slice(&[0x70, 0x01]); // data_location EXTERNAL
    with_graph_field(model, &s, 0x2a, &t)
}

/// `model` (laid out as `s`) with one more field `key` appended to its graph.
fn with_graph_field(
    model: &[u8],
    s: &fuse_ema::onnx::graft::scan::Scanned,
    key: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut graph: Vec<u8> = s
        .graph_fields
        .iter()
        .flat_map(|f| model[f.range.clone()].to_vec())
        .collect();
    field(&mut graph, key, body);
    let mut out = Vec::new();
    for (i, top) in s.top.iter().enumerate() {
        if i == s.graph {
            field(&mut out, 0x3a, &graph);
        } else {
            out.extend_from_slice(&model[top.range.clone()]);
        }
    }
    out
}

/// `model` with a sparse initializer named `name` appended to its graph.
fn with_sparse_initializer(model: &[u8], path: &Path, name: &str) -> Vec<u8> {
    let s = fuse_ema::onnx::graft::scan::scan(model, path).unwrap();
    let mut values = vec![0x08, 0x01, 0x10, 0x01]; // dims [1], FLOAT
    field(&mut values, 0x42, name.as_bytes());
    field(&mut values, 0x4a, &9.0f32.to_le_bytes()); // raw_data
    let mut indices = vec![0x08, 0x01, 0x10, 0x07]; // dims [1], INT64
    field(&mut indices, 0x4a, &0i64.to_le_bytes());
    let mut sparse = Vec::new();
    field(&mut sparse, 0x0a, &values);
    field(&mut sparse, 0x12, &indices);
    sparse.extend_from_slice(&[0x18, 0x01]); // dims [1]
    // GraphProto.sparse_initializer (15)
    with_graph_field(model, &s, 0x7a, &sparse)
}

/// A sparse initializer (review 8 G4, in graft's own scanner): ONNX Runtime densifies it and
/// lets it replace the dense initializer of its name, so a grafted EMA weight would not be what
/// runs. Refused (exit 2, no output), naming the tensor.
#[test]
fn a_sparse_initializer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = graft_dir();
    let model = dir.path().join("sparse.onnx");
    let bytes = std::fs::read(g.join("cnn.ts.onnx")).unwrap();
    let s = fuse_ema::onnx::graft::scan::scan(&bytes, &model).unwrap();
    let name = s.inits[0].name.clone();
    std::fs::write(&model, with_sparse_initializer(&bytes, &model, &name)).unwrap();
    let out = dir.path().join("o.onnx");
    let o = run(&[
        "graft",
        model.to_str().unwrap(),
        "--checkpoint",
        g.join("cnn.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let want = format!("sparse initializer '{name}' is not read");
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
}

/// An initializer whose external data cannot be read is an error naming the model (exit 2, no
/// output), never a reference copied into an output that may live elsewhere.
#[test]
fn unreadable_external_data_is_an_error_not_a_dangling_reference() {
    let dir = tempfile::tempdir().unwrap();
    let g = graft_dir();
    let model = dir.path().join("ext.onnx");
    let bytes = std::fs::read(g.join("cnn.ts.onnx")).unwrap();
    std::fs::write(&model, with_missing_external_data(&bytes, &model)).unwrap();
    let out = dir.path().join("o.onnx");
    let o = run(&[
        "graft",
        model.to_str().unwrap(),
        "--checkpoint",
        g.join("cnn.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-drift",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let want = format!("fuse-ema: error: {}: ", model.display());
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("missing.bin"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
}

/// Ultralytics: `yolo export` of the raw weights, grafted, equals fuse-ema's own EMA export, and
/// `verify` says it holds the EMA (where the raw export is called raw).
#[test]
fn grafted_yolo_export_equals_our_ema_export_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ck = fixture("yolov8-v80-style.pt");
    let grafted = dir.path().join("grafted.onnx");
    let (code, r) = graft_json(&fixture("yolo-export-raw.onnx"), &ck, &grafted, &[]);
    assert_eq!(code, 0, "{r}");
    assert!(
        r["counts"]["bn_fold"].as_u64().unwrap() > 100,
        "{}",
        r["counts"]
    );
    let ours = dir.path().join("ours.onnx");
    let o = run(&[
        "export",
        ck.to_str().unwrap(),
        "-o",
        ours.to_str().unwrap(),
        "--imgsz",
        "64",
        "--no-parity",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for seed in 0..3 {
        let x = fuse_ema::parity::seeded_images(&[1, 3, 64, 64], seed);
        let a = ort_run(&grafted, "images", array(&x)).remove(0).1;
        let b = ort_run(&ours, "images", array(&x)).remove(0).1;
        let (a, b): (Vec<f32>, Vec<f32>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        assert_channels(
            "grafted yolo export vs fuse-ema export",
            &[1, 6, 84],
            &a,
            &b,
            PER_CHANNEL,
        );
    }
    let (code, v) = run_json(&[
        "verify",
        grafted.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["weights"]["verdict"], "ema");
    let (code, v) = run_json(&[
        "verify",
        fixture("yolo-export-raw.onnx").to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!((code, v["weights"]["verdict"].as_str()), (1, Some("raw")));
}
