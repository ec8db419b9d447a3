//! Resource limits on hostile input (issue 13): every file ends with exit 0, 1 or 2 within 10 s
//! and 512 MB of peak RSS — unbounded recursion, quadratic work, copies, decompression bombs
//! (tests/hostile/gen_resources.py and manifest-resources.json), FIFOs and links in shard sets,
//! and ONNX external data that is re-read, linked or out of range.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The issue's hard limits. Debug builds (what `cargo test` runs) get three times the time.
const MAX_SECS: u64 = 10;
const MAX_RSS_MB: u64 = 512;

/// How a run ended.
struct Ended {
    code: Option<i32>,
    secs: f64,
    rss_mb: u64,
    stdout: String,
    stderr: String,
}

/// Runs the binary, killing it past the time limit, and measures its own peak RSS (`wait4`).
// The child is reaped by `wait4`, which `Child` cannot see.
#[allow(clippy::zombie_processes)]
fn run_limited(args: &[&str]) -> Ended {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse-ema"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(if cfg!(debug_assertions) {
        3 * MAX_SECS
    } else {
        MAX_SECS
    });
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child only; `status` and `usage` are valid for writing.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4 failed");
        if r == pid {
            break;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            // SAFETY: as above.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("fuse-ema {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ended {
        code,
        secs: start.elapsed().as_secs_f64(),
        rss_mb: usage.ru_maxrss as u64 / 1024,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Checks the limits and the promised exit code; returns the run for further checks.
fn within_limits(args: &[&str], want: &[i32]) -> Ended {
    let e = run_limited(args);
    eprintln!(
        "{args:?}: exit {:?}, {:.2} s, {} MB",
        e.code, e.secs, e.rss_mb
    );
    assert!(
        e.code.is_some_and(|c| want.contains(&c)),
        "{args:?}: exit {:?} (want one of {want:?}): {}",
        e.code,
        e.stderr
    );
    assert!(!e.stderr.contains("panicked"), "{args:?}: {}", e.stderr);
    assert!(
        e.rss_mb <= MAX_RSS_MB,
        "{args:?}: peak RSS {} MB > {MAX_RSS_MB} MB",
        e.rss_mb
    );
    e
}

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn resource_corpus() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string(hostile_dir().join("manifest-resources.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            (
                hostile_dir().join("files").join(name),
                v["expect"].as_str().unwrap().to_string(),
                v["contains"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn resource_corpus_is_complete() {
    let names: Vec<String> = resource_corpus()
        .iter()
        .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "rebuild-self-reference.pkl",
        "rebuild-chain-30k.pkl",
        "long4-250x4k.pkl",
        "list-copies-600k-x60.pkl",
        "rebuild-copies-600k-x60.pkl",
        "deflate-bomb-512m.pt",
        "global-name-copies.pkl",
        "pickle-deflate-bomb.pt",
        "shared-modules-long-names.pt",
        "shared-dict-1000-keys.pt",
        "shared-object-1000-keys.pt",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing");
    }
}

#[test]
fn every_resource_attack_ends_in_time_and_memory_with_its_answer() {
    let out_dir = tempfile::tempdir().unwrap();
    for (path, expect, contains) in resource_corpus() {
        let p = path.to_str().unwrap();
        let want: &[i32] = match expect.as_str() {
            "clean" => &[0],
            "dangerous" => &[1],
            _ => &[2],
        };
        let e = within_limits(&["inspect", p], want);
        let text = if expect == "clean" {
            &e.stdout
        } else {
            &e.stderr
        };
        assert!(
            text.contains(&contains),
            "{p}: '{contains}' not in the output: {text}"
        );
        if expect == "error" {
            assert_eq!(e.stderr.trim_end().lines().count(), 1, "{}", e.stderr);
            assert!(e.stderr.contains(p), "{}", e.stderr);
        }
        let out = out_dir.path().join("out.safetensors");
        let out_s = out.to_str().unwrap();
        within_limits(&["inspect", "--json", p], want);
        within_limits(&["fold", p, "-o", out_s], &[0, 1, 2]);
        within_limits(&["diff", p, "--against", p], &[0, 1, 2]);
        let _ = std::fs::remove_file(&out);
    }
}

#[test]
fn decompression_is_lazy_and_bounded() {
    let path = hostile_dir().join("files/deflate-bomb-512m.pt");
    let ck = fuse_ema::io::open(&path).unwrap();
    let g = &ck.graph;
    let sd = g.dict_get(&ck.root, "state_dict").unwrap();
    let weight = g.tensor(g.dict_get(sd, "weight").unwrap()).unwrap();
    assert_eq!(weight.numel(), 1 << 27);
    // The small storage beside the bomb is read; the bomb itself is refused, not expanded.
    let epoch = g.tensor(g.dict_get(&ck.root, "epoch").unwrap()).unwrap();
    assert_eq!(fuse_ema::convert::scalar_f64(epoch), Some(7.0));
    let err = weight.for_each_chunk(|_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("decompression bomb"), "{err}");
    let err = fuse_ema::convert::to_f64_vec(weight).unwrap_err();
    assert!(err.to_string().contains("decompression bomb"), "{err}");
}

// ---- sharded safetensors ----

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A valid one-tensor safetensors file.
fn safetensors_bytes(name: &str) -> Vec<u8> {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&[0u8; 8]);
    b
}

fn write_index(dir: &Path, shards: &[(&str, &str)]) -> PathBuf {
    let map: serde_json::Map<String, serde_json::Value> = shards
        .iter()
        .map(|(t, f)| (t.to_string(), serde_json::json!(f)))
        .collect();
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    p
}

#[test]
fn a_fifo_shard_is_refused_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.safetensors"), safetensors_bytes("a")).unwrap();
    let fifo = d.path().join("b.safetensors");
    mkfifo(&fifo);
    let index = write_index(d.path(), &[("a", "a.safetensors"), ("b", "b.safetensors")]);
    let e = within_limits(&["inspect", index.to_str().unwrap()], &[2]);
    assert!(e.stderr.contains("not a regular file"), "{}", e.stderr);
    // Named directly, a FIFO is refused the same way.
    let e = within_limits(&["inspect", fifo.to_str().unwrap()], &[2]);
    assert!(e.stderr.contains("not a regular file"), "{}", e.stderr);
}

#[test]
fn a_symlinked_shard_may_not_leave_the_index_folder() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    let model = d.path().join("model");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(outside.join("real.safetensors"), safetensors_bytes("a")).unwrap();
    std::os::unix::fs::symlink("../outside/real.safetensors", model.join("a.safetensors")).unwrap();
    let index = write_index(&model, &[("a", "a.safetensors")]);
    let e = within_limits(&["inspect", index.to_str().unwrap()], &[2]);
    assert!(
        e.stderr.contains("outside the index's folder"),
        "{}",
        e.stderr
    );
}

#[test]
fn hugging_face_cache_links_are_followed() {
    // snapshots/<rev>/{index, shard} link to blobs/, as the hub cache lays them out.
    let d = tempfile::tempdir().unwrap();
    let blobs = d.path().join("blobs");
    let snap = d.path().join("snapshots/abc");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(blobs.join("1111"), safetensors_bytes("a")).unwrap();
    let index = write_index(&blobs, &[("a", "a.safetensors")]);
    std::fs::rename(&index, blobs.join("2222")).unwrap();
    std::os::unix::fs::symlink("../../blobs/1111", snap.join("a.safetensors")).unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/2222",
        snap.join("model.safetensors.index.json"),
    )
    .unwrap();
    let index = snap.join("model.safetensors.index.json");
    within_limits(&["inspect", index.to_str().unwrap()], &[0]);
}

// ---- ONNX external data (the reader `verify` uses) ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// An ONNX model whose float initializers live in external data: `(name, numel, location,
/// offset, length)`.
fn onnx_with_external(inits: &[(&str, u64, &str, u64, u64)]) -> Vec<u8> {
    let mut graph = Vec::new();
    for (name, numel, loc, off, len) in inits {
        let mut t = Vec::new();
        field_varint(&mut t, 1, *numel);
        field_varint(&mut t, 2, 1);
        field_bytes(&mut t, 8, name.as_bytes());
        for (k, v) in [
            ("location", loc.to_string()),
            ("offset", off.to_string()),
            ("length", len.to_string()),
        ] {
            let mut kv = Vec::new();
            field_bytes(&mut kv, 1, k.as_bytes());
            field_bytes(&mut kv, 2, v.as_bytes());
            field_bytes(&mut t, 13, &kv);
        }
        field_varint(&mut t, 14, 1);
        field_bytes(&mut graph, 5, &t);
    }
    let mut model = Vec::new();
    field_varint(&mut model, 1, 8);
    field_bytes(&mut model, 7, &graph);
    model
}

/// The model, or its error's message (the tests check what a user reads).
fn parse_in(dir: &Path, model: &[u8]) -> Result<fuse_ema::onnx::proto::Model, String> {
    fuse_ema::onnx::read::parse(model, Some(&dir.join("model.onnx"))).map_err(|e| e.to_string())
}

#[test]
fn external_data_is_read_once_and_within_the_file() {
    let d = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..16u8).collect();
    std::fs::write(d.path().join("w.bin"), &data).unwrap();
    let m = parse_in(
        d.path(),
        &onnx_with_external(&[("a", 2, "w.bin", 0, 8), ("b", 2, "w.bin", 8, 8)]),
    )
    .unwrap();
    assert_eq!(m.initializers[0].raw, &data[..8]);
    assert_eq!(m.initializers[1].raw, &data[8..]);

    let err = parse_in(d.path(), &onnx_with_external(&[("a", 4, "w.bin", 8, 16)])).unwrap_err();
    assert!(err.contains("past the end"), "{err}");
    for loc in ["../w.bin", "/etc/passwd", "sub/../../w.bin"] {
        let err = parse_in(d.path(), &onnx_with_external(&[("a", 2, loc, 0, 8)])).unwrap_err();
        assert!(err.contains("leaves the model's folder"), "{loc}: {err}");
    }
}

#[test]
fn thousands_of_initializers_on_one_big_file_do_not_multiply_memory() {
    // 2000 initializers each naming the whole 8 MiB file: re-reading it per initializer took
    // minutes at 256 MiB; the copies would need 16 GB.
    let d = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let f = std::fs::File::create(d.path().join("w.bin")).unwrap();
    f.set_len(size).unwrap();
    let names: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
    let inits: Vec<(&str, u64, &str, u64, u64)> = names
        .iter()
        .map(|n| (n.as_str(), size / 4, "w.bin", 0, size))
        .collect();
    let start = Instant::now();
    let err = parse_in(d.path(), &onnx_with_external(&inits)).unwrap_err();
    assert!(err.contains("overlap"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(MAX_SECS),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn external_data_links_and_special_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.path().join("zero.bin")).unwrap();
    let err = parse_in(d.path(), &onnx_with_external(&[("a", 2, "zero.bin", 0, 8)])).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    // A linked folder on the way.
    std::os::unix::fs::symlink("/dev", d.path().join("dev")).unwrap();
    let err = parse_in(d.path(), &onnx_with_external(&[("a", 2, "dev/zero", 0, 8)])).unwrap_err();
    assert!(err.contains("outside the model's folder"), "{err}");
    mkfifo(&d.path().join("pipe.bin"));
    let err = parse_in(d.path(), &onnx_with_external(&[("a", 2, "pipe.bin", 0, 8)])).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_rezipped_checkpoint_decompresses_on_demand_to_the_same_weights() {
    let src = common::fixture("yolov8-best.pt");
    let d = tempfile::tempdir().unwrap();
    let rezipped = d.path().join("rezipped.pt");
    std::fs::write(&rezipped, common::rezip_deflated(&src)).unwrap();
    let e = within_limits(&["inspect", rezipped.to_str().unwrap()], &[0]);
    assert!(e.stdout.contains("compressed storages"), "{}", e.stdout);
    let (a, b) = (
        d.path().join("a.safetensors"),
        d.path().join("b.safetensors"),
    );
    for (input, out) in [(&rezipped, &a), (&src, &b)] {
        within_limits(
            &["fold", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
            &[0],
        );
    }
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(a.names().len(), b.names().len());
    assert!(!a.names().is_empty());
    for name in b.names() {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(
            (x.dtype(), x.shape(), x.data()),
            (y.dtype(), y.shape(), y.data()),
            "{name}"
        );
    }
}

#[test]
fn memo_entries_count_against_the_budget() {
    // Five bytes per LONG_BINPUT to a new key grew the memo table about 20 times faster than the
    // file (25 MB reached 421 MB); built here rather than committed.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("memo.pkl");
    let mut p = b"\x80\x02N".to_vec();
    for i in 0..4_990_000u32 {
        p.push(b'r');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'.');
    std::fs::write(&path, p).unwrap();
    let e = within_limits(&["inspect", path.to_str().unwrap()], &[2]);
    assert!(e.stderr.contains("decoded objects"), "{}", e.stderr);
    assert!(e.rss_mb < 256, "{} MB", e.rss_mb);
}

#[test]
fn a_golden_npz_bomb_is_refused_before_expanding() {
    // 256 MiB of deflated zeros in 261 kB (tests/hostile/gen_resources.py).
    let path = hostile_dir().join("files/npz-bomb.npz");
    let err = match fuse_ema::parity::npz::Npz::open(&path) {
        Ok(_) => panic!("the bomb was read"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("decompression bomb"), "{err}");
    // A FIFO is refused without blocking.
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("io.npz");
    mkfifo(&fifo);
    let err = match fuse_ema::parity::npz::Npz::open(&fifo) {
        Ok(_) => panic!("the FIFO was read"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn verify_refuses_a_model_that_is_not_a_regular_file() {
    let e = within_limits(
        &[
            "verify",
            "/dev/zero",
            "--checkpoint",
            common::fixture("yolov8-best.pt").to_str().unwrap(),
        ],
        &[2],
    );
    assert!(e.stderr.contains("not a regular file"), "{}", e.stderr);
}
