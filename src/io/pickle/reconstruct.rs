//! The reconstructors interpreted as data. Everything else becomes an inert [`Object`].
//!
//! These mirror what torch's weights-only unpickler allows, plus the containers and numpy scalars
//! training code commonly stores. Interpreting means reading the arguments; no callable runs.

use std::sync::Arc;

use super::containers::{self, Kind};
use super::error::PickleFault;
use crate::checkpoint::value::{Global, Graph, Made, Node, Object, Value};
use crate::tensor::{DType, Tensor};

type R<T> = Result<T, PickleFault>;

/// Handles REDUCE / NEWOBJ of a global with these arguments.
pub fn construct(
    graph: &mut Graph,
    g: &Global,
    args: Vec<Value>,
    kwargs: Vec<(Value, Value)>,
    is_new: bool,
) -> R<Value> {
    let module = &*g.module;
    let name = &*g.name;
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor(graph, &args, 6..=7),
        ("torch._utils", "_rebuild_tensor") => rebuild_tensor(graph, &args, 4..=4),
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            // (data, requires_grad, backward_hooks[, state]): torch sets each item of the state
            // as an attribute of the parameter (`data` replaces its values).
            let with_state = name == "_rebuild_parameter_with_state";
            if args.len() != 3 + usize::from(with_state) {
                return Err(PickleFault::RebuildArgCount(args.len()));
            }
            if with_state && !no_state(graph, &args[3]) {
                return Err(PickleFault::ObjectState("_rebuild_parameter_with_state"));
            }
            let p = mark_parameter(graph, &args[0])?;
            graph.set_requires_grad(&p, args.get(1) == Some(&Value::Bool(true)));
            Ok(p)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => rebuild_from_type(graph, args),
        ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
            containers::make(graph, g, Kind::Dict, &args, &kwargs, is_new)
        }
        ("builtins", "set") | ("__builtin__", "set") => {
            containers::make(graph, g, Kind::Set, &args, &kwargs, is_new)
        }
        ("builtins", "frozenset") | ("__builtin__", "frozenset") => {
            containers::make(graph, g, Kind::FrozenSet, &args, &kwargs, is_new)
        }
        ("builtins", "list") | ("__builtin__", "list") => {
            containers::make(graph, g, Kind::List, &args, &kwargs, is_new)
        }
        ("builtins", "tuple") | ("__builtin__", "tuple") | ("torch", "Size") => {
            containers::make(graph, g, Kind::Tuple, &args, &kwargs, is_new)
        }
        ("_codecs", "encode") => {
            // Protocol 2 stores bytes as _codecs.encode(latin-1 text, 'latin1').
            let s = args
                .first()
                .and_then(Value::as_str)
                .ok_or(PickleFault::ReconstructorArgs("encode without text"))?;
            let bytes: Arc<[u8]> = s.chars().map(|c| c as u32 as u8).collect::<Vec<_>>().into();
            Ok(graph.add(Node::Bytes(bytes)))
        }
        ("builtins", "bytearray") | ("builtins", "bytes") | ("__builtin__", "bytearray") => {
            containers::bytes(graph, g, &args, is_new)
        }
        ("numpy.core.multiarray", "scalar") | ("numpy._core.multiarray", "scalar") => {
            if let Some(v) = numpy_text(graph, &args) {
                return Ok(v);
            }
            Ok(numpy_scalar(graph, &args).unwrap_or_else(|| inert(graph, g, args, kwargs)))
        }
        ("copyreg", "_reconstructor") | ("copy_reg", "_reconstructor") => {
            // Protocol 0/1 instances: (cls, base, state); the class is what matters.
            let class = match args.first().and_then(|a| graph.get(a)) {
                Some(Node::Global(c)) => Some(c.clone()),
                _ => None,
            };
            Ok(graph.add(Node::Object(Box::new(Object {
                class,
                made: Made::Reconstructor,
                args,
                ..Object::default()
            }))))
        }
        _ => {
            let v = inert(graph, g, args, kwargs);
            if is_new && let Some(Node::Object(o)) = v.node().map(|id| graph.node_mut(id)) {
                o.made = Made::NewObj;
            }
            Ok(v)
        }
    }
}

/// How many values' worth of memory a node made by a reconstructor holds (its copied items).
pub fn copied_values(node: &Node) -> usize {
    match node {
        Node::Tuple(v) | Node::List(v) | Node::Set(v) | Node::FrozenSet(v) => v.len(),
        Node::Dict(e) => 2 * e.len(),
        Node::Object(o) => o.args.len() + 2 * o.kwargs.len() + o.items.len() + 2 * o.entries.len(),
        Node::Tensor(t) | Node::Storage(t) => t.shape().len() + t.strides().len(),
        Node::Bytes(b) => b.len().div_ceil(std::mem::size_of::<Value>()),
        Node::Global(_) => 0,
    }
}

/// How often `_rebuild_from_type_v2` may name itself as the function it calls: torch pickles one
/// level; a hostile chain (or an argument list that contains itself) would otherwise recurse
/// without end.
const MAX_REBUILD_NESTING: usize = 8;

/// `_rebuild_from_type_v2(func, new_type, args, state)`: the tensor is `func(*args)`; `new_type` is
/// the subclass (a parameter marks the result). Nested calls are unwrapped in a loop.
fn rebuild_from_type(graph: &mut Graph, mut args: Vec<Value>) -> R<Value> {
    let mut is_param = false;
    for _ in 0..=MAX_REBUILD_NESTING {
        let func = args.first().ok_or(PickleFault::ReconstructorArgs(
            "_rebuild_from_type_v2 without func",
        ))?;
        let func = match graph.get(func) {
            Some(Node::Global(f)) => f.clone(),
            _ => {
                return Err(PickleFault::ReconstructorArgs(
                    "_rebuild_from_type_v2 with a func that is not a global",
                ));
            }
        };
        // torch sets the state's items as attributes of the tensor (or passes them to the
        // subclass's own __setstate__): anything but an empty state may change its values.
        if args.len() != 4 {
            return Err(PickleFault::RebuildArgCount(args.len()));
        }
        if !no_state(graph, &args[3]) {
            return Err(PickleFault::ObjectState("_rebuild_from_type_v2"));
        }
        is_param |= matches!(
            args.get(1).and_then(|v| graph.get(v)),
            Some(Node::Global(c)) if c.is("torch.nn.parameter", "Parameter")
        );
        let inner = args
            .get(2)
            .and_then(|a| graph.seq(a))
            .ok_or(PickleFault::ReconstructorArgs(
                "_rebuild_from_type_v2 without args",
            ))?
            .to_vec();
        if func.is("torch._tensor", "_rebuild_from_type_v2") {
            args = inner;
            continue;
        }
        let t = construct(graph, &func, inner, Vec::new(), false)?;
        return if is_param {
            mark_parameter(graph, &t)
        } else {
            Ok(t)
        };
    }
    Err(PickleFault::RebuildNesting(MAX_REBUILD_NESTING))
}

/// BUILD targets whose state carries the data itself (numpy arrays); `None` for the rest.
pub fn build_special(graph: &Graph, target: &Value, state: &Value) -> Option<Node> {
    let obj = graph.object(target)?;
    let class = obj.class.as_ref()?;
    let is_ndarray = class.is("numpy.core.multiarray", "_reconstruct")
        || class.is("numpy._core.multiarray", "_reconstruct");
    if !is_ndarray {
        return None;
    }
    // state = (version, shape, dtype, is_fortran, raw bytes)
    let s = graph.seq(state)?;
    let shape: Vec<usize> = graph
        .seq(s.get(1)?)?
        .iter()
        .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect::<Option<_>>()?;
    let dtype = numpy_dtype(graph, s.get(2)?)?;
    if s.get(3)? != &Value::Bool(false) {
        return None;
    }
    let raw = match graph.get(s.get(4)?)? {
        Node::Bytes(b) => b.clone(),
        _ => return None,
    };
    let strides = crate::tensor::contiguous_strides(&shape);
    let storage = crate::tensor::Buffer::Owned(raw);
    let t = Tensor::new_view(dtype, shape, strides, 0, storage, "numpy".into()).ok()?;
    Some(Node::Tensor(Box::new(t)))
}

fn inert(graph: &mut Graph, g: &Global, args: Vec<Value>, kwargs: Vec<(Value, Value)>) -> Value {
    graph.add(Node::Object(Box::new(Object {
        class: Some(g.clone()),
        args,
        kwargs,
        ..Object::default()
    })))
}

fn mark_parameter(graph: &mut Graph, data: &Value) -> R<Value> {
    let t = graph
        .tensor(data)
        .ok_or(PickleFault::ReconstructorArgs(
            "parameter data is not a tensor",
        ))?
        .clone();
    Ok(graph.add(Node::Tensor(Box::new(t.with_parameter(true)))))
}

fn usize_list(graph: &Graph, v: &Value, what: &'static str) -> R<Vec<usize>> {
    let items = graph.seq(v).ok_or(PickleFault::ShapeNotTuple(what))?;
    items
        .iter()
        .map(|x| {
            x.as_int()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or(PickleFault::ShapeEntry(what))
        })
        .collect()
}

/// Whether a tensor's pickled state is one torch applies as nothing: `None`, `{}`, or a
/// `(dict state, slots state)` pair of those (`torch._utils._set_obj_state`).
fn no_state(graph: &Graph, state: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::None => true,
        v => matches!(graph.get(v), Some(Node::Dict(d)) if d.is_empty()),
    };
    match graph.get(state) {
        Some(Node::Tuple(pair)) => pair.len() == 2 && pair.iter().all(empty),
        _ => empty(state),
    }
}

/// `_rebuild_tensor(storage, storage_offset, size, stride)` and `_rebuild_tensor_v2(…,
/// requires_grad, backward_hooks[, metadata])`, with the argument counts Python accepts.
fn rebuild_tensor(
    graph: &mut Graph,
    args: &[Value],
    count: std::ops::RangeInclusive<usize>,
) -> R<Value> {
    if !count.contains(&args.len()) {
        return Err(PickleFault::RebuildArgCount(args.len()));
    }
    // torch applies the metadata (`{'neg': True}`, `{'conj': True}`) to the values; only "none"
    // is read.
    if let Some(m) = args.get(6)
        && !matches!(m, Value::None)
        && !matches!(graph.get(m), Some(Node::Dict(d)) if d.is_empty())
    {
        return Err(PickleFault::TensorMetadata(metadata_text(graph, m)));
    }
    let storage = match graph.get(&args[0]) {
        Some(Node::Storage(s)) => s.clone(),
        _ => {
            return Err(PickleFault::ReconstructorArgs(
                "_rebuild_tensor on something that is not a storage",
            ));
        }
    };
    let offset = args[1]
        .as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or(PickleFault::ReconstructorArgs(
            "tensor storage offset is negative or not an integer",
        ))?;
    let shape = usize_list(graph, &args[2], "size")?;
    let strides = usize_list(graph, &args[3], "stride")?;
    let requires_grad = args.get(4) == Some(&Value::Bool(true));
    let t = Tensor::pending(
        storage.dtype(),
        shape,
        strides,
        offset,
        storage.storage().clone(),
        storage.storage_key().clone(),
    );
    // In files that list the storages after the pickle, the view is checked when its storage's
    // bytes are attached (`Tensor::attach_storage`).
    if !graph.defer_view_checks {
        t.check_view().map_err(|source| PickleFault::View {
            storage: t.storage_key().to_string(),
            source,
        })?;
    }
    let v = graph.add(Node::Tensor(Box::new(t)));
    graph.set_requires_grad(&v, requires_grad);
    Ok(v)
}

/// The metadata argument as the message shows it: a dict's keys, or the kind of value.
fn metadata_text(graph: &Graph, m: &Value) -> String {
    match graph.get(m) {
        Some(Node::Dict(d)) => {
            let keys: Vec<String> = d
                .iter()
                .map(|(k, _)| crate::checkpoint::sets::key_text(k))
                .collect();
            format!("with keys {}", keys.join(", "))
        }
        Some(n) => format!("of kind {}", n.kind()),
        None => "that is not a dict".into(),
    }
}

/// `numpy.core.multiarray.scalar(dtype('U<n>' or 'S<n>'), raw)`: a `numpy.str_` or
/// `numpy.bytes_`, which Python compares and hashes as the `str`/`bytes` they are (a dict key
/// `numpy.str_('ema')` is the key `'ema'`), so they are read as text and bytes. numpy drops the
/// trailing NULs of the fixed-width value. `None` for anything else (or any doubt: the dtype's
/// class, its arguments, byte order and item size must be what numpy writes).
fn numpy_text(graph: &mut Graph, args: &[Value]) -> Option<Value> {
    let [dtype, raw] = args else {
        return None;
    };
    let obj = graph.object(dtype)?;
    if !obj.class.as_ref()?.is("numpy", "dtype")
        || obj.args.get(1..) != Some(&[Value::Bool(false), Value::Bool(true)][..])
    {
        return None;
    }
    let code = obj.args.first()?.as_str()?;
    let (unicode, n) = match code.split_at_checked(1)? {
        ("U", n) => (true, n),
        ("S", n) => (false, n),
        _ => return None,
    };
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = n.parse().ok()?;
    let width = if unicode { n.checked_mul(4)? } else { n };
    let state = graph.seq(obj.state.as_ref()?)?;
    let order = if unicode { "<" } else { "|" };
    if state.get(1)?.as_str()? != order || state.get(5)?.as_int()? != i64::try_from(width).ok()? {
        return None;
    }
    let Node::Bytes(raw) = graph.get(raw)? else {
        return None;
    };
    if raw.len() != width {
        return None;
    }
    if unicode {
        let text: String = (raw.chunks_exact(4))
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<_>>()?;
        Some(Value::Str(text.trim_end_matches('\0').into()))
    } else {
        let keep = raw.len() - raw.iter().rev().take_while(|&&b| b == 0).count();
        let bytes: Arc<[u8]> = raw[..keep].into();
        Some(graph.add(Node::Bytes(bytes)))
    }
}

/// The dtype of a pickled `numpy.dtype('<code>', ...)` object.
fn numpy_dtype(graph: &Graph, v: &Value) -> Option<DType> {
    let obj = graph.object(v)?;
    // Only numpy's own dtype class means this; any other class's arguments are its own business.
    if !obj.class.as_ref()?.is("numpy", "dtype") {
        return None;
    }
    let code = obj.args.first()?.as_str()?;
    // A big-endian byte order in the dtype's state would need swapping; refuse it instead.
    if let Some(state) = obj.state.as_ref().and_then(|s| graph.seq(s))
        && state.get(1).and_then(Value::as_str) == Some(">")
    {
        return None;
    }
    DType::from_numpy_code(code)
}

/// `numpy.core.multiarray.scalar(dtype, bytes)` as a plain number.
fn numpy_scalar(graph: &Graph, args: &[Value]) -> Option<Value> {
    let dtype = numpy_dtype(graph, args.first()?)?;
    let raw: &[u8] = match graph.get(args.get(1)?)? {
        Node::Bytes(b) => b,
        _ => return None,
    };
    if raw.len() != dtype.size() {
        return None;
    }
    let mut a = [0u8; 8];
    a[..raw.len()].copy_from_slice(raw);
    Some(match dtype {
        DType::F64 => Value::Float(f64::from_le_bytes(a)),
        DType::F32 => Value::Float(f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64),
        DType::F16 => Value::Float(half::f16::from_le_bytes([a[0], a[1]]).to_f64()),
        DType::Bool => Value::Bool(a[0] != 0),
        DType::U64 => match i64::try_from(u64::from_le_bytes(a)) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(u64::from_le_bytes(a).to_string().into()),
        },
        DType::I64 => Value::Int(i64::from_le_bytes(a)),
        DType::I32 => Value::Int(i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as i64),
        DType::I16 => Value::Int(i16::from_le_bytes([a[0], a[1]]) as i64),
        DType::I8 => Value::Int(a[0] as i8 as i64),
        DType::U32 => Value::Int(u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as i64),
        DType::U16 => Value::Int(u16::from_le_bytes([a[0], a[1]]) as i64),
        DType::U8 => Value::Int(a[0] as i64),
        _ => return None,
    })
}
