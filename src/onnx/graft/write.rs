//! Writing the grafted model: the input's bytes copied field by field (positioned reads, so
//! nothing of the input is kept in memory), except the initializers being replaced, which are
//! re-encoded with their own header fields and new `raw_data`, and the graph's length, which
//! changes with them. Nodes, functions, value infos, doc strings and anything else the reader
//! does not know pass through unchanged.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::GraftFault;
use super::scan::Scanned;

/// What becomes of one initializer.
pub enum Fate {
    /// Copied as it is.
    Keep,
    /// Re-encoded with `raw_data` of this many bytes (produced when it is written).
    Rewrite(u64),
}

fn varint_len(v: u64) -> u64 {
    crate::onnx::encode::varint_bytes(v).1 as u64
}

fn varint(w: &mut impl Write, v: u64) -> io::Result<()> {
    let (b, n) = crate::onnx::encode::varint_bytes(v);
    w.write_all(&b[..n])
}

/// Copies `range` of `file` to `w` in chunks of at most 8 MiB.
fn copy(file: &File, range: Range<usize>, w: &mut impl Write, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(8 << 20);
        buf.resize(n, 0);
        file.read_exact_at(buf, at as u64)?;
        w.write_all(buf)?;
        at += n;
    }
    Ok(())
}

/// Length of a rewritten tensor message (without its own key and length).
fn tensor_len(keep: &[Range<usize>], raw: u64) -> u64 {
    keep.iter().map(|r| r.len() as u64).sum::<u64>() + 1 + varint_len(raw) + raw
}

/// Streams the grafted model to `w`. `fates` is per initializer (file order); `produce(i)`
/// returns the new `raw_data` of a rewritten initializer, exactly as long as its fate said.
/// `metadata` entries are appended to `metadata_props`. Returns the bytes written.
pub fn write(
    file: &File,
    s: &Scanned,
    fates: &[Fate],
    produce: &mut dyn FnMut(usize) -> Result<Vec<u8>, GraftFault>,
    metadata: &[(String, String)],
    w: &mut impl Write,
) -> Result<u64, GraftFault> {
    let mut w = Counting { w, n: 0 };
    let mut buf = Vec::new();
    // Initializer index of each graph field that is one.
    let mut init_of = vec![None; s.graph_fields.len()];
    let mut next = 0;
    for (j, f) in s.graph_fields.iter().enumerate() {
        if f.field == 5 {
            init_of[j] = Some(next);
            next += 1;
        }
    }
    let field_len = |j: usize| -> u64 {
        match init_of[j].map(|i| (&fates[i], &s.inits[i])) {
            Some((Fate::Rewrite(raw), t)) => {
                let body = tensor_len(&t.keep, *raw);
                1 + varint_len(body) + body
            }
            _ => s.graph_fields[j].range.len() as u64,
        }
    };
    let graph_len: u64 = (0..s.graph_fields.len()).map(field_len).sum();
    for (k, top) in s.top.iter().enumerate() {
        if k != s.graph {
            copy(file, top.range.clone(), &mut w, &mut buf)?;
            continue;
        }
        w.write_all(&[0x3a])?; // field 7, length-delimited
        varint(&mut w, graph_len)?;
        let start = w.n;
        for (j, f) in s.graph_fields.iter().enumerate() {
            let Some(i) = init_of[j] else {
                copy(file, f.range.clone(), &mut w, &mut buf)?;
                continue;
            };
            let Fate::Rewrite(raw) = fates[i] else {
                copy(file, f.range.clone(), &mut w, &mut buf)?;
                continue;
            };
            let t = &s.inits[i];
            let bytes = produce(i)?;
            if bytes.len() as u64 != raw {
                return Err(GraftFault::Made {
                    name: t.name.clone(),
                    made: bytes.len(),
                    expected: raw,
                });
            }
            w.write_all(&[0x2a])?; // field 5, length-delimited
            varint(&mut w, tensor_len(&t.keep, raw))?;
            for r in &t.keep {
                copy(file, r.clone(), &mut w, &mut buf)?;
            }
            w.write_all(&[0x4a])?; // raw_data, field 9
            varint(&mut w, raw)?;
            w.write_all(&bytes)?;
        }
        if w.n - start != graph_len {
            return Err(GraftFault::GraphLength {
                written: w.n - start,
                measured: graph_len,
            });
        }
    }
    for (k, v) in metadata {
        let entry = 1
            + varint_len(k.len() as u64)
            + k.len() as u64
            + 1
            + varint_len(v.len() as u64)
            + v.len() as u64;
        w.write_all(&[0x72])?; // metadata_props, field 14
        varint(&mut w, entry)?;
        w.write_all(&[0x0a])?;
        varint(&mut w, k.len() as u64)?;
        w.write_all(k.as_bytes())?;
        w.write_all(&[0x12])?;
        varint(&mut w, v.len() as u64)?;
        w.write_all(v.as_bytes())?;
    }
    Ok(w.n)
}

struct Counting<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.w.write(b)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{ElemType, Model, Node, TensorProto};

    fn model() -> Model {
        let t = |name: &str, n: usize| TensorProto {
            name: name.into(),
            elem: ElemType::Float,
            dims: vec![n as i64],
            raw: (0..n * 4).map(|i| i as u8).collect(),
        };
        Model {
            opset: 17,
            graph_name: "g".into(),
            nodes: vec![Node {
                op: "Add".into(),
                name: "n".into(),
                inputs: vec!["a".into(), "b".into()],
                outputs: vec!["y".into()],
                attrs: vec![],
            }],
            initializers: vec![t("a", 3), t("b", 40)],
            inputs: vec![],
            outputs: vec![],
            metadata: vec![("k".into(), "v".into())],
            producer_version: "0".into(),
        }
    }

    fn scanned(bytes: &[u8]) -> (tempfile::NamedTempFile, Scanned) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let s = crate::onnx::graft::scan::scan(bytes, f.path()).unwrap();
        (f, s)
    }

    #[test]
    fn keeping_everything_copies_the_model_byte_for_byte() {
        let bytes = model().encode();
        let (f, s) = scanned(&bytes);
        let mut out = Vec::new();
        let fates = [Fate::Keep, Fate::Keep];
        let n = write(
            f.as_file(),
            &s,
            &fates,
            &mut |_| unreachable!(),
            &[],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, bytes);
        assert_eq!(n, bytes.len() as u64);
    }

    #[test]
    fn a_rewritten_initializer_reads_back_with_new_data_and_metadata() {
        let bytes = model().encode();
        let (f, s) = scanned(&bytes);
        let mut out = Vec::new();
        // 160 bytes: a length that takes a two-byte varint, so the graph's length changes.
        let fates = [Fate::Keep, Fate::Rewrite(160)];
        let meta = [("graft".to_string(), "yes".to_string())];
        write(
            f.as_file(),
            &s,
            &fates,
            &mut |_| Ok(vec![7u8; 160]),
            &meta,
            &mut out,
        )
        .unwrap();
        let m = crate::onnx::read::parse(&out, None).unwrap();
        assert_eq!(m.initializers[0].raw, model().initializers[0].raw);
        assert_eq!(m.initializers[1].raw, vec![7u8; 160]);
        assert_eq!((m.initializers[1].name.as_str(), m.nodes.len()), ("b", 1));
        assert_eq!(
            m.metadata,
            [("k".into(), "v".into()), ("graft".into(), "yes".into())]
        );
        let wrong = write(
            f.as_file(),
            &s,
            &fates,
            &mut |_| Ok(vec![0u8; 3]),
            &[],
            &mut Vec::new(),
        );
        assert!(matches!(
            wrong.unwrap_err(),
            GraftFault::Made { expected: 160, .. }
        ));
    }
}
