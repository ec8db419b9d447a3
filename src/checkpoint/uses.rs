//! What a pickle does with each global it names: the record the judge ([`super::judge`]) reads.
//!
//! The pickle VM records every global once per distinct `(as written, as resolved)` pair, in a
//! hash index so that a file naming 100 000 distinct globals is recorded in linear time, and
//! every way the pickle uses it: pushed, called, created, given state, and so on.

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;

use serde::Serialize;

use super::value::{Global, NodeId};

/// The shape of a call's positional arguments, as far as a role cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Args {
    /// How many (saturating at 255).
    pub count: u8,
    /// Whether every one is a constant scalar (`int`, `float`, `str`, `bool`, `None`).
    pub constants: bool,
}

/// One way a pickle uses a global. Each is what Python's unpickler would do with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    /// GLOBAL / STACK_GLOBAL / INST: `find_class` imports its module and looks the name up.
    Referenced,
    /// REDUCE: `g(*args)`.
    Called(Args),
    /// INST / OBJ: `g(*args)`, or `g.__new__(g)` when there are no arguments and `g` is a class.
    Instantiated(Args),
    /// NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args)`; `__init__` does not run.
    Created,
    /// The class of `copyreg._reconstructor(cls, object, None)`: `object.__new__(cls)`.
    Reconstructed,
    /// An instance of it is the target of BUILD: its `__setstate__` runs with the state.
    StateSet,
    /// APPEND / APPENDS / SETITEM / SETITEMS on an instance of it: its `append`, `extend` or
    /// `__setitem__` runs.
    Filled,
    /// BUILD on the global itself: sets attributes of a module-level object.
    BuiltItself,
    /// The `func` of `torch._tensor._rebuild_from_type_v2`: called with the given arguments.
    RebuildFunc,
    /// The `new_type` of `_rebuild_from_type_v2`: the tensor becomes an instance of it.
    TensorType,
    /// The object of `builtins.getattr(<it>, name)`.
    AttributeTaken,
    /// What it returned is called, created from or used as a class: a gadget chain.
    ResultCalled,
    /// A call whose arguments break the rule of its role (why).
    BadArguments(&'static str),
}

/// The distinct uses of one global, in the order first seen. Bounded: call shapes beyond
/// [`Uses::MAX_SHAPES`] collapse into one saturated shape (255 arguments, not constants), which
/// every role that limits its arguments refuses, as it would refuse one of the shapes collapsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uses(Vec<Use>);

impl Uses {
    /// Distinct call shapes kept before they collapse.
    pub const MAX_SHAPES: usize = 16;

    /// Adds a use; false when it was there already.
    pub fn insert(&mut self, u: Use) -> bool {
        let shapes = self
            .0
            .iter()
            .filter(|x| matches!(x, Use::Called(_) | Use::Instantiated(_)))
            .count();
        let saturated = Args {
            count: u8::MAX,
            constants: false,
        };
        let u = match u {
            Use::Called(_) if shapes >= Self::MAX_SHAPES => Use::Called(saturated),
            Use::Instantiated(_) if shapes >= Self::MAX_SHAPES => Use::Instantiated(saturated),
            u => u,
        };
        if self.0.contains(&u) {
            return false;
        }
        self.0.push(u);
        true
    }

    /// Whether `u` is among them.
    pub fn contains(&self, u: &Use) -> bool {
        self.0.contains(u)
    }

    /// Every use.
    pub fn iter(&self) -> impl Iterator<Item = &Use> {
        self.0.iter()
    }
}

/// One distinct global of the file, with everything the pickle does with it.
#[derive(Clone, Debug)]
pub struct GlobalRecord {
    /// The pair as the pickle writes it.
    pub written: Global,
    /// The pair Python 3 looks up (after torch's and `_compat_pickle`'s renames).
    pub resolved: Global,
    /// How many times the pickle names it.
    pub count: usize,
    /// Every distinct use.
    pub uses: Uses,
}

/// A call of something that is not a global and was not made by one (e.g. REDUCE on a list).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LooseCall {
    /// What was called, as a node kind (`list`, `dict`, `persistent id`, …).
    pub callee: &'static str,
}

/// The record of every global a graph's pickles named and how they used them.
#[derive(Clone, Debug, Default)]
pub struct UseLog {
    records: Vec<GlobalRecord>,
    index: HashMap<(Global, Global), u32>,
    /// Global nodes → their record.
    global_nodes: HashMap<NodeId, u32>,
    /// Nodes made by calling or creating a global → the record of the instance's type (or the
    /// function that made it).
    made_by: HashMap<NodeId, u32>,
    loose: BTreeSet<LooseCall>,
    /// Approximate heap bytes of the record, for the decoder's memory budget.
    bytes: usize,
}

/// Bytes charged per distinct global: its record, index entry and the report line it becomes.
const RECORD_BYTES: usize = 256;
/// Bytes charged per node link and per use.
const LINK_BYTES: usize = 2 * size_of::<(NodeId, u32)>() + 16;

impl UseLog {
    /// Records one naming of `written` (resolved to `resolved`) as the global node `node`.
    pub fn name(&mut self, node: NodeId, written: &Global, resolved: Global) {
        let key = (written.clone(), resolved);
        let i = match self.index.get(&key) {
            Some(&i) => {
                self.records[i as usize].count += 1;
                i
            }
            None => {
                let i = self.records.len() as u32;
                self.records.push(GlobalRecord {
                    written: key.0.clone(),
                    resolved: key.1.clone(),
                    count: 1,
                    uses: Uses(vec![Use::Referenced]),
                });
                self.index.insert(key, i);
                self.bytes += RECORD_BYTES;
                i
            }
        };
        self.global_nodes.insert(node, i);
        self.bytes += LINK_BYTES;
    }

    /// The record of a global node.
    pub fn record_of(&self, node: NodeId) -> Option<&GlobalRecord> {
        self.global_nodes
            .get(&node)
            .map(|&i| &self.records[i as usize])
    }

    /// Adds a use to the record of the global node `node`; false when `node` is not one.
    pub fn use_global(&mut self, node: NodeId, u: Use) -> bool {
        match self.global_nodes.get(&node) {
            Some(&i) => {
                if self.records[i as usize].uses.insert(u) {
                    self.bytes += LINK_BYTES;
                }
                true
            }
            None => false,
        }
    }

    /// Adds a use to the record of whatever made `node`; false when no global made it.
    pub fn use_maker(&mut self, node: NodeId, u: Use) -> bool {
        match self.made_by.get(&node) {
            Some(&i) => {
                if self.records[i as usize].uses.insert(u) {
                    self.bytes += LINK_BYTES;
                }
                true
            }
            None => false,
        }
    }

    /// Notes that `made` is an instance made through the global node `by` (first maker wins:
    /// a reconstructor may hand back a node it was given).
    pub fn made(&mut self, made: NodeId, by: NodeId) {
        if let Some(&i) = self.global_nodes.get(&by)
            && !self.made_by.contains_key(&made)
        {
            self.made_by.insert(made, i);
            self.bytes += LINK_BYTES;
        }
    }

    /// Whether a global made `node`.
    pub fn has_maker(&self, node: NodeId) -> bool {
        self.made_by.contains_key(&node)
    }

    /// Records a call of something no global made.
    pub fn loose_call(&mut self, callee: &'static str) {
        self.loose.insert(LooseCall { callee });
    }

    /// Approximate heap bytes the record (and the report made from it) takes.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Every distinct global, in order of first appearance.
    pub fn records(&self) -> &[GlobalRecord] {
        &self.records
    }

    /// Every distinct call of something no global made.
    pub fn loose_calls(&self) -> impl Iterator<Item = &LooseCall> {
        self.loose.iter()
    }

    /// Merges the globals and calls of another log (a scratch graph of a further pickle of the
    /// same file); node links are not carried, they belong to the other graph.
    pub fn absorb(&mut self, other: &UseLog) {
        for r in &other.records {
            let key = (r.written.clone(), r.resolved.clone());
            match self.index.get(&key) {
                Some(&i) => {
                    let mine = &mut self.records[i as usize];
                    mine.count += r.count;
                    for u in r.uses.iter() {
                        mine.uses.insert(u.clone());
                    }
                }
                None => {
                    self.index.insert(key, self.records.len() as u32);
                    self.records.push(r.clone());
                    self.bytes += RECORD_BYTES;
                }
            }
        }
        self.loose.extend(other.loose.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(m: &str, n: &str) -> Global {
        Global::new(m, n)
    }

    #[test]
    fn a_hundred_thousand_distinct_globals_are_recorded_quickly() {
        let mut log = UseLog::default();
        let start = std::time::Instant::now();
        for i in 0..100_000u32 {
            let x = g("m", &format!("n{i}"));
            log.name(NodeId(i), &x, x.clone());
        }
        assert_eq!(log.records().len(), 100_000);
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn repeated_names_share_a_record_and_uses_reach_it() {
        let mut log = UseLog::default();
        let x = g("collections", "OrderedDict");
        log.name(NodeId(0), &x, x.clone());
        log.name(NodeId(5), &x, x.clone());
        assert!(log.use_global(NodeId(5), Use::Created));
        log.made(NodeId(6), NodeId(5));
        assert!(log.use_maker(NodeId(6), Use::StateSet));
        assert!(
            !log.use_global(NodeId(6), Use::Created),
            "node 6 is not a global"
        );
        let r = &log.records()[0];
        assert_eq!(r.count, 2);
        assert!(r.uses.contains(&Use::Created) && r.uses.contains(&Use::StateSet));
    }

    #[test]
    fn call_shapes_collapse_into_one_every_limited_role_refuses() {
        let mut u = Uses::default();
        for count in 0..=255u8 {
            u.insert(Use::Called(Args {
                count,
                constants: true,
            }));
        }
        assert_eq!(u.iter().count(), Uses::MAX_SHAPES + 1);
        assert!(u.contains(&Use::Called(Args {
            count: 255,
            constants: false
        })));
    }

    #[test]
    fn another_pickle_s_record_is_absorbed() {
        let x = g("os", "system");
        let y = g("collections", "OrderedDict");
        let mut main = UseLog::default();
        main.name(NodeId(0), &y, y.clone());
        let mut scratch = UseLog::default();
        scratch.name(NodeId(0), &x, x.clone());
        scratch.use_global(
            NodeId(0),
            Use::Called(Args {
                count: 1,
                constants: true,
            }),
        );
        scratch.name(NodeId(1), &y, y.clone());
        scratch.loose_call("list");
        main.absorb(&scratch);
        assert_eq!(main.records().len(), 2);
        assert_eq!(main.records()[0].count, 2);
        assert!(
            main.records()[1]
                .uses
                .iter()
                .any(|u| matches!(u, Use::Called(_)))
        );
        assert_eq!(main.loose_calls().count(), 1);
    }
}
