//! EMA layouts written by general-purpose EMA libraries (fixtures/wild, made by
//! fixtures/wild/generate.py with diffusers 0.42.1 and ema-pytorch 0.8.3 after real training
//! steps): `fold` writes, bit for bit, the state dict PyTorch loads as the EMA model.

mod common;

use common::{fixture, run, run_json};

/// (fixture, expected state dict, layout id, EMA origin)
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "wild/diffusers-ema.pt",
        "diffusers-ema",
        "diffusers-ema-model",
        "ema.shadow_params",
    ),
    (
        "wild/diffusers-ema-bn.pt",
        "diffusers-ema-bn",
        "diffusers-ema-model",
        "ema.shadow_params",
    ),
    // The UNet pickled whole: the module tree names the parameters.
    (
        "wild/diffusers-ema-module.pt",
        "diffusers-ema",
        "diffusers-ema-model",
        "ema.shadow_params",
    ),
    (
        "wild/ema-pytorch.pt",
        "ema-pytorch",
        "ema-pytorch",
        "ema.ema_model.",
    ),
];

#[test]
fn each_layout_folds_to_what_pytorch_loads_as_the_ema() {
    for &(file, expected, layout, origin) in CASES {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ema.safetensors");
        let (code, v) = run_json(&[
            "fold",
            fixture(file).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{file}: {v}");
        assert_eq!(v["layout"]["layout"], layout, "{file}: {v}");
        assert_eq!(v["layout"]["ema"], origin, "{file}: {v}");
        let got = std::fs::read(&out).unwrap();
        let got = safetensors::SafeTensors::deserialize(&got).unwrap();
        let want =
            std::fs::read(fixture(&format!("wild/expected/{expected}.safetensors"))).unwrap();
        let want = safetensors::SafeTensors::deserialize(&want).unwrap();
        let mut names: Vec<String> = got.names().into_iter().map(str::to_string).collect();
        let mut want_names: Vec<String> = want.names().into_iter().map(str::to_string).collect();
        names.sort();
        want_names.sort();
        assert_eq!(names, want_names, "{file}: names");
        for n in &names {
            let (g, w) = (got.tensor(n).unwrap(), want.tensor(n).unwrap());
            assert_eq!(g.dtype(), w.dtype(), "{file}: {n}");
            assert_eq!(g.shape(), w.shape(), "{file}: {n}");
            assert!(
                g.data() == w.data(),
                "{file}: {n} differs from PyTorch's EMA"
            );
        }
    }
}

#[test]
fn the_facts_show_the_ema_differs_from_the_raw_weights() {
    // Otherwise a fold that took the raw weights would pass the comparison above.
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("wild/expected/facts.json")).unwrap())
            .unwrap();
    assert!(
        facts["diffusers-ema"]["ema_differs_from_raw"]
            .as_u64()
            .unwrap()
            > 100
    );
    assert!(
        facts["ema-pytorch"]["ema_differs_from_raw"]
            .as_u64()
            .unwrap()
            >= 7
    );
    assert_eq!(facts["diffusers-ema-bn"]["params"], 6);
    assert_eq!(facts["diffusers-ema-bn"]["state_dict"], 9);
}

#[test]
fn diff_compares_the_ema_with_the_model_it_shadows() {
    let (code, v) = run_json(&[
        "diff",
        fixture("wild/diffusers-ema-bn.pt").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    // Six parameters compared; the BatchNorm buffers come from the model on both sides.
    assert_eq!(v["summary"]["tensors"], 6, "{v}");
    assert_eq!(v["only_reference"].as_array().map(Vec::len), Some(3), "{v}");
}

/// A shadow list whose shapes do not follow the model's parameters (the generator swapped the
/// first two) is an error naming the first index that disagrees, never a guess; nothing written.
#[test]
fn a_shadow_list_that_does_not_fit_names_the_first_disagreeing_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let r = run(&[
        "fold",
        fixture("wild/diffusers-ema-misordered.pt")
            .to_str()
            .unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`model`: index 0: shadow shape [8] but `conv.weight` is [8, 3, 3, 3]"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
}

/// diffusers' training scripts save `unet/` and `unet_ema/` folders (`save_pretrained`):
/// `--ema PATH` takes the EMA from the other folder, the raw model from the file given.
#[test]
fn the_ema_folder_beside_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ema.safetensors");
    let unet = fixture("wild/diffusers-folders/unet");
    let ema = fixture("wild/diffusers-folders/unet_ema");
    let (code, v) = run_json(&[
        "fold",
        unet.to_str().unwrap(),
        "--ema",
        ema.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["layout"]["layout"], "separate-files");
    assert_eq!(v["fold"]["from_ema"], 114);
    let got = std::fs::read(&out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    let want = std::fs::read(fixture("wild/expected/diffusers-ema.safetensors")).unwrap();
    let want = safetensors::SafeTensors::deserialize(&want).unwrap();
    assert_eq!(got.len(), want.len());
    for (n, w) in want.tensors() {
        assert!(got.tensor(&n).unwrap().data() == w.data(), "{n}");
    }
    // The EMA folder's file is an input too: never written over.
    let inside = ema.join("diffusion_pytorch_model.safetensors");
    let before = std::fs::read(&inside).unwrap();
    let r = run(&[
        "fold",
        unet.to_str().unwrap(),
        "--ema",
        ema.to_str().unwrap(),
        "-o",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(std::fs::read(&inside).unwrap(), before);
}
