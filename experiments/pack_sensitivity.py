"""Pack more of a weights file as int8, choosing the tensors on training images and checking the held-out rule once.

``compact_weights.py`` tries whole scopes (every conv, all but the Detect head, the backbone) and keeps the widest
whose held-out mAP50 and mAP50-95 stay within 0.002 of the fp16 file's. For S3 only the backbone passed, which left
the tracked tree over 40 MiB. Here each fp16 tensor that could be packed is ranked by how much packing it alone (on
top of the present packing) moves the model's outputs on distill *training* images, per byte it saves; the cheapest
are packed until ``--save`` bytes are saved, and ``compact_weights.compact`` then applies the held-out rule once to
that scope (if it fails, ``compact`` leaves the fp16 file in place: ``git checkout weights/`` to undo). Run from the
repository root with the fp16 files in ``--source`` (``git show 75f147e^:weights/s3.safetensors``, and its ``.json``):
``PYTHONPATH=.:experiments python experiments/pack_sensitivity.py --variant s3 --source /tmp/fp16 --save 1000000
--data ../shared/datasets/coco-mini/data.yaml --images ../shared/datasets/distill/images/train``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from compact_weights import compact
from ultralytics.data.augment import LetterBox

from starnet_demo.weights.compact import pack, packable, unpack
from starnet_demo.weights.files import load_weights, read_config, weight_files


def batch(images: list[Path], imgsz: int) -> torch.Tensor:
    box = LetterBox((imgsz, imgsz), auto=False)
    arrays = [box(image=cv2.imread(str(p)))[..., ::-1] for p in images]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float() / 255


def change(model: torch.nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """How far the outputs moved, where it matters: per anchor, the squared change of the class scores plus that of
    the box relative to the box's size, weighted by the reference's top score (background anchors barely count)."""
    with torch.inference_mode():
        y = model(x)[0]
    weight = reference[:, 4:].amax(dim=1)
    size = reference[:, 2:4].mean(dim=1, keepdim=True).clamp_min(1)
    err = ((y[:, 4:] - reference[:, 4:]) ** 2).sum(1) + (((y[:, :4] - reference[:, :4]) / size) ** 2).sum(1)
    return float((weight * err).sum() / weight.sum())


def ranked(variant: str, source: Path, scope: str, images: list[Path], imgsz: int) -> list[dict]:
    """Each tensor that ``scope`` leaves fp16 and a wider packing would take: the output change packing it adds, and
    the bytes it saves (one per element, less a float32 scale per output channel)."""
    model, _ = load_weights(weight_files(variant, source)[1])
    base = unpack(pack(model.state_dict(), scope=scope))
    model.load_state_dict(base)
    x = batch(images, imgsz)
    with torch.inference_mode():
        reference = model(x)[0]
    rows = []
    for key, tensor in base.items():
        if not packable(key, tensor) or packable(key, tensor, scope):
            continue
        model.load_state_dict({key: unpack(pack({key: tensor}))[key]}, strict=False)
        rows.append({"key": key, "elements": tensor.numel(), "saves": tensor.numel() - 4 * tensor.shape[0],
                     "change": change(model, x, reference)})
        model.load_state_dict({key: tensor}, strict=False)
    return sorted(rows, key=lambda r: r["change"] / r["saves"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", required=True)
    p.add_argument("--source", type=Path, required=True, help="folder with the variant's fp16 weights")
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--save", type=int, required=True, help="bytes to save beyond the present packing")
    p.add_argument("--data", required=True, help="data YAML whose val split is held out")
    p.add_argument("--images", type=Path, required=True, help="training images to rank on")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--tolerance", type=float, default=0.002)
    p.add_argument("--out", type=Path, default=Path("docs/training/weights-int8-ranked.json"))
    args = p.parse_args()
    scope = read_config(weight_files(args.variant, args.weights)[1]).get("int8_scope", "")
    pool = sorted(args.images.glob("*.jpg"))
    images = pool[:: max(1, len(pool) // args.count)][: args.count]  # spread over the pool's videos and sources
    rows = ranked(args.variant, args.source, scope, images, args.imgsz)
    chosen, saved = [], 0
    for row in rows:
        if saved >= args.save:
            break
        chosen.append(row["key"])
        saved += row["saves"]
    wider = "|".join([*([scope] if scope else []), *(f"^{re.escape(k)}$" for k in chosen)])
    record = compact(args.variant, args.weights, args.data, args.tolerance,
                     "coco-mini val (128 images, held out)", wider, args.source)
    out = {"variant": args.variant, "ranked_on": f"{len(images)} images of {args.images.parent.parent.name}"
           f" at {args.imgsz} px", "start_scope": scope, "ranking": rows, "packed": chosen, "saves": saved,
           "result": record}
    records = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps([*[r for r in records if r["variant"] != args.variant], out], indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
