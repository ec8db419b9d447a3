#!/usr/bin/env bash
# Fuzz every parser: seeds come from the fixtures and the hostile corpus; each target runs for
# $RUNS executions (default 10 million) with a 1 s timeout per input and a 2 GB allocation limit.
# Crashes land in fuzz/artifacts/<target>/; keep each as a regression in tests/fuzz_regressions/.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features via RUSTC_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
export RUSTC_BOOTSTRAP=1
seed() { mkdir -p "corpus/$1"; shift; for f in "$@"; do [ -f "$f" ] && cp "$f" "corpus/$(basename "$(dirname "$f")" | tr -c 'a-z0-9\n' _)$(basename "$f")" 2>/dev/null || true; done; }
mkdir -p corpus/pickle corpus/torch_zip corpus/torch_legacy corpus/safetensors corpus/shard_index corpus/onnx_read
cp ../fixtures/pickles/*.pkl ../tests/hostile/files/*.pkl corpus/pickle/
for f in ../fixtures/*.pt ../fixtures/*.pth ../fixtures/*.ckpt ../fixtures/*.tar; do
  unzip -p "$f" '*/data.pkl' > "corpus/pickle/$(basename "$f").pkl" 2>/dev/null || true
done
cp ../fixtures/yolov8-best.pt ../fixtures/dtypes.pt ../fixtures/dtypes-proto4.pt ../fixtures/malicious.pt \
   ../fixtures/rtdetr.pth ../fixtures/dino.pth ../tests/hostile/files/*.pt corpus/torch_zip/
cp ../fixtures/legacy.pt corpus/torch_legacy/
cp ../fixtures/sharded/model-00001-of-*.safetensors ../tests/hostile/files/*.safetensors corpus/safetensors/
cp ../fixtures/sharded/model.safetensors.index.json corpus/shard_index/
cp ../fixtures/yolo-export-ema.onnx corpus/onnx_read/
for t in ${TARGETS:-pickle torch_zip torch_legacy safetensors shard_index onnx_read}; do
  echo "== $t"
  cargo fuzz run -s none "$t" "corpus/$t" -- -runs="$RUNS" -timeout=1 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -max_len=${MAX_LEN:-65536} -print_final_stats=1 2>&1 | tail -25 | grep -E "stat::|Done|SUMMARY|ERROR|crash|cov:" | tail -12
done
