//! Why a global is dangerous, for the message only.
//!
//! The gate is the allow-list ([`super::allowlist`]): a global that is not on it is a finding
//! whether or not it appears here. This list only names what a refused global would do, so the
//! user reads "runs commands" instead of "not on the allow-list". A deny list always lags; it is
//! never consulted to accept anything.

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

use Category::*;

/// Modules (and their submodules) any of whose names is dangerous.
const MODULES: &[(&str, Category, &str)] = &[
    ("os", CodeExecution, "runs commands or touches files"),
    ("posix", CodeExecution, "runs commands or touches files"),
    ("nt", CodeExecution, "runs commands or touches files"),
    ("_posixsubprocess", CodeExecution, "runs commands"),
    ("subprocess", CodeExecution, "runs commands"),
    ("pty", CodeExecution, "runs commands"),
    ("platform", CodeExecution, "runs commands"),
    ("runpy", CodeExecution, "runs code"),
    ("code", CodeExecution, "runs code"),
    ("codeop", CodeExecution, "compiles code"),
    ("timeit", CodeExecution, "runs code"),
    ("cProfile", CodeExecution, "runs code"),
    ("profile", CodeExecution, "runs code"),
    ("pdb", CodeExecution, "runs code"),
    ("bdb", CodeExecution, "runs code"),
    ("trace", CodeExecution, "runs code"),
    ("doctest", CodeExecution, "runs code"),
    ("marshal", CodeExecution, "loads code objects"),
    ("types", CodeExecution, "builds functions or code objects"),
    ("ctypes", CodeExecution, "calls native code"),
    ("_ctypes", CodeExecution, "loads and calls native code"),
    ("cffi", CodeExecution, "loads and calls native code"),
    (
        "operator",
        CodeExecution,
        "reaches any attribute or item (gadget)",
    ),
    (
        "_operator",
        CodeExecution,
        "reaches any attribute or item (gadget)",
    ),
    ("multiprocessing", CodeExecution, "starts processes"),
    ("concurrent", CodeExecution, "starts threads or processes"),
    ("threading", CodeExecution, "starts threads"),
    ("_thread", CodeExecution, "starts threads"),
    ("asyncio", CodeExecution, "starts processes or connections"),
    ("pip", CodeExecution, "installs packages"),
    ("setuptools", CodeExecution, "builds and installs packages"),
    ("distutils", CodeExecution, "builds packages"),
    ("ensurepip", CodeExecution, "installs packages"),
    ("venv", CodeExecution, "creates environments"),
    ("torch.jit", LoadsFiles, "loads or compiles TorchScript"),
    ("torch.fx", CodeExecution, "generates and runs Python code"),
    ("torch.package", LoadsFiles, "loads packaged code"),
    ("torch._inductor", CodeExecution, "compiles and loads code"),
    ("torch._dynamo", CodeExecution, "compiles code"),
    (
        "torch.utils.cpp_extension",
        CodeExecution,
        "compiles and loads native code",
    ),
    (
        "torch.utils.model_zoo",
        Network,
        "downloads and loads files",
    ),
    ("torch.hub", Network, "downloads and runs code"),
    ("torch.distributed.rpc", Network, "runs remote calls"),
    ("torch.ops", CodeExecution, "calls native operators"),
    ("numpy.f2py", CodeExecution, "compiles and runs code"),
    ("numpy.distutils", CodeExecution, "builds native code"),
    ("numpy.ctypeslib", CodeExecution, "loads native libraries"),
    ("numpy.lib._npyio_impl", LoadsFiles, "loads or writes files"),
    ("numpy.lib.npyio", LoadsFiles, "loads or writes files"),
    ("socket", Network, "opens network connections"),
    ("_socket", Network, "opens network connections"),
    ("ssl", Network, "opens network connections"),
    ("http", Network, "opens network connections"),
    ("urllib", Network, "opens network connections"),
    ("urllib3", Network, "opens network connections"),
    ("requests", Network, "opens network connections"),
    ("httpx", Network, "opens network connections"),
    ("ftplib", Network, "opens network connections"),
    ("smtplib", Network, "opens network connections"),
    ("telnetlib", Network, "opens network connections"),
    ("xmlrpc", Network, "opens network connections"),
    ("webbrowser", Network, "opens a browser"),
    ("pickle", LoadsFiles, "loads further pickles"),
    ("_pickle", LoadsFiles, "loads further pickles"),
    ("pickletools", LoadsFiles, "reads pickles"),
    ("dill", LoadsFiles, "loads further pickles"),
    ("cloudpickle", LoadsFiles, "loads further pickles"),
    ("joblib", LoadsFiles, "loads further pickles"),
    ("shelve", LoadsFiles, "loads further pickles"),
    ("dbm", FileSystem, "opens databases"),
    ("sqlite3", FileSystem, "opens databases"),
    ("yaml", LoadsFiles, "loads YAML that may build objects"),
    ("io", FileSystem, "opens files"),
    ("_io", FileSystem, "opens files"),
    ("codecs", FileSystem, "opens files"),
    ("fileinput", FileSystem, "opens files"),
    ("shutil", FileSystem, "copies or deletes files"),
    ("tempfile", FileSystem, "creates files"),
    ("glob", FileSystem, "lists files"),
    ("zipfile", FileSystem, "extracts archives"),
    ("tarfile", FileSystem, "extracts archives"),
    ("mmap", FileSystem, "maps files"),
    ("fcntl", FileSystem, "controls files"),
    ("importlib", InterpreterState, "imports modules"),
    ("imp", InterpreterState, "imports modules from files"),
    ("zipimport", InterpreterState, "imports modules from files"),
    ("pkgutil", InterpreterState, "imports modules by name"),
    ("pydoc", InterpreterState, "imports modules by name"),
    (
        "logging.config",
        InterpreterState,
        "imports and calls objects by name",
    ),
    ("sys", InterpreterState, "changes the interpreter"),
    ("gc", InterpreterState, "reaches every object"),
    ("inspect", InterpreterState, "reaches frames and objects"),
    ("atexit", InterpreterState, "registers code to run at exit"),
    ("signal", InterpreterState, "changes signal handling"),
    ("site", InterpreterState, "changes the import path"),
    ("resource", InterpreterState, "changes process limits"),
    (
        "torch.serialization",
        LoadsFiles,
        "loads or saves files with pickle",
    ),
    (
        "torch.distributed",
        Network,
        "starts processes and connections",
    ),
    ("torch.utils.collect_env", CodeExecution, "runs commands"),
    (
        "torch.utils._config_module",
        LoadsFiles,
        "loads configuration with pickle",
    ),
    (
        "torch.utils.data.datapipes",
        LoadsFiles,
        "decodes files, pickles included",
    ),
    ("_osx_support", CodeExecution, "runs commands"),
    ("_aix_support", CodeExecution, "runs commands"),
    ("idlelib", CodeExecution, "evaluates code"),
    ("lib2to3", LoadsFiles, "loads pickled grammars"),
    ("linecache", FileSystem, "reads any file"),
    ("cgi", CodeExecution, "runs scripts"),
    ("cgitb", FileSystem, "writes files"),
    ("imaplib", Network, "opens network connections"),
    ("poplib", Network, "opens network connections"),
    ("aiohttp", Network, "opens network connections"),
    (
        "tkinter",
        InterpreterState,
        "opens windows and evaluates Tcl",
    ),
    ("_tkinter", InterpreterState, "evaluates Tcl"),
    ("sympy", CodeExecution, "evaluates strings as code"),
    ("numexpr", CodeExecution, "evaluates expressions"),
    ("IPython", CodeExecution, "runs code"),
    ("keras", LoadsFiles, "loads models that run code"),
    ("tensorflow", LoadsFiles, "loads models that run code"),
    ("pandas.io", LoadsFiles, "reads files, pickles included"),
    ("h5py", FileSystem, "opens files"),
    ("scipy.io", FileSystem, "reads and writes files"),
];

/// Single names.
const NAMES: &[(&str, &str, Category, &str)] = &[
    ("builtins", "eval", CodeExecution, "evaluates code"),
    ("builtins", "exec", CodeExecution, "executes code"),
    ("builtins", "compile", CodeExecution, "compiles code"),
    (
        "builtins",
        "__import__",
        InterpreterState,
        "imports modules",
    ),
    (
        "builtins",
        "getattr",
        InterpreterState,
        "reaches any attribute (gadget)",
    ),
    (
        "builtins",
        "setattr",
        InterpreterState,
        "changes any attribute",
    ),
    (
        "builtins",
        "delattr",
        InterpreterState,
        "changes any attribute",
    ),
    ("builtins", "open", FileSystem, "opens files"),
    ("builtins", "input", InterpreterState, "reads the terminal"),
    ("builtins", "breakpoint", CodeExecution, "starts a debugger"),
    (
        "builtins",
        "globals",
        InterpreterState,
        "reaches the interpreter state",
    ),
    (
        "builtins",
        "locals",
        InterpreterState,
        "reaches the interpreter state",
    ),
    (
        "builtins",
        "vars",
        InterpreterState,
        "reaches the interpreter state",
    ),
    (
        "builtins",
        "memoryview",
        InterpreterState,
        "reaches raw memory",
    ),
    ("builtins", "exit", InterpreterState, "ends the process"),
    ("builtins", "quit", InterpreterState, "ends the process"),
    (
        "builtins",
        "help",
        CodeExecution,
        "imports modules and starts a pager",
    ),
    ("builtins", "type", CodeExecution, "builds classes"),
    (
        "builtins",
        "super",
        InterpreterState,
        "reaches any attribute (gadget)",
    ),
    (
        "builtins",
        "object",
        InterpreterState,
        "builds any object when called",
    ),
    (
        "functools",
        "partial",
        CodeExecution,
        "gadget for chained calls",
    ),
    (
        "functools",
        "reduce",
        CodeExecution,
        "gadget for chained calls",
    ),
    (
        "_functools",
        "partial",
        CodeExecution,
        "gadget for chained calls",
    ),
    (
        "_functools",
        "reduce",
        CodeExecution,
        "gadget for chained calls",
    ),
    (
        "copyreg",
        "_reconstructor",
        CodeExecution,
        "creates any object (gadget)",
    ),
    (
        "copyreg",
        "__newobj__",
        CodeExecution,
        "creates any object (gadget)",
    ),
    (
        "copyreg",
        "__newobj_ex__",
        CodeExecution,
        "creates any object (gadget)",
    ),
    (
        "torch",
        "load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "torch.serialization",
        "load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "torch.serialization",
        "_load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "torch.serialization",
        "_legacy_load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "torch.storage",
        "_load_from_bytes",
        LoadsFiles,
        "loads pickled bytes with torch.load",
    ),
    (
        "torch._tensor",
        "_rebuild_from_type",
        CodeExecution,
        "calls any function",
    ),
    (
        "torch._utils",
        "_rebuild_xla_tensor",
        CodeExecution,
        "calls into a backend",
    ),
    (
        "torch._C",
        "_load_for_lite_interpreter",
        LoadsFiles,
        "loads TorchScript",
    ),
    (
        "torch._C",
        "import_ir_module",
        LoadsFiles,
        "loads TorchScript",
    ),
    (
        "numpy",
        "load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "uuid",
        "_get_command_stdout",
        CodeExecution,
        "runs commands",
    ),
    ("numpy", "loadtxt", FileSystem, "reads any file"),
    ("numpy", "genfromtxt", FileSystem, "reads any file"),
    ("numpy", "fromfile", FileSystem, "reads any file"),
    ("numpy", "memmap", FileSystem, "maps any file"),
    ("numpy", "save", FileSystem, "writes any file"),
    ("numpy", "savez", FileSystem, "writes any file"),
    (
        "numpy",
        "savetxt",
        FileSystem,
        "writes any text to any file",
    ),
    ("numpy", "tofile", FileSystem, "writes any file"),
    (
        "numpy.testing._private.utils",
        "runstring",
        CodeExecution,
        "executes code",
    ),
    (
        "pandas",
        "read_pickle",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "pandas.io.pickle",
        "read_pickle",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "ultralytics.nn.tasks",
        "parse_model",
        CodeExecution,
        "evaluates strings from its argument",
    ),
    (
        "ultralytics.nn.tasks",
        "torch_safe_load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "ultralytics.nn.tasks",
        "torch_load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "ultralytics.nn.tasks",
        "attempt_load_weights",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "ultralytics.nn.tasks",
        "attempt_load_one_weight",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "ultralytics.utils.checks",
        "check_requirements",
        CodeExecution,
        "runs pip install",
    ),
    (
        "ultralytics.utils.patches",
        "torch_load",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "timm.models",
        "load_checkpoint",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "timm.models",
        "load_state_dict",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "timm.models._helpers",
        "load_checkpoint",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "timm.models._helpers",
        "load_state_dict",
        LoadsFiles,
        "loads another file with pickle",
    ),
    (
        "timm.models._hub",
        "download_cached_file",
        Network,
        "downloads files",
    ),
];

/// Why a resolved `module.name` is dangerous, when this list knows.
pub fn danger(module: &str, name: &str) -> Option<(Category, &'static str)> {
    if let Some((_, _, c, why)) = NAMES.iter().find(|(m, n, _, _)| *m == module && *n == name) {
        return Some((*c, why));
    }
    MODULES
        .iter()
        .find(|(m, _, _)| {
            module == *m || module.strip_prefix(m).is_some_and(|r| r.starts_with('.'))
        })
        .map(|(_, c, why)| (*c, *why))
}

/// Whether a package pattern `package.*` would reach a module or name this list knows (the
/// package is one, lies inside one, or holds one).
pub fn covers(package: &str) -> bool {
    let related = |m: &str| {
        m == package
            || m.strip_prefix(package).is_some_and(|r| r.starts_with('.'))
            || package.strip_prefix(m).is_some_and(|r| r.starts_with('.'))
    };
    MODULES.iter().any(|(m, _, _)| related(m)) || NAMES.iter().any(|(m, _, _, _)| related(m))
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
