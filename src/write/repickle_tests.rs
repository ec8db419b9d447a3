//! Round trips through the inert VM: a hand-written pickle decoded, re-emitted by
//! [`super::repickle`], decoded again, must give the same graph (kinds, classes, sharing).

use std::collections::HashMap;

use super::repickle::repickle;
use crate::checkpoint::value::{Graph, Made, Node, Value};
use crate::io::pickle::{Limits, NoPersistentLoad, unpickle};

fn decode(data: &[u8]) -> (Graph, Value) {
    let mut g = Graph::new();
    let (v, _) = unpickle(data, &mut g, &mut NoPersistentLoad, &Limits::default()).unwrap();
    (g, v)
}

/// The root's tree as text, with shared nodes named by first-visit order.
fn shape(g: &Graph, v: &Value, seen: &mut HashMap<u32, usize>) -> String {
    let Value::Node(id) = v else {
        return format!("{v:?}");
    };
    if let Some(n) = seen.get(&id.0) {
        return format!("#{n}");
    }
    let n = seen.len();
    seen.insert(id.0, n);
    let made = g.made_by(*id).map(|c| c.dotted()).unwrap_or_default();
    let list = |items: &[Value], seen: &mut HashMap<u32, usize>| {
        items
            .iter()
            .map(|x| shape(g, x, seen))
            .collect::<Vec<_>>()
            .join(",")
    };
    match g.node(*id) {
        Node::Tuple(i) => format!("({}){made}", list(i, seen)),
        Node::List(i) => format!("[{}]", list(i, seen)),
        Node::Set(i) => format!("set{{{}}}", list(i, seen)),
        Node::FrozenSet(i) => format!("frozenset{{{}}}", list(i, seen)),
        Node::Dict(e) => {
            let items: Vec<String> = e
                .iter()
                .map(|(k, v)| format!("{}:{}", shape(g, k, seen), shape(g, v, seen)))
                .collect();
            let state = g
                .container_state(*id)
                .map(|s| shape(g, s, seen))
                .unwrap_or_default();
            format!("{made}{{{}}}{state}", items.join(","))
        }
        Node::Bytes(b) => format!("b{b:?}"),
        Node::Global(gl) => gl.dotted(),
        Node::Object(o) => format!(
            "{:?}:{:?}({})[{}]{{{}}}<{}>",
            o.made,
            o.class.as_ref().map(|c| c.dotted()),
            list(&o.args, seen),
            list(&o.items, seen),
            o.entries
                .iter()
                .map(|(k, v)| format!("{}:{}", shape(g, k, seen), shape(g, v, seen)))
                .collect::<Vec<_>>()
                .join(","),
            o.state
                .as_ref()
                .map(|s| shape(g, s, seen))
                .unwrap_or_default()
        ),
        Node::Storage(_) | Node::Tensor(_) => "tensor".into(),
    }
}

fn round_trip(data: &[u8]) -> (String, String) {
    let (g, v) = decode(data);
    let out = repickle(&g, &v, &HashMap::new()).unwrap();
    assert!(out.storages.is_empty());
    let (g2, v2) = decode(&out.pickle);
    (
        shape(&g, &v, &mut HashMap::new()),
        shape(&g2, &v2, &mut HashMap::new()),
    )
}

#[test]
fn scalars_containers_and_reconstructed_classes_survive() {
    // Protocol 2: {'a': [1, 70000, -5, 2**70, 1.5, 'x', None, True], 'od': OrderedDict(k=())
    // with a `_metadata` attribute, 's': set(['q']), 'sz': torch.Size((2, 3)), 'b': b'\x00\xff'}
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    p.extend_from_slice(b"X\x01\x00\x00\x00a](K\x01J\x70\x11\x01\x00J\xfb\xff\xff\xff");
    p.extend_from_slice(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40");
    p.extend_from_slice(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xN\x88e");
    p.extend_from_slice(b"X\x02\x00\x00\x00odccollections\nOrderedDict\n)R(X\x01\x00\x00\x00k)u");
    p.extend_from_slice(b"}X\x09\x00\x00\x00_metadata}sb");
    p.extend_from_slice(b"X\x01\x00\x00\x00sc__builtin__\nset\n]X\x01\x00\x00\x00qa\x85R");
    p.extend_from_slice(b"X\x02\x00\x00\x00szctorch\nSize\nK\x02K\x03\x86\x85R");
    p.extend_from_slice(b"X\x01\x00\x00\x00bc_codecs\nencode\nX\x03\x00\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R");
    p.extend_from_slice(b"u.");
    let (before, after) = round_trip(&p);
    assert!(before.contains("collections.OrderedDict{"), "{before}");
    assert!(before.contains("torch.Size"), "{before}");
    assert!(before.contains("_metadata"), "{before}");
    assert!(before.contains("BigInt"), "{before}");
    assert_eq!(before, after);
}

#[test]
fn shared_nodes_and_cycles_stay_shared() {
    // l = []; l.append(l); obj = Cls.__new__(Cls); obj.__dict__ = {'self': obj, 'l': l, 'l2': l}
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"cmod\nCls\n)\x81q\x00}q\x01(X\x04\x00\x00\x00selfh\x00");
    p.extend_from_slice(b"X\x01\x00\x00\x00l]q\x02h\x02aX\x02\x00\x00\x00l2h\x02ub.");
    let (before, after) = round_trip(&p);
    assert!(before.contains("NewObj"), "{before}");
    assert!(
        before.contains("#0"),
        "the object refers to itself: {before}"
    );
    assert_eq!(before, after);
    let (g, v) = decode(&p);
    assert_eq!(g.object(&v).map(|o| o.made), Some(Made::NewObj));
}

#[test]
fn reduce_and_reconstructor_are_told_apart() {
    // [pathlib.PosixPath('a'), copy_reg._reconstructor(mod.C, object, None) + BUILD]
    let mut p = vec![0x80, 2, b']', b'(', b'c'];
    p.extend_from_slice(b"pathlib\nPosixPath\nX\x01\x00\x00\x00a\x85R");
    p.extend_from_slice(b"ccopy_reg\n_reconstructor\ncmod\nC\nc__builtin__\nobject\nN\x87R");
    p.extend_from_slice(b"}X\x01\x00\x00\x00kK\x01sbe.");
    let (before, after) = round_trip(&p);
    assert!(
        before.contains("Reduce:Some(\"pathlib.PosixPath\")"),
        "{before}"
    );
    assert!(before.contains("Reconstructor:Some(\"mod.C\")"), "{before}");
    assert_eq!(before, after);
}

#[test]
fn what_cannot_be_written_again_is_refused() {
    // An object made by calling the result of another call: its callable is not a global.
    let p = b"\x80\x02cmod\nf\n)R)R.";
    let (g, v) = decode(p);
    let err = repickle(&g, &v, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("not a global"), "{err}");
    // Nesting deeper than Python's pickler could have written.
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 1200));
    deep.extend(std::iter::repeat_n(b'a', 1199));
    deep.push(b'.');
    let (g, v) = decode(&deep);
    // The main thread's stack, as the binary has it (test threads get less).
    let err = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || repickle(&g, &v, &HashMap::new()).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(err.to_string().contains("deeper than 1000"), "{err}");
}

#[test]
fn a_global_whose_meaning_changes_at_protocol_2_is_never_written() {
    // Protocol 4 (STACK_GLOBAL): Python imports `__builtin__` as written and fails; at protocol 2
    // the same name would be mapped to `builtins.eval`.
    let p = b"\x80\x04\x8c\x0b__builtin__\x94\x8c\x04eval\x94\x93\x94\x8c\x031+1\x94\x85\x94R\x94.";
    let (g, v) = decode(p);
    let err = repickle(&g, &v, &HashMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains("__builtin__.eval would mean builtins.eval"),
        "{err}"
    );
    // The same name read at protocol 2 already meant builtins.eval: written again unchanged
    // (the judge, not the writer, decides whether that may be written at all).
    let p2 = b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R.";
    let (g, v) = decode(p2);
    assert!(repickle(&g, &v, &HashMap::new()).is_ok());
}
