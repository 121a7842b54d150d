"""``python -m starnet_demo bench``: every variant × runtime on one device, in one run, against YOLOv8n.

For each combination: ``latency.measure`` on one image (median/p90 ms per stage, peak memory), optionally the video
pipeline on a clip (``pipeline.run_video``: decode and encode included) and the accuracy guard (mAP50-95 on a held-out
split through that very runtime, against PyTorch fp32). Output: a JSON list of records, one per combination, and a
markdown table with the machine it ran on and the ratios the project aims at, as measured on that machine's CPU.

Like for like: every runtime, ultralytics' ``predict`` included, computes on the same number of threads
(``threads.use_threads``; each record says how many its runtime used) after the same warm-up. Absolute figures
depend on the machine far more than on anything here (the committed runs: ``docs/benchmarks.md``, "Why ratios within
one run"), so each run records its CPU, its ISA flags and the dense matmul throughput it reaches (``peak_gflops``),
each record its GFLOP/s, and the markdown states ratios within the run only.

Variants without weights in the weights folder are timed untrained (``trained: false``): speed does not depend on the
weights, but an untrained model finds nothing, so NMS has less to do than with trained weights.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ..inference import int8
from ..inference.detector import Detector
from ..inference.devices import cpu_info, normalise
from ..inference.exports import quiet_ultralytics
from ..inference.latency import Samples
from ..inference.pipeline import VideoOptions, run_video
from ..inference.precision import precisions
from ..inference.preprocess import check_imgsz
from ..inference.runtimes import EXPORT_FORMATS, available_runtimes, default_rewrite, is_cuda, resolve_runtime
from ..inference.spec import resolve_spec
from ..inference.threads import use_threads
from ..media.video import probe
from ..models.rewrite import REWRITES
from ..models.yolo import BASELINE, keep_torch_threads
from ..training.data import held_out_view
from ..viz.annotate import DetectionAnnotator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
#: mAP50-95 a runtime may lose against PyTorch fp32 before the guard fails it (0.5 points).
MAX_MAP_DROP = 0.005
#: Which peak a record's GFLOP/s is read against: its arithmetic (ONNX Runtime and PyTorch on the CPU run fp32).
PEAK_OF = {"int8": "int8", "bf16": "bf16", "fp16": "bf16"}


def default_runtimes(device: str) -> list[str]:
    """ultralytics' predictor (the baseline), then every runtime of ours this machine has for the device."""
    ours = [r for r in available_runtimes(device) if r not in ("ultralytics", "compile")]
    return ["ultralytics", *ours]


def default_image() -> Path:
    """``examples/bus.jpg``, else ultralytics' own copy."""
    if (EXAMPLES / "bus.jpg").is_file():
        return EXAMPLES / "bus.jpg"
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def default_video() -> Path | None:
    """The first video in ``examples/``, if any."""
    found = sorted(p for p in EXAMPLES.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if EXAMPLES.is_dir() else []
    return found[0] if found else None


def read_rgb(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return np.ascontiguousarray(image[..., ::-1])


@lru_cache(maxsize=4)
def peak_gflops(threads: int, seconds: float = 0.5, n: int = 1024) -> dict[str, float]:
    """Dense ``n``×``n`` matmul throughput in GFLOP/s (int8: GOP/s) through OpenVINO's CPU plugin, per arithmetic
    (``fp32``, ``bf16`` where the CPU has it, ``int8`` where NNCF is installed) on ``threads`` threads, and fp32 on
    one thread (``fp32_1thread``: two threads far short of twice that mean shared or contended cores): the
    achievable peak that the runtimes' GFLOP/s are read against. About 5 s, once per process and thread count."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return {}
    from ..inference.int8 import int8_unavailable_reason
    from ..inference.runtimes import openvino_cpu_bf16

    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, n)).astype(np.float32)
    x = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(rng.standard_normal((n, n)).astype(np.float32) * 0.03), False,
                                 False)], [x])
    todo = [("fp32", model, ov.Type.f32, threads), ("fp32_1thread", model, ov.Type.f32, 1)]
    if openvino_cpu_bf16():
        todo.append(("bf16", model, ov.Type.bf16, threads))
    if int8_unavailable_reason() is None:
        import nncf
        from nncf.common.logging import nncf_logger

        level = nncf_logger.level
        nncf_logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
                quantized = nncf.quantize(model, nncf.Dataset([data]), subset_size=1)
        finally:
            nncf_logger.setLevel(level)
        todo.append(("int8", quantized, ov.Type.bf16 if openvino_cpu_bf16() else ov.Type.f32, threads))
    out = {}
    for name, m, hint, n_threads in todo:
        request = ov.Core().compile_model(m, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                                                      "INFERENCE_NUM_THREADS": n_threads}).create_infer_request()
        request.infer({0: data})
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            request.infer({0: data})
            calls += 1
        out[name] = round(2 * n**3 * calls / (time.perf_counter() - t0) / 1e9, 1)
    return out


def machine_info(device: str, threads: int | None = None) -> dict[str, Any]:
    """What the figures were measured on: CPU (model, ISA flags, matmul peaks on ``threads`` threads), cores, GPU,
    library versions, and how busy the machine was."""
    info: dict[str, Any] = {**cpu_info(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version(), "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    try:
        with open("/proc/meminfo") as f:
            info["ram_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for name in ("ultralytics", "timm", "onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            info[name] = __import__(name).__version__
    if is_cuda(device):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        from ..inference.runtimes import openvino_cpu_bf16

        info["openvino_bf16"] = openvino_cpu_bf16()
        if threads:
            info["peak_gflops"] = peak_gflops(threads)
    return info


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` processes that spin on a core each while the block runs: a shared CPU (a Space's neighbours, other
    requests, video decode and encode), on which runtimes that pin or spin their threads slow down the most."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _combinations(variants: Iterable[str], runtimes: Iterable[str], device: str, precision_choice: str,
                  rewrites: list[str] | None) -> list[tuple[str, str, str, str]]:
    """(variant, runtime, precision, rewrite) to measure; ``rewrites`` None: each runtime's default."""
    out = []
    for variant in variants:
        for runtime in runtimes:
            supported = precisions(runtime, device)
            chosen = ([resolve_spec(variant, device, runtime, allow_untrained=True).precision]
                      if precision_choice == "default" else supported if precision_choice == "all"
                      else [p for p in precision_choice.split(",") if p in supported])
            if runtime == "ultralytics":
                todo = ["ultralytics fuse"]  # ultralytics folds BatchNorms itself
            elif runtime in EXPORT_FORMATS:  # the exporter always folds BatchNorms: "none" would equal "fold"
                todo = [r for r in rewrites or [default_rewrite(runtime)] if r != "none"]
            else:
                todo = rewrites or [default_rewrite(runtime)]
            out += [(variant, runtime, precision, rewrite) for precision in chosen for rewrite in todo]
    return out


def bench(variants: list[str], runtimes: list[str] | None = None, device: str = "cpu", imgsz: int = 640,
          runs: int = 20, warmup: int = 3, image: str | Path | None = None, video: str | Path | None = None,
          video_frames: int = 150, precision_choice: str = "default", rewrites: list[str] | None = None,
          accuracy: str | Path | None = None, busy: int = 0, threads: int | None = None,
          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every variant (YOLOv8n first) × runtime × precision × rewrite; returns the records.

    ``runtimes`` may include ``auto`` (resolved for the device); each record says whether it is ``auto``'s choice.
    ``busy`` busy-loop processes compete for the CPU during the timed rounds and the video runs (``busy_cores``).
    ``threads``: the intra-op threads of every runtime on the CPU (default: every logical core); each is warmed up
    ``warmup`` times, plus once untimed at the start of each of the interleaved rounds.
    """
    device = normalise(device)
    if warmup < 0 or runs < 1:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    imgsz = check_imgsz(imgsz)
    runtimes = [resolve_runtime(r, device) for r in (runtimes or default_runtimes(device))]
    runtimes = list(dict.fromkeys(runtimes))
    bad = [r for r in rewrites or [] if r not in REWRITES]
    if bad:
        raise ValueError(f"unknown rewrite(s) {bad}; choose from {', '.join(REWRITES)}")
    threads = None if is_cuda(device) else threads or os.cpu_count() or 1
    with use_threads(threads):
        return _bench(list(dict.fromkeys([BASELINE, *variants])), runtimes, device, imgsz, runs, warmup, image, video,
                      video_frames, precision_choice, rewrites, accuracy, busy, threads, log)


def _bench(variants: list[str], runtimes: list[str], device: str, imgsz: int, runs: int, warmup: int,
           image: str | Path | None, video: str | Path | None, video_frames: int, precision_choice: str,
           rewrites: list[str] | None, accuracy: str | Path | None, busy: int, threads: int | None,
           log: Callable[[str], None]) -> list[dict[str, Any]]:
    auto = resolve_runtime("auto", device)
    image_path = Path(image) if image else default_image()
    rgb = read_rgb(image_path)
    machine = {**machine_info(device, threads), "busy_processes": busy}
    records: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], Samples]] = []
    for variant, runtime, precision, rewrite in _combinations(variants, runtimes, device, precision_choice,
                                                              rewrites):
        record: dict[str, Any] = {"variant": variant, "runtime": runtime, "device": device, "precision": precision,
                                  "rewrite": rewrite, "imgsz": imgsz, "threads": threads, "warmup": warmup}
        if precision == "int8":
            record["int8_recipe"] = int8.INT8.id
        records.append(record)
        log(f"bench: loading {_label(record)} …")
        try:
            t0 = time.perf_counter()
            detector = Detector(resolve_spec(variant, device, runtime, imgsz, precision,
                                             None if runtime == "ultralytics" else rewrite, allow_untrained=True))
            record.update(load_s=round(time.perf_counter() - t0, 2), trained=detector.trained,
                          weights_sha256=detector.config.get("sha256"), image=image_path.name)
            samples = Samples(detector, rgb)
            samples.warm(warmup)
            live.append((record, samples))
        except Exception as e:  # one failing combination (e.g. a compiler missing on a GPU box) must not end the run
            _failed(record, e, log)
    # Interleaved rounds: on a shared machine, load changes over a run; every combination sees the same mix. Each
    # round starts with one untimed call, which absorbs the previous runtime's thread pools winding down.
    rounds = max(1, min(5, runs))
    with busy_cores(busy):
        for k in range(rounds):
            n = runs // rounds + (1 if k < runs % rounds else 0)
            for record, samples in live:
                if "error" not in record:
                    try:
                        samples.warm(1)
                        samples.run(n)
                    except Exception as e:
                        _failed(record, e, log)
        for record, samples in live:
            if "error" in record:
                continue
            record.update({k: v for k, v in samples.summary().items() if k not in record or k == "runs"})
            record.update(_throughput(record, machine.get("peak_gflops", {})))
            log(f"bench: {_label(record)}: inference {record['inference_ms']:.1f} ms, "
                f"e2e {record['e2e_ms_median']:.1f} ms")
            if video:
                try:
                    record.update(_video(samples.detector, video, video_frames, imgsz))
                    log(f"bench: {_label(record)}: video {record['video_fps']:.1f} FPS")
                except Exception as e:  # keep the latency figures; say why the video ones are missing
                    record["video_error"] = f"{type(e).__name__}: {e}"
                    log(f"bench: {_label(record)}: video failed: {record['video_error']}")
    with held_out_view(accuracy) if accuracy else contextlib.nullcontext() as view:
        for record, samples in live if accuracy else ():
            if "error" in record:
                continue
            try:
                record.update(_accuracy(samples.detector, view, imgsz, shown=accuracy))
            except Exception as e:
                record["accuracy_error"] = f"{type(e).__name__}: {e}"
                log(f"bench: {_label(record)}: accuracy failed: {record['accuracy_error']}")
        live.clear()
        gc.collect()
        if is_cuda(device):
            torch.cuda.empty_cache()
        if accuracy:
            _accuracy_deltas(records, view)
    if hasattr(os, "getloadavg"):
        machine["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    for record in records:
        record["machine"] = machine
    _mark_auto(records, auto, device)
    return records


def _mark_auto(records: list[dict[str, Any]], auto: str, device: str) -> None:
    """Flag the record of ``auto``'s choice per variant, counting this run's own records as committed: where this
    run earns int8 the default on this CPU (``int8.int8_verdict``), the markdown's auto ratios are int8's, as ``auto``
    will be once the run is in ``docs/bench`` and its verdict recorded (``int8.record_verdicts``)."""
    runs, flags = [*int8.bench_runs(), records], cpu_info()["cpu_flags"]
    for r in records:
        supported = precisions(auto, device)
        earned = ("int8" in supported and r.get("weights_sha256") and int8.calibration_available()
                  and int8.int8_verdict(r["weights_sha256"], runs, cpu_flags=flags))
        default = "int8" if earned else supported[0]
        r["auto"] = (r["runtime"] == auto and r["precision"] == default and r["rewrite"] == default_rewrite(auto)
                     and "error" not in r)


def _throughput(record: dict[str, Any], peaks: dict[str, float]) -> dict[str, Any]:
    """Achieved GFLOP/s of the inference (the model's GFLOPs over its median inference time) and, on the CPU, its
    share of the matmul peak of the arithmetic it runs in (``PEAK_OF``)."""
    if not record.get("gflops") or not record.get("inference_ms"):
        return {}
    rate = record["gflops"] / record["inference_ms"] * 1000
    peak = peaks.get(PEAK_OF.get(record["precision"], "fp32"))
    return {"gflops_per_s": round(rate, 2), **({"peak_share": round(rate / peak, 4)} if peak else {})}


def _label(record: dict[str, Any]) -> str:
    return f"{record['variant']} {record['runtime']} {record['precision']} {record['rewrite']}"


def _failed(record: dict[str, Any], error: Exception, log: Callable[[str], None]) -> None:
    log(f"bench: {_label(record)} failed: {type(error).__name__}: {error}")
    record["error"] = f"{type(error).__name__}: {error}"


def _video(detector: Detector, video: str | Path, frames: int, imgsz: int) -> dict[str, Any]:
    """The app's video path, as it runs on an upload: the same annotator, decode and encode included."""
    info = probe(video, max_bytes=math.inf, max_seconds=math.inf, max_side=math.inf)
    detector.prepare(imgsz, image_hw=(info.height, info.width))  # export for the video's shape outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_video(detector, video, Path(tmp) / "out.mp4", VideoOptions(imgsz=imgsz, max_frames=frames),
                          info=info, annotate=DetectionAnnotator(rgb=False).annotate)
    return {"video": Path(video).name, **stats.summary()}


# ---------------------------------------------------------------------------------------------------- accuracy guard
class _RuntimeAsModule(nn.Module):
    """Lets ultralytics' validator run one of our runtimes: its letterboxed batch of one goes back to uint8 (exact:
    the validator made it as uint8 / 255) and through the detector's backend, as ``detect`` would."""

    def __init__(self, detector: Detector, imgsz: int):
        super().__init__()
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.names = detector.names
        self._detector, self._imgsz = [detector], imgsz  # a list: not a submodule, so .float()/.to() leave it alone

    def __deepcopy__(self, memo: dict) -> _RuntimeAsModule:
        return self  # the validator copies its model; a live runtime is not copyable, and nothing here changes

    def forward(self, im: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        detector = self._detector[0]
        image = (im[0].permute(1, 2, 0).float() * 255).round().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        backend = detector._backend((self._imgsz, self._imgsz))
        return backend(backend.prepare(np.ascontiguousarray(image))).float().to(im.device)


def _map(detector: Detector, data: str | Path, imgsz: int) -> float:
    """mAP50-95 through the detector's own runtime: ultralytics' validator, square letterbox, batch 1, and
    ``evaluate.py``'s conf and IoU. (``evaluate.py`` itself validates in rect batches, a different letterbox; mixing the
    two would show the protocol difference, -0.8 points on S1, as a runtime's loss.)"""
    from ultralytics.models.yolo.detect import DetectionValidator

    args = {"data": str(data), "imgsz": imgsz, "batch": 1, "conf": 0.001, "iou": 0.7, "rect": False, "plots": False,
            "verbose": False, "device": detector.device, "save_json": False, "task": "detect", "mode": "val"}
    with quiet_ultralytics():
        validator = DetectionValidator(args=args)
        keep_torch_threads(validator)
        if detector.runtime == "ultralytics":  # ultralytics' own AutoBackend on the PyTorch model
            validator(model=detector.model)  # the validator works on its own copy
        else:
            validator(model=_RuntimeAsModule(detector, imgsz))
    return round(float(validator.metrics.box.map), 5)


def _accuracy(detector: Detector, data: str, imgsz: int, shown: str | Path) -> dict[str, Any]:
    """mAP50-95 on ``data`` (a ``held_out_view``), recorded as measured on ``shown``, the data the user gave."""
    if not detector.trained:
        return {"map50_95": None, "accuracy_note": "untrained weights: no accuracy"}
    return {"map50_95": _map(detector, data, imgsz), "accuracy_data": str(shown)}


def _accuracy_deltas(records: list[dict[str, Any]], data: str) -> None:
    """Each record's mAP50-95 against its variant's PyTorch fp32 record (measured on ``data`` if the run had none)."""
    for variant in {r["variant"] for r in records}:
        mine = [r for r in records if r["variant"] == variant and r.get("map50_95") is not None]
        if not mine:
            continue
        ref = next((r["map50_95"] for r in mine if r["runtime"] == "pytorch" and r["precision"] == "fp32"), None)
        if ref is None:
            detector = Detector(resolve_spec(variant, "cpu", "pytorch", mine[0]["imgsz"], "fp32"))
            ref = _map(detector, data, mine[0]["imgsz"])  # a failure here ends the run: no guard
        for r in mine:
            r["map50_95_reference"] = ref
            r["map50_95_delta"] = round(r["map50_95"] - ref, 5)
            r["accuracy_ok"] = r["map50_95_delta"] >= -MAX_MAP_DROP


# ------------------------------------------------------------------------------------------------------- reporting
def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def where(records: list[dict[str, Any]]) -> str:
    """The run's machine in a few words: the GPU, or the CPU model with its ISA flags and core count."""
    m, device = records[0]["machine"], records[0]["device"]
    if is_cuda(device):
        return m.get("gpu", device)
    flags = ", ".join(m.get("cpu_flags", [])) or "no AVX2"
    vm = ", a virtual machine" if m.get("virtual_machine") else ""
    return f"{m['cpu']} ({flags}), {m['logical_cores']} logical cores{vm}"


def aims(records: list[dict[str, Any]]) -> list[str]:
    """The issue's three aims as ratios within this run, one line each per StarNet variant, under a line naming the
    CPU: ratios move with the CPU (its ISA above all), so a run says what it measured and calls nothing met."""
    ok = [r for r in records if "e2e_ms_median" in r]
    lines = []
    for variant in dict.fromkeys(r["variant"] for r in ok if r["variant"] != BASELINE):
        mine = [r for r in ok if r["variant"] == variant]
        auto = next((r for r in mine if r.get("auto")), None)
        ultra = next((r for r in mine if r["runtime"] == "ultralytics"), None)
        if auto and ultra:
            lines.append(f"- {variant}: end-to-end per image, auto ({auto['runtime']} {auto['precision']}) "
                         f"{auto['e2e_ms_median']:.1f} ms vs ultralytics predict {ultra['e2e_ms_median']:.1f} ms: "
                         f"**{ultra['e2e_ms_median'] / auto['e2e_ms_median']:.1f}× faster** (aim ≥ 5×)")
        for r in mine:
            base = next((b for b in ok if b["variant"] == BASELINE and b["runtime"] == r["runtime"]
                         and b["precision"] == r["precision"] and b["rewrite"] == r["rewrite"]), None)
            if base and r["runtime"] != "ultralytics":
                lines.append(f"- {variant}: inference on {r['runtime']} {r['precision']} ({r['rewrite']}) "
                             f"{r['inference_ms']:.1f} ms = **{r['inference_ms'] / base['inference_ms']:.2f}×** "
                             f"YOLOv8n's {base['inference_ms']:.1f} ms (aim ≤ 1.3×)")
        if auto and "video_fps" in auto:
            lines.append(f"- {variant}: video {auto['video']} ({auto['video_size']}, {auto['video_frames']} frames, "
                         f"decode and encode included) on auto: **{auto['video_fps']:.1f} FPS** (aim ≥ 25)")
    if not lines:
        return []
    return [f"Ratios of this run only, on {where(records)}; another CPU gives other ratios (other runs in "
            "docs/bench/), so none is claimed beyond it.", "", *lines]


def _rate(r: dict[str, Any]) -> str:
    if r.get("gflops_per_s") is None:
        return "–"
    return f"{r['gflops_per_s']:.0f}" + (f" ({r['peak_share'] * 100:.0f} %)" if r.get("peak_share") else "")


def to_markdown(records: list[dict[str, Any]]) -> str:
    """A README-ready table: one row per record, the machine above it, the aims below."""
    if not records:
        return "no records\n"
    m, first = records[0]["machine"], records[0]
    device = first["device"]
    peaks = m.get("peak_gflops", {})
    n = first.get("threads")
    threads = f"{n} thread{'' if n == 1 else 's'} for every runtime" if n else "each runtime's own threads"
    head = (f"Measured on **{where(records)}** ({device}), torch {m['torch']}, ultralytics {m.get('ultralytics', '–')}"
            f", ONNX Runtime {m.get('onnxruntime', '–')}, OpenVINO {m.get('openvino', '–')}; "
            f"load average {m.get('load_avg_1min', '–')} at the start, {m.get('load_avg_1min_end', '–')} at the end"
            f"{f'; {busy} busy-loop processes competing (--busy)' if (busy := m.get('busy_processes')) else ''}. "
            f"Image {first.get('image', '–')}, {first['imgsz']} px, batch 1, {threads}, {first.get('warmup', '–')} "
            "warm-up calls each (and one untimed call per round); ms are medians (p90 for end-to-end).")
    if peaks:
        head += (" Matmul peak on this CPU (OpenVINO, GFLOP/s; int8 GOP/s): "
                 + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in peaks.items()) + ".")
    cols = ["variant", "runtime", "precision", "rewrite", "threads", "pre ms", "infer ms", "post ms", "e2e ms",
            "e2e p90", "FPS", "GFLOP/s (% peak)", "video FPS", "peak MB", "mAP50-95 (Δ)"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['variant']} | {r['runtime']} | {r['precision']} | {r['rewrite']} | failed: "
                        f"{r['error'][:60]} |" + " |" * (len(cols) - 5))
            continue
        acc = "–" if r.get("map50_95") is None else (
            f"{r['map50_95']:.4f} ({r.get('map50_95_delta', 0) * 100:+.2f})")
        name = r["variant"] + ("" if r.get("trained", True) else "*")
        rows.append("| " + " | ".join([
            name, r["runtime"] + (" (auto)" if r.get("auto") else ""), r["precision"], r["rewrite"],
            _fmt(r.get("threads_used")), _fmt(r["preprocess_ms"]), _fmt(r["inference_ms"]),
            _fmt(r["postprocess_ms"]), _fmt(r["e2e_ms_median"]), _fmt(r["e2e_ms_p90"]), _fmt(r["fps"]), _rate(r),
            _fmt(r.get("video_fps")), _fmt(r["peak_memory_mb"], 0), acc,
        ]) + " |")
    notes = []
    if any(not r.get("trained", True) for r in records if "error" not in r):
        notes.append("\\* untrained weights (timing only; no detections, so NMS has little to do).")
    notes.append("GFLOP/s: the model's GFLOPs at this size (ultralytics' count) over the median inference time; % of "
                 "the matmul peak of the arithmetic the runtime computes in (int8: the int8 peak).")
    if any(r.get("precision") == "int8" for r in records):
        notes.append(f"int8: OpenVINO on NNCF's post-training quantization, recipe {int8.INT8.id} (name/calibration "
                     "images/seed; int8.INT8).")
    if is_cuda(device):
        notes.append("peak MB: torch's peak CUDA allocation during the timed runs.")
    else:
        notes.append("peak MB: the process's peak resident memory during the timed runs (all models loaded so far).")
    lines = aims(records)
    return "\n".join([head, "", *rows, "", *notes, *([""] + lines if lines else [])]) + "\n"


def write(records: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """``out`` as JSON and the markdown table beside it (same name, ``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(to_markdown(records))
    return out, md
