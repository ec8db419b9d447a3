//! Every Ultralytics family in `fixtures/families/` (checkpoints trained by Ultralytics 8.4.190
//! from its own model yamls, BatchNorm calibrated; goldens from PyTorch's export-mode forward,
//! made by `fixtures/families/generate.py`).
//!
//! Each listed export runs `fuse-ema export` (with its own parity check in ONNX Runtime) at both
//! golden sizes, runs the written file in ONNX Runtime on the golden inputs, and compares every
//! output with PyTorch's: per channel (dimension 1) for raw outputs, as matched detection sets for
//! the end-to-end and NMS outputs, whose rows may reorder on ties. Every family in the manifest
//! must be listed here, as exported or as refused with its exact error, so none is skipped
//! silently; a refused family that starts exporting fails until it is moved.
//!
//! ONNX Runtime must be available (`./scripts/test` provides it); these tests never skip.

mod common;

use std::path::{Path, PathBuf};

use common::golden::{archive_names, ort_run, sizes};
use common::{PER_CHANNEL, assert_channels, assert_labels, fixture};
use fuse_ema::parity::npy::Dtype;
use fuse_ema::parity::npz::Npz;
use ndarray::ArrayD;

/// The environment variable naming another family fixture directory (a held-out set made by
/// `fixtures/families/heldout.sh`: same layout as `fixtures/families/`, other seeds).
const FAMILIES_DIR: &str = "FUSE_EMA_FAMILIES_DIR";

/// A path in the family fixtures: `fixtures/families/`, or `$FUSE_EMA_FAMILIES_DIR` when set.
fn families(rel: &str) -> PathBuf {
    match std::env::var_os(FAMILIES_DIR) {
        Some(dir) => PathBuf::from(dir).join(rel),
        None => fixture("families").join(rel),
    }
}

/// The command-line options of a golden variant.
fn variant_args(variant: &str) -> &'static [&'static str] {
    match variant {
        "default" => &[],
        "end2end" => &["--end2end"],
        "nms" => &["--nms"],
        other => panic!("unknown golden variant {other}"),
    }
}

fn export(stem: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    common::golden::export(&families(&format!("{stem}.pt")), out, extra)
}

/// Compares ONNX Runtime's outputs with PyTorch's for one size of a golden.
fn compare_outputs(what: &str, variant: &str, got: &[(String, ArrayD<f32>)], npz: &Npz, sfx: &str) {
    let mut want_names = Vec::new();
    for i in 0.. {
        let key = format!("output{i}{sfx}");
        let Some(want) = npz.get(&key) else { break };
        want_names.push(key.clone());
        let name = format!("output{i}");
        let (_, g) = got
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{what}: ONNX has no {name} (has {:?})", names(got)));
        assert_eq!(g.shape(), want.shape.as_slice(), "{what}: {name} shape");
        let g: Vec<f32> = g.iter().copied().collect();
        let class_map = npz.dtype(&key) != Some(Dtype::F32);
        if class_map {
            let logits = npz.get(&format!("logits{sfx}")).map(|l| &l.data[..]);
            assert_labels(
                &format!("{what} {name}"),
                &want.shape,
                &g,
                &want.data,
                logits,
                PER_CHANNEL,
            );
        } else if variant == "default" && !(i == 0 && what.starts_with("rtdetr")) {
            // RT-DETR's default output is already top-k rows ((B, 300, 6): cx cy w h score
            // class), which reorder on score ties: compared as a set, like the end-to-end rows.
            assert_channels(
                &format!("{what} {name}"),
                &want.shape,
                &g,
                &want.data,
                PER_CHANNEL,
            );
        } else if i == 0 && variant == "nms" {
            // NMS rows: the library's set comparison (unit-tested in src/parity/rows.rs to fail
            // on a wrong box, score, class, keypoint, or a missing or extra row), which knows
            // the ambiguities NMS has (ties at a saturated score, the confidence threshold).
            let tol = fuse_ema::parity::RowsTolerance {
                atol: 1e-4,
                rtol: 1e-4,
                conf: 0.25,
                kpt_dim: what.contains("pose").then_some(3),
                noise: [0.0; 5],
                suppression: Some(fuse_ema::parity::Suppression {
                    iou: 0.7,
                    centred: false,
                    class_shift: None,
                }),
            };
            let got_t = fuse_ema::reference::ops::RefTensor::new(g.clone(), want.shape.clone());
            let checks = fuse_ema::parity::rows_check(&got_t, want, tol);
            assert!(!checks.is_empty(), "{what}: no rows compared");
            for c in checks {
                assert!(c.pass, "{what} {name}: image {}: {}", c.image, c.detail);
            }
        } else if i == 0 {
            // End-to-end and RT-DETR rows: the same set comparison, top-k rules (no threshold;
            // a row may go unmatched only at the cut or at a saturated tie).
            let tol = fuse_ema::parity::RowsTolerance {
                kpt_dim: what.contains("pose").then_some(3),
                ..fuse_ema::parity::RowsTolerance::top_k(fuse_ema::parity::Tolerance {
                    atol: 1e-4,
                    rtol: 1e-4,
                    f16_noise: None,
                })
            };
            let (stats, checks) =
                fuse_ema::parity::detection_sets(&name, &want.shape, &g, &want.data, tol);
            for c in &checks {
                assert!(c.pass, "{what} {name}: image {}: {}", c.image, c.detail);
            }
            assert!(stats.pass && stats.reference_max > 0.0, "{what}: {stats:?}");
        } else {
            // Mask prototypes beside detection rows are a plain map.
            assert_channels(
                &format!("{what} {name}"),
                &want.shape,
                &g,
                &want.data,
                PER_CHANNEL,
            );
        }
    }
    assert!(!want_names.is_empty(), "{what}: golden has no output0{sfx}");
    assert_eq!(
        got.len(),
        want_names.len(),
        "{what}: ONNX outputs {:?}, PyTorch's {want_names:?}",
        names(got)
    );
}

fn names(v: &[(String, ArrayD<f32>)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

/// Exports `stem` in `variant` at every golden size (a static file per size) and compares.
fn check(stem: &str, variant: &str) {
    let golden = golden(stem, variant);
    let npz = Npz::open(&golden).unwrap();
    let names = archive_names(&golden);
    let dir = tempfile::tempdir().unwrap();
    for (sfx, shape) in sizes(&npz, &names) {
        let [b, _, h, w] = shape[..] else {
            panic!("{stem}: images{sfx} is {shape:?}")
        };
        let out = dir.path().join(format!("{stem}.{variant}{sfx}.onnx"));
        let imgsz = format!("{h},{w}");
        let batch = b.to_string();
        let mut args = vec!["--imgsz", imgsz.as_str(), "--batch", batch.as_str()];
        args.extend_from_slice(variant_args(variant));
        let r = export(stem, &out, &args);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{stem} {variant} {b}x{h}x{w}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let images = npz.get(&format!("images{sfx}")).unwrap();
        let got = ort_run(&out, images);
        compare_outputs(
            &format!("{stem} {variant} {b}x{h}x{w}"),
            variant,
            &got,
            &npz,
            &sfx,
        );
    }
}

/// Exports `stem` once with `--dynamic` (batch, height and width) and compares that one file at
/// every golden size.
fn check_dynamic(stem: &str, variant: &str) {
    let golden = golden(stem, variant);
    let npz = Npz::open(&golden).unwrap();
    let names = archive_names(&golden);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{stem}.{variant}.dynamic.onnx"));
    let mut args = vec!["--dynamic"];
    args.extend_from_slice(variant_args(variant));
    let r = export(stem, &out, &args);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{stem} {variant} --dynamic: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let all = sizes(&npz, &names);
    assert!(all.len() >= 2, "{stem}: a dynamic check needs two sizes");
    for (sfx, shape) in all {
        let got = ort_run(&out, npz.get(&format!("images{sfx}")).unwrap());
        compare_outputs(
            &format!("{stem} {variant} dynamic {shape:?}"),
            variant,
            &got,
            &npz,
            &sfx,
        );
    }
}

/// The golden of a fixture; an unstripped `<name>.last.pt` shares `<name>`'s (same EMA).
fn golden(stem: &str, variant: &str) -> PathBuf {
    let base = stem.strip_suffix(".last").unwrap_or(stem);
    families(&format!("goldens/{base}.{variant}.npz"))
}

/// Declares one test per (fixture, variant) and the list the coverage test reads.
macro_rules! exports {
    ($($test:ident: $stem:literal $variant:literal,)*) => {
        $(#[test] fn $test() { check($stem, $variant) })*
        const EXPORTS: &[(&str, &str)] = &[$(($stem, $variant)),*];
    };
}

/// Declares one `--dynamic` test per (fixture, variant).
macro_rules! dynamic {
    ($($test:ident: $stem:literal $variant:literal,)*) => {
        $(#[test] fn $test() { check_dynamic($stem, $variant) })*
        #[allow(dead_code)]
        const DYNAMIC: &[(&str, &str)] = &[$(($stem, $variant)),*];
    };
}

/// Declares one test per refused fixture: exit 2 and exactly this error after `cannot export: `.
macro_rules! refused {
    ($($test:ident: $stem:literal $why:literal,)*) => {
        $(#[test] fn $test() { check_refused($stem, $why) })*
        const REFUSED: &[&str] = &[$($stem),*];
    };
}

fn check_refused(stem: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let r = export(stem, &out, &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stem}: {err}");
    let ckpt = families(&format!("{stem}.pt"));
    assert_eq!(
        err.trim_end(),
        format!("fuse-ema: error: {}: cannot export: {why}", ckpt.display()),
        "{stem}"
    );
    assert!(!out.exists(), "{stem}: nothing written");
}

exports! {
    yolo11n_classify: "yolo11n-classify" "default",
    yolo26n_classify: "yolo26n-classify" "default",
    yolo26n_detect: "yolo26n-detect" "default",
    yolo26n_detect_last: "yolo26n-detect.last" "default",
    yolo26n_depth: "yolo26n-depth" "default",
    yolo26n_semantic: "yolo26n-semantic" "default",
    yolo26n_semantic_last: "yolo26n-semantic.last" "default",
    yolo26n_detect_end2end: "yolo26n-detect" "end2end",
    yolo26n_segment: "yolo26n-segment" "default",
    yolo26n_segment_end2end: "yolo26n-segment" "end2end",
    yolo26n_pose: "yolo26n-pose" "default",
    yolo26n_pose_end2end: "yolo26n-pose" "end2end",
    yolo26n_obb: "yolo26n-obb" "default",
    yolo26n_obb_end2end: "yolo26n-obb" "end2end",
    yolov3_tinyu_detect: "yolov3-tinyu-detect" "default",
    yolov3u_spp_detect: "yolov3u-spp-detect" "default",
    yolov6n_detect: "yolov6n-detect" "default",
    yolov8n_ghost_detect: "yolov8n-ghost-detect" "default",
    yolov8n_p6_detect: "yolov8n-p6-detect" "default",
    yolov8n_resnet50_classify: "yolov8n-resnet50-classify" "default",
    yolov9e_detect: "yolov9e-detect" "default",
    yolov9t_detect: "yolov9t-detect" "default",
    yolo12n_classify: "yolo12n-classify" "default",
    yolo12n_detect: "yolo12n-detect" "default",
    yolov10n_detect: "yolov10n-detect" "default",
    yolov10n_detect_end2end: "yolov10n-detect" "end2end",
    yolo26n_detect_nms: "yolo26n-detect" "nms",
    yolo26n_segment_nms: "yolo26n-segment" "nms",
    yolo26n_pose_nms: "yolo26n-pose" "nms",
    yolo26n_obb_nms: "yolo26n-obb" "nms",
    yolov3_tinyu_detect_nms: "yolov3-tinyu-detect" "nms",
    yolov3u_spp_detect_nms: "yolov3u-spp-detect" "nms",
    yolov6n_detect_nms: "yolov6n-detect" "nms",
    yolov8n_ghost_detect_nms: "yolov8n-ghost-detect" "nms",
    yolov8n_p6_detect_nms: "yolov8n-p6-detect" "nms",
    yolov9e_detect_nms: "yolov9e-detect" "nms",
    yolov9t_detect_nms: "yolov9t-detect" "nms",
    yolo12n_detect_nms: "yolo12n-detect" "nms",
    yolov10n_detect_nms: "yolov10n-detect" "nms",
    rtdetr_l_detect: "rtdetr-l-detect" "default",
}

dynamic! {
    yolo11n_classify_dynamic: "yolo11n-classify" "default",
    yolo26n_detect_dynamic: "yolo26n-detect" "default",
    yolo26n_detect_nms_dynamic: "yolo26n-detect" "nms",
}

/// Golden variants of exported families that are not exported yet, each with the exit code and
/// the start of the error they give today; a pending variant that starts working fails here.
const PENDING: &[(&str, &str, &str)] = &[];

#[test]
fn pending_variants_still_fail() {
    for (stem, variant, why) in PENDING {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let r = export(stem, &out, variant_args(variant));
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{stem} {variant}: {err}");
        assert!(err.starts_with(why), "{stem} {variant}: {err}");
        assert!(!out.exists(), "{stem} {variant}: nothing written");
    }
}

refused! {
    yolov8n_worldv2_detect: "yolov8n-worldv2-detect" "'model' is a WorldModel (YOLO-World): its layers C2fAttn (MaxSigmoidAttnBlock: image features attend to the text), WorldDetect, BNContrastiveHead (class scores as region·text similarities) take the class text embeddings as a second input beside the image features; the checkpoint holds them (`txt_feats` [1, 2, 512]: one CLIP embedding per class, saved by set_classes), so no text encoder is needed, but exporting them as constants of a fixed-vocabulary detector (as `yolo export` does) needs these layers in fuse-ema's builder and interpreter, which it does not have yet: export it with `yolo export`",
}

/// Every checkpoint in the manifest (and every `.last.pt` beside one) is listed, and every
/// golden variant of an exported family is exported.
#[test]
fn every_family_is_listed() {
    let dir = families("");
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".pt").map(str::to_string)
        })
        .collect();
    stems.sort();
    let exported: Vec<&str> = EXPORTS.iter().map(|(s, _)| *s).collect();
    for s in &stems {
        let listed = exported.contains(&s.as_str()) || REFUSED.contains(&s.as_str());
        assert!(
            listed,
            "families/{s}.pt is neither exported nor refused here"
        );
        assert!(
            !(exported.contains(&s.as_str()) && REFUSED.contains(&s.as_str())),
            "{s} is listed twice"
        );
    }
    // A held-out directory may hold a subset (heldout.sh runs the tests of what it made); the
    // committed set must hold every listed fixture.
    if std::env::var_os(FAMILIES_DIR).is_none() {
        for e in EXPORTS.iter().map(|(s, _)| s).chain(REFUSED) {
            assert!(stems.iter().any(|s| s == e), "{e}: no such fixture");
        }
    }
    // Every golden variant of an exported family is exported (a `.last.pt` shares its goldens).
    let gold = dir.join("goldens");
    for entry in std::fs::read_dir(&gold).unwrap() {
        let n = entry.unwrap().file_name().into_string().unwrap();
        let Some((stem, variant)) = n.strip_suffix(".npz").and_then(|s| s.rsplit_once('.')) else {
            continue;
        };
        if exported.contains(&stem) {
            assert!(
                EXPORTS.contains(&(stem, variant))
                    || PENDING.iter().any(|(s, v, _)| (*s, *v) == (stem, variant)),
                "{stem}: golden variant {variant} is not exported here"
            );
        }
    }
}

/// `--end2end` on a head without one-to-one branches is a usage error naming the head; nothing
/// is written.
#[test]
fn end2end_needs_one_to_one_branches() {
    for (stem, head) in [
        ("yolo26n-classify", "Classify"),
        ("yolo11n-classify", "Classify"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let r = export(stem, &out, &["--end2end"]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{stem}: {err}");
        let ckpt = families(&format!("{stem}.pt"));
        assert_eq!(
            err.trim_end(),
            format!(
                "fuse-ema: error: {}: cannot export: --end2end needs a head with one-to-one branches (YOLOv10, YOLO26); this model's head {head} has none",
                ckpt.display()
            )
        );
        assert!(!out.exists(), "{stem}: nothing written");
    }
}

/// `verify` recognises `yolo export nms=False`'s own end-to-end ONNX by its metadata and compares
/// its rows with the reference interpreter's one-to-one head as sets.
#[test]
fn verify_reads_yolo_exports_end2end_onnx() {
    let model = families("yolo-export/yolo26n-detect.end2end.onnx");
    let ckpt = families("yolo26n-detect.pt");
    let out = common::golden::verify_passes(&model, &ckpt);
    assert!(out.contains("detection rows: 1/1 images agree"), "{out}");
}

/// `--max-det` sets the rows of the end-to-end output, clamped to the anchors (84 at 64×64) as
/// Ultralytics' exporter clamps it; the metadata says `end2end: True`.
#[test]
fn max_det_sets_the_end2end_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (max_det, rows) in [("10", 10), ("500", 84)] {
        let out = dir.path().join(format!("e2e{max_det}.onnx"));
        let r = export("yolo26n-pose", &out, &["--end2end", "--max-det", max_det]);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let bytes = std::fs::read(&out).unwrap();
        let m = fuse_ema::onnx::read::parse(&bytes, None).unwrap();
        let dims: Vec<String> = m.outputs[0].dims.iter().map(|d| format!("{d:?}")).collect();
        assert_eq!(dims, ["Fixed(1)", &format!("Fixed({rows})"), "Fixed(18)"]);
        let meta = |k: &str| {
            m.metadata
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(meta("end2end").as_deref(), Some("True"));
        assert_eq!(meta("head").as_deref(), Some("Pose26"));
        assert_eq!(meta("kpt_shape").as_deref(), Some("[4, 3]"));
    }
}

/// RT-DETR `--half` passes its own parity check (ONNX Runtime against the reference) at both
/// golden sizes: its rows are compared as sets with each column group's limit widened by the
/// emulated f16 noise of the rows, as every raw channel's is (docs/parity.md). Without that
/// allowance no f16 RT-DETR could pass: f16 changes which queries the decoder selects, and so
/// every query's score (PyTorch's own f16 forward of this fixture moves scores by up to 0.15).
#[test]
fn rtdetr_half_passes_parity_at_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (imgsz, batch, images) in [("160,160", "1", 1), ("160,192", "2", 2)] {
        let out = dir.path().join(format!("rtdetr-half-{batch}.onnx"));
        let args = ["--half", "--imgsz", imgsz, "--batch", batch];
        let r = export("rtdetr-l-detect", &out, &args);
        let text = String::from_utf8_lossy(&r.stdout);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{imgsz}: {text}{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            text.contains(&format!("detection rows: {images}/{images} images agree")),
            "{text}"
        );
        assert!(
            text.contains("onnxruntime"),
            "parity ran in ONNX Runtime: {text}"
        );
    }
}

/// YOLO-World and YOLOE variants the trained fixture does not cover, from structure-only
/// checkpoints (`fixtures/families/open_vocab.py`: the real class names and attributes, no
/// weights): each refusal names the text-taking layers found and what is missing — the layers
/// when the embeddings are held, the text encoder when they are not.
#[test]
fn open_vocabulary_refusals_say_what_is_missing() {
    let world = "its layers C2fAttn (MaxSigmoidAttnBlock: image features attend to the text)";
    let cases: &[(&str, &[&str])] = &[
        (
            "yolov8-world-v1",
            &[
                "'model' is a WorldModel (YOLO-World): ",
                world,
                "ImagePoolingAttn (updates the text embeddings from pooled image features), WorldDetect, ContrastiveHead",
                "the checkpoint holds them (`txt_feats` [1, 2, 512]",
                "so no text encoder is needed",
                "needs these layers in fuse-ema's builder and interpreter",
            ],
        ),
        (
            "yolov8-worldv2-no-txt-feats",
            &[
                world,
                "WorldDetect, BNContrastiveHead",
                "the checkpoint has none (`txt_feats`): they come from its CLIP ViT-B/32 text encoder, which fuse-ema does not run",
            ],
        ),
        (
            "yoloe-26-detect-pe",
            &[
                "'model' is a YOLOEModel (YOLOE): its head YOLOEDetect, BNContrastiveHead",
                "which the checkpoint holds (`pe` [1, 2, 512]",
                "so no text encoder is needed",
                "YOLOEDetect.fuse), which fuse-ema does not do yet",
            ],
        ),
        (
            "yoloe-26-seg-no-pe",
            &[
                "'model' is a YOLOESegModel (YOLOE): its head YOLOESegment26",
                "the checkpoint has none (`pe`): they come from its text encoder (mobileclip2:b), which fuse-ema does not run",
            ],
        ),
        (
            "yoloe-26-detect-prompt-free",
            &[
                "'model' is a YOLOEModel (YOLOE, prompt-free)",
                "through LRPCHead",
            ],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (stem, parts) in cases {
        let ckpt = fixture(&format!("families/open-vocab/{stem}.pt"));
        let out = dir.path().join(format!("{stem}.onnx"));
        let r = common::golden::export(&ckpt, &out, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{stem}: {err}");
        let head = format!("fuse-ema: error: {}: cannot export: ", ckpt.display());
        assert!(err.starts_with(&head), "{stem}: {err}");
        assert_eq!(err.lines().count(), 1, "{stem}: one line: {err}");
        for p in *parts {
            assert!(err.contains(p), "{stem}: missing {p:?} in {err}");
        }
        assert!(!out.exists(), "{stem}: nothing written");
    }
}
