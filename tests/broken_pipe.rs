//! A reader that stops early (`fuse-ema … --json | head`) ends the process the way it ends `cat`:
//! killed by SIGPIPE, with no panic message, and any output file already complete.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

/// Runs the binary with stdout connected to a pipe whose read end is already closed, so the
/// first write fails deterministically (no race with a reader).
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("binary runs")
}

fn assert_ended_by_sigpipe(o: &Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "killed by SIGPIPE like cat; status {:?}, stderr {stderr}",
        o.status
    );
}

#[test]
fn inspect_json_into_a_closed_pipe_ends_quietly() {
    let ckpt = common::fixture("yolov8-best.pt");
    let o = run_into_closed_pipe(&["inspect", "--json", ckpt.to_str().unwrap()]);
    assert_ended_by_sigpipe(&o);
}

#[test]
fn fold_report_into_a_closed_pipe_leaves_a_complete_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ema.safetensors");
    let ckpt = common::fixture("yolov8-best.pt");
    let o = run_into_closed_pipe(&[
        "fold",
        "--json",
        ckpt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ended_by_sigpipe(&o);
    // The report is printed after the rename, so the output is whole and parses.
    let bytes = std::fs::read(&out).expect("output written before the report");
    safetensors::SafeTensors::deserialize(&bytes).expect("complete safetensors");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporaries: {leftovers:?}");
}
