#!/usr/bin/env python3
"""Hostile containers: files that torch.load reads differently from a naive reader (zip, tar and
pickle-stream decisions, FRAME handling, hidden pickles in the legacy sequence). Written from the
format descriptions (APPNOTE for zip, POSIX ustar for tar, pickletools for pickle).

`cases()` yields (file name, bytes, expect, contains) for the corpus generator to import; run
directly (python tests/hostile/gen_container.py, fixtures venv with torch) it writes the files to
tests/hostile/files/ and their answers to tests/hostile/manifest-container.json:

- "dangerous": `inspect` exits 1 naming the global;
- "error": one error line naming the file, containing `contains`, exit 2.

Nothing here unpickles anything; os.system payloads only write a marker file that the tests check.
"""

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

PAYLOAD = "echo pwned > /tmp/fuse-ema-pwned"


class Reduce:
    """Pickles as `func(*args)` without importing anything at load time here."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def os_system():
    return Reduce(os.system, (PAYLOAD,))


def zip_bytes(entries, method=zipfile.ZIP_STORED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for n, d in entries:
            # A fixed timestamp keeps the files byte-identical from run to run.
            info = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, d)
    return b.getvalue()


def clean_pkl():
    return pickle.dumps({"epoch": 1}, protocol=2)


def bad_pkl():
    return pickle.dumps({"epoch": 1, "x": os_system()}, protocol=2)


def zip_parts(entries):
    """Stored entries laid out by hand: (local headers + data, central directory records)."""
    body, cd = b"", b""
    for name, data in entries:
        n = name.encode()
        ofs = len(body)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, len(data), len(data), len(n), 0) + n + data
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, len(data), len(data), len(n), 0, 0, 0, 0, 0, ofs) + n
    return body, cd


def eocd(count, cd_size, cd_ofs, comment=b""):
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_ofs, len(comment)) + comment


def cd_record(name, size, ofs):
    n = name.encode()
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, size, size, len(n), 0, 0, 0, 0, 0, ofs) + n


def two_directories():
    """The end record points at a hostile directory (miniz reads it); a clean one of the same
    size sits right against the end record, where readers that correct offsets look."""
    clean, bad = clean_pkl(), bad_pkl()
    body, _ = zip_parts([("archive/data.pkl", clean), ("archive/version", b"3\n"), ("archive/evil.pkl", bad)])
    version_ofs = body.index(b"archive/version") - 30
    evil_ofs = body.index(b"archive/evil.pkl") - 30
    hostile = cd_record("archive/data.pkl", len(bad), evil_ofs) + cd_record("archive/version", 2, version_ofs)
    honest = cd_record("archive/data.pkl", len(clean), 0) + cd_record("archive/version", 2, version_ofs)
    assert len(hostile) == len(honest)
    return body + hostile + honest + eocd(2, len(honest), len(body))


def tar_header(name, size, kind=b"0"):
    h = bytearray(512)
    h[: len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar(members):
    out = b""
    for name, data in members:
        out += tar_header(name, len(data)) + data + b"\0" * (-len(data) % 512)
    return out + b"\0" * 1024


def legacy_tar(location):
    """A complete torch < 0.4 tar checkpoint of one float storage, whose storage record's
    location is `location` (torch unpickles it)."""
    import torch

    storages = pickle.dumps(1, protocol=2)
    storages += pickle.dumps(("0", location, torch.FloatStorage), protocol=2)
    storages += struct.pack("<q", 4) + struct.pack("<4f", 1, 2, 3, 4)
    storages += pickle.dumps([], protocol=2)
    tensors = pickle.dumps(0, protocol=2)
    main = pickle.dumps({"epoch": 3}, protocol=2)
    return tar([(b"storages", storages), (b"tensors", tensors), (b"pickle", main)])


def tar_pickle_polyglot(clean=False):
    """Block 0 is a tar header whose name field starts a pickle; the pickle's BINBYTES swallows
    the whole tar, and a clean dict follows it. tarfile (and so torch) reads the tar, whose
    `storages` member runs os.system; a pickle reader sees a clean dict."""
    import torch

    location = "cpu" if clean else os_system()
    storages = pickle.dumps(1, protocol=2) + pickle.dumps(("0", location, torch.FloatStorage), protocol=2)
    storages += struct.pack("<q", 0) + pickle.dumps([], protocol=2)
    rest = tar([(b"storages", storages), (b"tensors", pickle.dumps(0, protocol=2)), (b"pickle", clean_pkl())])
    tail = b"0" + clean_pkl()[2:]  # POP the bytes, then the clean dict (no second PROTO needed)
    # The first member is a dummy of size 0 whose name holds PROTO 2 + BINBYTES <len>.
    swallowed = 512 - 7 + len(rest)
    name = b"\x80\x02B" + struct.pack("<I", swallowed)
    assert b"\0" not in name[:3]
    head = tar_header(name, 0)
    return head + rest + tail


def legacy_sequence(sys_info_extra=None, keys=None):
    import torch

    b = io.BytesIO()
    torch.save({"w": torch.ones(2)}, b, _use_new_zipfile_serialization=False)
    data = b.getvalue()
    if sys_info_extra is None and keys is None:
        return data
    # Rebuild the sequence: magic, protocol, sys_info, main, keys, storages.
    f = io.BytesIO(data)
    starts = [0]
    for _ in range(3):
        _skip_pickle(f)
        starts.append(f.tell())
    magic, proto = data[starts[0] : starts[1]], data[starts[1] : starts[2]]
    main_start = starts[3]
    f.seek(main_start)
    _skip_pickle(f)
    keys_start = f.tell()
    _skip_pickle(f)
    storage_start = f.tell()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    if sys_info_extra is not None:
        sys_info["x"] = sys_info_extra
    key_pkl = data[keys_start:storage_start] if keys is None else pickle.dumps(keys, protocol=2)
    return magic + proto + pickle.dumps(sys_info, protocol=2) + data[main_start:keys_start] + key_pkl + data[storage_start:]


def _skip_pickle(f):
    """Advances past one pickle without unpickling it (pickletools only decodes opcodes)."""
    import pickletools

    for op, _arg, _pos in pickletools.genops(f):
        if op.name == "STOP":
            return


def torch_zip_with(pkl):
    return zip_bytes([("archive/data.pkl", pkl), ("archive/version", b"3\n")])


def npy_object(pkl):
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pkl


def cases():
    import torch

    # ---- zip: names as miniz looks them up ----
    yield "zip-case-collision.pt", zip_bytes([("base/version", b"3\n"), ("base/data.pkl", clean_pkl()), ("base/DATA.PKL", bad_pkl())]), "dangerous", "posix.system"
    yield "zip-case-collision-clean.pt", zip_bytes([("base/version", b"3\n"), ("base/data.pkl", clean_pkl()), ("base/DATA.PKL", clean_pkl())]), "error", "ambiguous"
    yield "zip-upper-data-pkl.pt", zip_bytes([("base/version", b"3\n"), ("base/DATA.PKL", bad_pkl()), ("base/good/data.pkl", clean_pkl())]), "dangerous", "posix.system"
    yield "zip-entry-outside-archive.pt", zip_bytes([("archive/data.pkl", clean_pkl()), ("archive/version", b"3\n"), ("other/data.pkl", bad_pkl())]), "dangerous", "posix.system"
    # ---- zip: directories and end records ----
    yield "zip-two-directories.pt", two_directories(), "dangerous", "posix.system"
    body, cd = zip_parts([("archive/data.pkl", clean_pkl()), ("archive/version", b"3\n")])
    yield "zip-second-end-record-in-comment.pt", body + cd + eocd(2, len(cd), len(body), b"x" * 4 + eocd(2, len(cd), len(body))), "error", "ambiguous"
    lying = bytearray(body + cd + eocd(2, len(cd), len(body)))
    struct.pack_into("<H", lying, len(lying) - 22 + 8, 1)
    struct.pack_into("<H", lying, len(lying) - 22 + 10, 1)
    yield "zip-end-record-undercounts.pt", bytes(lying), "error", "ambiguous"
    renamed = bytearray(body + cd + eocd(2, len(cd), len(body)))
    renamed[30:46] = b"archive/evil.pk_"
    yield "zip-local-name-differs.pt", bytes(renamed), "error", "ambiguous"
    # A fake local header in front: torch's zip test passes, but the first real entry is not at 0.
    fake = b"PK\x03\x04" + b"\0" * 60
    b2, cd2 = zip_parts([("archive/data.pkl", clean_pkl()), ("archive/version", b"3\n")])
    cd2 = bytearray(cd2)
    i = 0
    while (i := cd2.find(b"PK\x01\x02", i)) >= 0:
        struct.pack_into("<I", cd2, i + 42, struct.unpack_from("<I", cd2, i + 42)[0] + len(fake))
        i += 4
    yield "zip-prepended-bytes.pt", fake + b2 + bytes(cd2) + eocd(2, len(cd2), len(fake) + len(b2)), "error", "ambiguous"
    # ---- zip: data.pkl ----
    yield "zip-data-pkl-trailing-pickle.pt", torch_zip_with(clean_pkl() + bad_pkl()), "dangerous", "posix.system"
    frame_body = b"\x8c\x05posix\x8c\x06system\x93"
    framed = b"\x80\x04\x95" + struct.pack("<Q", 10) + frame_body + b"\x8c\x02id\x85R0}."
    yield "frame-crossing-read.pt", torch_zip_with(framed), "error", "ambiguous"
    # BINBYTES whose length reaches past the frame: a frame-aware reader fails, a straight one
    # swallows the os.system call inside the bytes.
    hidden = b"\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R0"
    inner = b"C" + bytes([len(hidden)]) + hidden
    overrun = b"\x80\x04\x95" + struct.pack("<Q", 8) + inner + b"0}."
    yield "frame-binbytes-overrun.pt", torch_zip_with(overrun), "error", "ambiguous"
    yield "frame-inside-frame.pkl", b"\x80\x04\x95" + struct.pack("<Q", 12) + b"N0\x95" + struct.pack("<Q", 2) + b"N.", "error", "ambiguous"
    # ---- TorchScript ----
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    yield "torchscript.pt", buf.getvalue(), "dangerous", "torch.jit._pickle.build_intlist"
    # ---- legacy tar ----
    yield "tar-storages-os-system.pt", legacy_tar(os_system()), "dangerous", "posix.system"
    yield "tar-pickle-polyglot.pt", tar_pickle_polyglot(), "dangerous", "posix.system"
    yield "tar-pickle-polyglot-clean.pt", tar_pickle_polyglot(clean=True), "error", "ambiguous"
    yield "tar-empty-block.pt", b"\0" * 2048, "error", "storages"
    dup = tar([(b"storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)), (b"storages", b"")])
    yield "tar-duplicate-member.pt", dup, "error", "ambiguous"
    # ---- legacy pickle sequence: every pickle is unpickled by torch ----
    yield "legacy-sys-info-os-system.pt", legacy_sequence(sys_info_extra=os_system()), "dangerous", "posix.system"
    yield "legacy-keys-os-system.pt", legacy_sequence(keys=os_system()), "dangerous", "posix.system"
    yield "legacy-trailing-pickle.pt", legacy_sequence() + b"cos\nsystem\n(S'id'\ntR.", "dangerous", "os.system"
    yield "legacy-trailing-bytes.pt", legacy_sequence() + b"junk", "error", "ambiguous"
    # ---- plain pickles ----
    yield "pickle-starts-with-none.pkl", b"N0cos\nsystem\n(S'id'\ntR.", "dangerous", "os.system"
    yield "pickle-broken-after-global.pkl", b"cos\nsystem\n(S'id'\ntR\xff", "dangerous", "os.system"
    yield "pickle-second-pickle-os-system.pkl", clean_pkl() + b"cos\nsystem\n(S'id'\ntR.", "dangerous", "os.system"
    yield "pickle-trailing-global-then-garbage.pkl", clean_pkl() + b"cos\nsystem\n(S'id'\ntR\xff", "dangerous", "os.system"
    # ---- other containers other loaders unpickle ----
    yield "zip-plain-pickle-member.zip", zip_bytes([("model.pkl", bad_pkl())]), "dangerous", "posix.system"
    yield "npz-object-array.npz", zip_bytes([("arr_0.npy", npy_object(bad_pkl()))]), "dangerous", "posix.system"
    yield "npy-object-array.npy", npy_object(bad_pkl()), "dangerous", "posix.system"


def main():
    out = Path(__file__).resolve().parent / "files"
    out.mkdir(exist_ok=True)
    manifest = {}
    for name, data, expect, contains in cases():
        assert contains, name
        (out / name).write_bytes(data)
        manifest[name] = {"expect": expect, "contains": contains}
    path = out.parent / "manifest-container.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(len(manifest), "container files")


if __name__ == "__main__":
    main()
