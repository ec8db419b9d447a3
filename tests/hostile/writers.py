"""Container writers for the hostile corpus, byte for byte under our control (fixed dates, no
random serialization ids), so the corpus is deterministic and a zip can carry what a normal
writer refuses to write: several central directories, names that collide case-insensitively."""

import io
import struct
import tarfile
import zlib

from pickleasm import dumps, legacy_tensor

DOS_DATE = 0x21  # 1980-01-01
MAGIC_PICKLE = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
PROTOCOL_PICKLE = b"\x80\x02M\xe9\x03."  # 1001


def local_header(name, data):
    n = name.encode()
    crc = zlib.crc32(data)
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, DOS_DATE, crc, len(data), len(data), len(n), 0) + n + data


def central_entry(name, data, offset):
    n = name.encode()
    crc = zlib.crc32(data)
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, DOS_DATE, crc, len(data), len(data), len(n), 0, 0, 0, 0, 0, offset
        )
        + n
    )


def end_record(count, size, offset):
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, offset, 0)


def zip_bytes(entries):
    """A stored zip of `(name, data)` entries, in order."""
    out = bytearray()
    cd = bytearray()
    for name, data in entries:
        cd += central_entry(name, data, len(out))
        out += local_header(name, data)
    off = len(out)
    return bytes(out + cd + end_record(len(entries), len(cd), off))


def torch_zip(pkl, storages=(), archive="archive"):
    """A torch zip checkpoint (data.pkl first, as torch writes it)."""
    entries = [(f"{archive}/data.pkl", pkl), (f"{archive}/byteorder", b"little")]
    entries += [(f"{archive}/data/{k}", v) for k, v in storages]
    entries += [(f"{archive}/version", b"3\n")]
    return zip_bytes(entries)


def two_central_directories(clean_entries, hostile_entries):
    """All local records, then a hostile central directory (the one the end record's offset
    names, which miniz reads), then a clean one of the same size ending right at the end record
    (where readers that trust `end - size` look)."""
    assert [n for n, _ in clean_entries] == [n for n, _ in hostile_entries]
    out = bytearray()
    offs = []
    for name, data in clean_entries + hostile_entries:
        offs.append(len(out))
        out += local_header(name, data)
    k = len(clean_entries)
    hostile_cd = b"".join(central_entry(n, d, o) for (n, d), o in zip(hostile_entries, offs[k:]))
    clean_cd = b"".join(central_entry(n, d, o) for (n, d), o in zip(clean_entries, offs[:k]))
    assert len(hostile_cd) == len(clean_cd)
    hostile_at = len(out)
    out += hostile_cd + clean_cd
    return bytes(out + end_record(k, len(clean_cd), hostile_at))


def legacy(main, keys=("0",), storages=(b"\0" * 16,), magic=MAGIC_PICKLE, proto=PROTOCOL_PICKLE, sys_info=None, keys_pickle=None):
    """The legacy pickle sequence: magic, protocol, sys_info, main object, keys, raw storages."""
    if sys_info is None:
        sys_info = dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}})
    if keys_pickle is None:
        keys_pickle = dumps(list(keys))
    out = magic + proto + sys_info + dumps(main) + keys_pickle
    for s in storages:
        out += struct.pack("<q", len(s) // 4) + s
    return out


def legacy_state_dict():
    """A clean legacy main object: one 2x2 float tensor."""
    return {"weight": legacy_tensor("0", 4, [2, 2], [2, 1])}


def tar_members(members):
    """A plain ustar archive of `(name, data)` with fixed metadata."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return b.getvalue()


def _tar_checksum(header):
    return 256 + sum(header[:148]) + sum(header[156:512])


def tar_pickle_polyglot(storages_member, main_pickle_sequence_tail):
    """Offset 0 holds the legacy magic and protocol pickles and a sys_info pickle whose BINBYTES
    swallows the rest of a valid tar header; the first tar member's data continues the pickle
    sequence (a clean checkpoint); the members `storages`, `tensors`, `pickle` follow as tar.
    torch tries tar first, so it unpickles `storages_member`; a straight pickle reader sees only
    the clean sequence."""
    pre = MAGIC_PICKLE + PROTOCOL_PICKLE + b"\x80\x02B"
    swallow = 512 - len(pre) - 4
    head = bytearray(pre + struct.pack("<I", swallow) + b"\0" * swallow)
    assert len(head) == 512
    body = b"0}." + main_pickle_sequence_tail  # sys_info: drop the bytes, push {}
    fields = [(100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (124, b"%011o\0" % len(body)), (136, b"00000000000\0")]
    for at, v in fields:
        head[at : at + len(v)] = v
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % _tar_checksum(head)
    pad = (-len(body)) % 512
    rest = tar_members(
        [("storages", storages_member), ("tensors", dumps(0)), ("pickle", dumps({"ema": None, "epoch": 1}))]
    )
    return bytes(head) + body + b"\0" * pad + rest
