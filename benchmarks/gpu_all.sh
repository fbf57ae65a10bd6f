#!/usr/bin/env bash
# Every GPU measurement (one H100/H200): train-step timing at 128px and 256px
# (per-device batch 32, BERT-base in the step), model FLOPs and XLA buffer
# sizes from the CPU backend's analyses in a parallel CPU-only process, EMA
# sampling throughput, and 256px at batch 64 with rematerialisation. Writes
# JSON and tables to $OUT (or ./bench_out).
#
#   bash benchmarks/gpu_all.sh                 # all parts (about 20 minutes)
#   bash benchmarks/gpu_all.sh t128 sample     # some parts (each < 10 min)
#   bash benchmarks/gpu_all.sh table           # combine what is in $OUT
#
# Parts: t128, t256, sample, remat, table. FLOPs run in the background of the
# first timing part and are awaited by `table`.
set -uo pipefail
OUT="${OUT:-bench_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'

flops_in_background() {
  [ -f "$OUT/flops.json" ] && return
  JAX_PLATFORMS=cpu timeout 540 python3 -m benchmarks.train_step \
    --configs=coco,coco_128 --per_device_batch=32 --bert --flops_only \
    --json_out "$OUT/flops.json" > "$OUT/flops.log" 2>&1 &
  FLOPS_PID=$!
}

FLOPS_PID=""
for part in ${@:-t128 t256 sample remat table}; do
  case "$part" in
    # 128px first: it compiles in about half the time of 256px (which took
    # over 4 minutes on an H100 with JAX 0.11.2). compile_s is the first call.
    t128)
      flops_in_background
      timeout 300 python3 -m benchmarks.train_step --configs=coco_128 \
        --per_device_batch=32 --bert --no_flops --steps 10 \
        --json_out "$OUT/gpu128.json" 2>&1 | tail -3 ;;
    t256)
      flops_in_background
      timeout 540 python3 -m benchmarks.train_step --configs=coco \
        --per_device_batch=32 --bert --no_flops --steps 10 \
        --json_out "$OUT/gpu256.json" 2>&1 | tail -3 ;;
    sample)
      timeout 300 python3 -m benchmarks.sample --configs=coco,coco_128 \
        --batch=256 --bert --steps 10 2>&1 | tee "$OUT/sample.md" | tail -4 ;;
    remat)
      timeout 540 python3 -m benchmarks.train_step --configs=coco \
        --per_device_batch=64 --bert --no_flops --steps 5 --remat \
        --json_out "$OUT/gpu64_remat.json" 2>&1 | tail -3 ;;
    table)
      [ -n "$FLOPS_PID" ] && wait "$FLOPS_PID"
      tail -3 "$OUT/flops.log" 2>/dev/null
      python3 -m benchmarks.train_step --combine "$OUT"/flops.json \
        $(ls "$OUT"/gpu*.json 2>/dev/null) | tee "$OUT/train_step.md" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
