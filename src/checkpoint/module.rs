//! Pickled `torch.nn.Module` objects: recognising them, their attributes and children, and
//! flattening one to exactly what `module.state_dict()` returns in Python.

use super::value::{Graph, Node, NodeId, Value};

/// How deep module trees may nest before the file is considered hostile.
pub const MAX_MODULE_DEPTH: usize = 256;
/// Module visits while flattening, at most. A module shared under several names is visited once
/// per name (as torch does), so a hostile file sharing modules level after level could otherwise
/// demand exponentially many.
pub const MAX_MODULE_VISITS: usize = 1_000_000;
/// State dict entries at most (real models have thousands).
pub const MAX_ENTRIES: usize = 2_000_000;
/// Memory that flattening may build, counted as the bytes of every name plus
/// [`ENTRY_COST`] per entry, over all the state dicts of one file: modules shared level after
/// level under long names would otherwise build gigabytes of names from a few kilobytes.
pub const MAX_FLATTEN_BYTES: usize = 128 << 20;
/// What one entry costs beyond its name (the entry, the tensor view it resolves to).
pub const ENTRY_COST: usize = 256;

/// Objects visited by the walks over one file (flattening, weight-set discovery, statistics), at
/// most: one big dict held under thousands of keys would otherwise be walked once per key.
pub const MAX_WALK_STEPS: usize = 10_000_000;

/// What the walks over one file have built and visited so far, shared by every state dict,
/// weight set and statistic taken from it.
#[derive(Debug, Default)]
pub struct FlattenBudget {
    used: usize,
    steps: usize,
}

impl FlattenBudget {
    /// Counts `n` more objects visited, failing past [`MAX_WALK_STEPS`].
    pub fn step(&mut self, n: usize) -> Result<(), ModuleError> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_WALK_STEPS {
            return Err(ModuleError::TooManySteps);
        }
        Ok(())
    }

    /// Counts `bytes` more, failing past [`MAX_FLATTEN_BYTES`].
    pub fn take(&mut self, bytes: usize) -> Result<(), ModuleError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > MAX_FLATTEN_BYTES {
            return Err(ModuleError::TooManyBytes);
        }
        Ok(())
    }
}

/// Why a module could not be flattened; the text names the module path or entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The walk visited more objects than it may (objects shared under many keys).
    #[error("more than {MAX_WALK_STEPS} objects visited (objects shared under many keys)")]
    TooManySteps,
    /// The names and entries would outgrow their memory budget.
    #[error(
        "state-dict names and entries would take more than {} MiB (objects shared under many names)",
        MAX_FLATTEN_BYTES >> 20
    )]
    TooManyBytes,
    /// More module visits than the limit (modules shared under many names).
    #[error("more than {MAX_MODULE_VISITS} module visits (modules shared under many names)")]
    TooManyVisits,
    /// A path that should be a module is a scalar.
    #[error("'{0}' is not a module")]
    NotAModule(String),
    /// A module reachable from itself.
    #[error("module '{0}' contains itself")]
    ContainsItself(String),
    /// Modules nested deeper than the limit.
    #[error("modules nest deeper than {MAX_MODULE_DEPTH} at '{0}'")]
    TooDeep(String),
    /// A child that has neither `_parameters` nor `_modules`.
    #[error("child '{path}' is a {kind} without _parameters/_modules, not an nn.Module")]
    NotNnModule {
        /// The child's path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A `_parameters` / `_buffers` entry that is not a tensor.
    #[error("{attr} entry '{key}' is not a tensor")]
    NotATensor {
        /// `_parameters` or `_buffers`.
        attr: String,
        /// The entry's state-dict key.
        key: String,
    },
    /// More state-dict entries than the limit.
    #[error("state dict larger than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// `_non_persistent_buffers_set` of a type whose `in` test is not plain member equality.
    #[error(
        "module '{path}' has a _non_persistent_buffers_set that is a {kind}: torch's state_dict() \
         asks `name in` it, which this reader cannot answer as Python does"
    )]
    NonPersistentSet {
        /// The module's dotted path.
        path: String,
        /// What the attribute is.
        kind: &'static str,
    },
    /// A name registered twice, in `_parameters` and `_buffers` (or `_modules`): `state_dict()`
    /// keeps one under that name and `forward()` may use the other.
    #[error(
        "module '{path}' registers '{name}' in both {first} and {second} \
         (state_dict() and forward() would read different tensors)"
    )]
    RegisteredTwice {
        /// The module's dotted path.
        path: String,
        /// The name.
        name: String,
        /// The first registry holding it.
        first: &'static str,
        /// The second registry holding it.
        second: &'static str,
    },
    /// An instance attribute with the name of a parameter, buffer or child: Python's attribute
    /// lookup finds it first, so `forward()` uses it while `state_dict()` holds the other.
    #[error(
        "module '{path}' has an instance attribute '{attr}' that shadows its {registry} entry \
         (PyTorch's forward uses the attribute, state_dict() the entry: readers disagree)"
    )]
    Shadowed {
        /// The module's dotted path (`<root>` for the top).
        path: String,
        /// The attribute name.
        attr: String,
        /// `_parameters`, `_buffers` or `_modules`.
        registry: &'static str,
    },
}

/// Whether `v` is a pickled `nn.Module`: an object whose state holds `_parameters` and `_modules`.
pub fn is_module(graph: &Graph, v: &Value) -> bool {
    graph.attr(v, "_parameters").is_some() && graph.attr(v, "_modules").is_some()
}

/// The module's class as `module.Name`, e.g. `ultralytics.nn.modules.conv.Conv`.
pub fn class_name(graph: &Graph, v: &Value) -> Option<String> {
    graph.object(v)?.class.as_ref().map(|g| g.dotted())
}

/// The module's class name without its module path, e.g. `Conv`.
pub fn short_class(graph: &Graph, v: &Value) -> Option<String> {
    graph.object(v)?.class.as_ref().map(|g| g.name.to_string())
}

/// The child modules in registration order (`None` children skipped, as torch does).
pub fn children<'g>(graph: &'g Graph, v: &Value) -> Vec<(&'g str, &'g Value)> {
    let Some(m) = graph.attr(v, "_modules") else {
        return Vec::new();
    };
    graph
        .dict(m)
        .unwrap_or_default()
        .iter()
        .filter(|(_, c)| *c != Value::None)
        .filter_map(|(k, c)| Some((k.as_str()?, c)))
        .collect()
}

/// The names of buffers registered with `persistent=False`, read as torch's
/// `_save_to_state_dict` asks `name in self._non_persistent_buffers_set`: a set, list, tuple or
/// dict (its keys) answers by member equality. A string would answer by substring and anything
/// else by its own `__contains__`, so those are refused, as are members other than str and int
/// (an instance could compare equal to a name).
fn non_persistent(graph: &Graph, v: &Value, prefix: &str) -> Result<Vec<String>, ModuleError> {
    let Some(set) = graph.attr(v, "_non_persistent_buffers_set") else {
        return Ok(Vec::new());
    };
    let refuse = |kind: &'static str| ModuleError::NonPersistentSet {
        path: module_path(prefix),
        kind,
    };
    let members: Vec<&Value> = match graph.get(set) {
        Some(
            Node::Set(items) | Node::FrozenSet(items) | Node::List(items) | Node::Tuple(items),
        ) => items.iter().collect(),
        Some(Node::Dict(entries)) => entries.iter().map(|(k, _)| k).collect(),
        Some(other) => return Err(refuse(other.kind())),
        None => {
            return Err(refuse(match set {
                Value::Str(_) => "str",
                Value::None => "None",
                _ => "number",
            }));
        }
    };
    let mut names = Vec::with_capacity(members.len());
    for m in members {
        match m {
            Value::Str(s) => names.push(s.to_string()),
            Value::Int(_) | Value::Bool(_) => {}
            _ => return Err(refuse("collection with a member that is not a str")),
        }
    }
    Ok(names)
}

/// A module's dotted path for messages (`<root>` for the weight set's top module).
fn module_path(prefix: &str) -> String {
    let path = prefix.strip_suffix('.').unwrap_or(prefix);
    if path.is_empty() { "<root>" } else { path }.to_string()
}

/// `module.state_dict()`: each module's parameters, then its persistent buffers, then its
/// children, with dotted names; `None` entries skipped.
pub fn state_dict(graph: &Graph, v: &Value) -> Result<Vec<(String, Value)>, ModuleError> {
    state_dict_within(graph, v, &mut FlattenBudget::default())
}

/// [`state_dict`], counting what it builds against `budget`.
pub fn state_dict_within(
    graph: &Graph,
    v: &Value,
    budget: &mut FlattenBudget,
) -> Result<Vec<(String, Value)>, ModuleError> {
    let mut out = Vec::new();
    let mut path: Vec<NodeId> = Vec::new();
    let mut visits = 0usize;
    walk(graph, v, "", &mut out, &mut path, &mut visits, budget)?;
    Ok(out)
}

fn walk(
    graph: &Graph,
    v: &Value,
    prefix: &str,
    out: &mut Vec<(String, Value)>,
    path: &mut Vec<NodeId>,
    visits: &mut usize,
    budget: &mut FlattenBudget,
) -> Result<(), ModuleError> {
    *visits += 1;
    if *visits > MAX_MODULE_VISITS {
        return Err(ModuleError::TooManyVisits);
    }
    let id = v
        .node()
        .ok_or_else(|| ModuleError::NotAModule(prefix.to_string()))?;
    if path.contains(&id) {
        return Err(ModuleError::ContainsItself(prefix.to_string()));
    }
    if path.len() >= MAX_MODULE_DEPTH {
        return Err(ModuleError::TooDeep(prefix.to_string()));
    }
    if !is_module(graph, v) {
        return Err(ModuleError::NotNnModule {
            path: prefix.to_string(),
            kind: graph.get(v).map(|n| n.kind()).unwrap_or("scalar"),
        });
    }
    path.push(id);
    budget.step(1)?;
    check_shadows(graph, v, prefix, budget)?;
    let skip = non_persistent(graph, v, prefix)?;
    for (attr, is_buffer) in [("_parameters", false), ("_buffers", true)] {
        let Some(d) = graph.attr(v, attr).and_then(|d| graph.dict(d)) else {
            continue;
        };
        budget.step(d.len())?;
        for (k, t) in d {
            let Some(name) = k.as_str() else { continue };
            if *t == Value::None || (is_buffer && skip.iter().any(|s| s == name)) {
                continue;
            }
            if graph.tensor(t).is_none() {
                return Err(ModuleError::NotATensor {
                    attr: attr.to_string(),
                    key: format!("{prefix}{name}"),
                });
            }
            if out.len() >= MAX_ENTRIES {
                return Err(ModuleError::TooManyEntries);
            }
            budget.take(prefix.len() + name.len() + ENTRY_COST)?;
            out.push((format!("{prefix}{name}"), t.clone()));
        }
    }
    for (name, child) in children(graph, v) {
        budget.take(prefix.len() + name.len() + 1)?;
        let prefix = format!("{prefix}{name}.");
        walk(graph, child, &prefix, out, path, visits, budget)?;
    }
    path.pop();
    Ok(())
}

/// Refuses a module whose instance `__dict__` holds a name of its `_parameters`, `_buffers` or
/// `_modules`: `Module.__getattr__` is consulted only when normal lookup fails, so the plain
/// attribute wins in `forward()`; `nn.Module.__setattr__` never lets the two coexist, so only a
/// doctored file has both.
fn check_shadows(
    graph: &Graph,
    v: &Value,
    prefix: &str,
    budget: &mut FlattenBudget,
) -> Result<(), ModuleError> {
    let Some(attrs) = graph.attrs(v) else {
        return Ok(());
    };
    budget.step(attrs.len())?;
    let names: std::collections::HashSet<&str> =
        attrs.iter().filter_map(|(k, _)| k.as_str()).collect();
    let registries = ["_parameters", "_buffers", "_modules"];
    for (i, first) in registries.iter().enumerate() {
        let Some(a) = graph.attr(v, first).and_then(|d| graph.dict(d)) else {
            continue;
        };
        for second in &registries[i + 1..] {
            let Some(b) = graph.attr(v, second).and_then(|d| graph.dict(d)) else {
                continue;
            };
            budget.step(a.len() + b.len())?;
            let in_a: std::collections::HashSet<&str> =
                a.iter().filter_map(|(k, _)| k.as_str()).collect();
            if let Some(name) = b
                .iter()
                .filter_map(|(k, _)| k.as_str())
                .find(|k| in_a.contains(k))
            {
                return Err(ModuleError::RegisteredTwice {
                    path: module_path(prefix),
                    name: name.to_string(),
                    first,
                    second,
                });
            }
        }
    }
    for registry in ["_parameters", "_buffers", "_modules"] {
        let Some(d) = graph.attr(v, registry).and_then(|d| graph.dict(d)) else {
            continue;
        };
        budget.step(d.len())?;
        if let Some(name) = d
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .find(|k| names.contains(k))
        {
            return Err(ModuleError::Shadowed {
                path: module_path(prefix),
                attr: name.to_string(),
                registry,
            });
        }
    }
    Ok(())
}

/// `module.named_parameters()` names: each module's parameters, then its children's, with
/// dotted names; a parameter shared by several modules (the same pickled tensor) counted once,
/// under its first name, as PyTorch does.
pub fn parameter_names(graph: &Graph, v: &Value) -> Result<Vec<String>, ModuleError> {
    let all = state_dict(graph, v)?;
    let mut buffers = std::collections::HashSet::new();
    collect_buffers(graph, v, "", &mut buffers, 0)?;
    let mut seen = std::collections::HashSet::new();
    Ok(all
        .into_iter()
        .filter(|(n, _)| !buffers.contains(n))
        .filter(|(_, t)| t.node().is_none_or(|id| seen.insert(id)))
        .map(|(n, _)| n)
        .collect())
}

/// The dotted names of every buffer below `v` (the same walk as [`state_dict`], which has
/// already checked the tree's size and shape).
fn collect_buffers(
    graph: &Graph,
    v: &Value,
    prefix: &str,
    out: &mut std::collections::HashSet<String>,
    depth: usize,
) -> Result<(), ModuleError> {
    if depth > MAX_MODULE_DEPTH {
        return Err(ModuleError::TooDeep(prefix.to_string()));
    }
    if let Some(d) = graph.attr(v, "_buffers").and_then(|d| graph.dict(d)) {
        for (k, _) in d {
            if let Some(name) = k.as_str() {
                out.insert(format!("{prefix}{name}"));
            }
        }
    }
    for (name, child) in children(graph, v) {
        collect_buffers(graph, child, &format!("{prefix}{name}."), out, depth + 1)?;
    }
    Ok(())
}

/// One node of a module tree, for `inspect --tree`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeNode {
    /// Attribute name under the parent (empty for the root).
    pub name: String,
    /// Class as `module.Name`.
    pub class: String,
    /// Parameters and persistent buffers held directly by this module.
    pub tensors: usize,
    /// Child modules.
    pub children: Vec<TreeNode>,
}

/// The module tree below `v` (depth-limited; a module that contains itself is shown once, without
/// children, where it recurs).
pub fn tree(graph: &Graph, v: &Value, name: &str) -> TreeNode {
    let mut budget = MAX_TREE_NODES;
    let mut path = Vec::new();
    tree_at(graph, v, name, &mut path, &mut budget)
}

/// Nodes a module tree shows at most.
const MAX_TREE_NODES: usize = 100_000;

fn tree_at(
    graph: &Graph,
    v: &Value,
    name: &str,
    path: &mut Vec<NodeId>,
    budget: &mut usize,
) -> TreeNode {
    *budget = budget.saturating_sub(1);
    let own = ["_parameters", "_buffers"]
        .iter()
        .filter_map(|a| graph.attr(v, a).and_then(|d| graph.dict(d)))
        .map(|d| d.iter().filter(|(_, t)| graph.tensor(t).is_some()).count())
        .sum();
    let mut kids = Vec::new();
    let id = v.node();
    let cycle = id.is_some_and(|id| path.contains(&id));
    if path.len() < MAX_MODULE_DEPTH && !cycle {
        path.extend(id);
        for (n, c) in children(graph, v) {
            if *budget == 0 {
                break;
            }
            if is_module(graph, c) {
                kids.push(tree_at(graph, c, n, path, budget));
            }
        }
        if id.is_some() {
            path.pop();
        }
    }
    TreeNode {
        name: name.to_string(),
        class: class_name(graph, v).unwrap_or_else(|| "?".into()),
        tensors: own,
        children: kids,
    }
}
