#!/usr/bin/env bash
# Benchmark: `fuse-ema export` of a yolov8n-sized checkpoint at 640 (no parity) beside
# `yolo export format=onnx` of the same file (simplify off: onnxslim is not part of the export
# itself). Wall time (median of $RUNS) and peak RSS (/usr/bin/time). Needs $PY with ultralytics.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RUNS=${RUNS:-5}
CK=${CK:-/tmp/fuse-ema-yolov8n.pt}
[ -f "$CK" ] || "$PY" bench/make_yolov8n.py "$CK"
cargo build --release -q
bin=target/release/fuse-ema
YOLO=$(dirname "$PY")/yolo
median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
timed() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo "scale=3; ($e - $s) / 1000000000" | bc; }
rss() { /usr/bin/time -o /tmp/fuse-ema-rss -f '%M' "$@" >/dev/null 2>&1; cat /tmp/fuse-ema-rss; }
ours() { $bin export "$CK" -o /tmp/fuse-ema-bench.onnx --imgsz 640 --no-parity; }
theirs() { cp "$CK" /tmp/fuse-ema-bench-y.pt; "$YOLO" export model=/tmp/fuse-ema-bench-y.pt format=onnx imgsz=640 simplify=False; }
ours >/dev/null
theirs >/dev/null 2>&1
[ -s /tmp/fuse-ema-bench-y.onnx ] || { echo "yolo export produced no ONNX file" >&2; exit 1; }
t_ours=$(for _ in $(seq $RUNS); do timed ours; done | median)
t_theirs=$(for _ in $(seq $RUNS); do timed theirs; done | median)
r_ours=$(rss $bin export "$CK" -o /tmp/fuse-ema-bench.onnx --imgsz 640 --no-parity)
cp "$CK" /tmp/fuse-ema-bench-y.pt
r_theirs=$(rss "$YOLO" export model=/tmp/fuse-ema-bench-y.pt format=onnx imgsz=640 simplify=False)
echo "fuse-ema export: ${t_ours}s, peak RSS $((r_ours / 1024)) MB"
echo "yolo export:     ${t_theirs}s, peak RSS $((r_theirs / 1024)) MB"
echo "speed-up: $(echo "scale=1; $t_theirs / $t_ours" | bc)x"
