#!/usr/bin/env python3
"""Hostile files that attack resources rather than trust: unbounded recursion, quadratic work,
copies that escape the memory budget, and decompression bombs (issue 13, "crashes, hangs and
memory"). Every one must end with exit 0/1/2 within 10 s and 512 MB RSS (tests/limits.rs).

Cases that cannot be committed as files (FIFOs, symbolic links to /dev/zero, ONNX external data
of hundreds of megabytes) are built at test time by tests/limits.rs.

Every pickle here is written opcode by opcode; nothing is pickled from live objects and nothing is
ever unpickled. Run from the repository root: python tests/hostile/gen_resources.py
(tests/hostile/generate.py imports `generate(add)` from here.)

manifest-resources.json: {"file": {"expect": "error" | "dangerous" | "clean", "contains": "..."}};
for "error" `contains` is part of the one error line (exit 2), for "clean" part of `inspect`'s
output (exit 0).
"""

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent / "files"
MANIFEST = Path(__file__).resolve().parent / "manifest-resources.json"

# ---- pickle opcodes (protocol 2 unless said) ----
PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE3 = b"\x87"
EMPTY_LIST = b"]"
EMPTY_DICT = b"}"
EMPTY_TUPLE = b")"
APPEND = b"a"
APPENDS = b"e"
SETITEM = b"s"
SETITEMS = b"u"
REDUCE = b"R"
POP = b"0"
NONE = b"N"
BINPERSID = b"Q"


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def long4(value_bytes):
    return b"\x8b" + struct.pack("<I", len(value_bytes)) + value_bytes


def i64(v):
    return b"\x8a\x08" + struct.pack("<q", v)


def rebuild_self_reference():
    """`_rebuild_from_type_v2` whose argument list contains itself: L = [f, Parameter]; L.append(L);
    f(*L). Recursed without end (stack overflow, exit 134) before the nesting bound."""
    p = PROTO2
    p += glob("torch._tensor", "_rebuild_from_type_v2") + put(0)
    p += EMPTY_LIST + put(1)  # L
    p += MARK + get(0) + glob("torch.nn.parameter", "Parameter") + APPENDS
    p += get(1) + APPEND  # L.append(L)
    p += POP  # L off the stack; call f with L as its argument list
    p += get(0) + get(1) + REDUCE
    return p + STOP


def rebuild_chain(depth):
    """A `depth`-deep chain: f(f, T, (f, T, (… (list, T, ((),)) …))). Built with TUPLE3 (no MARK,
    so the MARK nesting limit does not stop it). 200 000 levels overflowed the stack."""
    p = PROTO2
    p += glob("torch._tensor", "_rebuild_from_type_v2") + put(0)
    p += glob("torch.nn.parameter", "Parameter") + put(1)
    p += glob("builtins", "list") + put(2)
    p += POP + POP + POP
    p += get(0)  # the callable of the outer REDUCE
    p += (get(0) + get(1)) * depth
    p += get(2) + get(1) + EMPTY_TUPLE + TUPLE1 + TUPLE3  # innermost: (list, T, ((),))
    p += TUPLE3 * depth
    # The outer REDUCE's argument tuple is the outermost (f, T, args) triple.
    p += REDUCE
    return p + STOP


def many_long4(count, size):
    """`count` LONG4 integers of `size` bytes each in a list: decimal conversion was quadratic
    (250 x 4 KiB took 29 s)."""
    body = bytes((i * 131 + 7) & 0xFF for i in range(size - 1)) + b"\x01"
    p = PROTO2 + EMPTY_LIST + MARK
    p += long4(body) * count
    return p + APPENDS + STOP


def list_copies(items, copies, via):
    """A list of `items` Nones, then `copies` copies of it made by a reconstructor; `via` is
    "list" (builtins.list(L)) or "rebuild" (_rebuild_from_type_v2(unknown, T, L): the arguments
    copied into an inert object). 60 copies of 1 M items reached 1.41 GB RSS."""
    p = PROTO2 + EMPTY_LIST + put(0) + MARK + NONE * items + APPENDS
    p += POP + EMPTY_LIST + put(1)  # the result list, holding every copy
    if via == "list":
        p += glob("builtins", "list") + put(2) + POP
        one = get(2) + get(0) + TUPLE1 + REDUCE
    else:
        p += glob("torch._tensor", "_rebuild_from_type_v2") + put(2) + POP
        p += glob("mypkg.ops", "build") + put(3) + POP
        p += glob("torch", "Tensor") + put(4) + POP
        one = get(2) + MARK + get(3) + get(4) + get(0) + EMPTY_DICT + TUPLE + REDUCE
    p += MARK + one * copies + APPENDS
    return p + STOP


def write_zeros_deflated(z, name, nbytes, head=b"", tail=b""):
    """Adds entry `name` to zip `z`: `head`, `nbytes` zero bytes, `tail`, deflated in a stream
    (never holding the zeros)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = bytes(1 << 20)
    with z.open(info, "w", force_zip64=nbytes > 0x7FFFFFFF) as f:
        f.write(head)
        left = nbytes
        while left:
            k = min(left, len(chunk))
            f.write(chunk[:k])
            left -= k
        f.write(tail)


def rebuild_tensor(key, numel, shape):
    """Pushes `_rebuild_tensor_v2(storage(key, numel), 0, shape, contiguous stride, False, {})`,
    float32."""
    stride = []
    acc = 1
    for d in reversed(shape):
        stride.insert(0, acc)
        acc *= d
    p = glob("torch._utils", "_rebuild_tensor_v2") + MARK
    p += MARK + s("storage") + glob("torch", "FloatStorage") + s(key) + s("cpu") + i64(numel) + TUPLE + BINPERSID
    p += i64(0)
    p += MARK + b"".join(i64(d) for d in shape) + TUPLE
    p += MARK + b"".join(i64(d) for d in stride) + TUPLE
    return p + b"\x89" + EMPTY_DICT + TUPLE + REDUCE


def deflate_bomb(nbytes):
    """A re-zipped timm-style checkpoint whose weight storage is `nbytes` of deflated zeros (1 GiB
    in ~1 MB): storages were decompressed eagerly at about twice their size (2.06 GB RSS on
    inspect). `fold` reads the weight, as EMA and raw model share it."""
    numel = nbytes // 4
    p = PROTO2 + EMPTY_DICT + MARK
    p += s("state_dict") + EMPTY_DICT + s("weight") + rebuild_tensor("0", numel, [numel]) + put(0) + SETITEM
    p += s("state_dict_ema") + EMPTY_DICT + s("weight") + get(0) + SETITEM
    p += s("epoch") + rebuild_tensor("1", 1, [])
    pkl = p + SETITEMS + STOP
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl, zipfile.ZIP_STORED)
        z.writestr(zipfile.ZipInfo("archive/byteorder"), b"little")
        write_zeros_deflated(z, "archive/data/0", nbytes)
        z.writestr(zipfile.ZipInfo("archive/data/1"), struct.pack("<f", 7.0), zipfile.ZIP_DEFLATED)
        z.writestr(zipfile.ZipInfo("archive/version"), b"3\n")
    return b.getvalue()


def pickle_bomb(nbytes):
    """A re-zipped torch file whose data.pkl itself deflates to `nbytes` (a BINBYTES8 of zeros)."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        head = PROTO2 + b"\x8e" + struct.pack("<Q", nbytes)
        write_zeros_deflated(z, "archive/data.pkl", nbytes, head, STOP)
        z.writestr(zipfile.ZipInfo("archive/version"), b"3\n")
    return b.getvalue()


def scalar_tensor():
    """Pushes a one-element float tensor on storage '0' (see `one_scalar_zip`)."""
    p = glob("torch._utils", "_rebuild_tensor_v2") + MARK
    p += MARK + s("storage") + glob("torch", "FloatStorage") + s("0") + s("cpu") + i64(1) + TUPLE + BINPERSID
    return p + i64(0) + MARK + TUPLE + MARK + TUPLE + b"\x89" + EMPTY_DICT + TUPLE + REDUCE


def one_scalar_zip(pkl):
    """A torch zip of `pkl` with one 4-byte storage '0'."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl)
        z.writestr(zipfile.ZipInfo("archive/byteorder"), b"little")
        z.writestr(zipfile.ZipInfo("archive/data/0"), struct.pack("<f", 1.0))
        z.writestr(zipfile.ZipInfo("archive/version"), b"3\n")
    return b.getvalue()


def shared_modules(depth, name_len):
    """A module tree where each level holds the level below twice, under names of `name_len`
    characters: flattening visits 2**depth modules and builds names `depth * name_len` long, so a
    few kilobytes ask for gigabytes of state-dict names."""
    p = PROTO2
    p += glob("torch.nn.modules.module", "Module") + put(0) + POP
    # One tensor shared by every module.
    p += scalar_tensor() + put(1) + POP
    memo = 2
    prev = None
    for level in range(depth):
        p += get(0) + EMPTY_TUPLE + b"\x81"  # NEWOBJ Module()
        p += EMPTY_DICT + MARK
        p += s("_parameters") + EMPTY_DICT + s("w") + get(1) + SETITEM
        p += s("_buffers") + EMPTY_DICT
        p += s("_modules") + EMPTY_DICT
        if prev is not None:
            p += MARK
            for c in "ab":
                p += s(c * name_len) + get(prev)
            p += SETITEMS
        p += SETITEMS + b"b"  # BUILD
        p += put(memo) + POP
        prev = memo
        memo += 1
    p += EMPTY_DICT + s("model") + get(prev) + SETITEM
    return one_scalar_zip(p + STOP)


def shared_dict_many_keys(tensors, keys, tensor_dict=True):
    """A tensor dict of `tensors` entries held under `keys` keys of the root: every per-entry walk
    (classification, statistics, weight-set discovery) repeated per key multiplied the work. With
    `tensor_dict=False` the dict also holds a list, so it is walked into rather than copied."""
    p = PROTO2
    p += scalar_tensor() + put(0) + POP
    p += EMPTY_DICT + put(1) + MARK
    for i in range(tensors):
        p += s(f"t{i}") + get(0)
    if not tensor_dict:
        p += s("history") + EMPTY_LIST
    p += SETITEMS + POP
    p += EMPTY_DICT + MARK
    for i in range(keys):
        p += s(f"k{i}") + get(1)
    p += SETITEMS
    return one_scalar_zip(p + STOP)


def global_name_copies(name_len, copies):
    """STACK_GLOBAL `copies` times on one memoised module name of `name_len` characters: each
    global copied the name (1 MB x 2000 reached 1.9 GB)."""
    p = PROTO2 + s("m" * name_len) + put(0) + POP + s("x") + put(1) + POP
    p += EMPTY_LIST + MARK + (get(0) + get(1) + b"\x93") * copies + APPENDS
    return p + STOP


def npz_bomb(nbytes):
    """A golden `.npz` (`verify --golden`) whose one float32 array is `nbytes` of deflated zeros."""
    n = (nbytes - 128) // 4
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % n).ljust(117) + "\n"
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
        write_zeros_deflated(z, "images.npy", 4 * n, head)
    return b.getvalue()


def generate(add):
    """Writes every file through `add(name, data, expect, contains)`."""
    add("rebuild-self-reference.pkl", rebuild_self_reference(), "dangerous", "torch._tensor._rebuild_from_type_v2")
    add("rebuild-chain-30k.pkl", rebuild_chain(30_000), "dangerous", "torch._tensor._rebuild_from_type_v2")
    add("long4-250x4k.pkl", many_long4(250, 4096), "clean", "list")
    add("list-copies-600k-x60.pkl", list_copies(600_000, 60, "list"), "error", "decoded objects")
    add("rebuild-copies-600k-x60.pkl", list_copies(600_000, 60, "rebuild"), "dangerous", "mypkg.ops.build")
    add("deflate-bomb-512m.pt", deflate_bomb(512 << 20), "clean", "compressed")
    add("pickle-deflate-bomb.pt", pickle_bomb(512 << 20), "error", "decompression bomb")
    add("global-name-copies.pkl", global_name_copies(500_000, 2000), "dangerous", "mmmmmmmmmmmmmmmm")
    add("shared-modules-long-names.pt", shared_modules(19, 4000), "error", "names and entries")
    add("shared-dict-1000-keys.pt", shared_dict_many_keys(20_000, 1000), "error", "names and entries")
    add("shared-object-1000-keys.pt", shared_dict_many_keys(20_000, 1000, False), "error", "objects visited")


def main():
    OUT.mkdir(exist_ok=True)
    manifest = {}

    def add(name, data, expect, contains):
        (OUT / name).write_bytes(data)
        manifest[name] = {"expect": expect, "contains": contains}

    generate(add)
    # Not a checkpoint, so outside the manifest: tests/limits.rs reads it as a golden file.
    (OUT / "npz-bomb.npz").write_bytes(npz_bomb(256 << 20))
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum((OUT / n).stat().st_size for n in manifest)
    print(f"{len(manifest)} files, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
