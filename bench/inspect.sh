#!/usr/bin/env bash
# Benchmark: `fuse-ema inspect` on a ~2.8 GB checkpoint (warm page cache), wall time and peak RSS,
# beside `torch.load(mmap=True, weights_only=False)` of the same file.
# Needs a Python with torch + ultralytics (fixtures/requirements.txt) as $PY to make the file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
BIG=${BIG:-/tmp/fuse-ema-big.pt}
[ -f "$BIG" ] || "$PY" bench/make_big_checkpoint.py "$BIG"
cargo build --release -q
bin=target/release/fuse-ema
$bin inspect "$BIG" >/dev/null # warm the page cache
runs=20
times=()
for _ in $(seq $runs); do
  s=$(date +%s%N); $bin inspect --json "$BIG" >/dev/null; e=$(date +%s%N)
  times+=($(( (e - s) / 1000 )))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$((runs / 2))p")
rss=$( { /usr/bin/time -f '%M' $bin inspect --json "$BIG" >/dev/null; } 2>&1 | tail -1)
echo "fuse-ema inspect: median $((median / 1000)).$(( (median % 1000) / 100 )) ms over $runs runs, peak RSS $((rss / 1024)) MB"
"$PY" - "$BIG" <<'PYEOF'
import resource, sys, time
import torch
t = time.perf_counter()
ck = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=False)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"torch.load(mmap=True): {dt * 1000:.0f} ms, process peak RSS {rss:.0f} MB (incl. importing torch)")
PYEOF
