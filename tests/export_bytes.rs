//! The bytes `fuse-ema export` writes, pinned by sha256 for every fixture task in each output
//! mode (f32, `--half`, `--dynamic`, `--external-data`, another opset and size). The encoder may
//! change how it writes (streaming, buffering) but never what: these hashes were taken from the
//! encoder that built whole messages in memory, before it was replaced by the streaming one.
//!
//! A change to the graph builder, to the fixtures or to the crate version (it is written into
//! the model) changes the bytes on purpose; paste the table a failing run prints, after checking
//! the new models in ONNX Runtime (`tests/export_onnx.rs`). Re-taken when the BatchNorm fold
//! started following the checkpoint's release (8.4.190 fixtures: 1-ulp conv bias differences;
//! `--half` files mostly unchanged, since f16 rounding absorbs them).

mod common;

use std::path::Path;

use common::{fixture, run};
use sha2::{Digest, Sha256};

/// (fixture stem, mode, file written, sha256).
const EXPECTED: &[(&str, &str, &str, &str)] = &[
    (
        "yolov8-epoch1",
        "plain",
        "model.onnx",
        "6a737900bcde060b7c1924f330667b0eda98a2ec4c9f7ce2ed78c2552c0c61d4",
    ),
    (
        "yolov8-epoch1",
        "half",
        "model.onnx",
        "59e1f8c59faa6be4417f52603140b2d8ffa4a81ae81c0b3775f2a79d0464fab3",
    ),
    (
        "yolov8-epoch1",
        "dynamic",
        "model.onnx",
        "bfc3eff2e280d5a81f1b09523d50963f30132d616315a56f9473a24f16a7a791",
    ),
    (
        "yolov8-epoch1",
        "external",
        "model.onnx",
        "e3e7d06c0c72a32f42e388788f040af8f7b88ffb5cceefd9bd795c81ede9c78b",
    ),
    (
        "yolov8-epoch1",
        "external",
        "model.onnx.data",
        "8326321c4d6dbac4f47999d9a9e56ccba480c98e481eecd4641e2a053e55e8dc",
    ),
    (
        "yolo11-detect",
        "plain",
        "model.onnx",
        "50a27de6194a546607e7539ec3fe53d91e822f56253ca03f525774eeac0cea7f",
    ),
    (
        "yolo11-detect",
        "half",
        "model.onnx",
        "cf674000f9c3c1d28b762ce86681c4e9958c315d98ec63dd5afb85f71e4ae601",
    ),
    (
        "yolo11-detect",
        "dynamic",
        "model.onnx",
        "8ff1c86d847a159ce3c6a57769153fbd0a6024f747f27ed25985fc0adeb144ab",
    ),
    (
        "yolo11-detect",
        "external",
        "model.onnx",
        "54abf4aed36f63f5e9fcd3c6380b55e149bb32d3db84467a7fcb335ff7f4a829",
    ),
    (
        "yolo11-detect",
        "external",
        "model.onnx.data",
        "72fb2050cd266136435d594a412ae4506176e091105c6874e15c5d2caf21dea2",
    ),
    (
        "yolov8-seg",
        "plain",
        "model.onnx",
        "8362c74a6c13c2d0e89109c62e6272803cf622ccf629d58747e281b37b3f82bf",
    ),
    (
        "yolov8-seg",
        "half",
        "model.onnx",
        "a2a69cea93eaa377d678a899673d854028d59a76e6fd718ccb722548a563ca4e",
    ),
    (
        "yolov8-seg",
        "dynamic",
        "model.onnx",
        "b6ffb08ef6eca53a0fed32e28fb70cfbe19d1bbdd846a3027792745b096d086b",
    ),
    (
        "yolov8-seg",
        "external",
        "model.onnx",
        "7ac8827753cc5c7a54ec8dcb27d9fc7e7385a862a27fe12beb7fa8c159f938c2",
    ),
    (
        "yolov8-seg",
        "external",
        "model.onnx.data",
        "0f470a684a3175e7bbbe53001d22d2f4de86c3cdcea771449bcfa8adbe6dea55",
    ),
    (
        "yolov8-pose",
        "plain",
        "model.onnx",
        "9b4ae0f1f83180d3a5e1fa2fec063feca74b2e1a865a554f8785feae3bfb8c91",
    ),
    (
        "yolov8-pose",
        "half",
        "model.onnx",
        "59ce7d8a4cac429e4b2047c38a0a44bc1fc1d211236705bf60327fca056bc982",
    ),
    (
        "yolov8-pose",
        "dynamic",
        "model.onnx",
        "a28b48adc9f8db6300017b495f4768fe1542aac3c5494e507cb4fe3790288c13",
    ),
    (
        "yolov8-pose",
        "external",
        "model.onnx",
        "3b1ab180b14fd5f5fe207e9b58de07767b3b0fca642cd179b5d7a448f4ef8422",
    ),
    (
        "yolov8-pose",
        "external",
        "model.onnx.data",
        "eece71ac2ae48aec9ef1a471cece011db324b6f09edef249606067a01a4e423d",
    ),
    (
        "yolov8-cls",
        "plain",
        "model.onnx",
        "df5e0e59efa50120192067e6cdd2ec3a2ed58525f544576eb8c1959fad1fc8d0",
    ),
    (
        "yolov8-cls",
        "half",
        "model.onnx",
        "cc36b084b06a937545f518c12746d875b8ed53d2ae9a213c216d35ebdc15a2d0",
    ),
    (
        "yolov8-cls",
        "dynamic",
        "model.onnx",
        "33ca9a4d503e1c36ce1f1585d320569929aeb6251cbcb374253e10d1e7b09e5c",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx",
        "e02f86ad0a41545d53c1f39f7339483a609d842afc17c3a221ca2e7f6fc0ec17",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx.data",
        "69a912a9c90d21e7eecc1abe9a867c2ff8f8728594793cdf53a01e1b063e633f",
    ),
    (
        "yolov8-obb",
        "opset13",
        "model.onnx",
        "47400147920fc7bef3ae29c40ba1d27d85be823b56fed19a50ca822a626e7784",
    ),
];

fn mode_args(mode: &str) -> &'static [&'static str] {
    match mode {
        "plain" => &[],
        "half" => &["--half"],
        "dynamic" => &["--dynamic"],
        "external" => &["--external-data"],
        "opset13" => &["--opset", "13", "--imgsz", "320,256", "--batch", "2"],
        other => panic!("unknown mode {other}"),
    }
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn exports_are_byte_identical_to_the_pinned_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, &str)> = EXPECTED.iter().map(|&(f, m, _, _)| (f, m)).collect();
    cases.dedup();
    let (mut wrong, mut table) = (0, Vec::new());
    for (stem, mode) in cases {
        let out_dir = dir.path().join(format!("{stem}-{mode}"));
        std::fs::create_dir(&out_dir).unwrap();
        let ckpt = fixture(&format!("{stem}.pt"));
        let out = out_dir.join("model.onnx");
        let mut args = vec![
            "export",
            ckpt.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--no-parity",
        ];
        args.extend_from_slice(mode_args(mode));
        let r = run(&args);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{stem} {mode}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        // Exactly the files the table names, nothing more (no stray temporaries).
        let mut written: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        written.sort();
        let mut expected: Vec<String> = EXPECTED
            .iter()
            .filter(|e| e.0 == stem && e.1 == mode)
            .map(|e| e.2.to_string())
            .collect();
        expected.sort();
        assert_eq!(written, expected, "{stem} {mode}: files written");
        for &(_, _, name, want) in EXPECTED.iter().filter(|e| e.0 == stem && e.1 == mode) {
            let got = sha256(&out_dir.join(name));
            wrong += usize::from(got != want);
            let mark = if got == want { "" } else { " // changed" };
            table.push(format!(
                "    (\"{stem}\", \"{mode}\", \"{name}\", \"{got}\"),{mark}"
            ));
        }
    }
    // The whole table is printed, ready to paste once a change of bytes is meant.
    assert_eq!(
        wrong,
        0,
        "bytes changed; the table now:\n{}",
        table.join("\n")
    );
}
