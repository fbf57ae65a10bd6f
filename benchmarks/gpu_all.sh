#!/usr/bin/env bash
# Every GPU measurement in one go (one H100/H200): train-step timing at 256px
# and 128px (per-device batch 32, BERT-base in the step), model FLOPs from the
# CPU backend's cost analysis in a parallel CPU-only process, EMA sampling
# throughput, and a larger-batch probe. Writes JSON and tables to $OUT (or
# ./bench_out).
#
#   bash benchmarks/gpu_all.sh
set -uo pipefail
OUT="${OUT:-bench_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'

# Model FLOPs on the CPU backend, beside the GPU timings.
JAX_PLATFORMS=cpu timeout 480 python3 -m benchmarks.train_step \
  --configs=coco,coco_128 --per_device_batch=32 --bert --flops_only \
  --json_out "$OUT/flops.json" > "$OUT/flops.log" 2>&1 &
FLOPS_PID=$!

timeout 240 python3 -m benchmarks.train_step --configs=coco,coco_128 \
  --per_device_batch=32 --bert --no_flops --steps 10 \
  --json_out "$OUT/gpu32.json" 2>&1 | tail -4
timeout 100 python3 -m benchmarks.sample --configs=coco,coco_128 --batch=256 \
  --bert --steps 10 2>&1 | tee "$OUT/sample.md" | tail -4
timeout 120 python3 -m benchmarks.train_step --configs=coco \
  --per_device_batch=64 --bert --no_flops --steps 5 \
  --json_out "$OUT/gpu64.json" 2>&1 | tail -3

wait "$FLOPS_PID"; tail -3 "$OUT/flops.log"
python3 -m benchmarks.train_step --combine "$OUT/flops.json" "$OUT/gpu32.json" \
  | tee "$OUT/train_step.md"
