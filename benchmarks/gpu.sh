#!/usr/bin/env bash
# Every GPU measurement in one call of under 8 minutes (one H100/H200):
#
#   1. the 128px train step (configs/coco_128.py), then
#   2. the 256px train step (configs/coco.py): per-device batch 32, BERT-base in
#      the step, XLA compile seconds, ms/step (median of 20 after 3 warm-ups),
#      real images/s, MFU against 989 TFLOP/s and peak device memory;
#   3. EMA-generator sampling images/s at 256px (batch 256, BERT in the call);
#   4. the largest per-device batch of 64, 128, 256 whose 256px step runs.
#
#   bash benchmarks/gpu.sh            # on the GPU machine, from the repo root
#   bash benchmarks/gpu.sh step256 max_batch256   # some parts only
#   bash benchmarks/gpu.sh --dry_run  # the same parts on configs/tiny.py, CPU
#
# Each part is its own process (an out-of-memory try cannot poison the next)
# under `timeout` of what is left of the budget (GPU_SH_BUDGET_S, default
# 450 s), so the script stops itself before 8 minutes; a part that has no
# time left is skipped and says so. Every result is written to $OUT (default
# bench_out) the moment it exists: compile time before the timing loop, each
# batch of the search as it runs. Model FLOPs come from benchmarks/flops.json,
# the CPU backend's cost analysis made beforehand on a CPU machine (GPU cost
# analysis omits cuDNN convolutions), so no CPU compile competes with the GPU
# compile for the host's cores. JAX's persistent compilation cache
# (GPU_SH_CACHE, default /tmp/xmcgan_gpu_jax_cache) outlives the call, so a
# second call on the same machine (say, for the parts the budget skipped)
# does not compile the same step again. On an H100 the 2021-shaped 256px step
# once took over 4 minutes to compile: if step256 uses up the budget, run
# `bash benchmarks/gpu.sh sample256 max_batch256` as a second call.
#
# Packages the GPU image lacks (ml_collections) travel as wheels in .whl/ and
# are installed into /tmp/site first when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench_out}"
BUDGET_S="${GPU_SH_BUDGET_S:-450}"
mkdir -p "$OUT"
export JAX_COMPILATION_CACHE_DIR="${GPU_SH_CACHE:-/tmp/xmcgan_gpu_jax_cache}"
PY="${PYTHON:-python3}"

DRY_RUN=""
if [ "${1:-}" = "--dry_run" ]; then
  DRY_RUN=1; shift
fi
PARTS="${*:-step128 step256 sample256 max_batch256}"
for name in $PARTS; do
  case "$name" in step128|step256|sample256|max_batch256) ;;
    *) echo "unknown part $name: step128 step256 sample256 max_batch256" >&2
       exit 2 ;;
  esac
done
if [ -n "$DRY_RUN" ]; then
  # Same parts, same code paths, sizes a 2-core CPU runs in a couple of
  # minutes: the tiny config at 64px, a narrow BERT, few steps.
  export JAX_PLATFORMS=cpu
  C128=tiny; C256=tiny; TEXT="--text_dim=32"; BATCH=2; SAMPLE_BATCH=4
  STEPS="--warmup 1 --steps 2"; MAX_BATCHES=2,4
else
  C128=coco_128; C256=coco; TEXT=""; BATCH=32; SAMPLE_BATCH=256
  STEPS="--warmup 3 --steps 20"; MAX_BATCHES=64,128,256
fi

if [ -d .whl ] && ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
} | tee "$OUT/machine.txt"

# part NAME CAP_S COMMAND...: runs COMMAND under the smaller of CAP_S and the
# budget left (minus 10 s to write the table), logging to $OUT/NAME.log.
part() {
  local name=$1 cap=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  local left=$((BUDGET_S - SECONDS - 10))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "[$name] skipped: ${left}s of the budget left" | tee -a "$OUT/parts.txt"
    return
  fi
  echo "[$name] up to ${limit}s: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$name] rc=$rc after $SECONDS s" | tee -a "$OUT/parts.txt"
  tail -4 "$OUT/$name.log"
}

FLOPS="--flops_json benchmarks/flops.json"
part step128 150 "$PY" -m benchmarks.train_step --configs=$C128 \
  --per_device_batch=$BATCH --bert $TEXT $STEPS $FLOPS \
  --json_out "$OUT/step128.json"
part step256 200 "$PY" -m benchmarks.train_step --configs=$C256 \
  --per_device_batch=$BATCH --bert $TEXT $STEPS $FLOPS \
  --json_out "$OUT/step256.json"
part sample256 60 "$PY" -m benchmarks.sample --configs=$C256 \
  --batch=$SAMPLE_BATCH --bert $TEXT --json_out "$OUT/sample256.json"
part max_batch256 300 "$PY" -m benchmarks.train_step --configs=$C256 \
  --bert $TEXT --max_batch=$MAX_BATCHES --json_out "$OUT/max_batch256.json"

STEP_JSONS=$(ls "$OUT"/step128.json "$OUT"/step256.json 2>/dev/null)
if [ -n "$STEP_JSONS" ]; then
  "$PY" -m benchmarks.train_step --combine $STEP_JSONS | tee "$OUT/gpu.md"
fi
echo "done in $SECONDS s; results in $OUT" | tee -a "$OUT/parts.txt"
