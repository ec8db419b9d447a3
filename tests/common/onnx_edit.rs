//! Editing ONNX files in tests: an honest export read with the crate's own reader, a few
//! initializers and nodes added or re-pointed, written back with its encoder; and `verify` run
//! on the result. The doctoring stays visible in the test that does it.

use std::path::{Path, PathBuf};

use fuse_ema::onnx::proto::{Attr, ElemType, Model, Node, TensorProto};

/// The model at `p`.
pub fn load(p: &Path) -> Model {
    fuse_ema::onnx::read::parse(&std::fs::read(p).unwrap(), None).unwrap()
}

/// Writes `m` to `p`.
pub fn save(m: &Model, p: &Path) {
    std::fs::write(p, m.encode()).unwrap();
}

/// An initializer of raw little-endian bytes.
pub fn tensor(name: &str, dims: &[i64], raw: Vec<u8>, elem: ElemType) -> TensorProto {
    TensorProto {
        name: name.into(),
        elem,
        dims: dims.to_vec(),
        raw,
    }
}

/// A float32 initializer.
pub fn f32s(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, raw, ElemType::Float)
}

/// A one-dimensional int64 initializer.
pub fn i64s(name: &str, v: &[i64]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, &[v.len() as i64], raw, ElemType::Int64)
}

/// A node with one output, named after it.
pub fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<(String, Attr)>) -> Node {
    Node {
        op: op.into(),
        name: format!("doctor/{output}"),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs,
    }
}

/// Renames the value `output0` inside the graph to `output0_raw` (its producer and consumers),
/// so appended nodes can compute a new `output0` from it.
pub fn detach_output0(m: &mut Model) {
    for n in &mut m.nodes {
        for v in n.outputs.iter_mut().chain(n.inputs.iter_mut()) {
            if v == "output0" {
                *v = "output0_raw".into();
            }
        }
    }
}

/// Exports `ckpt` into `dir` with `extra` options (the export's own parity check passing).
pub fn export(dir: &Path, ckpt: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let o = super::golden::export(ckpt, &out, extra);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `verify ONNX --checkpoint CKPT --runtime ort --json EXTRA…` with the seeded inputs pinned at
/// seed 0 (the doctored files' rows are chosen on its input) unless `extra` gives a `--seed`:
/// exit code, stdout + stderr.
pub fn verify(onnx: &Path, ckpt: &Path, extra: &[&str]) -> (i32, String) {
    let pinned = match extra.contains(&"--seed") {
        true => vec![],
        false => vec!["--seed", "0"],
    };
    verify_unpinned(onnx, ckpt, &[&pinned[..], extra].concat())
}

/// [`verify`] with `verify`'s own choice of seed (a fresh one per run) unless `extra` gives one.
pub fn verify_unpinned(onnx: &Path, ckpt: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "verify",
        onnx.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--runtime",
        "ort",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = super::run(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().expect("exited"), text)
}

/// Protobuf at the byte level, for what the crate's encoder cannot write (a field given twice,
/// sparse tensors, a `Constant` with two values): the doctoring these tests need.
pub mod wire {
    /// Appends `v` as a protobuf varint.
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// Appends a length-delimited field.
    pub fn field(f: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(f << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// Appends a varint field.
    pub fn field_int(f: u64, v: u64, out: &mut Vec<u8>) {
        varint(f << 3, out);
        varint(v, out);
    }

    /// Appends a fixed32 float field.
    pub fn field_f32(f: u64, v: f32, out: &mut Vec<u8>) {
        varint(f << 3 | 5, out);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A float32 scalar `TensorProto` (named `name` when not empty) holding `v` as `raw_data`.
    pub fn scalar_tensor(name: &str, v: f32) -> Vec<u8> {
        let mut t = Vec::new();
        field_int(2, 1, &mut t);
        if !name.is_empty() {
            field(8, name.as_bytes(), &mut t);
        }
        field(9, &v.to_le_bytes(), &mut t);
        t
    }

    /// A `Constant` node `name` (its output too) with the attributes `attrs` (encoded).
    pub fn constant_node(name: &str, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut n = Vec::new();
        field(2, name.as_bytes(), &mut n);
        field(3, name.as_bytes(), &mut n);
        field(4, b"Constant", &mut n);
        for a in attrs {
            field(5, a, &mut n);
        }
        n
    }

    /// An `AttributeProto` `name` of type `ty` with the encoded fields `body`.
    pub fn attribute(name: &str, ty: u64, body: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        field(1, name.as_bytes(), &mut a);
        a.extend_from_slice(body);
        field_int(20, ty, &mut a);
        a
    }
}

/// The yolo11 fixture exported at 64×64 with NMS inside, and its checkpoint; verify passes it.
pub fn honest_nms(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ckpt = super::fixture("yolo11-detect.pt");
    let onnx = export(dir, &ckpt, "nms.onnx", &["--nms", "--imgsz", "64"]);
    let (code, out) = verify(&onnx, &ckpt, &[]);
    assert_eq!(code, 0, "{out}");
    (onnx, ckpt)
}

/// Saves `m` as `name` in `dir` and verifies it (seed 0): exit code and output.
pub fn verify_edit(dir: &Path, m: &Model, name: &str, ckpt: &Path) -> (i32, String) {
    let p = dir.join(name);
    save(m, &p);
    verify(&p, ckpt, &[])
}
