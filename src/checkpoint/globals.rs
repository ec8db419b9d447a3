//! Judging the globals a pickle names. fuse-ema never calls them; this says which ones would do
//! harm in `torch.load(weights_only=False)` or `pickle.load`, so users learn what the file tries.

use serde::Serialize;

use super::value::Global;

/// A global the file references, with how it is judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GlobalReport {
    /// `module.name`.
    pub name: String,
    /// How many times the pickle names it.
    pub count: usize,
    /// Why it is dangerous, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub danger: Option<&'static str>,
}

/// Modules any of whose names runs code, touches files or the network, or loads more pickles.
const DANGEROUS_MODULES: &[(&str, &str)] = &[
    ("os", "runs commands or touches files"),
    ("posix", "runs commands or touches files"),
    ("nt", "runs commands or touches files"),
    ("subprocess", "runs commands"),
    ("pty", "runs commands"),
    ("sys", "changes the interpreter"),
    ("runpy", "runs code"),
    ("code", "runs code"),
    ("codeop", "compiles code"),
    ("marshal", "loads code objects"),
    ("types", "builds functions or code objects"),
    ("ctypes", "calls native code"),
    ("socket", "opens network connections"),
    ("http", "opens network connections"),
    ("urllib", "opens network connections"),
    ("requests", "opens network connections"),
    ("webbrowser", "opens a browser"),
    ("importlib", "imports modules"),
    ("pickle", "loads further pickles"),
    ("_pickle", "loads further pickles"),
    ("dill", "loads further pickles"),
    ("shutil", "copies or deletes files"),
    ("tempfile", "creates files"),
    ("multiprocessing", "starts processes"),
    ("asyncio", "starts processes or connections"),
    ("signal", "changes signal handling"),
    ("platform", "runs commands"),
    ("pip", "installs packages"),
];

/// Names in the builtins (and a few other modules) that run code or reach anything.
const DANGEROUS_NAMES: &[(&str, &str, &str)] = &[
    ("builtins", "eval", "evaluates code"),
    ("builtins", "exec", "executes code"),
    ("builtins", "compile", "compiles code"),
    ("builtins", "__import__", "imports modules"),
    ("builtins", "getattr", "reaches any attribute (gadget)"),
    ("builtins", "setattr", "changes any attribute"),
    ("builtins", "delattr", "changes any attribute"),
    ("builtins", "open", "opens files"),
    ("builtins", "input", "reads the terminal"),
    ("builtins", "breakpoint", "starts a debugger"),
    ("builtins", "globals", "reaches the interpreter state"),
    ("builtins", "locals", "reaches the interpreter state"),
    ("builtins", "vars", "reaches the interpreter state"),
    ("builtins", "memoryview", "reaches raw memory"),
    ("operator", "attrgetter", "reaches any attribute (gadget)"),
    ("operator", "methodcaller", "calls any method (gadget)"),
    ("operator", "itemgetter", "gadget for chained calls"),
    ("functools", "partial", "gadget for chained calls"),
    ("torch", "load", "loads another file with pickle"),
    (
        "torch.serialization",
        "load",
        "loads another file with pickle",
    ),
    ("torch.hub", "load", "downloads and runs code"),
    ("torch.hub", "load_state_dict_from_url", "downloads files"),
    ("numpy", "load", "loads another file with pickle"),
    ("numpy.lib.npyio", "load", "loads another file with pickle"),
    ("numpy.testing._private.utils", "runstring", "executes code"),
];

/// Why `g` is dangerous, or `None`.
pub fn danger(g: &Global) -> Option<&'static str> {
    let module = match &*g.module {
        "__builtin__" => "builtins",
        m => m,
    };
    let top = module.split('.').next().unwrap_or(module);
    if let Some((_, why)) = DANGEROUS_MODULES.iter().find(|(m, _)| *m == top) {
        return Some(why);
    }
    DANGEROUS_NAMES
        .iter()
        .find(|(m, n, _)| *m == module && *n == &*g.name)
        .map(|(_, _, why)| *why)
}

/// Every referenced global, judged.
pub fn report(globals: &[(Global, usize)]) -> Vec<GlobalReport> {
    globals
        .iter()
        .map(|(g, n)| GlobalReport {
            name: g.dotted(),
            count: *n,
            danger: danger(g),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(m: &str, n: &str) -> Global {
        Global {
            module: m.into(),
            name: n.into(),
        }
    }

    #[test]
    fn known_attacks_are_flagged_and_torch_rebuilders_are_not() {
        assert!(danger(&g("posix", "system")).is_some());
        assert!(danger(&g("os.path", "join")).is_some());
        assert!(danger(&g("__builtin__", "eval")).is_some());
        assert!(danger(&g("runpy", "_run_code")).is_some());
        assert!(danger(&g("torch._utils", "_rebuild_tensor_v2")).is_none());
        assert!(danger(&g("collections", "OrderedDict")).is_none());
        assert!(danger(&g("builtins", "set")).is_none());
    }
}
