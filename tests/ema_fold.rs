//! Locating and folding the EMA in every layout fixture, compared bit for bit with the folded
//! weights PyTorch computed; the written files are the ones real torch verified.

mod common;

use std::path::Path;

use common::{Expected, dtype_name, fixture, run, run_json, sha256};
use fuse_ema::ema::{self, FoldOptions, Selectors};

/// (fixture, expected name, weight set holding the folded EMA, layout id)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("yolov8-epoch1.pt", "yolov8-epoch1", "ema", "ultralytics"),
    ("yolov8-best.pt", "yolov8-best", "model", "ultralytics"),
    (
        "yolov8-v80-style.pt",
        "yolov8-v80-style",
        "fold",
        "ultralytics",
    ),
    ("timm-last.pth.tar", "timm-last", "fold", "timm"),
    (
        "averaged-model.pt",
        "averaged-model",
        "fold",
        "averaged-model",
    ),
    ("mmengine-ema.pth", "mmengine-ema", "fold", "mmengine"),
    (
        "lightning-ema.ckpt",
        "lightning-ema",
        "fold",
        "lightning-weight-averaging",
    ),
    ("ldm-litema.ckpt", "ldm-litema", "fold", "ldm-litema"),
    ("mmcv-ema.pth", "mmcv-ema", "fold", "mmcv-ema-buffers"),
    // mmdet's hook swapped before the save: the plain keys hold the EMA.
    (
        "mmdet-yolox-ema.pth",
        "mmdet-yolox-ema",
        "fold",
        "mmcv-ema-buffers",
    ),
    ("mmdet-ema.pth", "mmdet-ema", "fold", "mmcv-ema-buffers"),
    ("rtdetr.pth", "rtdetr", "fold", "rtdetr"),
    ("dino.pth", "dino", "fold", "dino"),
];

fn assert_same(file: &str, got: &[(String, fuse_ema::tensor::Tensor)], exp: &Expected, set: &str) {
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want = exp.sets().into_iter().find(|(p, _)| p == set).unwrap().1;
    assert_eq!(names, want, "{file}: folded names/order");
    let tensors = exp.tensors();
    for (n, t) in got {
        let w = tensors.tensor(&format!("{set}/{n}")).unwrap();
        assert_eq!(t.dtype().name(), dtype_name(w.dtype()), "{file}: {n} dtype");
        assert_eq!(t.shape(), w.shape(), "{file}: {n} shape");
        assert!(
            *t.to_contiguous_bytes().unwrap() == *w.data(),
            "{file}: {n} differs from PyTorch's EMA"
        );
    }
}

#[test]
fn every_layout_locates_and_folds_to_pytorchs_ema() {
    for &(file, exp_name, set, layout) in CASES {
        let ckpt = fuse_ema::io::open(&fixture(file)).unwrap();
        let l = ema::locate(&ckpt, &Selectors::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.layout, layout, "{file}: layout");
        let folded = ema::fold(&l, &fixture(file), FoldOptions::default()).unwrap();
        let exp = Expected::load(exp_name);
        assert_same(file, &folded.tensors, &exp, set);
        if let Some(u) = exp.fact("updates").as_f64() {
            assert_eq!(l.updates, Some(u), "{file}: updates");
        }
    }
}

#[test]
fn fold_writes_the_bytes_torch_verified() {
    // fixtures/generate.py ran `fold` on each fixture, loaded the .pt with
    // torch.load(weights_only=True) and the .safetensors with safetensors, checked every tensor,
    // and recorded the hashes. Same input, same options: the same bytes.
    let verified: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("expected/fold-outputs.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for &(file, ..) in CASES {
        for ext in ["pt", "safetensors"] {
            let out = dir.path().join(format!("{file}.{ext}"));
            let r = run(&[
                "fold",
                fixture(file).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ]);
            assert_eq!(
                r.status.code(),
                Some(0),
                "{file}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert_eq!(
                sha256(&out),
                verified[file][ext],
                "{file}.{ext}: output differs from the torch-verified one"
            );
        }
    }
}

#[test]
fn prefixed_safetensors_fold() {
    let ckpt = fuse_ema::io::open(&fixture("ema-prefixed.safetensors")).unwrap();
    let l = ema::locate(&ckpt, &Selectors::default()).unwrap();
    assert_eq!(l.layout, "prefixed-keys");
    let folded = ema::fold(&l, &ckpt.path, FoldOptions::default()).unwrap();
    let exp = Expected::load("ema-prefixed");
    let tensors = exp.tensors();
    assert_eq!(folded.tensors.len() * 2, exp.sets()[0].1.len());
    for (n, t) in &folded.tensors {
        let src = if t.dtype().is_float() {
            "model_ema"
        } else {
            "model"
        };
        let w = tensors.tensor(&format!("/{src}.{n}")).unwrap();
        assert!(*t.to_contiguous_bytes().unwrap() == *w.data(), "{n}");
    }
}

#[test]
fn dtype_conversion_matches_torch_half() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f16.safetensors");
    let r = run(&[
        "fold",
        fixture("timm-last.pth.tar").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert_eq!(r.status.code(), Some(0));
    let ckpt = fuse_ema::io::open(&out).unwrap();
    let set = ckpt.weight_set("").unwrap().unwrap();
    let mut tensors = set.tensors.clone();
    // safetensors keeps offset order, which is the fold order.
    tensors.sort_by_key(|(n, _)| n.clone());
    let exp = Expected::load("timm-last");
    let mut want = exp
        .sets()
        .into_iter()
        .find(|(p, _)| p == "fold_f16")
        .unwrap()
        .1;
    want.sort();
    assert_eq!(
        tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        want
    );
    let et = exp.tensors();
    for (n, t) in &tensors {
        let w = et.tensor(&format!("fold_f16/{n}")).unwrap();
        assert_eq!(t.dtype().name(), dtype_name(w.dtype()), "{n}");
        assert!(
            *t.to_contiguous_bytes().unwrap() == *w.data(),
            "{n}: f16 rounding differs from torch's .half()"
        );
    }
    assert_eq!(ckpt.info.metadata["layout"], "timm");
    assert_eq!(ckpt.info.metadata["source"], "timm-last.pth.tar");
}

#[test]
fn sharded_output_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let r = run(&[
        "fold",
        fixture("yolov8-epoch1.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-shard-size",
        "100KB",
        "--json",
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let outputs = v["outputs"].as_array().unwrap();
    assert!(outputs.len() > 3, "several shards plus the index");
    for o in &outputs[..outputs.len() - 1] {
        let len = std::fs::metadata(o.as_str().unwrap()).unwrap().len();
        assert!(len < 200_000, "{o} is {len} bytes");
    }
    let ckpt = fuse_ema::io::open(&dir.path().join("model.safetensors.index.json")).unwrap();
    let set = ckpt.weight_set("").unwrap().unwrap();
    // Shards split the state dict in order, as Hugging Face's save_pretrained does; inside each
    // shard the safetensors layout orders tensors by dtype, then name. Compared in the state
    // dict's order:
    let exp = Expected::load("yolov8-epoch1");
    let want = exp.sets().into_iter().find(|(p, _)| p == "ema").unwrap().1;
    let mut got = set.tensors.clone();
    got.sort_by_key(|(n, _)| want.iter().position(|w| w == n));
    assert_same("sharded fold", &got, &exp, "ema");
}

#[test]
fn ambiguity_and_absence_are_errors_with_a_way_out() {
    let r = run(&[
        "fold",
        fixture("two-candidates.pt").to_str().unwrap(),
        "-o",
        "/tmp/never.safetensors",
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        e.contains("2 EMA candidates") && e.contains("--ema ema") && e.contains("--ema swa"),
        "{e}"
    );
    assert!(!Path::new("/tmp/never.safetensors").exists());

    let dir = tempfile::tempdir().unwrap();
    let pick = |sel: &str| {
        let out = dir.path().join(format!("{sel}.safetensors"));
        let r = run(&[
            "fold",
            fixture("two-candidates.pt").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--ema",
            sel,
        ]);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        sha256(&out)
    };
    assert_ne!(
        pick("ema"),
        pick("swa"),
        "the selector decides which weights are written"
    );

    let r = run(&[
        "fold",
        fixture("legacy.pt").to_str().unwrap(),
        "-o",
        "/tmp/never.pt",
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        e.contains("no EMA found") && e.contains("(88 tensors)") && e.contains("--ema"),
        "{e}"
    );

    let r = run(&[
        "fold",
        fixture("timm-last.pth.tar").to_str().unwrap(),
        "-o",
        "/tmp/never.pt",
        "--ema",
        "nope",
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("no weight set 'nope'"));
}

#[test]
fn litema_dotless_names_that_collide_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 16];
    let view = |shape: Vec<usize>| {
        let n = shape.iter().product::<usize>() * 4;
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data[..n]).unwrap()
    };
    let tensors = vec![
        ("model.a.b1.weight".to_string(), view(vec![4])),
        ("model.ab.1.weight".to_string(), view(vec![4])),
        ("model_ema.ab1weight".to_string(), view(vec![4])),
        ("model_ema.decay".to_string(), view(vec![1])),
        ("model_ema.num_updates".to_string(), view(vec![1])),
    ];
    let path = dir.path().join("collide.safetensors");
    safetensors::serialize_to_file(tensors, None, &path).unwrap();
    let r = run(&[
        "fold",
        path.to_str().unwrap(),
        "-o",
        dir.path().join("o.pt").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        e.contains("could belong to 'model.a.b1.weight' or 'model.ab.1.weight'"),
        "{e}"
    );
}

#[test]
fn outputs_are_atomic_and_never_replace_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::copy(fixture("ema-prefixed.safetensors"), &input).unwrap();
    let before = sha256(&input);
    let r = run(&[
        "fold",
        input.to_str().unwrap(),
        "-o",
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("refusing to overwrite the input"));
    assert_eq!(sha256(&input), before);
    let r = run(&[
        "fold",
        input.to_str().unwrap(),
        "-o",
        dir.path()
            .join("missing/dir/o.safetensors")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    // Nothing but the input is left in the folder: no temporary, no partial output.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("in.safetensors")]);
}

#[test]
fn diff_matches_numpy() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected/diff.json")).unwrap())
            .unwrap();
    for file in ["yolov8-v80-style.pt", "timm-last.pth.tar"] {
        let (code, r) = run_json(&["diff", fixture(file).to_str().unwrap(), "--json"]);
        assert_eq!(code, 0);
        let exp = want[file].as_object().unwrap();
        let got = r["tensors"].as_array().unwrap();
        assert_eq!(got.len(), exp.len(), "{file}: float tensors compared");
        for t in got {
            let name = t["name"].as_str().unwrap();
            let e = &exp[name];
            for (i, key) in ["max_abs", "mean_abs", "rel_l2", "cosine"]
                .iter()
                .enumerate()
            {
                let (g, w) = (t[key].as_f64(), e[i].as_f64());
                match (g, w) {
                    (Some(g), Some(w)) => assert!(
                        (g - w).abs() <= 1e-9 * w.abs().max(1e-12),
                        "{file} {name} {key}: {g} vs numpy {w}"
                    ),
                    (g, w) => assert_eq!(g, w, "{file} {name} {key}"),
                }
            }
        }
    }
}

#[test]
fn diff_gate_plot_and_against() {
    let file = fixture("yolov8-v80-style.pt");
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("drift.svg");
    let r = run(&[
        "diff",
        file.to_str().unwrap(),
        "--fail-above",
        "10",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&r.stdout).contains("PASS"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("model.22"));
    let r = run(&["diff", file.to_str().unwrap(), "--fail-above", "0.1"]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "drift above the gate fails the check"
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("FAIL"));
    let (code, v) = run_json(&[
        "diff",
        fixture("yolov8-epoch1.pt").to_str().unwrap(),
        "--against",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "--json",
        "--top",
        "3",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["top"].as_array().unwrap().len(), 3);
    let r = run(&["diff", fixture("yolov8-best.pt").to_str().unwrap()]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "a stripped file has no raw weights"
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("stripped"));
}

#[test]
fn inspect_reports_the_layout() {
    for &(file, _, _, layout) in CASES {
        let (_, r) = run_json(&["inspect", "--json", fixture(file).to_str().unwrap()]);
        assert_eq!(r["layout"]["layout"], layout, "{file}");
    }
    let (_, r) = run_json(&[
        "inspect",
        "--json",
        fixture("yolov8-best.pt").to_str().unwrap(),
    ]);
    assert_eq!(r["layout"]["stripped"], true);
    let (_, r) = run_json(&["inspect", "--json", fixture("legacy.pt").to_str().unwrap()]);
    assert_eq!(r["layout"], serde_json::Value::Null);
    assert!(r["layout_error"].as_str().unwrap().contains("no EMA found"));
}
