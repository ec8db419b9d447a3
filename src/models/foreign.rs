//! Models from outside Ultralytics' `ultralytics.nn.tasks`: the classic YOLOv5 / YOLOv7 detection
//! models fuse-ema exports ([`classic`], with the interface their own export.py writes), and the
//! models it recognises but does not export, each with the reason in the error (the classic
//! repositories' other heads, Ultralytics models whose layers take more than the image).

use crate::checkpoint::module;
use crate::checkpoint::py::M;

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
    pub fn check_options(self, nms: bool, end2end: bool) -> Result<(), String> {
        let what = if nms {
            "--nms"
        } else if end2end {
            "--end2end"
        } else {
            return Ok(());
        };
        Err(format!(
            "{what} is not supported for classic {self:?} models (anchor-based heads export (B, anchors, 5 + nc) rows, as their export.py does)"
        ))
    }
}

/// The classic repository of a detection model fuse-ema exports: the root is
/// `models.yolo.Model` / `DetectionModel` (or the pip package's `yolov5.models.yolo.*`) and the
/// head YOLOv5's `Detect` or YOLOv7's `IDetect` / `IAuxDetect`; `None` for anything else.
pub fn classic(root: M) -> Option<Classic> {
    let dotted = |m: M| {
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
pub fn refusal(root: M, key: &str) -> Option<String> {
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
        "YOLOEModel" | "YOLOESegModel" => Some(format!(
            "'{key}' is a {} (YOLOE): its head scores classes against prompt embeddings (`pe`, set by set_classes) that `yolo export` fuses into the class branch; fuse-ema does not do that yet",
            root.class()
        )),
        _ => None,
    }
}

/// YOLO-World: what the checkpoint holds decides what is missing.
fn world(root: M, key: &str) -> String {
    let layers = "its C2fAttn layers (MaxSigmoidAttnBlock) and its WorldDetect head (BNContrastiveHead) take the class text embeddings as a second input beside the image features";
    // A plain tensor attribute (`self.txt_feats = …`), not a parameter or buffer.
    let txt_feats = root.attr("txt_feats").and_then(|v| root.g.tensor(v));
    match txt_feats.map(|t| t.shape.clone()) {
        Some(shape) => format!(
            "'{key}' is a WorldModel (YOLO-World): {layers}; the checkpoint carries them (`txt_feats` {shape:?}, one per class, no CLIP needed), but fuse-ema's layer walk does not pass a second input yet: export it with `yolo export`"
        ),
        None => format!(
            "'{key}' is a WorldModel (YOLO-World): {layers}, and the checkpoint has no `txt_feats`: embed the class names with its text encoder (CLIP, `model.set_classes(names)`) in Python and save it first"
        ),
    }
}
