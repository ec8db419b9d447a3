//! The object graph a checkpoint decodes to: inert values in an arena.
//!
//! Containers and objects live in a [`Graph`] and are referred to by [`NodeId`], so that pickle
//! memo references share one node (a memo bomb costs one id per reference, not a copy) and later
//! mutations (`APPENDS`, `SETITEMS`, `BUILD`) reach every holder.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::uses::{GlobalRecord, UseLog};
use crate::tensor::Tensor;

/// Index of a node in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A value: scalars inline, everything else a reference into the graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` that fits in 64 bits.
    Int(i64),
    /// Python `int` beyond 64 bits, as decimal text.
    BigInt(Arc<str>),
    /// Python `float`.
    Float(f64),
    /// Python `str`.
    Str(Arc<str>),
    /// A container, object, tensor or global.
    Node(NodeId),
}

impl Value {
    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` (or a bool, as Python treats it).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The number as f64, if this is an `int` or `float`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The node id, if this refers to the graph.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Value::Node(id) => Some(*id),
            _ => None,
        }
    }
}

/// A pickled global: a (module, name) pair. Never imported, never called.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Global {
    /// Module path, e.g. `torch._utils`.
    pub module: Arc<str>,
    /// Qualified name inside the module, e.g. `_rebuild_tensor_v2`.
    pub name: Arc<str>,
}

impl Global {
    /// The pair `module`, `name`.
    pub fn new(module: &str, name: &str) -> Global {
        Global {
            module: module.into(),
            name: name.into(),
        }
    }

    /// `module.name`.
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }

    /// Whether this is `module.name`.
    pub fn is(&self, module: &str, name: &str) -> bool {
        &*self.module == module && &*self.name == name
    }
}

/// How the pickle made an object, so that a writer can make it the same way again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Made {
    /// REDUCE: `class(*args)` (a call).
    #[default]
    Reduce,
    /// NEWOBJ / NEWOBJ_EX / INST / OBJ: `class.__new__(class, *args)`.
    NewObj,
    /// REDUCE of `copyreg._reconstructor(class, base, state)` (protocols 0 and 1).
    Reconstructor,
}

/// An instance the pickle asked to build, kept as data: its class and what it was built from.
#[derive(Clone, Debug, Default)]
pub struct Object {
    /// The class (or callable) as a global, when the pickle named one.
    pub class: Option<Global>,
    /// Which opcode made it.
    pub made: Made,
    /// Positional arguments given to REDUCE / NEWOBJ.
    pub args: Vec<Value>,
    /// Keyword arguments given to NEWOBJ_EX.
    pub kwargs: Vec<(Value, Value)>,
    /// What BUILD passed (usually the instance `__dict__`).
    pub state: Option<Value>,
    /// Items appended with APPEND / APPENDS.
    pub items: Vec<Value>,
    /// Items set with SETITEM / SETITEMS.
    pub entries: Vec<(Value, Value)>,
}

/// A node of the graph.
#[derive(Clone, Debug)]
pub enum Node {
    /// `tuple` (also `torch.Size`).
    Tuple(Vec<Value>),
    /// `list`.
    List(Vec<Value>),
    /// `dict` or `collections.OrderedDict`, insertion order preserved.
    Dict(Vec<(Value, Value)>),
    /// `set`.
    Set(Vec<Value>),
    /// `frozenset`.
    FrozenSet(Vec<Value>),
    /// `bytes` / `bytearray`.
    Bytes(Arc<[u8]>),
    /// A global reference.
    Global(Global),
    /// An inert instance (boxed: most nodes are small containers).
    Object(Box<Object>),
    /// A torch storage before a tensor view is put on it.
    Storage(Box<Tensor>),
    /// A tensor (or parameter).
    Tensor(Box<Tensor>),
}

impl Node {
    /// A short name of the node's kind for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Bytes(_) => "bytes",
            Node::Global(_) => "global",
            Node::Object(_) => "object",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
        }
    }
}

/// The arena of nodes plus a record of every global the data referenced and how it used them.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    uses: UseLog,
    /// Set by readers whose storage bytes come after the pickle (legacy torch): tensor views are
    /// checked against their storages once the bytes are located.
    pub(crate) defer_view_checks: bool,
    /// Containers made by calling a reconstructor (`OrderedDict`, `torch.Size`, `set`): the
    /// class, which the node kinds alone do not keep, for writers that re-emit the graph.
    made_by: HashMap<NodeId, Global>,
    /// Tensors pickled with `requires_grad=True`.
    grad: HashSet<NodeId>,
    /// BUILD state given to a container (an `OrderedDict`'s `__dict__`, e.g. a state dict's
    /// `_metadata`), which the node kinds alone do not keep.
    container_state: HashMap<NodeId, Value>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node and returns a value referring to it.
    pub fn add(&mut self, node: Node) -> Value {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(node);
        Value::Node(id)
    }

    /// Every node, mutably (readers patch storages located after the pickle).
    pub(crate) fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.nodes.iter_mut()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node behind an id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// Mutable access to a node.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    /// The node a value refers to, if any.
    pub fn get(&self, v: &Value) -> Option<&Node> {
        v.node().map(|id| self.node(id))
    }

    /// Notes that a container node was made by calling `class` (see [`Graph::made_by`]).
    pub fn set_made_by(&mut self, v: &Value, class: &Global) {
        if let Some(id) = v.node() {
            self.made_by.insert(id, class.clone());
        }
    }

    /// The reconstructor that made a container node (`collections.OrderedDict`, `torch.Size`,
    /// `builtins.set`), if one did.
    pub fn made_by(&self, id: NodeId) -> Option<&Global> {
        self.made_by.get(&id)
    }

    /// Approximate heap bytes of the side tables (for the pickle VM's memory budget).
    pub(crate) fn side_bytes(&self) -> usize {
        (self.made_by.len() + self.container_state.len() + self.grad.len()) * 64
    }

    /// Keeps the BUILD state of a container node (see [`Graph::container_state`]).
    pub fn set_container_state(&mut self, id: NodeId, state: Value) {
        self.container_state.insert(id, state);
    }

    /// The BUILD state a container node was given (an `OrderedDict`'s attributes), if any.
    pub fn container_state(&self, id: NodeId) -> Option<&Value> {
        self.container_state.get(&id)
    }

    /// Marks or clears a tensor node's `requires_grad`.
    pub fn set_requires_grad(&mut self, v: &Value, on: bool) {
        if let Some(id) = v.node() {
            if on {
                self.grad.insert(id);
            } else {
                self.grad.remove(&id);
            }
        }
    }

    /// Whether a tensor node was pickled with `requires_grad=True`.
    pub fn requires_grad(&self, id: NodeId) -> bool {
        self.grad.contains(&id)
    }

    /// The record of every global the pickles named and how they used each.
    pub fn uses(&self) -> &UseLog {
        &self.uses
    }

    /// The record, for the pickle VM (and readers merging further pickles of one file).
    pub fn uses_mut(&mut self) -> &mut UseLog {
        &mut self.uses
    }

    /// Every distinct global referenced, in order of first appearance.
    pub fn globals(&self) -> &[GlobalRecord] {
        self.uses.records()
    }

    /// The tensor a value refers to.
    pub fn tensor(&self, v: &Value) -> Option<&Tensor> {
        match self.get(v)? {
            Node::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The entries of a dict value.
    pub fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match self.get(v)? {
            Node::Dict(e) => Some(e),
            _ => None,
        }
    }

    /// The items of a tuple or list value.
    pub fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.get(v)? {
            Node::Tuple(e) | Node::List(e) => Some(e),
            _ => None,
        }
    }

    /// The object a value refers to.
    pub fn object(&self, v: &Value) -> Option<&Object> {
        match self.get(v)? {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Looks up a string key in a dict value.
    pub fn dict_get(&self, v: &Value, key: &str) -> Option<&Value> {
        self.dict(v)?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The instance attributes of an object: the dict its BUILD state holds (also the first
    /// element of a `(dict, slotstate)` pair).
    pub fn attrs(&self, v: &Value) -> Option<&[(Value, Value)]> {
        let state = self.object(v)?.state.as_ref()?;
        if let Some(d) = self.dict(state) {
            return Some(d);
        }
        let pair = self.seq(state)?;
        self.dict(pair.first()?)
    }

    /// One attribute of an object.
    pub fn attr(&self, v: &Value, name: &str) -> Option<&Value> {
        self.attrs(v)?
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    }
}
