#!/usr/bin/env bash
# Benchmark: `fuse-ema CK -o model.onnx` (read → EMA → export → parity in ONNX Runtime against
# the reference interpreter) for a yolov8n-sized checkpoint at 640, beside the Python way:
# `yolo export` plus a torch-vs-onnxruntime check of the same model. Medians of $RUNS.
set -euo pipefail
# Python's onnxruntime without its telemetry, as fuse-ema runs it (ONNX Runtime 1.32 sends it
# from Linux by default; runtime::opt_out_of_telemetry).
export ORT_DISABLE_TELEMETRY=1
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RUNS=${RUNS:-5}
CK=${CK:-/tmp/fuse-ema-yolov8n.pt}
[ -f "$CK" ] || "$PY" bench/make_yolov8n.py "$CK"
cargo build --release -q
: "${ORT_DYLIB_PATH:=$(ls "$(dirname "$PY")"/../lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)}"
export ORT_DYLIB_PATH
bin=target/release/fuse-ema
median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
timed() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo "scale=3; ($e - $s) / 1000000000" | bc; }
ours() { $bin "$CK" -o /tmp/fuse-ema-parity.onnx --imgsz 640; }
python_way() {
  "$PY" - "$CK" <<'PYEOF'
import shutil, sys
import numpy as np, onnxruntime as ort, torch
from ultralytics import YOLO
shutil.copy(sys.argv[1], "/tmp/fuse-ema-parity-y.pt")
path = YOLO("/tmp/fuse-ema-parity-y.pt").export(format="onnx", imgsz=640, simplify=False)
model = YOLO("/tmp/fuse-ema-parity-y.pt").model.float().eval().fuse(verbose=False)
for m in model.modules():
    if m.__class__.__name__ == "Detect":
        m.export, m.format = True, "onnx"
x = torch.rand(1, 3, 640, 640)
with torch.no_grad():
    y = model(x)
o = ort.InferenceSession(path).run(None, {"images": x.numpy()})[0]
assert np.abs(o - y.numpy()).max() < 1e-2
PYEOF
}
ours >/dev/null
t_ours=$(for _ in $(seq $RUNS); do timed ours; done | median)
t_py=$(for _ in $(seq $RUNS); do timed python_way; done | median)
/usr/bin/time -o /tmp/fuse-ema-rss -f '%M' $bin "$CK" -o /tmp/fuse-ema-parity.onnx --imgsz 640 >/dev/null
echo "fuse-ema (export + parity on ORT): ${t_ours}s, peak RSS $(( $(cat /tmp/fuse-ema-rss) / 1024 )) MB"
echo "yolo export + torch-vs-ORT check: ${t_py}s"
