"""Batch-1 GPU latency of the detectors' networks: eager fp32/fp16, channels-last, CUDA graphs, and batch-32 fp16.

Network only (no decode, letterbox or NMS), fused, 640 px, CUDA events around each call. Writes JSON records.
Run on a CUDA machine, from the repo root:
``PYTHONPATH=. python experiments/gpu_latency.py --out gpu_latency.json [--weights weights]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from starnet_demo.models.yolo import BASELINE, build_model
from starnet_demo.weights.files import load_weights


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def _graphed(model: torch.nn.Module, x: torch.Tensor):
    """Capture one forward pass in a CUDA graph; replaying it removes the per-kernel launch cost."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(x)
    return graph.replay


def measure(variant: str, weights: Path | None, imgsz: int, runs: int, warmup: int) -> list[dict]:
    config_path = weights / f"{variant}.json" if weights else None
    if config_path and config_path.is_file():
        model, _ = load_weights(config_path)
        trained = True
    else:
        model, trained = build_model(variant), False
    model = model.fuse(verbose=False).eval().cuda()
    records = []
    modes = {
        "fp32 eager": (torch.float32, False, False, 1),
        "fp16 eager": (torch.float16, False, False, 1),
        "fp16 channels_last": (torch.float16, True, False, 1),
        "fp16 cuda_graph": (torch.float16, False, True, 1),
        "fp16 channels_last cuda_graph": (torch.float16, True, True, 1),
        "fp16 eager batch32": (torch.float16, False, False, 32),
    }
    for name, (dtype, channels_last, graph, batch) in modes.items():
        m = model.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        x = torch.rand(batch, 3, imgsz, imgsz, device="cuda", dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        if graph:
            fn = _graphed(m, x)
        else:
            def fn(m=m, x=x):
                with torch.no_grad():
                    m(x)
        ms = sorted(_time(fn, runs, warmup))
        records.append({
            "variant": variant, "trained_weights": trained, "mode": name, "batch": batch, "imgsz": imgsz,
            "device": torch.cuda.get_device_name(), "median_ms": round(statistics.median(ms), 3),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
            "per_image_ms": round(statistics.median(ms) / batch, 4),
        })
        print(json.dumps(records[-1]), flush=True)
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=f"{BASELINE},s1,s2,s3,s4")
    p.add_argument("--weights", type=Path, help="folder of trained weights (timing is the same untrained)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    records = [r for v in args.variants.split(",") for r in measure(v, args.weights, args.imgsz, args.runs,
                                                                    args.warmup)]
    args.out.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
