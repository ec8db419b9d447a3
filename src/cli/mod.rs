//! Command-line parsing and dispatch. Logic lives in the library; this module only turns
//! arguments into calls and results into text, JSON and exit codes.

mod commands;
mod export;
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
        after_help = "Examples:\n  fuse-ema inspect best.pt\n  fuse-ema inspect last.pt --json\n  fuse-ema inspect best.pt --tree\n  fuse-ema inspect shards/   # a folder with model.safetensors.index.json\n  fuse-ema inspect download.pt --strict   # refuse anything beyond tensors, containers, model classes\n  fuse-ema inspect mine.pt --allow 'mypkg.models.*'   # also accept your own model classes\n\nExit codes: 0 every global is on the allow-list and used as its role allows, 1 a finding (a\ndangerous or unknown global, a class called, a dotted name, a gadget chain), 2 the file cannot be read\n(1 when the globals it named before the read failed are already findings)."
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
        after_help = "Examples:\n  fuse-ema export best.pt -o model.onnx\n  fuse-ema best.pt -o model.onnx            # the same (shorthand)\n  fuse-ema export last.pt -o model.onnx --imgsz 640 --batch 1\n  fuse-ema export last.pt -o model.onnx --dynamic --half\n  fuse-ema export yolov5-style.pt -o raw.onnx --source raw   # deliberately the raw weights\n\nDefaults: the checkpoint's training imgsz, batch 1, opset 17, EMA weights.\nInput `images` (B,3,H,W) float32; output `output0` as Ultralytics exports it; metadata that\nUltralytics' AutoBackend reads. --dynamic makes the batch dynamic (height and width stay fixed:\nanchors are constants).\nParity (on by default): the ONNX runs in ONNX Runtime, the checkpoint in the reference\ninterpreter, on seeded inputs; outputs and detections are compared. On a parity failure the\nmodel is kept as OUT.parity-failed.onnx, never as OUT.\nExit codes: 0 written and parity passed, 1 parity failed or refused by --strict, 2 unsupported\nmodel / bad input."
    )]
    Export(ExportArgs),
    /// Check an ONNX model against a checkpoint's EMA: outputs, and which weights it holds.
    #[command(
        after_help = "Examples:\n  fuse-ema verify model.onnx --checkpoint best.pt\n  fuse-ema verify yolo-exported.onnx --checkpoint last.pt --json\n  fuse-ema verify model.onnx --checkpoint last.pt --golden io.npz\n\nRuns the ONNX in ONNX Runtime and the checkpoint's EMA in the reference interpreter on the\nONNX's input shape; compares outputs and detections; compares the ONNX initializers with the EMA\nand raw weights (BatchNorm folded) and says plainly when the ONNX holds the raw weights.\nExit codes: 0 verified, 1 parity failed or not the EMA's weights, 2 bad input."
    )]
    Verify(VerifyArgs),
    /// Make a training checkpoint deployable: the EMA as the weights, training state dropped.
    #[command(
        after_help = "Examples:\n  fuse-ema strip last.pt -o best-stripped.pt          # Ultralytics: what strip_optimizer writes\n  fuse-ema strip last.pt -o model-f32.pt --dtype f32\n  fuse-ema strip last.pth.tar -o clean.pth.tar --keep-structure     # timm: state_dict <- state_dict_ema\n  fuse-ema strip epoch_12.pth -o deploy.pth --keep-structure        # mmengine EMAHook\n  fuse-ema strip last.ckpt -o ema.ckpt --keep-structure --keep-optimizer   # Lightning\n  fuse-ema strip last.pt -o small.pt --json\n\nUltralytics / YOLOv5: the object graph the checkpoint's own release's strip_optimizer writes\n(EMA in `model`, f16, requires_grad off, optimizer/ema/updates/... set to None, train_args\nlimited to the default keys; date and version kept from the checkpoint). --keep-structure:\nthe container as it is, the EMA where timm, mmengine or Lightning loads its weights from.\nNo pickle code runs: the file is decoded inert and written again (docs/surgery.md).\nA file whose globals would run code is never written again; --strict refuses anything off\nthe allow-list too. The output is written to a temporary file and renamed.\nExit codes: 0 written, 1 refused (dangerous globals, --strict), 2 bad input or unknown layout."
    )]
    Strip(StripArgs),
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

/// How parity is checked.
#[derive(clap::Args, Clone)]
struct ParityArgs {
    /// Seeded uniform [0,1) input batches to compare on.
    #[arg(long, default_value_t = 1, value_name = "N")]
    parity_samples: usize,
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
    /// Dynamic batch dimension.
    #[arg(long)]
    dynamic: bool,
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

#[derive(clap::Args)]
struct InspectArgs {
    /// Checkpoint: .pt .pth .ckpt .bin .pth.tar, legacy torch, .safetensors, a shard index or its folder.
    file: PathBuf,
    /// Print the report as JSON (schema: docs/inspect-json.md).
    #[arg(long)]
    json: bool,
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
    let known = [
        "inspect", "fold", "diff", "export", "verify", "strip", "help",
    ];
    if let Some(first) = args.get(1).and_then(|a| a.to_str())
        && !first.starts_with('-')
        && !known.contains(&first)
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
        Command::Fold(a) => commands::fold(a),
        Command::Diff(a) => commands::diff(a),
        Command::Export(a) => export::export(a),
        Command::Verify(a) => export::verify(a),
        Command::Strip(a) => strip::strip(a),
    }
}

/// With `--strict`, refuses a checkpoint whose globals fail the allow-list check: the exit code
/// to stop with, or `None` to go on. A malformed `--allow` is a usage error with or without it.
fn strict_refusal(ckpt: &crate::checkpoint::Checkpoint, s: &StrictArgs) -> Option<i32> {
    let allow = match s.allow_list() {
        Ok(a) => a,
        Err(code) => return Some(code),
    };
    if !s.strict {
        return None;
    }
    let refusal = crate::checkpoint::judge::strict_check(ckpt.graph.uses(), &allow).err()?;
    strict_message(&ckpt.path, &refusal.0);
    Some(EXIT_CHECK_FAILED)
}

/// Opens a checkpoint for a command with `--strict`: a file that cannot be read is exit 2, unless
/// `--strict` is on and the globals its pickles named before the failure already fail the
/// judgement — then it is a strict refusal (exit 1), as for a readable file.
fn open_strict(
    path: &std::path::Path,
    s: &StrictArgs,
) -> Result<crate::checkpoint::Checkpoint, i32> {
    match crate::io::open(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            if s.strict
                && let Ok(allow) = s.allow_list()
                && let Err(refusal) = crate::checkpoint::judge::strict_check(&e.named, &allow)
            {
                eprintln!("fuse-ema: error: {e}");
                strict_message(path, &refusal.0);
                return Err(EXIT_CHECK_FAILED);
            }
            Err(fail(e))
        }
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
