"""The eval command: ultralytics' DetectionValidator on a held-out split, figures written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ultralytics.nn.tasks import DetectionModel

from .model import as_yolo
from .weights import sha256_file


def evaluate(model: DetectionModel, data: str, *, imgsz: int = 640, batch: int = 16, device: str = "cpu",
             weights_file: str | Path | None = None, conf: float = 0.001, iou: float = 0.7) -> dict[str, Any]:
    """mAP50 and mAP50-95 (fractions), per-class AP and per-image speed of ``model`` on ``data``'s val split.

    ``conf``/``iou`` are ultralytics' validation defaults, the settings the teacher's reference figures used.
    """
    yolo = as_yolo(model)
    metrics = yolo.val(data=str(data), imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou, plots=False,
                       verbose=False, half=False)
    box = metrics.box
    names = model.names
    per_class = {
        names[int(c)]: {"ap50": round(float(box.ap50[i]), 5), "ap50_95": round(float(box.ap[i]), 5)}
        for i, c in enumerate(box.ap_class_index)
    }
    return {
        "variant": getattr(model.model[0], "variant", "yolov8n"),
        "data": str(data),
        "imgsz": imgsz,
        "device": device,
        "map50": round(float(box.map50), 5),
        "map50_95": round(float(box.map), 5),
        "precision": round(float(box.mp), 5),
        "recall": round(float(box.mr), 5),
        "per_class": per_class,
        "speed_ms": {k: round(float(v), 3) for k, v in metrics.speed.items()},
        "weights_sha256": sha256_file(weights_file) if weights_file else None,
    }


def write_json(result: Any, out: str | Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text if not out else f"wrote {out}")
