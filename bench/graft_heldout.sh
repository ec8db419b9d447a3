#!/usr/bin/env bash
# Grafts every held-out export made by bench/graft_heldout.py and compares ONNX Runtime's output of
# the result with PyTorch's EMA output (max |Δ|, and the raw model's distance for scale).
# PYORT: a Python with onnxruntime and numpy.
set -uo pipefail
# Python's onnxruntime without its telemetry, as fuse-ema runs it (ONNX Runtime 1.32 sends it
# from Linux by default; runtime::opt_out_of_telemetry).
export ORT_DISABLE_TELEMETRY=1
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/graft-held}
PYORT=${PYORT:-/tmp/h4-venv/bin/python}
BIN=${BIN:-target/release/fuse-ema}
for pt in "$DIR"/*.pt; do
  m=$(basename "$pt" .pt)
  for v in ts dynamo; do
    f="$DIR/$m.$v.onnx"; [ -f "$f" ] || continue
    $BIN graft "$f" --checkpoint "$pt" -o "$DIR/$m.$v.ema.onnx" --no-drift > "$DIR/$m.$v.txt" 2>&1
    echo "$m.$v exit $? — $(sed -n 2p "$DIR/$m.$v.txt")"
    [ -f "$DIR/$m.$v.ema.onnx" ] && "$PYORT" - "$DIR/$m.io.npz" "$DIR/$m.$v.ema.onnx" <<'PY'
import sys, numpy as np, onnxruntime as ort
d = np.load(sys.argv[1]); s = ort.InferenceSession(sys.argv[2])
y = s.run(None, {s.get_inputs()[0].name: d["input"]})[0]
print(f"  vs PyTorch EMA: max |Δ| {np.abs(y - d['output']).max():.2e} (max |y| {np.abs(d['output']).max():.2e}; raw is {np.abs(d['raw_output'] - d['output']).max():.2e} away)")
PY
  done
done
