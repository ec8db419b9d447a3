//! BUILD, applied the way CPython's unpickler applies it.
//!
//! With no `__setstate__`, `load_build` splits a `(state, slotstate)` pair, then copies the
//! state dict's entries into `inst.__dict__` one by one (`inst.__dict__[k] = v`) and `setattr`s the
//! slot state's. `nn.Module.__setstate__` is `self.__dict__.update(state)`. Either way the
//! instance dict is a different object from the state: a later SETITEM on the (memoized) state
//! changes nothing, a second BUILD adds to what the first set, and only the values are shared. So
//! each object's attributes live in a dict node of our own, filled from each state at BUILD time.
//! What Python would do in a way this does not model is refused, never approximated.

use super::error::PickleFault;
use super::reconstruct;
use super::record;
use super::vm::{R, Vm};
use crate::checkpoint::value::{Global, Node, NodeId, Value};

/// The state of a BUILD, in the forms `load_build` tells apart.
enum Shape {
    /// `None`: nothing is set.
    Nothing,
    /// A dict (or a `(dict, None)` / `(dict, {})` pair): its entries go into `__dict__`.
    Dict(Vec<(Value, Value)>),
    /// A `(dict or None, dict)` pair with slot entries: set with `setattr`.
    Slots,
    /// Anything else: only the class's own `__setstate__` knows what it means.
    Other,
}

/// Keys whose presence makes an instance an `nn.Module`, whose `__setstate__` takes a dict.
const MODULE_KEYS: [&str; 2] = ["_parameters", "_modules"];

impl<'a> Vm<'a> {
    pub(super) fn build(&mut self, target: &Value, state: Value) -> R<()> {
        let Some(id) = target.node() else {
            return Err(PickleFault::BuildOn("scalar"));
        };
        if record::build(self.graph, target) {
            // Setting attributes of a global is recorded for the judge; the graph keeps it as is.
            return Ok(());
        }
        if let Some(v) = reconstruct::build_special(self.graph, target, &state) {
            self.graph.node_mut(id).clone_from(&v);
            return Ok(());
        }
        match self.graph.node(id) {
            Node::Object(o) => {
                let class = o
                    .class
                    .as_ref()
                    .map_or_else(|| "an object".into(), Global::dotted);
                let prev = o.state.clone();
                if let Some(next) = self.apply(prev, &state, &class)?
                    && let Node::Object(o) = self.graph.node_mut(id)
                {
                    o.state = Some(next);
                }
                Ok(())
            }
            // An OrderedDict has a `__dict__` (a state dict's `_metadata` lives there).
            Node::Dict(_) if self.is_ordered_dict(id) => {
                let prev = self.graph.container_state(id).cloned();
                if let Some(next) = self.apply(prev, &state, "collections.OrderedDict")? {
                    self.graph.set_container_state(id, next);
                }
                Ok(())
            }
            n @ (Node::Dict(_) | Node::Set(_) | Node::List(_)) => {
                let kind = n.kind();
                match self.shape(&state) {
                    // `load_build` skips a None state and an empty slot state.
                    Shape::Nothing => Ok(()),
                    _ => Err(PickleFault::BuildNoDict(kind)),
                }
            }
            Node::Tensor(_) => Err(PickleFault::TensorState),
            other => Err(PickleFault::BuildOn(other.kind())),
        }
    }

    fn is_ordered_dict(&self, id: NodeId) -> bool {
        self.graph
            .made_by(id)
            .is_some_and(|c| c.is("collections", "OrderedDict"))
    }

    /// The state an instance holds after this BUILD, given what it held before (`None`: leave
    /// it as it is).
    fn apply(&mut self, prev: Option<Value>, state: &Value, class: &str) -> R<Option<Value>> {
        let refuse = |why| {
            Err(PickleFault::BuildState {
                class: class.to_string(),
                why,
            })
        };
        // A BUILD with None before anything else leaves nothing set.
        let prev = prev.filter(|p| *p != Value::None);
        let own = prev
            .as_ref()
            .and_then(Value::node)
            .filter(|id| self.instance_dicts.contains(id));
        let was_module = own.is_some_and(|id| self.has_module_keys(id));
        let shape = self.shape(state);
        let module = was_module
            || match self.graph.get(state) {
                Some(Node::Dict(e)) => module_keys(e),
                Some(Node::Tuple(parts)) => parts
                    .iter()
                    .filter_map(|p| self.graph.dict(p))
                    .any(module_keys),
                _ => false,
            };
        match shape {
            Shape::Dict(_) | Shape::Nothing
                if module && matches!(self.graph.get(state), Some(Node::Tuple(_))) =>
            {
                refuse("nn.Module.__setstate__ takes a dict, not a (state, slotstate) pair")
            }
            Shape::Nothing if module => refuse("nn.Module.__setstate__ takes a dict, not None"),
            // Kept for writers only when nothing was set before.
            Shape::Nothing => Ok(prev.is_none().then_some(Value::None)),
            Shape::Dict(entries) => {
                if prev.is_some() && own.is_none() {
                    return refuse(
                        "a dict state after a state that is not a dict (the class's own __setstate__ decides)",
                    );
                }
                let id = match own {
                    Some(id) => id,
                    None => {
                        let v = self.graph.add(Node::Dict(Vec::new()));
                        let id = v.node().ok_or(PickleFault::BuildOn("scalar"))?;
                        self.instance_dicts.insert(id);
                        id
                    }
                };
                self.values += 2 * entries.len();
                let mut items = match self.graph.node_mut(id) {
                    Node::Dict(d) => std::mem::take(d),
                    _ => Vec::new(),
                };
                let set = self.keys.set_items(self.graph, id, &mut items, entries);
                *self.graph.node_mut(id) = Node::Dict(items);
                set?;
                Ok(Some(Value::Node(id)))
            }
            Shape::Slots if module => {
                refuse("nn.Module.__setstate__ takes a dict, not a (state, slotstate) pair")
            }
            Shape::Slots => refuse(
                "a slot state (attributes set with setattr, which may run the class's own code)",
            ),
            Shape::Other if module => refuse("nn.Module.__setstate__ takes a dict"),
            Shape::Other if prev.is_some() => refuse(
                "a second BUILD with a state that is not a dict (the class's own __setstate__ decides)",
            ),
            // Only the class's own `__setstate__` reads it (a numpy dtype's tuple).
            Shape::Other => Ok(Some(state.clone())),
        }
    }

    fn has_module_keys(&self, id: NodeId) -> bool {
        match self.graph.node(id) {
            Node::Dict(e) => module_keys(e),
            _ => false,
        }
    }

    fn shape(&self, state: &Value) -> Shape {
        if *state == Value::None {
            return Shape::Nothing;
        }
        match self.graph.get(state) {
            Some(Node::Dict(e)) => Shape::Dict(e.clone()),
            Some(Node::Tuple(parts)) if parts.len() == 2 => {
                let part = |v: &Value| match (v, self.graph.get(v)) {
                    (Value::None, _) => Some(Vec::new()),
                    (_, Some(Node::Dict(e))) => Some(e.clone()),
                    _ => None,
                };
                match (part(&parts[0]), part(&parts[1])) {
                    (Some(_), Some(slots)) if !slots.is_empty() => Shape::Slots,
                    // `load_build` copies a dict state even when it is empty (a BUILD that
                    // fails on an instance without `__dict__`); None is skipped.
                    (Some(_), Some(_)) if parts[0] == Value::None => Shape::Nothing,
                    (Some(d), Some(_)) => Shape::Dict(d),
                    _ => Shape::Other,
                }
            }
            _ => Shape::Other,
        }
    }
}

fn module_keys(entries: &[(Value, Value)]) -> bool {
    entries
        .iter()
        .any(|(k, _)| k.as_str().is_some_and(|k| MODULE_KEYS.contains(&k)))
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::value::Graph;
    use crate::io::pickle::{Limits, NoPersistentLoad, unpickle};

    /// `argparse.Namespace` NEWOBJ'd and memoized as 0, its state dict memoized as 1, then `tail`
    /// (run with the object on the stack) and STOP; the object's attributes as (name, int).
    fn attrs_after(tail: &[u8]) -> Result<Vec<(String, i64)>, String> {
        let mut p =
            b"\x80\x02cargparse\nNamespace\n)\x81q\x00}q\x01(X\x01\x00\x00\x00aK\x01ub".to_vec();
        p.extend_from_slice(tail);
        p.push(b'.');
        let mut g = Graph::new();
        let (v, _) = unpickle(&p, &mut g, &mut NoPersistentLoad, &Limits::default())
            .map_err(|e| e.to_string())?;
        Ok(g.attrs(&v)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_int().unwrap()))
            .collect())
    }

    fn pairs(p: &[(&str, i64)]) -> Vec<(String, i64)> {
        p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_state_is_copied_at_build_time() {
        // h1 'a' 9 SETITEM POP: the state dict changes after BUILD; the instance does not.
        let tail = b"h\x01X\x01\x00\x00\x00aK\x09s0";
        assert_eq!(attrs_after(tail).unwrap(), pairs(&[("a", 1)]));
    }

    #[test]
    fn a_second_build_merges() {
        // { 'b': 2, 'a': 3 } BUILD: 'a' keeps its place and takes 3, 'b' is added.
        let tail = b"}(X\x01\x00\x00\x00bK\x02X\x01\x00\x00\x00aK\x03ub";
        assert_eq!(attrs_after(tail).unwrap(), pairs(&[("a", 3), ("b", 2)]));
        // BUILD {} and BUILD None change nothing.
        assert_eq!(attrs_after(b"}bNb").unwrap(), pairs(&[("a", 1)]));
    }

    #[test]
    fn slot_states_and_raw_states_after_a_dict_are_refused() {
        // (None, {'c': 1}) BUILD: setattr, not modelled.
        let slots = b"N}X\x01\x00\x00\x00cK\x01s\x86b";
        assert!(attrs_after(slots).unwrap_err().contains("slot state"));
        // (None, {}) BUILD: nothing to set.
        assert_eq!(attrs_after(b"N}\x86b").unwrap(), pairs(&[("a", 1)]));
        // A 3-tuple after a dict: the class's own __setstate__ would decide.
        assert!(
            attrs_after(b"K\x01K\x02K\x03\x87b")
                .unwrap_err()
                .contains("second BUILD")
        );
    }
}
