//! Well-formed but wrong module pickles for `export` and the reference interpreter, shared by the
//! `module_tree` fuzz target and tests/fuzz_harness.rs.
//!
//! A real Ultralytics checkpoint's `data.pkl` is walked opcode by opcode; the fuzzer's bytes pick
//! integer literals (module attributes such as stride, padding, channels, `nc`, `reg_max`, layer
//! indices `f`, tensor shapes and strides) and rewrite them in place at the same width, or swap a
//! class for another Ultralytics/torch class. The result is still a valid pickle with a plausible
//! module tree; building the ONNX graph and running the reference on it must give a result or an
//! error, never a panic.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Classes a module can be swapped for.
const CLASSES: &[&str] = &[
    "ultralytics.nn.modules.conv\nConv\n",
    "ultralytics.nn.modules.block\nC2f\n",
    "ultralytics.nn.modules.block\nSPPF\n",
    "ultralytics.nn.modules.block\nBottleneck\n",
    "ultralytics.nn.modules.block\nDFL\n",
    "ultralytics.nn.modules.conv\nConcat\n",
    "ultralytics.nn.modules.head\nDetect\n",
    "ultralytics.nn.modules.head\nSegment\n",
    "ultralytics.nn.modules.head\nPose\n",
    "ultralytics.nn.modules.head\nClassify\n",
    "torch.nn.modules.upsampling\nUpsample\n",
    "torch.nn.modules.pooling\nMaxPool2d\n",
    "torch.nn.modules.conv\nConv2d\n",
    "torch.nn.modules.conv\nConvTranspose2d\n",
    "torch.nn.modules.container\nSequential\n",
    "torch.nn.modules.activation\nSiLU\n",
];

/// An integer literal or a GLOBAL in the pickle: offset of its operand and its width
/// (0 for a GLOBAL, whose operand runs to its second newline).
struct Site {
    at: usize,
    width: usize,
}

/// Operand sites of a protocol-2 torch.save pickle, in order; stops at an opcode it does not know.
fn sites(p: &[u8]) -> Vec<Site> {
    let mut out = Vec::new();
    let mut i = 0;
    let u32_at = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(p.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    while i < p.len() {
        let op = p[i];
        i += 1;
        let skip = match op {
            0x80 | b'q' | b'h' => 1,
            b'K' => {
                out.push(Site { at: i, width: 1 });
                1
            }
            b'M' => {
                out.push(Site { at: i, width: 2 });
                2
            }
            b'J' => {
                out.push(Site { at: i, width: 4 });
                4
            }
            b'r' | b'j' => 4,
            b'G' => 8,
            b'X' | b'B' => match u32_at(i) {
                Some(n) => 4 + n,
                None => break,
            },
            b'C' | 0x8a => 1 + p.get(i).copied().unwrap_or(0) as usize,
            b'c' => {
                out.push(Site { at: i, width: 0 });
                let Some(a) = p[i..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let Some(b) = p[i + a + 1..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                a + b + 2
            }
            b'}' | b']' | b')' | b'(' | b'R' | b'b' | b'u' | b'e' | b't' | 0x85 | 0x86 | 0x87
            | b'Q' | b'N' | 0x88 | 0x89 | b's' | b'a' | b'0' | b'2' | 0x81 => 0,
            b'.' => break,
            _ => break,
        };
        i += skip;
    }
    out
}

/// Applies the fuzzer's edits to `pkl`.
pub fn mutate(pkl: &[u8], data: &[u8]) -> Vec<u8> {
    let s = sites(pkl);
    if s.is_empty() {
        return pkl.to_vec();
    }
    // Edits are applied back to front so earlier offsets stay valid when a class name changes
    // length.
    let mut edits: Vec<(usize, &[u8])> = data
        .chunks_exact(5)
        .map(|c| {
            let idx = u32::from_le_bytes([c[0], c[1], c[2], 0]) as usize % s.len();
            (idx, &c[3..5])
        })
        .collect();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    edits.dedup_by_key(|e| e.0);
    let mut out = pkl.to_vec();
    for (idx, v) in edits {
        let site = &s[idx];
        let value = u16::from_le_bytes([v[0], v[1]]);
        match site.width {
            0 => {
                let end = {
                    let a = out[site.at..].iter().position(|&b| b == b'\n').unwrap_or(0);
                    let b = out[site.at + a + 1..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap_or(0);
                    site.at + a + b + 2
                };
                let class = CLASSES[value as usize % CLASSES.len()].as_bytes();
                // Only module classes are swapped: torch rebuilders stay as they are.
                let old = &out[site.at..end];
                if old.starts_with(b"ultralytics.") || old.starts_with(b"torch.nn.modules.") {
                    out.splice(site.at..end, class.iter().copied());
                }
            }
            1 => out[site.at] = value as u8,
            2 => out[site.at..site.at + 2].copy_from_slice(&value.to_le_bytes()),
            _ => {
                // Small signed values reach negative strides, paddings and indices.
                let v = (value as i16) as i32;
                out[site.at..site.at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// The entries of a stored (uncompressed) zip, as torch.save writes it.
fn stored_entries(zip: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let rd16 = |i: usize| -> Option<usize> {
        Some(u16::from_le_bytes(zip.get(i..i + 2)?.try_into().ok()?) as usize)
    };
    let rd32 = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(zip.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let eocd = zip.windows(4).rposition(|w| w == b"PK\x05\x06")?;
    let count = rd16(eocd + 10)?;
    let mut p = rd32(eocd + 16)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let (size, nlen, xlen, clen) = (rd32(p + 20)?, rd16(p + 28)?, rd16(p + 30)?, rd16(p + 32)?);
        let local = rd32(p + 42)?;
        let name = String::from_utf8(zip.get(p + 46..p + 46 + nlen)?.to_vec()).ok()?;
        let start = local + 30 + rd16(local + 26)? + rd16(local + 28)?;
        out.push((name, zip.get(start..start + size)?.to_vec()));
        p += 46 + nlen + xlen + clen;
    }
    Some(out)
}

/// A stored zip of `entries`.
fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u32;
        let (n, len) = (name.as_bytes(), data.len() as u32);
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x21\x00");
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(data);
        cd.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x21\x00");
        cd.extend_from_slice(&crc32(data).to_le_bytes());
        cd.extend_from_slice(&len.to_le_bytes());
        cd.extend_from_slice(&len.to_le_bytes());
        cd.extend_from_slice(&(n.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 12]);
        cd.extend_from_slice(&off.to_le_bytes());
        cd.extend_from_slice(n);
    }
    let (cd_off, cd_len) = (out.len() as u32, cd.len() as u32);
    out.extend_from_slice(&cd);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The fixtures a mutation starts from (small Ultralytics models of every task).
pub const FIXTURES: &[&str] = &[
    "yolov8-best.pt",
    "yolov8-cls.pt",
    "yolov8-seg.pt",
    "yolov8-pose.pt",
    "yolov8-obb.pt",
    "yolo11-detect.pt",
];

/// A checkpoint's zip entries: `(name, bytes)`.
pub type Entries = Vec<(String, Vec<u8>)>;

/// Loads the fixtures' zip entries once.
pub fn load_fixtures(dir: &Path) -> Vec<Entries> {
    FIXTURES
        .iter()
        .filter_map(|f| stored_entries(&std::fs::read(dir.join(f)).ok()?))
        .collect()
}

/// A scratch path for this process.
pub fn scratch() -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    PathBuf::from(format!(
        "{dir}/fuse-ema-fuzz-module-{}.pt",
        std::process::id()
    ))
}

/// How far one run got.
#[derive(Default, Debug, Clone, Copy)]
pub struct Reached {
    /// The mutated file opened as a checkpoint.
    pub opened: bool,
    /// `export` built an ONNX model.
    pub exported: bool,
    /// The reference interpreter produced outputs.
    pub referenced: bool,
}

/// One run: mutate, open, export to ONNX, run the reference. Panics are the only failure.
pub fn run(fixtures: &[Entries], data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let Some((&pick, edits)) = data.split_first() else {
        return reached;
    };
    let Some(base) = fixtures.get(pick as usize % fixtures.len().max(1)) else {
        return reached;
    };
    let entries: Vec<(String, Vec<u8>)> = base
        .iter()
        .map(|(n, d)| {
            if n.ends_with("/data.pkl") {
                (n.clone(), mutate(d, edits))
            } else {
                (n.clone(), d.clone())
            }
        })
        .collect();
    let path = scratch();
    if std::fs::write(&path, stored_zip(&entries)).is_err() {
        return reached;
    }
    let Ok(ckpt) = fuse_ema::io::open(&path) else {
        return reached;
    };
    reached.opened = true;
    for key in ["model", "ema"] {
        let Some(v) = ckpt.graph.dict_get(&ckpt.root, key) else {
            continue;
        };
        let opts = fuse_ema::onnx::ExportOptions {
            imgsz: Some((64, 64)),
            batch: 1,
            dynamic: false,
            nms: None,
            max_det: 300,
            opset: 17,
            half: false,
            module_key: key.to_string(),
            force_external: false,
            external_name: "model.onnx.data".into(),
            scratch_dir: None,
            end2end: false,
        };
        reached.exported |= fuse_ema::onnx::export(&ckpt, &opts).is_ok();
        let m = fuse_ema::checkpoint::py::ModuleRef { g: &ckpt.graph, v };
        if let Ok(mut r) = fuse_ema::reference::Reference::new(m) {
            let images = fuse_ema::parity::seeded_images(&[1, 3, 64, 64], 7);
            reached.referenced |= r.run(images).is_ok();
        }
    }
    reached
}
