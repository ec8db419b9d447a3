"""What `torch.load(weights_only=False)` would unpickle from a file, found WITHOUT running it.

`record(path)` follows torch's decision path (torch/serialization.py, torch 2.x):

1. the first 4 bytes are `PK\\x03\\x04` -> zip, read the way torch's C++ reader (miniz) reads it:
   the end-of-central-directory record nearest the end, the central directory it points at, the
   archive name from the first central entry (text before its first '/'), records looked up
   case-insensitively; `<archive>/data.pkl` unpickled from an in-memory BytesIO;
2. otherwise `tarfile.open(mode="r:")`; when that succeeds, members `storages` (count pickle, then
   storage_views), `tensors` (count pickle) and `pickle` are unpickled;
3. otherwise the pickle sequence from offset 0: magic, protocol, sys_info, main object, storage
   keys, each checked as torch checks it before going on.

Every pickle is read by CPython's C unpickler (a subclass of `pickle.Unpickler`, so FRAME
behaviour is CPython's) whose `find_class` RECORDS `(module, name)` and returns an inert stub class
of our own: nothing is imported, nothing from the file is called. Stubs are types (NEWOBJ needs a
type), calling a stub or an instance gives another instance, BUILD is ignored, so the unpickler
runs to the end and later globals are seen too. Because stubs stand in for real results, a
payload's return value differs from the real one; where torch would branch on such a value
(a storage count that is not an int) recording stops there, and the record says so.

The recorded name is the one Python 3 imports: torch's `torch.tensor` -> `torch._tensor`
remapping, and `_compat_pickle` for protocol < 3 pickles; a dotted `name` is kept dotted
(`module.a.b` is resolved by attribute lookups)."""

import _compat_pickle
import io
import pickle
import struct
import tarfile
import zlib

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class _Stub:
    """An inert stand-in for anything a pickle names or builds."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __reduce__(self):
        raise TypeError("stub")

    # Containers the pickle may fill through APPENDS / SETITEMS on a stub.
    def append(self, x):
        pass

    def extend(self, xs):
        pass

    def __setitem__(self, k, v):
        pass


def python3_name(module, name, proto):
    """`module.name` as CPython's find_class imports it for a pickle of protocol `proto`."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Recorder(pickle.Unpickler):
    def __init__(self, f, seen, proto, torch_names):
        super().__init__(f)
        self.seen, self.proto, self.torch_names = seen, proto, torch_names

    def find_class(self, module, name):
        if self.torch_names and module == "torch.tensor":
            module = "torch._tensor"
        full = python3_name(module, name, self.proto)
        if full not in self.seen:
            self.seen.append(full)
        return type("Stub_" + name.replace(".", "_"), (_Stub,), {})

    def persistent_load(self, pid):
        return _Stub()


def _proto_of(data):
    return data[1] if len(data) >= 2 and data[0] == 0x80 else 0


def unpickle_one(f, seen, torch_names=False):
    """Unpickles one pickle from file object `f` with the recording unpickler."""
    pos = f.tell()
    head = f.read(2)
    f.seek(pos)
    return _Recorder(f, seen, _proto_of(head), torch_names).load()


# ---- zip as miniz reads it ----


def _eocd(data):
    i = data.rfind(b"PK\x05\x06")
    if i < 0:
        raise ValueError("no end of central directory")
    count, size, offset = struct.unpack_from("<HII", data, i + 10)
    return count, offset


def zip_records(data):
    """Central-directory entries miniz would list: `(name, local header offset, method, csize)`."""
    count, offset = _eocd(data)
    out = []
    p = offset
    for _ in range(count):
        if data[p : p + 4] != b"PK\x01\x02":
            raise ValueError("bad central directory")
        method = struct.unpack_from("<H", data, p + 10)[0]
        csize = struct.unpack_from("<I", data, p + 20)[0]
        nlen, xlen, clen = struct.unpack_from("<HHH", data, p + 28)
        local = struct.unpack_from("<I", data, p + 42)[0]
        name = data[p + 46 : p + 46 + nlen].decode("utf-8", "surrogateescape")
        out.append((name, local, method, csize))
        p += 46 + nlen + xlen + clen
    return out


def zip_read(data, rec):
    """The bytes of one record, through its local header."""
    name, local, method, csize = rec
    nlen, xlen = struct.unpack_from("<HH", data, local + 26)
    start = local + 30 + nlen + xlen
    raw = data[start : start + csize]
    return raw if method == 0 else zlib.decompressobj(-15).decompress(raw)


def zip_locate(records, name):
    """miniz's mz_zip_reader_locate_file without the case-sensitive flag."""
    for r in records:
        if r[0].lower() == name.lower():
            return r
    return None


# ---- the three paths ----


def record(path):
    """`{"path": ..., "globals": [...], "note": ...}` for the file at `path`."""
    data = open(path, "rb").read()
    seen = []
    note = ""
    if data[:4] == b"PK\x03\x04":
        kind = "zip"
        try:
            recs = zip_records(data)
            first = recs[0][0] if recs else ""
            if "/" not in first:
                note = "torch refuses: first record is not in a folder"
            else:
                archive = first.split("/", 1)[0]
                if not zip_locate(recs, f"{archive}/version") and not zip_locate(recs, f"{archive}/.data/version"):
                    note = "torch refuses: no version record"
                elif zip_locate(recs, f"{archive}/constants.pkl"):
                    note = "torchscript: handed to torch.jit.load"
                else:
                    rec = zip_locate(recs, f"{archive}/data.pkl")
                    if rec is None:
                        note = "torch refuses: no data.pkl"
                    else:
                        unpickle_one(io.BytesIO(zip_read(data, rec)), seen, torch_names=True)
        except Exception as e:  # noqa: BLE001 - a record of where Python stopped
            note = note or f"stopped: {type(e).__name__}: {e}"
        return {"path": kind, "globals": seen, "note": note}
    try:
        tar = tarfile.open(path, mode="r:")
    except tarfile.TarError:
        tar = None
    except Exception as e:  # noqa: BLE001
        return {"path": "tar", "globals": seen, "note": f"stopped: {type(e).__name__}: {e}"}
    if tar is not None:
        note = _record_tar(tar, seen)
        return {"path": "tar", "globals": seen, "note": note}
    with open(path, "rb") as f:
        try:
            magic = unpickle_one(f, seen)
            if magic != MAGIC:
                return {"path": "pickle-sequence", "globals": seen, "note": "stops after the magic pickle"}
            if unpickle_one(f, seen) != PROTOCOL_VERSION:
                return {"path": "pickle-sequence", "globals": seen, "note": "stops after the protocol pickle"}
            unpickle_one(f, seen)  # sys_info
            unpickle_one(f, seen, torch_names=True)  # main object
            unpickle_one(f, seen)  # storage keys
        except Exception as e:  # noqa: BLE001
            note = f"stopped: {type(e).__name__}: {e}"
    return {"path": "pickle-sequence", "globals": seen, "note": note}


def _record_tar(tar, seen):
    try:
        f = tar.extractfile("storages")
        n = unpickle_one(f, seen)
        if not isinstance(n, int):
            return "stops at the storage count (a stub stands in for the payload's result)"
        if n != 0:
            return "storages present: raw storage bytes not followed"
        unpickle_one(f, seen)  # storage_views
        f = tar.extractfile("tensors")
        n = unpickle_one(f, seen)
        if not isinstance(n, int) or n != 0:
            return "stops at the tensor count"
        unpickle_one(tar.extractfile("pickle"), seen, torch_names=True)
    except Exception as e:  # noqa: BLE001
        return f"stopped: {type(e).__name__}: {e}"
    return ""


def other_readers(path):
    """Globals in pickles other loaders would run: every `.pkl`-like zip member (pickle.load on a
    member, np.load) and the header-less pickle of an object `.npy`."""
    data = open(path, "rb").read()
    seen = []
    if data[:6] == b"\x93NUMPY":
        major = data[6]
        hlen = struct.unpack_from("<H" if major == 1 else "<I", data, 8)[0]
        start = 10 + hlen if major == 1 else 12 + hlen
        try:
            unpickle_one(io.BytesIO(data[start:]), seen)
        except Exception:  # noqa: BLE001
            pass
    elif data[:4] == b"PK\x03\x04":
        try:
            for rec in zip_records(data):
                body = zip_read(data, rec)
                if body[:1] == b"\x80" or rec[0].endswith((".pkl", ".npy")):
                    try:
                        if body[:6] == b"\x93NUMPY":
                            continue
                        unpickle_one(io.BytesIO(body), seen)
                    except Exception:  # noqa: BLE001
                        pass
        except Exception:  # noqa: BLE001
            pass
    return seen
