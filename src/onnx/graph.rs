//! Building an ONNX graph: fresh names, nodes, initializers and constants, with the compute
//! dtype (f32, or f16 for `--half`) applied to every floating constant. Weights can be kept out
//! of memory while the graph grows ([`GraphBuilder::spill_to`]): the model's bytes are written
//! only once every node exists, and holding every folded weight until then would make the
//! export's memory grow with the model.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;

use half::f16;

use super::proto::{Attr, ElemType, Node, TensorProto};

/// A value in the graph with its (static) shape; a batch of `-1` means dynamic.
#[derive(Clone, Debug)]
pub struct GraphValue {
    /// Value name.
    pub name: String,
    /// Shape (NCHW for feature maps).
    pub shape: Vec<i64>,
}

/// Initializers at least this large go to the scratch file when there is one.
const SPILL_MIN: usize = 4096;

/// Accumulates nodes and initializers.
pub struct GraphBuilder {
    /// Nodes in order of creation (a topological order).
    pub nodes: Vec<Node>,
    /// Initializers in order of creation (a spilled one's `raw` is empty: its bytes are in the
    /// scratch file, see [`GraphBuilder::finish_spill`]).
    pub initializers: Vec<TensorProto>,
    counters: HashMap<String, usize>,
    /// The element type floating values are computed in.
    pub dtype: ElemType,
    /// Height and width are dynamic (`--dynamic`): the input's size is only nominal, so no
    /// emission may bake a spatial size into a shape or a constant (anchors come from the
    /// feature maps' shapes, reshapes infer the spatial extent).
    pub dynamic_hw: bool,
    spill: Option<Scratch>,
}

/// An initializer's values and the element type they are stored as.
enum Values<'a> {
    F32(&'a [f32]),
    /// f32 values stored as f16 (rounded to nearest even).
    F16(&'a [f32]),
    I64(&'a [i64]),
}

impl Values<'_> {
    fn elem(&self) -> ElemType {
        match self {
            Values::F32(_) => ElemType::Float,
            Values::F16(_) => ElemType::Float16,
            Values::I64(_) => ElemType::Int64,
        }
    }

    fn count(&self) -> usize {
        match self {
            Values::F32(v) | Values::F16(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// Bytes per stored element.
    fn size(&self) -> usize {
        match self {
            Values::F32(_) => 4,
            Values::F16(_) => 2,
            Values::I64(_) => 8,
        }
    }

    /// Appends elements `range`, little-endian.
    fn encode(&self, range: Range<usize>, out: &mut Vec<u8>) {
        match self {
            Values::F32(v) => out.extend(v[range].iter().flat_map(|x| x.to_le_bytes())),
            Values::F16(v) => out.extend(
                v[range]
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes()),
            ),
            Values::I64(v) => out.extend(v[range].iter().flat_map(|x| x.to_le_bytes())),
        }
    }
}

/// The scratch file being written and where each initializer's bytes went.
struct Scratch {
    w: BufWriter<File>,
    len: u64,
    ranges: Vec<Option<Range<u64>>>,
    error: Option<io::Error>,
}

/// Initializer bytes kept in a scratch file instead of memory.
#[derive(Debug)]
pub struct Spilled {
    file: File,
    /// Per initializer (same order), where its bytes lie in `file`; `None`: kept in `raw`.
    ranges: Vec<Option<Range<u64>>>,
}

impl Spilled {
    /// The length of initializer `i`'s bytes when they are in the scratch file.
    pub fn len(&self, i: usize) -> Option<u64> {
        let r = self.ranges.get(i)?.as_ref()?;
        Some(r.end - r.start)
    }

    /// Passes initializer `i`'s bytes to `f` in chunks of at most 1 MiB, read back from the
    /// scratch file; `false` when they are not there (they are in the tensor's `raw`).
    pub fn read(&self, i: usize, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let Some(r) = self.ranges.get(i).and_then(Option::as_ref) else {
            return Ok(false);
        };
        let mut buf = vec![0u8; ((r.end - r.start) as usize).min(1 << 20)];
        let mut at = r.start;
        while at < r.end {
            let n = ((r.end - at) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], at)?;
            f(&buf[..n])?;
            at += n as u64;
        }
        Ok(true)
    }
}

impl GraphBuilder {
    /// An empty graph computing in `dtype`.
    pub fn new(dtype: ElemType) -> GraphBuilder {
        GraphBuilder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            counters: HashMap::new(),
            dtype,
            dynamic_hw: false,
            spill: None,
        }
    }

    /// From now on, initializers of 4 KiB and more are written to `file` (an unnamed scratch
    /// file) as they are made instead of kept in memory.
    pub fn spill_to(&mut self, file: File) {
        self.spill = Some(Scratch {
            w: BufWriter::with_capacity(1 << 16, file),
            len: 0,
            ranges: vec![None; self.initializers.len()],
            error: None,
        });
    }

    /// Ends spilling: the scratch file with every spilled initializer's place, or the first
    /// error writing it. `None` when nothing was spilled to.
    pub fn finish_spill(&mut self) -> io::Result<Option<Spilled>> {
        let Some(s) = self.spill.take() else {
            return Ok(None);
        };
        if let Some(e) = s.error {
            return Err(e);
        }
        let file = s.w.into_inner().map_err(|e| e.into_error())?;
        Ok(Some(Spilled {
            file,
            ranges: s.ranges,
        }))
    }

    /// Adds an initializer, its bytes spilled when there is a scratch file and they are large
    /// (encoded a chunk at a time, so a large weight never exists twice in memory).
    fn push(&mut self, name: String, dims: Vec<i64>, values: Values) {
        const CHUNK: usize = 1 << 14;
        let index = self.initializers.len();
        let (elem, count) = (values.elem(), values.count());
        let bytes = count * values.size();
        let mut range = None;
        if let Some(s) = &mut self.spill {
            // Places are kept by index, whatever was pushed to `initializers` directly.
            s.ranges.resize(index, None);
            if bytes >= SPILL_MIN && s.error.is_none() {
                let mut buf = Vec::with_capacity(CHUNK * values.size());
                let written = (0..count).step_by(CHUNK).try_for_each(|start| {
                    buf.clear();
                    values.encode(start..(start + CHUNK).min(count), &mut buf);
                    s.w.write_all(&buf)
                });
                match written {
                    Ok(()) => {
                        range = Some(s.len..s.len + bytes as u64);
                        s.len += bytes as u64;
                    }
                    // Kept in memory; the error fails the export when spilling ends.
                    Err(e) => s.error = Some(e),
                }
            }
            s.ranges.push(range.clone());
        }
        let mut raw = Vec::new();
        if range.is_none() {
            raw.reserve_exact(bytes);
            values.encode(0..count, &mut raw);
        }
        self.initializers.push(TensorProto {
            name,
            elem,
            dims,
            raw,
        });
    }

    /// A name not used before, derived from `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        let n = self.counters.entry(hint.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            hint.to_string()
        } else {
            format!("{hint}_{}", *n - 1)
        }
    }

    /// Adds a node with `outputs` fresh outputs and returns their names.
    pub fn node_n(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<(&str, Attr)>,
    ) -> Vec<String> {
        let name = self.fresh(&format!("{scope}/{op}"));
        let outs: Vec<String> = (0..outputs)
            .map(|i| {
                if outputs == 1 {
                    format!("{name}_output_0")
                } else {
                    format!("{name}_output_{i}")
                }
            })
            .collect();
        self.nodes.push(Node {
            op: op.to_string(),
            name,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outs.clone(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        outs
    }

    /// Adds a single-output node.
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        self.node_n(scope, op, inputs, 1, attrs).remove(0)
    }

    /// A floating initializer in the compute dtype, from f32 values.
    pub fn weight(&mut self, name_hint: &str, dims: &[i64], data: &[f32]) -> String {
        let name = self.fresh(name_hint);
        let values = match self.dtype {
            ElemType::Float16 => Values::F16(data),
            _ => Values::F32(data),
        };
        self.push(name.clone(), dims.to_vec(), values);
        name
    }

    /// An int64 initializer (shapes, axes).
    pub fn ints(&mut self, name_hint: &str, values: &[i64]) -> String {
        let name = self.fresh(name_hint);
        self.push(name.clone(), vec![values.len() as i64], Values::I64(values));
        name
    }

    /// A 0-D int64 initializer (`Range` bounds, scalar `Gather` indices).
    pub fn int_scalar(&mut self, name_hint: &str, value: i64) -> String {
        let name = self.fresh(name_hint);
        self.push(name.clone(), Vec::new(), Values::I64(&[value]));
        name
    }

    /// A float32 initializer regardless of the compute dtype (Resize scales).
    pub fn f32s(&mut self, name_hint: &str, values: &[f32]) -> String {
        let name = self.fresh(name_hint);
        self.push(name.clone(), vec![values.len() as i64], Values::F32(values));
        name
    }

    /// `Reshape` to `shape` (0 copies a dimension, -1 infers one).
    pub fn reshape(&mut self, scope: &str, x: &str, shape: &[i64]) -> String {
        let s = self.ints(&format!("{scope}/shape"), shape);
        self.node(scope, "Reshape", &[x, &s], vec![])
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, scope: &str, xs: &[&str], axis: i64) -> String {
        self.node(scope, "Concat", xs, vec![("axis", Attr::Int(axis))])
    }

    /// `Split` along `axis` into parts of the given sizes.
    pub fn split(&mut self, scope: &str, x: &str, axis: i64, sizes: &[i64]) -> Vec<String> {
        let s = self.ints(&format!("{scope}/split"), sizes);
        self.node_n(
            scope,
            "Split",
            &[x, &s],
            sizes.len(),
            vec![("axis", Attr::Int(axis))],
        )
    }

    /// Elementwise binary operation.
    pub fn bin(&mut self, scope: &str, op: &str, a: &str, b: &str) -> String {
        self.node(scope, op, &[a, b], vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::Model;

    fn build(spill: Option<File>) -> (Model, Option<Spilled>) {
        let mut b = GraphBuilder::new(ElemType::Float);
        if let Some(f) = spill {
            b.spill_to(f);
        }
        let big: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5).collect();
        let w = b.weight("w", &[5000], &big);
        let s = b.ints("shape", &[1, -1]);
        let small = b.weight("s", &[2], &[1.0, 2.0]);
        let wide = b.weight("w", &[2, 1500], &big[..3000]);
        b.node("n", "Add", &[&w, &small, &s, &wide], vec![]);
        let spilled = b.finish_spill().unwrap();
        let model = Model {
            opset: 17,
            graph_name: "g".into(),
            nodes: std::mem::take(&mut b.nodes),
            initializers: std::mem::take(&mut b.initializers),
            inputs: vec![],
            outputs: vec![],
            metadata: vec![],
            producer_version: "0".into(),
        };
        (model, spilled)
    }

    #[test]
    fn spilled_weights_leave_memory_and_write_the_same_bytes() {
        let (inline, none) = build(None);
        assert!(none.is_none());
        let (model, spill) = build(Some(tempfile::tempfile().unwrap()));
        let spill = spill.unwrap();
        let kept: Vec<usize> = model.initializers.iter().map(|t| t.raw.len()).collect();
        assert_eq!(
            kept,
            [0, 16, 8, 0],
            "large weights spilled, small ones kept"
        );
        assert_eq!(
            (spill.len(0), spill.len(1), spill.len(3)),
            (Some(20000), None, Some(12000))
        );
        let mut a = [Vec::new(), Vec::new(), Vec::new()];
        let mut b = [Vec::new(), Vec::new(), Vec::new()];
        for (i, location) in [None, Some("m.onnx.data")].into_iter().enumerate() {
            inline.write_to(&mut a[i], location).unwrap();
            model
                .write_spilled(&mut b[i], location, Some(&spill))
                .unwrap();
        }
        inline.write_external_data(&mut a[2], None).unwrap();
        model.write_external_data(&mut b[2], Some(&spill)).unwrap();
        assert!(a == b, "same model and external data bytes");
        assert!(a[2].len() > 12000 + 4096 && a[0].len() > 32000);
    }

    #[test]
    fn a_failed_spill_fails_the_build() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut b = GraphBuilder::new(ElemType::Float);
        b.spill_to(full);
        b.weight("w", &[100_000], &vec![1.0; 100_000]);
        let e = b.finish_spill().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    }
}
