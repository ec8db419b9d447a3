//! safetensors output follows the safetensors crate's layout: every tensor aligned to its dtype.

mod common;

use common::{fixture, run};
use sha2::Digest;

#[test]
fn every_dtype_folds_to_aligned_safetensors_python_verified() {
    // dtypes.pt holds an odd-length f16 (15 elements) in state-dict order before i64/i32 tensors;
    // fixtures/generate.py folded it, read it back with Python's safetensors, checked every
    // tensor against torch and the alignment of each, and recorded the hash.
    let verified: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("expected/fold-outputs.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dtypes.safetensors");
    let r = run(&[
        "fold",
        fixture("dtypes.pt").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ema",
        "tensors",
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let hash: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hash, verified["dtypes.pt"]["safetensors"],
        "differs from the Python-verified file"
    );

    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut saw_odd_f16 = false;
    for (name, view) in st.tensors() {
        let size = view.dtype().bitsize() / 8;
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(
            start % size,
            0,
            "{name} ({:?}) starts at byte {start}",
            view.dtype()
        );
        saw_odd_f16 |= view.dtype() == safetensors::Dtype::F16
            && view.shape().iter().product::<usize>() % 2 == 1;
    }
    assert!(saw_odd_f16, "the fixture still exercises an odd-length f16");
}
