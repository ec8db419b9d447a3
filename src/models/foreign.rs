//! Model classes fuse-ema recognises but does not export, each with the reason in the error: the
//! classic YOLOv5 / YOLOv7 repositories' models (whose classes share Ultralytics' short names but
//! not their heads) and Ultralytics models whose layers take more than the image.

use crate::checkpoint::module;
use crate::checkpoint::py::M;

/// Why the pickled root `root` (found under `key`) is not exported, or `None` when it is an
/// Ultralytics (`ultralytics.*`) model class the registry does not refuse.
pub fn refusal(root: M, key: &str) -> Option<String> {
    let dotted = module::class_name(root.g, root.v)?;
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop())
        .map(|(_, h)| h);
    let head_class = head.map(|h| h.class()).unwrap_or_default();
    if !dotted.starts_with("ultralytics.") {
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
            "'{key}' is a {dotted} from {origin}{head_note}, not an Ultralytics model; fuse-ema exports ultralytics.nn.tasks models only"
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
fn text_layers(root: M) -> Vec<&'static str> {
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
fn tensor_attr_shape(m: M, name: &str) -> Option<Vec<usize>> {
    m.attr(name)
        .and_then(|v| m.g.tensor(v))
        .map(|t| t.shape.clone())
}

/// YOLO-World (`yolov8-world`, `yolov8-worldv2`): what the checkpoint holds decides what is
/// missing. Its trainer calls `set_classes(names)` before training, so a trained checkpoint
/// holds the CLIP embeddings of its own class names.
fn world(root: M, key: &str) -> String {
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
fn yoloe(root: M, key: &str) -> String {
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
