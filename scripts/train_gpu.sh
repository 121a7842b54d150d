#!/usr/bin/env bash
# The recipe that trained weights/ on one GPU. Per variant: distil the StarNet backbone onto the teacher's P3/P4/P5
# maps (teacher's SPPF/neck/head frozen), then fine-tune end to end on ground truth + pseudo-labels. Every stage is
# `python -m starnet_demo train`; the held-out coco-mini val split is only ever evaluated.
#   ROOT      datasets folder (coco-mini, distill, optional distill-extra)  [../shared/datasets]
#   TEACHER   YOLOv8n state dict (safetensors)                              [../shared/teachers/yolov8n-coco.safetensors]
#   PLAN      "variants:distill-min,finetune-min" groups, one python process each
#   START     folder of earlier weights to continue from (e.g. weights), optional
set -euo pipefail
ROOT=${ROOT:-../shared/datasets}
TEACHER=${TEACHER:-../shared/teachers/yolov8n-coco.safetensors}
PLAN=${PLAN:-"s1:6,4 s2,s3,s4:4,3"}
PROJECT=${PROJECT:-runs/gpu}
python3 -m starnet_demo prepare-data --root "$ROOT" --out "$PROJECT/data"
for group in $PLAN; do
  variants=${group%%:*}; minutes=${group#*:}
  python3 -m starnet_demo train --variant "$variants" --stage distill,finetune --teacher "$TEACHER" \
    ${START:+--weights "$START"} --data "$PROJECT/data/data.yaml" --time-min "$minutes" \
    --imgsz "${IMGSZ:-512,640}" --batch "${BATCH:-64}" --workers "${WORKERS:-14}" --cache ram \
    --device "${DEVICE:-0}" --project "$PROJECT" --set exist_ok=True
done
