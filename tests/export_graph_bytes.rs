//! The exported graph is byte-for-byte what it was before the module registry (src/models/) took
//! over emission: the SHA-256 of each export's `GraphProto` (nodes, initializers, inputs, outputs)
//! was recorded from the binary built at main 39fbb97, before the refactor.
//!
//! Only the graph field is hashed, not the whole file: metadata and the IR version live outside
//! the graph and change on purpose elsewhere (src/onnx/mod.rs); the emission the registry owns is
//! all inside it. The external-data case hashes the `.data` file too.

mod common;

use common::{fixture, run};
use sha2::{Digest, Sha256};

/// (fixture, extra export arguments, SHA-256 of the exported GraphProto).
const CASES: &[(&str, &[&str], &str)] = &[
    (
        "yolov8-best.pt",
        &[],
        "d78e1ddc0df16801fa0ec8466322a65b64f07267f1444e9f2b780609054a103e",
    ),
    (
        "yolo11-detect.pt",
        &[],
        "466e2cf1bc3a53390f70c21e11dd61255e5c84823ff8dbcf161d992ca8a08e50",
    ),
    (
        "yolov5u-detect.pt",
        &[],
        "55dbaf09770658b4bdccc60bbee87c146f5d20e8cf5ba3ac3cad4577d8f728d5",
    ),
    (
        "yolov8-seg.pt",
        &[],
        "a4d14cef2c82711ed2648d3c0bbd6d0b62d16f90e84daa20acc61bcb5aba6dd0",
    ),
    (
        "yolov8-pose.pt",
        &[],
        "7d12302554b97152ca71f387ca16c4c0fe0e7819e687a9b956c937a0e2f4f391",
    ),
    (
        "yolov8-obb.pt",
        &[],
        "4d4fa798481ce07acc891f507440a60aed8541b1e121a54a005699a847ef470d",
    ),
    (
        "yolov8-cls.pt",
        &[],
        "9e7d2fab469ee8b7e5d46045bb71ceefc1f78da45c22d13e76a8db49ba29a25f",
    ),
    (
        "yolov8-v80-style.pt",
        &[],
        "97ee91368bcd27a1ac970122bb08f30d7da6e35179a0b8fa95a915776a88f04d",
    ),
    (
        "yolov8-v80-style.pt",
        &["--source", "raw"],
        "80290bc5f409b4c78fab0cd79d55dbecb863e93dec24e71a9930d2e7d75841af",
    ),
    (
        "yolov8-best.pt",
        &["--half"],
        "ff38148e9f396bcc0701389a2282552f1391222040503fff77df624a4b3e10bc",
    ),
    (
        "yolov8-seg.pt",
        &[
            "--dynamic",
            "--batch",
            "2",
            "--imgsz",
            "96,64",
            "--opset",
            "13",
        ],
        // Changed on purpose since: --dynamic makes height and width dynamic too (anchors
        // from the feature maps' shapes), where the pre-registry builder fixed them.
        "dc092e464b352f89781e12be3a50c16c66e3ad774d3e060d3d990296c9f9b8bd",
    ),
    (
        "yolo11-detect.pt",
        &["--external-data"],
        "28f6fee05d041b8094e1b6e38e4668b601be1783c6fd6b6ed281c5ddaecbb2b8",
    ),
];

/// SHA-256 of the external data file written by the `--external-data` case.
const EXTERNAL_DATA: &str = "72fb2050cd266136435d594a412ae4506176e091105c6874e15c5d2caf21dea2";

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let c = b[*i];
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        shift += 7;
        if c < 0x80 {
            return v;
        }
    }
}

/// The bytes of `ModelProto.graph` (field 7), found by walking the top-level fields.
fn graph_field(model: &[u8]) -> &[u8] {
    let (mut i, mut graph) = (0, None);
    while i < model.len() {
        let tag = varint(model, &mut i);
        match tag & 7 {
            0 => {
                varint(model, &mut i);
            }
            2 => {
                let n = varint(model, &mut i) as usize;
                if tag >> 3 == 7 {
                    graph = Some(&model[i..i + n]);
                }
                i += n;
            }
            w => panic!("unexpected wire type {w} at the top level of a ModelProto"),
        }
    }
    graph.expect("the model has a graph")
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn exported_graphs_are_byte_identical_to_the_pre_registry_builder() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for (i, (file, extra, want)) in CASES.iter().enumerate() {
        // The external data file's name is written into the graph, so it is the name used when
        // the hashes were recorded.
        let external = extra.contains(&"--external-data");
        let name = if external {
            "yolo11-detect.ext.onnx".to_string()
        } else {
            format!("{i}.onnx")
        };
        let out = dir.path().join(&name);
        let input = fixture(file);
        let mut args = vec![
            "export",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--no-parity",
        ];
        args.extend_from_slice(extra);
        let r = run(&args);
        assert_eq!(
            r.status.code(),
            Some(0),
            "{file} {extra:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let got = hex(graph_field(&std::fs::read(&out).unwrap()));
        if got != *want {
            wrong.push(format!("{file} {extra:?}: graph sha256 {got}, want {want}"));
        }
        if external {
            let data = std::fs::read(dir.path().join(format!("{name}.data"))).unwrap();
            assert_eq!(hex(&data), EXTERNAL_DATA, "{file}: external data");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
