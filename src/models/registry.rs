//! Module class → what it is and how each backend handles it. Every class is declared once, in
//! the `LAYERS` list of its file under [`super::layers`]; this file only gathers those lists.
//! The supported-class list, the "unsupported" error and the support table in `docs/export.md`
//! ([`docs_table`]) all come from here.

use std::collections::BTreeSet;

use super::layers;
use super::{BuildResult, LayerError, LayerInput};
use crate::checkpoint::py::ModuleRef;
use crate::onnx::graph::{GraphBuilder, GraphValue};
use crate::onnx::ultralytics::Builder;
use crate::reference::Reference;
use crate::reference::ops::RefTensor;

/// Emits a layer into the graph (BatchNorm folded, as `fuse_conv_and_bn` does).
pub type EmitFn =
    fn(&mut Builder<'_>, &str, ModuleRef<'_>, LayerInput<GraphValue>) -> BuildResult<GraphValue>;
/// Runs a layer in the reference interpreter (BatchNorm unfolded, its own loops).
pub type RunFn =
    fn(&mut Reference<'_>, ModuleRef<'_>, LayerInput<RefTensor>) -> BuildResult<RefTensor>;
/// Emits a layer whose output is a list of values (`CBLinear`).
pub type ForkEmitFn = fn(
    &mut Builder<'_>,
    &str,
    ModuleRef<'_>,
    LayerInput<GraphValue>,
) -> BuildResult<Vec<GraphValue>>;
/// Runs a layer whose output is a list of values.
pub type ForkRunFn =
    fn(&mut Reference<'_>, ModuleRef<'_>, LayerInput<RefTensor>) -> BuildResult<Vec<RefTensor>>;
/// Emits an activation on the value named by the last argument, in the scope given; returns
/// the output's name.
pub type ActEmitFn = fn(&mut GraphBuilder, &str, ModuleRef<'_>, &str) -> String;
/// Applies an activation to every element, in place.
pub type ActRunFn = fn(ModuleRef<'_>, &mut RefTensor);

/// How a class is handled.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A layer either backend can meet anywhere a module runs (in the layer list, in a
    /// `Sequential`, as a block's child).
    Layer {
        /// The ONNX emission.
        emit: EmitFn,
        /// The reference implementation.
        run: RunFn,
    },
    /// A layer of the layer list whose output is a list (`CBLinear`'s split); only a layer of
    /// the list reads it ([`super::Net::forward`]), never a block.
    Fork {
        /// The ONNX emission.
        emit: ForkEmitFn,
        /// The reference implementation.
        run: ForkRunFn,
    },
    /// An activation, applied by the `Conv` that holds it.
    Activation {
        /// The ONNX emission.
        emit: ActEmitFn,
        /// The reference implementation.
        run: ActRunFn,
    },
    /// Read only by its parent (named here), never run on its own.
    Part(&'static str),
}

/// One module class.
#[derive(Clone, Copy)]
pub struct Layer {
    /// The class name as pickled (`C2f`).
    pub class: &'static str,
    /// What it does, one line for the support table.
    pub summary: &'static str,
    /// The task a head produces (`segment`); `None` for everything but heads.
    pub task: Option<&'static str>,
    /// How the backends handle it.
    pub kind: Kind,
}

/// A layer both backends evaluate.
pub const fn layer(class: &'static str, summary: &'static str, emit: EmitFn, run: RunFn) -> Layer {
    Layer {
        class,
        summary,
        task: None,
        kind: Kind::Layer { emit, run },
    }
}

/// A head: a layer that decides the task and the outputs.
pub const fn head(
    class: &'static str,
    task: &'static str,
    summary: &'static str,
    emit: EmitFn,
    run: RunFn,
) -> Layer {
    Layer {
        class,
        summary,
        task: Some(task),
        kind: Kind::Layer { emit, run },
    }
}

/// A layer of the layer list whose output is a list.
pub const fn fork(
    class: &'static str,
    summary: &'static str,
    emit: ForkEmitFn,
    run: ForkRunFn,
) -> Layer {
    Layer {
        class,
        summary,
        task: None,
        kind: Kind::Fork { emit, run },
    }
}

/// An activation applied by the `Conv` that holds it.
pub const fn activation(
    class: &'static str,
    summary: &'static str,
    emit: ActEmitFn,
    run: ActRunFn,
) -> Layer {
    Layer {
        class,
        summary,
        task: None,
        kind: Kind::Activation { emit, run },
    }
}

/// A class only its parent (`of`, comma-separated) reads.
pub const fn part(class: &'static str, of: &'static str, summary: &'static str) -> Layer {
    Layer {
        class,
        summary,
        task: None,
        kind: Kind::Part(of),
    }
}

/// The file under `src/models/layers/` each group comes from, with its list.
const GROUPS: &[(&str, &[Layer])] = &[
    ("basic.rs", layers::basic::LAYERS),
    ("conv.rs", layers::conv::LAYERS),
    ("conv_transpose.rs", layers::conv_transpose::LAYERS),
    ("act.rs", layers::act::LAYERS),
    ("csp.rs", layers::csp::LAYERS),
    ("ghost.rs", layers::ghost::LAYERS),
    ("elan.rs", layers::elan::LAYERS),
    ("v9.rs", layers::v9::LAYERS),
    ("resnet.rs", layers::resnet::LAYERS),
    ("attention.rs", layers::attention::LAYERS),
    ("v10.rs", layers::v10::LAYERS),
    ("area_attention.rs", layers::area_attention::LAYERS),
    ("classify.rs", layers::classify::LAYERS),
    ("heads/mod.rs", layers::heads::LAYERS),
    ("rtdetr/mod.rs", layers::rtdetr::LAYERS),
    ("dense.rs", layers::dense::LAYERS),
    ("classic.rs", layers::classic::LAYERS),
    ("classic_v7.rs", layers::classic_v7::LAYERS),
];

/// Model classes (the pickled root) and the task each exports as.
pub const MODELS: &[(&str, &str)] = &[
    ("DetectionModel", "detect"),
    ("SegmentationModel", "segment"),
    ("PoseModel", "pose"),
    ("OBBModel", "obb"),
    ("ClassificationModel", "classify"),
    ("RTDETRDetectionModel", "detect"),
    ("DepthModel", "depth"),
    ("SemanticSegmentationModel", "semantic"),
];

/// Every registered class, in table order.
pub fn all() -> impl Iterator<Item = &'static Layer> {
    GROUPS.iter().flat_map(|(_, g)| g.iter())
}

/// The entry for `class`.
pub fn find(class: &str) -> Option<&'static Layer> {
    all().find(|l| l.class == class)
}

/// The entry for the module `m`: by its pickled path first (`models.yolo.Detect`, a classic YOLO
/// class whose short name is an Ultralytics class that computes something else; the `yolov5` pip
/// package's `yolov5.` prefix dropped), then by its class name.
pub fn lookup(m: ModuleRef) -> Option<&'static Layer> {
    let dotted = crate::checkpoint::module::class_name(m.g, m.v)?;
    let dotted = dotted.strip_prefix("yolov5.").unwrap_or(&dotted);
    find(dotted).or_else(|| find(&m.class()))
}

/// The task of a model class (`SegmentationModel` → `segment`).
pub fn task_of_model(class: &str) -> Option<&'static str> {
    MODELS.iter().find(|(c, _)| *c == class).map(|(_, t)| *t)
}

/// The error for a class neither backend handles where it was met.
pub fn unsupported_class(class: &str) -> LayerError {
    LayerError::UnknownClass(class.to_string())
}

/// Every class below `m` (itself included) that the registry does not know.
pub fn unsupported(m: ModuleRef) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(m, 0usize)];
    while let Some((m, depth)) = stack.pop() {
        if lookup(m).is_none() {
            out.insert(m.class());
        }
        if depth < 64 {
            stack.extend(m.children().into_iter().map(|(_, c)| (c, depth + 1)));
        }
    }
    out
}

/// `Ok` when every class below `m` is known; else the one-line error listing the others.
pub fn check(m: ModuleRef) -> BuildResult<()> {
    let bad = unsupported(m);
    if bad.is_empty() {
        return Ok(());
    }
    Err(LayerError::UnknownClasses(bad.into_iter().collect()))
}

/// The support table of `docs/export.md`, generated from the registry.
pub fn docs_table() -> String {
    let mut s = String::from("| class | handled as | what | declared in |\n|---|---|---|---|\n");
    for (file, group) in GROUPS {
        for l in group.iter() {
            let how = match (l.kind, l.task) {
                (Kind::Layer { .. }, Some(task)) => format!("head ({task})"),
                (Kind::Layer { .. }, None) => "layer".to_string(),
                (Kind::Fork { .. }, _) => "layer (gives a list)".to_string(),
                (Kind::Activation { .. }, _) => "activation".to_string(),
                (Kind::Part(of), _) => format!("part of {of}"),
            };
            s.push_str(&format!(
                "| `{}` | {how} | {} | `src/models/layers/{file}` |\n",
                l.class, l.summary
            ));
        }
    }
    s.push_str("\n| model class (pickled root) | task |\n|---|---|\n");
    for (model, task) in MODELS {
        s.push_str(&format!("| `{model}` | {task} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_declared_once() {
        let mut seen = BTreeSet::new();
        for l in all() {
            assert!(seen.insert(l.class), "{} is declared twice", l.class);
        }
    }

    #[test]
    fn builder_and_interpreter_support_the_same_classes() {
        // Both backends dispatch through the registry; a class is only ever declared with both
        // an emission and a reference implementation, or as a part its parent reads.
        let emits: BTreeSet<&str> = all()
            .filter(|l| Builder::handles(l.class))
            .map(|l| l.class)
            .collect();
        let runs: BTreeSet<&str> = all()
            .filter(|l| Reference::handles(l.class))
            .map(|l| l.class)
            .collect();
        assert_eq!(emits, runs);
        assert!(!Builder::handles("NoSuchClass") && !Reference::handles("NoSuchClass"));
    }

    #[test]
    fn parts_name_a_registered_parent() {
        for l in all() {
            if let Kind::Part(of) = l.kind {
                for parent in of.split(", ") {
                    assert!(
                        find(parent).is_some(),
                        "{}: part of unknown {parent}",
                        l.class
                    );
                }
            }
        }
    }

    #[test]
    fn every_model_task_has_a_head() {
        for (model, task) in MODELS {
            assert!(
                all().any(|l| l.task == Some(*task)),
                "{model}: no head for {task}"
            );
        }
    }
}
