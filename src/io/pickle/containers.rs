//! The builtin containers as REDUCE and NEWOBJ make them, argument for argument as CPython does.
//!
//! REDUCE calls the type: `dict(m)` / `OrderedDict(m)` copy a mapping or a sequence of pairs,
//! `list(x)` / `set(x)` / `tuple(x)` copy an iterable. NEWOBJ calls only `cls.__new__(cls, *args)`:
//! `dict`, `OrderedDict`, `list`, `set` and `bytearray` ignore the arguments there (their
//! `__init__` fills them, and NEWOBJ does not run it), while `tuple`, `frozenset`, `torch.Size` and
//! `bytes` consume them. Arguments whose Python meaning is not read here (an iterable that is a
//! string, a set's hash order, a bytes size) are refused, never guessed.

use std::sync::Arc;

use super::error::PickleFault;
use super::keys;
use crate::checkpoint::value::{Global, Graph, Node, Value};

type R<T> = Result<T, PickleFault>;

/// How deep a key's tuples may nest for the hashability check (keys.rs refuses deeper ones).
const MAX_KEY_DEPTH: usize = 32;

/// Which container a reconstructor makes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `dict` / `collections.OrderedDict`.
    Dict,
    /// `list`.
    List,
    /// `set`.
    Set,
    /// `frozenset`.
    FrozenSet,
    /// `tuple` / `torch.Size`.
    Tuple,
}

impl Kind {
    /// Whether `cls.__new__(cls, *args)` ignores `args` (the object is empty after NEWOBJ).
    fn new_ignores_args(self) -> bool {
        matches!(self, Kind::Dict | Kind::List | Kind::Set)
    }
}

/// `g(*args)` (REDUCE) or `g.__new__(g, *args, **kwargs)` (NEWOBJ) for a builtin container.
pub(super) fn make(
    graph: &mut Graph,
    g: &Global,
    kind: Kind,
    args: &[Value],
    kwargs: &[(Value, Value)],
    is_new: bool,
) -> R<Value> {
    let refuse = |why| PickleFault::ContainerArguments {
        class: g.dotted(),
        why,
    };
    if !kwargs.is_empty() {
        // `dict.__new__` ignores keywords too, `set.__new__` and `tuple.__new__` reject them:
        // either way nothing a writer of this class produces.
        return Err(PickleFault::NewWithArguments(g.dotted()));
    }
    if is_new && kind.new_ignores_args() && !args.is_empty() {
        return Err(PickleFault::NewWithArguments(g.dotted()));
    }
    let node = match (kind, args) {
        (Kind::Dict, []) => Node::Dict(Vec::new()),
        (Kind::Dict, [arg]) => Node::Dict(dict_from(graph, arg).map_err(refuse)?),
        (Kind::List, []) => Node::List(Vec::new()),
        (Kind::Set, []) => Node::Set(Vec::new()),
        (Kind::FrozenSet, []) => Node::FrozenSet(Vec::new()),
        (Kind::Tuple, []) => Node::Tuple(Vec::new()),
        (_, [arg]) => {
            let items = items_from(graph, arg, kind).map_err(refuse)?;
            let items = if matches!(kind, Kind::Set | Kind::FrozenSet) {
                for x in &items {
                    hashable(graph, x)?;
                }
                // Equal members are one member in Python (`set([1, 1.0])` has one).
                keys::set_of(graph, items)?
            } else {
                items
            };
            match kind {
                Kind::List => Node::List(items),
                Kind::Set => Node::Set(items),
                Kind::FrozenSet => Node::FrozenSet(items),
                _ => Node::Tuple(items),
            }
        }
        _ => return Err(refuse("more than one argument (Python raises TypeError)")),
    };
    let v = graph.add(node);
    graph.set_made_by(&v, g);
    Ok(v)
}

/// The entries `dict(arg)` holds: a mapping's items, or a sequence of `(key, value)` pairs, with
/// Python's rule for a key set twice.
fn dict_from(graph: &Graph, arg: &Value) -> Result<Vec<(Value, Value)>, &'static str> {
    let pairs = match graph.get(arg) {
        Some(Node::Dict(e)) => e.clone(),
        Some(Node::Tuple(items) | Node::List(items)) => {
            let mut pairs = Vec::with_capacity(items.len());
            for item in items {
                match graph.seq(item) {
                    Some([k, v]) => pairs.push((k.clone(), v.clone())),
                    _ => return Err("an item that is not a (key, value) pair"),
                }
            }
            pairs
        }
        Some(Node::Set(_) | Node::FrozenSet(_)) => {
            return Err("a set of pairs (its order is Python's hash order)");
        }
        _ => return Err("an argument that is neither a dict nor a list of pairs"),
    };
    for (k, _) in &pairs {
        if hashable(graph, k).is_err() {
            return Err("an unhashable key");
        }
    }
    keys::dict_of(graph, pairs).map_err(|_| "a key whose equality with another cannot be decided")
}

/// The items `list(arg)` / `set(arg)` / `tuple(arg)` hold.
fn items_from(graph: &Graph, arg: &Value, kind: Kind) -> Result<Vec<Value>, &'static str> {
    match graph.get(arg) {
        Some(Node::Tuple(items) | Node::List(items)) => Ok(items.clone()),
        // A set's order is its hash order: the same for a set made from it, unknown for a
        // sequence made from it.
        Some(Node::Set(items) | Node::FrozenSet(items))
            if matches!(kind, Kind::Set | Kind::FrozenSet) || items.len() < 2 =>
        {
            Ok(items.clone())
        }
        Some(Node::Set(_) | Node::FrozenSet(_)) => {
            Err("a set argument (its order is Python's hash order)")
        }
        Some(Node::Dict(_)) => Err("a dict argument (Python takes its keys)"),
        _ => Err("an argument that is not a tuple, list or set"),
    }
}

/// `bytes(*args)` / `bytearray(*args)` (REDUCE), or their `__new__` (NEWOBJ): empty, a copy of
/// bytes, or text encoded as latin-1 (how protocol 2 pickles a bytearray).
pub(super) fn bytes(graph: &mut Graph, g: &Global, args: &[Value], is_new: bool) -> R<Value> {
    let refuse = |why| PickleFault::ContainerArguments {
        class: g.dotted(),
        why,
    };
    let is_bytearray = &*g.name == "bytearray";
    if is_new && is_bytearray && !args.is_empty() {
        return Err(PickleFault::NewWithArguments(g.dotted()));
    }
    let data: Arc<[u8]> = match args {
        [] => Arc::from(&[][..]),
        [v] => match graph.get(v) {
            Some(Node::Bytes(b)) => b.clone(),
            _ => return Err(refuse("an argument that is not bytes")),
        },
        [Value::Str(text), Value::Str(enc)] if matches!(&**enc, "latin-1" | "latin1") => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| refuse("text that latin-1 cannot encode"))?
            .into(),
        _ => return Err(refuse("arguments other than bytes or (text, 'latin-1')")),
    };
    // A new node: a bytearray is a copy, and unhashable where the bytes it came from are not.
    let v = graph.add(Node::Bytes(data));
    if is_bytearray {
        graph.set_made_by(&v, &Global::new("builtins", "bytearray"));
    }
    Ok(v)
}

/// Refuses a dict key or set element Python cannot hash that the key rules would take for
/// bytes: a `bytearray` (alone or inside a tuple or frozenset).
pub(super) fn hashable(graph: &Graph, v: &Value) -> R<()> {
    hashable_at(graph, v, 0)
}

fn hashable_at(graph: &Graph, v: &Value, depth: usize) -> R<()> {
    let Some(id) = v.node() else {
        return Ok(());
    };
    if depth > MAX_KEY_DEPTH {
        return Err(PickleFault::UndecidableKey("a tuple key nested too deep"));
    }
    match graph.node(id) {
        Node::Bytes(_)
            if graph
                .made_by(id)
                .is_some_and(|c| c.is("builtins", "bytearray")) =>
        {
            Err(PickleFault::UnhashableKey("bytearray"))
        }
        Node::Tuple(items) | Node::FrozenSet(items) => items
            .iter()
            .try_for_each(|x| hashable_at(graph, x, depth + 1)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> Global {
        Global::new("builtins", name)
    }

    #[test]
    fn protocol_2_bytearray_is_latin_1_text_and_unhashable() {
        let mut graph = Graph::new();
        let args = [Value::Str("a\u{e9}".into()), Value::Str("latin-1".into())];
        let v = bytes(&mut graph, &g("bytearray"), &args, false).unwrap();
        assert!(matches!(graph.get(&v), Some(Node::Bytes(b)) if **b == [b'a', 0xe9]));
        assert_eq!(
            hashable(&graph, &v),
            Err(PickleFault::UnhashableKey("bytearray"))
        );
        let key = graph.add(Node::Tuple(vec![Value::Int(1), v]));
        assert!(hashable(&graph, &key).is_err());
        // bytes(<bytearray>) is a new, hashable object.
        let b = bytes(&mut graph, &g("bytes"), std::slice::from_ref(&key), false);
        assert!(b.is_err(), "a tuple is not bytes");
        let too_wide = [Value::Str("\u{100}".into()), Value::Str("latin-1".into())];
        assert!(bytes(&mut graph, &g("bytearray"), &too_wide, false).is_err());
    }

    #[test]
    fn new_ignores_arguments_only_where_python_does() {
        let mut graph = Graph::new();
        let items = graph.add(Node::List(vec![Value::Int(1), Value::Int(2)]));
        let args = [items];
        for (name, kind) in [
            ("list", Kind::List),
            ("set", Kind::Set),
            ("dict", Kind::Dict),
        ] {
            assert!(matches!(
                make(&mut graph, &g(name), kind, &args, &[], true),
                Err(PickleFault::NewWithArguments(_))
            ));
        }
        let t = make(&mut graph, &g("tuple"), Kind::Tuple, &args, &[], true).unwrap();
        assert_eq!(graph.seq(&t).map(<[Value]>::len), Some(2));
        let l = make(&mut graph, &g("list"), Kind::List, &args, &[], false).unwrap();
        assert_eq!(graph.seq(&l).map(<[Value]>::len), Some(2));
    }

    #[test]
    fn a_set_becomes_a_sequence_only_when_its_order_cannot_matter() {
        let mut graph = Graph::new();
        let two = graph.add(Node::Set(vec![Value::Int(1), Value::Int(2)]));
        let one = graph.add(Node::Set(vec![Value::Int(1)]));
        assert!(
            make(
                &mut graph,
                &g("list"),
                Kind::List,
                std::slice::from_ref(&two),
                &[],
                false
            )
            .is_err()
        );
        assert!(make(&mut graph, &g("list"), Kind::List, &[one], &[], false).is_ok());
        assert!(
            make(
                &mut graph,
                &g("frozenset"),
                Kind::FrozenSet,
                &[two],
                &[],
                false
            )
            .is_ok()
        );
    }
}
