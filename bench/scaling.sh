#!/usr/bin/env bash
# Cost against model size (issues 9 and 14): builds n/s/m/l/x checkpoints of YOLOv8, YOLO11 and
# YOLO26 from the official Ultralytics yamls, plus RT-DETR-l (f16 EMA, `model: None`: the
# mid-training layout of bench/make_yolov8n.py), and times side by side at 640, medians of RUNS
# alternating runs, peak RSS from /usr/bin/time -v:
#   - read + write I/O (cat the checkpoint, write and sync as many bytes as the ONNX has)
#   - fuse-ema export --no-parity
#   - yolo export format=onnx simplify=False
#   - fuse-ema export with parity, --runtime ort and --runtime tract
#   - the Python way: yolo export + fused PyTorch forward vs ONNX Runtime (bench/scaling_models.py)
# Writes scaling.md (tables + targets, pasteable into docs/benchmarks.md), scaling.svg (the plot)
# and scaling.json (every sample) to OUT_DIR.
#
# Usage: bench/scaling.sh OUT_DIR
#   RUNS=3            alternating runs per tool (medians)
#   QUICK=1           smoke test: yolo11 n and x only, no RT-DETR, one run
#   FAMILIES=v8,11,26 SIZES=nsmlx RTDETR=1 TOOLS=io,fe,yolo,fe_ort,fe_tract,py   narrow the run
#   CACHE=${TMPDIR:-/tmp}/fuse-ema-scaling   checkpoints (built once, kept) and scratch outputs
#   BENCH_VENV=${TMPDIR:-/tmp}/bench-venv    Python environment, created here when missing with the
#                     pinned versions below (torch ~4 GB with its CUDA wheels; CPU is used)
set -euo pipefail
# Python's onnxruntime without its telemetry, as fuse-ema runs it (ONNX Runtime 1.32 sends it
# from Linux by default; runtime::opt_out_of_telemetry).
export ORT_DISABLE_TELEMETRY=1
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/scaling.sh OUT_DIR}
TORCH_VERSION=2.15.0
TORCHVISION_VERSION=0.29.2
ULTRALYTICS_VERSION=8.4.190
ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
VENV=${BENCH_VENV:-${TMPDIR:-/tmp}/bench-venv}
CACHE=${CACHE:-${TMPDIR:-/tmp}/fuse-ema-scaling}

if ! "$VENV/bin/python" -c "
import torch, ultralytics, onnxruntime, onnx
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert ultralytics.__version__ == '$ULTRALYTICS_VERSION', ultralytics.__version__
assert onnxruntime.__version__ == '$ORT_VERSION', onnxruntime.__version__" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" \
    "torchvision==$TORCHVISION_VERSION" "ultralytics==$ULTRALYTICS_VERSION" \
    "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION"
fi
lib=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)
export ORT_DYLIB_PATH=$lib BENCH_PY=$VENV/bin/python FUSE_EMA=$PWD/target/release/fuse-ema
# The yolo CLI must not reach for the network (settings sync, update checks) while timed; no
# __pycache__ is left in bench/.
export YOLO_OFFLINE=1 YOLO_VERBOSE=False PYTHONDONTWRITEBYTECODE=1
cargo build --release -q

if [ "${QUICK:-0}" = 1 ]; then
  : "${FAMILIES:=11}" "${SIZES:=nx}" "${RUNS:=1}" "${RTDETR:=0}"
fi
rt=--rtdetr
[ "${RTDETR:-1}" = 1 ] || rt=--no-rtdetr
exec "$VENV/bin/python" bench/scaling.py --out "$OUT" --cache "$CACHE" --runs "${RUNS:-3}" \
  --families "${FAMILIES:-v8,11,26}" --sizes "${SIZES:-nsmlx}" "$rt" \
  --tools "${TOOLS:-io,fe,yolo,fe_ort,fe_tract,py}"
