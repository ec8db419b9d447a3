#!/usr/bin/env python3
"""Write the hostile corpus: files that try to run code, lie about sizes, nest without end, or are
not checkpoints at all. `manifest.json` says what fuse-ema must answer for each:

- "dangerous": `inspect` exits 1 naming the global (and nothing runs);
- "not-allowed": `inspect` and `inspect --strict` exit 1 naming it as NOT ALLOWED;
- "error": one error line naming the file, containing `contains`, exit 2.

Run from the repository root with the fixtures venv (torch 2.15): python tests/hostile/generate.py
Huge inputs (memo bombs with millions of references, 30 M opcodes) are built by the tests
themselves (tests/bad_input.rs) rather than committed."""

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "files"
OUT.mkdir(exist_ok=True)
manifest = {}


def add(name, data, expect, contains=""):
    (OUT / name).write_bytes(data)
    manifest[name] = {"expect": expect, "contains": contains}


def reduce_obj(func, args):
    class R:
        def __reduce__(self):
            return (func, args)

    return R()


def tsave(obj, **kw):
    b = io.BytesIO()
    torch.save(obj, b, **kw)
    return b.getvalue()


sd = {"weight": torch.ones(2, 2)}
import builtins, runpy, subprocess, webbrowser, importlib, shutil, socket  # noqa: E401

# ---- pickles that would run code under torch.load(weights_only=False) ----
add("os-system.pt", tsave({"state_dict": sd, "x": reduce_obj(os.system, ("echo pwned > /tmp/fuse-ema-pwned",))}), "dangerous", "posix.system")
add("builtins-eval.pt", tsave({"state_dict": sd, "x": reduce_obj(builtins.eval, ("__import__('os').system('id')",))}), "dangerous", "builtins.eval")
add("builtins-exec.pt", tsave({"x": reduce_obj(builtins.exec, ("import os",))}), "dangerous", "builtins.exec")
add("subprocess-popen.pt", tsave({"x": reduce_obj(subprocess.Popen, (["id"],))}), "dangerous", "subprocess.Popen")
add("runpy-run-code.pt", tsave({"x": reduce_obj(runpy._run_code, ("print(1)", {}))}), "dangerous", "runpy._run_code")
add("torch-load.pt", tsave({"x": reduce_obj(torch.load, ("/tmp/other.pt",))}), "dangerous", "torch.serialization.load")
add("getattr-gadget.pt", tsave({"x": reduce_obj(builtins.getattr, (reduce_obj(importlib.import_module, ("os",)), "system"))}), "dangerous", "builtins.getattr")
add("webbrowser-open.pkl", pickle.dumps(reduce_obj(webbrowser.open, ("http://example.invalid",)), protocol=4), "dangerous", "webbrowser.open")
add("importlib-import.pkl", pickle.dumps(reduce_obj(importlib.import_module, ("os",)), protocol=2), "dangerous", "importlib.import_module")
add("shutil-rmtree.pkl", pickle.dumps(reduce_obj(shutil.rmtree, ("/nonexistent",)), protocol=3), "dangerous", "shutil.rmtree")
add("socket-connect.pkl", pickle.dumps(reduce_obj(socket.create_connection, (("127.0.0.1", 9),)), protocol=5), "dangerous", "socket.create_connection")
# Protocol 0 text form, written by hand: cos / system / (S'id' / tR.
add("protocol0-os-system.pkl", b"cos\nsystem\n(S'id'\ntR.", "dangerous", "os.system")
add("inst-subprocess.pkl", b"(S'id'\nisubprocess\ncheck_output\n.", "dangerous", "subprocess.check_output")


class Innocent:
    pass


Innocent.__module__ = "mypkg.models"
import sys, types  # noqa: E401,E402

sys.modules["mypkg"] = types.ModuleType("mypkg")
sys.modules["mypkg.models"] = types.ModuleType("mypkg.models")
sys.modules["mypkg.models"].Innocent = Innocent
add("unknown-class.pt", tsave({"state_dict": sd, "cfg": Innocent()}), "not-allowed", "mypkg.models.Innocent")

# ---- zip containers ----
good = tsave(sd)
add("truncated-local-header.pt", good[:20], "error", "zip")
add("truncated-in-data.pt", good[: len(good) // 2], "error", "zip")
cd = good.rfind(b"PK\x01\x02")
add("truncated-central-directory.pt", good[: cd + 30], "error", "zip")
add("empty-zip.pt", b"PK\x05\x06" + b"\x00" * 18, "error", "data.pkl")
eocd = good.rfind(b"PK\x05\x06")
lying = bytearray(good)
struct.pack_into("<I", lying, eocd + 12, 10_000_000)  # central directory size
add("lying-directory-size.pt", bytes(lying), "error", "zip")
lying = bytearray(good)
first_cd = good.find(b"PK\x01\x02")
struct.pack_into("<I", lying, first_cd + 42, 0x7FFF0000)  # local header offset
add("lying-local-offset.pt", bytes(lying), "error", "zip")
lying = bytearray(good)
struct.pack_into("<I", lying, first_cd + 20, 0x7FFFFFFF)  # compressed size
add("lying-compressed-size.pt", bytes(lying), "error", "zip")


def zip_of(entries, method=zipfile.ZIP_STORED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for n, d in entries:
            z.writestr(n, d)
    return b.getvalue()


src = zipfile.ZipFile(io.BytesIO(good))
entries = [(n, src.read(n)) for n in src.namelist()]
bomb = zip_of([(n, d) for n, d in entries] + [("archive/data/9", b"\x00" * 5_000_000)], zipfile.ZIP_DEFLATED)
# Make the bomb entry claim it decompresses to 16 bytes.
bomb = bytearray(bomb)
i = bomb.rfind(b"archive/data/9")  # central directory copy of the name
cd_hdr = bomb.rfind(b"PK\x01\x02", 0, i)
struct.pack_into("<I", bomb, cd_hdr + 24, 16)
pkl_name = [n for n, _ in entries if n.endswith("data.pkl")][0]
pkl = dict(entries)[pkl_name]
# Point the first storage at the bomb: rename key '0' references to '9' in data.pkl.
pkl9 = pkl.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x009", 1)
bomb_entries = [(n, pkl9 if n == pkl_name else d) for n, d in entries] + [("archive/data/9", b"\x00" * 5_000_000)]
bz = bytearray(zip_of(bomb_entries, zipfile.ZIP_DEFLATED))
j = bz.rfind(b"archive/data/9")
hdr = bz.rfind(b"PK\x01\x02", 0, j)
struct.pack_into("<I", bz, hdr + 24, 16)
add("zip-bomb.pt", bytes(bz), "error", "")
dup = zip_of(entries + [(entries[-1][0], entries[-1][1])])
add("duplicate-entries.pt", dup, "error", "zip")
add("missing-storage.pt", zip_of([(n, d) for n, d in entries if "/data/" not in n]), "error", "storage")
two = zip_of(entries + [("other/data.pkl", pkl)])
add("two-records.pt", two, "error", "data.pkl")

# ---- tensors that do not fit their storages ----
def tensor_pickle(numel, offset, shape, stride, key="0"):
    def i64(v):
        return b"\x8a\x08" + struct.pack("<q", v)

    def s(t):
        t = t.encode()
        return b"X" + struct.pack("<I", len(t)) + t

    p = b"\x80\x02}(" + s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
    p += s("storage") + b"ctorch\nFloatStorage\n" + s(key) + s("cpu") + i64(numel) + b"tQ" + i64(offset)
    p += b"(" + b"".join(i64(d) for d in shape) + b"t(" + b"".join(i64(d) for d in stride) + b"t"
    p += b"\x89ccollections\nOrderedDict\n)RtRu."
    return p


def torch_zip(p, storages):
    return zip_of([("archive/data.pkl", p), ("archive/version", b"3\n")] + [(f"archive/data/{k}", v) for k, v in storages])


add("storage-out-of-bounds.pt", torch_zip(tensor_pickle(4, 3, [2, 2], [2, 1]), [("0", b"\0" * 16)]), "error", "reaches element")
add("storage-smaller-than-declared.pt", torch_zip(tensor_pickle(1000, 0, [1000], [1]), [("0", b"\0" * 16)]), "error", "needs 4000 bytes")
add("negative-stride.pt", torch_zip(tensor_pickle(4, 0, [2, 2], [-1, 1]), [("0", b"\0" * 16)]), "error", "negative")
add("huge-stride.pt", torch_zip(tensor_pickle(4, 0, [2, 2], [1 << 60, 1]), [("0", b"\0" * 16)]), "error", "")
add("shape-overflow.pt", torch_zip(tensor_pickle(4, 0, [1 << 40, 1 << 40], [0, 0]), [("0", b"\0" * 16)]), "error", "overflows")
add("numel-overflow.pt", torch_zip(tensor_pickle((1 << 63) - 1, 0, [1], [1]), [("0", b"\0" * 16)]), "error", "storage '0'")
ov = zip_of([("archive/data.pkl", tensor_pickle(4, 0, [4], [1])), ("archive/data/0", b"\0" * 16)])

# ---- pickle structure ----
add("deep-nesting.pkl", b"\x80\x02" + b"(" * 200_000 + b".", "error", "nesting deeper")
add("unknown-opcode.pkl", b"\x80\x02}\xff.", "error", "unknown opcode")
add("huge-length-claim.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc.", "error", "truncated")
add("persistent-id-in-pickle.pkl", b"\x80\x02X\x01\x00\x00\x00aQ.", "error", "persistent id")
add("stack-underflow.pkl", b"\x80\x02R.", "error", "underflow")
add("memo-missing.pkl", b"\x80\x02h\x07.", "error", "memo key 7")

# ---- legacy format ----
legacy = bytearray(tsave(sd, _use_new_zipfile_serialization=False))
keys = legacy.find(b"\x80\x02]")  # the storage key list is the only pickle that is a list
assert keys > 0
end = legacy.find(b".", keys + 3) + 1  # keys are digits: the first STOP ends the list pickle
struct.pack_into("<q", legacy, end, 1 << 40)
add("legacy-lying-numel.pt", bytes(legacy), "error", "claims")
add("legacy-truncated.pt", bytes(legacy[: end + 4]), "error", "")

# ---- safetensors ----
def st(header, data):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


add("st-header-claims-100MB.safetensors", struct.pack("<Q", 100_000_000) + b"{}", "error", "safetensors")
add("st-header-huge.safetensors", struct.pack("<Q", 1 << 63) + b"{}", "error", "safetensors")
add("st-overlap.safetensors", st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24), "error", "safetensors")
add("st-shape-mismatch.safetensors", st({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, b"\0" * 16), "error", "safetensors")
add("st-not-json.safetensors", struct.pack("<Q", 8) + b"{nojson}", "error", "safetensors")
idx = OUT / "st-index-escape"
idx.mkdir(exist_ok=True)
(idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../secret.safetensors"}}))
manifest["st-index-escape/model.safetensors.index.json"] = {"expect": "error", "contains": "outside"}

# ---- not checkpoints ----
add("empty.pt", b"", "error", "empty")
add("text.pt", b"just some text\n", "error", "not a checkpoint")
add("random.pt", bytes((i * 7919) % 251 for i in range(4096)), "error", "not a checkpoint")
add("png-image.pt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "error", "not a checkpoint")

(OUT.parent / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
print(len(manifest), "hostile files")
