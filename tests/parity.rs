//! Parity and `verify`: passing models pass, broken ones fail with exit 1 and a report naming the
//! output, and an ONNX exported (by Ultralytics) from the raw weights is called out as such.

mod common;

use std::path::Path;

use common::{fixture, run, run_json};
use fuse_ema::onnx::proto::{Attr, ElemType};

fn export_bytes(file: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let r = run(&[
        "export",
        fixture(file).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-parity",
    ]);
    assert_eq!(r.status.code(), Some(0));
    std::fs::read(out).unwrap()
}

fn verify(model: &Path, ckpt: &str) -> (i32, serde_json::Value) {
    run_json(&[
        "verify",
        model.to_str().unwrap(),
        "--checkpoint",
        fixture(ckpt).to_str().unwrap(),
        // These checks mean ONNX Runtime; `auto` would fall back to tract without it.
        "--runtime",
        "ort",
        "--json",
    ])
}

#[test]
fn onnx_reader_round_trips_our_writer() {
    let bytes = export_bytes("yolov8-seg.pt");
    let m = fuse_ema::onnx::read::parse(&bytes, None).unwrap();
    assert_eq!(
        m.encode(),
        bytes,
        "parse ∘ encode is the identity on our own files"
    );
    assert_eq!(m.outputs.len(), 2);
    assert!(
        m.metadata
            .iter()
            .any(|(k, v)| k == "task" && v == "segment")
    );
}

#[test]
fn verify_tells_ema_from_raw_in_ultralytics_exports() {
    let (code, r) = verify(&fixture("yolo-export-ema.onnx"), "yolov8-v80-style.pt");
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["weights"]["verdict"], "ema");
    assert_eq!(r["parity"]["pass"], true);
    assert!(
        r["parity"]["runtime"]
            .as_str()
            .unwrap()
            .starts_with("onnxruntime 1.")
    );
    let (code, r) = verify(&fixture("yolo-export-raw.onnx"), "yolov8-v80-style.pt");
    assert_eq!(code, 1);
    assert_eq!(r["weights"]["verdict"], "raw");
    assert!(
        r["weights"]["summary"]
            .as_str()
            .unwrap()
            .contains("exported from the raw weights, not the EMA")
    );
    let out = run(&[
        "verify",
        fixture("yolo-export-raw.onnx").to_str().unwrap(),
        "--checkpoint",
        fixture("yolov8-v80-style.pt").to_str().unwrap(),
        "--runtime",
        "ort",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("raw weights, not the EMA"));
}

fn broken(
    edit: impl FnOnce(&mut fuse_ema::onnx::proto::Model),
) -> (tempfile::TempDir, std::path::PathBuf) {
    // yolo11-detect's BatchNorm statistics are calibrated: its outputs depend on the input, so a
    // wrong graph shows.
    let bytes = export_bytes("yolo11-detect.pt");
    let mut m = fuse_ema::onnx::read::parse(&bytes, None).unwrap();
    edit(&mut m);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.onnx");
    std::fs::write(&p, m.encode()).unwrap();
    (dir, p)
}

#[test]
fn an_output_that_is_the_input_is_refused_not_read_after_free() {
    // Review F5: ONNX Runtime hands a pass-through output back in the input's own buffer; the
    // runner used to free the input first and then copy from it. `verify` refuses such a model
    // before running it; the runner refuses it too, for every other caller.
    let (_d, p) = broken(|m| {
        m.outputs = vec![m.inputs[0].clone()];
    });
    let out = run(&[
        "verify",
        p.to_str().unwrap(),
        "--checkpoint",
        fixture("yolo11-detect.pt").to_str().unwrap(),
        "--runtime",
        "ort",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the graph input itself"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let rt = fuse_ema::runtime::Engine::Ort(fuse_ema::runtime::ort().unwrap(), None);
    let x = ndarray::ArrayD::<f32>::zeros(vec![1, 3, 64, 64]);
    let e = rt
        .run(&std::fs::read(&p).unwrap(), &[("images", x)])
        .unwrap_err();
    assert!(
        e.to_string().contains("output images is one of its inputs"),
        "{e}"
    );
}

#[test]
fn a_perturbed_initializer_fails_parity() {
    let (_d, p) = broken(|m| {
        // The class branch's last bias of the first level: every class score shifts.
        let t = m
            .initializers
            .iter_mut()
            .rev()
            .find(|t| t.name.contains("cv3.0") && t.name.ends_with("bias"))
            .unwrap();
        assert_eq!(t.elem, ElemType::Float);
        let mut v: Vec<f32> = t
            .raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        v[0] += 0.5;
        t.raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let (code, r) = verify(&p, "yolo11-detect.pt");
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["parity"]["pass"], false);
    assert_eq!(r["parity"]["outputs"][0]["name"], "output0");
    assert_eq!(r["parity"]["outputs"][0]["pass"], false);
}

#[test]
fn swapped_concat_inputs_fail_parity() {
    let (_d, p) = broken(|m| {
        // A C2f concatenation of equally wide halves: shapes stay valid, meaning does not.
        let n = m
            .nodes
            .iter_mut()
            .find(|n| n.op == "Concat" && n.inputs.len() >= 3 && n.inputs[0].contains("Split"))
            .unwrap();
        n.inputs.swap(0, 1);
        assert!(matches!(n.attrs[0].1, Attr::Int(1)));
    });
    let (code, r) = verify(&p, "yolo11-detect.pt");
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["parity"]["outputs"][0]["name"], "output0");
    assert_eq!(r["parity"]["outputs"][0]["pass"], false);
}

#[test]
fn export_parity_failure_keeps_no_model_at_the_output_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let report = dir.path().join("parity.json");
    // Checked against another model's golden outputs: parity must fail.
    let r = run(&[
        "export",
        fixture("yolo11-detect.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--golden",
        fixture("yolov8-epoch1.io.npz").to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--runtime",
        "ort",
    ]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("parity: FAIL"));
    assert!(
        !out.exists(),
        "a model that failed parity is never left at the output path"
    );
    assert!(dir.path().join("model.parity-failed.onnx").exists());
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["pass"], false);
    assert_eq!(rep["compared_with"], "golden outputs");
}

#[test]
fn golden_npz_written_by_numpy_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let (code, v) = run_json(&[
        "export",
        fixture("yolov8-epoch1.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--golden",
        fixture("yolov8-epoch1.io.npz").to_str().unwrap(),
        "--runtime",
        "ort",
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["parity"]["pass"], true);
    assert!(v["parity"]["inputs"].as_str().unwrap().contains("golden"));
}

#[test]
fn forcing_a_missing_runtime_is_an_error_and_auto_falls_back_to_tract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let bin = env!("CARGO_BIN_EXE_fuse-ema");
    let ckpt = fixture("yolov8-best.pt");
    let args = [
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let r = std::process::Command::new(bin)
        .args(args)
        .args(["--runtime", "ort"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("ORT_DYLIB_PATH"));
    assert!(!out.exists());
    let r = std::process::Command::new(bin)
        .args(args)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("parity: PASS — tract"));
}

/// `export` loads the runtime while it reads the checkpoint, but reports as if it had settled
/// the runtime first: a runtime that cannot be had is the error (exit 2), not the unreadable or
/// refused checkpoint, which is reported as such when the runtime is there.
#[test]
fn a_missing_runtime_is_reported_before_what_the_checkpoint_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let bin = env!("CARGO_BIN_EXE_fuse-ema");
    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/files/builtins-exec.pt");
    let cases: [(&std::path::Path, &[&str], i32); 2] =
        [(&junk, &[], 2), (&hostile, &["--strict"], 1)];
    for (ckpt, extra, alone) in cases {
        let export = |runtime: &str| {
            std::process::Command::new(bin)
                .args([
                    "export",
                    ckpt.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                ])
                .args(["--runtime", runtime, "--imgsz", "64"])
                .args(extra)
                .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
                .output()
                .unwrap()
        };
        let r = export("ort");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{}: {err}", ckpt.display());
        assert_eq!(
            err.trim_end(),
            "fuse-ema: error: --runtime ort: ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so is not a file"
        );
        assert!(!out.exists());
        // With a runtime (tract) the checkpoint's own failure is what is reported.
        let r = export("tract");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(alone), "{}: {err}", ckpt.display());
        assert!(!err.contains("ORT_DYLIB_PATH"), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn tract_and_onnx_runtime_agree_on_every_architecture() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "yolov8-epoch1.pt",
        "yolo11-detect.pt",
        "yolov5u-detect.pt",
        "yolov8-cls.pt",
        "yolov8-seg.pt",
        "yolov8-pose.pt",
        "yolov8-obb.pt",
    ] {
        let out = dir.path().join(format!("{f}.onnx"));
        let mut reports = Vec::new();
        for rt in ["ort", "tract"] {
            let (code, v) = run_json(&[
                "export",
                fixture(f).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--runtime",
                rt,
                "--parity-samples",
                "2",
                "--json",
            ]);
            assert_eq!(code, 0, "{f} on {rt}: {v}");
            assert!(
                v["parity"]["runtime"]
                    .as_str()
                    .unwrap()
                    .starts_with(if rt == "ort" { "onnxruntime" } else { "tract" })
            );
            reports.push(v);
        }
        // Both runtimes sit within the tolerance of the same reference, so within twice it of each
        // other; compare their worst deviations per output.
        for (a, b) in reports[0]["parity"]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(reports[1]["parity"]["outputs"].as_array().unwrap())
        {
            let (da, db) = (
                a["max_abs"].as_f64().unwrap(),
                b["max_abs"].as_f64().unwrap(),
            );
            let limit = a["worst_channel_limit"]
                .as_f64()
                .unwrap()
                .max(b["worst_channel_limit"].as_f64().unwrap());
            assert!(
                (da - db).abs() <= 2.0 * limit.max(1e-3),
                "{f}: {da} vs {db}"
            );
        }
    }
}

#[test]
fn letterbox_matches_ultralytics_and_drives_parity() {
    let bytes = std::fs::read(fixture("expected/letterbox.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = st
        .tensor("images")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got =
        fuse_ema::parity::letterbox::letterbox(&fixture("letterbox-in.png"), 1, 64, 64).unwrap();
    assert_eq!(got.shape, vec![1, 3, 64, 64]);
    let d = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    // OpenCV resizes with 11-bit fixed-point weights; one grey level is the most it may differ.
    assert!(
        d <= 1.01 / 255.0,
        "letterbox differs from Ultralytics' by {d}"
    );
    let padded = got
        .data
        .iter()
        .zip(&want)
        .filter(|(_, b)| (**b - 114.0 / 255.0).abs() < 1e-6)
        .count();
    assert!(
        padded > 3 * 64 * 20,
        "the grey border is where Ultralytics puts it"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let (code, v) = run_json(&[
        "export",
        fixture("yolo11-detect.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--parity-input",
        fixture("letterbox-in.png").to_str().unwrap(),
        "--runtime",
        "ort",
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["parity"]["inputs"]
            .as_str()
            .unwrap()
            .contains("letterbox-in.png")
    );
}

#[test]
fn an_execution_provider_the_runtime_lacks_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    // The CPU build of ONNX Runtime from PyPI has no CUDA provider.
    let r = run(&[
        "export",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ep",
        "cuda",
        "--runtime",
        "ort",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("CUDA execution provider"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists());
    let r = run(&[
        "export",
        fixture("yolov8-best.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ep",
        "cuda",
        "--runtime",
        "tract",
    ]);
    assert_eq!(r.status.code(), Some(2));
}

/// The fixtures pass their own parity check at sizes other than the training size (64), as a
/// user trying them with `--imgsz` would run them: the built fixtures' BatchNorm statistics are
/// pooled over 64–640 (fixtures/generate.py, `built_fixtures`). With the former training-mode
/// calibration at 64×64 alone, PyTorch's own f32 forward of yolo11-detect was 1.4× (160) and
/// 12.7× (640) the per-channel limit from its f64 forward and these exports exited 1.
#[test]
fn fixtures_pass_parity_at_other_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    for (f, sizes) in [
        ("yolo11-detect.pt", &["160", "224", "640"][..]),
        ("yolov5u-detect.pt", &["224"][..]),
        ("yolov8-pose.pt", &["640"][..]),
        ("yolov8-epoch1.pt", &["160,96"][..]),
    ] {
        for size in sizes {
            let (code, v) = run_json(&[
                "export",
                fixture(f).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--imgsz",
                size,
                "--runtime",
                "ort",
                "--json",
            ]);
            assert_eq!(code, 0, "{f} at {size}: {v}");
            assert_eq!(v["parity"]["pass"], true, "{f} at {size}: {v}");
            let (h, w) = size.split_once(',').unwrap_or((size, size));
            assert_eq!(
                v["input"]["shape"],
                serde_json::json!([1, 3, h.parse::<u64>().unwrap(), w.parse::<u64>().unwrap()]),
                "{f} at {size}"
            );
        }
    }
}
