#!/usr/bin/env bash
# Train on one multi-GPU machine: one process drives all local GPUs (the
# ('data',) mesh spans them), so no launcher is needed.
#
#   bash launch/gpu_multi.sh
#
# For several machines, start one process per machine with the same command
# and set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or
# use launch/slurm.sbatch): main.py then calls jax.distributed.initialize().
set -euo pipefail

# ---- Set these -------------------------------------------------------------
CONFIG="${CONFIG:-configs/coco_128.py}"        # The 2021 GPU recipe (128px, batch 56).
WORKDIR="${WORKDIR:-/data/runs/coco_128}"      # Checkpoints, logs, samples.
DATA_DIR="${DATA_DIR:-/data/tensorflow_datasets}"  # Prepared TFDS data.
TEXT_ENCODER="${TEXT_ENCODER:-bert-base-uncased}"  # Directory or HF cache name.
GPUS="${GPUS:-0,1,2,3,4,5,6,7}"                # Visible GPUs.
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                 # e.g. --config.batch_size=64
# -----------------------------------------------------------------------------

# Install once: pip install -U "jax[cuda12]" -e .
export CUDA_VISIBLE_DEVICES="$GPUS"
# Let XLA use most of the GPU memory; TensorFlow (data only) stays off GPUs.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
python3 -m xmcgan_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data_dir="$DATA_DIR" --config.text_encoder="$TEXT_ENCODER" \
  $EXTRA_FLAGS
