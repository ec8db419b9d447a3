//! Building an ONNX graph: fresh names, nodes, initializers and constants, with the compute
//! dtype (f32, or f16 for `--half`) applied to every floating constant.

use std::collections::HashMap;

use half::f16;

use super::proto::{Attr, ElemType, Node, TensorProto};

/// A value in the graph with its (static) shape; a batch of `-1` means dynamic.
#[derive(Clone, Debug)]
pub struct V {
    /// Value name.
    pub name: String,
    /// Shape (NCHW for feature maps).
    pub shape: Vec<i64>,
}

/// Accumulates nodes and initializers.
pub struct GraphBuilder {
    /// Nodes in order of creation (a topological order).
    pub nodes: Vec<Node>,
    /// Initializers in order of creation.
    pub initializers: Vec<TensorProto>,
    counters: HashMap<String, usize>,
    /// The element type floating values are computed in.
    pub dtype: ElemType,
}

impl GraphBuilder {
    /// An empty graph computing in `dtype`.
    pub fn new(dtype: ElemType) -> GraphBuilder {
        GraphBuilder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            counters: HashMap::new(),
            dtype,
        }
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
        let raw = match self.dtype {
            ElemType::Float16 => data
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        self.initializers.push(TensorProto {
            name: name.clone(),
            elem: self.dtype,
            dims: dims.to_vec(),
            raw,
        });
        name
    }

    /// An int64 initializer (shapes, axes).
    pub fn ints(&mut self, name_hint: &str, values: &[i64]) -> String {
        let name = self.fresh(name_hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            elem: ElemType::Int64,
            dims: vec![values.len() as i64],
            raw: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
        name
    }

    /// A float32 initializer regardless of the compute dtype (Resize scales).
    pub fn f32s(&mut self, name_hint: &str, values: &[f32]) -> String {
        let name = self.fresh(name_hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            elem: ElemType::Float,
            dims: vec![values.len() as i64],
            raw: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
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
