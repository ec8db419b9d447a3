//! RT-DETR (`rtdetr-l`, fixtures/families/rtdetr-l-detect.pt): the reference interpreter against
//! PyTorch's goldens, compared as rows (its output is the top 300 of queries × classes), and the
//! opsets the export refuses. The export itself, run in ONNX Runtime at both golden sizes, is in
//! tests/families.rs.

mod common;

use common::{fixture, run};
use fuse_ema::checkpoint::py::ModuleRef;
use fuse_ema::parity::Tolerance;
use fuse_ema::parity::compare_rows;
use fuse_ema::parity::npz::Npz;
use fuse_ema::reference::Reference;

/// The interpreter (BatchNorm unfolded, its own attention and bilinear sampling, anchors in f64)
/// against PyTorch's export-mode forward, at 1×160×160 (where the head's stored f16 anchors are
/// used) and 2×160×192 (where they are generated).
#[test]
fn reference_matches_pytorch_goldens_as_rows() {
    let ckpt = fuse_ema::io::open(&fixture("families/rtdetr-l-detect.pt")).unwrap();
    let v = ckpt.graph.dict_get(&ckpt.root, "model").unwrap();
    let mut r = Reference::new(ModuleRef { g: &ckpt.graph, v }).unwrap();
    let npz = Npz::open(&fixture("families/goldens/rtdetr-l-detect.default.npz")).unwrap();
    for sfx in ["", "_2x160x192"] {
        let images = npz.get(&format!("images{sfx}")).unwrap().clone();
        let want = npz.get(&format!("output0{sfx}")).unwrap();
        let got = r.run(images).unwrap().remove(0);
        assert_eq!(got.shape, want.shape, "output0{sfx}");
        let (stats, checks) =
            compare_rows("output0", &got.shape, &got.data, &want.data, Tolerance::F32);
        for c in &checks {
            assert!(c.pass, "output0{sfx} image {}: {}", c.image, c.detail);
        }
        assert!(stats.pass, "output0{sfx}: {stats:?}");
        // Something was compared: the rows hold real boxes and scores.
        assert!(
            stats.reference_max > 0.5 && stats.cosine > 0.9999,
            "{stats:?}"
        );
    }
}

/// A wrong row in the interpreter's output is caught: moving one box by 1 % of the image fails.
#[test]
fn a_moved_row_fails_against_the_golden() {
    let npz = Npz::open(&fixture("families/goldens/rtdetr-l-detect.default.npz")).unwrap();
    let want = npz.get("output0").unwrap();
    let mut got = want.clone();
    got.data[6 * 10] += 0.01; // row 10's centre x
    let (stats, checks) =
        compare_rows("output0", &got.shape, &got.data, &want.data, Tolerance::F32);
    assert!(!stats.pass && !checks[0].pass, "{}", checks[0].detail);
}

/// Opsets without `LayerNormalization` (17) are refused with the reason; nothing is written.
#[test]
fn opsets_below_17_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let ckpt = fixture("families/rtdetr-l-detect.pt");
    let r = run(&[
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--imgsz",
        "160",
        "--opset",
        "16",
        "--no-parity",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr).trim_end(),
        format!(
            "fuse-ema: error: {}: cannot export: model.11 (AIFI): RT-DETR needs opset 17 or later (LayerNormalization, GridSample); opset 16 was asked for",
            ckpt.display()
        )
    );
    assert!(!out.exists());
}
