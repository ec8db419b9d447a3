#!/usr/bin/env bash
# Where each runtime spends one inference, per op (issue 14: the tract analysis of rtdetr-l in
# docs/benchmarks.md). tract: `perf record --call-graph dwarf` on `fuse-ema export --runtime
# tract`, an op's time being the samples under its `eval` (share of the whole process; the run's
# own share is the `SimpleState` line). ONNX Runtime: its profiler (`enable_profiling`) on the
# exported ONNX, one intra-op thread, kernel time summed per op type.
#
# Usage: bench/op_profile.sh CHECKPOINT [OUT_DIR]
#   BIN=target/release/fuse-ema  IMGSZ=640  PYTHON=a Python with onnxruntime and numpy
#   (default $BENCH_VENV/bin/python, bench/scaling.sh's environment). Needs perf.
set -euo pipefail
# Python's onnxruntime without its telemetry, as fuse-ema runs it (ONNX Runtime 1.32 sends it
# from Linux by default; runtime::opt_out_of_telemetry).
export ORT_DISABLE_TELEMETRY=1
cd "$(dirname "$0")/.."
CK=${1:?usage: bench/op_profile.sh CHECKPOINT [OUT_DIR]}
OUT=${2:-$(mktemp -d)}
BIN=${BIN:-target/release/fuse-ema}
IMGSZ=${IMGSZ:-640}
PYTHON=${PYTHON:-${BENCH_VENV:-${TMPDIR:-/tmp}/bench-venv}/bin/python}
mkdir -p "$OUT"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
FUSE_EMA_TIMING=1 perf record -q -F 299 --call-graph dwarf,16384 -o "$OUT/tract.perf" \
  "$BIN" export "$CK" -o "$OUT/model.onnx" --imgsz "$IMGSZ" --runtime tract 2>"$OUT/tract.log" >/dev/null
grep 'timing:' "$OUT/tract.log" | sed 's/^fuse-ema: //'
echo "tract, share of the process's samples under each op's eval:"
perf report -i "$OUT/tract.perf" --children --sort symbol --no-inline -g none --percent-limit 0.1 2>/dev/null |
  grep -E 'as tract_core::ops::(EvalOp|OpState)>::eval |SimpleState<F,O>::do_exec|into_optimized' |
  sed -E 's/ +\[\.\] / /; s/ +- +- *$//; s/^ +//'
echo "ONNX Runtime, one thread, kernel time per op type:"
"$PYTHON" - "$OUT/model.onnx" "$IMGSZ" "$OUT/ort-profile" <<'PY'
import collections, json, sys
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.enable_profiling = True
so.profile_file_prefix = sys.argv[3]
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
n = int(sys.argv[2])
s.run(None, {s.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, n, n), dtype=np.float32)})
per, total = collections.Counter(), 0
for e in json.load(open(s.end_profiling())):
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        per[e["args"]["op_name"]] += e["dur"]
        total += e["dur"]
print(f"total {total / 1e6:.3f} s")
for op, us in per.most_common(12):
    print(f"  {op:24s} {us / 1e3:9.1f} ms {100 * us / total:5.1f} %")
PY
