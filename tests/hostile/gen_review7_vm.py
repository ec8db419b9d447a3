#!/usr/bin/env python3
"""Hostile pickles of review 7's VM findings (F2, F2b, F3, F6, F7, F13, F14): places where a
reader that does not follow CPython's unpickler + torch.load step by step reads other weights
than torch does (or reads a file torch cannot load). Written as opcodes (pickleasm.py) inside
torch zips laid out byte for byte (writers.py): nothing here imports, pickles or calls anything
the files name.

`cases()` yields (file name, bytes, expect, contains, folds_to): "error" files must be refused
(exit 2, one line containing `contains`); "clean" ones must fold to `folds_to`, the EMA tensors
Python's unpickler gives. Each `folds_to` is the value the file was built to hold AND is checked
here against CPython's own unpickler run with a find_class that returns stubs of our own making
(`python_reads`): the stubs model only what torch's classes do with the opcodes involved
(`Module.__setstate__` is `self.__dict__.update(state)`; `OrderedDict`/`dict` keep Python's own
`__new__`/`__init__`, since they are subclassed here, not imported from the file).

Run from the repository root (any Python 3; no torch needed):
python tests/hostile/gen_review7_vm.py — writes tests/hostile/files/r7vm-*, the manifest
tests/hostile/manifest-review7-vm.json (read by tests/hostile.rs and tests/review7_vm.rs), and
these files' records in tests/hostile/python-globals.json (tests/differential.rs)."""

import io
import json
import pickle
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pickleasm import Build, Call, G, Inst, NewObj, Persid, Raw, dumps, legacy_tensor, ops  # noqa: E402
from writers import legacy, torch_zip  # noqa: E402

LINEAR = G("torch.nn.modules.linear", "Linear")
SEQUENTIAL = G("torch.nn.modules.container", "Sequential")
OD = G("collections", "OrderedDict")


class Builder:
    """One file's storages: each tensor gets its own float32 storage record."""

    def __init__(self):
        self.storages = []

    def t(self, vals):
        key = str(len(self.storages))
        self.storages.append((key, struct.pack(f"<{len(vals)}f", *vals)))
        pid = ("storage", G("torch", "FloatStorage"), key, "cpu", len(vals))
        return Call(G("torch._utils", "_rebuild_tensor_v2"), Persid(pid), 0, (len(vals),), (1,), False, Call(OD))

    def p(self, vals):
        return Call(G("torch._utils", "_rebuild_parameter"), self.t(vals), True, Call(OD))

    def zip(self, top, tail=b""):
        return torch_zip(dumps(Raw(ops(top, 2) + tail)), self.storages)


def od(items):
    """OrderedDict as torch.save writes it: REDUCE with no arguments, then SETITEMS."""
    body = b"(" + b"".join(ops(k, 2) + ops(v, 2) for k, v in items) + b"u" if items else b""
    return Raw(ops(Call(OD), 2) + body)


def put(v, i):
    """`v`, memoized under `i` (BINPUT)."""
    return Raw(ops(v, 2) + b"q" + bytes([i]))


def get(i):
    return b"h" + bytes([i])


def s(text):
    return ops(text, 2)


def linear_state(params, extra=(), modules=None, buffers=None):
    st = {"training": False, "_parameters": params, "_buffers": buffers or od([]), "_modules": modules or od([])}
    st.update(dict(extra))
    return st


def linear(b, w, bias, state_memo=None, params_memo=None, obj_memo=None, extra=()):
    params = od([("weight", b.p(w)), ("bias", b.p(bias))])
    if params_memo is not None:
        params = put(params, params_memo)
    state = linear_state(params, extra)
    state = put(state, state_memo) if state_memo is not None else state
    obj = NewObj(LINEAR)
    obj = put(obj, obj_memo) if obj_memo is not None else obj
    return Build(obj, state)


A = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0])  # model
B = ([11.0, 12.0, 13.0, 14.0], [15.0, 16.0])  # ema
C = ([21.0, 22.0, 23.0, 24.0], [25.0, 26.0])  # what a later opcode puts in


def two_linears(b, **ema_memos):
    return {"model": linear(b, *A), "ema": linear(b, *B, **ema_memos)}


def folds(wb):
    return {"weight": wb[0], "bias": wb[1]}


def cases():
    # ---- F3: BUILD copies the state into the instance __dict__ (a snapshot of its entries) ----
    b = Builder()
    top = {"model": linear(b, *A, params_memo=2), "ema": linear(b, *B, state_memo=3)}
    # After the load: the ema's (memoized) state dict gets the model's _parameters. Python's
    # ema.__dict__ was filled at BUILD time, so nothing changes.
    tail = get(3) + s("_parameters") + get(2) + b"s0"
    yield "r7vm-build-alias.pt", b.zip(top, tail), "clean", "", folds(B)
    # ... while the entries' values are shared objects: a SETITEM on the ema's _parameters
    # after BUILD does change its weight.
    b = Builder()
    top = two_linears(b, params_memo=4)
    tail = get(4) + s("weight") + ops(b.p(C[0]), 2) + b"s0"
    yield "r7vm-build-shared-value.pt", b.zip(top, tail), "clean", "", {"weight": C[0], "bias": B[1]}

    # ---- F6: a second BUILD merges (Module.__setstate__ is __dict__.update) ----
    b = Builder()
    top = two_linears(b, obj_memo=5)
    yield "r7vm-second-build-empty.pt", b.zip(top, get(5) + b"}b0"), "clean", "", folds(B)
    b = Builder()
    top = two_linears(b, obj_memo=5)
    tail = get(5) + b"}" + s("_parameters") + ops(od([("weight", b.p(C[0])), ("bias", b.p(C[1]))]), 2) + b"sb0"
    yield "r7vm-second-build-merge.pt", b.zip(top, tail), "clean", "", folds(C)

    # ---- F2b: OrderedDict(<dict>) copies the mapping; pairs must be pairs ----
    b = Builder()
    ema = Raw(ops(Call(OD, {"b": b.t([7.0] * 3)}), 2) + b"(" + s("w") + ops(b.t([1.0] * 3), 2) + b"u")
    top = {"model": {"w": b.t([0.0] * 3), "b": b.t([0.0] * 3)}, "ema": ema}
    yield "r7vm-odict-dictarg.pt", b.zip(top), "clean", "", {"b": [7.0] * 3, "w": [1.0] * 3}
    b = Builder()
    ema = Call(OD, [("w", b.t([7.0] * 3))])
    yield "r7vm-odict-pairs.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "clean", "", {"w": [7.0] * 3}
    b = Builder()
    ema = Call(OD, [("w", b.t([7.0] * 3), "x")])
    yield "r7vm-odict-three-item-pair.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "pair", None
    b = Builder()
    # Python unpacks any 2-item iterable: "wx" is the pair ("w", "x").
    ema = Call(OD, [("w", b.t([7.0] * 3)), "wx"])
    yield "r7vm-odict-str-pair.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "pair", None
    b = Builder()
    extra = Call(G("builtins", "list"), {"a": 1})
    yield "r7vm-list-of-dict.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "extra": extra}), "error", "builtins.list", None

    # ---- F2: NEWOBJ runs cls.__new__(cls, *args), which ignores the arguments of these ----
    b = Builder()
    ema = NewObj(OD, [("w", b.t([7.0] * 3))])
    yield "r7vm-newobj-odict-args.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "NEWOBJ", None
    b = Builder()
    top = Raw(ops(NewObj(OD, [("ema", {"w": b.t([7.0] * 3)})]), 2) + b"(" + s("model") + ops({"w": b.t([0.0] * 3)}, 2) + b"u")
    yield "r7vm-newobj-top.pt", b.zip(top), "error", "NEWOBJ", None
    b = Builder()
    extra = NewObj(G("builtins", "list"), [1, 2])
    yield "r7vm-newobj-list-args.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "extra": extra}), "error", "NEWOBJ", None
    b = Builder()
    extra = NewObj(G("builtins", "set"), ["a"])
    yield "r7vm-newobj-set-args.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "extra": extra}), "error", "NEWOBJ", None
    b = Builder()
    ema = Raw(ops(G("builtins", "dict"), 2) + b")" + ops({"w": b.t([7.0] * 3)}, 2) + b"\x92")  # NEWOBJ_EX
    yield "r7vm-newobj-ex-dict-kwargs.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "NEWOBJ", None
    # INST with arguments calls the class (as REDUCE does), so these pairs fill it.
    b = Builder()
    ema = Inst("collections", "OrderedDict", [("w", b.t([7.0] * 3))])
    yield "r7vm-inst-odict-args.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "clean", "", {"w": [7.0] * 3}
    b = Builder()
    ema = Raw(ops(NewObj(OD), 2) + b"(" + s("w") + ops(b.t([7.0] * 3), 2) + b"u")
    yield "r7vm-newobj-odict-noargs.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "clean", "", {"w": [7.0] * 3}

    # ---- F7: BUILD on a tensor runs Tensor.__setstate__, which can replace its data ----
    b = Builder()
    w = Build(b.t([1.0] * 3), (b.t([7.0] * 3), None, None, False, Call(OD)))
    yield "r7vm-tensor-build.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": {"w": w}}), "error", "BUILD on a tensor", None
    b = Builder()
    params = od([("weight", Build(b.p(B[0]), (True, None, Call(OD)))), ("bias", b.p(B[1]))])
    top = {"model": linear(b, *A), "ema": Build(NewObj(LINEAR), linear_state(params))}
    yield "r7vm-parameter-build.pt", b.zip(top), "error", "BUILD on a tensor", None

    # ---- F14: an instance attribute that shadows a parameter, buffer or child ----
    b = Builder()
    top = {"model": linear(b, *A), "ema": linear(b, *B, extra=[("weight", b.t([-x for x in B[0]]))])}
    yield "r7vm-attr-shadows-parameter.pt", b.zip(top), "error", "shadows", None
    b = Builder()
    bufs = od([("scale", b.t([1.0, 1.0]))])
    state = linear_state(od([("weight", b.p(B[0])), ("bias", b.p(B[1]))]), [("scale", b.t([2.0, 2.0]))], buffers=bufs)
    yield "r7vm-attr-shadows-buffer.pt", b.zip({"model": linear(b, *A), "ema": Build(NewObj(LINEAR), state)}), "error", "shadows", None
    b = Builder()
    seq_state = linear_state(od([]), [("0", linear(b, *C))], modules=od([("0", linear(b, *B))]))
    top = {"model": Build(NewObj(SEQUENTIAL), linear_state(od([]), modules=od([("0", linear(b, *A))]))), "ema": Build(NewObj(SEQUENTIAL), seq_state)}
    yield "r7vm-attr-shadows-child.pt", b.zip(top), "error", "shadows", None

    # ---- review 8: how torch's state_dict() reads _non_persistent_buffers_set (`name in it`),
    # and a name registered as both a parameter and a buffer ----
    def with_hidden(nonpersistent):
        b = Builder()
        bufs = od([("scale", b.t([9.0, 9.0]))])
        params = od([("weight", b.p(B[0])), ("bias", b.p(B[1]))])
        state = linear_state(params, [("_non_persistent_buffers_set", nonpersistent)], buffers=bufs)
        return b, {"model": linear(b, *A), "ema": Build(NewObj(LINEAR), state)}

    b, top = with_hidden(Call(G("builtins", "set"), ["scale"]))
    yield "r8vm-nonpersistent-set.pt", b.zip(top), "clean", "", folds(B)
    b, top = with_hidden(("scale",))
    yield "r8vm-nonpersistent-tuple.pt", b.zip(top), "clean", "", folds(B)
    b, top = with_hidden("xscalex")  # `"scale" in "xscalex"` is True in Python: a substring test
    yield "r8vm-nonpersistent-str.pt", b.zip(top), "error", "_non_persistent_buffers_set", None
    b = Builder()
    params = od([("weight", b.p(B[0])), ("bias", b.p(B[1]))])
    state = linear_state(params, buffers=od([("weight", b.t([-x for x in B[0]]))]))
    yield "r8vm-param-and-buffer.pt", b.zip({"model": linear(b, *A), "ema": Build(NewObj(LINEAR), state)}), "error", "registers 'weight' in both", None

    # ---- session 9: bytearray(text, 'latin-1'), protocol 2's own spelling of a bytearray (other
    # picklers than torch.save write it so); the `container` role allowed one argument only ----
    b = Builder()
    extra = Call(G("builtins", "bytearray"), "caf\u00e9", "latin-1")
    yield "r9vm-bytearray-latin1.pt", b.zip({**two_linears(b), "extra": extra}), "clean", "", folds(B)

    # ---- session 9: lines CPython decodes strictly (torch.load fails; a lossy reader would not):
    # GLOBAL's module and name as UTF-8; INST's module and name and a PERSID as ASCII ----
    b = Builder()
    extra = Raw(b"cbuiltins\nse\xfft\n)\x85R")  # GLOBAL 'builtins' 'se\xfft', (), REDUCE
    yield "r9vm-global-not-utf8.pt", b.zip({**two_linears(b), "extra": extra}), "error", "GLOBAL name that is not UTF-8", None
    b = Builder()
    extra = Raw(b"(ibuiltins\ns\xc3\xa9t\n")  # MARK INST with a UTF-8 but not ASCII name
    yield "r9vm-inst-not-ascii.pt", b.zip({**two_linears(b), "extra": extra}), "error", "INST name that is not ASCII", None
    b = Builder()
    extra = Raw(b"Pcaf\xc3\xa9\n")  # PERSID with a non-ASCII id
    yield "r9vm-persid-not-ascii.pt", b.zip({**two_linears(b), "extra": extra}), "error", "not ASCII", None

    # ---- session 9: an instance as the only key of a dict: torch.load raises where its class
    # does not hash (SimpleNamespace, argparse.Namespace), and slice hashes only from Python 3.12 ----
    for cls, args, name in [
        (G("types", "SimpleNamespace"), (), "simplenamespace"),
        (G("argparse", "Namespace"), None, "namespace"),
        (G("builtins", "slice"), (1, 2, None), "slice"),
    ]:
        b = Builder()
        k = NewObj(cls) if args is None else Call(cls, *args)
        extra = Raw(b"}" + ops(k, 2) + ops(1, 2) + b"s")
        yield f"r9vm-{name}-key.pt", b.zip({**two_linears(b), "extra": extra}), "error", "not known to hash", None

    # ---- session 9: a legacy storage whose stored element count differs from its persistent
    # id's (torch allocates by the id and refuses the file: "storage has wrong byte size") ----
    main = {"weight": legacy_tensor("0", 4, [2, 2], [2, 1])}
    yield "r9vm-legacy-numel-mismatch.pt", legacy(main, storages=(b"\0" * 20,)), "error", "persistent id says 4", None

    # ---- states Module.__setstate__ cannot take, slot states ----
    b = Builder()
    params = od([("weight", b.p(B[0])), ("bias", b.p(B[1]))])
    top = {"model": linear(b, *A), "ema": Build(NewObj(LINEAR), (linear_state(params), None))}
    yield "r7vm-module-tuple-state.pt", b.zip(top), "error", "state", None
    b = Builder()
    ns = Build(NewObj(G("argparse", "Namespace")), (None, {"lr": 0.1}))
    yield "r7vm-slot-state.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "args": ns}), "error", "slot", None

    # ---- F13: what Python refuses to load (an AttributeError / TypeError in torch.load) ----
    b = Builder()
    ema = Build({"w": b.t([1.0] * 3)}, {"x": 1})
    yield "r7vm-build-on-dict.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "BUILD on a dict", None
    b = Builder()
    extra = Build([1, 2], {"x": 1})
    yield "r7vm-build-on-list.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "extra": extra}), "error", "BUILD on a list", None
    b = Builder()
    extra = Raw(b"\x8f(" + ops("a", 2) + b"e")  # EMPTY_SET MARK 'a' APPENDS
    yield "r7vm-appends-on-set.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "extra": extra}), "error", "APPEND to a set", None
    b = Builder()
    ema = Raw(b"}(" + s("w") + ops(b.t([1.0] * 3), 2) + ops(Call(G("builtins", "bytearray")), 2) + b"K\x01u")
    yield "r7vm-bytearray-key.pt", b.zip({"model": {"w": b.t([0.0] * 3)}, "ema": ema}), "error", "bytearray", None


# ---- what CPython's unpickler makes of the clean files, with stubs of our own making ----


class StubTensor:
    def __init__(self, vals):
        self.vals = vals


class StubModule:
    """What torch.nn.Module does on BUILD (`__setstate__` = `self.__dict__.update(state)`) and on
    attribute lookup (`__dict__` first, then `_parameters`, `_buffers`, `_modules`)."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def state_dict(self):
        out = {}
        for k, v in self.__dict__["_parameters"].items():
            out[k] = v.vals
        skip = self.__dict__.get("_non_persistent_buffers_set", set())
        for k, v in self.__dict__["_buffers"].items():
            if k not in skip:
                out[k] = v.vals
        return out


class StubOrderedDict(dict):
    """A dict subclass: Python's own dict.__new__ (ignores arguments) and dict.__init__."""


def python_reads(zip_bytes):
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(zip_bytes))
    records = {n.rsplit("/", 1)[-1]: z.read(n) for n in z.namelist() if "/data/" in n}

    def rebuild(storage, offset, size, stride, *rest):
        return StubTensor(list(storage[offset : offset + size[0]]))

    stubs = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("torch._utils", "_rebuild_parameter"): lambda data, rg, hooks: data,
        ("collections", "OrderedDict"): StubOrderedDict,
        ("torch.nn.modules.linear", "Linear"): StubModule,
        ("torch.nn.modules.container", "Sequential"): StubModule,
        ("torch", "FloatStorage"): "FloatStorage",
        ("builtins", "set"): set,
        ("builtins", "bytearray"): bytearray,
    }

    class Stubs(pickle.Unpickler):
        def find_class(self, module, name):
            return stubs[(module, name)]

        def persistent_load(self, pid):
            raw = records[pid[2]]
            return struct.unpack(f"<{len(raw) // 4}f", raw)

    data = z.read("archive/data.pkl")
    return Stubs(io.BytesIO(data)).load()


def ema_tensors(top):
    ema = top["ema"]
    if isinstance(ema, StubModule):
        return ema.state_dict()
    return {k: v.vals for k, v in ema.items()}


def record_globals(names):
    """These files' entries in python-globals.json, as generate.py records every corpus file."""
    import torchpath

    path = HERE / "python-globals.json"
    record = json.loads(path.read_text())
    for name in names:
        r = torchpath.record(HERE / "files" / name)
        r["other_readers"] = torchpath.other_readers(HERE / "files" / name)
        record[name] = r
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def main():
    out = HERE / "files"
    manifest = {}
    for name, data, expect, contains, folds_to in cases():
        (out / name).write_bytes(data)
        entry = {"expect": expect, "contains": contains or "r7vm", "needs": "review7 VM"}
        if expect == "clean":
            got = ema_tensors(python_reads(data))
            assert got == folds_to, (name, got, folds_to)
            entry["folds_to"] = folds_to
            entry["contains"] = "clean"
        manifest[name] = entry
    path = HERE / "manifest-review7-vm.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    record_globals(sorted(manifest))
    print(len(manifest), "review7 VM files")


if __name__ == "__main__":
    main()
