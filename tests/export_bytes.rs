//! The bytes `fuse-ema export` writes, pinned by sha256 for every fixture task in each output
//! mode (f32, `--half`, `--dynamic`, `--external-data`, another opset and size). The encoder may
//! change how it writes (streaming, buffering) but never what: these hashes were taken from the
//! encoder that built whole messages in memory, before it was replaced by the streaming one.
//!
//! A change to the graph builder, to the fixtures or to the crate version (it is written into
//! the model) changes the bytes on purpose; paste the table a failing run prints, after checking
//! the new models in ONNX Runtime (`tests/export_onnx.rs`). Re-taken when the BatchNorm fold
//! started following the checkpoint's release (8.4.190 fixtures: 1-ulp conv bias differences;
//! `--half` files mostly unchanged, since f16 rounding absorbs them). Re-taken for the built
//! fixtures' regeneration with pooled conditioning (fixtures/README.md, "Built fixtures'
//! conditioning"; new weights, same graphs: tests/export_graph_bytes.rs).

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
        "9cc253e60753e35c8635e13444352d94b618b1ebfd4399d9a125e67d7dc25066",
    ),
    (
        "yolo11-detect",
        "half",
        "model.onnx",
        "919fba8f9be743b3287c573889d20e8b2d6fd009f7c8b833970990befd5b93a4",
    ),
    (
        "yolo11-detect",
        "dynamic",
        "model.onnx",
        "c21a4574bb62b355c40d8eb4a5ea632d9595f60e15cb02e94b0859f1b993e152",
    ),
    (
        "yolo11-detect",
        "external",
        "model.onnx",
        "309694f6b0ad074ae79967f6a6982c38fde8373f73fed9d2ca3445ced319d4ee",
    ),
    (
        "yolo11-detect",
        "external",
        "model.onnx.data",
        "038bd30e2ec4c499afc751b781df6d6e6fbf0cfec769845e5015ce7c575397bb",
    ),
    (
        "yolov8-seg",
        "plain",
        "model.onnx",
        "514b6a4efc4978f90fc24a49f96ddaa887d72d873d9620cf80510cfb1104b939",
    ),
    (
        "yolov8-seg",
        "half",
        "model.onnx",
        "4b41e4a78589c559f107511c415fd3e45091c9d12c94330f99a6d0c9ba803970",
    ),
    (
        "yolov8-seg",
        "dynamic",
        "model.onnx",
        "fe0e8c344c736f46b952c5e919d86f3c8ae91d98377726cad6be9dbd7f6227c7",
    ),
    (
        "yolov8-seg",
        "external",
        "model.onnx",
        "60f0e2744c9506f98f4f6427c5c7c8526c6abce11682f0a44fe58c5a901445ac",
    ),
    (
        "yolov8-seg",
        "external",
        "model.onnx.data",
        "579342de8e243517db977cb50d8bbed71322e876de893cc1f1bbc4c9428640a9",
    ),
    (
        "yolov8-pose",
        "plain",
        "model.onnx",
        "ad2c06c6cb131ac313515fd5406b4d0359d78a366491f23ad57340ed40db9103",
    ),
    (
        "yolov8-pose",
        "half",
        "model.onnx",
        "5236354d86f3be164db1272ca71d97a0ee11eb74a6de836c10a0b09ffebf99fd",
    ),
    (
        "yolov8-pose",
        "dynamic",
        "model.onnx",
        "edc3418604d2e1a12f69e727728a46dc967c3ef39b0e5900d238aa611cedcf8c",
    ),
    (
        "yolov8-pose",
        "external",
        "model.onnx",
        "ba97cc8aa650cec664299ba22d1ebd7f1a51983057b56417769493b3e108253d",
    ),
    (
        "yolov8-pose",
        "external",
        "model.onnx.data",
        "fff90575e262cd6bda3a46edecdbd17bd13c81807e935cbffb56d5afb0d11b4a",
    ),
    (
        "yolov8-cls",
        "plain",
        "model.onnx",
        "031511cb050092dfd56ee8a636639961e8e8fcdc46c4fd117bdcf4fa38627197",
    ),
    (
        "yolov8-cls",
        "half",
        "model.onnx",
        "dfc815e3695fade52dec416f286c7c5b11f427ac3df6ff1861819017ccf0484e",
    ),
    (
        "yolov8-cls",
        "dynamic",
        "model.onnx",
        "e0a9ba032453bb1a2888797f4a6ce7f6dfe82eb73fa8dd297d91496b2bfe174f",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx",
        "aa2921c9ebe4d2f8294899c0aea030a40665f5c0f39cd5d83f1a7703765df081",
    ),
    (
        "yolov8-cls",
        "external",
        "model.onnx.data",
        "436f45472bf6f6b783bc91abb29760f28d56c529f771d05939ec0bbcce118299",
    ),
    (
        "yolov8-obb",
        "opset13",
        "model.onnx",
        "0fd4f5ec1bf1985d85a812a4adb8f51783f234c3ceb2018cf4f6654b9723d23a",
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
