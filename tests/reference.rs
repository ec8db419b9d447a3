//! The reference interpreter (pickled modules run directly, BatchNorm unfolded) against the
//! outputs PyTorch computed for the same inputs.

mod common;

use common::fixture;
use fuse_ema::checkpoint::py::M;
use fuse_ema::reference::{Reference, ops::T};

fn load(st: &safetensors::SafeTensors, key: &str) -> T {
    let t = st.tensor(key).unwrap();
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    T::new(data, t.shape().to_vec())
}

const CASES: &[(&str, &str, &str)] = &[
    ("yolov8-best.pt", "model", "yolov8-best.io"),
    ("yolov8-epoch1.pt", "ema", "yolov8-epoch1.io"),
    ("yolov8-v80-style.pt", "model", "yolov8-v80-style.raw.io"),
    ("yolo11-detect.pt", "ema", "yolo11-detect.io"),
    ("yolov5u-detect.pt", "ema", "yolov5u-detect.io"),
    ("yolov8-cls.pt", "ema", "yolov8-cls.io"),
    ("yolov8-seg.pt", "ema", "yolov8-seg.io"),
    ("yolov8-pose.pt", "ema", "yolov8-pose.io"),
    ("yolov8-obb.pt", "ema", "yolov8-obb.io"),
];

#[test]
fn reference_matches_pytorch_goldens() {
    for &(file, key, gold) in CASES {
        let ckpt = fuse_ema::io::open(&fixture(file)).unwrap();
        let v = ckpt.graph.dict_get(&ckpt.root, key).unwrap();
        let mut r = Reference::new(M { g: &ckpt.graph, v }).unwrap();
        let bytes = std::fs::read(fixture(&format!("expected/{gold}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for size in ["1x64x64", "2x64x96"] {
            let outs = r
                .run(load(&st, &format!("images_{size}")))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            for (i, y) in outs.iter().enumerate() {
                let want = load(&st, &format!("output{i}_{size}"));
                assert_eq!(y.shape, want.shape, "{file} output{i} {size}");
                let d = y
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                let m = want.data.iter().map(|x| x.abs()).fold(0.0, f32::max);
                assert!(
                    d <= 1e-4 * m + 1e-4,
                    "{file} output{i} {size}: max |Δ| {d}, max |y| {m}"
                );
            }
        }
    }
}
