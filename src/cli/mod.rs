//! Command-line parsing and dispatch. Logic lives in the library; this module only turns
//! arguments into calls and results into text, JSON and exit codes.

mod average;
mod commands;
mod export;
mod graft;
mod manual;
mod progress;
mod render;
mod strip;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code: everything passed.
pub const EXIT_OK: i32 = 0;
/// Exit code: a check failed (dangerous globals, drift, parity).
pub const EXIT_CHECK_FAILED: i32 = 1;
/// Exit code: bad input or usage.
pub const EXIT_BAD_INPUT: i32 = 2;

#[derive(Parser)]
#[command(
    name = "fuse-ema",
    version,
    about = "Read training checkpoints safely, find the EMA weights, and ship them.",
    long_about = "Read training checkpoints safely (no pickle code ever runs), find the EMA \
                  weights, and ship them.\n\nExit codes: 0 ok, 1 a check failed, 2 bad input or usage.",
    after_help = "Examples:\n  fuse-ema best.pt -o model.onnx\n  fuse-ema inspect best.pt\n  fuse-ema fold last.pt -o model.safetensors\n  fuse-ema diff last.pt --fail-above 0.05\n  fuse-ema inspect last.pt --json | jq .layout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Refusing checkpoints whose globals fail the allow-list check.
#[derive(clap::Args, Clone, Default)]
struct StrictArgs {
    /// Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its
    /// role, dotted, or part of a gadget chain (docs/security.md).
    #[arg(long)]
    strict: bool,
    /// Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE`
    /// (class, namespace, enum, container, value, rebuild), or the classes of a package and its
    /// submodules, `mypkg.models.*`.
    #[arg(long, value_name = "NAME")]
    allow: Vec<String>,
}

impl StrictArgs {
    /// The allow-list with the user's additions, or the exit code of a usage error.
    fn allow_list(&self) -> Result<crate::checkpoint::judge::AllowList, i32> {
        crate::checkpoint::judge::AllowList::with_user(&self.allow).map_err(fail)
    }
}

/// Where the EMA and raw weights are, when the automatic search is not wanted.
#[derive(clap::Args, Clone, Default)]
struct SelectArgs {
    /// Take the EMA from this weight set (`state_dict_ema`, `ema.module`) or key prefix (`model_ema.`).
    #[arg(long, value_name = "SELECTOR")]
    ema: Option<String>,
    /// Take the raw weights from this weight set or key prefix.
    #[arg(long, value_name = "SELECTOR")]
    raw: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a checkpoint holds: format, entries, metadata, weight sets, EMA layout, globals.
    #[command(
        after_help = "Examples:\n  fuse-ema inspect best.pt\n  fuse-ema inspect last.pt --json\n  fuse-ema inspect best.pt --tree\n  fuse-ema inspect shards/   # a folder with model.safetensors.index.json\n  fuse-ema inspect download.pt --strict   # refuse anything beyond tensors, containers, model classes\n  fuse-ema inspect mine.pt --allow 'mypkg.models.*'   # also accept your own model classes\n  fuse-ema inspect --strict --format sarif models/*.pt > fuse-ema.sarif   # code scanning\n\nExit codes: 0 every global is on the allow-list and used as its role allows, 1 a finding (a\ndangerous or unknown global, a class called, a dotted name, a gadget chain), 2 the file cannot be read\n(1 when the globals it named before the read failed are already findings). With several files:\n1 when any has a finding, else 2 when any cannot be read, else 0."
    )]
    Inspect(InspectArgs),
    /// Write the EMA weights alone, under the model's own names (.safetensors or .pt).
    #[command(
        after_help = "Examples:\n  fuse-ema fold last.pt -o model.safetensors\n  fuse-ema fold last.ckpt -o ema.pt --dtype f16\n  fuse-ema fold train.pth.tar -o out/model.safetensors --max-shard-size 2GB\n  fuse-ema fold ckpt.pt -o ema.safetensors --ema model_ema. --raw model.\n\nFloating tensors come from the EMA, integer buffers (num_batches_tracked) from the raw model.\nThe output is written to a temporary file and renamed: a failed run leaves nothing behind.\nExit codes: 0 written, 1 refused by --strict, 2 no EMA / ambiguous / unreadable input / cannot write."
    )]
    Fold(FoldArgs),
    /// Measure how far the EMA has drifted from the raw weights (or one checkpoint from another).
    #[command(
        after_help = "Examples:\n  fuse-ema diff last.pt\n  fuse-ema diff last.pt --top 20 --plot drift.svg\n  fuse-ema diff last.pt --fail-above 0.05      # CI gate\n  fuse-ema diff new.pt --against old.pt --json\n\nPer tensor: max |Δ|, mean |Δ|, relative L2 ‖Δ‖/‖raw‖, cosine similarity (in f64).\nExit codes: 0 ok, 1 a tensor drifted above --fail-above, 2 bad input."
    )]
    Diff(DiffArgs),
    /// Build an ONNX model from the checkpoint's own module tree, EMA weights folded in.
    #[command(
        after_help = "Examples:\n  fuse-ema export best.pt -o model.onnx\n  fuse-ema best.pt -o model.onnx            # the same (shorthand)\n  fuse-ema export last.pt -o model.onnx --imgsz 640 --batch 1\n  fuse-ema export last.pt -o model.onnx --dynamic --half\n  fuse-ema export best.pt -o model.onnx --nms --conf 0.25 --iou 0.7 --max-det 300\n  fuse-ema export yolo26n.pt -o e2e.onnx --end2end --max-det 100   # NMS-free top-k rows\n  fuse-ema export yolov5-style.pt -o raw.onnx --source raw   # deliberately the raw weights\n\nDefaults: the checkpoint's training imgsz, batch 1, opset 17, EMA weights.\nInput `images` (B,3,H,W) float32; output `output0` as Ultralytics exports it; metadata that\nUltralytics' AutoBackend reads. --dynamic makes batch, height and width dynamic (anchors are\ncomputed in the graph; parity runs at the training size or --imgsz). --nms embeds NMS as `yolo\nexport nms=True` does: output0 (B, max-det, 6 + extra) rows x1 y1 x2 y2 score class extra….\n--end2end (YOLOv10, YOLO26) gives the one-to-one head's top-k rows, as `yolo export nms=False`.\nParity (on by default): the ONNX runs in ONNX Runtime, the checkpoint in the reference\ninterpreter, on seeded inputs; outputs and detections are compared. On a parity failure the\nmodel is kept as OUT.parity-failed.onnx, never as OUT.\nExit codes: 0 written and parity passed, 1 parity failed or refused by --strict, 2 unsupported\nmodel / bad input."
    )]
    Export(ExportArgs),
    /// Check an ONNX model against a checkpoint's EMA: outputs, and which weights it holds.
    #[command(
        after_help = "Examples:\n  fuse-ema verify model.onnx --checkpoint best.pt\n  fuse-ema verify yolo-exported.onnx --checkpoint last.pt --json\n  fuse-ema verify model.onnx --checkpoint last.pt --golden io.npz\n  fuse-ema verify model.onnx --checkpoint best.pt --parity-samples 8 --seed 1234\n\nRuns the ONNX in ONNX Runtime and the checkpoint's EMA in the reference interpreter on the\nONNX's input shape (seeded inputs from a fresh seed each run, printed; --seed reruns one);\ncompares outputs and detections; compares the ONNX initializers with the EMA and raw weights\n(BatchNorm folded) and says plainly when the ONNX holds the raw weights; compares the metadata\nUltralytics acts on (names, stride, task, imgsz, kpt_shape). A graph this reader cannot read\nexactly (a name defined twice, an NMS threshold that is not one constant) is refused.\nExit codes: 0 verified, 1 parity failed, not the EMA's weights or metadata differs, 2 bad input."
    )]
    Verify(VerifyArgs),
    /// Put a checkpoint's EMA into an ONNX model exported from its raw weights (any exporter, any architecture).
    #[command(
        after_help = "Examples:\n  fuse-ema graft raw.onnx --checkpoint last.pth.tar -o ema.onnx\n  fuse-ema graft yolo-raw.onnx --checkpoint last.pt -o yolo-ema.onnx --json\n  fuse-ema graft vit.onnx --checkpoint ckpt.pt -o out.onnx --input-shape 1,3,224,224\n  fuse-ema graft m.onnx --checkpoint ckpt.pt -o out.onnx --ema model_ema. --raw model. --all\n\nEach initializer is matched against the raw weights: by name (values checked), by value\n(unchanged, reshaped or transposed), or as a Conv+BatchNorm fold recomputed as the exporters\ndo; it is then replaced by the same function of the EMA. Constants from no weight are left\nalone. Afterwards the original and grafted models run in ONNX Runtime (tract when absent) on\nthe same seeded inputs and the output drift is reported.\nExit codes: 0 written, 1 an initializer that looks like a weight matched nothing (or several\ndifferent EMAs) and --allow-unmatched was not given, or the grafted model does not run where\nthe original does (nothing written), or refused by --strict; 2 bad input or usage."
    )]
    Graft(GraftArgs),
    /// Average several checkpoints: SWA / a model soup, a weighted average, or an EMA replayed over saved checkpoints.
    #[command(
        after_help = "Examples:\n  fuse-ema average epoch10.pt epoch11.pt epoch12.pt -o swa.safetensors          # SWA / soup\n  fuse-ema average a.pt b.pt -o soup.pt --weights 0.7,0.3\n  fuse-ema average epoch*.pt -o ema.safetensors --ema-decay 0.9999 --every 500  # EMA replay\n  fuse-ema average run1/last.pt run2/last.pt -o mix.safetensors --source raw\n\nEach checkpoint contributes its EMA (integer buffers from its raw model) when it has one, else\nits only weight set; --source raw takes the raw weights. Uniform is AveragedModel's running\nmean; the EMA replay starts from the first checkpoint and applies d^every per checkpoint;\nweighted sums run in f64. BatchNorm statistics are averaged like parameters (recalibrate when\nthe checkpoints come from different runs); integer buffers come from the last checkpoint.\nStreams tensor by tensor: memory stays at about one tensor per input.\nExit codes: 0 written, 1 refused by --strict, 2 inputs of different models / no weights /\nbad input."
    )]
    Average(AverageArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  fuse-ema completions bash > ~/.local/share/bash-completion/completions/fuse-ema\n  fuse-ema completions zsh > ~/.zfunc/_fuse-ema      # with fpath+=~/.zfunc in ~/.zshrc\n  fuse-ema completions fish > ~/.config/fish/completions/fuse-ema.fish\n  fuse-ema completions powershell >> $PROFILE\n\nExit codes: 0 printed, 2 usage."
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a folder.
    #[command(
        after_help = "Examples:\n  fuse-ema man | man -l -\n  fuse-ema man --dir ~/.local/share/man/man1   # fuse-ema.1, fuse-ema-inspect.1, …\n\nExit codes: 0 written, 2 the folder cannot be written."
    )]
    Man(ManArgs),
    /// Make a training checkpoint deployable: the EMA as the weights, training state dropped.
    #[command(
        after_help = "Examples:\n  fuse-ema strip last.pt -o best-stripped.pt          # Ultralytics: what strip_optimizer writes\n  fuse-ema strip last.pt -o model-f32.pt --dtype f32\n  fuse-ema strip last.pth.tar -o clean.pth.tar --keep-structure     # timm: state_dict <- state_dict_ema\n  fuse-ema strip epoch_12.pth -o deploy.pth --keep-structure        # mmengine EMAHook\n  fuse-ema strip last.ckpt -o ema.ckpt --keep-structure --keep-optimizer   # Lightning\n  fuse-ema strip last.pt -o small.pt --json\n\nUltralytics / YOLOv5: the object graph the checkpoint's own release's strip_optimizer writes\n(EMA in `model`, f16, requires_grad off, optimizer/ema/updates/... set to None, train_args\nlimited to the default keys; date and version kept from the checkpoint). --keep-structure:\nthe container as it is, the EMA where timm, mmengine or Lightning loads its weights from.\nNo pickle code runs: the file is decoded inert and written again (docs/surgery.md).\nA file whose globals would run code is never written again; --strict refuses anything off\nthe allow-list too. The output is written to a temporary file and renamed.\nExit codes: 0 written, 1 refused (dangerous globals, --strict), 2 bad input or unknown layout."
    )]
    Strip(StripArgs),
}

#[derive(clap::Args)]
struct GraftArgs {
    /// ONNX model exported from the checkpoint's raw weights.
    model: PathBuf,
    /// The training checkpoint holding the raw weights and their EMA.
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Output .onnx file (never one of the inputs; written whole or not at all).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    select: SelectArgs,
    /// Leave initializers that look like weights but match nothing as they are, instead of failing.
    #[arg(long)]
    allow_unmatched: bool,
    /// Do not run the two models to measure output drift.
    #[arg(long)]
    no_drift: bool,
    /// Runtime for the drift run: ort (ONNX Runtime) or tract; auto takes ONNX Runtime when found.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ort", "tract"])]
    runtime: String,
    /// Shape of a dynamic input for the drift run, per input in order (e.g. 1,3,224,224).
    #[arg(long, value_name = "DIMS")]
    input_shape: Vec<String>,
    /// List constants too in the text report.
    #[arg(long)]
    all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

#[derive(clap::Args)]
struct AverageArgs {
    /// Checkpoints of one model, in order (the EMA replay runs oldest to newest).
    #[arg(required = true, num_args = 2.., value_name = "CKPT")]
    files: Vec<PathBuf>,
    /// Output: `.safetensors`, or `.pt` / `.pth` / `.bin` for a torch state dict.
    #[arg(short, long)]
    output: PathBuf,
    /// Equal weights (the default): SWA, a uniform model soup.
    #[arg(long, conflicts_with_all = ["weights", "ema_decay"])]
    uniform: bool,
    /// One weight per checkpoint, normalised by their sum (`0.7,0.3`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "W,…",
        conflicts_with = "ema_decay"
    )]
    weights: Option<Vec<f64>>,
    /// Replay an EMA with this per-step decay over the checkpoints in order.
    #[arg(long, value_name = "D")]
    ema_decay: Option<f64>,
    /// With --ema-decay: the checkpoints were saved this many steps apart.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "ema_decay")]
    every: u32,
    /// Which weights of each checkpoint: ema (its EMA where it has one) or raw.
    #[arg(long, value_enum, default_value_t = AverageSource::Ema)]
    source: AverageSource,
    /// dtype of floating tensors written: keep, f32, f16, bf16.
    #[arg(long, default_value = "keep", value_name = "DTYPE")]
    dtype: String,
    /// Write a deployable Ultralytics `.pt`: the last checkpoint stripped as `fuse-ema strip`
    /// strips it (f16 unless `--dtype f32`), with the average as its model.
    #[arg(long)]
    strip: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

/// `average --source`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum AverageSource {
    /// The EMA where a checkpoint has one.
    Ema,
    /// The raw (trained) weights.
    Raw,
}

#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
struct ManArgs {
    /// Write fuse-ema.1 and fuse-ema-<command>.1 into this folder instead of printing fuse-ema.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct StripArgs {
    /// Training checkpoint (Ultralytics last.pt / epochN.pt, timm, mmengine, Lightning).
    file: PathBuf,
    /// Output .pt / .pth / .ckpt file.
    #[arg(short, long)]
    output: PathBuf,
    /// dtype of the model's floating tensors (Ultralytics): f16 (default, as strip_optimizer) or f32.
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<String>,
    /// Keep the container (timm, mmengine, Lightning) and put the EMA where the framework loads
    /// weights from; optimizer and scheduler state are dropped.
    #[arg(long)]
    keep_structure: bool,
    /// With --keep-structure, keep optimizer and scheduler state.
    #[arg(long)]
    keep_optimizer: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

/// `--parity-budget`: seconds, a finite number ≥ 0.
fn parse_budget(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("expected seconds (a number ≥ 0), got `{s}`"))
}

/// How parity is checked.
#[derive(clap::Args, Clone)]
struct ParityArgs {
    /// Seeded uniform [0,1) input batches to compare on.
    #[arg(long, default_value_t = 1, value_name = "N")]
    parity_samples: usize,
    /// The first seeded batch's seed (the others follow it). verify draws a fresh one per run
    /// unless given, so an ONNX cannot recognise its inputs, and reports it so a failure can be
    /// rerun; export's own check uses 0.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Stop checking further seeded batches once parity has run this long (the first batch
    /// always runs; the report says how many were checked; no default: every batch runs), e.g.
    /// `--parity-samples 8 --parity-budget 30`.
    #[arg(long, value_name = "SECONDS", value_parser = parse_budget)]
    parity_budget: Option<std::time::Duration>,
    /// Compare on this image (jpg/png), letterboxed as Ultralytics does, instead of random inputs.
    #[arg(long, value_name = "IMAGE")]
    parity_input: Option<PathBuf>,
    /// Compare with a golden .npz holding `images` and PyTorch's `output0`, `output1`, … instead.
    #[arg(long, value_name = "IO.npz")]
    golden: Option<PathBuf>,
    /// Absolute tolerance (default 1e-4; 1e-2 for f16 models).
    #[arg(long)]
    atol: Option<f64>,
    /// Tolerance relative to the largest reference magnitude in each channel (default 1e-3; 1e-2
    /// for f16).
    #[arg(long)]
    rtol: Option<f64>,
    /// Runtime that runs the ONNX: ort (ONNX Runtime) or tract; auto takes ONNX Runtime when found.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ort", "tract"])]
    runtime: String,
    /// ONNX Runtime execution provider (fails loudly if the loaded ONNX Runtime lacks it).
    #[arg(long, value_parser = ["cuda", "tensorrt"])]
    ep: Option<String>,
    /// Write the parity report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// ONNX model made by any exporter (e.g. `yolo export`).
    model: PathBuf,
    /// The training checkpoint it should come from.
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    parity: ParityArgs,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Ultralytics training checkpoint (best.pt, last.pt, …).
    file: PathBuf,
    /// Output .onnx file.
    #[arg(short, long)]
    output: PathBuf,
    /// Input size: N, or H,W. Default: the training size.
    #[arg(long, value_name = "N|H,W")]
    imgsz: Option<String>,
    /// Batch size of the input.
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// Dynamic batch, height and width (anchors computed in the graph), as Ultralytics'
    /// `dynamic=True`.
    #[arg(long)]
    dynamic: bool,
    /// NMS-free output of YOLOv10 / YOLO26 heads, as `yolo export nms=False`: the one-to-one
    /// branches, top-k inside the graph, output0 (B, max-det, 6 + extra): x1 y1 x2 y2 score class
    /// (OBB: cx cy w h score class angle), then mask coefficients or keypoints.
    #[arg(long, conflicts_with = "nms")]
    end2end: bool,
    /// Embed NMS in the graph (detect, segment, pose, obb), as `yolo export nms=True`: output0
    /// becomes (B, max-det, 6 + extra) rows, x1 y1 x2 y2 score class then masks or keypoints (obb:
    /// cx cy w h score class angle).
    #[arg(long)]
    nms: bool,
    /// --nms: keep detections whose best class score is above this.
    #[arg(long, default_value_t = 0.25, value_name = "SCORE", requires = "nms")]
    conf: f32,
    /// --nms: suppress a box overlapping a better one by more than this IoU.
    #[arg(long, default_value_t = 0.7, value_name = "IOU", requires = "nms")]
    iou: f32,
    /// Detection rows per image of the --nms output, or rows kept by --end2end (clamped to the
    /// number of anchors there, as Ultralytics does).
    #[arg(long, default_value_t = 300, value_name = "N")]
    max_det: usize,
    /// --nms: one NMS across classes instead of one per class.
    #[arg(long, requires = "nms")]
    agnostic: bool,
    /// ONNX opset (13–21; 17 suits TensorRT 8.6+).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// f16 weights and compute, f32 input and output.
    #[arg(long)]
    half: bool,
    /// Which weights: ema (default) or raw.
    #[arg(long, default_value = "ema", value_parser = ["ema", "raw"])]
    source: String,
    /// Skip the parity check.
    #[arg(long)]
    no_parity: bool,
    /// Write the weights to OUT.onnx.data beside the model (automatic above 1.9 GB).
    #[arg(long)]
    external_data: bool,
    #[command(flatten)]
    parity: ParityArgs,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

/// How `inspect` reports.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug, Default)]
enum InspectFormat {
    /// Readable text.
    #[default]
    Text,
    /// The report as JSON (docs/inspect-json.md); an array of reports for several files.
    Json,
    /// SARIF 2.1.0 for code scanning: one result per finding, at its file (docs/ci.md).
    Sarif,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// Checkpoints: .pt .pth .ckpt .bin .pth.tar, legacy torch, .safetensors, a shard index or its
    /// folder. Several files are judged one by one (as a pre-commit hook passes them).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print the report as JSON (schema: docs/inspect-json.md); the same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Text)]
    format: InspectFormat,
    /// Print only the verdict lines of files with findings or errors (on stderr), no reports:
    /// what a pre-commit hook or a CI gate wants.
    #[arg(short, long, conflicts_with_all = ["json", "format", "tree"])]
    quiet: bool,
    /// Also print the module tree with classes.
    #[arg(long)]
    tree: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

#[derive(clap::Args)]
struct FoldArgs {
    /// Training checkpoint.
    file: PathBuf,
    /// Output: `.safetensors`, or `.pt` / `.pth` / `.bin` for a torch state dict.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    select: SelectArgs,
    /// Fold even when names are missing on either side or shapes differ (missing ones come from the raw model).
    #[arg(long)]
    allow_missing: bool,
    /// dtype of floating tensors: keep, f32, f16, bf16.
    #[arg(long, default_value = "keep", value_name = "DTYPE")]
    dtype: String,
    /// Write Hugging Face-style shards of at most this size (e.g. 2GB, 500MB) plus an index (safetensors only).
    #[arg(long, value_name = "SIZE")]
    max_shard_size: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    strict: StrictArgs,
}

#[derive(clap::Args)]
struct DiffArgs {
    /// Checkpoint whose EMA is compared with its raw weights.
    file: PathBuf,
    /// Compare the EMA of FILE with the EMA of this checkpoint instead.
    #[arg(long, value_name = "OTHER")]
    against: Option<PathBuf>,
    #[command(flatten)]
    select: SelectArgs,
    /// Print the full comparison as JSON.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of relative drift by layer and of the most drifted tensors.
    #[arg(long, value_name = "SVG")]
    plot: Option<PathBuf>,
    /// How many of the most drifted tensors to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    top: usize,
    /// Exit 1 when any tensor's relative L2 drift is above this.
    #[arg(long, value_name = "REL")]
    fail_above: Option<f64>,
}

/// Runs the command line; returns the process exit code.
pub fn run() -> i32 {
    // `fuse-ema CKPT -o OUT.onnx` is shorthand for `fuse-ema export CKPT -o OUT.onnx`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = <Cli as clap::CommandFactory>::command();
    if let Some(first) = args.get(1).and_then(|a| a.to_str())
        && !first.starts_with('-')
        && first != "help"
        && cmd.find_subcommand(first).is_none()
    {
        args.insert(1, "export".into());
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_OK
            };
        }
    };
    match cli.command {
        Command::Inspect(a) => commands::inspect(a),
        Command::Average(a) => average::average(a),
        Command::Completions(a) => {
            manual::completions(a.shell, &mut <Cli as clap::CommandFactory>::command())
        }
        Command::Man(a) => manual::man(a.dir.as_deref(), <Cli as clap::CommandFactory>::command()),
        Command::Fold(a) => commands::fold(a),
        Command::Diff(a) => commands::diff(a),
        Command::Export(a) => export::export(a),
        Command::Verify(a) => export::verify(a),
        Command::Graft(a) => graft::graft(a),
        Command::Strip(a) => strip::strip(a),
    }
}

/// Opens a checkpoint for a command, judged under `--strict` ([`crate::pipeline::open_checked`]):
/// the checkpoint, or the exit code to stop with — 1 for a strict refusal (also of an unreadable
/// file whose pickles already named refused globals), 2 for a file that cannot be read or a
/// malformed `--allow` (a usage error with or without `--strict`).
fn open_checked(
    path: &std::path::Path,
    s: &StrictArgs,
) -> Result<crate::checkpoint::Checkpoint, i32> {
    open_deferred(path, s).map_err(|report| report())
}

/// [`open_checked`], its failure reported only when the caller runs what it returns (which
/// prints the error and gives the exit code): `export` reports a runtime error first.
fn open_deferred(
    path: &std::path::Path,
    s: &StrictArgs,
) -> Result<crate::checkpoint::Checkpoint, Box<dyn FnOnce() -> i32>> {
    let allow = crate::checkpoint::judge::AllowList::with_user(&s.allow);
    let strict = allow.as_ref().ok().filter(|_| s.strict);
    match crate::pipeline::open_checked(path, strict) {
        Ok(c) => match allow {
            Ok(_) => Ok(c),
            Err(e) => Err(Box::new(move || fail(e))),
        },
        Err(crate::pipeline::OpenError::Read(e)) => Err(Box::new(move || fail(e))),
        Err(crate::pipeline::OpenError::Refused {
            path,
            findings,
            read_error,
        }) => Err(Box::new(move || {
            if let Some(e) = read_error {
                eprintln!("fuse-ema: error: {e}");
            }
            strict_message(&path, &findings);
            EXIT_CHECK_FAILED
        })),
    }
}

/// The one-line `--strict` refusal on stderr, naming every finding.
fn strict_message(path: &std::path::Path, findings: &[crate::checkpoint::judge::Finding]) {
    eprintln!(
        "fuse-ema: strict: {} refused: {} (see docs/security.md; --allow extends the allow-list)",
        path.display(),
        crate::checkpoint::judge::summary(findings)
    );
}

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("fuse-ema: error: {message}");
    EXIT_BAD_INPUT
}
