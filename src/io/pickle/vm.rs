//! The opcode loop.

use std::collections::{HashMap, HashSet};

use super::containers;
use super::error::PickleFault;
use super::frame::Frames;
use super::keys::{self, KeyIndex};
use super::literal::*;
use super::ops::*;
use super::reconstruct;
use super::record::{self, Call};
use super::{Limits, PersistentLoad, PickleError};
use crate::checkpoint::value::{Global, Graph, Made, Node, NodeId, Object, Value};

/// Decodes one pickle from `data` into `graph`; returns its top value and the number of bytes it
/// took (the offset just past STOP).
///
/// Nothing named by the pickle is executed; persistent ids go to `loader`.
pub fn unpickle(
    data: &[u8],
    graph: &mut Graph,
    loader: &mut dyn PersistentLoad,
    limits: &Limits,
) -> Result<(Value, usize), PickleError> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        values: 0,
        frames: Frames::default(),
        proto: 0,
        graph,
        loader,
        limits,
        keys: KeyIndex::default(),
        instance_dicts: HashSet::new(),
    };
    vm.run()
}

/// The machine's state; the stack, memo and operand readers are in `stack.rs`.
pub(super) struct Vm<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) op_start: usize,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<Vec<Value>>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) values: usize,
    pub(super) frames: Frames,
    /// The protocol of the last PROTO opcode (0 before any): Python maps Python 2 names below 3.
    pub(super) proto: u8,
    pub(super) graph: &'a mut Graph,
    pub(super) loader: &'a mut dyn PersistentLoad,
    pub(super) limits: &'a Limits,
    /// Where each dict's keys sit, for Python's rule on a key set twice.
    pub(super) keys: KeyIndex,
    /// The dict nodes holding objects' attributes, made by BUILD (see `build.rs`).
    pub(super) instance_dicts: HashSet<NodeId>,
}

pub(super) type R<T> = Result<T, PickleFault>;

impl<'a> Vm<'a> {
    fn run(&mut self) -> Result<(Value, usize), PickleError> {
        let mut ops: u64 = 0;
        loop {
            self.op_start = self.pos;
            ops += 1;
            if ops > self.limits.max_ops {
                return Err(self.err(PickleFault::TooManyOps(self.limits.max_ops)));
            }
            let op = match self.data.get(self.pos) {
                Some(&b) => b,
                None => return Err(self.err(PickleFault::NoStop)),
            };
            self.frames.read(self.pos, 1).map_err(|m| self.err(m))?;
            self.pos += 1;
            if op == STOP {
                self.frames.stop(self.pos).map_err(|m| self.err(m))?;
                let v = self.pop().map_err(|m| self.err(m))?;
                return Ok((v, self.pos));
            }
            if let Err(m) = self.step(op) {
                return Err(self.err(m));
            }
            if self.graph.len() > self.limits.max_nodes {
                return Err(self.err(PickleFault::TooManyObjects(self.limits.max_nodes)));
            }
            if self.values > self.limits.max_values {
                return Err(self.err(PickleFault::TooManyValues(self.limits.max_values)));
            }
            // Nodes carry ~48 bytes of heap on average beyond their own size (boxed objects,
            // container buffers); values are counted as they are pushed; a memo entry takes
            // about 72 bytes of hash table once growth is counted (5-byte LONG_BINPUTs to new
            // keys would otherwise grow memory 20 times faster than the file); the graph's side
            // tables (reconstructor classes, BUILD states of containers) count too.
            let approx = self.graph.len() * (std::mem::size_of::<Node>() + 48)
                + self.values * std::mem::size_of::<Value>()
                + self.graph.uses().approx_bytes()
                + self.graph.side_bytes()
                + self.memo.len() * 72;
            if approx > self.limits.max_bytes {
                return Err(self.err(PickleFault::TooLarge(self.limits.max_bytes >> 20)));
            }
        }
    }

    fn err(&self, fault: PickleFault) -> PickleError {
        PickleError {
            offset: self.op_start,
            fault,
            named: Vec::new(),
        }
    }

    fn step(&mut self, op: u8) -> R<()> {
        match op {
            PROTO => {
                let p = self.take(1)?[0];
                if p > 5 {
                    return Err(PickleFault::Protocol(p));
                }
                self.proto = p;
            }
            FRAME => {
                let len = self.len8()?;
                let remaining = self.data.len() - self.pos;
                self.frames.start(self.pos, len, remaining)?;
            }
            MARK => {
                if self.marks.len() >= self.limits.max_depth {
                    return Err(PickleFault::TooDeep(self.limits.max_depth));
                }
                self.marks.push(std::mem::take(&mut self.stack));
            }
            POP => {
                if self.stack.is_empty() {
                    // Python's POP with an empty stack after MARK pops the mark.
                    self.pop_mark()?;
                } else {
                    self.pop()?;
                }
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let v = self.top()?.clone();
                self.push(v);
            }
            NONE => self.push(Value::None),
            NEWTRUE => self.push(Value::Bool(true)),
            NEWFALSE => self.push(Value::Bool(false)),
            BININT => {
                let b = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push(Value::Int(v as i64));
            }
            BININT1 => {
                let v = self.take(1)?[0];
                self.push(Value::Int(v as i64));
            }
            BININT2 => {
                let b = self.take(2)?;
                self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
            }
            LONG1 => {
                let n = self.take(1)?[0] as usize;
                let b = self.take(n)?;
                let v = long_from_le(b);
                self.push(v);
            }
            LONG4 => {
                let n = self.len4()?;
                // No checkpoint stores integers of thousands of digits.
                if n > MAX_LONG_BYTES {
                    return Err(PickleFault::LongTooLong {
                        len: n,
                        max: MAX_LONG_BYTES,
                    });
                }
                let b = self.take(n)?;
                let v = long_from_le(b);
                self.push(v);
            }
            INT => {
                let line = self.line()?;
                if line.len() > 2 * MAX_LONG_BYTES + 2 {
                    return Err(PickleFault::LiteralTooLong {
                        opcode: "INT",
                        len: line.len(),
                    });
                }
                let v = parse_int(&line)?;
                self.push(v);
            }
            LONG => {
                let line = self.line()?;
                if line.len() > 2 * MAX_LONG_BYTES + 2 {
                    return Err(PickleFault::LiteralTooLong {
                        opcode: "LONG",
                        len: line.len(),
                    });
                }
                let v = parse_long(&line)?;
                self.push(v);
            }
            FLOAT => {
                let line = self.line()?;
                self.push(Value::Float(parse_float(&line)?));
            }
            BINFLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push(Value::Float(f64::from_be_bytes(a)));
            }
            STRING => {
                // CPython takes the line as it is: a blank after the closing quote is an error.
                let s = unquote_py_string(self.line_bytes()?)?;
                self.push(Value::Str(bytes_to_str(&s)?));
            }
            BINSTRING => {
                let n = self.len4()?;
                let b = self.take(n)?;
                self.push(Value::Str(bytes_to_str(b)?));
            }
            SHORT_BINSTRING => {
                let n = self.take(1)?[0] as usize;
                let b = self.take(n)?;
                self.push(Value::Str(bytes_to_str(b)?));
            }
            UNICODE => {
                // raw-unicode-escape: code points below 256 are written as single latin-1 bytes.
                let s = raw_unicode_unescape(self.line_bytes()?)?;
                self.push(Value::Str(s.into()));
            }
            BINUNICODE => {
                let n = self.len4()?;
                self.push_utf8(n)?;
            }
            SHORT_BINUNICODE => {
                let n = self.take(1)?[0] as usize;
                self.push_utf8(n)?;
            }
            BINUNICODE8 => {
                let n = self.len8()?;
                self.push_utf8(n)?;
            }
            BINBYTES => {
                let n = self.len4()?;
                self.push_bytes(n)?;
            }
            SHORT_BINBYTES => {
                let n = self.take(1)?[0] as usize;
                self.push_bytes(n)?;
            }
            BINBYTES8 => {
                let n = self.len8()?;
                self.push_bytes(n)?;
            }
            BYTEARRAY8 => {
                let n = self.len8()?;
                self.push_bytes(n)?;
                let v = self.top()?.clone();
                self.graph
                    .set_made_by(&v, &Global::new("builtins", "bytearray"));
            }
            NEXT_BUFFER | READONLY_BUFFER => {
                return Err(PickleFault::OutOfBand);
            }
            EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new())),
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = (op - TUPLE1 + 1) as usize;
                if self.stack.len() < n {
                    return Err(PickleFault::StackUnderflow);
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_node(Node::Tuple(items));
            }
            TUPLE => {
                let items = self.pop_mark()?;
                self.push_node(Node::Tuple(items));
            }
            EMPTY_LIST => self.push_node(Node::List(Vec::new())),
            LIST => {
                let items = self.pop_mark()?;
                self.push_node(Node::List(items));
            }
            EMPTY_DICT => self.push_node(Node::Dict(Vec::new())),
            DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                for (k, _) in &pairs {
                    containers::hashable(self.graph, k)?;
                }
                let pairs = keys::dict_of(self.graph, pairs)?;
                self.push_node(Node::Dict(pairs));
            }
            EMPTY_SET => self.push_node(Node::Set(Vec::new())),
            FROZENSET => {
                let items = self.pop_mark()?;
                for x in &items {
                    containers::hashable(self.graph, x)?;
                }
                let members = keys::set_of(self.graph, items)?;
                self.push_node(Node::FrozenSet(members));
            }
            APPEND => {
                let v = self.pop()?;
                self.extend_seq(vec![v])?;
            }
            APPENDS => {
                let items = self.pop_mark()?;
                self.extend_seq(items)?;
            }
            ADDITEMS => {
                let items = self.pop_mark()?;
                for x in &items {
                    containers::hashable(self.graph, x)?;
                }
                let target = self.top()?.clone();
                let Some(id) = target.node() else {
                    return Err(PickleFault::AddItemsNotSet);
                };
                let Node::Set(s) = self.graph.node_mut(id) else {
                    return Err(PickleFault::AddItemsNotSet);
                };
                // Taken out while members are compared (as `extend_map` does for dicts).
                let mut members = std::mem::take(s);
                let added = self.keys.add_members(self.graph, id, &mut members, items);
                *self.graph.node_mut(id) = Node::Set(members);
                added?;
            }
            SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_map(vec![(k, v)])?;
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                let p = pairs(items)?;
                self.extend_map(p)?;
            }
            GET => {
                let line = self.line()?;
                let i = parse_index(&line)?;
                self.get(i)?;
            }
            BINGET => {
                let i = self.take(1)?[0] as u32;
                self.get(i)?;
            }
            LONG_BINGET => {
                let i = self.len4()? as u32;
                self.get(i)?;
            }
            PUT => {
                let line = self.line()?;
                let i = parse_index(&line)?;
                self.put(i)?;
            }
            BINPUT => {
                let i = self.take(1)?[0] as u32;
                self.put(i)?;
            }
            LONG_BINPUT => {
                let i = self.len4()? as u32;
                self.put(i)?;
            }
            MEMOIZE => {
                let i = u32::try_from(self.memo.len()).map_err(|_| PickleFault::MemoTooLarge)?;
                self.put(i)?;
            }
            GLOBAL => {
                let module = self.line_utf8("a GLOBAL module name")?;
                let name = self.line_utf8("a GLOBAL name")?;
                self.push_global(module, name);
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => {
                        self.push_global(m.to_string(), n.to_string())
                    }
                    _ => return Err(PickleFault::StackGlobalNotStrings),
                }
            }
            EXT1 | EXT2 | EXT4 => {
                let n = match op {
                    EXT1 => 1,
                    EXT2 => 2,
                    _ => 4,
                };
                let b = self.take(n)?;
                let mut a = [0u8; 4];
                a[..n].copy_from_slice(b);
                let code = u32::from_le_bytes(a);
                // The copyreg extension registry lives in the loading process; record the code.
                self.push_global("copyreg.extension".into(), code.to_string());
            }
            REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let args = self.tuple_items(&args)?;
                let v = self.construct(callable, args, Vec::new(), Call::Reduce)?;
                self.push(v);
            }
            NEWOBJ => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let args = self.tuple_items(&args)?;
                let v = self.construct(cls, args, Vec::new(), Call::NewObj)?;
                self.push(v);
            }
            NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let args = self.tuple_items(&args)?;
                let kwargs = self
                    .graph
                    .dict(&kwargs)
                    .map(|d| d.to_vec())
                    .ok_or(PickleFault::KwargsNotDict)?;
                let v = self.construct(cls, args, kwargs, Call::NewObj)?;
                self.push(v);
            }
            INST => {
                let module = self.line_ascii("an INST module name")?;
                let name = self.line_ascii("an INST name")?;
                let args = self.pop_mark()?;
                let g = Global {
                    module: module.into(),
                    name: name.into(),
                };
                let cls = self.graph.add(Node::Global(g.clone()));
                record::named(self.graph, &cls, &g, self.proto);
                let v = self.construct(cls, args, Vec::new(), Call::Inst)?;
                self.push(v);
            }
            OBJ => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return Err(PickleFault::ObjWithoutClass);
                }
                let cls = items.remove(0);
                let v = self.construct(cls, items, Vec::new(), Call::Inst)?;
                self.push(v);
            }
            BUILD => {
                let state = self.pop()?;
                let target = self.top()?.clone();
                self.build(&target, state)?;
            }
            PERSID => {
                let line = self.line_ascii("a PERSID persistent id")?;
                let pid = Value::Str(line.into());
                let v = self
                    .loader
                    .load(self.graph, &pid)
                    .map_err(PickleFault::PersistentId)?;
                self.push(v);
            }
            BINPERSID => {
                let pid = self.pop()?;
                // Loaders copy the id's fields.
                self.values += self.graph.seq(&pid).map_or(0, <[Value]>::len);
                let v = self
                    .loader
                    .load(self.graph, &pid)
                    .map_err(PickleFault::PersistentId)?;
                self.push(v);
            }
            other => return Err(PickleFault::UnknownOpcode(other)),
        }
        Ok(())
    }

    fn tuple_items(&self, v: &Value) -> R<Vec<Value>> {
        match self.graph.get(v) {
            Some(Node::Tuple(items)) | Some(Node::List(items)) => Ok(items.clone()),
            _ => Err(PickleFault::ArgsNotTuple),
        }
    }

    fn construct(
        &mut self,
        callable: Value,
        args: Vec<Value>,
        kwargs: Vec<(Value, Value)>,
        how: Call,
    ) -> R<Value> {
        self.values += args.len() + kwargs.len();
        record::call(self.graph, &callable, &args, how);
        let maker = record::type_node(self.graph, &callable, &args);
        let global = match self.graph.get(&callable) {
            Some(Node::Global(g)) => Some(g.clone()),
            _ => None,
        };
        // INST / OBJ call the class when they have arguments (`cls(*args)`, like REDUCE) and
        // only then; without, they make it with `cls.__new__(cls)`, like NEWOBJ.
        let is_new = match how {
            Call::Reduce => false,
            Call::NewObj => true,
            Call::Inst => args.is_empty(),
        };
        let before = self.graph.len();
        let v = match global {
            Some(g) => reconstruct::construct(self.graph, &g, args, kwargs, is_new)?,
            None => self.graph.add(Node::Object(Box::new(Object {
                class: None,
                made: if is_new { Made::NewObj } else { Made::Reduce },
                args,
                kwargs,
                ..Object::default()
            }))),
        };
        record::made(self.graph, &v, maker);
        // Reconstructors copy their arguments (`list(L)`, a tensor's shape): every node they
        // create counts against the budget, so repeating a copy cannot outgrow the file.
        for id in before..self.graph.len() {
            self.values += reconstruct::copied_values(self.graph.node(NodeId(id as u32)));
        }
        Ok(v)
    }

    fn extend_seq(&mut self, items: Vec<Value>) -> R<()> {
        self.values += items.len();
        let target = self.top()?.clone();
        record::filled(self.graph, &target);
        match target.node().map(|id| self.graph.node_mut(id)) {
            Some(Node::List(l)) => l.extend(items),
            Some(Node::Object(o)) => o.items.extend(items),
            // A set has neither `extend` nor `append`: Python raises AttributeError.
            other => {
                let kind = other.map(|n| n.kind()).unwrap_or("scalar");
                return Err(PickleFault::AppendTo(kind));
            }
        }
        Ok(())
    }

    fn extend_map(&mut self, entries: Vec<(Value, Value)>) -> R<()> {
        self.values += 2 * entries.len();
        let target = self.top()?.clone();
        record::filled(self.graph, &target);
        let Some(id) = target.node() else {
            return Err(PickleFault::SetItemOn("scalar"));
        };
        // Taken out while the keys are compared: a key's equality reads other nodes.
        if matches!(self.graph.node(id), Node::Dict(_)) {
            for (k, _) in &entries {
                containers::hashable(self.graph, k)?;
            }
        }
        let mut items = match self.graph.node_mut(id) {
            Node::Dict(d) => std::mem::take(d),
            Node::Object(o) => std::mem::take(&mut o.entries),
            other => return Err(PickleFault::SetItemOn(other.kind())),
        };
        let set = self.keys.set_items(self.graph, id, &mut items, entries);
        match self.graph.node_mut(id) {
            Node::Object(o) => o.entries = items,
            node => *node = Node::Dict(items),
        }
        set
    }
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleFault::OddDict);
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}
