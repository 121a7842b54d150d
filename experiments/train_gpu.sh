#!/usr/bin/env bash
# The recipe that trained weights/ on one GPU: distil the StarNet backbone onto the teacher's P3/P4/P5 maps (teacher's
# SPPF/neck/head frozen). A fine-tune stage after it (STAGES=distill,finetune) lowered S1's held-out mAP50 from 0.337
# to 0.251, so it is off by default. Every stage is `python -m starnet_demo train`; the held-out coco-mini val split is
# only ever evaluated. This needs ../shared on the GPU machine; the device tool sends 64 MiB at most, so there use
# the training bundle instead (`python -m starnet_demo bundle`, docs/training.md).
#   ROOT      datasets folder (coco-mini, distill, optional distill-extra)  [../shared/datasets]
#   TEACHER   YOLOv8n state dict (safetensors)                              [../shared/teachers/yolov8n-coco.safetensors]
#   PLAN      "variants:minutes" groups, one python process each; minutes per stage, comma-separated
#   STAGES    distill, or distill,finetune                                  [distill]
#   START     folder of earlier weights to continue from (e.g. weights), optional
#   EXTRA     more train flags, e.g. "--output-kd 1.0" to distil the head's outputs too (on the CPU it took S1 from
#             mAP50 0.347 to 0.385), or "--freeze-bn --reestimate-bn" for weights trained with small batches
#             (re-estimation is undone where it does not lower the eval-mode feature loss)
set -euo pipefail
ROOT=${ROOT:-../shared/datasets}
TEACHER=${TEACHER:-../shared/teachers/yolov8n-coco.safetensors}
PLAN=${PLAN:-"s1:6 s2,s3,s4:4"}
STAGES=${STAGES:-distill}
PROJECT=${PROJECT:-runs/gpu}
python3 -m starnet_demo prepare-data --root "$ROOT" --out "$PROJECT/data"
for group in $PLAN; do
  variants=${group%%:*}; minutes=${group#*:}
  python3 -m starnet_demo train --variant "$variants" --stage "$STAGES" --teacher "$TEACHER" \
    ${START:+--weights "$START"} --data "$PROJECT/data/data.yaml" --time-min "$minutes" \
    --imgsz "${IMGSZ:-512}" --batch "${BATCH:-64}" --workers "${WORKERS:-14}" --cache ram \
    --device "${DEVICE:-0}" --project "$PROJECT" ${EXTRA:-} --set exist_ok=True
done
