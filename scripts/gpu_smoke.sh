#!/usr/bin/env bash
# GPU smoke test and throughput probe for the training recipe: tiny time budgets, a random-init teacher, and
# distill-extra alone (the real run uses scripts/train_gpu.sh). Writes logs to $OUT.
set -euo pipefail
D=$PWD/.gpu/extra/distill-extra
S=/tmp/smoke
rm -rf $S && mkdir -p $S/val/images $S/val/labels
for f in $(ls $D/images/train | head -64); do
  ln -s $D/images/train/$f $S/val/images/$f; ln -s $D/labels/train/${f%.*}.txt $S/val/labels/${f%.*}.txt
done
python3 - <<PY
import yaml
from safetensors.torch import save_file
from starnet_demo.model import build_model
d = yaml.safe_load(open("$D/data.yaml"))
d.update(train="$D/images/train", val="$S/val/images")
yaml.safe_dump(d, open("$S/data.yaml", "w"))
save_file(build_model("yolov8n").state_dict(), "$S/teacher.safetensors")
PY
common="--data $S/data.yaml --batch ${BATCH:-64} --workers ${WORKERS:-14} --cache ram --device ${DEVICE:-0} --project $S/runs"
python3 -m starnet_demo train --variant s1 --stage distill --teacher $S/teacher.safetensors --imgsz ${DIMG:-512} \
  --time-min ${SMOKE_MIN:-0.35} --name s1-distill $common
python3 -m starnet_demo train --variant s1 --stage finetune --weights $S/runs/s1-distill/export/s1.json \
  --imgsz ${FIMG:-640} --time-min ${SMOKE_MIN:-0.35} --name s1-finetune $common
PYTHONPATH=$PWD python3 scripts/gpu_latency.py --variants yolov8n,s1 --runs 30 --warmup 5 --out $OUT/gpu_latency_smoke.json
