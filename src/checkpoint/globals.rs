//! Judging the globals a pickle names. fuse-ema never calls them; this says which ones would do
//! harm in `torch.load(weights_only=False)` or `pickle.load`, so users learn what the file tries.

use serde::Serialize;

use super::value::Global;

/// A global the file references, with how it is judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GlobalReport {
    /// `module.name` as Python 3 resolves it.
    pub name: String,
    /// The name as written in the pickle, when Python 3 maps it to another module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickled_as: Option<String>,
    /// How many times the pickle names it.
    pub count: usize,
    /// Why it is dangerous, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub danger: Option<&'static str>,
    /// Whether `--strict` accepts it (docs/security.md).
    pub allowed: bool,
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

/// Globals `--strict` accepts by exact name: tensor and storage rebuilders, containers, numpy
/// scalars and arrays, argparse namespaces. Documented in docs/security.md.
const ALLOWED_NAMES: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "dict"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "slice"),
    ("_codecs", "encode"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.storage", "UntypedStorage"),
    ("torch.storage", "TypedStorage"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("argparse", "Namespace"),
];

/// Module prefixes whose classes `--strict` accepts: model classes rebuilt as plain data.
pub const ALLOWED_PREFIXES: &[&str] = &[
    "torch.nn.modules.",
    "ultralytics.nn.",
    "ultralytics.utils.IterableSimpleNamespace",
    "models.yolo.",
    "models.common.",
    "timm.layers.",
    "timm.models.",
];

/// Whether `g` is on the strict allow-list (or under one of `extra` module prefixes).
pub fn allowed(g: &Global, extra: &[String]) -> bool {
    let module = canonical_module(&g.module);
    if ALLOWED_NAMES
        .iter()
        .any(|(m, n)| *m == module && *n == &*g.name)
    {
        return true;
    }
    if module == "torch"
        && (g.name.ends_with("Storage") || crate::tensor::DType::from_torch_name(&g.name).is_some())
    {
        return true;
    }
    let dotted = canonical(g);
    ALLOWED_PREFIXES.iter().any(|p| dotted.starts_with(p))
        || extra.iter().any(|p| dotted.starts_with(p.as_str()))
}

/// Python 2 module names that Python 3's unpickler maps to Python 3 modules (`_compat_pickle`;
/// pickles of protocol ≤ 2 use them: `subprocess.Popen` is written as `commands.Popen`).
const PY2_MODULES: &[(&str, &str)] = &[
    ("__builtin__", "builtins"),
    ("exceptions", "builtins"),
    ("commands", "subprocess"),
    ("copy_reg", "copyreg"),
    ("cPickle", "pickle"),
    ("cStringIO", "io"),
    ("StringIO", "io"),
    ("Queue", "queue"),
    ("SocketServer", "socketserver"),
    ("BaseHTTPServer", "http.server"),
    ("SimpleHTTPServer", "http.server"),
    ("CGIHTTPServer", "http.server"),
    ("httplib", "http.client"),
    ("urllib2", "urllib.request"),
    ("urlparse", "urllib.parse"),
    ("cookielib", "http.cookiejar"),
    ("xmlrpclib", "xmlrpc.client"),
    ("SimpleXMLRPCServer", "xmlrpc.server"),
    ("DocXMLRPCServer", "xmlrpc.server"),
    ("thread", "_thread"),
    ("dummy_thread", "_dummy_thread"),
    ("UserDict", "collections"),
    ("UserList", "collections"),
    ("UserString", "collections"),
    ("repr", "reprlib"),
    ("_winreg", "winreg"),
    ("anydbm", "dbm"),
    ("whichdb", "dbm"),
    ("dumbdbm", "dbm.dumb"),
    ("gdbm", "dbm.gnu"),
    ("Tkinter", "tkinter"),
];

/// The module Python 3 actually imports for a pickled module name.
pub fn canonical_module(module: &str) -> &str {
    PY2_MODULES
        .iter()
        .find(|(py2, _)| *py2 == module)
        .map(|(_, py3)| *py3)
        .unwrap_or(module)
}

/// `module.name` as Python 3 resolves it.
pub fn canonical(g: &Global) -> String {
    format!("{}.{}", canonical_module(&g.module), g.name)
}

/// Why `g` is dangerous, or `None`.
pub fn danger(g: &Global) -> Option<&'static str> {
    let module = canonical_module(&g.module);
    let top = module.split('.').next().unwrap_or(module);
    if let Some((_, why)) = DANGEROUS_MODULES.iter().find(|(m, _)| *m == top) {
        return Some(why);
    }
    DANGEROUS_NAMES
        .iter()
        .find(|(m, n, _)| *m == module && *n == &*g.name)
        .map(|(_, _, why)| *why)
}

/// Every referenced global, judged (`extra`: module prefixes the user allows besides the list).
pub fn report(globals: &[(Global, usize)], extra: &[String]) -> Vec<GlobalReport> {
    globals
        .iter()
        .map(|(g, n)| GlobalReport {
            name: canonical(g),
            pickled_as: (canonical(g) != g.dotted()).then(|| g.dotted()),
            count: *n,
            danger: danger(g),
            allowed: danger(g).is_none() && allowed(g, extra),
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
        assert!(
            danger(&g("commands", "Popen")).is_some(),
            "protocol 2 spelling of subprocess"
        );
        assert_eq!(canonical(&g("__builtin__", "eval")), "builtins.eval");
        assert!(danger(&g("torch._utils", "_rebuild_tensor_v2")).is_none());
        assert!(danger(&g("collections", "OrderedDict")).is_none());
        assert!(danger(&g("builtins", "set")).is_none());
    }
}
