#!/usr/bin/env bash
# Benchmark: where `fuse-ema export` with parity spends its time and memory, per checkpoint, with
# ONNX Runtime's own session creation and single inference measured inside the same run
# (FUSE_EMA_TIMING, src/runtime/timing.rs). Medians of $RUNS for every figure; peak RSS by
# /usr/bin/time. Checkpoints: $CKS (paths; bench/make_yolov8n.py makes them, MODEL=yolo11x.yaml
# for larger ones). BIN=... compares another build (without FUSE_EMA_TIMING support the phase
# columns stay empty). RUNTIME=tract measures the tract fallback instead.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BIN=${BIN:-target/release/fuse-ema}
RUNTIME=${RUNTIME:-ort}
: "${CKS:?set CKS to the checkpoints to measure}"
median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
phase() { grep "timing: $1:" "$2" | sed -E 's/.*: ([0-9.]+) s wall.*/\1/' | head -1 || true; }
printf '| checkpoint | --no-parity | RSS | with parity | RSS | reference | %s session | %s run |\n' "$RUNTIME" "$RUNTIME"
printf '|---|---|---|---|---|---|---|---|\n'
for ck in $CKS; do
  out=/tmp/fuse-ema-phases.onnx
  np=(); nr=(); pw=(); pr=(); ref=(); ses=(); run=()
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -o /tmp/fuse-ema-phases.t -f '%e %M' "$BIN" export "$ck" -o $out --imgsz 640 --no-parity >/dev/null 2>&1 || true
    read -r w m < /tmp/fuse-ema-phases.t; np+=("$w"); nr+=("$m")
    FUSE_EMA_TIMING=1 /usr/bin/time -o /tmp/fuse-ema-phases.t -f '%e %M' "$BIN" export "$ck" -o $out --imgsz 640 --runtime "$RUNTIME" >/dev/null 2>/tmp/fuse-ema-phases.err || true
    read -r w m < /tmp/fuse-ema-phases.t; pw+=("$w"); pr+=("$m")
    ref+=("$(phase reference /tmp/fuse-ema-phases.err)")
    if [ "$RUNTIME" = tract ]; then
      ses+=("$(phase 'tract optimisation' /tmp/fuse-ema-phases.err)"); run+=("$(phase 'tract run' /tmp/fuse-ema-phases.err)")
    else
      ses+=("$(phase 'ONNX Runtime session' /tmp/fuse-ema-phases.err)"); run+=("$(phase 'ONNX Runtime run' /tmp/fuse-ema-phases.err)")
    fi
  done
  med() { printf '%s\n' "$@" | median; }
  printf '| %s | %s s | %s MB | %s s | %s MB | %s s | %s s | %s s |\n' "$(basename "$ck")" \
    "$(med "${np[@]}")" "$(( $(med "${nr[@]}") / 1024 ))" "$(med "${pw[@]}")" "$(( $(med "${pr[@]}") / 1024 ))" \
    "$(med "${ref[@]}")" "$(med "${ses[@]}")" "$(med "${run[@]}")"
done
