//! RT-DETR (`rtdetr-l`, fixtures/families/rtdetr-l-detect.pt): the reference interpreter against
//! PyTorch's goldens, compared as rows (its output is the top 300 of queries × classes), and the
//! opsets the export refuses, and parity at a near-tie of the encoder's query selection (a swap
//! at the cut is decoded and reported; wrong models still fail). The export itself, run in ONNX
//! Runtime at both golden sizes, is in tests/families.rs.

mod common;

use common::{fixture, run, run_json};
use fuse_ema::checkpoint::py::ModuleRef;
use fuse_ema::onnx::proto::{ElemType, Node, TensorProto};
use fuse_ema::parity::npz::Npz;
use fuse_ema::parity::{Tolerance, compare_rows, seeded_images};
use fuse_ema::reference::Reference;
use fuse_ema::reference::selection::QuerySelection;

/// The interpreter (BatchNorm unfolded, its own attention and bilinear sampling, anchors in f64)
/// against PyTorch's export-mode forward, at 1×160×160 (where the head's stored f16 anchors are
/// used) and 2×160×192 (where they are generated).
#[test]
fn reference_matches_pytorch_goldens_as_rows() {
    let ckpt = fuse_ema::io::open(&fixture("families/rtdetr-l-detect.pt")).unwrap();
    let v = ckpt.graph.dict_get(&ckpt.root, "model").unwrap();
    let mut r = Reference::new(ModuleRef { g: &ckpt.graph, v }).unwrap();
    let npz = Npz::open(&fixture("families/goldens/rtdetr-l-detect.default.npz")).unwrap();
    for sfx in ["", "_2x160x192"] {
        let images = npz.get(&format!("images{sfx}")).unwrap().clone();
        let want = npz.get(&format!("output0{sfx}")).unwrap();
        let got = r.run(images).unwrap().remove(0);
        assert_eq!(got.shape, want.shape, "output0{sfx}");
        let (stats, checks) =
            compare_rows("output0", &got.shape, &got.data, &want.data, Tolerance::F32);
        for c in &checks {
            assert!(c.pass, "output0{sfx} image {}: {}", c.image, c.detail);
        }
        assert!(stats.pass, "output0{sfx}: {stats:?}");
        // Something was compared: the rows hold real boxes and scores.
        assert!(
            stats.reference_max > 0.5 && stats.cosine > 0.9999,
            "{stats:?}"
        );
    }
}

/// A wrong row in the interpreter's output is caught: moving one box by 1 % of the image fails.
#[test]
fn a_moved_row_fails_against_the_golden() {
    let npz = Npz::open(&fixture("families/goldens/rtdetr-l-detect.default.npz")).unwrap();
    let want = npz.get("output0").unwrap();
    let mut got = want.clone();
    got.data[6 * 10] += 0.01; // row 10's centre x
    let (stats, checks) =
        compare_rows("output0", &got.shape, &got.data, &want.data, Tolerance::F32);
    assert!(!stats.pass && !checks[0].pass, "{}", checks[0].detail);
}

/// Opsets without `LayerNormalization` (17) are refused with the reason; nothing is written.
#[test]
fn opsets_below_17_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let ckpt = fixture("families/rtdetr-l-detect.pt");
    let r = run(&[
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--imgsz",
        "160",
        "--opset",
        "16",
        "--no-parity",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr).trim_end(),
        format!(
            "fuse-ema: error: {}: cannot export: model.11 (AIFI): RT-DETR needs opset 17 or later (LayerNormalization, GridSample); opset 16 was asked for",
            ckpt.display()
        )
    );
    assert!(!out.exists());
}

/// The cut of a selection: its k-th selected query and the best query it left out, with their
/// scores (the closest pair of a selected and a left-out query).
type Cut = ((usize, f32), (usize, f32));

/// The first seeded input parity uses at 1×160×160 (seeds 0, 1, …) whose query cut is a near-tie
/// (the k-th and (k+1)-th scores within half the selection margin): its seed, the interpreter's
/// selection, and its cut. Seed 0 of the committed fixture is one (scores 2.0e-4 apart, margin
/// 3.5e-3); the search keeps the tests meaningful if the fixture is regenerated.
fn near_tie_seed() -> (u64, QuerySelection, Cut) {
    let ckpt = fuse_ema::io::open(&fixture("families/rtdetr-l-detect.pt")).unwrap();
    let v = ckpt.graph.dict_get(&ckpt.root, "model").unwrap();
    let mut r = Reference::new(ModuleRef { g: &ckpt.graph, v })
        .unwrap()
        .keeping_selections();
    for seed in 0..8 {
        r.run(seeded_images(&[1, 3, 160, 160], seed)).unwrap();
        assert_eq!(r.selections.len(), 1, "one selection per image");
        let sel = r.selections.remove(0);
        let last = *sel.chosen.last().unwrap();
        let best_out = (0..sel.scores.len())
            .filter(|q| !sel.chosen.contains(q))
            .max_by(|&a, &b| sel.scores[a].total_cmp(&sel.scores[b]))
            .unwrap();
        let (sl, so) = (sel.scores[last], sel.scores[best_out]);
        if ((sl - so) as f64) < margin(&sel) / 2.0 {
            return (seed, sel, ((last, sl), (best_out, so)));
        }
    }
    panic!("no seed of 0..8 has a near-tie at the query cut");
}

/// `--parity-samples` that includes `seed`.
fn samples(seed: u64) -> String {
    (seed + 1).to_string()
}

/// The report's retry entry for the first image of batch `seed`.
fn retry_of(r: &serde_json::Value, seed: u64) -> serde_json::Value {
    r["parity"]["query_reselections"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["batch"] == seed && q["image"] == 0))
        .cloned()
        .unwrap_or_else(|| panic!("no retry reported for batch {seed}: {r}"))
}

/// The detection-rows check of batch `seed` (one image per batch).
fn rows_check_of(r: &serde_json::Value, seed: u64) -> serde_json::Value {
    r["parity"]["task"][seed as usize].clone()
}

/// The fixture exported at 1×160×160 (no parity), edited by `edit`, written to a temporary file.
fn edited_export(
    edit: impl FnOnce(&mut fuse_ema::onnx::proto::Model),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let ckpt = fixture("families/rtdetr-l-detect.pt");
    let r = run(&[
        "export",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--imgsz",
        "160",
        "--no-parity",
    ]);
    assert_eq!(r.status.code(), Some(0));
    let mut m = fuse_ema::onnx::read::parse(&std::fs::read(&out).unwrap(), None).unwrap();
    edit(&mut m);
    std::fs::write(&out, m.encode()).unwrap();
    (dir, out)
}

/// Raises query `q`'s encoder scores (every class) by `delta` before the query selection: the
/// ONNX then selects it where the interpreter may not, and nothing else changes (in export form
/// the encoder scores feed only the selection).
fn raise_encoder_score(m: &mut fuse_ema::onnx::proto::Model, q: usize, delta: f32) {
    let at = m.nodes.iter().position(|n| n.op == "TopK").unwrap();
    let scores = m.nodes[at].inputs[0].clone();
    assert!(scores.contains("enc_score_head"), "{scores}");
    let w = m
        .initializers
        .iter()
        .find(|t| t.name.ends_with("enc_score_head.bias"))
        .unwrap();
    let nc = w.dims[0] as usize;
    let anchors = 20 * 20 + 10 * 10 + 5 * 5; // 1×160×160: strides 8, 16, 32
    let mut d = vec![0f32; anchors * nc];
    d[q * nc..(q + 1) * nc].fill(delta);
    m.initializers.push(TensorProto {
        name: "test/raise".into(),
        elem: ElemType::Float,
        dims: vec![1, anchors as i64, nc as i64],
        raw: d.iter().flat_map(|x| x.to_le_bytes()).collect(),
    });
    m.nodes.insert(
        at,
        Node {
            op: "Add".into(),
            name: "test/raise_add".into(),
            inputs: vec![scores, "test/raise".into()],
            outputs: vec!["test/raised".into()],
            attrs: vec![],
        },
    );
    m.nodes[at + 1].inputs[0] = "test/raised".into();
}

/// Lowers every final score logit by `by` (the last decoder layer's score head bias).
fn lower_scores(m: &mut fuse_ema::onnx::proto::Model, by: f32) {
    let t = m
        .initializers
        .iter_mut()
        .rfind(|t| t.name.contains("dec_score_head") && t.name.ends_with("bias"))
        .unwrap();
    assert_eq!(t.elem, ElemType::Float);
    let v: Vec<f32> = t
        .raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) - by)
        .collect();
    t.raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
}

fn verify(model: &std::path::Path, seed: u64) -> (i32, serde_json::Value) {
    run_json(&[
        "verify",
        model.to_str().unwrap(),
        // Seeds 0..=seed: the batches whose query cuts are studied above.
        "--seed",
        "0",
        "--parity-samples",
        &samples(seed),
        "--checkpoint",
        fixture("families/rtdetr-l-detect.pt").to_str().unwrap(),
        "--runtime",
        "ort",
        "--json",
    ])
}

/// The selection margin parity applies: 2 · (atol + rtol · max |score|), f32 defaults.
fn margin(sel: &QuerySelection) -> f64 {
    2.0 * (Tolerance::F32.atol + Tolerance::F32.rtol * sel.score_peak())
}

/// An ONNX that selects another query at the top-300 cut — the best one the interpreter left
/// out, pushed just past the cut — moves every row (the decoder's queries attend to one
/// another), so its rows fail against the interpreter's own selection; the pair is within the
/// selection margin, so parity decodes that swap, the ONNX matches it, and the report says so
/// (held-out rtdetr-l seed 1000 did this by rounding alone: docs/parity.md, "Query selection").
#[test]
fn a_near_tie_at_the_query_cut_is_decoded_both_ways_and_reported() {
    let (seed, sel, (_, (out, so))) = near_tie_seed();
    let gap = (sel.scores[*sel.chosen.last().unwrap()] - so) as f64;
    let margin = margin(&sel);
    // Past the cut by a quarter of the margin: far beyond any runtime's rounding of the scores.
    let (_d, p) = edited_export(|m| raise_encoder_score(m, out, (gap + margin / 4.0) as f32));
    let (code, r) = verify(&p, seed);
    assert_eq!(code, 0, "{r}");
    let q = retry_of(&r, seed);
    assert_eq!(q["k"], 300);
    assert_eq!(q["accepted"]["taken"], out, "{q}");
    // The query it left out for it lies at the cut too (the ONNX's own lowest).
    let dropped = q["accepted"]["dropped"].as_u64().unwrap() as usize;
    assert!(sel.chosen.contains(&dropped), "{q}");
    assert!(sel.scores[dropped] as f64 - so as f64 <= margin, "{q}");
    // With the interpreter's own selection the rows did not all match.
    let own = q["own_selection"].as_str().unwrap();
    assert!(!own.ends_with(", 0 unmatched"), "{own}");
    let check = rows_check_of(&r, seed);
    assert_eq!(check["pass"], true, "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("query selection swapped at a near-tie"),
        "{detail}"
    );
    assert!(
        (q["cut_gap"].as_f64().unwrap() - gap).abs() < 1e-6,
        "{q} vs {gap}"
    );
}

/// The retry excuses nothing else: the same ONNX with every final score logit lowered by 0.01
/// (scores move by up to 0.0025, about 3× their limit) fails, although the near-tie is there and
/// its swap is decoded, and so does the unedited export with the lowered scores alone.
#[test]
fn lowered_scores_fail_even_with_a_near_tie_retried() {
    let (seed, sel, ((_, sl), (out, so))) = near_tie_seed();
    let margin = margin(&sel);
    let (_d, p) = edited_export(|m| {
        raise_encoder_score(m, out, ((sl - so) as f64 + margin / 4.0) as f32);
        lower_scores(m, 0.01);
    });
    let (code, r) = verify(&p, seed);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["parity"]["pass"], false);
    let q = retry_of(&r, seed);
    assert!(q["accepted"].is_null(), "{q}");
    assert!(q["tried"].as_u64().unwrap() >= 1, "{q}");
    let check = rows_check_of(&r, seed);
    assert_eq!(check["pass"], false, "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("query swaps within the selection margin"),
        "{detail}"
    );

    let (_d, p) = edited_export(|m| lower_scores(m, 0.01));
    let (code, r) = verify(&p, seed);
    assert_eq!(code, 1, "{r}");
    assert_eq!(rows_check_of(&r, seed)["pass"], false, "{r}");
}

/// A selection change the tolerance can order is not excused: a query far below the cut (more
/// than twice the margin below) forced into the selection fails, although the retry ran.
#[test]
fn a_query_far_below_the_cut_forced_in_fails() {
    let (seed, sel, ((_, sl), _)) = near_tie_seed();
    let margin = margin(&sel);
    let mut left: Vec<usize> = (0..sel.scores.len())
        .filter(|q| !sel.chosen.contains(q))
        .collect();
    left.sort_by(|&a, &b| sel.scores[b].total_cmp(&sel.scores[a]));
    let far = *left
        .iter()
        .find(|&&q| (sl - sel.scores[q]) as f64 > 2.0 * margin)
        .unwrap();
    let lift = (sl - sel.scores[far]) as f64 + margin / 4.0;
    let (_d, p) = edited_export(|m| raise_encoder_score(m, far, lift as f32));
    let (code, r) = verify(&p, seed);
    assert_eq!(code, 1, "{r}");
    let q = retry_of(&r, seed);
    assert!(q["accepted"].is_null(), "{q}");
    assert_eq!(rows_check_of(&r, seed)["pass"], false);
}
