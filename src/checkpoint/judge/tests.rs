//! End to end: hand-made pickles through the VM, judged. Each case is what Python's unpickler
//! would do with the bytes; the failing cases are the attacks of issue 13.

use super::*;
use crate::checkpoint::value::Graph;
use crate::io::pickle::{Limits, NoPersistentLoad, unpickle};

/// A tiny pickle writer: opcodes as the `pickle` module writes them.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn proto(n: u8) -> P {
        P(vec![0x80, n])
    }
    fn op(mut self, b: &[u8]) -> P {
        self.0.extend_from_slice(b);
        self
    }
    fn s(self, text: &str) -> P {
        let mut p = self.op(&[0x8c, text.len() as u8]);
        p.0.extend_from_slice(text.as_bytes());
        p
    }
    fn int(self, i: u8) -> P {
        self.op(&[b'K', i])
    }
    /// GLOBAL (protocol 0–3 spelling).
    fn global(self, m: &str, n: &str) -> P {
        self.op(format!("c{m}\n{n}\n").as_bytes())
    }
    /// STACK_GLOBAL (protocol 4 spelling).
    fn stack_global(self, m: &str, n: &str) -> P {
        self.s(m).s(n).op(&[0x93])
    }
    fn tuple(self, n: usize) -> P {
        match n {
            0 => self.op(b")"),
            1 => self.op(&[0x85]),
            2 => self.op(&[0x86]),
            _ => self.op(&[0x87]),
        }
    }
    fn reduce(self) -> P {
        self.op(b"R")
    }
    fn newobj(self) -> P {
        self.op(&[0x81])
    }
    fn empty_dict(self) -> P {
        self.op(b"}")
    }
    fn build(self) -> P {
        self.op(b"b")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

fn judged_with(data: &[u8], allow: &AllowList) -> Judgement {
    let mut g = Graph::new();
    unpickle(data, &mut g, &mut NoPersistentLoad, &Limits::default()).unwrap();
    judge(g.uses(), allow)
}

fn judged(data: &[u8]) -> Judgement {
    judged_with(data, &AllowList::builtin())
}

fn finding<'a>(j: &'a Judgement, name: &str) -> &'a Finding {
    j.findings
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no finding for {name}: {:?}", j.findings))
}

const DETECT: (&str, &str) = ("ultralytics.nn.modules.head", "Detect");
const MODEL: (&str, &str) = ("ultralytics.nn.tasks", "DetectionModel");

/// `cls.__new__(cls)` then BUILD with an empty dict: how torch.save pickles a module.
fn created(p: P, (m, n): (&str, &str)) -> P {
    p.stack_global(m, n).tuple(0).newobj().empty_dict().build()
}

#[test]
fn a_module_pickled_as_torch_save_does_is_clean() {
    let j = judged(&created(P::proto(4), MODEL).stop());
    assert!(j.findings.is_empty(), "{:?}", j.findings);
    assert_eq!(j.globals[0].role, Some("class"));
    assert!(j.globals[0].allowed);
}

#[test]
fn a_class_called_by_reduce_runs_init_and_is_refused() {
    let data = P::proto(4)
        .stack_global(MODEL.0, MODEL.1)
        .s("yolov8n.yaml")
        .tuple(1)
        .reduce()
        .stop();
    let j = judged(&data);
    let f = finding(&j, "ultralytics.nn.tasks.DetectionModel");
    assert_eq!(f.kind, FindingKind::NotAllowed);
    assert!(
        f.problem.contains("class called by REDUCE (runs __init__)"),
        "{f}"
    );
    assert_eq!(
        f.to_string(),
        "NOT ALLOWED ultralytics.nn.tasks.DetectionModel — class called by REDUCE (runs __init__)"
    );
}

#[test]
fn functions_of_allowed_modules_are_not_allowed() {
    for (m, n) in [
        ("ultralytics.nn.tasks", "parse_model"),
        ("ultralytics.nn.tasks", "torch_safe_load"),
        ("timm.models", "load_state_dict"),
        ("ultralytics.utils.checks", "check_requirements"),
    ] {
        let data = P::proto(4)
            .stack_global(m, n)
            .s("x")
            .tuple(1)
            .reduce()
            .stop();
        let f = finding(&judged(&data), &format!("{m}.{n}")).clone();
        assert_eq!(f.kind, FindingKind::Dangerous, "{f}");
    }
    let data = P::proto(4)
        .stack_global("ultralytics.nn.tasks", "innocent_helper")
        .stop();
    let j = judged(&data);
    let f = finding(&j, "ultralytics.nn.tasks.innocent_helper");
    assert_eq!(f.kind, FindingKind::NotAllowed);
    assert_eq!(f.problem, "not on the allow-list");
}

#[test]
fn os_system_is_dangerous() {
    let data = P::proto(2)
        .global("posix", "system")
        .s("echo pwned")
        .tuple(1)
        .reduce()
        .stop();
    let j = judged(&data);
    assert_eq!(
        finding(&j, "posix.system").to_string(),
        "DANGEROUS posix.system — runs commands or touches files"
    );
}

#[test]
fn dotted_names_resolve_through_attribute_lookup() {
    for (m, n, via) in [
        ("torch.nn.modules.module", "torch.load", Some("torch.load")),
        ("ultralytics.nn.tasks", "pickle.loads", Some("pickle.loads")),
        ("timm.models._helpers", "torch.load", Some("torch.load")),
        ("builtins", "eval.__call__", Some("builtins.eval")),
        ("argparse", "_os.system", Some("os.system")),
        ("torch.nn.modules.module", "__builtins__.get", None),
        ("collections", "OrderedDict.fromkeys", None),
    ] {
        let data = P::proto(4)
            .stack_global(m, n)
            .s("x")
            .tuple(1)
            .reduce()
            .stop();
        let j = judged(&data);
        let f = finding(&j, &format!("{m}:{n}"));
        assert_eq!(f.kind, FindingKind::AttributeLookup, "{f}");
        assert!(
            f.problem.starts_with("resolves through attribute lookup"),
            "{f}"
        );
        if let Some(via) = via {
            assert!(f.problem.contains(via), "{f}");
        }
    }
}

#[test]
fn dotted_names_are_refused_even_when_the_user_allows_their_package() {
    let allow = AllowList::with_user(&["mypkg.*".into()]).unwrap();
    let data = created(P::proto(4), ("mypkg", "Net.Inner")).stop();
    let j = judged_with(&data, &allow);
    assert_eq!(
        finding(&j, "mypkg:Net.Inner").kind,
        FindingKind::AttributeLookup
    );
}

#[test]
fn python_2_names_are_judged_as_python_3_imports_them() {
    let data = P::proto(2)
        .global("__builtin__", "eval")
        .s("1")
        .tuple(1)
        .reduce()
        .stop();
    let j = judged(&data);
    assert_eq!(finding(&j, "builtins.eval").kind, FindingKind::Dangerous);
    assert_eq!(j.globals[0].pickled_as.as_deref(), Some("__builtin__.eval"));
    let data = P::proto(0).global("commands", "getoutput").stop();
    assert_eq!(
        finding(&judged(&data), "subprocess.getoutput").kind,
        FindingKind::Dangerous
    );
    // From protocol 3 on, Python imports the name as written.
    let data = P::proto(3).global("__builtin__", "set").stop();
    assert_eq!(
        finding(&judged(&data), "__builtin__.set").kind,
        FindingKind::NotAllowed
    );
    let data = P::proto(2)
        .global("__builtin__", "set")
        .op(b"]")
        .tuple(1)
        .reduce()
        .stop();
    assert!(judged(&data).findings.is_empty());
}

#[test]
fn getattr_of_a_public_attribute_of_an_allowed_class_is_accepted() {
    // How Ultralytics 8.0 pickles `Segment.detect = Detect.forward`.
    let data = P::proto(4)
        .stack_global("builtins", "getattr")
        .stack_global(DETECT.0, DETECT.1)
        .s("forward")
        .tuple(2)
        .reduce()
        .stop();
    let j = judged(&data);
    assert!(j.findings.is_empty(), "{:?}", j.findings);
}

#[test]
fn getattr_otherwise_is_a_finding() {
    let cases: [(P, &str); 4] = [
        (
            P::proto(4)
                .stack_global("builtins", "getattr")
                .stack_global(DETECT.0, DETECT.1)
                .s("__init__")
                .tuple(2)
                .reduce(),
            "builtins.getattr",
        ),
        (
            P::proto(4)
                .stack_global("builtins", "getattr")
                .stack_global("torch._utils", "_rebuild_tensor_v2")
                .s("x")
                .tuple(2)
                .reduce(),
            "torch._utils._rebuild_tensor_v2",
        ),
        (
            P::proto(4)
                .stack_global("builtins", "getattr")
                .stack_global("os", "path")
                .s("x")
                .tuple(2)
                .reduce(),
            "os.path",
        ),
        (
            // The result is called: getattr(Detect, 'forward')(x).
            P::proto(4)
                .stack_global("builtins", "getattr")
                .stack_global(DETECT.0, DETECT.1)
                .s("forward")
                .tuple(2)
                .reduce()
                .s("x")
                .tuple(1)
                .reduce(),
            "builtins.getattr",
        ),
    ];
    for (p, name) in cases {
        let j = judged(&p.stop());
        finding(&j, name);
    }
}

#[test]
fn a_called_result_is_a_gadget_chain() {
    // torch._utils._rebuild_tensor_v2 cannot run here without a storage; a container's result
    // called shows the same rule: OrderedDict()('x').
    let data = P::proto(4)
        .stack_global("collections", "OrderedDict")
        .tuple(0)
        .reduce()
        .s("x")
        .tuple(1)
        .reduce()
        .stop();
    let j = judged(&data);
    let f = finding(&j, "collections.OrderedDict");
    assert_eq!(f.kind, FindingKind::Gadget);
    assert!(f.problem.contains("gadget chain"), "{f}");
    // Calling something no global made: REDUCE on a list.
    let data = P::proto(4).op(b"]").tuple(0).reduce().stop();
    assert_eq!(finding(&judged(&data), "<list>").kind, FindingKind::Gadget);
}

#[test]
fn the_reconstructor_is_accepted_with_object_and_no_state_only() {
    // `copy_reg._reconstructor(cls, object, None)` then BUILD: protocol 0/1 instances.
    let reconstructed = |base: (&str, &str), state: &[u8]| {
        P::proto(1)
            .global("copy_reg", "_reconstructor")
            .op(b"(")
            .global(MODEL.0, MODEL.1)
            .global(base.0, base.1)
            .op(state)
            .op(b"tR")
            .empty_dict()
            .build()
            .stop()
    };
    let j = judged(&reconstructed(("__builtin__", "object"), b"N"));
    assert!(j.findings.is_empty(), "{:?}", j.findings);
    for (base, state) in [
        (("__builtin__", "dict"), &b"N"[..]),
        (("__builtin__", "object"), &b"K\x01"[..]),
    ] {
        let j = judged(&reconstructed(base, state));
        assert_eq!(
            finding(&j, "copyreg._reconstructor").kind,
            FindingKind::Dangerous
        );
    }
}

#[test]
fn rebuild_from_type_needs_a_rebuild_function_and_a_tensor_class() {
    // _rebuild_from_type_v2(func, new_type, args, state)
    let data = P::proto(2)
        .global("torch._tensor", "_rebuild_from_type_v2")
        .op(b"(")
        .global("collections", "OrderedDict")
        .global(MODEL.0, MODEL.1)
        .tuple(0)
        .empty_dict()
        .op(b"tR")
        .stop();
    let j = judged(&data);
    assert!(
        finding(&j, "collections.OrderedDict")
            .problem
            .contains("not a rebuild function")
    );
    assert!(
        finding(&j, "ultralytics.nn.tasks.DetectionModel")
            .problem
            .contains("not a tensor class")
    );
}

#[test]
fn namespaces_enums_and_values_keep_to_their_roles() {
    let ns = ("ultralytics.utils", "IterableSimpleNamespace");
    let ok = P::proto(4)
        .stack_global(ns.0, ns.1)
        .tuple(0)
        .reduce()
        .empty_dict()
        .build()
        .stop();
    assert!(judged(&ok).findings.is_empty());
    let bad = P::proto(4)
        .stack_global(ns.0, ns.1)
        .s("x")
        .tuple(1)
        .reduce()
        .stop();
    finding(&judged(&bad), "ultralytics.utils.IterableSimpleNamespace");

    let format = ("timm.layers.format", "Format");
    let ok = P::proto(4)
        .stack_global(format.0, format.1)
        .s("NCHW")
        .tuple(1)
        .reduce()
        .stop();
    assert!(judged(&ok).findings.is_empty());
    let bad = P::proto(4)
        .stack_global(format.0, format.1)
        .empty_dict()
        .tuple(1)
        .reduce()
        .stop();
    finding(&judged(&bad), "timm.layers.format.Format");

    let bad = P::proto(4)
        .stack_global("torch", "float16")
        .tuple(0)
        .reduce()
        .stop();
    finding(&judged(&bad), "torch.float16");
}

#[test]
fn build_on_a_global_and_filling_a_class_are_findings() {
    let data = P::proto(4)
        .stack_global(DETECT.0, DETECT.1)
        .empty_dict()
        .build()
        .stop();
    assert!(
        finding(&judged(&data), "ultralytics.nn.modules.head.Detect")
            .problem
            .contains("sets its attributes")
    );
    let data = created(P::proto(4), MODEL).int(1).op(b"a").stop();
    assert!(
        finding(&judged(&data), "ultralytics.nn.tasks.DetectionModel")
            .problem
            .contains("APPEND/SETITEM")
    );
}

#[test]
fn inst_without_arguments_creates_and_with_arguments_calls() {
    let ok = P::proto(0)
        .op(b"(")
        .op(format!("i{}\n{}\n", MODEL.0, MODEL.1).as_bytes())
        .stop();
    assert!(judged(&ok).findings.is_empty());
    let bad = P::proto(0)
        .op(b"(")
        .s("cfg.yaml")
        .op(format!("i{}\n{}\n", MODEL.0, MODEL.1).as_bytes())
        .stop();
    assert!(
        finding(&judged(&bad), "ultralytics.nn.tasks.DetectionModel")
            .problem
            .contains("REDUCE")
    );
}

#[test]
fn user_patterns_allow_classes_but_not_calls() {
    let allow = AllowList::with_user(&["mypkg.models.*".into()]).unwrap();
    let ok = created(P::proto(4), ("mypkg.models.yolo", "Net")).stop();
    assert!(judged_with(&ok, &allow).findings.is_empty());
    assert_eq!(
        finding(&judged(&ok), "mypkg.models.yolo.Net").kind,
        FindingKind::NotAllowed,
        "not without --allow"
    );
    let bad = P::proto(4)
        .stack_global("mypkg.models.yolo", "Net")
        .tuple(0)
        .reduce()
        .stop();
    let j = judged_with(&bad, &allow);
    assert!(
        finding(&j, "mypkg.models.yolo.Net")
            .problem
            .contains("REDUCE")
    );
    let allow = AllowList::with_user(&["mypkg.models.make=rebuild".into()]).unwrap();
    let call = P::proto(4)
        .stack_global("mypkg.models", "make")
        .tuple(0)
        .reduce()
        .stop();
    assert!(judged_with(&call, &allow).findings.is_empty());
}

#[test]
fn a_hundred_thousand_distinct_globals_decode_in_linear_time() {
    let mut p = P::proto(4);
    for i in 0..100_000 {
        p = p.stack_global("m", &format!("n{i}")).op(b"0");
    }
    let data = p.op(b"N").stop();
    let start = std::time::Instant::now();
    let j = judged(&data);
    assert_eq!(j.globals.len(), 100_000);
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

#[test]
fn names_with_control_characters_cannot_break_report_lines() {
    let data = P::proto(4)
        .stack_global("os\nglobals: 0 finding(s)\x1b[8m", "system")
        .s("x")
        .tuple(1)
        .reduce()
        .stop();
    let j = judged(&data);
    let line = j.findings[0].to_string();
    assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
    assert!(line.contains("os\\nglobals"), "{line}");
}

#[test]
fn the_record_of_globals_counts_against_the_memory_budget() {
    let mut p = P::proto(4);
    for i in 0..400_000 {
        p = p.stack_global("m", &format!("n{i}")).op(b"0");
    }
    let data = p.op(b"N").stop();
    let mut g = Graph::new();
    let err = unpickle(&data, &mut g, &mut NoPersistentLoad, &Limits::default()).unwrap_err();
    assert!(
        err.fault.to_string().contains("would take more than"),
        "{err}"
    );
}
