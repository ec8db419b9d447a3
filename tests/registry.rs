//! The module registry (src/models/) is the one place a module class is declared: the support
//! table in docs/export.md is generated from it, both backends accept exactly its layers, and
//! both name the layer when a module does not fit.

mod common;

use common::fixture;
use fuse_ema::checkpoint::Checkpoint;
use fuse_ema::checkpoint::py::ModuleRef;
use fuse_ema::checkpoint::value::{Node, NodeId, Value};
use fuse_ema::models::LayerError;
use fuse_ema::models::registry::{self, Kind};
use fuse_ema::onnx::ultralytics::Builder;
use fuse_ema::reference::{RefError, Reference, ops::RefTensor};

const BEGIN: &str = "<!-- registry table begin -->\n";
const END: &str = "<!-- registry table end -->";

/// docs/export.md holds exactly `registry::docs_table()` between the markers. Run with
/// `FUSE_EMA_BLESS_DOCS=1` to rewrite it after changing the registry.
#[test]
fn docs_export_md_lists_exactly_the_registry() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/export.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc
        .find(BEGIN)
        .expect("docs/export.md has the table markers")
        + BEGIN.len();
    let end = doc[start..].find(END).expect("end marker") + start;
    let want = registry::docs_table();
    if std::env::var_os("FUSE_EMA_BLESS_DOCS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[end..])).unwrap();
        return;
    }
    assert!(
        doc[start..end] == want,
        "docs/export.md's module table differs from the registry; rerun with \
         FUSE_EMA_BLESS_DOCS=1 to regenerate it. Expected:\n{want}"
    );
    for layer in registry::all() {
        assert_eq!(
            want.matches(&format!("| `{}` |", layer.class)).count(),
            1,
            "{} is listed once",
            layer.class
        );
    }
}

#[test]
fn builder_and_interpreter_support_exactly_the_same_classes() {
    let layers: Vec<&str> = registry::all()
        .filter(|l| matches!(l.kind, Kind::Layer { .. } | Kind::Fork { .. }))
        .map(|l| l.class)
        .collect();
    assert!(layers.len() >= 20, "{layers:?}");
    for l in registry::all() {
        assert_eq!(
            Builder::handles(l.class),
            Reference::handles(l.class),
            "{}",
            l.class
        );
        assert_eq!(Builder::handles(l.class), layers.contains(&l.class));
    }
    for unknown in ["NoSuchBlock", "C2fAttn", "BNContrastiveHead", ""] {
        assert!(!Builder::handles(unknown) && !Reference::handles(unknown));
    }
}

/// The head (last layer) of the `model` entry: its path index, and the node ids of its object
/// and of its attribute dict.
fn head(ckpt: &Checkpoint) -> (String, NodeId, NodeId) {
    let g = &ckpt.graph;
    let v = g.dict_get(&ckpt.root, "model").expect("a model entry");
    let (name, h) = ModuleRef { g, v }
        .child("model")
        .unwrap()
        .children()
        .pop()
        .unwrap();
    let obj = h.v.node().unwrap();
    let state = g
        .object(h.v)
        .unwrap()
        .state
        .as_ref()
        .unwrap()
        .node()
        .unwrap();
    (name.to_string(), obj, state)
}

/// A 64×64 export of the `model` entry.
fn export_options() -> fuse_ema::onnx::ExportOptions {
    fuse_ema::onnx::ExportOptions {
        imgsz: Some((64, 64)),
        batch: 1,
        dynamic: false,
        nms: None,
        max_det: 300,
        opset: 17,
        half: false,
        module_key: "model".into(),
        force_external: false,
        external_name: "model.onnx.data".into(),
        scratch_dir: None,
        end2end: false,
    }
}

/// The reference interpreter's error on the `model` entry of `ckpt` for a 1×3×64×64 input.
fn run_error(ckpt: &Checkpoint) -> RefError {
    let g = &ckpt.graph;
    let v = g.dict_get(&ckpt.root, "model").unwrap();
    Reference::new(ModuleRef { g, v })
        .unwrap()
        .run(RefTensor::new(vec![0.5; 3 * 64 * 64], vec![1, 3, 64, 64]))
        .expect_err("the reference refuses")
}

/// Both backends' errors for the `model` entry of `ckpt`.
fn errors(ckpt: &Checkpoint) -> (String, String) {
    let export = fuse_ema::onnx::export(ckpt, &export_options())
        .expect_err("the export refuses")
        .to_string();
    let run = run_error(ckpt).to_string();
    (export, run)
}

#[test]
fn a_head_without_nc_is_named_by_both_backends() {
    let mut ckpt = fuse_ema::io::open(&fixture("yolov8-best.pt")).unwrap();
    let (name, _, state) = head(&ckpt);
    let Node::Dict(entries) = ckpt.graph.node_mut(state) else {
        panic!("the head's state is a dict")
    };
    let nc = entries
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some("nc"))
        .expect("the head has nc");
    nc.0 = Value::Str("not_nc".into());
    let (export, run) = errors(&ckpt);
    let want = format!("model.{name} (Detect): nc missing");
    assert!(export.contains(&want), "{export}");
    assert!(run.contains(&want), "{run}");
    // The reference's error keeps the layer's path and class as fields, the cause as its source.
    let err = run_error(&ckpt);
    let RefError::Model(LayerError::At {
        path,
        class,
        source,
    }) = err
    else {
        panic!("not a layer error: {err:?}")
    };
    assert_eq!(path, format!("model.{name}"));
    assert_eq!(class, "Detect");
    assert!(
        matches!(&*source, LayerError::Missing { class, attr } if class == "Detect" && attr == "nc"),
        "{source:?}"
    );
    assert_eq!(source.to_string(), "nc missing");
}

#[test]
fn an_unknown_class_is_refused_by_both_backends_with_the_registry_error() {
    let mut ckpt = fuse_ema::io::open(&fixture("yolov8-best.pt")).unwrap();
    let (name, obj, _) = head(&ckpt);
    let Node::Object(o) = ckpt.graph.node_mut(obj) else {
        panic!("the head is an object")
    };
    o.class.as_mut().expect("a class").name = "NotAHead".into();
    let (export, run) = errors(&ckpt);
    assert!(
        export.ends_with("unsupported module classes: NotAHead"),
        "{export}"
    );
    let want = format!("model.{name} (NotAHead): unsupported module class NotAHead");
    assert!(run.contains(&want), "{run}");
}

/// The attribute dict of the first module of class `class` below the `model` entry, and the
/// path of the layer holding it.
fn first_of_class(ckpt: &Checkpoint, class: &str) -> (String, NodeId) {
    let g = &ckpt.graph;
    let v = g.dict_get(&ckpt.root, "model").unwrap();
    let root = ModuleRef { g, v };
    for (name, layer) in root.child("model").unwrap().children() {
        let mut stack = vec![layer];
        while let Some(m) = stack.pop() {
            if m.class() == class {
                let state = g.object(m.v).unwrap().state.as_ref().unwrap();
                return (name.to_string(), state.node().unwrap());
            }
            stack.extend(m.children().into_iter().map(|(_, c)| c));
        }
    }
    panic!("no {class}")
}

#[test]
fn an_attribute_one_backend_cannot_honour_is_refused_by_both() {
    // Both read MaxPool2d through one parse: ceil_mode=True is refused by the builder and the
    // reference alike, instead of the reference pooling with floor rounding.
    let mut ckpt = fuse_ema::io::open(&fixture("yolov8-best.pt")).unwrap();
    let (name, state) = first_of_class(&ckpt, "MaxPool2d");
    let Node::Dict(entries) = ckpt.graph.node_mut(state) else {
        panic!("MaxPool2d's state is a dict")
    };
    let ceil = entries
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some("ceil_mode"))
        .expect("MaxPool2d has ceil_mode");
    ceil.1 = Value::Bool(true);
    let (export, run) = errors(&ckpt);
    for err in [export, run] {
        assert!(
            err.contains(&format!("model.{name} (SPPF): ")) && err.contains("ceil_mode=True"),
            "{err}"
        );
    }
}

/// A weight whose bytes cannot be read (here a storage that would inflate past its budget) is
/// refused by both backends naming the layer, the class and the weight, and the reader's I/O
/// error stays in the `source()` chain instead of being flattened into text.
#[test]
fn an_unreadable_weight_keeps_the_read_error_as_its_source() {
    let bomb_ckpt = fuse_ema::io::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/hostile/files/deflate-bomb-512m.pt"),
    )
    .unwrap();
    let g = &bomb_ckpt.graph;
    let sd = g.dict_get(&bomb_ckpt.root, "state_dict").unwrap();
    let bomb = g.tensor(g.dict_get(sd, "weight").unwrap()).unwrap().clone();
    let mut ckpt = fuse_ema::io::open(&fixture("yolov8-best.pt")).unwrap();
    let weight = {
        let g = &ckpt.graph;
        let v = g.dict_get(&ckpt.root, "model").unwrap();
        let conv = (ModuleRef { g, v }.child("model").unwrap())
            .child("0")
            .unwrap()
            .child("conv")
            .unwrap();
        let params = conv.attr("_parameters").unwrap();
        g.dict_get(params, "weight").unwrap().node().unwrap()
    };
    *ckpt.graph.node_mut(weight) = Node::Tensor(Box::new(bomb));
    let (export, run) = errors(&ckpt);
    for err in [&export, &run] {
        assert!(
            err.contains("model.0 (Conv): Conv2d.weight: ") && err.contains("decompression bomb"),
            "{err}"
        );
    }
    // Both chains reach the reader's io::Error.
    fn has_io(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>().is_some() {
                return true;
            }
            cur = e.source();
        }
        false
    }
    let opts = export_options();
    let e = fuse_ema::onnx::export(&ckpt, &opts).expect_err("the export refuses");
    assert!(has_io(&e), "{e}");
    let e = run_error(&ckpt);
    assert!(has_io(&e), "{e}");
}
