"""Does a student's eval mode compute what its train mode learnt? Feature loss against the teacher, both ways.

Distillation optimises the train-mode function (BatchNorms use batch statistics); the app runs eval mode (running
statistics). Star blocks multiply two branches, so a small mismatch can grow block after block. This prints, per
weights file, the normalised feature loss on P3/P4/P5 in each mode on letterboxed images, and writes it to JSON.

    PYTHONPATH=. python experiments/bn_drift.py weights/s1.json "s2 before=old/s2.json" \
        --images ../shared/datasets/coco-mini/images/val --out docs/training/bn-drift.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from starnet_demo.inference.preprocess import letterbox
from starnet_demo.models.yolo import ADAPTER_LAYERS, TEACHER_FEATURE_LAYERS, forward_layers
from starnet_demo.training.distill import LEVELS, feature_loss, load_teacher
from starnet_demo.weights.files import load_weights, sha256_file


def batch(images: Path, n: int, imgsz: int) -> torch.Tensor:
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:n]
    if not files:
        raise SystemExit(f"no images in {images}")
    arrays = [letterbox(cv2.imread(str(f)), imgsz)[..., ::-1] for f in files]
    return torch.from_numpy(np.stack(arrays).copy()).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def drift(label: str, path: str, x: torch.Tensor, targets: list[torch.Tensor]) -> dict:
    model, config = load_weights(path)
    model = model.float().eval()
    evaluated = feature_loss(forward_layers(model, x, ADAPTER_LAYERS), targets)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.momentum = 0.0  # batch statistics, running ones left as they are
    trained = feature_loss(forward_layers(model, x, ADAPTER_LAYERS), targets)
    return {"label": label, "weights": str(path), "variant": config["variant"],
            "sha256": sha256_file(Path(path).with_suffix(".safetensors")),
            "eval_mode": dict(zip(LEVELS, evaluated.tolist(), strict=True)),
            "train_mode": dict(zip(LEVELS, trained.tolist(), strict=True))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", nargs="+", help="weights .json files, each optionally LABEL=PATH")
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--teacher", default="../shared/teachers/yolov8n-coco.safetensors")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--n", type=int, default=32, help="images, in one batch")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    x = batch(args.images, args.n, args.imgsz)
    with torch.no_grad():
        targets = forward_layers(load_teacher(str(Path(args.teacher).resolve())), x, TEACHER_FEATURE_LAYERS)
    records = []
    for item in args.weights:
        label, _, path = item.rpartition("=")
        r = drift(label or path, path, x, targets)
        records.append(r)
        print(f"{r['label']}: eval mode {r['eval_mode']}  train mode {r['train_mode']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"images": str(args.images), "n": len(x), "imgsz": args.imgsz,
                                        "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
