//! Roles: what an allowed global may be used for in a pickle (docs/security.md).
//!
//! A class may be created the way `torch.save` pickles objects (NEWOBJ, or
//! `copyreg._reconstructor(cls, object, None)`, then BUILD), never called: calling a class runs
//! its `__init__` with the file's arguments, and `ultralytics.nn.tasks.DetectionModel(cfg)`
//! reaches `eval`. Only rebuild functions may be called with any arguments.

use serde::Serialize;

use crate::checkpoint::uses::{Args, Use};

/// The role of an allowed global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A function that only builds a value from its arguments (tensor rebuilders,
    /// `_codecs.encode`, `numpy.dtype`, `torch.device`): may be called by REDUCE.
    Rebuild,
    /// `torch._tensor._rebuild_from_type_v2(func, new_type, args, state)`: may be called when
    /// `func` is a rebuild function and `new_type` a tensor class.
    SubclassRebuild,
    /// `copyreg._reconstructor(cls, base, state)`: may be called as
    /// `_reconstructor(<class>, builtins.object, None)` only.
    Reconstructor,
    /// `builtins.getattr`: only as `getattr(<class>, '<public name>')`, its result never called.
    Getattr,
    /// A model or data class: created with NEWOBJ or `_reconstructor`, given state by BUILD,
    /// referenced; never called.
    Class,
    /// A tensor class: as a class, and also the `new_type` of `_rebuild_from_type_v2`.
    Tensor,
    /// A `SimpleNamespace`-like class: called with no arguments, then BUILD.
    Namespace,
    /// An enum class: called with one constant.
    Enum,
    /// A container type (`OrderedDict`, `set`, `torch.Size`, …): called with at most one
    /// argument, created, filled, given state.
    Container,
    /// `builtins.bytearray`: called with no argument, one, or two constants (protocol 2 writes
    /// `bytearray(text, 'latin-1')`; the VM reads only bytes or latin-1 text), created with no
    /// arguments; never filled or given state (Python's bytearray has no `__dict__`).
    Bytes,
    /// A value that is only referenced (`torch.float16`, `builtins.object` as a base).
    Value,
}

impl Role {
    /// The name used in tables, `--allow` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Rebuild => "rebuild",
            Role::SubclassRebuild => "subclass-rebuild",
            Role::Reconstructor => "reconstructor",
            Role::Getattr => "getattr",
            Role::Class => "class",
            Role::Tensor => "tensor",
            Role::Namespace => "namespace",
            Role::Enum => "enum",
            Role::Container => "container",
            Role::Bytes => "bytes",
            Role::Value => "value",
        }
    }

    /// The role with this name.
    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Rebuild,
            Role::SubclassRebuild,
            Role::Reconstructor,
            Role::Getattr,
            Role::Class,
            Role::Tensor,
            Role::Namespace,
            Role::Enum,
            Role::Container,
            Role::Bytes,
            Role::Value,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }

    /// Whether `--allow NAME=role` may grant it (the special roles belong to one global each).
    pub fn user_may_grant(self) -> bool {
        !matches!(
            self,
            Role::SubclassRebuild
                | Role::Reconstructor
                | Role::Getattr
                | Role::Tensor
                | Role::Bytes
        )
    }

    /// Whether it names a type whose instances are made without calling it.
    fn is_type(self) -> bool {
        matches!(
            self,
            Role::Class | Role::Tensor | Role::Namespace | Role::Container | Role::Bytes
        )
    }

    /// Why `u` is not something this role may do, or `None` when it may.
    pub fn violation(self, u: &Use) -> Option<String> {
        use Role::*;
        let called = |a: &Args| -> Option<String> {
            let ok = match self {
                Rebuild | SubclassRebuild | Reconstructor | Getattr => true,
                Namespace => a.count == 0,
                Enum => a.count == 1 && a.constants,
                Container => a.count <= 1,
                Bytes => a.count <= 1 || (a.count == 2 && a.constants),
                Class | Tensor => {
                    return Some(format!("{} called by REDUCE (runs __init__)", self.name()));
                }
                Value => false,
            };
            (!ok).then(|| {
                format!(
                    "{} called with {} argument(s){}, which its role does not allow",
                    self.name(),
                    a.count,
                    if a.constants {
                        ""
                    } else {
                        " that are not constants"
                    }
                )
            })
        };
        match u {
            Use::Referenced => None,
            Use::Called(a) => called(a),
            Use::Instantiated(a) if a.count == 0 && self.is_type() => None,
            Use::Instantiated(a) => called(a),
            Use::Created => (!self.is_type())
                .then(|| format!("{} created with NEWOBJ, but it is not a class", self.name())),
            Use::Reconstructed => (!matches!(self, Class | Tensor)).then(|| {
                format!(
                    "{} created by copyreg._reconstructor, but it is not a class",
                    self.name()
                )
            }),
            Use::StateSet => (!((self.is_type() && self != Bytes) || self == Rebuild)).then(|| {
                format!(
                    "BUILD on what it made runs __setstate__, which its role ({}) does not allow",
                    self.name()
                )
            }),
            Use::Filled => (self != Container).then(|| {
                "APPEND/SETITEM on an instance of it runs its append/__setitem__; only containers may be filled".to_string()
            }),
            Use::BuiltItself => Some("BUILD on the global itself sets its attributes".into()),
            Use::RebuildFunc => (self != Rebuild).then(|| {
                "called as the func of torch._tensor._rebuild_from_type_v2, but it is not a rebuild function".into()
            }),
            Use::TensorType => (self != Tensor).then(|| {
                "used as the new_type of torch._tensor._rebuild_from_type_v2, but it is not a tensor class".into()
            }),
            Use::AttributeTaken => (self != Class).then(|| {
                "its attribute is taken with builtins.getattr, but it is not a class".into()
            }),
            Use::ResultCalled => Some("what it returns is called (a gadget chain)".into()),
            Use::BadArguments(why) => Some((*why).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Args = Args {
        count: 0,
        constants: true,
    };
    const ONE_CONST: Args = Args {
        count: 1,
        constants: true,
    };
    const ONE_NODE: Args = Args {
        count: 1,
        constants: false,
    };
    const TWO: Args = Args {
        count: 2,
        constants: true,
    };

    fn ok(r: Role, u: Use) -> bool {
        r.violation(&u).is_none()
    }

    #[test]
    fn classes_are_created_never_called() {
        assert!(ok(Role::Class, Use::Created));
        assert!(ok(Role::Class, Use::Reconstructed));
        assert!(ok(Role::Class, Use::StateSet));
        assert!(ok(Role::Class, Use::Instantiated(NONE)));
        assert!(ok(Role::Class, Use::AttributeTaken));
        let why = Role::Class.violation(&Use::Called(ONE_NODE)).unwrap();
        assert!(why.contains("REDUCE (runs __init__)"), "{why}");
        assert!(!ok(Role::Class, Use::Called(NONE)));
        assert!(!ok(Role::Class, Use::Instantiated(ONE_CONST)));
        assert!(!ok(Role::Class, Use::Filled));
        assert!(!ok(Role::Class, Use::RebuildFunc));
        assert!(!ok(Role::Class, Use::TensorType));
    }

    #[test]
    fn each_role_accepts_its_own_calls_only() {
        assert!(ok(Role::Rebuild, Use::Called(TWO)));
        assert!(ok(Role::Rebuild, Use::RebuildFunc));
        assert!(!ok(Role::Rebuild, Use::Created));
        assert!(ok(Role::Namespace, Use::Called(NONE)));
        assert!(!ok(Role::Namespace, Use::Called(ONE_CONST)));
        assert!(ok(Role::Enum, Use::Called(ONE_CONST)));
        assert!(!ok(Role::Enum, Use::Called(ONE_NODE)));
        assert!(!ok(Role::Enum, Use::Called(TWO)));
        assert!(!ok(Role::Enum, Use::StateSet));
        assert!(ok(Role::Container, Use::Called(ONE_NODE)));
        assert!(ok(Role::Container, Use::Filled));
        assert!(!ok(Role::Container, Use::Called(TWO)));
        // bytearray(text, 'latin-1'), as protocol 2 writes it, and bytearray(<bytes>).
        assert!(ok(Role::Bytes, Use::Called(TWO)));
        assert!(ok(Role::Bytes, Use::Called(ONE_NODE)));
        assert!(ok(Role::Bytes, Use::Created));
        let two_nodes = Args {
            count: 2,
            constants: false,
        };
        assert!(!ok(Role::Bytes, Use::Called(two_nodes)));
        assert!(!ok(
            Role::Bytes,
            Use::Called(Args {
                count: 3,
                constants: true
            })
        ));
        assert!(!ok(Role::Bytes, Use::Filled));
        assert!(!ok(Role::Bytes, Use::StateSet));
        assert!(!Role::Bytes.user_may_grant());
        assert!(ok(Role::Value, Use::Referenced));
        assert!(!ok(Role::Value, Use::Called(NONE)));
        assert!(!ok(Role::Value, Use::Created));
        assert!(ok(Role::Tensor, Use::TensorType));
        assert!(!ok(Role::Tensor, Use::Called(ONE_NODE)));
    }

    #[test]
    fn some_uses_are_never_allowed() {
        for r in [Role::Rebuild, Role::Class, Role::Container, Role::Getattr] {
            assert!(!ok(r, Use::ResultCalled), "{r:?}");
            assert!(!ok(r, Use::BuiltItself), "{r:?}");
            assert!(!ok(r, Use::BadArguments("x")), "{r:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "rebuild",
            "class",
            "namespace",
            "enum",
            "container",
            "value",
            "getattr",
        ] {
            assert_eq!(Role::parse(name).map(Role::name), Some(name));
        }
        assert!(!Role::Getattr.user_may_grant());
        assert!(Role::Class.user_may_grant());
    }
}
