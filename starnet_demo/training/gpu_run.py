"""What a training bundle's ``run.sh`` runs (``bundle.py``): a plan of variants trained for whole epochs within a
time budget, each evaluated on the held-out split there, paired against the weights it started from, and written
into ``--out`` as it finishes, so that a call that runs out of time still returns what was done.

``--out`` gets at most 7 files, within the GPU machine's return limit of 8 files of 16 MiB: ``<variant>.tar`` per
trained variant (``<variant>.safetensors`` + ``.json`` as the weights folder takes them, and ``<variant>.eval.json``),
``report.json`` (plan, throughput, losses per epoch, evaluations, the GPU smoke test), ``gpu_latency.json`` and the
``run.log`` that ``run.sh`` writes. ``tar xf <variant>.tar -C somewhere`` gives a folder ``eval --weights`` and the
app (``STARNET_WEIGHTS_DIR``) load.

Run from the repository root (``run.sh`` does): ``python -m starnet_demo.training.gpu_run --bundle B --out O``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..weights.files import load_weights, save_weights, weight_files
from .evaluate import evaluate
from .train import _read_results, train

REPORT = "report.json"


class Clock:
    """Seconds left before the deadline, counted from the process start."""

    def __init__(self, minutes: float) -> None:
        self.end = time.time() + minutes * 60

    def left(self) -> float:
        return self.end - time.time()


def parse_plan(text: str) -> list[tuple[str, float]]:
    """``"s3:2.5,s4:2.5,s2:1"`` → [(variant, training minutes), ...]."""
    plan = []
    for item in text.split(","):
        variant, _, minutes = item.strip().partition(":")
        plan.append((variant, float(minutes or 1)))
    return plan


def _settings(pairs: list[str]) -> dict[str, Any]:
    """``["lr0=1e-3", "mosaic=0"]`` → ultralytics arguments, numbers and booleans as such."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")


def _losses(run_dir: Path) -> dict[str, list[float]]:
    """The training losses per epoch, from the run's results CSV."""
    return {k: v for k, v in _read_results(run_dir / "results.csv").items() if k.startswith("train/")}


def train_one(variant: str, minutes: float, args: argparse.Namespace, data: str, work: Path, out: Path,
              clock: Clock) -> dict[str, Any]:
    """Train ``variant`` from ``args.weights`` for the whole epochs that fit, evaluate it against its start, and
    write ``out/<variant>.tar``; returns the variant's report."""
    start_config = weight_files(variant, args.weights)[1]
    start, start_meta = load_weights(start_config)
    budget = min(minutes * 60, clock.left() - args.reserve_s)
    began = time.time()
    exported = train(variant, data, stage="distill", weights=str(start_config), teacher=args.teacher,
                     project=str(work / "runs"), name=variant, budget_s=budget, output_kd=args.output_kd,
                     freeze_bn=args.freeze_bn, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                     device=args.device, cache=args.cache or False, plots=False, exist_ok=True,
                     **{"lr0": args.lr0, **_settings(args.set)})
    trained_s = time.time() - began
    trained, config = load_weights(exported)
    folder = work / "weights" / variant
    meta = {k: config[k] for k in ("recipe", "license") if k in config}
    # Packed as the start was: packing every conv costs S2 0.009 mAP50 (docs/training/weights-int8.json).
    saved = save_weights(trained, folder, meta={**meta, "license": start_meta.get("license", "AGPL-3.0")},
                         int8=start_meta.get("int8_scope", True))
    model, _ = load_weights(saved)  # evaluate what is stored
    tensors = saved.with_suffix(".safetensors")
    result = evaluate(model, data, device=args.device, weights_file=tensors, bootstrap=args.bootstrap,
                      against=start, against_file=start_config.with_suffix(".safetensors"))
    eval_path = folder / f"{variant}.eval.json"
    eval_path.write_text(json.dumps(result, indent=2) + "\n")
    with tarfile.open(out / f"{variant}.tar", "w") as tar:
        for path in (tensors, saved, eval_path):
            tar.add(path, arcname=path.name)
    against = result["against"]
    se = against.get("map50_difference_se") or float("nan")
    losses = _losses(exported.parent.parent)
    # The budget's "epochs" is its first decision; a pace that fell later cut them ("resized"): report what ran.
    trained_epochs = max((len(v) for v in losses.values()), default=0)
    return {"variant": variant, "start_sha256": against["weights_sha256"], "sha256": result["weights_sha256"],
            "budget_s": round(budget, 1), "train_s": round(trained_s, 1), **config["recipe"][-1].get("budget", {}),
            "epochs": trained_epochs, "losses": losses, "map50": result["map50"], "map50_95": result["map50_95"],
            "start_map50": against["map50"], "start_map50_95": against["map50_95"],
            "map50_difference": against["map50_difference"], "map50_difference_se": against.get("map50_difference_se"),
            "standard_errors_ahead": round(against["map50_difference"] / se, 2) if se == se and se else None}


def smoke(device: str, runtimes: list[str] | None, variant: str = "s1") -> list[dict[str, Any]]:
    """The app's own path on ``device``: every runtime it offers there (or ``runtimes``) detects the bus and the
    people in ``examples/bus.jpg`` through ``get_detector``."""
    import cv2

    from ..inference.detector import get_detector
    from ..inference.runtimes import available_runtimes

    image = cv2.imread("examples/bus.jpg")[..., ::-1].copy()
    results = []
    for runtime in runtimes or available_runtimes(device):
        try:
            began = time.time()
            detections, timings = get_detector(variant, device=device, runtime=runtime).detect(image)
            names = sorted(set(detections.data.get("class_name", [])))
            results.append({"runtime": runtime, "ok": {"bus", "person"} <= set(names), "classes": names,
                            "first_call_s": round(time.time() - began, 2),
                            "inference_ms": round(timings.inference_ms, 2)})
        except Exception:  # a runtime that fails on the GPU is what this test is for: record it, try the next
            results.append({"runtime": runtime, "ok": False, "error": traceback.format_exc(limit=4)})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train a plan of variants within a deadline, evaluate each on the "
                                            "held-out split, write the results into --out (run by a bundle's run.sh)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plan", default="s3:2.5,s4:2.5,s2:1,s1:1", help="variant:training-minutes, in order")
    p.add_argument("--deadline-min", type=float, default=9.0, help="minutes from start; nothing starts after it "
                   "that could not end before it")
    p.add_argument("--reserve-s", type=float, default=45.0, help="seconds kept per variant for start-up and eval")
    p.add_argument("--weights", type=Path, default=Path("weights"), help="folder of the weights to start from")
    p.add_argument("--teacher", default="weights/yolov8n.safetensors", help="YOLOv8n state dict (safetensors)")
    p.add_argument("--device", default="0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--imgsz", type=int, default=448)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--cache", default="ram", help="ram, disk or '' (none)")
    p.add_argument("--output-kd", type=float, default=1.0)
    # Continuing converged weights: AdamW at 2e-3 (the from-scratch rate) with BatchNorms training cost S2-S4
    # 0.026-0.083 mAP50 in 1.5-2.5 H200-minutes; 3e-4 with frozen BatchNorms kept S2 level (docs/training.md).
    p.add_argument("--lr0", type=float, default=3e-4)
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more ultralytics train arguments")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the paired standard errors")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                   help="run experiments/gpu_latency.py if a minute is left (default: on a CUDA machine)")
    p.add_argument("--smoke", action=argparse.BooleanOptionalAction, default=True,
                   help="detect examples/bus.jpg through get_detector with every runtime on the device")
    p.add_argument("--smoke-runtimes", help="comma-separated (default: every one the app offers on the device)")
    p.add_argument("--smoke-variant", default="s1", help="a variant of the weights folder the app uses")
    args = p.parse_args(argv)
    clock = Clock(args.deadline_min)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((args.bundle / "bundle.json").read_text())
    data = str(args.bundle / manifest["data"])
    device = f"cuda:{args.device}" if args.device.isdigit() else args.device
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "bundle": {k: manifest[k] for k in ("images", "settings") if k in manifest},
        "plan": args.plan, "settings": {k: str(v) for k, v in vars(args).items()}, "variants": [],
    }
    with tempfile.TemporaryDirectory(prefix="starnet-gpu-") as tmp:
        for variant, minutes in parse_plan(args.plan):
            if clock.left() < args.reserve_s + 30:
                report["variants"].append({"variant": variant, "skipped": f"{clock.left():.0f} s left"})
                continue
            try:
                report["variants"].append(train_one(variant, minutes, args, data, Path(tmp), args.out, clock))
            except Exception:  # one variant's failure must not cost the others their minutes
                report["variants"].append({"variant": variant, "error": traceback.format_exc(limit=6)})
            print(json.dumps(report["variants"][-1], default=str)[:2000], flush=True)
            _write(args.out, report)
    if args.latency and clock.left() > 60:
        command = [sys.executable, "experiments/gpu_latency.py", "--out", str(args.out / "gpu_latency.json"),
                   "--weights", str(args.weights)]
        try:
            done = subprocess.run(command, timeout=clock.left() - 30, check=False)
            report["latency"] = {"returncode": done.returncode}
        except subprocess.TimeoutExpired:
            report["latency"] = {"timed_out": True}
    if args.smoke and clock.left() > 20:
        report["smoke"] = smoke(device, args.smoke_runtimes.split(",") if args.smoke_runtimes else None,
                                args.smoke_variant)
    report["seconds_left"] = round(clock.left(), 1)
    _write(args.out, report)
    failed = [v["variant"] for v in report["variants"] if "error" in v]
    return 1 if failed or any("error" in s for s in report.get("smoke", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
