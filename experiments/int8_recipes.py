"""Which parts of a YOLOv8-StarNet must stay in float for OpenVINO int8 to pass the accuracy guard?

Two ways, on one variant's weights (``weights/``):

- ``--recipes a,b,…``: quantize with each recipe (``RECIPES`` below; ``int8.INT8`` is the one shipped) on
  ``--images`` distill images and measure held-out mAP50-95 exactly as ``bench --accuracy`` does (``bench._map``:
  the validator at 640 px, batch 1, through the runtime), beside OpenVINO fp32 and bf16. ``--f32`` runs the float
  parts of the int8 model in f32 instead of bf16.
- ``--accuracy-control``: NNCF's ``quantize_with_accuracy_control``, validated on coco-mini's TRAIN split with its
  ground truth (never the held-out val split that the guard measures), keeping quantizers in float until the drop
  there is at most ``--max-drop``; records the operations it reverted to float (from NNCF's log) and measures the
  result on the held-out split.
- ``--paired-se``: for each recipe, the bootstrap standard error of its difference to fp32 on the held-out images,
  i.e. how precisely the guard's single 0.5-point comparison can be made at all.

Every figure is given on the held-out val split (what the guard measures) and on coco-mini train with its ground
truth (``map50_95_train``): a recipe is chosen on train, never on val, and checked once on val. Accuracy does not
depend on the machine's load, so these figures stand whatever else runs. Each line goes to ``--out`` (JSON lines).
Run from the repository root::

    PYTHONPATH=. python experiments/int8_recipes.py --variant s1 --images 100 \\
        --recipes all,float-box,float-head,float-g-box,float-star-head,mixed-float-box
    PYTHONPATH=. python experiments/int8_recipes.py --variant s1 --images 100 --accuracy-control --max-drop 0.003
    PYTHONPATH=. python experiments/int8_recipes.py --variant s1 --images 100 --paired-se --recipes float-box
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from starnet_demo.inference import int8, runtimes
from starnet_demo.inference.backends import OpenVINOBackend, load_backend
from starnet_demo.inference.detector import POOL, Detector, load_model
from starnet_demo.inference.exports import export
from starnet_demo.inference.int8 import INT8, Int8Recipe, calibration_blob, calibration_files
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.tools.bench import _map
from starnet_demo.training.data import held_out_view
from starnet_demo.training.evaluate import images_map

DATA = Path("../shared/datasets/coco-mini/data.yaml")
TRAIN = Path("../shared/datasets/coco-mini/images/train")
VAL = Path("../shared/datasets/coco-mini/images/val")
SHAPE = (640, 640)
BOX = (r".*\.cv2\.\d\.2[./].*", r".*\.dfl[./].*", r".*model\.\d+/aten::.*")
HEAD = (r".*\.(cv2|cv3)\.\d\.\d[./].*", r".*\.dfl[./].*", r".*model\.\d+/aten::.*")
STAR = ("Multiply", "Subtract", "Sigmoid")
RECIPES = {r.name: r for r in (
    INT8,
    Int8Recipe("mixed-float-box", preset="mixed", float_patterns=BOX),
    Int8Recipe("all"),
    Int8Recipe("float-star", preset="mixed", float_types=STAR),
    Int8Recipe("float-box", float_patterns=BOX),
    Int8Recipe("float-head", float_patterns=HEAD),
    Int8Recipe("float-g-box", float_patterns=(r".*\.g\.conv[./].*", *BOX)),
    Int8Recipe("float-star-head", preset="mixed", float_types=STAR, float_patterns=HEAD),
)}


def recipe_map(variant: str, name: str, images: int, views: dict[str, str]) -> dict:
    """mAP50-95 through OpenVINO at ``name`` (fp32, bf16 or an int8 recipe) on each view, by the guard's protocol."""
    if name in ("fp32", "bf16"):
        precision = name
    else:
        int8.INT8 = dataclasses.replace(RECIPES[name], images=images)
        POOL.clear()  # backends are pooled per spec and shape, not per recipe
        precision = "int8"
    t0 = time.time()
    detector = Detector(resolve_spec(variant, "cpu", "openvino", 640, precision))
    build = round(time.time() - t0, 1)
    return {"variant": variant, "recipe": name, "images": images if precision == "int8" else None,
            **{f"map50_95_{split}": _map(detector, view, 640) for split, view in views.items()}, "build_s": build}


@contextlib.contextmanager
def train_as_val() -> Iterator[str]:
    """coco-mini's train split (ground truth) as a validation YAML: a held-out-like second opinion, for choosing."""
    config = yaml.safe_load(DATA.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-as-val.yaml"
        path.write_text(yaml.safe_dump({**config, "train": str(TRAIN.resolve()), "val": str(TRAIN.resolve())}))
        with held_out_view(path) as view:
            yield view


@functools.cache
def _matcher():
    from ultralytics.models.yolo.detect import DetectionValidator

    matcher = DetectionValidator()
    matcher.iouv = torch.linspace(0.5, 0.95, 10)
    return matcher


def image_stats(pred: torch.Tensor, path: Path) -> dict:
    """One image's matches as ultralytics' validator counts them (conf 0.001, IoU 0.7; single-label NMS), from the
    raw output of a model fed ``calibration_blob(path)``, against the image's ground-truth labels."""
    from ultralytics.utils import nms, ops
    from ultralytics.utils.metrics import box_iou

    h, w = cv2.imread(str(path)).shape[:2]
    det = nms.non_max_suppression(torch.as_tensor(pred).float(), 0.001, 0.7, max_det=300)[0]
    det[:, :4] = ops.scale_boxes(SHAPE, det[:, :4], (h, w))
    label = Path(str(path).replace("/images/", "/labels/")).with_suffix(".txt")
    rows = np.loadtxt(label, ndmin=2) if label.is_file() and label.stat().st_size else np.zeros((0, 5))
    cls = torch.from_numpy(rows[:, 0]).float()
    boxes = ops.xywhn2xyxy(torch.from_numpy(rows[:, 1:5]).float(), w, h)
    tp = (_matcher().match_predictions(det[:, 5], cls, box_iou(boxes, det[:, :4])).numpy()
          if len(det) and len(cls) else np.zeros((len(det), 10), bool))
    return {"tp": tp, "conf": det[:, 4].numpy(), "pred_cls": det[:, 5].numpy(), "target_cls": cls.numpy()}


def paired_se(variant: str, name: str, images: int, resamples: int = 300) -> dict:
    """The bootstrap standard error of (int8 - fp32) mAP50-95 over the held-out images, both models on the same
    resamples: how far the guard's one figure would move on another 128 images like these."""

    model, _ = load_model(resolve_spec(variant, "cpu", "openvino"))
    int8.INT8 = dataclasses.replace(RECIPES[name], images=images)
    POOL.clear()  # backends are pooled per spec and shape, not per recipe
    val = sorted(VAL.glob("*.jpg"))
    per = {p: [image_stats(b(calibration_blob(f, SHAPE)), f) for f in val]
           for p, b in (("fp32", load_backend(model, "openvino", "cpu", 640, "fp32")),
                        ("int8", load_backend(model, "openvino", "cpu", 640, "int8")))}
    rng = np.random.default_rng(0)
    picks = [rng.integers(len(val), size=len(val)) for _ in range(resamples)]
    deltas = [images_map(per["int8"], k)[1] - images_map(per["fp32"], k)[1] for k in picks]
    return {"variant": variant, "recipe": name, "images": images, "protocol": "single-label NMS, per image",
            "delta_val": round(images_map(per["int8"])[1] - images_map(per["fp32"])[1], 5),
            "paired_se_val": round(float(np.std(deltas, ddof=1)), 5)}


def accuracy_control(variant: str, images: int, max_drop: float, iterations: int, out_dir: Path) -> dict:
    """NNCF's accuracy-controlled quantization, validated on coco-mini train: mAP50-95 as ultralytics computes it."""
    import nncf
    import openvino as ov

    model, _ = load_model(resolve_spec(variant, "cpu", "openvino"))
    fp32 = ov.Core().read_model(str(export(model, "openvino", 640, "fp32")))

    def validate(compiled, items) -> tuple[float, None]:
        output = compiled.outputs[0]
        return images_map([image_stats(compiled(calibration_blob(p, SHAPE))[output], p) for p in items])[1], None

    calibration = calibration_files(Int8Recipe("ac", images=images))
    transform = lambda p: calibration_blob(p, SHAPE)  # noqa: E731
    reverted: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reverted.extend(  # NNCF logs each reverted operation on a tab-indented line
        line.strip() for line in record.getMessage().splitlines()[1:] if "Reverted" in record.getMessage())
    nncf.common.logging.nncf_logger.addHandler(handler)
    t0 = time.time()
    quantized = nncf.quantize_with_accuracy_control(
        fp32, nncf.Dataset(calibration, transform), nncf.Dataset(sorted(TRAIN.glob("*.jpg")), transform), validate,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration),
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            max_num_iterations=iterations, ranking_subset_size=40))
    seconds = time.time() - t0
    nncf.common.logging.nncf_logger.removeHandler(handler)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{variant}.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return {"variant": variant, "recipe": "accuracy-control", "images": images, "max_drop": max_drop,
            "iterations": iterations, "seconds": round(seconds), "ir": str(xml), "reverted_to_float": reverted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="s1")
    p.add_argument("--images", type=int, default=300, help="calibration images from the distill pool")
    p.add_argument("--recipes", default="fp32,bf16,all,float-box")
    p.add_argument("--f32", action="store_true", help="int8 models' float parts in f32 instead of bf16")
    p.add_argument("--accuracy-control", action="store_true")
    p.add_argument("--paired-se", action="store_true", help="the bootstrap s.e. of each recipe's difference to fp32")
    p.add_argument("--max-drop", type=float, default=0.003)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--out", default="runs/int8/recipes.jsonl")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.f32:
        runtimes.openvino_cpu_bf16 = lambda: False
    with held_out_view(DATA) as val, train_as_val() as train, open(out, "a") as log:
        if args.accuracy_control:
            found = accuracy_control(args.variant, args.images, args.max_drop, args.iterations, out.parent / "ac")
            detector = Detector(resolve_spec(args.variant, "cpu", "openvino", 640, "fp32"))
            POOL.discard((detector.spec, SHAPE))  # the guard's protocol on the found IR:
            POOL.get((detector.spec, SHAPE), lambda: OpenVINOBackend(Path(found["ir"]), "int8"))
            results = [{**found, **{f"map50_95_{split}": _map(detector, view, 640)
                                    for split, view in (("val", val), ("train", train))}}]
        elif args.paired_se:
            results = [paired_se(args.variant, name, args.images) for name in args.recipes.split(",")]
        else:
            results = [recipe_map(args.variant, name, args.images, {"val": val, "train": train})
                       for name in args.recipes.split(",")]
        for r in results:
            r["float_parts"] = "f32" if args.f32 else "bf16"
            print(json.dumps(r), flush=True)
            log.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
