"""Is a student short of data or of training? Its distillation loss on images it trained on against held-out ones.

On CPU, S1's training output loss kept falling while its held-out mAP stayed put. If the loss on training images is
well below the loss on held-out ones, the student is fitting its 2.8k images rather than the teacher, and more
images would help more than more steps; if the two are close, the student underfits everywhere and more training
(or capacity) is what it needs. The loss is ``DistillStudent.loss`` in eval mode (the deployed function) on
letterboxed, unaugmented images.

    PYTHONPATH=. python experiments/distill_gap.py weights/s1.json "s1 before=old/s1.json" \
        --train ../shared/datasets/coco-mini/images/train --held-out ../shared/datasets/coco-mini/images/val \
        --out docs/training/distill-gap.json

The training images should come from the same source as the held-out ones (here both are COCO photos with ground
truth), and a student from before the training in question gives the baseline ratio: the two sets need not score
alike even for weights that never fitted either.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bn_drift import batch  # experiments/ is on sys.path when this runs as a script

from starnet_demo.models.yolo import build_model
from starnet_demo.training.distill import DistillStudent
from starnet_demo.weights.files import load_weights, sha256_file


@torch.no_grad()
def losses(student: DistillStudent, x: torch.Tensor, chunk: int) -> dict[str, float]:
    """Each loss term, averaged over the images (the loss is a per-batch mean, so chunks are weighted by size)."""
    totals: dict[str, float] = {}
    for part in x.split(chunk):
        for name, value in student.loss({"img": part})[1].items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(part)
    return {name: round(total / len(x), 4) for name, total in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", nargs="+", help="weights .json files, each optionally LABEL=PATH")
    p.add_argument("--train", required=True, type=Path, help="images the weights were trained on")
    p.add_argument("--held-out", required=True, type=Path, help="images they never saw")
    p.add_argument("--teacher", default="../shared/teachers/yolov8n-coco.safetensors")
    p.add_argument("--imgsz", type=int, default=448, help="the training size")
    p.add_argument("--n", type=int, default=128, help="images from each folder (the first, by name)")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    images = {"train": batch(args.train, args.n, args.imgsz), "held_out": batch(args.held_out, args.n, args.imgsz)}
    records = []
    for item in args.weights:
        label, _, path = item.rpartition("=")
        model, config = load_weights(path)
        student = build_model(config["variant"], nc=config["nc"], names=model.names, cls=DistillStudent)
        student.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        student.teacher_path, student.output_kd = str(Path(args.teacher).resolve()), 1.0
        student.eval()
        r = {"label": label or path, "weights": path, "variant": config["variant"],
             "sha256": sha256_file(Path(path).with_suffix(".safetensors")),
             **{split: losses(student, x, args.chunk) for split, x in images.items()}}
        r["held_out_over_train"] = {k: round(r["held_out"][k] / r["train"][k], 3) for k in r["train"]}
        records.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"train": str(args.train), "held_out": str(args.held_out), "n": args.n,
                                        "imgsz": args.imgsz, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
