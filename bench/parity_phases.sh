#!/usr/bin/env bash
# Benchmark: where `fuse-ema export` with parity spends its time and memory, per checkpoint, with
# ONNX Runtime's own session creation and single inference measured inside the same run
# (FUSE_EMA_TIMING, src/runtime/timing.rs). Medians of $RUNS for every figure; peak RSS by
# /usr/bin/time. Checkpoints: $CKS (paths; bench/make_yolov8n.py or bench/scaling_models.py make
# them; default: yolo11n and yolo11x from bench/scaling.sh's cache). BIN=... compares another
# build (without FUSE_EMA_TIMING support the phase columns stay empty); BASE=... runs a second
# build in alternation with BIN (one of each per round) and adds its rows. RUNTIME=tract
# measures the tract fallback instead.
#
# The ratio columns are issue 14's targets, taken per run and then the median: the interpreter
# against one ORT inference of the same model on the same input (target ≤ 1.2×), and the whole
# check against 3 × that inference + the export without parity (target ≤ 1, i.e. within it).
# The load average before and after is printed: on a shared machine read ratios, not seconds.
#
# The integrator's one command on the idle machine:
#   BASE=/path/to/old/fuse-ema bench/parity_phases.sh
set -euo pipefail
# Python's onnxruntime without its telemetry, as fuse-ema runs it (ONNX Runtime 1.32 sends it
# from Linux by default; runtime::opt_out_of_telemetry).
export ORT_DISABLE_TELEMETRY=1
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BIN=${BIN:-target/release/fuse-ema}
BASE=${BASE:-}
RUNTIME=${RUNTIME:-ort}
CACHE=${CACHE:-/tmp/fuse-ema-scaling}
CKS=${CKS:-"$CACHE/yolo11n.pt $CACHE/yolo11x.pt"}
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$(ls /tmp/bench-venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1 || true)
  export ORT_DYLIB_PATH
fi
median() { sort -g | sed -n "$(( (RUNS + 1) / 2 ))p"; }
phase() { grep "timing: $1:" "$2" | sed -E 's/.*: ([0-9.]+) s wall.*/\1/' | head -1 || true; }
cpu() { grep "timing: $1:" "$2" | sed -E 's/.* ([0-9.]+) s CPU.*/\1/' | head -1 || true; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; runtime $RUNTIME; medians of $RUNS"
if [ "$RUNTIME" = tract ]; then ses_name='tract optimisation'; run_name='tract run'; else ses_name='ONNX Runtime session'; run_name='ONNX Runtime run'; fi
printf '| build | checkpoint | --no-parity | RSS | with parity | RSS | reference (CPU) | %s session | %s run (CPU) | reference ÷ run | check ÷ (3 × run + export) |\n' "$RUNTIME" "$RUNTIME"
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
bins=("$BIN"); [ -n "$BASE" ] && bins=("$BASE" "$BIN")
for ck in $CKS; do
  declare -A np nr pw pr ref refc ses run runc ratio check
  for b in "${bins[@]}"; do np[$b]=; nr[$b]=; pw[$b]=; pr[$b]=; ref[$b]=; refc[$b]=; ses[$b]=; run[$b]=; runc[$b]=; ratio[$b]=; check[$b]=; done
  out=/tmp/fuse-ema-phases.onnx
  for _ in $(seq "$RUNS"); do
    for b in "${bins[@]}"; do
      /usr/bin/time -o /tmp/fuse-ema-phases.t -f '%e %M' "$b" export "$ck" -o $out --imgsz 640 --no-parity >/dev/null 2>&1 || true
      read -r w m < /tmp/fuse-ema-phases.t; np[$b]+="$w "; nr[$b]+="$m "; e=$w
      FUSE_EMA_TIMING=1 /usr/bin/time -o /tmp/fuse-ema-phases.t -f '%e %M' "$b" export "$ck" -o $out --imgsz 640 --runtime "$RUNTIME" >/dev/null 2>/tmp/fuse-ema-phases.err || true
      read -r w m < /tmp/fuse-ema-phases.t; pw[$b]+="$w "; pr[$b]+="$m "
      r=$(phase reference /tmp/fuse-ema-phases.err); x=$(phase "$run_name" /tmp/fuse-ema-phases.err)
      ref[$b]+="$r "; refc[$b]+="$(cpu reference /tmp/fuse-ema-phases.err) "
      ses[$b]+="$(phase "$ses_name" /tmp/fuse-ema-phases.err) "; run[$b]+="$x "; runc[$b]+="$(cpu "$run_name" /tmp/fuse-ema-phases.err) "
      if [ -n "$r" ] && [ -n "$x" ]; then
        ratio[$b]+="$(awk -v a="$r" -v b="$x" 'BEGIN { printf "%.2f", a / b }') "
        check[$b]+="$(awk -v a="$w" -v b="$x" -v e="$e" 'BEGIN { printf "%.2f", a / (3 * b + e) }') "
      fi
    done
  done
  med() { printf '%s\n' $1 | median; }
  for b in "${bins[@]}"; do
    printf '| %s | %s | %s s | %s MB | %s s | %s MB | %s s (%s s) | %s s | %s s (%s s) | %s× | %s× |\n' "$b" "$(basename "$ck")" \
      "$(med "${np[$b]}")" "$(( $(med "${nr[$b]}") / 1024 ))" "$(med "${pw[$b]}")" "$(( $(med "${pr[$b]}") / 1024 ))" \
      "$(med "${ref[$b]}")" "$(med "${refc[$b]}")" "$(med "${ses[$b]}")" "$(med "${run[$b]}")" "$(med "${runc[$b]}")" \
      "$(med "${ratio[$b]}")" "$(med "${check[$b]}")"
  done
  unset np nr pw pr ref refc ses run runc ratio check
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
