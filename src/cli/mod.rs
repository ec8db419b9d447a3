//! Command-line parsing and dispatch. Logic lives in the library; this module only turns
//! arguments into calls and results into text, JSON and exit codes.

mod render;

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
    after_help = "Examples:\n  fuse-ema inspect best.pt\n  fuse-ema inspect last.pt --json | jq .weight_sets\n  fuse-ema inspect model.safetensors.index.json --tree"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a checkpoint holds: format, entries, metadata, weight sets, referenced globals.
    #[command(
        after_help = "Examples:\n  fuse-ema inspect best.pt\n  fuse-ema inspect last.pt --json\n  fuse-ema inspect best.pt --tree\n  fuse-ema inspect shards/   # a folder with model.safetensors.index.json\n\nExit codes: 0 nothing dangerous, 1 the file names dangerous globals (os.system, eval, …),\n2 the file cannot be read."
    )]
    Inspect(InspectArgs),
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
}

/// Runs the command line; returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
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
        Command::Inspect(a) => inspect(a),
    }
}

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("fuse-ema: error: {message}");
    EXIT_BAD_INPUT
}

fn inspect(a: InspectArgs) -> i32 {
    let ckpt = match crate::io::open(&a.file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let report = match crate::inspect::inspect(&ckpt, a.tree) {
        Ok(r) => r,
        Err(e) => return fail(format_args!("{}: {e}", a.file.display())),
    };
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
        }
    } else {
        print!("{}", render::inspect_text(&report));
    }
    if report.dangerous.is_empty() {
        EXIT_OK
    } else {
        eprintln!(
            "fuse-ema: DANGER: {} names {} dangerous global(s): {}",
            a.file.display(),
            report.dangerous.len(),
            report
                .dangerous
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        EXIT_CHECK_FAILED
    }
}
