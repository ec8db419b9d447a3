//! The allow-list: exact `(module, name)` pairs, each with the one role it may play.
//!
//! The tables are data (`src/checkpoint/allowlist/*.tsv`, lines `module<TAB>name<TAB>role`, `#`
//! comments), made by `fixtures/allowlist/generate.py` from the libraries themselves where they
//! list a library's classes. Users add exact names and class-only package patterns with
//! `--allow`. There are no module prefixes: `ultralytics.nn.tasks.DetectionModel` is allowed as a
//! class, `ultralytics.nn.tasks.parse_model` is not allowed at all.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::deny;
use super::roles::Role;

/// The embedded tables, by file name.
const TABLES: &[(&str, &str)] = &[
    ("core.tsv", include_str!("../allowlist/core.tsv")),
    ("torch.tsv", include_str!("../allowlist/torch.tsv")),
    ("timm.tsv", include_str!("../allowlist/timm.tsv")),
    (
        "ultralytics.tsv",
        include_str!("../allowlist/ultralytics.tsv"),
    ),
    (
        "torchvision-models.tsv",
        include_str!("../allowlist/torchvision-models.tsv"),
    ),
    ("yolov5.tsv", include_str!("../allowlist/yolov5.tsv")),
    ("yolov7.tsv", include_str!("../allowlist/yolov7.tsv")),
    (
        "torchvision.tsv",
        include_str!("../allowlist/torchvision.tsv"),
    ),
];

/// A line of an allow-list table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The module, as `cls.__module__` names it.
    pub module: String,
    /// The name in it (no dots).
    pub name: String,
    /// The role.
    pub role: Role,
}

/// A table line or an `--allow` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowError {
    /// A table line is malformed (a build defect; unit tests parse every table).
    #[error("{table} line {line}: {problem}")]
    Table {
        /// The table file.
        table: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// An `--allow` value is malformed or asks for something that cannot be allowed.
    #[error("--allow {value}: {problem}")]
    User {
        /// The value as given.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn is_module_path(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// Parses one table.
pub fn parse_table(table: &str, text: &str) -> Result<Vec<Entry>, AllowError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |problem: String| AllowError::Table {
            table: table.into(),
            line: i + 1,
            problem,
        };
        let f: Vec<&str> = line.split('\t').collect();
        let [module, name, role] = f.as_slice() else {
            return Err(err(format!(
                "expected module<TAB>name<TAB>role, got {line:?}"
            )));
        };
        if !is_module_path(module) {
            return Err(err(format!("bad module {module:?}")));
        }
        if !is_identifier(name) {
            return Err(err(format!("bad name {name:?} (one identifier, no dots)")));
        }
        let role = Role::parse(role).ok_or_else(|| err(format!("unknown role {role:?}")))?;
        out.push(Entry {
            module: module.to_string(),
            name: name.to_string(),
            role,
        });
    }
    Ok(out)
}

/// Every embedded entry, keyed by `(module, name)`; duplicates are an error.
fn parse_all() -> Result<HashMap<(String, String), Role>, AllowError> {
    let mut map = HashMap::new();
    for (table, text) in TABLES {
        for e in parse_table(table, text)? {
            let key = (e.module.clone(), e.name.clone());
            if map.insert(key, e.role).is_some() {
                return Err(AllowError::Table {
                    table: table.to_string(),
                    line: 0,
                    problem: format!("{}.{} is listed twice", e.module, e.name),
                });
            }
        }
    }
    Ok(map)
}

fn builtin() -> &'static HashMap<(String, String), Role> {
    static MAP: OnceLock<HashMap<(String, String), Role>> = OnceLock::new();
    MAP.get_or_init(|| parse_all().expect("the embedded allow-list tables parse (unit-tested)"))
}

/// The allow-list a judgement uses: the embedded tables plus what the user allowed.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    exact: HashMap<(String, String), Role>,
    /// Packages whose classes (in the package or its submodules) the user allows.
    packages: Vec<String>,
}

impl AllowList {
    /// The embedded tables only.
    pub fn builtin() -> AllowList {
        AllowList::default()
    }

    /// The embedded tables plus `--allow` values: exact `module.Name` (role class),
    /// `module.Name=role`, or `package.*` (classes of the package and its submodules).
    pub fn with_user(values: &[String]) -> Result<AllowList, AllowError> {
        let mut list = AllowList::default();
        for v in values {
            let err = |problem: &str| AllowError::User {
                value: v.clone(),
                problem: problem.into(),
            };
            if let Some(package) = v.strip_suffix(".*") {
                if !is_module_path(package) {
                    return Err(err(
                        "expected a package path before .*, e.g. mypkg.models.*",
                    ));
                }
                if deny::covers(package) {
                    return Err(err(
                        "that package holds code-running functions; allow its classes one by one",
                    ));
                }
                list.packages.push(package.to_string());
                continue;
            }
            if v.ends_with('.') {
                return Err(err(
                    "module prefixes are not accepted; give exact names (mypkg.models.Net) or a class pattern (mypkg.models.*)",
                ));
            }
            let (path, role) = match v.split_once('=') {
                Some((p, r)) => {
                    let role = Role::parse(r)
                        .filter(|r| r.user_may_grant())
                        .ok_or_else(|| {
                            err("role must be class, namespace, enum, container, value or rebuild")
                        })?;
                    (p, role)
                }
                None => (v.as_str(), Role::Class),
            };
            let Some((module, name)) = path.rsplit_once('.') else {
                return Err(err("expected module.Name"));
            };
            if !is_module_path(module) || !is_identifier(name) {
                return Err(err("expected module.Name (identifiers separated by dots)"));
            }
            if let Some((_, why)) = deny::danger(module, name) {
                return Err(err(&format!("{why}; it cannot be allowed")));
            }
            list.exact.insert((module.into(), name.into()), role);
        }
        Ok(list)
    }

    /// The role `module.name` may play, or `None` when it is not allowed. Dotted names are never
    /// allowed.
    pub fn role(&self, module: &str, name: &str) -> Option<Role> {
        if name.contains('.') {
            return None;
        }
        let key = (module.to_string(), name.to_string());
        if let Some(r) = builtin().get(&key).or_else(|| self.exact.get(&key)) {
            return Some(*r);
        }
        let in_package = |p: &String| {
            module == p
                || module
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        };
        self.packages.iter().any(in_package).then_some(Role::Class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses_without_duplicates() {
        let map = parse_all().unwrap();
        assert!(map.len() > 1000, "{} entries", map.len());
        assert_eq!(
            map.get(&("torch._utils".into(), "_rebuild_tensor_v2".into())),
            Some(&Role::Rebuild)
        );
        assert_eq!(
            map.get(&("ultralytics.nn.tasks".into(), "DetectionModel".into())),
            Some(&Role::Class)
        );
        assert_eq!(
            map.get(&("ultralytics.nn.tasks".into(), "parse_model".into())),
            None
        );
    }

    #[test]
    fn special_roles_belong_to_their_one_global_each() {
        for ((m, n), role) in parse_all().unwrap() {
            let special = match role {
                Role::Getattr => Some(("builtins", "getattr")),
                Role::Reconstructor => Some(("copyreg", "_reconstructor")),
                Role::SubclassRebuild => Some(("torch._tensor", "_rebuild_from_type_v2")),
                _ => None,
            };
            if let Some((sm, sn)) = special {
                assert_eq!((m.as_str(), n.as_str()), (sm, sn), "{role:?}");
            }
        }
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(parse_table("t", "a\tb\n").is_err());
        assert!(parse_table("t", "a\tb.c\tclass\n").is_err(), "dotted name");
        assert!(parse_table("t", "a\tb\tsuperuser\n").is_err());
        assert!(parse_table("t", "a b\tc\tclass\n").is_err());
        assert_eq!(parse_table("t", "# x\n\na.b\tC\tenum\n").unwrap().len(), 1);
    }

    #[test]
    fn user_names_and_patterns() {
        let a = AllowList::with_user(&[
            "mypkg.models.*".into(),
            "other.Thing".into(),
            "other.Mode=enum".into(),
        ])
        .unwrap();
        assert_eq!(a.role("mypkg.models", "Net"), Some(Role::Class));
        assert_eq!(a.role("mypkg.models.yolo", "Net"), Some(Role::Class));
        assert_eq!(a.role("mypkg.modelsx", "Net"), None, "dot boundary");
        assert_eq!(a.role("mypkg", "Net"), None);
        assert_eq!(a.role("mypkg.models", "a.b"), None, "dotted names never");
        assert_eq!(a.role("other", "Thing"), Some(Role::Class));
        assert_eq!(a.role("other", "Mode"), Some(Role::Enum));
        assert_eq!(a.role("other", "Else"), None);
    }

    #[test]
    fn user_values_that_cannot_be_allowed() {
        for bad in [
            "mypkg.models.",
            "os.system",
            "builtins.eval",
            "os.*",
            "torch.*",
            "builtins.*",
            "mypkg.Net=getattr",
            "mypkg.Net=admin",
            "Net",
            "my pkg.Net",
            ".*",
        ] {
            assert!(AllowList::with_user(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
