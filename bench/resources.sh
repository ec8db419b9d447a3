#!/usr/bin/env bash
# Exit code, wall time and peak RSS of `inspect` and `fold` on every file of the resource corpus
# (tests/hostile/manifest-resources.json, issue 13: each must end with exit 0/1/2 within 10 s
# and 512 MB). BIN=path/to/fuse-ema compares another build (e.g. one from before the fixes);
# LIMIT=seconds kills a run that takes longer (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=target/release/fuse-ema
fi
limit=${LIMIT:-60}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-32s %-8s %5s %8s %8s\n' file command exit seconds 'RSS MB'
for name in $(python3 -c 'import json; print(" ".join(sorted(json.load(open("tests/hostile/manifest-resources.json")))))'); do
  f=tests/hostile/files/$name
  for cmd in inspect fold; do
    args=("$cmd" "$f")
    [ "$cmd" = fold ] && args+=(-o "$out/out.safetensors")
    start=$(date +%s.%N)
    set +e
    /usr/bin/time -o "$out/rss" -f '%M' timeout -s KILL "$limit" "$BIN" "${args[@]}" >/dev/null 2>&1
    rc=$?
    set -e
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    kb=$(tail -1 "$out/rss" | grep -E '^[0-9]+$' || echo 0)
    [ "$rc" = 137 ] && kb="?"
    printf '%-32s %-8s %5s %8.2f %8s\n' "$name" "$cmd" "$rc" "$secs" "$([ "$kb" = "?" ] && echo "?" || echo $((kb / 1024)))"
  done
done
