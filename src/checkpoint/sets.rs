//! What a checkpoint holds: each top-level entry classified, and every weight set (a module's
//! state dict or a dict of tensors) found with its path.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Checkpoint;
use super::module::{self, ModuleError};
use super::value::{Graph, Node, NodeId, Value};
use crate::tensor::Tensor;

/// How deep below the root weight sets are looked for (RT-DETR keeps `ema.module`, Lightning
/// keeps `callbacks.<name>.…`).
const MAX_SET_DEPTH: usize = 4;

/// What kind of thing an entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum EntryKind {
    /// A pickled `nn.Module`.
    Module {
        /// Its class.
        class: String,
    },
    /// A dict of tensors (a state dict).
    TensorDict,
    /// One tensor.
    Tensor,
    /// An optimizer `state_dict()` (`state` + `param_groups`), or a list of them.
    Optimizer,
    /// Python `None`.
    None,
    /// A number, string or bool.
    Scalar,
    /// Another dict.
    Dict,
    /// A list or tuple.
    List,
    /// Any other object.
    Object {
        /// Its class, when named.
        class: Option<String>,
    },
}

/// Classifies one value.
pub fn classify(graph: &Graph, v: &Value) -> EntryKind {
    match v {
        Value::None => return EntryKind::None,
        Value::Node(_) => {}
        _ => return EntryKind::Scalar,
    }
    if module::is_module(graph, v) {
        return EntryKind::Module {
            class: module::class_name(graph, v).unwrap_or_else(|| "?".into()),
        };
    }
    match graph.get(v) {
        Some(Node::Tensor(_)) => EntryKind::Tensor,
        Some(Node::Dict(d)) => {
            if is_optimizer(graph, v) {
                EntryKind::Optimizer
            } else if is_tensor_dict(graph, d) {
                EntryKind::TensorDict
            } else {
                EntryKind::Dict
            }
        }
        Some(Node::List(items) | Node::Tuple(items)) => {
            if !items.is_empty() && items.iter().all(|i| is_optimizer(graph, i)) {
                EntryKind::Optimizer
            } else {
                EntryKind::List
            }
        }
        Some(Node::Bytes(_)) => EntryKind::Scalar,
        Some(Node::Object(o)) => EntryKind::Object {
            class: o.class.as_ref().map(|g| g.dotted()),
        },
        _ => EntryKind::Object { class: None },
    }
}

fn is_optimizer(graph: &Graph, v: &Value) -> bool {
    graph.dict_get(v, "state").is_some() && graph.dict_get(v, "param_groups").is_some()
}

/// A dict with at least one tensor whose other values are all `None` or scalars.
fn is_tensor_dict(graph: &Graph, d: &[(Value, Value)]) -> bool {
    let mut tensors = 0;
    for (k, v) in d {
        if k.as_str().is_none() {
            return false;
        }
        match graph.get(v) {
            Some(Node::Tensor(_)) => tensors += 1,
            None => {}
            Some(_) => return false,
        }
    }
    tensors > 0
}

/// A named collection of tensors: a module's state dict or a tensor dict.
#[derive(Clone, Debug)]
pub struct WeightSet {
    /// Where it lives: dict keys joined with `.` (`ema`, `state_dict_ema`, `ema.module`); empty
    /// for the root.
    pub path: String,
    /// The module class when the set is a module's state dict.
    pub class: Option<String>,
    /// The tensors in state-dict order.
    pub tensors: Vec<(String, Tensor)>,
}

/// Size figures of a set of tensors.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Number of tensors.
    pub tensors: usize,
    /// Total number of elements (parameters and buffers).
    pub parameters: u64,
    /// Tensor count per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Total bytes of the elements.
    pub bytes: u64,
}

impl WeightSet {
    /// Counts, element totals, dtypes and bytes.
    pub fn stats(&self) -> Stats {
        stats(self.tensors.iter().map(|(_, t)| t))
    }

    /// The tensor of a name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Figures over any tensors.
pub fn stats<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Stats {
    let mut s = Stats::default();
    for t in tensors {
        s.tensors += 1;
        s.parameters += t.numel() as u64;
        s.bytes += t.nbytes() as u64;
        *s.dtypes.entry(t.dtype().name().to_string()).or_default() += 1;
    }
    s
}

impl Checkpoint {
    /// The top-level entries with their kinds: the root dict's items, or the root itself.
    pub fn entries(&self) -> Vec<(String, Value, EntryKind)> {
        match self.graph.dict(&self.root) {
            Some(d) if !is_tensor_dict(&self.graph, d) => {
                // One object held under many keys is classified once.
                let mut seen: HashMap<NodeId, EntryKind> = HashMap::new();
                d.iter()
                    .map(|(k, v)| {
                        let kind = match v.node() {
                            Some(id) => seen
                                .entry(id)
                                .or_insert_with(|| classify(&self.graph, v))
                                .clone(),
                            None => classify(&self.graph, v),
                        };
                        (key_text(k), v.clone(), kind)
                    })
                    .collect()
            }
            _ => vec![(
                String::new(),
                self.root.clone(),
                classify(&self.graph, &self.root),
            )],
        }
    }

    /// Every weight set in the file, in the order the file holds them.
    pub fn weight_sets(&self) -> Result<Vec<WeightSet>, ModuleError> {
        let mut out = Vec::new();
        let mut budget = module::FlattenBudget::default();
        find_sets(
            &self.graph,
            &self.root,
            String::new(),
            0,
            &mut out,
            &mut budget,
        )?;
        Ok(out)
    }

    /// The weight set at a path (as [`WeightSet::path`] spells it).
    pub fn weight_set(&self, path: &str) -> Result<Option<WeightSet>, ModuleError> {
        Ok(self.weight_sets()?.into_iter().find(|s| s.path == path))
    }
}

/// A dict key as text (Python's `str` of ints and the like).
pub fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        Value::Float(f) => f.to_string(),
        Value::BigInt(s) => s.to_string(),
        Value::Node(_) => "<object>".into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn find_sets(
    graph: &Graph,
    v: &Value,
    path: String,
    depth: usize,
    out: &mut Vec<WeightSet>,
    budget: &mut module::FlattenBudget,
) -> Result<(), ModuleError> {
    if module::is_module(graph, v) {
        let sd = module::state_dict_within(graph, v, budget)?;
        out.push(WeightSet {
            path,
            class: module::class_name(graph, v),
            tensors: resolve(graph, sd),
        });
        return Ok(());
    }
    let Some(d) = graph.dict(v) else {
        return Ok(());
    };
    budget.step(d.len())?;
    if is_optimizer(graph, v) {
        return Ok(());
    }
    if is_tensor_dict(graph, d) {
        // One dict held under many keys is copied once per key.
        let items: Vec<(String, Value)> = d
            .iter()
            .filter(|(_, t)| graph.tensor(t).is_some())
            .map(|(k, t)| (key_text(k), t.clone()))
            .collect();
        let names: usize = items.iter().map(|(n, _)| n.len()).sum();
        budget.take(names + items.len() * module::ENTRY_COST)?;
        out.push(WeightSet {
            path,
            class: None,
            tensors: resolve(graph, items),
        });
        return Ok(());
    }
    if depth >= MAX_SET_DEPTH {
        return Ok(());
    }
    for (k, child) in d {
        if let Some(key) = k.as_str() {
            find_sets(graph, child, join(&path, key), depth + 1, out, budget)?;
        }
    }
    Ok(())
}

fn resolve(graph: &Graph, items: Vec<(String, Value)>) -> Vec<(String, Tensor)> {
    items
        .into_iter()
        .filter_map(|(n, v)| graph.tensor(&v).map(|t| (n, t.clone())))
        .collect()
}
