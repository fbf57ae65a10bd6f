#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create (or reuse) it, install the
# project on every worker, run the same command on every worker.
#
#   bash launch/tpu_vm.sh            # after setting the variables below
#
# Every host runs `python -m xmcgan_jax.main`; JAX finds the other hosts
# itself (TPU_WORKER_HOSTNAMES) and each host reads its own data shard.
set -euo pipefail

# ---- Set these -------------------------------------------------------------
TPU_NAME="${TPU_NAME:-xmcgan-v3-32}"           # TPU VM name.
ZONE="${ZONE:-europe-west4-a}"                 # Zone with your TPU quota.
PROJECT="${PROJECT:-my-gcp-project}"           # GCP project.
ACCELERATOR="${ACCELERATOR:-v3-32}"            # e.g. v3-32 (paper), v4-32, v5litepod-16.
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"      # TPU VM software version.
CONFIG="${CONFIG:-configs/coco.py}"            # Experiment config.
WORKDIR="${WORKDIR:-gs://my-bucket/xmcgan/coco}"  # Shared gs:// workdir.
DATA_DIR="${DATA_DIR:-gs://my-bucket/tensorflow_datasets}"  # Prepared TFDS data.
TEXT_ENCODER="${TEXT_ENCODER:-bert-base-uncased}"  # Dir on every host or HF cache name.
REPO_URL="${REPO_URL:-https://github.com/YOUR_ORG/xmcgan_jax.git}"  # Where the code is.
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                 # e.g. --config.batch_size=512
# -----------------------------------------------------------------------------

gcloud config set project "$PROJECT" >/dev/null
if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "$1"
}

# Install on every worker (idempotent). The text encoder must be readable on
# every host: a local directory, or the Hugging Face cache
# (`huggingface-cli download bert-base-uncased` with network access).
ssh_all "set -e
  if [ ! -d xmcgan_jax ]; then git clone $REPO_URL xmcgan_jax; fi
  cd xmcgan_jax && git pull --ff-only
  python3 -m pip install -q -U 'jax[tpu]' -e .
  python3 -m pip install -q huggingface_hub
  python3 -c 'import huggingface_hub as h; h.snapshot_download(\"$TEXT_ENCODER\", allow_patterns=[\"config.json\", \"model.safetensors\", \"vocab.txt\", \"tokenizer_config.json\"])' || true"

# Train: the same command on every worker, in the background, logs per host.
ssh_all "cd xmcgan_jax && nohup python3 -m xmcgan_jax.main \
  --config=$CONFIG --workdir=$WORKDIR --config.data_dir=$DATA_DIR \
  --config.text_encoder=$TEXT_ENCODER $EXTRA_FLAGS > train.log 2>&1 &"

echo "Training started on $TPU_NAME. Follow with:"
echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f xmcgan_jax/train.log'"
echo "  tensorboard --logdir $WORKDIR"
