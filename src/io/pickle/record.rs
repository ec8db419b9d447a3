//! Records how the pickle uses each global, for the judge (`crate::checkpoint::judge`).
//!
//! Each function mirrors one thing Python's unpickler would do with a value: look a global up,
//! call it, create an instance of it, hand an instance state, fill it. Calls of the three
//! globals whose safety depends on their arguments (`copyreg._reconstructor`,
//! `torch._tensor._rebuild_from_type_v2`, `builtins.getattr`) have those arguments checked here,
//! while they are at hand.

use crate::checkpoint::judge::compat;
use crate::checkpoint::uses::{Args, Use};
use crate::checkpoint::value::{Global, Graph, NodeId, Value};

/// How the unpickler invokes a callable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    /// REDUCE: `f(*args)`.
    Reduce,
    /// NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args)`.
    NewObj,
    /// INST / OBJ: `cls(*args)`, or `cls.__new__(cls)` for a class without arguments.
    Inst,
}

/// Records that the global node `v` names `g`, in a pickle of protocol `proto`.
pub(super) fn named(graph: &mut Graph, v: &Value, g: &Global, proto: u8) {
    if let Some(id) = v.node() {
        let resolved = compat::resolve(g, proto);
        graph.uses_mut().name(id, g, resolved);
    }
}

fn is_constant(v: &Value) -> bool {
    !matches!(v, Value::Node(_))
}

fn shape(args: &[Value]) -> Args {
    Args {
        count: u8::try_from(args.len()).unwrap_or(u8::MAX),
        constants: args.iter().all(is_constant),
    }
}

fn kind(graph: &Graph, v: &Value) -> &'static str {
    match v {
        Value::Node(id) => graph.node(*id).kind(),
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
    }
}

/// Records that what `v` holds is called (or used as a class): on its global, on the global
/// that made it, or as a loose call.
fn callee(graph: &mut Graph, v: &Value, u: Use) -> Option<NodeId> {
    let what = kind(graph, v);
    let Some(id) = v.node() else {
        graph.uses_mut().loose_call(what);
        return None;
    };
    if graph.uses_mut().use_global(id, u) {
        return Some(id);
    }
    if !graph.uses_mut().use_maker(id, Use::ResultCalled) {
        graph.uses_mut().loose_call(what);
    }
    None
}

/// Records a call of `callable` with `args`.
pub(super) fn call(graph: &mut Graph, callable: &Value, args: &[Value], how: Call) {
    let u = match how {
        Call::Reduce => Use::Called(shape(args)),
        Call::NewObj => Use::Created,
        Call::Inst => Use::Instantiated(shape(args)),
    };
    if let Some(id) = callee(graph, callable, u)
        && how != Call::NewObj
    {
        special(graph, id, args);
    }
}

/// The argument checks of the three globals whose safety depends on their arguments.
fn special(graph: &mut Graph, id: NodeId, args: &[Value]) {
    let Some(r) = graph.uses().record_of(id) else {
        return;
    };
    let (m, n) = (r.resolved.module.clone(), r.resolved.name.clone());
    let mut bad = Vec::new();
    match (&*m, &*n) {
        ("copyreg", "_reconstructor") => {
            if args.len() != 3 {
                bad.push("copyreg._reconstructor needs exactly (class, builtins.object, None)");
            }
            match args.first() {
                Some(cls) if is_global(graph, cls) => {
                    mark(graph, cls, Use::Reconstructed);
                }
                Some(cls) => {
                    callee(graph, cls, Use::Reconstructed);
                    bad.push("copyreg._reconstructor of something that is not a global class");
                }
                None => {}
            }
            if !args
                .get(1)
                .is_some_and(|b| resolves_to(graph, b, "builtins", "object"))
            {
                bad.push("copyreg._reconstructor with a base other than builtins.object runs base.__new__ and base.__init__ with the state");
            }
            if args.get(2).is_some_and(|s| *s != Value::None) {
                bad.push("copyreg._reconstructor with a state");
            }
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            if args.len() != 4 {
                bad.push("_rebuild_from_type_v2 needs exactly (func, new_type, args, state)");
            }
            if let Some(func) = args.first()
                && callee(graph, func, Use::RebuildFunc).is_none()
            {
                bad.push("_rebuild_from_type_v2 with a func that is not a global");
            }
            match args.get(1) {
                Some(t) if is_global(graph, t) => mark(graph, t, Use::TensorType),
                Some(_) => bad.push("_rebuild_from_type_v2 with a new_type that is not a global"),
                None => {}
            }
        }
        ("builtins", "getattr") => {
            if args.len() != 2 {
                bad.push("builtins.getattr needs exactly (class, 'name')");
            }
            match args.first() {
                Some(obj) if is_global(graph, obj) => mark(graph, obj, Use::AttributeTaken),
                Some(_) => bad.push("builtins.getattr on something that is not a global"),
                None => {}
            }
            let public = |s: &str| !s.is_empty() && !s.starts_with('_') && !s.contains('.');
            if args.get(1).is_some_and(|a| !a.as_str().is_some_and(public)) {
                bad.push("builtins.getattr of a private, dotted or computed attribute name");
            }
        }
        _ => {}
    }
    for why in bad {
        graph.uses_mut().use_global(id, Use::BadArguments(why));
    }
}

fn is_global(graph: &Graph, v: &Value) -> bool {
    v.node()
        .is_some_and(|id| graph.uses().record_of(id).is_some())
}

fn resolves_to(graph: &Graph, v: &Value, module: &str, name: &str) -> bool {
    v.node()
        .and_then(|id| graph.uses().record_of(id))
        .is_some_and(|r| r.resolved.is(module, name))
}

fn mark(graph: &mut Graph, v: &Value, u: Use) {
    if let Some(id) = v.node() {
        graph.uses_mut().use_global(id, u);
    }
}

/// The global node whose instance a call of `callable` makes: the class of
/// `_reconstructor(cls, …)`, the `new_type` of `_rebuild_from_type_v2`, else the callable.
pub(super) fn type_node(graph: &Graph, callable: &Value, args: &[Value]) -> Option<NodeId> {
    let id = callable.node()?;
    let r = graph.uses().record_of(id)?;
    let arg = if r.resolved.is("copyreg", "_reconstructor") {
        args.first()
    } else if r.resolved.is("torch._tensor", "_rebuild_from_type_v2") {
        args.get(1)
    } else {
        return Some(id);
    };
    arg.and_then(Value::node)
        .filter(|a| graph.uses().record_of(*a).is_some())
}

/// Records that `made` (the result of a call) is an instance made through `by`.
pub(super) fn made(graph: &mut Graph, made: &Value, by: Option<NodeId>) {
    if let (Some(m), Some(b)) = (made.node(), by) {
        graph.uses_mut().made(m, b);
    }
}

/// Records BUILD on `target`; returns true when the target is a global itself (BUILD then
/// changes nothing in the graph).
pub(super) fn build(graph: &mut Graph, target: &Value) -> bool {
    let Some(id) = target.node() else {
        return false;
    };
    if graph.uses_mut().use_global(id, Use::BuiltItself) {
        return true;
    }
    graph.uses_mut().use_maker(id, Use::StateSet);
    false
}

/// Records APPEND(S) / SETITEM(S) on `target`.
pub(super) fn filled(graph: &mut Graph, target: &Value) {
    if let Some(id) = target.node() {
        graph.uses_mut().use_maker(id, Use::Filled);
    }
}
