#!/usr/bin/env bash
# Benchmark: `fuse-ema strip` of a ~2 GB Ultralytics 8.4-style last.pt (bench/make_big_last.py)
# vs `cp` of its output bytes followed by `sync FILE` (strip fsyncs before its rename, so the copy
# is made durable too). Warm page cache; medians of $RUNS runs; peak RSS from /usr/bin/time.
# BIG=/path/to/other.pt benchmarks another checkpoint (e.g. bench/make_big_checkpoint.py's
# 8.0-style f32 file, where strip converts the EMA to f16).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
PY=${PY:-python3}
BIG=${BIG:-/tmp/fuse-ema-big-last.pt}
RUNS=${RUNS:-5}
OUT=${OUT:-/tmp/fuse-ema-bench}
mkdir -p "$OUT"
[ -f "$BIG" ] || "$PY" bench/make_big_last.py "$BIG"
bin=${BIN:-target/release/fuse-ema}
[ -n "${BIN:-}" ] || cargo build --release -q
cat "$BIG" >/dev/null

median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
timed() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo "scale=3; ($e - $s) / 1000000000" | bc; }
rss() { { /usr/bin/time -f '%M' "$@" >/dev/null; } 2>&1 | tail -1; }

strip_once() { rm -f "$OUT/stripped.pt"; $bin strip "$BIG" -o "$OUT/stripped.pt"; }
# The machine's page cache is shared: each timed run starts with its own input warm.
warm() { cat "$@" >/dev/null; }
strip_once >/dev/null
bytes=$(stat -c %s "$OUT/stripped.pt")
cp_once() { rm -f "$OUT/copy.bin"; cp "$OUT/stripped.pt" "$OUT/copy.bin"; sync "$OUT/copy.bin"; }
# Interleaved (strip, cp) pairs: the machine is shared, so drift hits both sides alike.
pairs=$(for _ in $(seq $RUNS); do warm "$BIG"; a=$(timed strip_once); warm "$OUT/stripped.pt"; echo "$a $(timed cp_once)"; done)
t_strip=$(echo "$pairs" | awk '{print $1}' | median)
t_cp=$(echo "$pairs" | awk '{print $2}' | median)
r_pair=$(echo "$pairs" | awk '{printf "%.3f\n", $1 / $2}' | median)
echo "input: $(stat -c %s "$BIG") bytes; output: $bytes bytes"
echo "strip:     ${t_strip}s (median of $RUNS), peak RSS $(( $(rss $bin strip "$BIG" -o "$OUT/r.pt") / 1024 )) MB"
echo "cp + sync: ${t_cp}s   (strip/cp = $(echo "scale=2; $t_strip / $t_cp" | bc); median per-pair ratio $r_pair)"
echo "runs (strip, cp + sync):"; echo "$pairs"
if [ -z "${NO_TMPFS:-}" ] && [ -d /dev/shm ]; then
  # The same on tmpfs: no disk writeback, so the ratio shows fuse-ema's own overhead.
  cp "$OUT/stripped.pt" /dev/shm/fuse-ema-ref.pt
  OUT=/dev/shm/fuse-ema-bench; mkdir -p "$OUT"
  cp_shm() { rm -f "$OUT/copy.bin"; cp /dev/shm/fuse-ema-ref.pt "$OUT/copy.bin"; sync "$OUT/copy.bin"; }
  pairs=$(for _ in $(seq $RUNS); do warm "$BIG"; a=$(timed strip_once); echo "$a $(timed cp_shm)"; done)
  echo "tmpfs: strip $(echo "$pairs" | awk '{print $1}' | median)s, cp + sync $(echo "$pairs" | awk '{print $2}' | median)s (median per-pair ratio $(echo "$pairs" | awk '{printf "%.3f\n", $1 / $2}' | median))"
  rm -rf "$OUT" /dev/shm/fuse-ema-ref.pt
  OUT=${OUT_DISK:-/tmp/fuse-ema-bench}
fi
rm -f "$OUT"/*.pt "$OUT/copy.bin"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
