//! Broken, hostile and wrong-kind files: each gives one clear error line naming the file and the
//! problem, exit code 2, and never a panic or a signal.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{fixture, run};

/// Runs `inspect` on `path` and checks the failure contract; returns stderr.
fn expect_bad(path: &Path, needle: &str) -> String {
    let out = run(&["inspect", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}: expected exit 2; stderr: {stderr}",
        path.display()
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "expected '{needle}' in: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no partial report on stdout");
    // The library path fails the same way, without panicking.
    assert!(
        fuse_ema::io::open(path)
            .and_then(|c| {
                c.weight_sets().map_err(|e| {
                    fuse_ema::io::ReadError::new(
                        path,
                        fuse_ema::io::ReadErrorKind::Storage(e.to_string()),
                    )
                })
            })
            .is_err()
    );
    stderr
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A torch zip archive (record `archive/`) holding `data.pkl` and the given storages, stored.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        for (key, data) in storages {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.start_file("archive/version", opts).unwrap();
        z.write_all(b"3\n").unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Pickle text for `{'w': _rebuild_tensor_v2(FloatStorage key numel, offset, shape, stride)}`.
fn tensor_pickle(key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, v: i64) {
        out.push(0x8a); // LONG1, 8 bytes
        out.push(8);
        out.extend_from_slice(&v.to_le_bytes());
    }
    fn s(out: &mut Vec<u8>, v: &str) {
        out.push(b'X');
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    s(&mut p, "w");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    // persistent id tuple
    p.push(b'(');
    s(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    s(&mut p, key);
    s(&mut p, "cpu");
    int(&mut p, numel);
    p.extend_from_slice(b"tQ");
    int(&mut p, offset);
    p.push(b'(');
    for &d in shape {
        int(&mut p, d);
    }
    p.extend_from_slice(b"t(");
    for &d in stride {
        int(&mut p, d);
    }
    p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
    p.extend_from_slice(b"u.");
    p
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_valid_handmade_archive_reads() {
    // Guards the helpers: the same construction with honest numbers must succeed.
    let d = tmp();
    let data = [0u8; 16];
    let p = write(
        d.path(),
        "ok.pt",
        &torch_zip(&tensor_pickle("0", 4, 0, &[2, 2], &[2, 1]), &[("0", &data)]),
    );
    let out = run(&["inspect", p.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn not_checkpoints() {
    let d = tmp();
    expect_bad(&write(d.path(), "empty.pt", b""), "empty");
    expect_bad(
        &write(d.path(), "text.pt", b"hello, I am a text file\n"),
        "not a checkpoint",
    );
    expect_bad(
        &write(
            d.path(),
            "noise.pt",
            &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7],
        ),
        "not a checkpoint",
    );
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"just a zip").unwrap();
        z.finish().unwrap();
    }
    expect_bad(&write(d.path(), "plain.zip", &buf.into_inner()), "data.pkl");
    expect_bad(&d.path().join("missing.pt"), "no such file");
    expect_bad(d.path(), "index.json");
}

#[test]
fn truncated_files() {
    let d = tmp();
    for name in [
        "yolov8-best.pt",
        "legacy.pt",
        "ema-prefixed.safetensors",
        "pickles/protocol2.pkl",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for frac in [0.02, 0.3, 0.6, 0.97] {
            let cut = ((bytes.len() as f64) * frac) as usize;
            let p = write(
                d.path(),
                &format!("cut-{cut}-{}", name.replace('/', "_")),
                &bytes[..cut],
            );
            let out = run(&["inspect", p.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} cut at {cut}: {stderr}");
            assert!(
                !stderr.contains("panicked") && stderr.contains("cut-"),
                "{stderr}"
            );
        }
        let p = write(d.path(), "minus-one", &bytes[..bytes.len() - 1]);
        assert_eq!(
            run(&["inspect", p.to_str().unwrap()]).status.code(),
            Some(2),
            "{name} minus one byte"
        );
    }
}

#[test]
fn corrupted_zip_directory() {
    let d = tmp();
    let mut bytes = std::fs::read(fixture("yolov8-best.pt")).unwrap();
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    for b in &mut bytes[cd..cd + 40] {
        *b ^= 0x5a;
    }
    expect_bad(&write(d.path(), "cd.pt", &bytes), "zip");
}

#[test]
fn lying_entry_offsets() {
    // The central directory says a local header lies past the end of the file.
    let d = tmp();
    let mut bytes = torch_zip(&tensor_pickle("0", 4, 0, &[4], &[1]), &[("0", &[0u8; 16])]);
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 42..cd + 46].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    expect_bad(&write(d.path(), "offset.pt", &bytes), "zip");
}

#[test]
fn storage_smaller_than_declared() {
    let d = tmp();
    let p = write(
        d.path(),
        "small.pt",
        &torch_zip(
            &tensor_pickle("0", 1000, 0, &[1000], &[1]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "needs 4000 bytes");
}

#[test]
fn view_out_of_bounds() {
    let d = tmp();
    let p = write(
        d.path(),
        "oob.pt",
        &torch_zip(
            &tensor_pickle("0", 4, 2, &[2, 2], &[2, 1]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "reaches element 5");
    let p = write(
        d.path(),
        "stride.pt",
        &torch_zip(
            &tensor_pickle("0", 4, 0, &[2, 2], &[1 << 40, 1]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "storage holds 4");
    let p = write(
        d.path(),
        "negative.pt",
        &torch_zip(
            &tensor_pickle("0", 4, 0, &[2, 2], &[-1, 1]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "negative");
}

#[test]
fn shape_product_overflows() {
    let d = tmp();
    let p = write(
        d.path(),
        "overflow.pt",
        &torch_zip(
            &tensor_pickle("0", 4, 0, &[1 << 40, 1 << 40], &[0, 0]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "overflows");
    let p = write(
        d.path(),
        "huge-numel.pt",
        &torch_zip(
            &tensor_pickle("0", i64::MAX, 0, &[1], &[1]),
            &[("0", &[0u8; 16])],
        ),
    );
    expect_bad(&p, "storage '0'");
}

#[test]
fn missing_storage() {
    let d = tmp();
    let p = write(
        d.path(),
        "missing.pt",
        &torch_zip(&tensor_pickle("7", 4, 0, &[4], &[1]), &[("0", &[0u8; 16])]),
    );
    expect_bad(&p, "storage '7'");
}

#[test]
fn duplicate_entries() {
    let d = tmp();
    let mut bytes = torch_zip(
        &tensor_pickle("0", 4, 0, &[4], &[1]),
        &[("0", &[0u8; 16]), ("1", &[0u8; 16])],
    );
    // Rename archive/data/1 to archive/data/0 everywhere (local header and directory).
    let from = b"archive/data/1";
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + pos + from.len() - 1] = b'0';
        i += pos + 1;
    }
    expect_bad(&write(d.path(), "dup.pt", &bytes), "zip");
}

#[test]
fn unknown_opcode_and_bad_pickles() {
    let d = tmp();
    let p = write(d.path(), "op.pt", &torch_zip(b"\x80\x02}q\x00\xff.", &[]));
    let e = expect_bad(&p, "unknown opcode 0xff");
    assert!(
        e.contains("archive/data.pkl") && e.contains("offset 5"),
        "{e}"
    );
    expect_bad(
        &write(d.path(), "nostop.pt", &torch_zip(b"\x80\x02}", &[])),
        "no STOP",
    );
    expect_bad(
        &write(d.path(), "underflow.pt", &torch_zip(b"\x80\x02.", &[])),
        "underflow",
    );
    expect_bad(
        &write(d.path(), "memo.pt", &torch_zip(b"\x80\x02h\x09.", &[])),
        "memo key 9",
    );
    expect_bad(
        &write(d.path(), "proto.pkl", b"\x80\x09N."),
        "unrecognised format",
    );
    expect_bad(
        &write(d.path(), "proto.pt", &torch_zip(b"\x80\x09N.", &[])),
        "protocol 9",
    );
    // A BINBYTES8 claiming 2^60 bytes is refused before any allocation.
    let mut big = b"\x80\x04\x8e".to_vec();
    big.extend_from_slice(&(1u64 << 60).to_le_bytes());
    big.extend_from_slice(b"abc.");
    expect_bad(&write(d.path(), "len.pkl", &big), "truncated");
}

#[test]
fn recursion_and_memo_bombs() {
    let d = tmp();
    // 200k nested MARKs.
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b'(', 200_000));
    deep.push(b'.');
    expect_bad(&write(d.path(), "deep.pkl", &deep), "nesting deeper");
    // A chain of 200k lists each holding the previous one: depth is fine for the VM (memo, not
    // marks), and nothing that reads the graph may recurse without bound.
    let mut nest = vec![0x80, 2, b']', b'q', 0, b'0'];
    for _ in 0..200_000 {
        nest.extend_from_slice(b"(h\x00lq\x000"); // MARK, BINGET 0, LIST, BINPUT 0, POP
    }
    nest.extend_from_slice(b"h\x00.");
    let p = write(d.path(), "chain.pkl", &nest);
    let out = run(&["inspect", "--json", p.to_str().unwrap()]);
    // CPython unpickles this chain without recursion; it names no global, so it is a clean
    // (if odd) pickle: exit 0 with a JSON report, not a crash and not a refusal.
    assert_eq!(
        out.status.code(),
        Some(0),
        "a 200k-deep chain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("a JSON report");
    // Memo bomb: each level is a list holding the previous level 16 times (16^30 paths).
    let mut bomb = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..30 {
        bomb.extend_from_slice(b"]("); // new list, mark
        for _ in 0..16 {
            bomb.extend_from_slice(b"h\x00"); // BINGET 0
        }
        bomb.extend_from_slice(b"eq\x00"); // APPENDS, BINPUT 0 (rebind to the new level)
    }
    bomb.push(b'.');
    let p = write(d.path(), "bomb.pkl", &bomb);
    let out = run(&["inspect", "--json", p.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "shared references decode as shared: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A billion opcodes of DUP/POP is stopped by the op limit, not by the machine.
    let mut spin = vec![0x80, 2, b'N'];
    spin.extend(std::iter::repeat_n(*b"20", 30_000_000).flatten());
    spin.push(b'.');
    expect_bad(&write(d.path(), "spin.pkl", &spin), "more than");
}

#[test]
fn hostile_module_sharing_is_bounded() {
    // A module whose _modules holds the same child under 40 names, 40 levels deep: torch's
    // state_dict would list 40^40 names. fuse-ema must stop with an error.
    let mut p = vec![0x80, 2];
    // Leaf module: NEWOBJ of x.M with state {'_parameters': {}, '_modules': {}}.
    let module = |p: &mut Vec<u8>, children: bool| {
        p.extend_from_slice(
            b"cx\nM\n)\x81}(X\x0b\x00\x00\x00_parameters}X\x08\x00\x00\x00_modules}",
        );
        if children {
            p.push(b'(');
            for i in 0..40u8 {
                p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'a' + (i % 26)]);
                p.extend_from_slice(b"h\x00");
            }
            p.push(b'u');
        }
        p.extend_from_slice(b"ub");
    };
    // Each level is memoised as 0 and popped; the last one is fetched back.
    module(&mut p, false);
    p.extend_from_slice(b"q\x000");
    for _ in 0..40 {
        module(&mut p, true);
        p.extend_from_slice(b"q\x000");
    }
    p.extend_from_slice(b"h\x00.");
    let d = tmp();
    // Wrap it in a dict so the module is an entry.
    let mut root = vec![0x80, 2, b'}', b'(', b'X', 3, 0, 0, 0, b'e', b'm', b'a'];
    root.extend_from_slice(&p[2..p.len() - 1]);
    root.extend_from_slice(b"u.");
    let path = write(d.path(), "shared.pkl", &root);
    expect_bad(&path, "module visits");
}

#[test]
fn legacy_storage_claiming_more_than_the_file() {
    let d = tmp();
    let mut bytes = std::fs::read(fixture("legacy.pt")).unwrap();
    // The first raw storage's element count follows the key list pickle; find it via the
    // first 8-byte count that matches a plausible size and inflate it.
    // The storage key list is the only pickle that starts with a list (PROTO 2, EMPTY_LIST).
    let keys = bytes
        .windows(3)
        .position(|w| w == b"\x80\x02]")
        .expect("key list pickle");
    let at = keys
        + bytes[keys..]
            .windows(2)
            .position(|w| w == b"e.")
            .expect("APPENDS, STOP")
        + 2;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_bad(&write(d.path(), "legacy-lie.pt", &bytes), "claims");
}

#[test]
fn safetensors_lies() {
    let d = tmp();
    let mut bytes = std::fs::read(fixture("ema-prefixed.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(200_000_000u64).to_le_bytes());
    expect_bad(
        &write(d.path(), "header.safetensors", &bytes),
        "safetensors",
    );
    let header = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0u8; 24]);
    expect_bad(&write(d.path(), "overlap.safetensors", &f), "safetensors");
    // An index that points outside its folder.
    let sub = d.path().join("set");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("model.safetensors.index.json"),
        br#"{"weight_map":{"a":"../secret.safetensors"}}"#,
    )
    .unwrap();
    expect_bad(&sub.join("model.safetensors.index.json"), "outside");
}
