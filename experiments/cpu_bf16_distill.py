"""Would bfloat16 autocast speed up distillation on a CPU with native bf16 without changing what it learns?

Ultralytics' AMP is CUDA-only, so the distill stage trains in fp32 on a CPU. This times one distillation step (teacher
fp32, student forward and backward) in fp32 and with the student in bfloat16 autocast, on the same weights and images,
and compares the two gradients: cosine similarity and norm ratio, over all trainable tensors and per backbone part.
Its answer is why ``train`` has no bf16 option (docs/training/cpu-bf16.json).

    PYTHONPATH=.:scripts python experiments/cpu_bf16_distill.py --weights weights/s1.json \
        --images ../shared/datasets/distill/images/train --out docs/training/cpu-bf16.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from bn_drift import batch
from torch.nn.functional import cosine_similarity

from starnet_demo.models.yolo import ADAPTER_LAYERS, TEACHER_FEATURE_LAYERS, forward_layers
from starnet_demo.training.distill import feature_loss, load_teacher
from starnet_demo.training.train import FROZEN_IN_DISTILL
from starnet_demo.weights.files import load_weights


def student(path: str) -> torch.nn.Module:
    """The weights as the distill stage trains them: BatchNorms frozen (eval mode), the teacher's part frozen."""
    model = load_weights(path)[0].float().eval()
    for i, layer in enumerate(model.model):
        layer.requires_grad_(i < FROZEN_IN_DISTILL[0])
    return model


def step(model: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor,
         bf16: bool) -> tuple[float, dict[str, torch.Tensor], float]:
    """Loss per image, gradients by parameter name (float64, for comparing) and seconds of one step (no update)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        targets = forward_layers(teacher, x, TEACHER_FEATURE_LAYERS)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        features = forward_layers(model, x, ADAPTER_LAYERS)
    loss = feature_loss(features, targets).sum()
    loss.backward()
    seconds = time.perf_counter() - t0
    grads = {n: p.grad.detach().flatten().double() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, seconds


def part(name: str) -> str:
    """model.0.body.stages_2.3.… → stages_2; the 1×1 adapters (layers 1..6) → adapters."""
    pieces = name.split(".")
    return pieces[3] if pieces[1] == "0" else "adapters"


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> dict[str, float]:
    """How gradient ``b`` differs from ``a`` over the named tensors, and their share of ``a``'s squared norm."""
    ga, gb = torch.cat([a[n] for n in names]), torch.cat([b[n] for n in names])
    return {"cosine": round(float(cosine_similarity(ga, gb, dim=0)), 4),
            "norm_ratio_bf16_over_fp32": round(float(gb.norm() / ga.norm()), 3),
            "share_of_fp32_grad_norm2": round(float(ga.norm() ** 2 / sum(g.norm() ** 2 for g in a.values())), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="weights/s1.json")
    p.add_argument("--images", required=True, type=Path, help="training images (never the held-out split)")
    p.add_argument("--teacher", default="../shared/teachers/yolov8n-coco.safetensors")
    p.add_argument("--imgsz", type=int, default=448)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=5, help="timed steps per precision, interleaved")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    model, x = student(args.weights), batch(args.images, args.batch, args.imgsz)
    teacher = load_teacher(str(Path(args.teacher).resolve()))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs + 1):  # the first pair warms oneDNN up and is dropped
        for bf16 in (False, True):
            times[bf16].append(step(model, teacher, x, bf16)[2])
    loss32, g32, _ = step(model, teacher, x, False)
    loss16, g16, _ = step(model, teacher, x, True)
    repeat = step(model, teacher, x, False)[1]
    parts = {name: compare(g32, g16, [n for n in g32 if part(n) == name]) for name in dict.fromkeys(map(part, g32))}
    fp32, bf16 = statistics.median(times[False][1:]), statistics.median(times[True][1:])
    record = {
        "weights": args.weights, "images": str(args.images), "imgsz": args.imgsz, "batch": args.batch,
        "runs": args.runs, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "step_s_fp32": round(fp32, 3), "step_s_bf16": round(bf16, 3), "speed_up": round(fp32 / bf16, 2),
        "loss_fp32": round(loss32, 4), "loss_bf16": round(loss16, 4),
        "fp32_repeat_cosine": round(float(cosine_similarity(torch.cat(list(g32.values())),
                                                            torch.cat(list(repeat.values())), dim=0)), 6),
        "all": {k: v for k, v in compare(g32, g16, list(g32)).items() if k != "share_of_fp32_grad_norm2"},
        "parts": parts,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
