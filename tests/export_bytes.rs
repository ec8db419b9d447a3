//! The bytes `fuse-ema export` writes, pinned by sha256 for every fixture task in each output
//! mode (f32, `--half`, `--dynamic`, `--external-data`, another opset and size). The encoder may
//! change how it writes (streaming, buffering) but never what: these hashes were taken from the
//! encoder that built whole messages in memory, before it was replaced by the streaming one.
//!
//! A change to the graph builder, to the fixtures or to the crate version (it is written into
//! the model) changes the bytes on purpose; paste the table a failing run prints, after checking
//! the new models in ONNX Runtime (`tests/export_onnx.rs`).

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
        "43289ca8e446523dbfa0553ee3e8e56fe792ffb07da4bea969e1e6c159ed610d",
    ),
    (
        "yolov8-epoch1",
        "half",
        "model.onnx",
        "3b2383a694cb46506de39714b08188e5af8aaaea6524319e822f92d6fb7f53e7",
    ),
    (
        "yolov8-epoch1",
        "dynamic",
        "model.onnx",
        "f5b78199fd49e7e29e39f971f816a85e95d1a1357954ea3734be8584c4ace530",
    ),
    (
        "yolov8-epoch1",
        "external",
        "model.onnx",
        "14a4b45aa14d2e85103e847266630d688b74ed77d1968f5f071a45ccb66bc147",
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
        "d878a5fc04512e1e1ba074efd42d55efa5dcbea613deccdd31c10a1914a28799",
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
        "52563f9eab2bebf5bff5bee61f15613a7e28952e76c424edf8d518d9c84cbbcb",
    ),
    (
        "yolo11-detect",
        "external",
        "model.onnx",
        "68922503437dce82b090f213768d37bf87cfb1934fe39ab6e8ccaa7d72a68e5f",
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
        "e842eb94c73edf475dc064bc22eb4585a9c303aeda506120a2a818988855ebee",
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
        "26030d0160a7f5540ab48282a1a02dd155c60fac52f30858764d5901a9be6bb8",
    ),
    (
        "yolov8-seg",
        "external",
        "model.onnx",
        "e31343bdae3b1cab36e38c234a6abfdc6a24326f85ecdb5cc283c85ace2efc2b",
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
        "112335213bcf5097411c1426af8e238d525f24b26ca15e18072c40592b17bdc8",
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
        "cc57993b7e3c6b5af8f3a6b557464eda0764303e3461713143dcaf83582441fd",
    ),
    (
        "yolov8-pose",
        "external",
        "model.onnx",
        "999943d507fd67830a707b3759952750ee2feb88a9faa7e0cbd89b2e11cc4b81",
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
        "233fb83174e7f2136a0cc1c5ce8a9442567f5229fd577fe562e199256b02feb7",
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
        "3f5e6ce140e56a8f9d5489657b315e58df8007f02790ece32d685e02fe813239",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx",
        "b8d980a93bd8ecf6a31e1904c4bcaddf36a64b1bbb395e4f16507969ea79ff58",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx.data",
        "c145069ebf79337bada6610c5efe69e7ab6923e6038ca30219040aae265742b0",
    ),
    (
        "yolov8-obb",
        "opset13",
        "model.onnx",
        "60c0d4e111a6355323fd11254439720be9922145e8e0a4635c7791984c73e2c4",
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
