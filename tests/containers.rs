//! The container decisions of `torch.load`, on files built here by hand from the format
//! descriptions (APPNOTE zip, POSIX ustar, pickletools opcodes): which bytes are judged, and
//! which files are refused because two readers could read them differently.

use std::io::Write;
use std::path::{Path, PathBuf};

use fuse_ema::checkpoint::Format;
use fuse_ema::checkpoint::value::Graph;
use fuse_ema::io::{ReadError, ReadErrorKind};

/// Protocol-0 `os.system('id')`: never executed, only decoded.
const OS_SYSTEM: &[u8] = b"cos\nsystem\n(S'id'\ntR";

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn names(g: &Graph) -> Vec<String> {
    g.globals().iter().map(|r| r.written.dotted()).collect()
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn open_err(p: &Path) -> ReadError {
    match fuse_ema::io::open(p) {
        Ok(c) => panic!("{} opened as {:?}", p.display(), c.info.format),
        Err(e) => e,
    }
}

fn hostile_pickle() -> Vec<u8> {
    [OS_SYSTEM, b"."].concat()
}

#[test]
fn torch_reads_the_record_the_first_entry_names_case_insensitively() {
    let d = tempfile::tempdir().unwrap();
    // torch looks up base/data.pkl and finds base/DATA.PKL.
    let p = write(
        &d,
        "upper.pt",
        &zip(&[
            ("base/version", b"3\n"),
            ("base/DATA.PKL", &hostile_pickle()),
        ]),
    );
    let c = fuse_ema::io::open(&p).unwrap();
    assert_eq!(c.info.record.as_deref(), Some("base/"));
    assert_eq!(names(&c.graph), ["os.system"]);
    // With a second data.pkl deeper in the folder (never read by torch, but what a reader
    // looking for any */data.pkl would load), the file is refused as ambiguous, and the
    // refusal still names what torch's record would run.
    let p = write(
        &d,
        "nested.pt",
        &zip(&[
            ("base/version", b"3\n"),
            ("base/DATA.PKL", &hostile_pickle()),
            ("base/good/data.pkl", b"\x80\x02}."),
        ]),
    );
    let e = fuse_ema::io::open(&p).unwrap_err();
    assert!(e.to_string().contains("ambiguous"), "{e}");
    assert!(
        e.named
            .records()
            .iter()
            .any(|r| r.written.dotted() == "os.system")
    );
}

#[test]
fn zip_refusals() {
    let d = tempfile::tempdir().unwrap();
    let clean: &[u8] = b"\x80\x02}.";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "collide.pt",
            zip(&[("a/data.pkl", clean), ("a/DATA.pkl", clean)]),
            "differ only in case",
        ),
        (
            "outside.pt",
            zip(&[("a/data.pkl", clean), ("b/data.pkl", clean)]),
            "outside the archive folder",
        ),
        (
            "trailing.pt",
            zip(&[("a/data.pkl", &[clean, &hostile_pickle()].concat())]),
            "after the pickle's STOP",
        ),
    ];
    for (name, bytes, needle) in cases {
        let e = open_err(&write(&d, name, &bytes));
        assert!(
            matches!(e.kind, ReadErrorKind::Ambiguous(_)) && e.to_string().contains(needle),
            "{name}: {e}"
        );
    }
    let ts = zip(&[("m/data.pkl", clean), ("m/constants.pkl", clean)]);
    let e = open_err(&write(&d, "script.pt", &ts));
    assert!(e.to_string().contains("TorchScript"), "{e}");
}

#[test]
fn only_a_local_header_at_byte_0_makes_a_zip() {
    let d = tempfile::tempdir().unwrap();
    let e = open_err(&write(
        &d,
        "empty.zip",
        &[b"PK\x05\x06", &[0u8; 18][..]].concat(),
    ));
    assert!(e.to_string().contains("empty zip archive"), "{e}");
    // A zip without a torch record is read for its pickle members only.
    let p = write(&d, "plain.zip", &zip(&[("model.pkl", &hostile_pickle())]));
    let c = fuse_ema::io::open(&p).unwrap();
    assert_eq!(c.info.format, Format::Zip);
    assert_eq!(names(&c.graph), ["os.system"]);
}

#[test]
fn any_first_opcode_starts_a_pickle_and_failures_still_name_globals() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "none-first.pkl",
        &[b"N0", &hostile_pickle()[..]].concat(),
    );
    let c = fuse_ema::io::open(&p).unwrap();
    assert_eq!(c.info.format, Format::Pickle);
    assert_eq!(names(&c.graph), ["os.system"]);
    let e = open_err(&write(&d, "broken.pkl", &[OS_SYSTEM, b"\xff"].concat()));
    assert!(
        e.to_string()
            .contains("unknown opcode 0xff; before that it names os.system"),
        "{e}"
    );
    assert_eq!(e.named.records().len(), 1);
}

/// `pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)`.
const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

#[test]
fn every_pickle_of_the_legacy_sequence_is_judged() {
    let d = tempfile::tempdir().unwrap();
    let sys_info = [b"(S'little_endian'\nI01\nS'x'\n", OS_SYSTEM, b"d."].concat();
    let mut f = [MAGIC, b"\x80\x02M\xe9\x03.", &sys_info[..], b"}.", b"]."].concat();
    let c = fuse_ema::io::open(&write(&d, "legacy.pt", &f)).unwrap();
    assert_eq!(c.info.format, Format::TorchLegacy);
    assert_eq!(names(&c.graph), ["os.system"]);
    f.extend_from_slice(b"junk");
    let e = open_err(&write(&d, "legacy-junk.pt", &f));
    assert!(matches!(e.kind, ReadErrorKind::Ambiguous(_)), "{e}");
}

/// One ustar header block with a valid checksum.
fn tar_header(name: &[u8], size: usize) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn tar(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend(tar_header(name, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn legacy_tar_checkpoints_are_read_and_judged() {
    let d = tempfile::tempdir().unwrap();
    // storages: count 1; ('0', <os.system result as location>, FloatStorage); 2 floats; no views.
    let mut storages = b"K\x01.(S'0'\n".to_vec();
    storages.extend_from_slice(OS_SYSTEM);
    storages.extend_from_slice(b"ctorch\nFloatStorage\nt.");
    storages.extend_from_slice(&2i64.to_le_bytes());
    storages.extend_from_slice(&[1f32.to_le_bytes(), 2f32.to_le_bytes()].concat());
    storages.extend_from_slice(b"].");
    // tensors: count 1; ('1', '0', FloatTensor); ndim 1, 4 spare bytes, size 2, stride 1, offset 0.
    let mut tensors = b"K\x01.(S'1'\nS'0'\nctorch\nFloatTensor\nt.".to_vec();
    tensors.extend_from_slice(&1i32.to_le_bytes());
    tensors.extend_from_slice(&[0; 4]);
    for v in [2i64, 1, 0] {
        tensors.extend_from_slice(&v.to_le_bytes());
    }
    let main = b"(S'w'\nS'1'\nQd.";
    let f = tar(&[
        (b"storages", &storages),
        (b"tensors", &tensors),
        (b"pickle", main),
    ]);
    let c = fuse_ema::io::open(&write(&d, "old.pt", &f)).unwrap();
    assert_eq!(c.info.format, Format::TorchTar);
    assert!(names(&c.graph).contains(&"os.system".to_string()));
    let w = c.graph.dict_get(&c.root, "w").unwrap();
    let t = c.graph.tensor(w).unwrap();
    assert_eq!(t.shape(), [2]);
    assert_eq!(
        &*t.to_contiguous_bytes().unwrap(),
        &[1f32.to_le_bytes(), 2f32.to_le_bytes()].concat()[..]
    );
}

#[test]
fn a_tar_that_is_also_a_pickle_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let rest = tar(&[(b"storages", &hostile_pickle())]);
    // The first member's name field opens a pickle whose BINBYTES swallows the rest of the tar.
    let swallowed = (512 - 7 + rest.len()) as u32;
    let name = [&b"\x80\x02B"[..], &swallowed.to_le_bytes()].concat();
    let f = [tar_header(&name, 0), rest, b"0}.".to_vec()].concat();
    let e = open_err(&write(&d, "polyglot.pt", &f));
    assert!(
        matches!(e.kind, ReadErrorKind::Ambiguous(_)) && e.to_string().contains("both a tar"),
        "{e}"
    );
}
