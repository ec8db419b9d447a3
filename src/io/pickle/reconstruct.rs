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
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(graph, &args)
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            let data = args.first().ok_or(PickleFault::ReconstructorArgs(
                "_rebuild_parameter without data",
            ))?;
            let p = mark_parameter(graph, data)?;
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

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(graph: &mut Graph, args: &[Value]) -> R<Value> {
    if args.len() < 4 {
        return Err(PickleFault::RebuildArgCount(args.len()));
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

/// The dtype of a pickled `numpy.dtype('<code>', ...)` object.
fn numpy_dtype(graph: &Graph, v: &Value) -> Option<DType> {
    let obj = graph.object(v)?;
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
