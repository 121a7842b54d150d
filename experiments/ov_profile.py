"""Where OpenVINO spends a StarNet detector's inference time, by part of the model, against YOLOv8n.

The benchmark gives one inference figure per model; this splits it with OpenVINO's own per-node counters
(``PERF_COUNT``) into backbone parts (StarNet's stem and stages, YOLOv8n's layers 0-9), neck and Detect head, so
"S1 is 1.4x YOLOv8n" can be traced to the layers that cost it. Runs the exports the detector uses, cached.

    PYTHONPATH=. python experiments/ov_profile.py --variants s1,s4 --precision bf16 --out docs/bench/ov-profile.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from starnet_demo.inference.backends import OpenVINOBackend
from starnet_demo.inference.detector import load_model
from starnet_demo.inference.exports import export
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.models.yolo import ADAPTER_LAYERS, BASELINE, TEACHER_FIRST_SHARED, TEACHER_OFFSET
from starnet_demo.tools.bench import machine_info

_LAYER = re.compile(r"model\.(\d+)(?:\.body\.(stem|stages_\d))?")
YOLOV8N_DETECT = 22  # YOLOv8n's Detect layer; ours is 20


def part(node: str, starnet: bool) -> str:
    """``backbone stem``/``backbone stages_k`` and ``adapters`` for StarNet, ``backbone`` for YOLOv8n's layers before
    the SPPF; then ``sppf``, ``neck`` and ``head`` for both.

    The SPPF, neck and head share YOLOv8n's layer numbers shifted by ``TEACHER_OFFSET``, so the two compare part for
    part.
    """
    match = _LAYER.search(node)
    if not match:
        return "other"
    layer = int(match.group(1))
    if starnet and match.group(2):
        return f"backbone {match.group(2)}"
    if starnet and layer in ADAPTER_LAYERS:
        return "adapters"
    layer += TEACHER_OFFSET if starnet else 0
    if layer < TEACHER_FIRST_SHARED:
        return "backbone"
    return {TEACHER_FIRST_SHARED: "sppf", YOLOV8N_DETECT: "head"}.get(layer, "neck")


def profile(variant: str, precision: str, imgsz: int, runs: int) -> dict[str, float]:
    model, _ = load_model(resolve_spec(variant, "cpu", "openvino", imgsz, allow_untrained=True))
    backend = OpenVINOBackend(export(model, "openvino", imgsz), precision, {"PERF_COUNT": True})
    x = np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)
    for _ in range(5):
        backend(x)
    ms: Counter[str] = Counter()
    for _ in range(runs):
        backend(x)
        for node in backend.request.profiling_info:
            ms[part(node.node_name, variant != BASELINE)] += node.real_time.total_seconds() * 1000 / runs
    return {"total": round(sum(ms.values()), 2), **{k: round(v, 2) for k, v in sorted(ms.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="s1", help="comma-separated; yolov8n is always added")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ov-profile.json"))
    args = parser.parse_args()
    result = {"precision": args.precision, "imgsz": args.imgsz, "runs": args.runs, "machine": machine_info("cpu"),
              "ms": {v: profile(v, args.precision, args.imgsz, args.runs)
                     for v in [BASELINE, *args.variants.split(",")]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for variant, parts in result["ms"].items():
        print(variant, parts)


if __name__ == "__main__":
    main()
