//! Why a global is dangerous, for the message only.
//!
//! The gate is the allow-list ([`super::allowlist`]): a global that is not on it is a finding
//! whether or not it appears here. This list only names what a refused global would do, so the
//! user reads "runs commands" instead of "not on the allow-list". A deny list always lags; it is
//! never consulted to accept anything. The list is data: `deny.tsv`.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;

/// What a dangerous global reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Runs commands, Python code or native code.
    CodeExecution,
    /// Reads, writes or deletes files.
    FileSystem,
    /// Opens network connections or downloads.
    Network,
    /// Loads further pickles, models or other files as code.
    LoadsFiles,
    /// Changes the interpreter: attributes, imports, signals, hooks.
    InterpreterState,
}

/// The table (module, name or `*`, category, why).
const TABLE: &str = include_str!("deny.tsv");

struct Deny {
    /// Modules any of whose names (and whose submodules') is dangerous.
    modules: Vec<(&'static str, Category, &'static str)>,
    /// Single names.
    names: HashMap<(&'static str, &'static str), (Category, &'static str)>,
}

impl Category {
    fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "code-execution" => Category::CodeExecution,
            "file-system" => Category::FileSystem,
            "network" => Category::Network,
            "loads-files" => Category::LoadsFiles,
            "interpreter-state" => Category::InterpreterState,
            _ => return None,
        })
    }
}

/// A malformed line of the embedded table (a build defect; a unit test parses every line).
#[derive(Debug, thiserror::Error)]
#[error("deny.tsv line {0}: expected module<TAB>name<TAB>category<TAB>why")]
pub struct TableError(usize);

fn parse() -> Result<Deny, TableError> {
    let mut d = Deny {
        modules: Vec::new(),
        names: HashMap::new(),
    };
    for (i, line) in TABLE.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&'static str> = line.split('\t').collect();
        let [m, n, c, why] = f.as_slice() else {
            return Err(TableError(i + 1));
        };
        let c = Category::parse(c).ok_or(TableError(i + 1))?;
        if *n == "*" {
            d.modules.push((m, c, why));
        } else if d.names.insert((m, n), (c, why)).is_some() {
            return Err(TableError(i + 1));
        }
    }
    Ok(d)
}

fn table() -> &'static Deny {
    static T: OnceLock<Deny> = OnceLock::new();
    T.get_or_init(|| parse().expect("the embedded deny.tsv parses (unit-tested)"))
}

fn under(module: &str, prefix: &str) -> bool {
    module == prefix
        || module
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('.'))
}

/// Why a resolved `module.name` is dangerous, when this list knows.
pub fn danger(module: &str, name: &str) -> Option<(Category, &'static str)> {
    let t = table();
    if let Some((c, why)) = t.names.get(&(module, name)) {
        return Some((*c, why));
    }
    t.modules
        .iter()
        .find(|(m, _, _)| under(module, m))
        .map(|(_, c, why)| (*c, *why))
}

/// Whether a package pattern `package.*` would reach a module or name this list knows (the
/// package is one, lies inside one, or holds one).
pub fn covers(package: &str) -> bool {
    let t = table();
    let related = |m: &str| under(m, package) || under(package, m);
    t.modules.iter().any(|(m, _, _)| related(m)) || t.names.keys().any(|(m, _)| related(m))
}

/// What a dotted name may reach through attribute lookup: the first known danger among the ways
/// of reading `module.name` as a module and an attribute (`torch.nn.modules.module` +
/// `torch.load` reaches `torch.load`; `builtins` + `eval.__call__` reaches `builtins.eval`).
pub fn danger_through(module: &str, name: &str) -> Option<(String, Category, &'static str)> {
    let parts: Vec<&str> = name.split('.').collect();
    // The module's own attribute first: `builtins` + `eval.__call__`.
    let mut candidates = vec![(module.to_string(), parts[0].to_string())];
    // Then the name read as a path of its own: `torch.nn.modules.module` + `torch.load`.
    for k in 1..parts.len() {
        let m = parts[..k].join(".");
        // Modules import each other under private aliases (`import os as _os`).
        let bare = m.trim_start_matches('_').to_string();
        candidates.push((m, parts[k].to_string()));
        candidates.push((bare, parts[k].to_string()));
    }
    candidates
        .into_iter()
        .find_map(|(m, n)| danger(&m, &n).map(|(c, why)| (format!("{m}.{n}"), c, why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses() {
        let t = parse().unwrap();
        assert!(t.modules.len() > 100 && t.names.len() > 50);
    }

    #[test]
    fn the_issue_s_examples_are_explained() {
        for (m, n) in [
            ("timeit", "timeit"),
            ("cProfile", "run"),
            ("pkgutil", "resolve_name"),
            ("pydoc", "locate"),
            ("logging.config", "_resolve"),
            ("_operator", "methodcaller"),
            ("operator", "getitem"),
            ("io", "open"),
            ("numpy", "savetxt"),
            ("torch.storage", "_load_from_bytes"),
            ("torch.jit", "load"),
            ("torch.utils.model_zoo", "load_url"),
            ("numpy.lib._npyio_impl", "load"),
            ("_ctypes", "dlopen"),
            ("imp", "load_source"),
            ("torch.utils.cpp_extension", "load_inline"),
            ("torch._inductor.codecache", "PyCodeCache"),
            ("os.path", "join"),
            ("posix", "system"),
        ] {
            assert!(danger(m, n).is_some(), "{m}.{n}");
        }
        assert!(danger("osmosis", "x").is_none(), "prefixes stop at a dot");
        assert!(danger("torch._utils", "_rebuild_tensor_v2").is_none());
    }

    #[test]
    fn dotted_names_are_explained_by_what_they_reach() {
        let (via, _, _) = danger_through("torch.nn.modules.module", "torch.load").unwrap();
        assert_eq!(via, "torch.load");
        let (via, _, _) = danger_through("builtins", "eval.__call__").unwrap();
        assert_eq!(via, "builtins.eval");
        let (via, _, _) = danger_through("argparse", "_os.system").unwrap();
        assert_eq!(via, "os.system", "private module aliases are seen through");
        assert!(danger_through("collections", "OrderedDict.fromkeys").is_none());
    }
}
