"""Star or sum on the real detector: the same trained weights, with ``act(f1(x)) * f2(x)`` replaced by
``act(f1(x)) + f2(x)`` in chosen blocks, a stage, or all of them (``models.star.swapped_to_sum``), at inference.

This is not the paper's ablation (which trains a sum network from scratch); it asks a narrower question that a
trained detector can answer: how much of what the network computes runs through the product. ``star_vs_sum`` gives
one image's detections and one block's maps both ways; ``python -m starnet_demo.explain.swap`` measures held-out
mAP with each stage swapped (``docs/explain/star-vs-sum.json``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import supervision as sv
import torch

from ..errors import InputError
from ..inference.detector import Detector
from ..inference.preprocess import square
from ..models.backbone import get_variant
from ..models.star import StarMaps, capture_star, swapped_to_sum

FUSIONS = ("star", "sum")
MEASURED = Path(__file__).resolve().parents[2] / "docs" / "explain" / "star-vs-sum.json"


def scope_choices(variant: str) -> list[str]:
    """What can be swapped: ``all``, ``stage 0``…, and every block (``2.5``)."""
    v = get_variant(variant)
    return ["all", *(f"stage {i}" for i in range(len(v.depths))), *v.block_keys]


def swap_keys(variant: str, scopes: str | Sequence[str]) -> list[str]:
    """The blocks that ``scopes`` (``all``, ``stage N``, a block key, or a list of them) name, in forward order."""
    keys = get_variant(variant).block_keys
    scopes = list(scopes) if isinstance(scopes, (list, tuple)) else [] if scopes is None else [scopes]
    if not scopes:
        raise InputError("choose where to swap the star for a sum: all, a stage or blocks")
    chosen: set[str] = set()
    for scope in scopes:
        scope = str(scope).strip().lower()
        stage = scope.removeprefix("stage").strip()
        if scope == "all":
            chosen.update(keys)
        elif scope.startswith("stage") and any(k.split(".")[0] == stage for k in keys):
            chosen.update(k for k in keys if k.split(".")[0] == stage)
        elif scope in keys:
            chosen.add(scope)
        else:
            raise InputError(f"cannot swap {scope!r:.20} in {variant}; choose all, stage 0-{keys[-1][0]} or a block "
                             f"such as {keys[-1]}")
    return [k for k in keys if k in chosen]


@dataclass
class Pass:
    """One forward pass: its detections and the chosen block's maps (``maps.star`` is what ``g`` received: the
    product, or the sum where the block was swapped)."""

    fusion: str
    detections: sv.Detections
    maps: StarMaps


@dataclass
class StarVsSum:
    picture: np.ndarray  # the letterboxed image without its padding, which the maps cover
    swapped: list[str]
    block: str
    star: Pass
    sum: Pass

    def kept(self, iou: float = 0.5) -> int:
        """How many of the star detections the sum pass still makes: same class, IoU at least ``iou``."""
        a, b = self.star.detections, self.sum.detections
        if not len(a) or not len(b):
            return 0
        overlap = sv.box_iou_batch(a.xyxy, b.xyxy) * (a.class_id[:, None] == b.class_id[None, :])
        return int((overlap >= iou).any(axis=1).sum())


def star_vs_sum(detector: Detector, image: np.ndarray, scopes: str | Sequence[str], block: str,
                conf: float = 0.25, iou: float = 0.45, imgsz: int | None = None,
                classes: list[int] | None = None) -> StarVsSum:
    """Detect in an RGB image twice with the detector's PyTorch model, as trained and with the sum swapped into
    ``scopes``, recording ``block``'s maps both times (square letterbox, as ``Detector.detect`` does it)."""
    keys = swap_keys(detector.variant, scopes)
    sq = square(image, imgsz or detector.imgsz)
    size = sq.size
    passes = {}
    with detector.pytorch() as model:
        x = sq.tensor(model)
        for fusion in FUSIONS:
            with swapped_to_sum(model, keys if fusion == "sum" else []):
                preds, maps = capture_star(model, x, keys=[str(block)])
            passes[fusion] = (preds, maps[str(block)])
    out = {f: Pass(f, detector.to_detections(preds, (size, size), image.shape[:2], conf, iou, classes),
                   maps.crop(sq.box, (size, size))) for f, (preds, maps) in passes.items()}
    return StarVsSum(sq.picture, keys, str(block), out["star"], out["sum"])


@contextmanager
def unhurried_nms(max_time_img: float = 60.0) -> Iterator[None]:
    """Give ultralytics' NMS all the time it needs for the ``with``. Its validator allows 2 s + 0.05 s per image and
    then drops the rest of the batch's boxes; a network with the sum swapped in puts thousands of candidates over
    validation's 0.001 threshold, so on a shared CPU the cut would lower the very mAP being measured."""
    from ultralytics.utils import nms

    original = nms.non_max_suppression
    nms.non_max_suppression = functools.partial(original, max_time_img=max_time_img)
    try:
        yield
    finally:
        nms.non_max_suppression = original


def measure(variant: str, data: str, imgsz: int = 640, batch: int = 16, device: str = "cpu",
            bootstrap: int = 200) -> dict:
    """Held-out mAP of ``variant``'s weights as trained, then with the sum in each stage and in all of them, through
    the project's ``training.evaluate.evaluate`` (the settings of the weights' recorded figures by default)."""
    from ..training.evaluate import evaluate
    from ..weights.files import load_weights
    from ..weights.hub import resolve

    resolved = resolve(variant)
    model, _ = load_weights(resolved.path)
    tensors = Path(resolved.path).with_suffix(".safetensors")
    v = get_variant(variant)
    rows, start = [], time.perf_counter()
    for scope in ["none", *(f"stage {i}" for i in range(len(v.depths))), "all"]:
        keys = [] if scope == "none" else swap_keys(variant, scope)
        trial = copy.deepcopy(model)  # ultralytics' validator fuses the model it is given
        with swapped_to_sum(trial, keys), unhurried_nms():
            r = evaluate(trial, data, imgsz=imgsz, batch=batch, device=device, weights_file=tensors,
                         bootstrap=bootstrap)
        rows.append({"sum_in": scope, "blocks": len(keys), **{k: r[k] for k in (
            "map50", "map50_se", "map50_95", "map50_95_se", "precision", "recall") if k in r}})
        print(f"sum in {scope:8s} ({len(keys):2d} blocks): mAP50 {r['map50']:.4f}", flush=True)
    return {
        "what": "held-out mAP with the star act(f1(x)) * f2(x) replaced by act(f1(x)) + f2(x) in the named blocks "
                "at inference, same trained weights, no retraining (models.star.swapped_to_sum)",
        "variant": variant, "data": str(data), "images": r["images"], "imgsz": imgsz, "batch": batch,
        "device": device, "nms": "ultralytics' validator NMS without its time limit (unhurried_nms)",
        "bootstrap": bootstrap, "weights_sha256": r["weights_sha256"],
        "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1), "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    from ..training.evaluate import write_json

    parser = argparse.ArgumentParser(prog="python -m starnet_demo.explain.swap", description=measure.__doc__)
    parser.add_argument("--variant", default="s1")
    parser.add_argument("--data", required=True, help="data YAML whose val split is held out (coco-mini)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (docs/explain/star-vs-sum.json)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamplings for the standard errors")
    args = parser.parse_args(argv)
    write_json(measure(args.variant, args.data, args.imgsz, args.batch, args.device, args.bootstrap), args.out)


if __name__ == "__main__":
    main()
