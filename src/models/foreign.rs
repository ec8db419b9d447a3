//! Model classes fuse-ema recognises but does not export, each with the reason in the error: the
//! classic YOLOv5 / YOLOv7 repositories' models (whose classes share Ultralytics' short names but
//! not their heads) and Ultralytics models whose layers take more than the image.

use crate::checkpoint::module;
use crate::checkpoint::py::ModuleRef;

/// Why the pickled root `root` (found under `key`) is not exported, or `None` when it is an
/// Ultralytics (`ultralytics.*`) model class the registry does not refuse.
pub fn refusal(root: ModuleRef, key: &str) -> Option<String> {
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
        "YOLOEModel" | "YOLOESegModel" => Some(format!(
            "'{key}' is a {} (YOLOE): its head scores classes against prompt embeddings (`pe`, set by set_classes) that `yolo export` fuses into the class branch; fuse-ema does not do that yet",
            root.class()
        )),
        _ => None,
    }
}

/// YOLO-World: what the checkpoint holds decides what is missing.
fn world(root: ModuleRef, key: &str) -> String {
    let layers = "its C2fAttn layers (MaxSigmoidAttnBlock) and its WorldDetect head (BNContrastiveHead) take the class text embeddings as a second input beside the image features";
    // A plain tensor attribute (`self.txt_feats = …`), not a parameter or buffer.
    let txt_feats = root.attr("txt_feats").and_then(|v| root.g.tensor(v));
    match txt_feats.map(|t| t.shape().to_vec()) {
        Some(shape) => format!(
            "'{key}' is a WorldModel (YOLO-World): {layers}; the checkpoint carries them (`txt_feats` {shape:?}, one per class, no CLIP needed), but fuse-ema's layer walk does not pass a second input yet: export it with `yolo export`"
        ),
        None => format!(
            "'{key}' is a WorldModel (YOLO-World): {layers}, and the checkpoint has no `txt_feats`: embed the class names with its text encoder (CLIP, `model.set_classes(names)`) in Python and save it first"
        ),
    }
}
