#!/usr/bin/env bash
# Peak RSS of `fuse-ema inspect` on every file of the hostile corpus, beside the budget
# 64 MB + input size (issue 6). Prints the worst case and any file over budget.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
worst=0; worst_file=""; over=0
while IFS= read -r f; do
  size=$(stat -c %s "$f" 2>/dev/null || echo 0)
  /usr/bin/time -o /tmp/fuse-ema-rss -f '%M' target/release/fuse-ema inspect "$f" >/dev/null 2>&1 || true
  kb=$(tail -1 /tmp/fuse-ema-rss)
  budget=$(( 64 * 1024 + size / 1024 ))
  [ "$kb" -gt "$worst" ] && { worst=$kb; worst_file=$f; }
  [ "$kb" -gt "$budget" ] && { echo "OVER: $f ${kb} KB > ${budget} KB"; over=$((over + 1)); }
done < <(find tests/hostile/files -type f; echo tests/hostile/files/st-index-escape)
echo "worst peak RSS: $((worst / 1024)) MB ($worst_file); files over budget: $over"
