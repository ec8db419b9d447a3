//! The protobuf wire encoding of a [`Model`], streamed: a nested message's length is measured
//! by a counting pass over that message alone, then its bytes go straight to the writer. No
//! message is assembled in memory, so initializer bytes travel once, from the builder's tensors
//! to the file (the encoder that built each message into its parent held the model three
//! times). Field numbers are `onnx.proto`'s; the same model always gives the same bytes.

use std::io::{self, Write};

use super::graph::Spilled;
use super::proto::{Attr, Dim, Model, Node, TensorProto, ValueInfo, ir_version};

/// Initializers at least this large go to the external data file when one is used.
const EXTERNAL_MIN: u64 = 1024;

/// Each tensor in the external data file starts at a multiple of this (what onnx's own
/// `convert_model_to_external_data` aligns to, so a runtime can map it).
const EXTERNAL_ALIGN: u64 = 4096;

/// Where encoded bytes go: a writer, or a tally that only measures.
trait Sink {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// The running count when this sink only measures (so a nested message's body, already
    /// measured, is added rather than walked again).
    fn tally(&mut self) -> Option<&mut u64>;
}

/// Measures without writing.
struct Tally(u64);

impl Sink for Tally {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0 += bytes.len() as u64;
        Ok(())
    }

    fn tally(&mut self) -> Option<&mut u64> {
        Some(&mut self.0)
    }
}

/// Writes, counting what it wrote.
struct Out<'a, W: Write> {
    w: &'a mut W,
    written: u64,
}

impl<W: Write> Sink for Out<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn tally(&mut self) -> Option<&mut u64> {
        None
    }
}

/// A message's fields, written to any sink (run once to measure, once to write).
type Body<'a> = &'a dyn Fn(&mut dyn Sink) -> io::Result<()>;

type R = io::Result<()>;

fn varint(s: &mut dyn Sink, v: u64) -> R {
    let (buf, n) = varint_bytes(v);
    s.put(&buf[..n])
}

/// `v` as a protobuf varint: seven bits a byte, low first, the high bit set on all but the last;
/// the bytes and how many of them are used (1 to 10). For every writer of ONNX protobuf.
pub(crate) fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    (buf, n + 1)
}

fn key(s: &mut dyn Sink, field: u32, wire: u8) -> R {
    varint(s, ((field as u64) << 3) | wire as u64)
}

fn int(s: &mut dyn Sink, field: u32, v: i64) -> R {
    key(s, field, 0)?;
    varint(s, v as u64)
}

fn bytes(s: &mut dyn Sink, field: u32, b: &[u8]) -> R {
    key(s, field, 2)?;
    varint(s, b.len() as u64)?;
    s.put(b)
}

fn string(s: &mut dyn Sink, field: u32, v: &str) -> R {
    bytes(s, field, v.as_bytes())
}

/// A length-delimited field whose contents `body` writes: measured first, then written.
fn message(s: &mut dyn Sink, field: u32, body: Body) -> R {
    let mut inner = Tally(0);
    body(&mut inner)?;
    key(s, field, 2)?;
    varint(s, inner.0)?;
    match s.tally() {
        Some(n) => {
            *n += inner.0;
            Ok(())
        }
        None => body(s),
    }
}

fn packed_ints(s: &mut dyn Sink, field: u32, v: &[i64]) -> R {
    message(s, field, &|m| {
        v.iter().try_for_each(|&x| varint(m, x as u64))
    })
}

/// Where a tensor's bytes lie in the external data file.
#[derive(Clone, Copy)]
struct External<'a> {
    location: &'a str,
    offset: u64,
}

/// An initializer's bytes: in the tensor, or in the builder's scratch file.
#[derive(Clone, Copy)]
struct Raw<'a> {
    t: &'a TensorProto,
    index: usize,
    spill: Option<&'a Spilled>,
}

impl Raw<'_> {
    fn len(&self) -> u64 {
        self.spill
            .and_then(|s| s.len(self.index))
            .unwrap_or(self.t.raw.len() as u64)
    }

    fn put(&self, s: &mut dyn Sink) -> R {
        if let Some(n) = s.tally() {
            *n += self.len();
            return Ok(());
        }
        if let Some(spill) = self.spill
            && spill.read(self.index, &mut |c| s.put(c))?
        {
            return Ok(());
        }
        s.put(&self.t.raw)
    }
}

fn tensor(s: &mut dyn Sink, raw: Raw, ext: Option<External>) -> R {
    let t = raw.t;
    packed_ints(s, 1, &t.dims)?;
    int(s, 2, t.elem as i64)?;
    string(s, 8, &t.name)?;
    let Some(e) = ext else {
        key(s, 9, 2)?;
        varint(s, raw.len())?;
        return raw.put(s);
    };
    for (k, v) in [
        ("location", e.location.to_string()),
        ("offset", e.offset.to_string()),
        ("length", raw.len().to_string()),
    ] {
        message(s, 13, &|m| {
            string(m, 1, k)?;
            string(m, 2, &v)
        })?;
    }
    int(s, 14, 1)
}

fn value_info(s: &mut dyn Sink, v: &ValueInfo) -> R {
    string(s, 1, &v.name)?;
    let shape = |m: &mut dyn Sink| {
        v.dims.iter().try_for_each(|d| {
            message(m, 1, &|dim| match d {
                Dim::Fixed(n) => int(dim, 1, *n),
                Dim::Param(p) => string(dim, 2, p),
            })
        })
    };
    let tensor_type = |m: &mut dyn Sink| {
        int(m, 1, v.elem as i64)?;
        message(m, 2, &shape)
    };
    message(s, 2, &|ty| message(ty, 1, &tensor_type))
}

fn attribute(s: &mut dyn Sink, name: &str, a: &Attr) -> R {
    string(s, 1, name)?;
    let kind = match a {
        Attr::Float(f) => {
            key(s, 2, 5)?;
            s.put(&f.to_le_bytes())?;
            1
        }
        Attr::Int(i) => {
            int(s, 3, *i)?;
            2
        }
        Attr::Str(v) => {
            string(s, 4, v)?;
            3
        }
        Attr::Floats(v) => {
            message(s, 7, &|m| {
                v.iter().try_for_each(|f| m.put(&f.to_le_bytes()))
            })?;
            6
        }
        Attr::Ints(v) => {
            packed_ints(s, 8, v)?;
            7
        }
        // Only the reader makes one; the exporters never do.
        Attr::Graph => {
            return Err(std::io::Error::other(format!(
                "attribute '{name}' is a subgraph, which this encoder does not write"
            )));
        }
    };
    int(s, 20, kind)
}

fn node(s: &mut dyn Sink, n: &Node) -> R {
    for i in &n.inputs {
        string(s, 1, i)?;
    }
    for o in &n.outputs {
        string(s, 2, o)?;
    }
    string(s, 3, &n.name)?;
    string(s, 4, &n.op)?;
    for (name, a) in &n.attrs {
        message(s, 5, &|m| attribute(m, name, a))?;
    }
    Ok(())
}

impl Model {
    fn raws<'a>(&'a self, spill: Option<&'a Spilled>) -> impl Iterator<Item = Raw<'a>> {
        self.initializers
            .iter()
            .enumerate()
            .map(move |(index, t)| Raw { t, index, spill })
    }

    /// Where each initializer's bytes start in the external data file (`None`: kept inline,
    /// being under the size worth moving). Both the model and the data file are written from
    /// this one layout.
    fn external_offsets(&self, spill: Option<&Spilled>) -> Vec<Option<u64>> {
        let mut end = 0u64;
        self.raws(spill)
            .map(|raw| {
                (raw.len() >= EXTERNAL_MIN).then(|| {
                    let offset = end.div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
                    end = offset + raw.len();
                    offset
                })
            })
            .collect()
    }

    fn fields(&self, s: &mut dyn Sink, location: Option<&str>, spill: Option<&Spilled>) -> R {
        let offsets = location.map(|_| self.external_offsets(spill));
        // The exporter accepts only opsets the table covers (crate::onnx::OPSETS).
        int(s, 1, ir_version(self.opset).unwrap_or(10))?;
        string(s, 2, "fuse-ema")?;
        string(s, 3, &self.producer_version)?;
        message(s, 7, &|g| {
            for n in &self.nodes {
                message(g, 1, &|m| node(m, n))?;
            }
            string(g, 2, &self.graph_name)?;
            for (i, raw) in self.raws(spill).enumerate() {
                let ext = match (location, &offsets) {
                    (Some(location), Some(o)) => o[i].map(|offset| External { location, offset }),
                    _ => None,
                };
                message(g, 5, &|m| tensor(m, raw, ext))?;
            }
            for v in &self.inputs {
                message(g, 11, &|m| value_info(m, v))?;
            }
            for v in &self.outputs {
                message(g, 12, &|m| value_info(m, v))?;
            }
            Ok(())
        })?;
        message(s, 8, &|o| {
            string(o, 1, "")?;
            int(o, 2, self.opset)
        })?;
        for (k, v) in &self.metadata {
            message(s, 14, &|m| {
                string(m, 1, k)?;
                string(m, 2, v)
            })?;
        }
        Ok(())
    }

    /// Writes the serialised `ModelProto` to `w` and returns its length. With `location`, the
    /// initializers of 1 KiB and more are referenced in the external data file of that name
    /// (beside the model; see [`Model::write_external_data`]) instead of stored inline.
    /// Nothing is buffered here: give a [`std::io::BufWriter`] for a file.
    pub fn write_to(&self, w: &mut impl Write, location: Option<&str>) -> io::Result<u64> {
        self.write_spilled(w, location, None)
    }

    /// [`Model::write_to`] for a model whose builder spilled initializer bytes to `spill`
    /// (their `raw` is empty; the bytes are read back from there as they are written).
    pub fn write_spilled(
        &self,
        w: &mut impl Write,
        location: Option<&str>,
        spill: Option<&Spilled>,
    ) -> io::Result<u64> {
        let mut out = Out { w, written: 0 };
        self.fields(&mut out, location, spill)?;
        Ok(out.written)
    }

    /// The length [`Model::write_to`] writes, without writing.
    pub fn encoded_len(&self, location: Option<&str>) -> u64 {
        let mut t = Tally(0);
        // A tally never fails: every error comes from a writer.
        match self.fields(&mut t, location, None) {
            Ok(()) => t.0,
            Err(_) => unreachable!("measuring cannot fail"),
        }
    }

    /// Writes the external data file that [`Model::write_to`] with a location refers to: each
    /// moved initializer's bytes at its 4096-byte aligned offset, zeros between them (read
    /// back from `spill` for those the builder spilled). Returns its length.
    pub fn write_external_data(
        &self,
        w: &mut impl Write,
        spill: Option<&Spilled>,
    ) -> io::Result<u64> {
        let zeros = [0u8; EXTERNAL_ALIGN as usize];
        let mut out = Out { w, written: 0 };
        for (raw, offset) in self.raws(spill).zip(self.external_offsets(spill)) {
            let Some(offset) = offset else { continue };
            out.put(&zeros[..(offset - out.written) as usize])?;
            raw.put(&mut out)?;
        }
        Ok(out.written)
    }

    /// The serialised `ModelProto`, in memory (tests, fuzzing, small models); files are written
    /// with [`Model::write_to`].
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len(None) as usize);
        match self.write_to(&mut v, None) {
            Ok(_) => v,
            Err(_) => unreachable!("writing to a Vec cannot fail"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::ElemType;

    #[test]
    fn varints_match_protobuf() {
        let mut t = Out {
            w: &mut Vec::new(),
            written: 0,
        };
        varint(&mut t, 300).unwrap();
        assert_eq!(t.w.as_slice(), [0xac, 0x02]);
        t.w.clear();
        varint(&mut t, -1i64 as u64).unwrap();
        assert_eq!(t.w.len(), 10, "negative int64 takes ten bytes");
    }

    #[test]
    fn nested_lengths_are_measured_before_writing() {
        // field 7 { field 1 { field 1 = 150 } }: 3a 05 0a 03 08 96 01
        let mut out = Vec::new();
        let mut s = Out {
            w: &mut out,
            written: 0,
        };
        message(&mut s, 7, &|m| message(m, 1, &|n| int(n, 1, 150))).unwrap();
        assert_eq!(out, [0x3a, 0x05, 0x0a, 0x03, 0x08, 0x96, 0x01]);
        let mut t = Tally(0);
        message(&mut t, 7, &|m| message(m, 1, &|n| int(n, 1, 150))).unwrap();
        assert_eq!(t.0, 7, "measuring gives the written length");
    }

    fn model(sizes: &[usize]) -> Model {
        Model {
            opset: 17,
            graph_name: "g".into(),
            nodes: vec![],
            initializers: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| TensorProto {
                    name: format!("t{i}"),
                    elem: ElemType::Float,
                    dims: vec![n as i64 / 4],
                    raw: vec![i as u8 + 1; n],
                })
                .collect(),
            inputs: vec![],
            outputs: vec![],
            metadata: vec![("k".into(), "v".into())],
            producer_version: "0".into(),
        }
    }

    #[test]
    fn external_data_is_aligned_and_small_tensors_stay_inline() {
        let m = model(&[4096 + 4, 8, 1024]);
        assert_eq!(m.external_offsets(None), [Some(0), None, Some(8192)]);
        let mut data = Vec::new();
        assert_eq!(m.write_external_data(&mut data, None).unwrap(), 8192 + 1024);
        assert_eq!(data.len(), 8192 + 1024);
        assert!(data[..4100].iter().all(|&b| b == 1));
        assert!(data[4100..8192].iter().all(|&b| b == 0), "padding is zeros");
        assert!(data[8192..].iter().all(|&b| b == 3));
        let mut proto = Vec::new();
        let n = m.write_to(&mut proto, Some("m.onnx.data")).unwrap();
        assert_eq!(n, proto.len() as u64);
        assert_eq!(n, m.encoded_len(Some("m.onnx.data")));
        assert!(proto.windows(4).any(|w| w == b"8192"), "offset recorded");
        assert!(
            proto.windows(8).any(|w| w == [2u8; 8]),
            "the small tensor stays inline"
        );
        assert!(proto.len() < 1024, "moved tensors are not inline");
    }

    #[test]
    fn a_failing_writer_fails_the_write() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let m = model(&[16]);
        assert!(m.write_to(&mut Full, None).is_err());
        assert_eq!(m.encode().len() as u64, m.encoded_len(None));
    }
}
