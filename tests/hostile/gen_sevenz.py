#!/usr/bin/env python3
"""7z archives holding pickles (picklescan's public samples include one). torch.load cannot read
7z, but a scanner is asked about such files: fuse-ema judges the pickle members and refuses the
archive, exit 1 when a member names a disallowed global, else exit 2.

Needs py7zr (1.0.0; not in fixtures/requirements.txt: `pip install py7zr==1.0.0` into any venv).
Pickles are written opcode by opcode; nothing is unpickled. Run from the repository root:
python tests/hostile/gen_sevenz.py  (tests/hostile/generate.py runs it when py7zr is present).

manifest-sevenz.json: {"file": {"expect": "error" | "dangerous", "contains": "..."}}.
"""

import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "files"
MANIFEST = HERE / "manifest-sevenz.json"

# `{"x": posix.system("id")}` at protocol 2, by opcodes.
HOSTILE = b"\x80\x02}X\x01\x00\x00\x00xcposix\nsystem\nX\x02\x00\x00\x00id\x85Rs."
# `{"w": 1}`: nothing but a dict.
CLEAN = b"\x80\x02}X\x01\x00\x00\x00wK\x01s."


def archive(members):
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        for name, data in members:
            z.writef(io.BytesIO(data), name)
    return buf.getvalue()


def main():
    OUT.mkdir(exist_ok=True)
    cases = {
        "sevenz-pickle-os-system.7z": ([("model/data.pkl", HOSTILE)], "dangerous", "posix.system"),
        "sevenz-clean-pickle.7z": ([("weights.pkl", CLEAN)], "error", "7z"),
        # 256 MiB of zeros compresses to a few kB; the reader stops at its 64 MiB budget.
        "sevenz-bomb.7z": ([("big.pkl", b"\0" * (256 << 20))], "error", "64 MiB"),
    }
    manifest = {}
    for name, (members, expect, contains) in cases.items():
        (OUT / name).write_bytes(archive(members))
        manifest[name] = {"expect": expect, "contains": contains}
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
