#!/usr/bin/env bash
# GPU figures for daemon/docs/benchmarks.md (issue 3): builds the detector
# benchmark with autotune and fusion (`gpu-tuned`) in release mode and runs
# it at GPU sizes on the first hardware GPU wgpu finds, printing the adapter
# name and the date with the figures: KS at 100k rows x 8 and 256 features,
# MMD with 100 permutations at 250, 10k and 100k rows per side (d = 64), every
# univariate statistic (KS, Wasserstein, PSI, JS, Hellinger) over 100k rows x
# 256 features, and the Mahalanobis scoring rate at 100k rows x 64 and 256.
#
#   deploy/gpu-bench.sh                  # build and run here
#   deploy/gpu-bench.sh --build-only     # build, and leave the binary in target/gpu-bench/
#   target/gpu-bench/detectors           # on another machine (needs a Vulkan loader)
#
# The first use of each kernel shape compiles and autotunes for 16-20 s; the
# bench times warm runs only. Record the printed table with the date and the
# adapter name.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --features gpu-tuned --bench detectors --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "detectors" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
out=${CARGO_TARGET_DIR:-target}/gpu-bench
mkdir -p "$out"
cp "$bin" "$out/detectors"
echo "bench binary: $out/detectors" >&2
[ "${1:-}" = --build-only ] && exit 0
MODELWATCH_BENCH_DEVICE=gpu MODELWATCH_BENCH_SCALE=gpu "$out/detectors"
