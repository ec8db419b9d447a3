#!/usr/bin/env bash
# Benchmark: `fuse-ema fold` of a ≥ 1 GB EMA out of a ~2.2 GB checkpoint vs `cp` of the same
# bytes (both made durable: fold fsyncs before its rename, so cp is followed by `sync FILE`),
# and `fuse-ema diff` of the same file vs one full read of it (`cat > /dev/null`).
# Warm page cache; medians of $RUNS runs; peak RSS from /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
BIG=${BIG:-/tmp/fuse-ema-big2.pt}
RUNS=${RUNS:-5}
OUT=${OUT:-/tmp/fuse-ema-bench}
mkdir -p "$OUT"
[ -f "$BIG" ] || WIDTH=1.875 OPT=0 "$PY" bench/make_big_checkpoint.py "$BIG"
cargo build --release -q
bin=target/release/fuse-ema
cat "$BIG" >/dev/null

median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
timed() { # prints seconds (3 decimals) of "$@"
  local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo "scale=3; ($e - $s) / 1000000000" | bc
}
rss() { { /usr/bin/time -f '%M' "$@" >/dev/null; } 2>&1 | tail -1; }

fold_once() { rm -f "$OUT/ema.safetensors"; $bin fold "$BIG" -o "$OUT/ema.safetensors"; }
fold_pt_once() { rm -f "$OUT/ema.pt"; $bin fold "$BIG" -o "$OUT/ema.pt"; }
fold_once >/dev/null
bytes=$(stat -c %s "$OUT/ema.safetensors")
cp_once() { rm -f "$OUT/copy.bin"; cp "$OUT/ema.safetensors" "$OUT/copy.bin"; sync "$OUT/copy.bin"; }
diff_once() { $bin diff "$BIG" --json; }
read_once() { cat "$BIG" >/dev/null; }

t_fold=$(for _ in $(seq $RUNS); do timed fold_once; done | median)
t_fold_pt=$(for _ in $(seq $RUNS); do timed fold_pt_once; done | median)
t_cp=$(for _ in $(seq $RUNS); do timed cp_once; done | median)
t_diff=$(for _ in $(seq $RUNS); do timed diff_once; done | median)
t_read=$(for _ in $(seq $RUNS); do timed read_once; done | median)
echo "EMA bytes written: $bytes"
echo "fold -> safetensors: ${t_fold}s, peak RSS $(( $(rss $bin fold "$BIG" -o "$OUT/r.safetensors") / 1024 )) MB"
echo "fold -> .pt:         ${t_fold_pt}s, peak RSS $(( $(rss $bin fold "$BIG" -o "$OUT/r.pt") / 1024 )) MB"
echo "cp + sync:           ${t_cp}s   (fold/cp = $(echo "scale=2; $t_fold / $t_cp" | bc))"
echo "diff:                ${t_diff}s, peak RSS $(( $(rss $bin diff "$BIG" --json) / 1024 )) MB"
echo "cat (one read):      ${t_read}s   (diff/read = $(echo "scale=2; $t_diff / $t_read" | bc))"
rm -f "$OUT"/*.safetensors "$OUT"/*.pt "$OUT/copy.bin"
if [ -z "${NO_TMPFS:-}" ] && [ -d /dev/shm ]; then
  # The same on tmpfs: no disk, so the ratio shows fuse-ema's own overhead.
  OUT=/dev/shm/fuse-ema-bench; mkdir -p "$OUT"
  cp_once_shm() { rm -f "$OUT/copy.bin"; cp /tmp/fuse-ema-ref.bin "$OUT/copy.bin"; sync "$OUT/copy.bin"; }
  $bin fold "$BIG" -o /tmp/fuse-ema-ref.safetensors >/dev/null && mv /tmp/fuse-ema-ref.safetensors /tmp/fuse-ema-ref.bin
  t_fold=$(for _ in $(seq $RUNS); do timed fold_once; done | median)
  t_cp=$(for _ in $(seq $RUNS); do timed cp_once_shm; done | median)
  echo "tmpfs: fold -> safetensors ${t_fold}s, cp + sync ${t_cp}s (fold/cp = $(echo "scale=2; $t_fold / $t_cp" | bc))"
  rm -rf "$OUT" /tmp/fuse-ema-ref.bin
fi
