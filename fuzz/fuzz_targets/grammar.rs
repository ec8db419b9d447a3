//! A structure-aware pickle generator and its oracle, shared by the `pickle_grammar` fuzz target
//! and the plain test tests/fuzz_harness.rs (so it runs without cargo-fuzz).
//!
//! The fuzzer's bytes drive a grammar over globals from a dictionary (code-running, allow-listed
//! rebuilders and model classes, dotted names, gadgets), combined through REDUCE / NEWOBJ /
//! `copyreg._reconstructor` + BUILD chains, containers, memo PUT/GET, GLOBAL or STACK_GLOBAL
//! spellings, optional PROTO and a FRAME around the body. Every global the program emits, and the
//! role it is used in, is recorded; the oracle then asks a [`Judge`] about the bytes.

#![allow(dead_code)]

use std::collections::BTreeSet;

/// How a generated pickle uses a global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Pushed only (an argument, a dict value): still imported by `find_class`.
    Pushed,
    /// The callable of a REDUCE.
    Called,
    /// The class of a NEWOBJ.
    NewObj,
    /// The class handed to `copyreg._reconstructor`, as torch.save pickles modules.
    Reconstructed,
}

/// What the dictionary knows about a global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs code, and today's deny list already names it.
    Flagged,
    /// Runs code (or reaches code) but only an exact allow-list catches it: prefix-allowed
    /// gadgets, dotted names, deny-list misses.
    Gadget,
    /// A rebuild function torch.save writes as a REDUCE target.
    Rebuild,
    /// A model class, allowed through NEWOBJ or the reconstructor, never REDUCE.
    ModelClass,
    /// `copyreg._reconstructor` itself.
    Reconstructor,
    /// `builtins.object`, the reconstructor's base argument.
    Object,
}

/// `(module, name, kind)`, module as pickled (protocol-2 spellings included).
pub const GLOBALS: &[(&str, &str, Kind)] = &[
    ("posix", "system", Kind::Flagged),
    ("os", "system", Kind::Flagged),
    ("builtins", "eval", Kind::Flagged),
    ("__builtin__", "exec", Kind::Flagged),
    ("builtins", "getattr", Kind::Flagged),
    ("subprocess", "Popen", Kind::Flagged),
    ("commands", "getoutput", Kind::Flagged),
    ("runpy", "_run_code", Kind::Flagged),
    ("torch.serialization", "load", Kind::Flagged),
    ("importlib", "import_module", Kind::Flagged),
    ("torch.nn.modules.module", "torch.load", Kind::Gadget),
    ("builtins", "eval.__call__", Kind::Gadget),
    ("argparse", "_os.system", Kind::Gadget),
    ("torch.nn.modules.module", "__builtins__.get", Kind::Gadget),
    ("ultralytics.nn.tasks", "parse_model", Kind::Gadget),
    ("ultralytics.nn.tasks", "torch_load", Kind::Gadget),
    ("timm.models", "load_state_dict", Kind::Gadget),
    (
        "ultralytics.utils.checks",
        "check_requirements",
        Kind::Gadget,
    ),
    ("timeit", "timeit", Kind::Gadget),
    ("pydoc", "locate", Kind::Gadget),
    ("_operator", "methodcaller", Kind::Gadget),
    ("io", "open", Kind::Gadget),
    ("numpy", "savetxt", Kind::Gadget),
    ("torch.storage", "_load_from_bytes", Kind::Gadget),
    ("collections", "OrderedDict", Kind::Rebuild),
    ("torch._utils", "_rebuild_parameter", Kind::Rebuild),
    ("builtins", "set", Kind::Rebuild),
    ("torch", "Size", Kind::Rebuild),
    ("_codecs", "encode", Kind::Rebuild),
    ("ultralytics.nn.tasks", "DetectionModel", Kind::ModelClass),
    ("ultralytics.nn.modules.conv", "Conv", Kind::ModelClass),
    ("torch.nn.modules.conv", "Conv2d", Kind::ModelClass),
    ("torch.nn.modules.container", "Sequential", Kind::ModelClass),
    ("copy_reg", "_reconstructor", Kind::Reconstructor),
    ("copyreg", "_reconstructor", Kind::Reconstructor),
    ("__builtin__", "object", Kind::Object),
];

/// Whether an exact, role-aware allow-list (issue 13) lets `kind` be used as `role`.
pub fn allowed_in_role(kind: Kind, role: Role) -> bool {
    match (kind, role) {
        // NEWOBJ on a container type only allocates it (`cls.__new__(cls)`).
        (Kind::Rebuild, Role::Called | Role::Pushed | Role::NewObj) => true,
        (Kind::ModelClass, Role::NewObj | Role::Reconstructed | Role::Pushed) => true,
        // Importing `copyreg` and naming `_reconstructor` runs nothing; only calls matter.
        (Kind::Reconstructor, Role::Called | Role::Pushed) => true,
        (Kind::Object, Role::Pushed) => true,
        _ => false,
    }
}

/// One use of a dictionary global.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    /// Index into [`GLOBALS`].
    pub global: usize,
    /// How it is used.
    pub role: Role,
}

/// A generated pickle.
pub struct Program {
    /// The pickle.
    pub bytes: Vec<u8>,
    /// Every global it emits, with its role.
    pub uses: Vec<Use>,
}

/// Choices read from the fuzzer's bytes (zeros once they run out, so every input terminates).
pub struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Src<'a> {
    /// Reads choices from `data`.
    pub fn new(data: &'a [u8]) -> Src<'a> {
        Src { data, pos: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n.max(1)
    }
}

struct Gen<'s, 'a> {
    src: &'s mut Src<'a>,
    out: Vec<u8>,
    uses: Vec<Use>,
    stack_global: bool,
    memo: u8,
}

impl Gen<'_, '_> {
    fn string(&mut self, s: &str) {
        if self.stack_global {
            self.out.push(0x8c); // SHORT_BINUNICODE
            self.out.push(s.len() as u8);
        } else {
            self.out.push(b'X'); // BINUNICODE
            self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    fn global(&mut self, i: usize, role: Role) {
        let (module, name, _) = GLOBALS[i];
        if self.stack_global {
            self.string(module);
            self.string(name);
            self.out.push(0x93); // STACK_GLOBAL
        } else {
            self.out.push(b'c');
            self.out.extend_from_slice(module.as_bytes());
            self.out.push(b'\n');
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'\n');
        }
        self.uses.push(Use { global: i, role });
    }

    fn pick(&mut self, kinds: &[Kind]) -> usize {
        let candidates: Vec<usize> = (0..GLOBALS.len())
            .filter(|&i| kinds.contains(&GLOBALS[i].2))
            .collect();
        candidates[self.src.below(candidates.len())]
    }

    fn args(&mut self, depth: u32) {
        self.out.push(b'(');
        for _ in 0..self.src.below(3) {
            self.value(depth + 1);
        }
        self.out.push(b't');
    }

    /// Pushes one value.
    fn value(&mut self, depth: u32) {
        let choice = if depth > 4 {
            self.src.below(3)
        } else {
            self.src.below(12)
        };
        match choice {
            0 => self.out.push(b'N'),
            1 => {
                self.out.push(b'J');
                let v = i32::from_le_bytes([self.src.byte(), self.src.byte(), 0, 0]);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            2 => {
                let s = ["a", "weight", "id", "model"][self.src.below(4)];
                self.string(s);
            }
            3 => {
                self.out.push(b']');
                self.out.push(b'(');
                for _ in 0..self.src.below(4) {
                    self.value(depth + 1);
                }
                self.out.push(b'e');
            }
            4 => {
                self.out.push(b'}');
                self.out.push(b'(');
                for k in 0..self.src.below(3) {
                    self.string(["k0", "k1", "k2"][k]);
                    self.value(depth + 1);
                }
                self.out.push(b'u');
            }
            5 => {
                // REDUCE on any global: a call, as `torch.load` would make it.
                let i = self.src.below(GLOBALS.len());
                self.global(i, Role::Called);
                self.args(depth);
                self.out.push(b'R');
            }
            6 => {
                let i = self.src.below(GLOBALS.len());
                self.global(i, Role::NewObj);
                self.args(depth);
                self.out.push(0x81); // NEWOBJ
            }
            7 => {
                // copyreg._reconstructor(cls, object, None), then BUILD with a state dict.
                let r = self.pick(&[Kind::Reconstructor]);
                self.global(r, Role::Called);
                self.out.push(b'(');
                let cls = self.src.below(GLOBALS.len());
                self.global(cls, Role::Reconstructed);
                let o = self.pick(&[Kind::Object]);
                self.global(o, Role::Pushed);
                self.out.extend_from_slice(b"Nt");
                self.out.push(b'R');
                self.value(depth + 1);
                self.out.push(b'b'); // BUILD
            }
            8 => {
                let i = self.src.below(GLOBALS.len());
                self.global(i, Role::Pushed);
            }
            9 => {
                // Memoize a value, drop it, fetch it back.
                self.value(depth + 1);
                self.out.push(0x94); // MEMOIZE
                self.out.push(b'0'); // POP
                self.out.push(b'h'); // BINGET
                self.out.push(self.memo);
                self.memo = self.memo.wrapping_add(1);
            }
            10 => {
                // A tuple of two values (TUPLE2).
                self.value(depth + 1);
                self.value(depth + 1);
                self.out.push(0x86);
            }
            _ => {
                // A value replaced by a second one (the first is still unpickled).
                self.value(depth + 1);
                self.out.push(b'0');
                self.value(depth + 1);
            }
        }
    }
}

/// Generates one pickle from the fuzzer's bytes.
pub fn generate(data: &[u8]) -> Program {
    let mut src = Src::new(data);
    let header = src.below(3);
    let stack_global = header == 2 || src.byte() & 1 == 1;
    let framed = header == 2 && src.byte() & 1 == 1;
    let mut g = Gen {
        src: &mut src,
        out: Vec::new(),
        uses: Vec::new(),
        stack_global,
        memo: 0,
    };
    g.value(0);
    g.out.push(b'.');
    let body = std::mem::take(&mut g.out);
    let mut bytes = Vec::new();
    match header {
        0 => {}
        1 => bytes.extend_from_slice(&[0x80, 2]),
        _ => bytes.extend_from_slice(&[0x80, 4]),
    }
    if framed {
        bytes.push(0x95);
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    }
    bytes.extend_from_slice(&body);
    Program {
        bytes,
        uses: g.uses,
    }
}

/// What a judge says about a pickle.
pub struct Judgement {
    /// `module.name` of every global reported, as Python 3 resolves it and as pickled.
    pub reported: BTreeSet<String>,
    /// No finding at all: `inspect` would exit 0 and `--strict` accept it.
    pub clean: bool,
}

/// fuse-ema's judgement of a pickle; `None` when it refuses the bytes (exit 2).
pub trait Judge {
    /// Judges `bytes`.
    fn judge(&self, bytes: &[u8]) -> Option<Judgement>;
    /// `module.name` as this judge names a pickled global.
    fn canonical(&self, module: &str, name: &str) -> String;
}

/// fuse-ema's own judgement: the pickle VM, then `checkpoint::judge` (the exact allow-list with
/// roles, dotted names, gadget calls; deny categories only explain).
pub struct Today;

impl Judge for Today {
    fn judge(&self, bytes: &[u8]) -> Option<Judgement> {
        use fuse_ema::checkpoint::judge::{AllowList, judge};
        use fuse_ema::checkpoint::value::Graph;
        use fuse_ema::io::pickle::{Limits, NoPersistentLoad, unpickle};
        let mut g = Graph::new();
        let limits = Limits {
            max_ops: 1_000_000,
            max_nodes: 100_000,
            max_values: 200_000,
            max_depth: 1_000,
            max_bytes: 64 << 20,
        };
        unpickle(bytes, &mut g, &mut NoPersistentLoad, &limits).ok()?;
        let j = judge(g.uses(), &AllowList::builtin());
        let mut reported = BTreeSet::new();
        for r in j.globals {
            reported.insert(format!("{}.{}", r.pickled_module, r.pickled_name));
            if let Some(p) = r.pickled_as {
                reported.insert(p);
            }
            reported.insert(format!("{}.{}", r.module, r.qualname));
            reported.insert(r.name);
        }
        Some(Judgement {
            reported,
            clean: j.findings.is_empty(),
        })
    }

    fn canonical(&self, module: &str, name: &str) -> String {
        use fuse_ema::checkpoint::value::Global;
        let g = fuse_ema::checkpoint::judge::compat::resolve(
            &Global {
                module: module.into(),
                name: name.into(),
            },
            0,
        );
        format!("{}.{}", g.module, g.name)
    }
}

/// Checks one generated program against `judge`; `roles` adds the exact role-aware allow-list
/// (issue 13's contract: fails on today's prefix allow-list, meant for the branch that has it).
/// Returns a description of the violation.
pub fn check(p: &Program, judge: &dyn Judge, roles: bool) -> Result<(), String> {
    let Some(j) = judge.judge(&p.bytes) else {
        return Ok(()); // refused: nothing is judged safe
    };
    for u in &p.uses {
        let (module, name, _) = GLOBALS[u.global];
        let canon = judge.canonical(module, name);
        let as_pickled = format!("{module}.{name}");
        if !j.reported.contains(&canon) && !j.reported.contains(&as_pickled) {
            return Err(format!("{canon} is in the pickle but not reported"));
        }
    }
    if !j.clean {
        return Ok(());
    }
    // A flagged global that is only pushed runs nothing when `find_class` resolves it; it is
    // a violation unless the exact allow-list names it (`builtins.getattr`, whose role accepts
    // only `getattr(<class>, '<name>')` calls).
    let listed = |g: usize| {
        let (module, name, _) = GLOBALS[g];
        fuse_ema::checkpoint::judge::AllowList::builtin()
            .role(module, name)
            .is_some()
    };
    if let Some(u) = p.uses.iter().find(|u| {
        GLOBALS[u.global].2 == Kind::Flagged && !(u.role == Role::Pushed && listed(u.global))
    }) {
        return Err(format!(
            "{:?} used as {:?}, judged clean",
            GLOBALS[u.global], u.role
        ));
    }
    if roles
        && let Some(u) = p.uses.iter().find(|u| {
            !(allowed_in_role(GLOBALS[u.global].2, u.role)
                || u.role == Role::Pushed && listed(u.global))
        })
    {
        return Err(format!(
            "{:?} used as {:?} is outside the allow-list, judged clean",
            GLOBALS[u.global], u.role
        ));
    }
    Ok(())
}
