#!/usr/bin/env python3
"""Driver of bench/scaling.sh: times every tool on every checkpoint, writes scaling.md,
scaling.svg and scaling.json to the output folder. Standard library only; the checkpoints and
the Python way run in the bench venv through bench/scaling_models.py.

Environment (set by scaling.sh): FUSE_EMA (the release binary), BENCH_PY (the venv's python),
ORT_DYLIB_PATH (ONNX Runtime for `--runtime ort`).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scaling_plot  # noqa: E402  (beside this file)

FAMILIES = {"v8": "yolov8", "11": "yolo11", "26": "yolo26"}
SIZES = "nsmlx"
IMGSZ = 640
TOOLS = {  # key: (label, needs parity runtime)
    "io": "read + write I/O",
    "fe": "fuse-ema export --no-parity",
    "yolo": "yolo export",
    "fe_ort": "fuse-ema export (parity, ORT)",
    "fe_tract": "fuse-ema export (parity, tract)",
    "py": "yolo export + torch-vs-ORT check",
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for scaling.md, scaling.svg, scaling.json")
    p.add_argument("--replot", action="store_true", help="only rewrite scaling.md and .svg from scaling.json")
    p.add_argument("--cache", default="", help="folder for the checkpoints (kept between runs)")
    p.add_argument("--runs", type=int, default=3, help="alternating runs per tool; medians reported")
    p.add_argument("--families", default="v8,11,26", help="comma list of v8, 11, 26")
    p.add_argument("--sizes", default=SIZES, help="scales, e.g. nsmlx")
    p.add_argument("--rtdetr", action=argparse.BooleanOptionalAction, default=True, help="add rtdetr-l")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma list of " + ", ".join(TOOLS))
    a = p.parse_args(argv)
    if not a.replot and not a.cache:
        p.error("--cache is needed to measure")
    a.families = [f for f in a.families.split(",") if f]
    a.tools = [t for t in a.tools.split(",") if t]
    for f in a.families:
        if f not in FAMILIES:
            p.error(f"unknown family {f!r}")
    for t in a.tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r}")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    return a


def model_names(a):
    names = [FAMILIES[f] + s for f in a.families for s in a.sizes]
    return names + (["rtdetr-l"] if a.rtdetr else [])


def measure(cmd, log):
    """Wall seconds and peak RSS (MB) of one command under /usr/bin/time -v; None on failure."""
    tv = log.with_suffix(".time")
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        rc = subprocess.run(["/usr/bin/time", "-v", "-o", str(tv), *cmd], stdout=err, stderr=err).returncode
        wall = time.perf_counter() - t0
    rss = None
    for line in tv.read_text(errors="replace").splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.rsplit(":", 1)[1]) / 1024
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {"error": f"exit {rc}: {tail[0][:160]}"}
    return {"wall": wall, "rss": rss}


class Bench:
    def __init__(self, a):
        self.a = a
        self.fe = os.environ["FUSE_EMA"]
        self.py = os.environ["BENCH_PY"]
        self.yolo = str(Path(self.py).parent / "yolo")
        self.cache = Path(a.cache)
        self.work = self.cache / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def commands(self, name, onnx_bytes):
        ck = self.cache / f"{name}.pt"
        w = self.work
        fe = [self.fe, "export", str(ck), "--imgsz", str(IMGSZ)]
        # yolo export writes beside its input: a copy per model keeps the cache clean (the name
        # keeps "rtdetr", which is how the yolo CLI picks RT-DETR's loader).
        ycopy = w / f"{name}.pt"
        io = (f"cat {ck} > /dev/null && head -c {onnx_bytes} /dev/zero > {w}/io.tmp"
              f" && sync {w}/io.tmp && mv {w}/io.tmp {w}/io.out")
        return {
            "io": ["sh", "-c", io],
            "fe": [*fe, "-o", str(w / "fe.onnx"), "--no-parity"],
            "fe_ort": [*fe, "-o", str(w / "fe-ort.onnx"), "--runtime", "ort"],
            "fe_tract": [*fe, "-o", str(w / "fe-tract.onnx"), "--runtime", "tract"],
            "yolo": [self.yolo, "export", f"model={ycopy}", "format=onnx", f"imgsz={IMGSZ}", "simplify=False"],
            "py": [self.py, str(HERE / "scaling_models.py"), "check", str(w / f"{name}.py.pt"), str(IMGSZ)],
        }

    def model(self, name):
        ck = self.cache / f"{name}.pt"
        shutil.copyfile(ck, self.work / f"{name}.pt")
        shutil.copyfile(ck, self.work / f"{name}.py.pt")
        subprocess.run(["cat", str(ck)], stdout=subprocess.DEVNULL, check=True)  # warm page cache
        # One untimed export gives the ONNX size (the bytes the I/O floor writes) and warms the binary.
        first = measure(self.commands(name, 0)["fe"], self.work / "warm.log")
        onnx_bytes = (self.work / "fe.onnx").stat().st_size if "error" not in first else 0
        cmds = self.commands(name, onnx_bytes)
        samples = {t: [] for t in self.a.tools}
        for i in range(self.a.runs):  # alternate: each tool once per round
            for t in self.a.tools:
                if t == "io" and not onnx_bytes:
                    samples[t].append({"error": "no ONNX size (export failed)"})
                    continue
                r = measure(cmds[t], self.work / f"{t}.log")
                samples[t].append(r)
                shown = f"{r['wall']:.3f} s, {r['rss']:.0f} MB" if "error" not in r else r["error"]
                print(f"  {name} run {i + 1}/{self.a.runs} {t}: {shown}", flush=True)
        for f in self.work.glob(f"{name}.*"):  # copies and yolo's ONNX files: the disk holds one model's
            f.unlink()
        return {"name": name, "checkpoint_bytes": ck.stat().st_size, "onnx_bytes": onnx_bytes,
                "samples": samples, "medians": {t: median(s) for t, s in samples.items()}}


def median(samples):
    ok = [s for s in samples if "error" not in s]
    if len(ok) < len(samples):
        return {"error": next(s["error"] for s in samples if "error" in s)}
    rss = [s["rss"] for s in ok if s["rss"] is not None]
    return {"wall": statistics.median(s["wall"] for s in ok), "rss": statistics.median(rss) if rss else None,
            "min": min(s["wall"] for s in ok), "max": max(s["wall"] for s in ok)}


def machine():
    cpus = os.cpu_count()
    load = os.getloadavg()
    return f"{platform.node()}, {cpus} CPUs, Linux {platform.release()}, load average {load[0]:.1f} at the end"


def main(argv):
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.replot:
        data = json.loads((out / "scaling.json").read_text())
        return write_reports(out, data, data["rows"])
    names = model_names(a)
    t0 = time.time()
    subprocess.run([os.environ["BENCH_PY"], str(HERE / "scaling_models.py"), "make", a.cache, *names], check=True)
    bench = Bench(a)
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        rows.append(bench.model(name))
        (out / "scaling.json").write_text(json.dumps({"runs": a.runs, "imgsz": IMGSZ, "rows": rows}, indent=1))
    meta = {"runs": a.runs, "imgsz": IMGSZ, "machine": machine(), "seconds": time.time() - t0,
            "fuse_ema": subprocess.run([bench.fe, "--version"], capture_output=True, text=True).stdout.strip()}
    (out / "scaling.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return write_reports(out, meta, rows)


def write_reports(out, meta, rows):
    (out / "scaling.md").write_text(scaling_plot.markdown(rows, meta, TOOLS))
    (out / "scaling.svg").write_text(scaling_plot.svg(rows, TOOLS))
    print(f"wrote {out}/scaling.md, scaling.svg, scaling.json (run took {meta['seconds'] / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
