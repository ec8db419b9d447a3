#!/usr/bin/env bash
# Benchmark: `fuse-ema graft` of a ~1.07 GB raw-weights ONNX (bench/make_big_onnx.py: 16 MatMul
# weights of 64 MiB, half under the exporter's own names, all stored transposed, so found by
# value) with its 2.15 GB checkpoint. Peak RSS and wall time from /usr/bin/time -v, without the
# drift run (graft's own memory) and with it (ONNX Runtime holds each model while it runs).
# Warm page cache. Needs torch and onnx (PY), and ONNX Runtime for the drift run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/tmp/graft-venv/bin/python}
DIR=${DIR:-/tmp/graft-big}
[ -f "$DIR/big.onnx" ] || "$PY" bench/make_big_onnx.py "$DIR"
cargo build --release -q
bin=target/release/fuse-ema
cat "$DIR/big.onnx" "$DIR/big.pth.tar" >/dev/null
echo "ONNX bytes: $(stat -c %s "$DIR/big.onnx")"
for mode in --no-drift ""; do
  rm -f "$DIR/out.onnx"
  /usr/bin/time -v $bin graft "$DIR/big.onnx" --checkpoint "$DIR/big.pth.tar" -o "$DIR/out.onnx" $mode \
    2> "$DIR/time.txt" > /dev/null
  echo "graft ${mode:-(with drift)}: $(grep -E 'Maximum resident' "$DIR/time.txt" | awk '{print $NF}') kB peak RSS," \
    "$(grep Elapsed "$DIR/time.txt" | awk '{print $NF}') wall"
done
