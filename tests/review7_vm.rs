//! Review 7's pickle-VM findings, by value: for every corpus file of
//! tests/hostile/manifest-review7-vm.json with a `folds_to`, `fuse-ema fold` writes exactly the
//! EMA tensors CPython's unpickler gives (tests/hostile/gen_review7_vm.py builds each file to hold
//! them and checks that against CPython's own unpickler run on stubs): a BUILD's state is copied
//! into the instance at BUILD time and merged across BUILDs, its values stay shared, and
//! `OrderedDict(<dict>)` copies the mapping. The refusals are checked by tests/hostile.rs.

mod common;

use std::path::{Path, PathBuf};

use common::run;

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn manifest() -> serde_json::Map<String, serde_json::Value> {
    let path = hostile_dir().join("manifest-review7-vm.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// The tensors of a safetensors file as flat f32 lists.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_clean_file_folds_to_what_python_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, entry) in manifest() {
        let Some(want) = entry.get("folds_to").and_then(|w| w.as_object()) else {
            assert_ne!(
                entry["expect"], "clean",
                "{name}: a clean file without folds_to"
            );
            continue;
        };
        let src = hostile_dir().join("files").join(&name);
        let out = dir.path().join(format!("{name}.safetensors"));
        let o = run(&["fold", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        if o.status.code() != Some(0) {
            failures.push(format!(
                "{name}: fold exit {:?}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            ));
            continue;
        }
        let mut want: Vec<(String, Vec<f32>)> = want
            .iter()
            .map(|(k, v)| {
                let vals = v.as_array().unwrap();
                (
                    k.clone(),
                    vals.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                )
            })
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let got = tensors(&out);
        if got != want {
            failures.push(format!("{name}: folded {got:?}, Python reads {want:?}"));
        }
        checked += 1;
    }
    assert!(checked >= 7, "{checked} files checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
