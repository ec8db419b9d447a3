//! The detection-level parity check on a model that detects something. yolov8-best's class
//! scores stay below 0.01, so its check compares no detections with none and cannot fail;
//! `families/yolov8n-ghost-detect.pt` (BatchNorm calibrated, scores up to 0.996) gives dozens of
//! boxes over the 0.25 threshold. The negative controls zero one class channel and require the
//! check itself to fail.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::fixture;
use fuse_ema::parity::npz::Npz;
use fuse_ema::parity::{Agreement, task_check};
use fuse_ema::reference::ops::RefTensor;

const CKPT: &str = "families/yolov8n-ghost-detect.pt";
const GOLDEN: &str = "families/goldens/yolov8n-ghost-detect.default.npz";
/// Ultralytics' `predict` confidence threshold, which the task check applies.
const CONF: f32 = 0.25;

/// (batch, 4 + nc, anchors) of a detect output.
fn dims(y: &RefTensor) -> (usize, usize, usize) {
    let [b, rows, a] = y.shape[..] else {
        panic!("a detect output is (B, 4 + nc, A), not {:?}", y.shape)
    };
    (b, rows - 4, a)
}

/// Anchors of image 0 whose best class reaches the threshold: read from the golden itself, so
/// the fixture's claim to detect something is checked, not assumed.
fn confident_anchors(y: &RefTensor) -> usize {
    let (_, nc, a) = dims(y);
    (0..a)
        .filter(|&k| (0..nc).any(|c| y.data[(4 + c) * a + k] >= CONF))
        .count()
}

/// `y` with class `c`'s score row zeroed in every image.
fn zero_class(y: &RefTensor, c: usize) -> RefTensor {
    let (b, nc, a) = dims(y);
    let mut data = y.data.clone();
    for i in 0..b {
        let row = (i * (4 + nc) + 4 + c) * a;
        data[row..row + a].fill(0.0);
    }
    RefTensor::new(data, y.shape.clone())
}

/// The detection counts of a passing check's detail, `"N vs M detections …"`.
fn counts(detail: &str) -> (usize, usize) {
    let mut w = detail.split_whitespace();
    let n = w.next().and_then(|s| s.parse().ok());
    let vs = w.next();
    let m = w.next().and_then(|s| s.parse().ok());
    match (n, vs, m) {
        (Some(n), Some("vs"), Some(m)) => (n, m),
        _ => panic!("unexpected task detail: {detail}"),
    }
}

const ALIKE: Agreement = Agreement {
    score: 1e-3,
    boxes: None,
    rows: [1e-4; 4],
};

#[test]
fn the_fixture_detects_and_the_check_fails_when_a_class_is_zeroed() {
    let npz = Npz::open(&fixture(GOLDEN)).unwrap();
    let want = npz.get("output0").unwrap();
    let (_, nc, _) = dims(want);
    assert_eq!(nc, 2);
    assert!(
        confident_anchors(want) >= 10,
        "the golden must hold real detections"
    );
    let same = task_check("detect", nc, want, want, ALIKE);
    assert_eq!(same.len(), 1);
    assert!(same[0].pass, "{}", same[0].detail);
    let (n, m) = counts(&same[0].detail);
    assert!(n > 0 && n == m, "{}", same[0].detail);
    for c in 0..nc {
        let got = zero_class(want, c);
        let r = task_check("detect", nc, &got, want, ALIKE);
        assert!(
            !r[0].pass,
            "class {c} zeroed must fail the detection check: {}",
            r[0].detail
        );
        assert!(
            r[0].detail.contains(&format!("reference class {c}")),
            "{}",
            r[0].detail
        );
    }
}

/// Rewrites an `.npz` with `output0` (little-endian f32, C order) replaced by `y`.
fn with_output0(src: &Path, y: &RefTensor, dst: &Path) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        if name == "output0.npy" {
            assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "npy 1.0");
            let start = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            let header = String::from_utf8_lossy(&bytes[10..start]).to_string();
            assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
            assert_eq!(bytes.len() - start, y.data.len() * 4);
            bytes.truncate(start);
            bytes.extend(y.data.iter().flat_map(|v| v.to_le_bytes()));
        }
        zout.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zout.write_all(&bytes).unwrap();
    }
    zout.finish().unwrap();
}

fn export_json(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["--imgsz", "64", "--json"];
    args.extend_from_slice(extra);
    let out = common::golden::export(&fixture(CKPT), &dir.join("m.onnx"), &args);
    let code = out.status.code().expect("exited, not killed by a signal");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

fn detection_checks(v: &serde_json::Value) -> Vec<(bool, String)> {
    let tasks = v["parity"]["task"].as_array().expect("parity.task");
    assert!(!tasks.is_empty(), "no task-level check ran: {v}");
    tasks
        .iter()
        .map(|t| {
            assert_eq!(t["kind"], "detections", "{t}");
            (t["pass"] == true, t["detail"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn export_parity_compares_real_detections_against_golden_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    let golden = fixture(GOLDEN);
    for extra in [vec![], vec!["--golden", golden.to_str().unwrap()]] {
        let (code, v) = export_json(dir.path(), &extra);
        assert_eq!(code, 0, "{extra:?}: {v}");
        for (pass, detail) in detection_checks(&v) {
            assert!(pass, "{extra:?}: {detail}");
            let (n, m) = counts(&detail);
            assert!(n > 0 && n == m, "{extra:?}: {detail}");
        }
    }
}

#[test]
fn export_parity_fails_on_a_golden_with_a_class_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let npz = Npz::open(&fixture(GOLDEN)).unwrap();
    let zeroed: PathBuf = dir.path().join("zeroed.npz");
    with_output0(
        &fixture(GOLDEN),
        &zero_class(npz.get("output0").unwrap(), 1),
        &zeroed,
    );
    let (code, v) = export_json(dir.path(), &["--golden", zeroed.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    let checks = detection_checks(&v);
    assert!(
        checks
            .iter()
            .any(|(pass, d)| !pass && d.contains("ONNX class 1")),
        "the detection check must name the class the golden lost: {checks:?}"
    );
}
