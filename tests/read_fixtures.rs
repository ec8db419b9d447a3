//! Every tensor of every fixture equals, bit for bit, what PyTorch loaded from the same file.

mod common;

use common::{Expected, dtype_name, fixture};
use fuse_ema::checkpoint::Format;

/// Compares each weight set the generator recorded with fuse-ema's reading of `file`.
fn check(file: &str, expected: &str, format: Format) {
    let ckpt = fuse_ema::io::open(&fixture(file)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ckpt.info.format, format, "{file}: format");
    let exp = Expected::load(expected);
    let tensors = exp.tensors();
    let sets = ckpt.weight_sets().unwrap();
    // `fold*` sets are what PyTorch computed from the file, not sets the file holds.
    for (path, names) in exp
        .sets()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("fold"))
    {
        let set = sets.iter().find(|s| s.path == path).unwrap_or_else(|| {
            panic!(
                "{file}: no weight set '{path}' among {:?}",
                sets.iter().map(|s| &s.path).collect::<Vec<_>>()
            )
        });
        let ours: Vec<&str> = set.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            ours, names,
            "{file}: '{path}' names and order differ from state_dict()"
        );
        for (name, t) in &set.tensors {
            let want = tensors.tensor(&format!("{path}/{name}")).unwrap();
            assert_eq!(
                t.dtype().name(),
                dtype_name(want.dtype()),
                "{file}: {path}/{name} dtype"
            );
            assert_eq!(t.shape(), want.shape(), "{file}: {path}/{name} shape");
            assert!(
                *t.to_contiguous_bytes().unwrap() == *want.data(),
                "{file}: {path}/{name} values differ from PyTorch's"
            );
        }
    }
}

#[test]
fn ultralytics_stripped_best() {
    check("yolov8-best.pt", "yolov8-best", Format::TorchZip);
}

#[test]
fn ultralytics_unstripped_mid_training() {
    check("yolov8-epoch1.pt", "yolov8-epoch1", Format::TorchZip);
}

#[test]
fn ultralytics_80_style_model_and_ema() {
    check("yolov8-v80-style.pt", "yolov8-v80-style", Format::TorchZip);
}

#[test]
fn timm_checkpoint_saver() {
    check("timm-last.pth.tar", "timm-last", Format::TorchZip);
}

#[test]
fn legacy_torch_format() {
    check("legacy.pt", "legacy", Format::TorchLegacy);
}

#[test]
fn safetensors_file() {
    check(
        "ema-prefixed.safetensors",
        "ema-prefixed",
        Format::Safetensors,
    );
}

#[test]
fn sharded_safetensors_by_index_and_by_folder() {
    check(
        "sharded/model.safetensors.index.json",
        "sharded",
        Format::SafetensorsSharded,
    );
    check("sharded", "sharded", Format::SafetensorsSharded);
}

#[test]
fn every_dtype_views_and_shared_storages() {
    check("dtypes.pt", "dtypes", Format::TorchZip);
    check("dtypes-proto4.pt", "dtypes-proto4", Format::TorchZip);
}

#[test]
fn views_share_one_storage_and_read_in_place() {
    let ckpt = fuse_ema::io::open(&fixture("dtypes.pt")).unwrap();
    let set = ckpt.weight_set("tensors").unwrap().unwrap();
    let base = set.get("base").unwrap();
    let t = set.get("transposed").unwrap();
    let strided = set.get("strided").unwrap();
    let offset = set.get("offset").unwrap();
    assert_eq!(t.storage_key(), base.storage_key());
    assert_eq!(strided.storage_key(), base.storage_key());
    assert_eq!((t.strides(), t.is_contiguous()), (&[1, 6][..], false));
    assert_eq!(offset.offset(), 12);
    // Stored zip entries are views into the memory map: zero copies.
    assert!(base.storage().is_mapped());
    assert_eq!(
        base.contiguous_bytes().unwrap().unwrap().as_ptr(),
        offset.storage().bytes().unwrap().as_ptr(),
        "both views start at the same mapped storage"
    );
    assert!(set.get("param").unwrap().is_parameter());
}

#[test]
fn containers_and_scalars_decode_like_python() {
    let ckpt = fuse_ema::io::open(&fixture("dtypes.pt")).unwrap();
    let g = &ckpt.graph;
    let extras = g.dict_get(&ckpt.root, "extras").unwrap();
    let j = fuse_ema::checkpoint::metadata::to_json(g, extras);
    let exp = Expected::load("dtypes");
    assert_eq!(j["size"], serde_json::json!([2, 3]));
    assert_eq!(j["set"], serde_json::json!([1, 2]));
    assert_eq!(j["np_float"], serde_json::json!(0.125));
    assert_eq!(j["np_int"], serde_json::json!(-7));
    assert_eq!(j["big"], *exp.fact("big"));
    assert_eq!(j["neg"], *exp.fact("neg"));
    assert_eq!(j["nested"], serde_json::json!([[1, "a"], {"k": null}]));
    assert_eq!(j["unicode"], serde_json::json!("déjà vu ✓"));
    assert_eq!(j["bytes"], serde_json::json!("<6 bytes>"));
}

#[test]
fn pickle_protocols_0_to_5_decode_to_what_python_pickled() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pickles/expected.json")).unwrap())
            .unwrap();
    for p in 0..=5 {
        let file = fixture(&format!("pickles/protocol{p}.pkl"));
        let ckpt = fuse_ema::io::open(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ckpt.info.format, Format::Pickle);
        let got = fuse_ema::checkpoint::metadata::to_json(&ckpt.graph, &ckpt.root);
        assert_eq!(got, want, "protocol {p}");
    }
}

#[test]
fn rezipped_with_compression_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rezipped.pt");
    std::fs::write(&path, common::rezip_deflated(&fixture("yolov8-epoch1.pt"))).unwrap();
    let ckpt = fuse_ema::io::open(&path).unwrap();
    assert!(ckpt.info.compressed_storages > 0);
    let exp = Expected::load("yolov8-epoch1");
    let tensors = exp.tensors();
    let set = ckpt.weight_set("ema").unwrap().unwrap();
    assert_eq!(set.tensors.len(), exp.sets()[0].1.len());
    for (name, t) in &set.tensors {
        assert!(!t.storage().is_mapped());
        let want = tensors.tensor(&format!("ema/{name}")).unwrap();
        assert!(
            *t.to_contiguous_bytes().unwrap() == *want.data(),
            "ema/{name}"
        );
    }
}
