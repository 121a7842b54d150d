"""The teacher's held-out figures through our own `eval` path (same validator settings, batch, bootstrap), so that
"of the teacher's mAP" compares like with like. `../shared/teachers/README.md` quotes 0.5645 at batch 1; `eval`
validates in batches of 16, whose shared letterbox shapes pad differently.

    PYTHONPATH=. python scripts/eval_teacher.py ../shared/teachers/yolov8n-coco.safetensors \
        --data ../shared/datasets/coco-mini/data.yaml --out docs/training/teacher-coco-mini-val.json
    PYTHONPATH=. python scripts/eval_teacher.py ../shared/teachers/yolov8n-coco.safetensors --batch 1 \
        --data ../shared/datasets/coco-mini/data.yaml --out docs/training/teacher-coco-mini-val-batch1.json
"""

from __future__ import annotations

import argparse

from starnet_demo.training.distill import load_teacher
from starnet_demo.training.evaluate import evaluate, write_json

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("teacher", help="YOLOv8n state dict (safetensors)")
parser.add_argument("--data", required=True)
parser.add_argument("--batch", type=int, default=16, help="eval's own batch by default")
parser.add_argument("--out")
args = parser.parse_args()
write_json(evaluate(load_teacher(args.teacher), args.data, batch=args.batch, weights_file=args.teacher, bootstrap=1000),
           args.out)
