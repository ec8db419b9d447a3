//! Re-emitting an inert object graph as the `data.pkl` of a torch archive.
//!
//! The graph the pickle VM decoded ([`crate::checkpoint::value`]) keeps every object's class,
//! how it was made (REDUCE, NEWOBJ, `copyreg._reconstructor`), its arguments, list and dict items
//! and BUILD state; containers made by a reconstructor keep that class (`OrderedDict`,
//! `torch.Size`, `set`). This writer walks it from a root and writes protocol 2, as `torch.save`
//! does: every node is memoized when first written and referred to with GET afterwards, so shared
//! objects (tied weights, one `args` namespace held twice) stay shared and cycles through lists,
//! dicts and objects close as Python's pickler closes them. Tensors become
//! `_rebuild_tensor_v2` (or `_rebuild_parameter` of one) over persistent ids into the new
//! archive: views of an unconverted storage keep sharing it; a tensor converted to another dtype
//! gets a new contiguous storage of its own, as `Module.half()` gives it.
//!
//! Nothing is invented: a node the graph cannot say how to rebuild (an object made by a callable
//! that was not a global, keyword arguments, numpy arrays read as tensors) is refused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::checkpoint::value::{Global, Graph, Made, Node, NodeId, Value};
use crate::tensor::{DType, Tensor, contiguous_strides};

/// Objects nested deeper than this are refused (Python's own pickler stops at its recursion
/// limit of 1000, so `torch.save` never wrote deeper).
const MAX_DEPTH: usize = 1000;

/// Items per APPENDS / SETITEMS batch, as Python writes them.
const BATCH: usize = 1000;

/// One storage of the new archive: the bytes of `view` written in `dtype` as
/// `archive/data/<index>`.
#[derive(Clone, Debug)]
pub struct StorageOut {
    /// The elements to write (a whole input storage, or one converted tensor).
    pub view: Tensor,
    /// The dtype they are written in.
    pub dtype: DType,
}

impl StorageOut {
    /// Bytes this storage takes in the archive.
    pub fn nbytes(&self) -> u64 {
        (self.view.numel() * self.dtype.size()) as u64
    }
}

/// A re-emitted graph: the pickle and the storages its persistent ids name, in key order.
#[derive(Debug)]
pub struct Repickled {
    /// `data.pkl`.
    pub pickle: Vec<u8>,
    /// `archive/data/0`, `archive/data/1`, …
    pub storages: Vec<StorageOut>,
}

/// Writes the graph under `root` as a protocol-2 pickle. `convert` gives tensors (by node) a new
/// dtype; the graph's `requires_grad` marks are written as they are.
pub fn repickle(
    graph: &Graph,
    root: &Value,
    convert: &HashMap<NodeId, DType>,
) -> Result<Repickled, RepickleError> {
    let mut p = Pickler {
        g: graph,
        out: vec![0x80, super::reemit::PROTOCOL],
        memo: HashMap::new(),
        busy: HashSet::new(),
        storages: Vec::new(),
        by_key: HashMap::new(),
        convert,
        depth: 0,
    };
    p.value(root)?;
    p.out.push(b'.');
    Ok(Repickled {
        pickle: p.out,
        storages: p.storages,
    })
}

struct Pickler<'g> {
    g: &'g Graph,
    out: Vec<u8>,
    memo: HashMap<NodeId, u32>,
    /// Tuples being written: a tuple cannot be memoized before its items, so one reached again
    /// through its own items is a cycle the format cannot express this way.
    busy: HashSet<NodeId>,
    storages: Vec<StorageOut>,
    by_key: HashMap<(Arc<str>, usize), usize>,
    convert: &'g HashMap<NodeId, DType>,
    depth: usize,
}

type R = Result<(), RepickleError>;

/// Why an object graph cannot be written again as a pickle; the text names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum RepickleError {
    /// A big integer whose text is not decimal (LONG needs decimal).
    #[error("integer literal {0:?} is not decimal")]
    NotDecimal(String),
    /// Nesting beyond what the writer recurses into.
    #[error("objects nested deeper than {0} levels")]
    TooDeep(usize),
    /// A tuple reachable from itself (a pickle builds tuples before it can memoise them).
    #[error("a tuple that contains itself")]
    SelfTuple,
    /// An object whose maker is not a global.
    #[error("an object made by a callable that is not a global cannot be written again")]
    AnonymousMaker,
    /// An object made with keyword arguments.
    #[error("{0}: keyword arguments (NEWOBJ_EX) cannot be written at protocol 2")]
    Keywords(String),
    /// A numpy array (its bytes live in the pickle, not in a storage).
    #[error("a numpy array cannot be written again as it was pickled")]
    NumpyArray,
    /// A dtype conversion between a non-floating type and another.
    #[error("cannot convert a {from} tensor to {to}")]
    Conversion {
        /// The tensor's dtype.
        from: DType,
        /// The dtype asked for.
        to: DType,
    },
    /// One storage read through views of two dtypes.
    #[error("storage '{0}' is viewed with two dtypes")]
    TwoDtypes(String),
    /// A dtype torch has no storage class for.
    #[error("torch files cannot hold {0} storages")]
    NoStorageClass(DType),
    /// A global whose module or name cannot be written as GLOBAL text.
    #[error("global {0:?} cannot be written as GLOBAL")]
    BadGlobal(String),
    /// Two different storages under one key.
    #[error("two different storages have the key {0:?}")]
    KeyClash(String),
    /// A global whose meaning at the written protocol is not what the input's loader resolved
    /// (a Python 2 name read at protocol ≥ 3): writing it would change what the file does.
    #[error("global {written} would mean {now} when written again, not {was}")]
    Renamed {
        /// As written.
        written: String,
        /// What the output's loader would look up.
        now: String,
        /// What the input's loader looked up (the written name itself for a new global).
        was: String,
    },
    /// A size beyond a pickled int.
    #[error("{0} does not fit a pickled int")]
    TooBig(usize),
}

impl Pickler<'_> {
    fn value(&mut self, v: &Value) -> R {
        match v {
            Value::None => self.out.push(b'N'),
            Value::Bool(true) => self.out.push(0x88),
            Value::Bool(false) => self.out.push(0x89),
            Value::Int(i) => self.int(*i),
            Value::BigInt(s) => {
                // LONG takes decimal text at any protocol.
                if !s
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
                {
                    return Err(RepickleError::NotDecimal(s.to_string()));
                }
                self.out.push(b'L');
                self.out.extend_from_slice(s.as_bytes());
                self.out.extend_from_slice(b"L\n");
            }
            Value::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Node(id) => {
                if let Some(&m) = self.memo.get(id) {
                    self.get(m);
                    return Ok(());
                }
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(RepickleError::TooDeep(MAX_DEPTH));
                }
                let r = self.node(*id);
                self.depth -= 1;
                r?;
            }
        }
        Ok(())
    }

    fn node(&mut self, id: NodeId) -> R {
        let g = self.g;
        match g.node(id) {
            Node::Tuple(items) => {
                if !self.busy.insert(id) {
                    return Err(RepickleError::SelfTuple);
                }
                let size = g.made_by(id).filter(|c| c.is("torch", "Size"));
                if let Some(c) = size {
                    self.global(c)?;
                }
                self.tuple(items)?;
                if size.is_some() {
                    self.out.extend_from_slice(b"\x85R"); // TUPLE1 REDUCE
                }
                self.busy.remove(&id);
                self.put(id);
            }
            Node::List(items) => {
                self.out.push(b']');
                self.put(id);
                self.appends(items)?;
            }
            Node::Dict(entries) => {
                match g.made_by(id) {
                    Some(c) if c.is("collections", "OrderedDict") => {
                        self.global(c)?;
                        self.out.extend_from_slice(b")R"); // EMPTY_TUPLE REDUCE
                    }
                    _ => self.out.push(b'}'),
                }
                self.put(id);
                self.setitems(entries)?;
                self.container_state(id)?;
            }
            Node::Set(items) | Node::FrozenSet(items) => {
                let name = if matches!(g.node(id), Node::Set(_)) {
                    "set"
                } else {
                    "frozenset"
                };
                self.own(&Global::new("__builtin__", name), ("builtins", name))?;
                self.out.push(b']');
                self.appends(items)?;
                self.out.extend_from_slice(b"\x85R");
                self.put(id);
            }
            Node::Bytes(b) => {
                if b.is_empty() {
                    self.own(&Global::new("__builtin__", "bytes"), ("builtins", "bytes"))?;
                    self.out.extend_from_slice(b")R");
                } else {
                    // Protocol 2 has no bytes opcode: Python 3 writes
                    // `_codecs.encode(latin-1 text, 'latin1')`.
                    self.own(&Global::new("_codecs", "encode"), ("_codecs", "encode"))?;
                    let text: String = b.iter().map(|&c| c as char).collect();
                    self.str(&text);
                    self.str("latin1");
                    self.out.extend_from_slice(b"\x86R"); // TUPLE2 REDUCE
                }
                self.put(id);
            }
            Node::Global(gl) => {
                self.global(gl)?;
                self.put(id);
            }
            Node::Object(o) => {
                let class = o.class.as_ref().ok_or(RepickleError::AnonymousMaker)?;
                if !o.kwargs.is_empty() {
                    return Err(RepickleError::Keywords(class.dotted()));
                }
                match o.made {
                    Made::Reduce => self.global(class)?,
                    Made::NewObj => self.global(class)?,
                    Made::Reconstructor => self.own(
                        &Global::new("copy_reg", "_reconstructor"),
                        ("copyreg", "_reconstructor"),
                    )?,
                }
                self.tuple(&o.args)?;
                self.out
                    .push(if o.made == Made::NewObj { 0x81 } else { b'R' });
                self.put(id);
                if !o.items.is_empty() {
                    self.appends(&o.items)?;
                }
                if !o.entries.is_empty() {
                    self.setitems(&o.entries)?;
                }
                if let Some(state) = &o.state {
                    self.value(state)?;
                    self.out.push(b'b'); // BUILD
                }
            }
            Node::Storage(s) => {
                let key = self.storage_for(s, None)?;
                self.persistent_id(key)?;
                self.put(id);
            }
            Node::Tensor(t) => self.tensor(id, t)?,
        }
        Ok(())
    }

    fn tensor(&mut self, id: NodeId, t: &Tensor) -> R {
        if &**t.storage_key() == "numpy" {
            return Err(RepickleError::NumpyArray);
        }
        let grad = self.g.requires_grad(id);
        if t.is_parameter() {
            self.own(
                &Global::new("torch._utils", "_rebuild_parameter"),
                ("torch._utils", "_rebuild_parameter"),
            )?;
            self.out.push(b'(');
        }
        self.own(
            &Global::new("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_tensor_v2"),
        )?;
        self.out.push(b'(');
        let to = self.convert.get(&id).copied().filter(|&d| d != t.dtype());
        let (offset, strides) = match to {
            Some(_) => (0, contiguous_strides(t.shape())),
            None => (t.offset(), t.strides().to_vec()),
        };
        let key = self.storage_for(t, to)?;
        self.persistent_id(key)?;
        self.usize(offset)?;
        self.usize_tuple(t.shape())?;
        self.usize_tuple(&strides)?;
        // A parameter's data is detached; the parameter carries `requires_grad`.
        self.out.push(if grad && !t.is_parameter() {
            0x88
        } else {
            0x89
        });
        self.ordered_dict()?;
        self.out.extend_from_slice(b"tR");
        if t.is_parameter() {
            self.out.push(if grad { 0x88 } else { 0x89 });
            self.ordered_dict()?;
            self.out.extend_from_slice(b"tR");
        }
        self.put(id);
        Ok(())
    }

    /// The output storage for `t`: its input storage shared by key (all of it), or, when
    /// converted, a new storage holding just this view.
    fn storage_for(&mut self, t: &Tensor, to: Option<DType>) -> Result<usize, RepickleError> {
        if let Some(dtype) = to {
            if !(t.dtype().is_float() && dtype.is_float()) {
                return Err(RepickleError::Conversion {
                    from: t.dtype(),
                    to: dtype,
                });
            }
            self.storages.push(StorageOut {
                view: t.clone(),
                dtype,
            });
            return Ok(self.storages.len() - 1);
        }
        let size = t.dtype().size();
        let whole = t.whole_storage();
        // Keyed with the element size too: one storage seen through two dtypes would need one
        // untyped storage, which torch's pickled storage classes cannot say.
        match self.by_key.get(&(t.storage_key().clone(), size)) {
            // Two different buffers under one key would be written as one storage: any string is
            // a legal record name, so a checkpoint may already hold the key an edit chose.
            Some(&k) if !self.storages[k].view.storage().is_same(whole.storage()) => {
                Err(RepickleError::KeyClash(t.storage_key().to_string()))
            }
            Some(&k) if self.storages[k].dtype == t.dtype() => Ok(k),
            Some(_) => Err(RepickleError::TwoDtypes(t.storage_key().to_string())),
            None => {
                self.storages.push(StorageOut {
                    view: whole,
                    dtype: t.dtype(),
                });
                let k = self.storages.len() - 1;
                self.by_key.insert((t.storage_key().clone(), size), k);
                Ok(k)
            }
        }
    }

    /// `('storage', torch.<Type>Storage, '<key>', 'cpu', numel)` BINPERSID.
    fn persistent_id(&mut self, key: usize) -> R {
        let s = &self.storages[key];
        let class = s
            .dtype
            .storage_class()
            .ok_or(RepickleError::NoStorageClass(s.dtype))?;
        let numel = s.view.numel();
        self.out.push(b'(');
        self.str("storage");
        self.own(&Global::new("torch", &class), ("torch", &class))?;
        self.str(&key.to_string());
        self.str("cpu");
        self.usize(numel)?;
        self.out.extend_from_slice(b"tQ");
        Ok(())
    }

    /// BUILD with the attributes an `OrderedDict` carried (Python writes them after the items).
    fn container_state(&mut self, id: NodeId) -> R {
        if let Some(state) = self.g.container_state(id) {
            self.value(state)?;
            self.out.push(b'b');
        }
        Ok(())
    }

    fn ordered_dict(&mut self) -> R {
        self.own(
            &Global::new("collections", "OrderedDict"),
            ("collections", "OrderedDict"),
        )?;
        self.out.extend_from_slice(b")R");
        Ok(())
    }

    fn tuple(&mut self, items: &[Value]) -> R {
        match items.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                for v in items {
                    self.value(v)?;
                }
                self.out.push(0x85 + items.len() as u8 - 1);
            }
            _ => {
                self.out.push(b'(');
                for v in items {
                    self.value(v)?;
                }
                self.out.push(b't');
            }
        }
        Ok(())
    }

    fn appends(&mut self, items: &[Value]) -> R {
        for chunk in items.chunks(BATCH) {
            self.out.push(b'(');
            for v in chunk {
                self.value(v)?;
            }
            self.out.push(b'e');
        }
        Ok(())
    }

    fn setitems(&mut self, entries: &[(Value, Value)]) -> R {
        for chunk in entries.chunks(BATCH) {
            self.out.push(b'(');
            for (k, v) in chunk {
                self.value(k)?;
                self.value(v)?;
            }
            self.out.push(b'u');
        }
        Ok(())
    }

    fn global(&mut self, g: &Global) -> R {
        let bad = |s: &str| s.is_empty() || s.contains('\n');
        if bad(&g.module) || bad(&g.name) {
            return Err(RepickleError::BadGlobal(g.dotted()));
        }
        // The CLI refuses such files with the security message first; this keeps any other
        // caller from writing one.
        let now = super::reemit::resolved(g);
        let records = self.g.uses().records();
        let mut meant = records
            .iter()
            .filter(|r| r.written == *g)
            .map(|r| &r.resolved);
        let changed = match meant.clone().next() {
            Some(_) => meant.find(|was| **was != now).cloned(),
            None => (now != *g).then(|| g.clone()),
        };
        if let Some(was) = changed {
            return Err(RepickleError::Renamed {
                written: g.dotted(),
                now: now.dotted(),
                was: was.dotted(),
            });
        }
        self.write_global(g);
        Ok(())
    }

    /// A global the writer itself chose, spelled the protocol-2 way (`__builtin__.set` for a set
    /// the input built with EMPTY_SET or `builtins.set`): it must mean `meant` when read back,
    /// whatever the input's own records say about that spelling.
    fn own(&mut self, g: &Global, meant: (&str, &str)) -> R {
        let now = super::reemit::resolved(g);
        if !now.is(meant.0, meant.1) {
            return Err(RepickleError::Renamed {
                written: g.dotted(),
                now: now.dotted(),
                was: format!("{}.{}", meant.0, meant.1),
            });
        }
        self.write_global(g);
        Ok(())
    }

    fn write_global(&mut self, g: &Global) {
        self.out.push(b'c');
        self.out.extend_from_slice(g.module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(g.name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, i: i64) {
        if (0..=0xff).contains(&i) {
            self.out.extend_from_slice(&[b'K', i as u8]);
        } else if (0..=0xffff).contains(&i) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(i) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]); // LONG1, 8 bytes two's complement
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn usize(&mut self, v: usize) -> R {
        let i = i64::try_from(v).map_err(|_| RepickleError::TooBig(v))?;
        self.int(i);
        Ok(())
    }

    fn usize_tuple(&mut self, items: &[usize]) -> R {
        self.out.push(b'(');
        for &i in items {
            self.usize(i)?;
        }
        self.out.push(b't');
        Ok(())
    }

    fn put(&mut self, id: NodeId) {
        let m = self.memo.len() as u32;
        self.memo.insert(id, m);
        if m < 256 {
            self.out.extend_from_slice(&[b'q', m as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&m.to_le_bytes());
        }
    }

    fn get(&mut self, m: u32) {
        if m < 256 {
            self.out.extend_from_slice(&[b'h', m as u8]);
        } else {
            self.out.push(b'j');
            self.out.extend_from_slice(&m.to_le_bytes());
        }
    }
}
