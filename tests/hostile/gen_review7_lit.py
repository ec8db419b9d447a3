#!/usr/bin/env python3
"""Review 7, literals, keys and tensor rebuild arguments: places where a naive reading of a pickle
differs from CPython's C unpickler plus torch.load, so a reader would hand over other weights than
torch does. Every file is written as opcodes (tests/hostile/pickleasm.py); the only globals named
are benign (numpy scalars and dtypes, decimal, complex, torch's rebuilders).

`cases()` yields (file name, bytes, expect, contains[, values]): "error" files must be refused (exit 2,
one line containing `contains`); "clean" files must be read, and `values` is the EMA weight `w`
torch.load gives, known by construction (Python's dict rule, CPython's literal rules) and, when
torch is installed, checked here with torch.load through a pickle module that resolves only the
benign globals these files name. tests/review7_lit.rs folds each clean file and compares.

Run directly (fixtures venv) it writes tests/hostile/files/, manifest-review7-lit.json,
review7-lit-values.json, and this generator's entries of python-globals.json."""

import io
import json
import pickle
import struct
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pickleasm import Build, Call, G, Persid, Raw, dumps, ops  # noqa: E402
from writers import torch_zip  # noqa: E402


def floats(xs):
    return struct.pack("<%df" % len(xs), *xs)


def tensor_at(key, numel, offset):
    """A 3-element float tensor of storage `key` at `offset` (any value, e.g. a Raw INT literal)."""
    pid = ("storage", G("torch", "FloatStorage"), key, "cpu", numel)
    return Call(G("torch._utils", "_rebuild_tensor_v2"), Persid(pid), offset, (3,), (1,), False, Call(G("collections", "OrderedDict")))


def checkpoint(items, storages):
    """data.pkl = dict(items) at protocol 2 (keys may be Raw opcodes), storages {key: floats}."""
    d = {}
    for k, v in items:
        d[k] = v
    return torch_zip(dumps(d, 2), [(k, floats(v)) for k, v in storages.items()])


FULL = {"0": [0.0] * 3, "1": [1.0] * 3, "7": [7.0] * 3}


def w(key):
    return {"w": tensor_at(key, 3, 0)}


def np_scalar(code, state, raw):
    """numpy.core.multiarray.scalar(dtype(code), raw), as numpy pickles it at protocol 2."""
    dtype = Build(Call(G("numpy", "dtype"), code, False, True), state)
    return Call(G("numpy.core.multiarray", "scalar"), dtype, Call(G("_codecs", "encode"), raw.decode("latin-1"), "latin1"))


def np_str(text, length=None):
    n = length or len(text)
    raw = "".join(text).ljust(n, "\0").encode("utf-32-le")
    return np_scalar(f"U{n}", (3, "<", None, None, None, 4 * n, 4, 8), raw)


def key_file(key, first=False):
    """{"model": w0, "ema": w1, KEY: w7} (or KEY before "ema"): whether KEY is "ema" decides the EMA."""
    items = [("model", w("0")), ("ema", w("1")), (Raw(key) if isinstance(key, bytes) else key, w("7"))]
    if first:
        items = [items[0], items[2], items[1]]
    return checkpoint(items, FULL)


def offset_file(literal):
    """ema.w = arange(16)[offset:offset+3] with the offset spelled as the raw INT/LONG literal."""
    items = [("model", w("0")), ("ema", {"w": tensor_at("1", 16, Raw(literal))})]
    return checkpoint(items, {"0": [0.0] * 3, "1": [float(i) for i in range(16)]})


def rebuild_file(ema_w):
    return checkpoint([("model", w("0")), ("ema", {"w": ema_w})], FULL)


def cases():
    # ---- F1: keys equal across types (numpy.str_ is a str: one dict key with "ema") ----
    yield "r7-npstr-key-after-ema.pt", key_file(np_str("ema")), "clean", "", [7.0] * 3
    yield "r7-npstr-key-before-ema.pt", key_file(np_str("ema"), first=True), "clean", "", [1.0] * 3
    # numpy drops the trailing NULs of a fixed-width str: U4 "ema\0" is "ema".
    yield "r7-npstr-key-nul-padded.pt", key_file(np_str("ema", 4)), "clean", "", [7.0] * 3
    # numpy.bytes_ equals bytes; beside a str key it is another key.
    npb = np_scalar("S3", (3, "|", None, None, None, 3, 1, 0), b"ema")
    yield "r7-npbytes-key.pt", key_file(npb), "clean", "", [1.0] * 3
    # Instances whose class decides equality: Decimal('1') == 1, complex(1, 0) == 1.
    dec = Call(G("decimal", "Decimal"), "1")
    yield "r7-decimal-key.pt", checkpoint([("model", w("0")), ("ema", w("1")), (1, 0), (dec, 1)], FULL), "error", "instance key"
    cx = Call(G("builtins", "complex"), 1.0, 0.0)
    yield "r7-complex-key.pt", checkpoint([("model", w("0")), ("ema", w("1")), (1, 0), (cx, 1)], FULL), "error", "instance key"
    # numpy complex scalars are not decoded: the same as any instance.
    npc = np_scalar("c16", (3, "<", None, None, None, -1, -1, 0), struct.pack("<dd", 1.0, 0.0))
    yield "r7-npcomplex-key.pt", checkpoint([("model", w("0")), ("ema", w("1")), (1, 0), (npc, 1)], FULL), "error", "instance key"
    # A bytearray is unhashable: torch.load raises on one used as a key.
    ba = Call(G("builtins", "bytearray"), Raw(b"C\x02ab"))
    yield "r7-bytearray-key.pt", checkpoint([("model", w("0")), ("ema", w("1")), (ba, 1)], FULL), "error", "bytearray"
    ba8 = Raw(b"\x96" + struct.pack("<Q", 2) + b"ab")
    yield "r7-bytearray8-key.pt", checkpoint([("model", w("0")), ("ema", w("1")), (ba8, 1)], FULL), "error", "bytearray"
    # Set members are hashed and compared as keys: a list cannot be one (torch.load raises), an
    # instance beside other members is undecidable.
    listset = Call(G("builtins", "set"), [[1, 2]])
    yield "r7-set-list-member.pt", checkpoint([("model", w("0")), ("ema", w("1")), ("tags", listset)], FULL), "error", "set member"
    added = Raw(b"\x8f(" + ops([1], 2) + b"\x90")
    yield "r7-additems-list-member.pt", checkpoint([("model", w("0")), ("ema", w("1")), ("tags", added)], FULL), "error", "set member"
    fs = Call(G("builtins", "frozenset"), [Call(G("decimal", "Decimal"), "1"), 1])
    yield "r7-frozenset-instance-member.pt", checkpoint([("model", w("0")), ("ema", w("1")), ("tags", fs)], FULL), "error", "instance key"
    # ---- F15: protocol-0 INT is strtol(base 0) in CPython's C unpickler: 010 is 8 ----
    yield "r7-int-octal-offset.pt", offset_file(b"I010\n"), "error", "INT literal"
    yield "r7-int-plus-offset.pt", offset_file(b"I+8\n"), "error", "INT literal"
    yield "r7-int-blank-offset.pt", offset_file(b"I 8\n"), "error", "INT literal"
    yield "r7-int-hex-offset.pt", offset_file(b"I0x8\n"), "error", "INT literal"
    yield "r7-long-octal-offset.pt", offset_file(b"L010L\n"), "error", "LONG literal"
    yield "r7-int-decimal-offset.pt", offset_file(b"I8\n"), "clean", "", [8.0, 9.0, 10.0]
    yield "r7-long-decimal-offset.pt", offset_file(b"L8L\n"), "clean", "", [8.0, 9.0, 10.0]
    # FLOAT: CPython's C unpickler takes no blanks and raises on an overflow (Rust would give inf).
    yield "r7-float-blank.pt", checkpoint([("model", w("0")), ("ema", w("1")), ("lr", Raw(b"F 0.5\n"))], FULL), "error", "FLOAT literal"
    yield "r7-float-overflow.pt", checkpoint([("model", w("0")), ("ema", w("1")), ("lr", Raw(b"F1e999\n"))], FULL), "error", "FLOAT literal"
    # ---- F16/F13: protocol-0 STRING is escape_decode'd, then UTF-8 (strict) ----
    yield "r7-string-unknown-escape.pt", key_file(b"S'e\\ma'\n"), "error", "escape"
    yield "r7-string-trailing-blank.pt", key_file(b"S'ema' \n"), "error", "not quoted"
    yield "r7-string-hex-sign.pt", key_file(b"S'e\\x+da'\n"), "error", "escape"
    yield "r7-string-octal-overflow.pt", key_file(b"S'e\\555a'\n"), "error", "escape"
    yield "r7-string-hex-escape.pt", key_file(b"S'e\\x6da'\n"), "clean", "", [7.0] * 3
    yield "r7-string-latin1.pt", key_file(b"S'em\\xe1'\n"), "error", "UTF-8"
    yield "r7-binstring-latin1.pt", key_file(b"U\x03em\xe1"), "error", "UTF-8"
    yield "r7-binunicode-surrogate.pt", key_file(b"X\x05\x00\x00\x00em\xed\xa0\x80"), "error", "UTF-8"
    # ---- F13: protocol-0 UNICODE is raw-unicode-escape: \u counts after an odd run of backslashes ----
    yield "r7-unicode-escape.pt", key_file(b"Vem\\u0061\n"), "clean", "", [7.0] * 3
    yield "r7-unicode-even-backslashes.pt", key_file(b"Vem\\\\u0061\n"), "clean", "", [1.0] * 3
    yield "r7-unicode-surrogate.pt", key_file(b"Vema\\ud800\n"), "error", "surrogate"
    yield "r7-unicode-hex-sign.pt", key_file(b"Vem\\u+061\n"), "error", "escape"
    # ---- F8: tensor metadata and parameter/subclass state change the values torch gives ----
    pid = ("storage", G("torch", "FloatStorage"), "1", "cpu", 3)
    neg = Call(G("torch._utils", "_rebuild_tensor_v2"), Persid(pid), 0, (3,), (1,), False, Call(G("collections", "OrderedDict")), {"neg": True})
    yield "r7-tensor-neg-metadata.pt", rebuild_file(neg), "error", "metadata"
    empty = Call(G("torch._utils", "_rebuild_tensor_v2"), Persid(pid), 0, (3,), (1,), False, Call(G("collections", "OrderedDict")), {})
    yield "r7-tensor-empty-metadata.pt", rebuild_file(empty), "clean", "", [1.0] * 3
    state = Call(G("torch._utils", "_rebuild_parameter_with_state"), tensor_at("1", 3, 0), False, Call(G("collections", "OrderedDict")), {"data": tensor_at("7", 3, 0)})
    yield "r7-param-with-state.pt", rebuild_file(state), "error", "state"
    quiet = Call(G("torch._utils", "_rebuild_parameter_with_state"), tensor_at("1", 3, 0), False, Call(G("collections", "OrderedDict")), {})
    yield "r7-param-empty-state.pt", rebuild_file(quiet), "clean", "", [1.0] * 3
    inner = (Persid(pid), 0, (3,), (1,), False, Call(G("collections", "OrderedDict")))
    sub = Call(G("torch._tensor", "_rebuild_from_type_v2"), G("torch._utils", "_rebuild_tensor_v2"), G("torch", "Tensor"), inner, {"data": tensor_at("7", 3, 0)})
    yield "r7-from-type-state.pt", rebuild_file(sub), "error", "state"


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "FloatStorage"),
    ("collections", "OrderedDict"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Benign(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"not resolved here: {module}.{name}")
        return super().find_class(module, name)


def torch_reads(data):
    """torch.load(weights_only=False) of a clean file, resolving only ALLOWED."""
    import torch

    mod = types.ModuleType("benign_pickle")
    mod.Unpickler = _Benign
    mod.load = lambda f, **kw: _Benign(f, **kw).load()
    return torch.load(io.BytesIO(data), weights_only=False, pickle_module=mod)


def main():
    files = HERE / "files"
    manifest, values = {}, {}
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    for name, data, expect, contains, *want in cases():
        (files / name).write_bytes(data)
        if expect == "clean":
            # "clean" files name only allowed globals; what inspect prints on them is the file kind.
            manifest[name] = {"expect": "clean", "contains": "ema"}
            values[name] = want[0]
            if torch is not None:
                got = torch_reads(data)["ema"]["w"].tolist()
                assert got == want[0], (name, got, want[0])
        else:
            manifest[name] = {"expect": expect, "contains": contains}
    (HERE / "manifest-review7-lit.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (HERE / "review7-lit-values.json").write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    import torchpath

    globals_path = HERE / "python-globals.json"
    record = json.loads(globals_path.read_text())
    for name in manifest:
        r = torchpath.record(files / name)
        r["other_readers"] = torchpath.other_readers(files / name)
        record[name] = r
    globals_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(len(manifest), "review-7 literal files")


if __name__ == "__main__":
    main()
