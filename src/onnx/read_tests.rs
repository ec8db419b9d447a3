//! The reader's refusals where ONNX Runtime would read a file otherwise (review 7).

use super::*;
use crate::onnx::proto::{ElemType, Model, Node, TensorProto, ValueInfo};

fn model() -> Model {
    let f = |name: &str| TensorProto {
        name: name.into(),
        elem: ElemType::Float,
        dims: vec![1],
        raw: 1f32.to_le_bytes().to_vec(),
    };
    Model {
        opset: 17,
        graph_name: "g".into(),
        nodes: vec![Node {
            op: "Add".into(),
            name: "add".into(),
            inputs: vec!["x".into(), "w".into()],
            outputs: vec!["y".into()],
            attrs: vec![],
        }],
        initializers: vec![f("w")],
        inputs: vec![ValueInfo {
            name: "x".into(),
            elem: ElemType::Float,
            dims: vec![],
        }],
        outputs: vec![],
        metadata: vec![("names".into(), "{0: 'a'}".into())],
        producer_version: String::new(),
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(f: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(f << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A second `graph` field holding one initializer `name` with external `entries` and, when
/// given, a `data_location`.
fn with_external(name: &str, entries: &[(&str, &str)], location: Option<u64>) -> Vec<u8> {
    let mut t = Vec::new();
    field(8, name.as_bytes(), &mut t);
    varint(2 << 3, &mut t);
    varint(1, &mut t);
    for (k, v) in entries {
        let mut e = Vec::new();
        field(1, k.as_bytes(), &mut e);
        field(2, v.as_bytes(), &mut e);
        field(13, &e, &mut t);
    }
    if let Some(l) = location {
        varint(14 << 3, &mut t);
        varint(l, &mut t);
    }
    let (mut g, mut m) = (Vec::new(), model().encode());
    field(5, &t, &mut g);
    field(7, &g, &mut m);
    m
}

#[test]
fn a_name_defined_twice_is_refused() {
    assert!(parse(&model().encode(), None).is_ok());
    let mut m = model();
    m.initializers.push(m.initializers[0].clone());
    let e = parse(&m.encode(), None).unwrap_err();
    assert!(
        matches!(&e, OnnxReadError::DefinedTwice(n) if n == "w"),
        "{e}"
    );
    let mut m = model();
    m.nodes[0].outputs[0] = "x".into();
    let e = parse(&m.encode(), None).unwrap_err();
    assert!(
        matches!(&e, OnnxReadError::DefinedTwice(n) if n == "x"),
        "{e}"
    );
    // Older exporters list initializers among the inputs: not a second definition.
    let mut m = model();
    let mut w = m.inputs[0].clone();
    w.name = "w".into();
    m.inputs.push(w);
    assert!(parse(&m.encode(), None).is_ok());
    let mut m = model();
    m.metadata.push(("names".into(), "{0: 'b'}".into()));
    let e = parse(&m.encode(), None).unwrap_err();
    assert!(
        matches!(&e, OnnxReadError::MetadataTwice(k) if k == "names"),
        "{e}"
    );
}

#[test]
fn external_data_read_otherwise_by_onnx_runtime_is_refused() {
    let at = [("location", "w.bin"), ("offset", "0")];
    let e = parse(&with_external("v", &at, None), None).unwrap_err();
    assert!(matches!(e, OnnxReadError::ExternalLocation(_)), "{e}");
    let e = parse(&with_external("v", &[], Some(1)), None).unwrap_err();
    assert!(matches!(e, OnnxReadError::ExternalLocation(_)), "{e}");
    let twice = [("location", "w.bin"), ("offset", "0"), ("offset", "4")];
    let e = parse(&with_external("v", &twice, Some(1)), None).unwrap_err();
    assert!(
        matches!(&e, OnnxReadError::ExternalKeyTwice { key, .. } if key == "offset"),
        "{e}"
    );
    let odd = [("location", "w.bin"), ("basepath", "/")];
    let e = parse(&with_external("v", &odd, Some(1)), None).unwrap_err();
    assert!(
        matches!(&e, OnnxReadError::ExternalKey { key, .. } if key == "basepath"),
        "{e}"
    );
}

#[test]
fn an_operator_of_another_domain_keeps_its_domain() {
    // NodeProto: input x, output y, op_type Sigmoid, domain com.microsoft.
    let mut ms = Vec::new();
    field(1, b"x", &mut ms);
    field(2, b"y", &mut ms);
    field(4, b"Sigmoid", &mut ms);
    field(7, b"com.microsoft", &mut ms);
    assert_eq!(node(&ms, 0).unwrap().op, "com.microsoft.Sigmoid");
    let mut plain = Vec::new();
    field(4, b"Sigmoid", &mut plain);
    field(7, b"ai.onnx", &mut plain);
    assert_eq!(node(&plain, 0).unwrap().op, "Sigmoid");
}
