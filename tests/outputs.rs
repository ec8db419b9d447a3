//! Output hazards (issue 13): outputs never replace an input (any spelling, any shard), never
//! replace something that is not a regular file, take the umask like `cp`, and leave nothing
//! behind when the process is stopped by a signal; a mapped input truncated mid-read is an error,
//! not a crash. Also the ONNX header and metadata Ultralytics' own tooling expects.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, run, run_json};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir` whose names start with `.fuse-ema-` (temporaries).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".fuse-ema-"))
        })
        .collect()
}

fn assert_refused(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    let e = stderr(o);
    assert!(e.starts_with("fuse-ema: error: "), "{e}");
    assert!(e.contains(needle), "expected '{needle}' in: {e}");
}

#[test]
fn diff_plot_never_replaces_either_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.pt"), dir.path().join("b.pt"));
    std::fs::copy(fixture("yolov8-v80-style.pt"), &a).unwrap();
    std::fs::copy(fixture("yolov8-epoch1.pt"), &b).unwrap();
    let before = std::fs::read(&b).unwrap();
    let o = run(&["diff", s(&a), "--against", s(&b), "--plot", s(&b)]);
    assert_refused(&o, "refusing to overwrite the input");
    assert_eq!(std::fs::read(&b).unwrap(), before, "--against is untouched");
    // Another name for the same file: a hard link.
    let hard = dir.path().join("hard.svg");
    std::fs::hard_link(&a, &hard).unwrap();
    let o = run(&["diff", s(&a), "--plot", s(&hard)]);
    assert_refused(&o, "refusing to overwrite the input");
    // Another path to it: through a symlinked folder.
    let alias = dir.path().join("alias");
    std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
    let o = run(&[
        "diff",
        s(&a),
        "--plot",
        s(&alias.join("b.pt")),
        "--against",
        s(&b),
    ]);
    assert_refused(&o, "refusing to overwrite the input");
    assert_eq!(std::fs::read(&b).unwrap(), before);
    assert!(temporaries(dir.path()).is_empty());
}

/// Splits `ema-prefixed.safetensors` into a two-shard set in `dir` with the given shard names.
fn shard_set(dir: &Path, names: [&str; 2]) {
    let bytes = std::fs::read(fixture("ema-prefixed.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let half = all.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&all[..half], &all[half..]].into_iter().enumerate() {
        for (k, _) in part {
            weight_map.insert(k.clone(), names[i].into());
        }
        safetensors::serialize_to_file(part.to_vec(), None, &dir.join(names[i])).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fold_never_writes_over_a_shard_or_index_of_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    shard_set(&shards, names);
    let before = snapshot(&shards);
    // The set folds (it is a valid input) ...
    let ok = dir.path().join("ok.safetensors");
    let o = run(&["fold", s(&shards), "-o", s(&ok)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // ... but never onto one of its shards, named directly, through the index, or by a shard
    // name the sharded writer would generate, nor onto its index.
    for input in [shards.clone(), shards.join("model.safetensors.index.json")] {
        let o = run(&["fold", s(&input), "-o", s(&shards.join(names[0]))]);
        assert_refused(&o, "refusing to overwrite the input");
        let o = run(&[
            "fold",
            s(&input),
            "-o",
            s(&shards.join(names[1])),
            "--dtype",
            "f16",
        ]);
        assert_refused(&o, "refusing to overwrite the input");
        let o = run(&[
            "fold",
            s(&input),
            "-o",
            s(&shards.join("model.safetensors")),
            "--max-shard-size",
            "1GB",
        ]);
        assert_refused(&o, "model.safetensors.index.json");
    }
    // The sharded writer's own shard names colliding with the input's: the input's shards are
    // named as the output's would be.
    let count = {
        let (code, v) = run_json(&[
            "fold",
            s(&shards),
            "-o",
            s(&dir.path().join("probe.safetensors")),
            "--max-shard-size",
            "1",
            "--json",
        ]);
        assert_eq!(code, 0);
        v["outputs"].as_array().unwrap().len() - 1
    };
    let set2 = dir.path().join("set2");
    std::fs::create_dir(&set2).unwrap();
    let n1 = format!("out-00001-of-{count:05}.safetensors");
    let n2 = format!("out-00002-of-{count:05}.safetensors");
    shard_set(&set2, [&n1, &n2]);
    let before2 = snapshot(&set2);
    let o = run(&[
        "fold",
        s(&set2),
        "-o",
        s(&set2.join("out.safetensors")),
        "--max-shard-size",
        "1",
    ]);
    assert_refused(&o, "refusing to overwrite the input");
    assert_eq!(snapshot(&set2), before2, "nothing written, nothing left");
    assert_eq!(snapshot(&shards), before, "nothing written, nothing left");
}

#[test]
fn targets_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("ema-prefixed.safetensors");
    // A symlink: neither the link nor the file it points to is replaced.
    let pointee = dir.path().join("deployed.safetensors");
    std::fs::write(&pointee, b"keep me").unwrap();
    let link = dir.path().join("current.safetensors");
    std::os::unix::fs::symlink(&pointee, &link).unwrap();
    let o = run(&["fold", s(&input), "-o", s(&link)]);
    assert_refused(&o, "is a symbolic link");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&pointee).unwrap(), b"keep me");
    // A FIFO.
    let fifo = dir.path().join("pipe.safetensors");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = run(&["fold", s(&input), "-o", s(&fifo)]);
    assert_refused(&o, "a FIFO");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A folder.
    let folder = dir.path().join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    let o = run(&["fold", s(&input), "-o", s(&folder)]);
    assert_refused(&o, "a folder");
    // A device.
    let o = run(&[
        "diff",
        s(&fixture("yolov8-v80-style.pt")),
        "--plot",
        "/dev/null",
    ]);
    assert_refused(&o, "a device");
    assert!(temporaries(dir.path()).is_empty());
}

fn run_with_umask(mask: u32, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fuse-ema"));
    cmd.args(args);
    // SAFETY: umask is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn new_outputs_take_the_umask_like_cp_and_replaced_ones_keep_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("ema-prefixed.safetensors");
    for (mask, want) in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)] {
        for out in ["o.safetensors", "o.pt"] {
            let out = dir.path().join(format!("{mask:o}-{out}"));
            let o = run_with_umask(mask, &["fold", s(&input), "-o", s(&out)]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let mode = std::fs::metadata(&out).unwrap().mode() & 0o777;
            assert_eq!(mode, want, "umask {mask:o}: {} is {mode:o}", out.display());
        }
    }
    // Sharded output and its index too.
    let out = dir.path().join("sh.safetensors");
    let (code, v) = {
        let o = run_with_umask(
            0o022,
            &[
                "fold",
                s(&input),
                "-o",
                s(&out),
                "--max-shard-size",
                "20KB",
                "--json",
            ],
        );
        (
            o.status.code(),
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        )
    };
    assert_eq!(code, Some(0));
    for p in v["outputs"].as_array().unwrap() {
        let mode = std::fs::metadata(p.as_str().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644, "{p}");
    }
    // Replacing a file keeps its mode, as `cp` onto an existing file does.
    let kept = dir.path().join("kept.safetensors");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run_with_umask(0o022, &["fold", s(&input), "-o", s(&kept)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o777, 0o640);
    assert_ne!(std::fs::read(&kept).unwrap(), b"old");
}

/// A safetensors file with an EMA and raw weights of `n` f32 each (about 8·n bytes), written
/// straight to disk.
fn big_ema_file(path: &Path, n: usize) {
    use std::io::Write;
    let header = format!(
        "{{\"model.w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[0,{a}]}},\
         \"model_ema.w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[{a},{b}]}}}}",
        a = 4 * n,
        b = 8 * n
    );
    let mut header = header.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    // Values that change, so the f16 conversion has work to do.
    let chunk: Vec<u8> = (0..1 << 20)
        .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
        .collect();
    let mut left = 8 * n;
    while left > 0 {
        let k = left.min(chunk.len());
        f.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
    f.flush().unwrap();
}

/// Starts `fold` on a large input, waits until its temporary output exists, sends `sig`, and
/// checks the process died of that signal leaving no temporary and no output behind.
fn stop_fold_with(sig: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.safetensors");
    big_ema_file(&input, 48 << 20);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("folded.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .args(["fold", s(&input), "-o", s(&out), "--dtype", "f16"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while temporaries(&outdir).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "fold ended before its temporary file was seen"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary file"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(sig),
        "killed by the signal (the shell reports 128+{sig}); status {status:?}"
    );
    assert!(temporaries(&outdir).is_empty(), "the temporary was removed");
    assert!(!out.exists(), "nothing was renamed into place");
}

#[test]
fn sigterm_during_fold_leaves_nothing() {
    stop_fold_with(libc::SIGTERM);
}

#[test]
fn sigint_during_fold_leaves_nothing() {
    stop_fold_with(libc::SIGINT);
}

/// Whether `pid` has `path` memory-mapped.
fn maps_file(pid: u32, path: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.contains(s(path)))
        .unwrap_or(false)
}

/// The state letter of `pid` in /proc (`T` stopped, `Z` exited).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

#[test]
fn a_checkpoint_truncated_while_mapped_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("last.pkl");
    // A protocol-2 pickle whose parse walks every byte of a 12 MiB map (NONE, POP repeated, then
    // an empty dict), so there is time to stop the reader right after it maps the file.
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        f.write_all(b"\x80\x02").unwrap();
        let chunk = b"N0".repeat(1 << 20);
        for _ in 0..6 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"}.").unwrap();
        f.flush().unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .args(["inspect", s(&input)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while !maps_file(pid, &input) {
        assert!(child.try_wait().unwrap().is_none(), "ended before mapping");
        assert!(start.elapsed() < Duration::from_secs(60), "never mapped");
        std::thread::sleep(Duration::from_micros(100));
    }
    // Freeze the reader mid-parse, then do what Ultralytics does to last.pt each epoch (open for
    // writing, truncating), then let it go on: its next access to the map faults.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
    while !matches!(proc_state(pid), 'T' | 'Z') {
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_eq!(
        proc_state(pid),
        'T',
        "the reader finished before it could be stopped"
    );
    std::fs::File::create(&input).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) }, 0);
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "status {:?}, stderr {e}",
        o.status
    );
    assert_eq!(
        e,
        format!(
            "fuse-ema: error: {}: file changed while reading\n",
            input.display()
        )
    );
}

/// The ONNX header's IR version (field 1, first in the message).
fn ir_version(model: &[u8]) -> u8 {
    assert_eq!(model[0], 0x08, "field 1, varint");
    model[1]
}

#[test]
fn ir_version_follows_the_opset() {
    let dir = tempfile::tempdir().unwrap();
    // onnx's VERSION_TABLE: the IR version each opset was released with.
    for (opset, ir) in [
        (13, 7),
        (14, 7),
        (15, 8),
        (17, 8),
        (18, 8),
        (19, 9),
        (20, 9),
        (21, 10),
    ] {
        let out = dir.path().join(format!("m{opset}.onnx"));
        let o = run(&[
            "export",
            s(&fixture("yolov8-epoch1.pt")),
            "-o",
            s(&out),
            "--opset",
            &opset.to_string(),
            "--no-parity",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            ir_version(&std::fs::read(&out).unwrap()),
            ir,
            "opset {opset}"
        );
    }
}

fn metadata(model: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(model).unwrap();
    fuse_ema::onnx::read::parse(&bytes, Some(model))
        .unwrap()
        .metadata
}

fn meta<'a>(m: &'a [(String, String)], key: &str) -> Option<&'a str> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn metadata_has_the_keys_ultralytics_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("yolov8-epoch1.pt", "Detect"),
        ("yolov8-seg.pt", "Segment"),
        ("yolov8-cls.pt", "Classify"),
        ("yolov8-obb.pt", "OBB"),
        ("yolov8-pose-kptnames.pt", "Pose"),
    ];
    for (file, head) in cases {
        let out = dir.path().join(format!("{file}.onnx"));
        let o = run(&["export", s(&fixture(file)), "-o", s(&out), "--no-parity"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let m = metadata(&out);
        // Values as Ultralytics 8.4's exporter writes them (engine/exporter.py).
        assert_eq!(
            meta(&m, "license"),
            Some("AGPL-3.0 License (https://ultralytics.com/license)"),
            "{file}"
        );
        assert_eq!(meta(&m, "docs"), Some("https://docs.ultralytics.com"));
        assert_eq!(meta(&m, "head"), Some(head), "{file}");
    }
    let m = metadata(&dir.path().join("yolov8-pose-kptnames.pt.onnx"));
    let names = "['nose', 'left_eye', 'right_eye'";
    let kpt = meta(&m, "kpt_names").expect("pose metadata has kpt_names");
    assert!(kpt.starts_with(&format!("{{0: {names}")), "{kpt}");
    assert!(kpt.contains(&format!("1: {names}")), "{kpt}");
    assert!(meta(&m, "kpt_shape").is_some());
    // A pose model without kpt_names (Ultralytics before 8.3) gets none, as Ultralytics does.
    let out = dir.path().join("pose-old.onnx");
    let o = run(&[
        "export",
        s(&fixture("yolov8-pose.pt")),
        "-o",
        s(&out),
        "--no-parity",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(meta(&metadata(&out), "kpt_names"), None);
}

#[test]
fn export_and_verify_reports_never_replace_what_the_run_reads_or_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixture("yolov8-epoch1.pt");
    let model = dir.path().join("m.onnx");
    // The report onto the model being written (or its parity-failed twin).
    for report in ["m.onnx", "m.parity-failed.onnx"] {
        let o = run(&[
            "export",
            s(&ckpt),
            "-o",
            s(&model),
            "--report",
            s(&dir.path().join(report)),
            "--runtime",
            "tract",
        ]);
        assert_refused(&o, "would overwrite the model this export writes");
        assert!(!model.exists());
    }
    // A report that cannot be written (review F7): the run fails and commits no model either.
    let o = run(&[
        "export",
        s(&ckpt),
        "-o",
        s(&model),
        "--report",
        s(&dir.path().join("no-such-dir/r.json")),
        "--runtime",
        "tract",
    ]);
    assert_refused(&o, "no-such-dir");
    assert!(!model.exists(), "a failed report leaves no model");
    // The report onto the golden file the parity check reads.
    let golden = dir.path().join("g.npz");
    std::fs::copy(fixture("yolov8-epoch1.io.npz"), &golden).unwrap();
    let before = std::fs::read(&golden).unwrap();
    let o = run(&[
        "export",
        s(&ckpt),
        "-o",
        s(&model),
        "--golden",
        s(&golden),
        "--report",
        s(&golden),
        "--runtime",
        "tract",
    ]);
    assert_refused(&o, "refusing to overwrite the input");
    assert_eq!(std::fs::read(&golden).unwrap(), before);
    assert!(!model.exists(), "refused before anything was written");
    // verify: the report onto the model it reads.
    let o = run(&["export", s(&ckpt), "-o", s(&model), "--no-parity"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = std::fs::read(&model).unwrap();
    let o = run(&[
        "verify",
        s(&model),
        "--checkpoint",
        s(&ckpt),
        "--runtime",
        "tract",
        "--report",
        s(&model),
    ]);
    assert_refused(&o, "refusing to overwrite the input");
    assert_eq!(std::fs::read(&model).unwrap(), before);
    assert!(temporaries(dir.path()).is_empty());
}

#[test]
fn an_export_whose_parity_cannot_run_leaves_no_data_file() {
    // The external data goes to disk before the model (the model names it); when the run then
    // fails, it must be removed again: a failed run leaves nothing behind.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.npz");
    std::fs::write(&bad, b"not an npz").unwrap();
    let out = d.path().join("m.onnx");
    let r = run(&[
        "export",
        s(&fixture("yolov8-epoch1.pt")),
        "-o",
        s(&out),
        "--external-data",
        "--golden",
        s(&bad),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("parity check could not run"),
        "{}",
        stderr(&r)
    );
    let mut left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["bad.npz"]);
}

#[test]
fn a_failed_export_never_replaces_the_data_of_an_earlier_one() {
    // An earlier good export with external data, then one of another checkpoint that fails its
    // check: the earlier pair must stay byte for byte, and the failed model must name its own
    // data file (review, session 5: `OUT.onnx.data` was replaced, so ONNX Runtime ran the old
    // model on the new weights).
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.onnx");
    let first = run(&[
        "export",
        s(&fixture("classic/yolov5n-best.pt")),
        "-o",
        s(&out),
        "--external-data",
        "--imgsz",
        "64",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let data = d.path().join("m.onnx.data");
    let before = (std::fs::read(&out).unwrap(), std::fs::read(&data).unwrap());
    let second = run(&[
        "export",
        s(&fixture("classic/yolov7-best.pt")),
        "-o",
        s(&out),
        "--external-data",
        "--imgsz",
        "64",
        "--atol",
        "1e-30",
        "--rtol",
        "1e-30",
    ]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert_eq!(
        (std::fs::read(&out).unwrap(), std::fs::read(&data).unwrap()),
        before
    );
    let failed = d.path().join("m.parity-failed.onnx");
    let failed_data = d.path().join("m.parity-failed.onnx.data");
    assert!(failed_data.exists());
    let names = String::from_utf8_lossy(&std::fs::read(&failed).unwrap()).into_owned();
    assert!(names.contains("m.parity-failed.onnx.data"));
    assert!(!names.contains("m.onnx.data"));
    // The failed pair is whole: verify loads it and finds the v7 EMA in it.
    let v = run(&[
        "verify",
        s(&failed),
        "--checkpoint",
        s(&fixture("classic/yolov7-best.pt")),
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let mut left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "m.onnx",
            "m.onnx.data",
            "m.parity-failed.onnx",
            "m.parity-failed.onnx.data"
        ]
    );
}
