//! Models from outside Ultralytics' `ultralytics.nn.tasks`: the classic YOLOv5 / YOLOv7 detection
//! models fuse-ema exports ([`classic`], with the interface their own export.py writes), and the
//! models it recognises but does not export, each with the reason in the error (the classic
//! repositories' other heads, Ultralytics models whose layers take more than the image).

use crate::checkpoint::module;
use crate::checkpoint::py::ModuleRef;

/// Which classic repository a model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classic {
    /// ultralytics/yolov5 (v6–v7) or the `yolov5` pip package: anchor-based `Detect`.
    Yolov5,
    /// WongKinYiu/yolov7: `IDetect` or `IAuxDetect`.
    Yolov7,
}

/// The task name of a classic model's export: rows (B, anchors, 5 + nc), not Ultralytics'
/// (B, 4 + nc, anchors), so no Ultralytics task-level check applies to it.
pub const CLASSIC_TASK: &str = "classic-detect";

impl Classic {
    /// The name of output `i`: `output0` (YOLOv5 export.py), `output` (YOLOv7 export.py).
    pub fn output_name(self, i: usize) -> String {
        match self {
            Classic::Yolov5 => format!("output{i}"),
            Classic::Yolov7 if i == 0 => "output".into(),
            Classic::Yolov7 => format!("output{i}"),
        }
    }

    /// The metadata its export.py writes: YOLOv5 `stride` (the largest) and `names` (as
    /// Python's `str`); YOLOv7 none.
    pub fn metadata(self, stride: i64, names: String) -> Vec<(String, String)> {
        match self {
            Classic::Yolov5 => vec![
                ("stride".into(), stride.to_string()),
                ("names".into(), names),
            ],
            Classic::Yolov7 => Vec::new(),
        }
    }

    /// Refuses the export options the classic exporters do not have or fuse-ema does not
    /// build for these heads.
    pub fn check_options(self, nms: bool, end2end: bool) -> Result<(), ClassicOptionError> {
        let option = if nms {
            "--nms"
        } else if end2end {
            "--end2end"
        } else {
            return Ok(());
        };
        Err(ClassicOptionError {
            option,
            model: self,
        })
    }
}

/// An export option the classic exporters do not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "{option} is not supported for classic {model:?} models (anchor-based heads export (B, anchors, 5 + nc) rows, as their export.py does)"
)]
pub struct ClassicOptionError {
    /// The option (`--nms`, `--end2end`).
    pub option: &'static str,
    /// The classic repository.
    pub model: Classic,
}

/// The classic repository of a detection model fuse-ema exports: the root is
/// `models.yolo.Model` / `DetectionModel` (or the pip package's `yolov5.models.yolo.*`) and the
/// head YOLOv5's `Detect` or YOLOv7's `IDetect` / `IAuxDetect`; `None` for anything else.
pub fn classic(root: ModuleRef) -> Option<Classic> {
    let dotted = |m: ModuleRef| {
        let d = module::class_name(m.g, m.v)?;
        Some(d.strip_prefix("yolov5.").unwrap_or(&d).to_string())
    };
    let root_class = dotted(root)?;
    if !matches!(
        root_class.as_str(),
        "models.yolo.Model" | "models.yolo.DetectionModel"
    ) {
        return None;
    }
    let head = root.child("model").ok()?.children().pop()?.1;
    match dotted(head)?.as_str() {
        "models.yolo.Detect" => Some(Classic::Yolov5),
        "models.yolo.IDetect" | "models.yolo.IAuxDetect" => Some(Classic::Yolov7),
        _ => None,
    }
}

/// Why the pickled root `root` (found under `key`) is not exported, or `None` when it is an
/// Ultralytics (`ultralytics.*`) model class the registry does not refuse or a [`classic`] one.
pub fn refusal(root: ModuleRef, key: &str) -> Option<String> {
    let dotted = module::class_name(root.g, root.v)?;
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop())
        .map(|(_, h)| h);
    let head_class = head.map(|h| h.class()).unwrap_or_default();
    if !dotted.starts_with("ultralytics.") {
        if classic(root).is_some() {
            return None;
        }
        // Layer classes are dispatched by their short names, which the YOLOv5 and YOLOv7
        // repositories reuse (`Conv`, `C3`, `Detect`) with other heads: refuse by origin.
        let origin = if dotted.starts_with("yolov5.") {
            "the yolov5 pip package"
        } else if head_class.starts_with('I') {
            "the YOLOv7 repository"
        } else {
            "the YOLOv5 repository"
        };
        let anchors = head.and_then(|h| h.tensor_f32("anchors").ok().flatten());
        let head_note = match anchors {
            Some(_) => format!(
                " with an anchor-based {head_class} head (sigmoid outputs decoded with grid and anchor_grid into (B, anchors·cells, 5 + nc))"
            ),
            None => String::new(),
        };
        return Some(format!(
            "'{key}' is a {dotted} from {origin}{head_note}, not an Ultralytics model; fuse-ema exports ultralytics.nn.tasks models and classic YOLOv5 Detect / YOLOv7 IDetect detection models"
        ));
    }
    match root.class().as_str() {
        "WorldModel" => Some(world(root, key)),
        "YOLOEModel" | "YOLOESegModel" => Some(yoloe(root, key)),
        _ => None,
    }
}

/// The classes of the open-vocabulary layers in `root`'s tree that take the class text (or
/// prompt) embeddings, in the order they first appear, each with its text-side part.
fn text_layers(root: ModuleRef) -> Vec<&'static str> {
    const TEXT: &[(&str, &str)] = &[
        (
            "C2fAttn",
            "C2fAttn (MaxSigmoidAttnBlock: image features attend to the text)",
        ),
        (
            "ImagePoolingAttn",
            "ImagePoolingAttn (updates the text embeddings from pooled image features)",
        ),
        ("WorldDetect", "WorldDetect"),
        (
            "ContrastiveHead",
            "ContrastiveHead (class scores as region·text similarities)",
        ),
        (
            "BNContrastiveHead",
            "BNContrastiveHead (class scores as region·text similarities)",
        ),
        ("YOLOEDetect", "YOLOEDetect"),
        ("YOLOESegment", "YOLOESegment"),
        ("YOLOESegment26", "YOLOESegment26"),
        ("LRPCHead", "LRPCHead (a built-in vocabulary, prompt-free)"),
    ];
    let mut seen = Vec::new();
    let mut stack = vec![root];
    while let Some(m) = stack.pop() {
        if let Some((_, what)) = TEXT.iter().find(|(c, _)| *c == m.class())
            && !seen.contains(what)
        {
            seen.push(*what);
        }
        // Depth-first in pickled order.
        stack.extend(m.children().into_iter().rev().map(|(_, c)| c));
    }
    seen
}

/// The shape of a plain tensor attribute (`self.txt_feats = …`, not a parameter or buffer).
fn tensor_attr_shape(m: ModuleRef, name: &str) -> Option<Vec<usize>> {
    m.attr(name)
        .and_then(|v| m.g.tensor(v))
        .map(|t| t.shape().to_vec())
}

/// YOLO-World (`yolov8-world`, `yolov8-worldv2`): what the checkpoint holds decides what is
/// missing. Its trainer calls `set_classes(names)` before training, so a trained checkpoint
/// holds the CLIP embeddings of its own class names.
fn world(root: ModuleRef, key: &str) -> String {
    let layers = text_layers(root).join(", ");
    match tensor_attr_shape(root, "txt_feats") {
        Some(shape) => format!(
            "'{key}' is a WorldModel (YOLO-World): its layers {layers} take the class text embeddings as a second input beside the image features; the checkpoint holds them (`txt_feats` {shape:?}: one CLIP embedding per class, saved by set_classes), so no text encoder is needed, but exporting them as constants of a fixed-vocabulary detector (as `yolo export` does) needs these layers in fuse-ema's builder and interpreter, which it does not have yet: export it with `yolo export`"
        ),
        None => format!(
            "'{key}' is a WorldModel (YOLO-World): its layers {layers} take the class text embeddings as a second input, and the checkpoint has none (`txt_feats`): they come from its CLIP ViT-B/32 text encoder, which fuse-ema does not run; call `model.set_classes(names)` in Ultralytics and save the model first"
        ),
    }
}

/// YOLOE (`yoloe-v8`, `yoloe-11`, `yoloe-26`, each also `-seg`): the head scores classes
/// against prompt embeddings (`pe`, set by `set_classes(names, embeddings)`) that `yolo export`
/// fuses into each level's class convolution; a prompt-free model (`set_vocab`) has an
/// `LRPCHead` vocabulary instead.
fn yoloe(root: ModuleRef, key: &str) -> String {
    let class = root.class();
    let layers = text_layers(root).join(", ");
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop())
        .map(|(_, h)| h);
    let text_model = root.str("text_model").unwrap_or("mobileclip:blt");
    if head.is_some_and(|h| h.opt_child("lrpc").is_some()) {
        return format!(
            "'{key}' is a {class} (YOLOE, prompt-free): its head {layers} scores a built-in vocabulary through LRPCHead, which fuse-ema's builder and interpreter do not have yet: export it with `yolo export`"
        );
    }
    match tensor_attr_shape(root, "pe") {
        Some(shape) => format!(
            "'{key}' is a {class} (YOLOE): its head {layers} scores classes against the prompt embeddings, which the checkpoint holds (`pe` {shape:?}, saved by set_classes), so no text encoder is needed, but `yolo export` first fuses them into each level's class convolution (BNContrastiveHead's BatchNorm and logit scale folded in: YOLOEDetect.fuse), which fuse-ema does not do yet: export it with `yolo export`"
        ),
        None => format!(
            "'{key}' is a {class} (YOLOE): its head {layers} scores classes against prompt embeddings, and the checkpoint has none (`pe`): they come from its text encoder ({text_model}), which fuse-ema does not run; call `model.set_classes(names, model.get_text_pe(names))` in Ultralytics and save the model first"
        ),
    }
}
