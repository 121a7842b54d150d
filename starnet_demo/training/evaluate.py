"""The eval command: ultralytics' DetectionValidator on a held-out split, figures written as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.metrics import ap_per_class

from ..models.yolo import as_yolo
from ..weights.files import sha256_file
from .data import held_out_view

# The per-image matches ultralytics' validator keeps until it computes the metrics.
STATS = ("tp", "conf", "pred_cls", "target_cls")


def images_map(images: Sequence[dict[str, np.ndarray]], pick: Sequence[int] | None = None) -> tuple[float, float]:
    """mAP50 and mAP50-95 of the given images' matches (``pick`` chooses, with repeats; default: all of them),
    computed as ultralytics' validator does."""
    chosen = [images[i] for i in (range(len(images)) if pick is None else pick)]
    stats = {k: np.concatenate([image[k] for image in chosen]) for k in STATS}
    ap = ap_per_class(stats["tp"], stats["conf"], stats["pred_cls"], stats["target_cls"])[5]
    return (float(ap[:, 0].mean()), float(ap.mean())) if len(ap) else (0.0, 0.0)


def _resampled_se(n_images: int, resamples: int, measure: Callable[[np.ndarray], tuple[float, float]],
                  seed: int = 0) -> tuple[float, float]:
    """The standard deviations of ``measure(pick)`` (an mAP50 and an mAP50-95) over resamplings of the images."""
    rng = np.random.default_rng(seed)
    draws = np.array([measure(rng.integers(n_images, size=n_images)) for _ in range(resamples)])
    se50, se = draws.std(axis=0, ddof=1)
    return round(float(se50), 5), round(float(se), 5)


def bootstrap_se(images: Sequence[dict[str, np.ndarray]], resamples: int) -> dict[str, float]:
    """Standard errors of mAP50 and mAP50-95 over resamplings of the images with replacement: on a split of 128
    images, how far the figures would move on another draw of images like them.

    A standard error rather than a percentile interval: mAP is not a mean over images, and its resamples need not
    centre on the figure, so percentiles need not bracket it evenly.
    """
    se50, se = _resampled_se(len(images), resamples, lambda pick: images_map(images, pick))
    return {"map50_se": se50, "map50_95_se": se}


def paired_se(ours: Sequence[dict[str, np.ndarray]], theirs: Sequence[dict[str, np.ndarray]],
              resamples: int) -> dict[str, float]:
    """Standard errors of our mAPs minus theirs, over the same resamplings of the images for both. Far smaller than
    either figure's own (two S1 weights on coco-mini val: 0.010 against 0.028,
    ``docs/training/s1-cpu-train-head.against-committed.json``), as an image that is hard for one model
    is mostly hard for the other: this is the figure that says whether new weights are better."""
    if len(ours) != len(theirs):
        raise ValueError(f"the two evaluations saw {len(ours)} and {len(theirs)} images")
    se50, se = _resampled_se(len(ours), resamples,
                             lambda pick: np.subtract(images_map(ours, pick), images_map(theirs, pick)))
    return {"map50_difference_se": se50, "map50_95_difference_se": se}


def _validate(model: DetectionModel, data: str, **settings: Any) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """Ultralytics' validation metrics, and the per-image matches behind them."""
    yolo = as_yolo(model)
    images: list[dict[str, np.ndarray]] = []

    def keep_matches(validator) -> None:
        """After each batch: the validator clears its per-image matches when it computes the metrics."""
        stats = validator.metrics.stats
        images.extend({k: stats[k][i] for k in STATS} for i in range(len(images), len(stats["tp"])))

    yolo.add_callback("on_val_batch_end", keep_matches)
    return yolo.val(data=str(data), plots=False, verbose=False, half=False, **settings), images


def _variant(model: DetectionModel) -> str:
    return getattr(model.model[0], "variant", "yolov8n")


def evaluate(model: DetectionModel, data: str, *, imgsz: int = 640, batch: int = 16, device: str = "cpu",
             weights_file: str | Path | None = None, conf: float = 0.001, iou: float = 0.7,
             bootstrap: int = 0, against: DetectionModel | None = None,
             against_file: str | Path | None = None) -> dict[str, Any]:
    """mAP50 and mAP50-95 (fractions), per-class AP and per-image speed of ``model`` on ``data``'s val split; with
    ``bootstrap`` resamplings of the images, their standard errors; with ``against``, the paired difference from
    that model's figures on the same images.

    ``conf``/``iou`` are ultralytics' validation defaults, the settings the teacher's reference figures used.
    """
    settings = dict(imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou)
    with held_out_view(data) as view:
        metrics, images = _validate(model, view, **settings)
        if against is not None:
            theirs_metrics, theirs = _validate(against, view, **settings)
    box = metrics.box
    names = model.names
    per_class = {
        names[int(c)]: {"ap50": round(float(box.ap50[i]), 5), "ap50_95": round(float(box.ap[i]), 5)}
        for i, c in enumerate(box.ap_class_index)
    }
    result = {
        "variant": _variant(model),
        "data": str(data),
        "imgsz": imgsz,
        "batch": batch,  # rect batches share a letterbox shape, so the batch size moves the figures
        "device": device,
        "map50": round(float(box.map50), 5),
        "map50_95": round(float(box.map), 5),
        **(bootstrap_se(images, bootstrap) if bootstrap else {}),
        "precision": round(float(box.mp), 5),
        "recall": round(float(box.mr), 5),
        "per_class": per_class,
        "speed_ms": {k: round(float(v), 3) for k, v in metrics.speed.items()},
        "images": len(images),
        "weights_sha256": sha256_file(weights_file) if weights_file else None,
    }
    if against is not None:
        other = theirs_metrics.box
        result["against"] = {"variant": _variant(against),
                             "weights_sha256": sha256_file(against_file) if against_file else None,
                             "map50": round(float(other.map50), 5),
                             "map50_95": round(float(other.map), 5),
                             "map50_difference": round(float(box.map50 - other.map50), 5),
                             "map50_95_difference": round(float(box.map - other.map), 5),
                             **(paired_se(images, theirs, bootstrap) if bootstrap else {})}
    return result


def write_json(result: Any, out: str | Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text if not out else f"wrote {out}")
