//! The sub-model of an ONNX that starts at the head's raw predictions: the nodes that compute
//! `output0` from that tensor (and from the input's shape), with the tensor as a graph input.
//! The file's own bytes are copied field by field — only dropped nodes, other outputs and the
//! new input change — so ONNX Runtime reads the tail exactly as it reads it in the whole file.

use std::ops::Range;

use crate::onnx::proto::{Attr, Dim, ElemType, Model, Node, ValueInfo};

/// One field of a protobuf message: its number, the bytes of the whole field (tag included) and
/// of its payload (length-delimited fields; empty otherwise).
struct Field {
    num: u64,
    /// The value of a varint field.
    value: u64,
    whole: Range<usize>,
    payload: Range<usize>,
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("a truncated varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("an over-long varint".into())
}

fn fields(b: &[u8]) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let tag = varint(b, &mut at)?;
        let mut value = 0;
        let payload = match tag & 7 {
            0 => {
                value = varint(b, &mut at)?;
                at..at
            }
            1 => (at + 8)..(at + 8),
            5 => (at + 4)..(at + 4),
            2 => {
                let n = usize::try_from(varint(b, &mut at)?).map_err(|_| "a huge length")?;
                at..at.checked_add(n).ok_or("a huge length")?
            }
            w => return Err(format!("wire type {w}")),
        };
        at = at.max(payload.end);
        if at > b.len() {
            return Err("a field past the end of its message".into());
        }
        out.push(Field {
            num: tag >> 3,
            value,
            whole: start..at,
            payload,
        });
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, num: u64, payload: &[u8]) {
    for v in [num << 3 | 2, payload.len() as u64] {
        let (b, n) = crate::onnx::encode::varint_bytes(v);
        out.extend_from_slice(&b[..n]);
    }
    out.extend_from_slice(payload);
}

/// The head output an NMS tail starts from and the tail's nodes (indices into `model.nodes`).
pub(super) struct Tail {
    /// The tensor the tail reads.
    pub pred: String,
    /// Nodes that compute `output0` from it.
    pub nodes: Vec<usize>,
}

/// The nodes computing `output0` from `pred`, or why `pred` does not separate `output0` from
/// the image (it reaches the image's values other than through `Shape`).
fn closure(model: &Model, pred: &str) -> Result<Vec<usize>, String> {
    let out = model.outputs.first().ok_or("it has no output")?;
    let mut keep = vec![false; model.nodes.len()];
    let mut todo = vec![out.name.as_str()];
    let mut seen = std::collections::HashSet::new();
    while let Some(t) = todo.pop() {
        if t.is_empty() || t == pred || !seen.insert(t) {
            continue;
        }
        if model.initializers.iter().any(|i| i.name == t) {
            continue;
        }
        if model.inputs.iter().any(|i| i.name == t) {
            return Err(format!("'{t}' is read other than through its shape"));
        }
        let Some(k) = (model.nodes.iter()).position(|n| n.outputs.iter().any(|o| o == t)) else {
            return Err(format!("nothing computes '{t}'"));
        };
        if keep[k] {
            continue;
        }
        keep[k] = true;
        let n = &model.nodes[k];
        let shape_of_input = n.op == "Shape"
            && (n.inputs.first()).is_some_and(|i| model.inputs.iter().any(|g| &g.name == i));
        if !shape_of_input {
            todo.extend(n.inputs.iter().map(String::as_str));
        }
    }
    Ok((0..keep.len()).filter(|&k| keep[k]).collect())
}

/// The tensors the head's raw predictions could be: the output of every `Concat` along axis 1
/// that every path from the image's values to `output0` passes through (every Ultralytics head
/// ends by concatenating boxes, scores and extras along axis 1), with the nodes after it;
/// earliest first (most nodes after it). Which one holds the predictions is told by running
/// the model ([`probe`]).
pub(super) fn candidates(model: &Model) -> Result<Vec<Tail>, String> {
    let mut found = Vec::new();
    for n in model.nodes.iter().filter(|n| n.op == "Concat") {
        let axis1 = (n.attrs.iter()).any(|(k, a)| k == "axis" && matches!(a, Attr::Int(1 | -2)));
        let Some(out) = n.outputs.first().filter(|_| axis1 && n.outputs.len() == 1) else {
            continue;
        };
        if let Ok(nodes) = closure(model, out) {
            found.push(Tail {
                pred: out.clone(),
                nodes,
            });
        }
    }
    found.sort_by_key(|t| std::cmp::Reverse(t.nodes.len()));
    if found.is_empty() {
        return Err(
            "no Concat along axis 1 separates its output0 from the image (the head's predictions \
             that feed the NMS cannot be identified)"
                .into(),
        );
    }
    Ok(found)
}

/// The name of the probe output of candidate `i`.
pub(super) fn probe_name(i: usize) -> String {
    format!("nms_tail/probe/{i}")
}

/// `bytes` with each candidate's tensor also an output (as float32, through a `Cast`), named
/// [`probe_name`]: a second `graph` field, which protobuf merges into the first.
pub(super) fn probe(model: &Model, bytes: &[u8], tails: &[Tail]) -> Result<Vec<u8>, String> {
    let nodes = (tails.iter().enumerate())
        .map(|(i, t)| Node {
            op: "Cast".into(),
            name: format!("{}/Cast", probe_name(i)),
            inputs: vec![t.pred.clone()],
            outputs: vec![probe_name(i)],
            attrs: vec![("to".into(), Attr::Int(ElemType::Float as i64))],
        })
        .collect();
    let extra = Model {
        opset: model.opset,
        graph_name: String::new(),
        nodes,
        initializers: vec![],
        inputs: vec![],
        outputs: vec![],
        metadata: vec![],
        producer_version: String::new(),
    }
    .encode();
    let mut graph = Vec::new();
    for f in fields(&extra)?.iter().filter(|f| f.num == 7) {
        for n in fields(&extra[f.payload.clone()])?
            .iter()
            .filter(|n| n.num == 1)
        {
            graph.extend_from_slice(&extra[f.payload.start..][n.whole.clone()]);
        }
    }
    for i in 0..tails.len() {
        // ValueInfoProto { name, type { tensor_type { elem_type FLOAT } } }, no shape.
        let (mut ty, mut vi) = (Vec::new(), Vec::new());
        put_len(&mut ty, 1, &[0x08, ElemType::Float as u8]);
        put_len(&mut vi, 1, probe_name(i).as_bytes());
        put_len(&mut vi, 2, &ty);
        put_len(&mut graph, 12, &vi);
    }
    let mut out = bytes.to_vec();
    put_len(&mut out, 7, &graph);
    Ok(out)
}

/// Whether an initializer of `bytes` is in external data (named relative to the ONNX's
/// directory, where the model must then be run from).
pub(super) fn external(bytes: &[u8]) -> Result<bool, String> {
    for g in fields(bytes)?.iter().filter(|f| f.num == 7) {
        let graph = &bytes[g.payload.clone()];
        for i in fields(graph)?.iter().filter(|f| f.num == 5) {
            let t = fields(&graph[i.payload.clone()])?;
            if (t.iter()).any(|t| t.num == 13 || (t.num == 14 && t.value == 1)) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The sub-model of the tail.
pub(super) struct Cut {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The name of its predictions input.
    pub input: String,
    /// Whether one of its initializers is in an external data file (named relative to the
    /// ONNX's directory, where the sub-model must then be run from).
    pub external: bool,
}

/// The name the sub-model's prediction input gets where the head computes in float16 (a `Cast`
/// then makes the head's own tensor from it).
pub(super) const PRED_INPUT: &str = "nms_tail/predictions";

/// The bytes of the sub-model of `bytes` (parsed as `model`) that computes `output0` from
/// `tail.pred`, given as a float32 input of `dims` (through a `Cast` when the head is `half`),
/// beside the original image input (read for its shape only).
pub(super) fn cut(
    bytes: &[u8],
    model: &Model,
    tail: &Tail,
    dims: &[usize],
    half: bool,
) -> Result<Cut, String> {
    let input_name = if half { PRED_INPUT } else { &tail.pred };
    // The new input (and Cast) encoded by our writer, then lifted out of its graph.
    let extra = Model {
        opset: model.opset,
        graph_name: "nms_tail".into(),
        nodes: match half {
            true => vec![Node {
                op: "Cast".into(),
                name: "nms_tail/Cast".into(),
                inputs: vec![PRED_INPUT.into()],
                outputs: vec![tail.pred.clone()],
                attrs: vec![("to".into(), Attr::Int(ElemType::Float16 as i64))],
            }],
            false => vec![],
        },
        initializers: vec![],
        inputs: vec![ValueInfo {
            name: input_name.into(),
            elem: ElemType::Float,
            dims: dims.iter().map(|&d| Dim::Fixed(d as i64)).collect(),
        }],
        outputs: vec![],
        metadata: vec![],
        producer_version: String::new(),
    }
    .encode();
    // A message given twice is merged: the same as one holding both payloads in turn.
    let graph_of = |b: &[u8]| -> Result<Vec<u8>, String> {
        let top = fields(b)?;
        let graphs: Vec<u8> = (top.iter().filter(|f| f.num == 7))
            .flat_map(|f| b[f.payload.clone()].iter().copied())
            .collect();
        Ok(graphs)
    };
    let eg = graph_of(&extra)?;
    let extra_fields = fields(&eg)?;
    let piece = |num: u64| -> Vec<u8> {
        (extra_fields.iter().filter(|f| f.num == num))
            .flat_map(|f| eg[f.whole.clone()].to_vec())
            .collect()
    };
    let (new_nodes, new_input) = (piece(1), piece(11));

    let graph = &graph_of(bytes)?[..];
    let gf = fields(graph)?;
    let mut external = false;
    if gf.iter().filter(|f| f.num == 1).count() != model.nodes.len() {
        return Err("its nodes are not read the same way twice".into());
    }
    let output0 = &model.outputs.first().ok_or("it has no output")?.name;
    let mut out_graph = Vec::with_capacity(graph.len());
    let (mut node_at, mut nodes_started) = (0, false);
    for f in &gf {
        let whole = &graph[f.whole.clone()];
        match f.num {
            1 => {
                if !nodes_started {
                    // Before the first node: the Cast that makes the head's tensor.
                    out_graph.extend_from_slice(&new_nodes);
                    nodes_started = true;
                }
                if tail.nodes.contains(&node_at) {
                    out_graph.extend_from_slice(whole);
                }
                node_at += 1;
            }
            // Only the tail's own constants: the weights may live in an external data file
            // that a model run from memory cannot reach.
            5 => {
                let t = fields(&graph[f.payload.clone()])?;
                let name = (t.iter().find(|t| t.num == 8)).map(|n| {
                    String::from_utf8_lossy(&graph[f.payload.start..][n.payload.clone()])
                        .into_owned()
                });
                let used = name.is_some_and(|name| {
                    (tail.nodes.iter()).any(|&k| model.nodes[k].inputs.contains(&name))
                });
                if used {
                    external |= (t.iter()).any(|t| t.num == 13 || (t.num == 14 && t.value == 1));
                    out_graph.extend_from_slice(whole);
                }
            }
            12 => {
                let v = crate::onnx::read::value_info(&graph[f.payload.clone()])
                    .map_err(|e| e.to_string())?;
                if &v.name == output0 {
                    out_graph.extend_from_slice(whole);
                }
            }
            _ => out_graph.extend_from_slice(whole),
        }
    }
    out_graph.extend_from_slice(&new_input);
    let mut out = Vec::with_capacity(bytes.len());
    let mut graph_written = false;
    for f in fields(bytes)? {
        match f.num {
            7 if graph_written => {}
            7 => {
                put_len(&mut out, 7, &out_graph);
                graph_written = true;
            }
            _ => out.extend_from_slice(&bytes[f.whole]),
        }
    }
    Ok(Cut {
        bytes: out,
        input: input_name.to_string(),
        external,
    })
}
