//! YOLOv10 and YOLO12 modules beyond what `tests/families.rs` exports: what a checkpoint saved in
//! another state does to the one-to-many head, and the module states both backends must refuse
//! alike (each backend is asked directly: the builder emits, the reference runs).

mod common;

use common::{assert_channels, fixture};
use fuse_ema::checkpoint::Checkpoint;
use fuse_ema::checkpoint::py::ModuleRef;
use fuse_ema::checkpoint::value::{Node, NodeId, Value};
use fuse_ema::onnx::graph::{GraphBuilder, GraphValue};
use fuse_ema::onnx::proto::ElemType;
use fuse_ema::onnx::ultralytics::{Builder, forward};
use fuse_ema::parity::Tolerance;
use fuse_ema::parity::npz::Npz;
use fuse_ema::reference::{Reference, ops::RefTensor};

fn open(stem: &str) -> Checkpoint {
    fuse_ema::io::open(&fixture(&format!("families/{stem}.pt"))).unwrap()
}

/// The model module (`model` entry; these fixtures are stripped, best.pt form).
fn model(ckpt: &Checkpoint) -> ModuleRef<'_> {
    let g = &ckpt.graph;
    ModuleRef {
        g,
        v: g.dict_get(&ckpt.root, "model").unwrap(),
    }
}

/// The state dict of the first module of `class` (depth first, in layer order) and the top-level
/// layer holding it.
fn state_of(ckpt: &Checkpoint, class: &str) -> (String, NodeId) {
    let g = &ckpt.graph;
    for (layer, top) in model(ckpt).child("model").unwrap().children() {
        let mut todo = vec![top];
        while let Some(m) = todo.pop() {
            if m.class() == class {
                let state = g.object(m.v).unwrap().state.as_ref().unwrap();
                return (layer.to_string(), state.node().unwrap());
            }
            todo.extend(m.children().into_iter().rev().map(|(_, c)| c));
        }
    }
    panic!("no {class} in the model")
}

/// Sets `key` of the dict node `dict` to `value` (the key must exist).
fn set(ckpt: &mut Checkpoint, dict: NodeId, key: &str, value: Value) {
    let Node::Dict(entries) = ckpt.graph.node_mut(dict) else {
        panic!("not a dict")
    };
    let entry = entries
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some(key))
        .unwrap_or_else(|| panic!("no {key}"));
    entry.1 = value;
}

/// Removes child `name` of the module whose state is `state`, as `setattr(m, name, None)` does.
fn drop_child(ckpt: &mut Checkpoint, state: NodeId, name: &str) {
    let modules = match ckpt.graph.node_mut(state) {
        Node::Dict(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("_modules"))
            .and_then(|(_, v)| v.node())
            .expect("_modules"),
        _ => panic!("not a dict"),
    };
    set(ckpt, modules, name, Value::None);
}

/// The builder's error, or its output shape, for a 1×3×64×64 input.
fn emit(ckpt: &Checkpoint) -> Result<Vec<i64>, String> {
    let mut bld = Builder::new(GraphBuilder::new(ElemType::Float));
    let input = GraphValue {
        name: "images".into(),
        shape: vec![1, 3, 64, 64],
    };
    forward(&mut bld, model(ckpt), input)
        .map(|v| v.shape)
        .map_err(|e| e.to_string())
}

/// The reference's outputs on `images`.
fn run(ckpt: &Checkpoint, images: RefTensor) -> Result<Vec<RefTensor>, String> {
    Reference::new(model(ckpt))
        .and_then(|mut r| r.run(images))
        .map_err(|e| e.to_string())
}

fn golden(stem: &str) -> Npz {
    Npz::open(&fixture(&format!("families/goldens/{stem}.default.npz"))).unwrap()
}

/// Both backends refuse, each naming the layer and saying `why`.
fn both_refuse(ckpt: &Checkpoint, layer: &str, why: &str) {
    let emitted = emit(ckpt).expect_err("the builder refuses");
    let ran = run(
        ckpt,
        RefTensor::new(vec![0.5; 3 * 64 * 64], vec![1, 3, 64, 64]),
    )
    .expect_err("the reference refuses");
    for err in [emitted, ran] {
        assert!(
            err.starts_with(&format!("model.{layer} (")) && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn a_head_saved_end_to_end_still_exports_its_one_to_many_branches() {
    // `yolo export` sets end2end from its own `nms` argument, whatever the head was saved with:
    // by default (nms=None) the one-to-many branches, (B, 4 + nc, anchors).
    let mut ckpt = open("yolov10n-detect");
    let (_, head) = state_of(&ckpt, "v10Detect");
    set(&mut ckpt, head, "_end2end", Value::Bool(true));
    assert_eq!(emit(&ckpt).unwrap(), [1, 6, 84]);
    let npz = golden("yolov10n-detect");
    let y = run(&ckpt, npz.get("images").unwrap().clone()).unwrap();
    let want = npz.get("output0").unwrap();
    assert_eq!(y[0].shape, want.shape);
    assert_channels(
        "yolov10n-detect saved with _end2end=True",
        &want.shape,
        &y[0].data,
        &want.data,
        Tolerance::F32,
    );
}

#[test]
fn a_head_whose_one_to_many_branches_were_fused_away_is_refused_by_both() {
    // Detect.fuse() on an end-to-end head sets cv2 and cv3 to None and keeps one2one_*.
    let mut ckpt = open("yolov10n-detect");
    let (layer, head) = state_of(&ckpt, "v10Detect");
    drop_child(&mut ckpt, head, "cv2");
    drop_child(&mut ckpt, head, "cv3");
    both_refuse(
        &ckpt,
        &layer,
        "v10Detect's one-to-many branches were removed (a fused checkpoint)",
    );
}

#[test]
fn an_area_that_does_not_divide_the_positions_is_refused_by_both() {
    // model.6's AAttn cuts its 4x4 map (stride 16 at 64x64) into 4 areas; 3 do not divide it,
    // where PyTorch's reshape fails too.
    let mut ckpt = open("yolo12n-detect");
    let (layer, attn) = state_of(&ckpt, "AAttn");
    assert_eq!(layer, "6");
    set(&mut ckpt, attn, "area", Value::Int(3));
    both_refuse(
        &ckpt,
        &layer,
        "AAttn: cannot cut 4x4 = 16 positions into 3 equal areas",
    );
}

#[test]
fn a_repvggdw_without_its_3x3_branch_must_be_the_fused_one() {
    // fuse() merges conv1 into conv and leaves a plain Conv2d; a Conv without conv1 is neither.
    let mut ckpt = open("yolov10n-detect");
    let (layer, rep) = state_of(&ckpt, "RepVGGDW");
    drop_child(&mut ckpt, rep, "conv1");
    both_refuse(
        &ckpt,
        &layer,
        "RepVGGDW: without conv1 has a Conv where fuse() leaves a Conv2d",
    );
}
