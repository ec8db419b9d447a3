//! `fuse-ema average` against what PyTorch computed from the same checkpoints
//! (fixtures/average/generate.py): `AveragedModel`'s running mean, a float64 weighted sum in the
//! same order, an EMA replayed as `decay * e + (1 - decay) * x` in float32, and the timm EMA and
//! raw sources. All comparisons are bit-exact: the arithmetic is the same, operation for
//! operation, so no ulp of slack is needed (the weighted sum accumulates in f64 in input order,
//! as the generator does).

mod common;

use common::{fixture, run, run_json};

fn compare(out: &std::path::Path, expected: &str) {
    let got = std::fs::read(out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    let want = std::fs::read(fixture(&format!("average/expected/{expected}.safetensors"))).unwrap();
    let want = safetensors::SafeTensors::deserialize(&want).unwrap();
    let mut names: Vec<String> = got.names().into_iter().map(str::to_string).collect();
    let mut want_names: Vec<String> = want.names().into_iter().map(str::to_string).collect();
    names.sort();
    want_names.sort();
    assert_eq!(names, want_names, "{expected}: names");
    for n in &names {
        let (g, w) = (got.tensor(n).unwrap(), want.tensor(n).unwrap());
        assert_eq!(
            (g.dtype(), g.shape()),
            (w.dtype(), w.shape()),
            "{expected}: {n}"
        );
        assert!(
            g.data() == w.data(),
            "{expected}: {n} differs from PyTorch's"
        );
    }
}

/// The fixtures' paths as strings, for a command line.
fn paths(files: &[&str]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            fixture(&format!("average/{f}"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn average(files: &[&str], extra: &[&str]) -> (i32, serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avg.safetensors");
    let paths = paths(files);
    let mut args = vec!["average"];
    args.extend(paths.iter().map(String::as_str));
    args.extend_from_slice(&["-o", out.to_str().unwrap(), "--json"]);
    args.extend_from_slice(extra);
    let (code, v) = run_json(&args);
    (code, v, dir)
}

const EPOCHS: &[&str] = &["epoch1.pt", "epoch2.pt", "epoch3.pt", "epoch4.pt"];
const TIMM: &[&str] = &["timm1.pth.tar", "timm2.pth.tar", "timm3.pth.tar"];

#[test]
fn uniform_is_averaged_models_running_mean() {
    let (code, v, dir) = average(EPOCHS, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["average"]["method"], "uniform");
    assert_eq!(v["average"]["from_last"][0], "bn.num_batches_tracked");
    compare(&dir.path().join("avg.safetensors"), "uniform");
}

/// f16 EMAs (Ultralytics 8.x saves its EMA in half precision), several steps per tensor: the
/// running mean is computed in f32 on the widened values and rounded to f16 once, as
/// fixtures/average/yolo.py computes it with PyTorch.
#[test]
fn f16_emas_of_ultralytics_checkpoints_average_in_f32_and_round_once() {
    let (code, v, dir) = average(&["yolo-epoch1.pt", "yolo-epoch2.pt", "yolo-epoch3.pt"], &[]);
    assert_eq!(code, 0, "{v}");
    assert!(v["average"]["averaged"].as_u64().unwrap() > 200, "{v}");
    compare(&dir.path().join("avg.safetensors"), "yolo-uniform");
}

#[test]
fn weighted_matches_pytorchs_f64_sum() {
    let (code, v, dir) = average(EPOCHS, &["--weights", "1,2,3,4"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["average"]["weights"][3], 0.4);
    compare(&dir.path().join("avg.safetensors"), "weighted");
}

#[test]
fn an_ema_replayed_over_checkpoints_matches_pytorch() {
    let (code, v, dir) = average(EPOCHS, &["--ema-decay", "0.5", "--every", "2"]);
    assert_eq!(code, 0, "{v}");
    let w: Vec<f64> = v["average"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
    compare(&dir.path().join("avg.safetensors"), "ema");
}

#[test]
fn each_checkpoint_contributes_its_ema_unless_raw_is_asked() {
    let (code, v, dir) = average(TIMM, &[]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["inputs"][0]["weights"]
            .as_str()
            .unwrap()
            .contains("state_dict_ema"),
        "{v}"
    );
    compare(&dir.path().join("avg.safetensors"), "timm-ema-uniform");
    let (code, v, dir) = average(TIMM, &["--source", "raw"]);
    assert_eq!(code, 0, "{v}");
    compare(&dir.path().join("avg.safetensors"), "timm-raw-uniform");
}

#[test]
fn checkpoints_of_different_models_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let e1 = fixture("average/epoch1.pt");
    let other = fixture("yolov8-best.pt");
    let r = run(&[
        "average",
        e1.to_str().unwrap(),
        other.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("yolov8-best.pt"), "{err}");
    assert!(!out.exists());
    for (bad, says) in [
        (vec!["--weights", "1,2"], "--weights"),
        (vec!["--weights", "1,-1,1,1"], "finite and not negative"),
        // Each weight is finite, their sum is not: every weight would normalise to 0 and an
        // all-zero model be written (review, session 5).
        (
            vec!["--weights", "1e308,1e308,1e308,1e308"],
            "sum to more than an f64 holds",
        ),
        (vec!["--ema-decay", "1.5"], "--ema-decay"),
    ] {
        let mut args = vec!["average"];
        let files = paths(EPOCHS);
        args.extend(files.iter().map(String::as_str));
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        args.extend_from_slice(&bad);
        let r = run(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
        assert!(!out.exists());
    }
    let r = run(&["average", e1.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "one input");
    // Never over an input.
    let copy = dir.path().join("epoch1.pt");
    std::fs::copy(&e1, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let r = run(&[
        "average",
        copy.to_str().unwrap(),
        e1.to_str().unwrap(),
        "-o",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

#[test]
fn a_pt_output_holds_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avg.pt");
    let files = paths(EPOCHS);
    let mut args = vec!["average"];
    args.extend(files.iter().map(String::as_str));
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    assert_eq!(run(&args).status.code(), Some(0));
    // Read back through fuse-ema's own torch reader, then compare with PyTorch's average.
    let st = dir.path().join("back.safetensors");
    // A plain state dict: its only weight set is the root.
    let r = run(&[
        "fold",
        out.to_str().unwrap(),
        "-o",
        st.to_str().unwrap(),
        "--ema",
        "(root)",
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    compare(&st, "uniform");
}
