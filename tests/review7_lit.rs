//! Review 7 (pickle literals, dict keys, tensor rebuild arguments): the files
//! tests/hostile/gen_review7_lit.py calls clean are read as `torch.load` reads them. `fold` must
//! write the EMA weight `w` torch gives (tests/hostile/review7-lit-values.json: known by
//! construction from Python's dict rule and CPython's literal rules, and checked there against
//! torch.load): a `numpy.str_` key equal to "ema" replaces it, a canonical INT offset moves the
//! view, `\uXXXX` counts only after an odd run of backslashes, an empty metadata or state is
//! nothing. The refused twins are in the hostile corpus (manifest-review7-lit.json).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::run;

fn hostile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// The `w` tensor of a folded safetensors file, as f32 values.
fn folded_w(bytes: &[u8]) -> Vec<f32> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor("w").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (t.data().chunks_exact(4))
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn clean_literal_files_fold_to_the_weights_torch_loads() {
    let text = std::fs::read_to_string(hostile_dir().join("review7-lit-values.json")).unwrap();
    let values: BTreeMap<String, Vec<f32>> = serde_json::from_str(&text).unwrap();
    assert!(values.len() >= 10, "{} files", values.len());
    let mut failures = Vec::new();
    for (name, want) in &values {
        let src = hostile_dir().join("files").join(name);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ema.safetensors");
        let r = run(&["fold", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        if r.status.code() != Some(0) {
            let stderr = String::from_utf8_lossy(&r.stderr);
            failures.push(format!("{name}: exit {:?}: {stderr}", r.status.code()));
            continue;
        }
        let got = folded_w(&std::fs::read(&out).unwrap());
        if &got != want {
            failures.push(format!("{name}: w = {got:?}, torch.load gives {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
