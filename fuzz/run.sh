#!/usr/bin/env bash
# Fuzz every parser: seeds come from the fixtures and the hostile corpus; each target runs for
# $RUNS executions (default 10 million) — or $SECONDS_EACH seconds when set — with a 1 s timeout
# per input and a 2 GB allocation limit. Crashes land in fuzz/artifacts/<target>/; keep each as a
# regression in tests/fuzz_regressions/.
# Uses cargo-fuzz when installed (`cargo install cargo-fuzz`); otherwise builds the libFuzzer
# binaries with the same coverage flags cargo-fuzz passes (no sanitizer, as `-s none`). Nightly
# features via RUSTC_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
export RUSTC_BOOTSTRAP=1
TARGETS=${TARGETS:-pickle torch_zip torch_legacy safetensors shard_index onnx_read pickle_grammar module_tree}
mkdir -p corpus/pickle corpus/torch_zip corpus/torch_legacy corpus/safetensors corpus/shard_index corpus/onnx_read \
  corpus/pickle_grammar corpus/module_tree
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
# The structure-aware targets start from a few byte strings: the grammar and the fixtures do the rest.
for i in 0 1 2 3 4 5; do printf "\\x0$i\\x07\\x01\\x00\\x03\\x09" > "corpus/module_tree/seed$i"; done
printf '\x02\x01\x05\x03\x07\x01\x02' > corpus/pickle_grammar/seed0
limit() { if [ -n "${SECONDS_EACH:-}" ]; then echo "-max_total_time=$SECONDS_EACH"; else echo "-runs=$RUNS"; fi; }
FLAGS=(-timeout=1 -rss_limit_mb=2048 -malloc_limit_mb=2048 "-max_len=${MAX_LEN:-65536}" -print_final_stats=1)
if ! cargo fuzz --version >/dev/null 2>&1; then
  TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --release --target "$TRIPLE" $(for t in $TARGETS; do echo "--bin $t"; done)
fi
for t in $TARGETS; do
  echo "== $t"
  mkdir -p "artifacts/$t"
  if cargo fuzz --version >/dev/null 2>&1; then
    cmd=(cargo fuzz run -s none "$t" "corpus/$t" --)
  else
    cmd=("target/$TRIPLE/release/$t" "corpus/$t" "-artifact_prefix=artifacts/$t/")
  fi
  "${cmd[@]}" "$(limit)" "${FLAGS[@]}" 2>&1 | tail -25 | grep -E "stat::|Done|SUMMARY|ERROR|crash|cov:" | tail -12
done
