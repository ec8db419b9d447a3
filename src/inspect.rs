//! `inspect`: what a checkpoint holds and whether anything in it is dangerous, as a stable
//! serialisable report (schema in `docs/inspect-json.md`).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::checkpoint::judge::{self, AllowList, Finding, GlobalReport};
use crate::checkpoint::module::{self, ModuleError, TreeNode};
use crate::checkpoint::sets::{self, EntryKind, Stats};
use crate::checkpoint::value::{Graph, Node, NodeId, Value};
use crate::checkpoint::{Checkpoint, FormatInfo, metadata};
use crate::ema::{self, LayoutReport};
use crate::tensor::Tensor;

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The file as given.
    pub file: String,
    /// Container facts.
    pub container: FormatInfo,
    /// Each top-level entry.
    pub entries: Vec<EntryReport>,
    /// Training metadata.
    pub metadata: Map<String, Json>,
    /// Every weight set found.
    pub weight_sets: Vec<SetReport>,
    /// Where the EMA is, when the locator recognises the layout.
    pub layout: Option<LayoutReport>,
    /// Why no EMA was located, when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout_error: Option<String>,
    /// Every global the pickle names, judged.
    pub globals: Vec<GlobalReport>,
    /// Every reason `torch.load` of the file could run code (docs/security.md); `inspect` exits 1
    /// and `--strict` refuses when there is any.
    pub findings: Vec<Finding>,
    /// The globals with a finding that a deny category explains.
    pub dangerous: Vec<GlobalReport>,
    /// The names of every finding.
    pub not_allowed: Vec<String>,
    /// Module trees of the module entries, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<TreeNode>>,
}

/// One top-level entry.
#[derive(Debug, Serialize)]
pub struct EntryReport {
    /// The dict key (empty when the root is not a dict).
    pub key: String,
    /// What it holds.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Tensor figures, for modules, tensor dicts, tensors and optimizer states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// The value, for scalars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
}

/// One weight set.
#[derive(Debug, Serialize)]
pub struct SetReport {
    /// Its path ([`crate::checkpoint::sets::WeightSet::path`]).
    pub path: String,
    /// `module` or `tensor-dict`.
    pub source: &'static str,
    /// The module class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Figures.
    #[serde(flatten)]
    pub stats: Stats,
}

/// Builds the report; `tree` adds the module trees; `allow` judges the globals.
pub fn inspect(ckpt: &Checkpoint, tree: bool, allow: &AllowList) -> Result<Report, ModuleError> {
    let g = &ckpt.graph;
    // One budget for every entry, and figures kept per object: an object held under many keys
    // is walked once, and distinct objects sharing what they hold cannot multiply the work.
    let mut budget = module::FlattenBudget::default();
    let mut known: HashMap<NodeId, Option<Stats>> = HashMap::new();
    let entries = ckpt
        .entries()
        .into_iter()
        .map(|(key, v, kind)| {
            let id = v.node();
            let cached = id.and_then(|id| known.get(&id).cloned());
            let stats = match (cached, &kind) {
                (Some(stats), _) => stats,
                // A module's figures are its state dict's, as torch counts them.
                (None, EntryKind::Module { .. }) => {
                    let sd = module::state_dict_within(g, &v, &mut budget)?;
                    Some(sets::stats(sd.iter().filter_map(|(_, t)| g.tensor(t))))
                }
                (
                    None,
                    EntryKind::TensorDict
                    | EntryKind::Tensor
                    | EntryKind::Optimizer
                    | EntryKind::Dict
                    | EntryKind::List,
                ) => {
                    // Past the budget the figures are left out rather than the file refused:
                    // big non-tensor data (histories, caches) is legitimate.
                    let ts = reachable_tensors(g, &v, &mut budget).unwrap_or_default();
                    (!ts.is_empty()).then(|| sets::stats(ts.into_iter()))
                }
                _ => None,
            };
            if let Some(id) = id {
                known.insert(id, stats.clone());
            }
            let value = matches!(kind, EntryKind::Scalar).then(|| metadata::to_json(g, &v));
            Ok(EntryReport {
                key,
                kind,
                stats,
                value,
            })
        })
        .collect::<Result<_, ModuleError>>()?;
    let weight_sets = ckpt
        .weight_sets()?
        .into_iter()
        .map(|s| SetReport {
            source: if s.class.is_some() {
                "module"
            } else {
                "tensor-dict"
            },
            stats: s.stats(),
            path: s.path,
            class: s.class,
        })
        .collect();
    let verdict = judge::judge(g.uses(), allow);
    let dangerous = verdict
        .globals
        .iter()
        .filter(|r| r.danger.is_some())
        .cloned()
        .collect();
    let not_allowed = verdict.findings.iter().map(|f| f.name.clone()).collect();
    let tree = tree.then(|| {
        ckpt.entries()
            .into_iter()
            .filter(|(_, v, _)| module::is_module(g, v))
            .map(|(k, v, _)| module::tree(g, &v, &k))
            .collect()
    });
    let (layout, layout_error) = match ema::locate(ckpt, &ema::Selectors::default()) {
        Ok(l) => (Some(l.report()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Report {
        schema: SCHEMA_VERSION,
        layout,
        layout_error,
        file: ckpt.path.display().to_string(),
        container: ckpt.info.clone(),
        entries,
        metadata: metadata::metadata(ckpt),
        weight_sets,
        globals: verdict.globals,
        findings: verdict.findings,
        dangerous,
        not_allowed,
        tree,
    })
}

/// Every distinct tensor reachable from `v` (each node once, however often it is referenced).
fn reachable_tensors<'g>(
    g: &'g Graph,
    v: &Value,
    budget: &mut module::FlattenBudget,
) -> Result<Vec<&'g Tensor>, ModuleError> {
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = vec![v];
    while let Some(v) = stack.pop() {
        let Some(id) = v.node() else { continue };
        // Every reference counts, the repeated ones too.
        budget.step(1)?;
        if !seen.insert(id) {
            continue;
        }
        match g.node(id) {
            Node::Tensor(t) => out.push(&**t),
            Node::Tuple(items) | Node::List(items) | Node::Set(items) | Node::FrozenSet(items) => {
                stack.extend(items.iter().rev())
            }
            Node::Dict(e) => {
                for (_, x) in e.iter().rev() {
                    stack.push(x);
                }
            }
            Node::Object(o) => {
                stack.extend(o.args.iter());
                stack.extend(o.items.iter());
                stack.extend(o.entries.iter().map(|(_, x)| x));
                if let Some(s) = &o.state {
                    stack.push(s);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
