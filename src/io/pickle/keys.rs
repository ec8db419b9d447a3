//! Python's dict rule for keys a pickle sets twice.
//!
//! `SETITEM(S)`, `DICT` and `OrderedDict(pairs)` do `d[k] = v`: a key already present keeps its
//! first position and takes the last value, so `torch.load(...)["ema"]` is the last `ema` written.
//! A reader that kept the first (or both) would hand the user other weights than torch does. Keys
//! are compared the way Python compares them (`1 == 1.0 == True`, tuples by content, a class by
//! identity); where that cannot be decided without running the key's own `__eq__`, the file is
//! refused rather than guessed: an instance key (`decimal.Decimal('1') == 1`, `complex(1, 0) == 1`,
//! two paths of sibling classes, an enum member that is an int) may only stand alone in its dict.
//! numpy's `str_`/`bytes_` scalars, which are `str`/`bytes` to Python, are decoded to text and
//! bytes before they get here (`reconstruct::numpy_scalar`).

use std::collections::HashMap;

use super::error::PickleFault;
use crate::checkpoint::value::{Graph, Node, NodeId, Value};

/// How deep a tuple key may nest before it is refused (a checkpoint's keys are flat).
const MAX_DEPTH: usize = 32;

/// A key in the form Python's equality sees: two keys are one dict key exactly when their `Key`s
/// are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    None,
    /// `int`, `bool` and an integral `float` within ±2^63 (Python: `1 == 1.0 == True`).
    Int(i64),
    /// A non-integral float's bits (never NaN).
    Float(u64),
    /// An `int` beyond 64 bits, as its decimal text.
    Big(String),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Key>),
    /// Sorted, deduplicated elements.
    FrozenSet(Vec<Key>),
    /// A class or function: `find_class` returns one object per name.
    Global(String),
    /// A tensor or storage: hashed by identity.
    Identity(NodeId),
    /// An instance (this node): its class's own `__eq__`/`__hash__` decide what it equals, so it
    /// is one key with itself (Python checks identity first) and undecidable beside any other.
    Instance(NodeId),
}

/// The key `v` is, or why Python's answer cannot be known (or would be an error).
pub(super) fn key(graph: &Graph, v: &Value) -> Result<Key, PickleFault> {
    key_at(graph, v, 0)
}

fn key_at(graph: &Graph, v: &Value, depth: usize) -> Result<Key, PickleFault> {
    if depth > MAX_DEPTH {
        return Err(PickleFault::UndecidableKey("a tuple key nested too deep"));
    }
    Ok(match v {
        Value::None => Key::None,
        Value::Bool(b) => Key::Int(*b as i64),
        Value::Int(i) => Key::Int(*i),
        Value::BigInt(s) => big_key(s)?,
        Value::Float(f) => float_key(*f)?,
        Value::Str(s) => Key::Str(s.to_string()),
        Value::Node(id) => match graph.node(*id) {
            Node::Tuple(items) => Key::Tuple(
                (items.iter())
                    .map(|x| key_at(graph, x, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Node::FrozenSet(items) => {
                let mut ks = (items.iter())
                    .map(|x| key_at(graph, x, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                ks.sort();
                ks.dedup();
                if ks.len() > 1 && ks.iter().any(holds_instance) {
                    return Err(PickleFault::UndecidableKey(
                        "a frozenset key holding an instance beside other members (the instance's own __eq__ decides)",
                    ));
                }
                Key::FrozenSet(ks)
            }
            Node::Bytes(_) if graph.made_by(*id).is_some_and(|c| &*c.name == "bytearray") => {
                return Err(PickleFault::UnhashableKey("bytearray"));
            }
            Node::Bytes(b) => Key::Bytes(b.to_vec()),
            Node::Global(g) => Key::Global(g.dotted()),
            Node::Tensor(_) | Node::Storage(_) => Key::Identity(*id),
            Node::Object(o) => match &o.class {
                Some(c) if HASHABLE.iter().any(|(m, n)| c.is(m, n)) => Key::Instance(*id),
                _ => {
                    return Err(PickleFault::UndecidableKey(
                        "an instance key whose class is not known to hash (SimpleNamespace, argparse.Namespace, numpy arrays and dataclasses raise; slice only from Python 3.12)",
                    ));
                }
            },
            n @ (Node::List(_) | Node::Dict(_) | Node::Set(_)) => {
                return Err(PickleFault::UnhashableKey(n.kind()));
            }
        },
    })
}

/// The classes an instance key may have: those every Python torch supports hashes (they define
/// `__hash__`, or are immutable values). Any other class is refused as a key, since torch.load
/// raises where its class sets `__eq__` without `__hash__` (`SimpleNamespace`, `Namespace`,
/// dataclasses), and `slice` hashes only from Python 3.12 on: two Pythons would disagree.
const HASHABLE: &[(&str, &str)] = &[
    ("builtins", "complex"),
    ("builtins", "range"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("fractions", "Fraction"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("uuid", "UUID"),
    ("torch", "device"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
];

/// Whether an instance (whose equality is its class's own) sits anywhere in `k`: then `k` may equal
/// keys of any other form, and Python's answer is not known without running that `__eq__`.
fn holds_instance(k: &Key) -> bool {
    match k {
        Key::Instance(_) => true,
        Key::Tuple(items) | Key::FrozenSet(items) => items.iter().any(holds_instance),
        _ => false,
    }
}

/// Integer keys of this many digits (10^152 and beyond) are refused: LONG1/LONG4 literals from
/// 2^511 on are held in hexadecimal (`literal::long_from_le`), INT/LONG text in decimal, so one
/// number could be spelled two ways; below, every spelling is the same decimal text.
const MAX_KEY_DIGITS: usize = 153;

/// An integer beyond 64 bits as a key: by its decimal text, which is one spelling per number
/// below [`MAX_KEY_DIGITS`] digits; longer ones are refused.
fn big_key(s: &str) -> Result<Key, PickleFault> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.len() >= MAX_KEY_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PickleFault::UndecidableKey(
            "an integer key of more than 500 bits (held in two spellings)",
        ));
    }
    Ok(Key::Big(s.to_string()))
}

fn float_key(f: f64) -> Result<Key, PickleFault> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        // NaN equals itself only by identity, which a reader of values cannot see.
        return Err(PickleFault::UndecidableKey("a NaN key"));
    }
    if f.fract() == 0.0 {
        if f.abs() < TWO_63 {
            return Ok(Key::Int(f as i64));
        }
        // It may equal an int beyond 64 bits, held as text.
        return Err(PickleFault::UndecidableKey(
            "an integral float key beyond 2^63",
        ));
    }
    Ok(Key::Float(f.to_bits()))
}

/// The positions of a dict's keys, kept per dict so that one SETITEM at a time stays linear.
#[derive(Default)]
pub(super) struct KeyIndex {
    dicts: HashMap<NodeId, Positions>,
}

/// One dict's keys and where they sit.
#[derive(Default)]
struct Positions {
    at: HashMap<Key, usize>,
    /// Some key holds an instance: no other key may join it.
    instance: bool,
}

impl Positions {
    fn of<'v>(
        graph: &Graph,
        keys: impl Iterator<Item = &'v Value>,
    ) -> Result<Positions, PickleFault> {
        let mut p = Positions::default();
        for (i, k) in keys.enumerate() {
            let k = key(graph, k)?;
            p.instance |= holds_instance(&k);
            p.at.insert(k, i);
        }
        Ok(p)
    }

    /// Takes `k` as a new key at position `at`, unless an instance key would then sit beside
    /// another key: Python's answer would rest on that instance's own `__eq__`.
    fn admit(&mut self, k: Key, at: usize) -> Result<(), PickleFault> {
        let instance = holds_instance(&k);
        if !self.at.is_empty() && (instance || self.instance) {
            return Err(PickleFault::UndecidableKey(
                "an instance key beside other keys (its class's own __eq__ and __hash__ decide whether they are one key)",
            ));
        }
        self.instance |= instance;
        self.at.insert(k, at);
        Ok(())
    }
}

impl KeyIndex {
    /// Sets `new` into `entries` (the items of node `id`) as Python's `d[k] = v` does.
    pub(super) fn set_items(
        &mut self,
        graph: &Graph,
        id: NodeId,
        entries: &mut Vec<(Value, Value)>,
        new: Vec<(Value, Value)>,
    ) -> Result<(), PickleFault> {
        let index = self.index(graph, id, entries.iter().map(|(k, _)| k))?;
        set_into(graph, index, entries, new)
    }

    /// Adds `new` to `members` (the items of set node `id`) as `set.update` does: a member equal
    /// to one present is dropped, the first stays; members are hashed and compared as keys.
    pub(super) fn add_members(
        &mut self,
        graph: &Graph,
        id: NodeId,
        members: &mut Vec<Value>,
        new: Vec<Value>,
    ) -> Result<(), PickleFault> {
        let index = self.index(graph, id, members.iter())?;
        add_into(graph, index, members, new)
    }

    fn index<'v>(
        &mut self,
        graph: &Graph,
        id: NodeId,
        keys: impl ExactSizeIterator<Item = &'v Value> + Clone,
    ) -> Result<&mut Positions, PickleFault> {
        let index = match self.dicts.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Positions::of(graph, keys.clone())?)
            }
        };
        // Keys set by other means (a BUILD, a reconstructor) since the index was made.
        if index.at.len() != keys.len() {
            *index = Positions::of(graph, keys)?;
        }
        Ok(index)
    }
}

/// `items` as the set Python builds from them: the first of equal members stays.
pub(super) fn set_of(graph: &Graph, items: Vec<Value>) -> Result<Vec<Value>, PickleFault> {
    let mut members = Vec::with_capacity(items.len());
    add_into(graph, &mut Positions::default(), &mut members, items)?;
    Ok(members)
}

fn add_into(
    graph: &Graph,
    index: &mut Positions,
    members: &mut Vec<Value>,
    new: Vec<Value>,
) -> Result<(), PickleFault> {
    for v in new {
        let k = key(graph, &v)?;
        if !index.at.contains_key(&k) {
            index.admit(k, members.len())?;
            members.push(v);
        }
    }
    Ok(())
}

/// `pairs` as the dict Python builds from them, first positions and last values.
pub(super) fn dict_of(
    graph: &Graph,
    pairs: Vec<(Value, Value)>,
) -> Result<Vec<(Value, Value)>, PickleFault> {
    let mut entries = Vec::with_capacity(pairs.len());
    set_into(graph, &mut Positions::default(), &mut entries, pairs)?;
    Ok(entries)
}

fn set_into(
    graph: &Graph,
    index: &mut Positions,
    entries: &mut Vec<(Value, Value)>,
    new: Vec<(Value, Value)>,
) -> Result<(), PickleFault> {
    for (k, v) in new {
        let kk = key(graph, &k)?;
        match index.at.get(&kk) {
            Some(&i) => entries[i].1 = v,
            None => {
                index.admit(kk, entries.len())?;
                entries.push((k, v));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_key_equality() {
        let g = Graph::default();
        let k = |v: Value| key(&g, &v).unwrap();
        assert_eq!(k(Value::Int(1)), k(Value::Bool(true)));
        assert_eq!(k(Value::Int(1)), k(Value::Float(1.0)));
        assert_eq!(k(Value::Int(0)), k(Value::Float(-0.0)));
        assert_ne!(k(Value::Int(1)), k(Value::Str("1".into())));
        assert_ne!(k(Value::Float(0.5)), k(Value::Float(0.25)));
        assert!(key(&g, &Value::Float(f64::NAN)).is_err());
        assert!(key(&g, &Value::Float(1e300)).is_err());
        let big = |s: &str| key(&g, &Value::BigInt(s.into()));
        assert_eq!(
            big("18446744073709551616").unwrap(),
            big("18446744073709551616").unwrap()
        );
        assert!(big(&"9".repeat(153)).is_err());
        assert!(big("0x1000").is_err());
    }

    #[test]
    fn the_last_value_wins_in_the_first_position() {
        let g = Graph::default();
        let s = |x: &str| Value::Str(x.into());
        let d = dict_of(
            &g,
            vec![
                (s("ema"), Value::Int(1)),
                (s("model"), Value::Int(2)),
                (s("ema"), Value::Int(3)),
            ],
        )
        .unwrap();
        assert_eq!(
            d,
            vec![(s("ema"), Value::Int(3)), (s("model"), Value::Int(2))]
        );
    }

    #[test]
    fn an_instance_key_stands_alone() {
        let mut g = Graph::default();
        let decimal = || {
            Node::Object(Box::new(crate::checkpoint::value::Object {
                class: Some(crate::checkpoint::value::Global::new("decimal", "Decimal")),
                ..Default::default()
            }))
        };
        let a = g.add(decimal());
        let b = g.add(decimal());
        let s = Value::Str("ema".into());
        // The same object twice is one key (identity); alone it is fine.
        let d = dict_of(
            &g,
            vec![(a.clone(), Value::Int(1)), (a.clone(), Value::Int(2))],
        )
        .unwrap();
        assert_eq!(d, vec![(a.clone(), Value::Int(2))]);
        // Beside a str, an int or another instance it might be equal: refused.
        assert!(
            dict_of(
                &g,
                vec![(s.clone(), Value::Int(1)), (a.clone(), Value::Int(2))]
            )
            .is_err()
        );
        assert!(
            dict_of(
                &g,
                vec![(a.clone(), Value::Int(1)), (Value::Int(1), Value::Int(2))]
            )
            .is_err()
        );
        assert!(
            dict_of(
                &g,
                vec![(a.clone(), Value::Int(1)), (b.clone(), Value::Int(2))]
            )
            .is_err()
        );
        // Inside a tuple too.
        let t = g.add(Node::Tuple(vec![a.clone()]));
        assert!(dict_of(&g, vec![(t, Value::Int(1)), (s, Value::Int(2))]).is_err());
        let fs = g.add(Node::FrozenSet(vec![a.clone(), b.clone()]));
        assert!(key(&g, &fs).is_err());
        // Set members follow the same rule; equal members are one.
        assert!(set_of(&g, vec![a.clone(), b]).is_err());
        // A class not known to hash (SimpleNamespace: torch.load raises), or none, is refused
        // even alone.
        let ns = g.add(Node::Object(Box::new(crate::checkpoint::value::Object {
            class: Some(crate::checkpoint::value::Global::new(
                "types",
                "SimpleNamespace",
            )),
            ..Default::default()
        })));
        assert!(key(&g, &ns).is_err());
        let bare = g.add(Node::Object(Box::default()));
        assert!(key(&g, &bare).is_err());
        let one = Value::Int(1);
        let set = set_of(&g, vec![one.clone(), Value::Bool(true), Value::Float(1.0)]).unwrap();
        assert_eq!(set, vec![one]);
        assert_eq!(set_of(&g, vec![a.clone(), a.clone()]).unwrap(), vec![a]);
    }
}
