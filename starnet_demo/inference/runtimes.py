"""The runtime registry: which runtimes exist, which can run on a device here, and what ``auto`` means.

Runtimes: ``pytorch`` (eager), ``cudagraph`` and ``compile`` (CUDA), ``onnxruntime`` and ``openvino`` (exported by
``exports``), and ``ultralytics`` (ultralytics' own ``predict``, the benchmark's baseline). Precisions are in
``precision``, thread counts in ``threads``, int8 in ``int8``, the export cache in ``exports`` and the backends that
run a letterboxed image in ``backends``. Why ``AUTO_ORDER`` and ``BEST_REWRITE`` are what they are:
``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from ..errors import InputError

#: ``progress(fraction, desc=...)``: the signature of ``gr.Progress``, so the app can pass one straight in.
Progress = Callable[..., Any]

RUNTIMES = ("pytorch", "cudagraph", "compile", "onnxruntime", "openvino", "ultralytics")
#: ``auto`` takes the first available of these (``docs/benchmarks.md``, "What auto picks").
AUTO_ORDER = {"cpu": ("onnxruntime", "openvino", "pytorch"), "cpu-bf16": ("openvino", "onnxruntime", "pytorch"),
              "cuda": ("cudagraph", "pytorch")}
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
#: The rewrites that pay per runtime (``docs/benchmarks.md``, "Rewrites"); PyTorch gets ``fold+merge``.
BEST_REWRITE = {"onnxruntime": "fold", "openvino": "fold"}


def default_rewrite(runtime: str) -> str:
    return BEST_REWRITE.get(runtime, "fold+merge")


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


@lru_cache(maxsize=1)
def openvino_cpu_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (its default inference precision there is then bf16)."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _auto_order(device: str) -> tuple[str, ...]:
    if is_cuda(device):
        return AUTO_ORDER["cuda"]
    return AUTO_ORDER["cpu-bf16" if openvino_cpu_bf16() else "cpu"]


def unavailable_reason(runtime: str, device: str) -> str | None:
    """Why ``runtime`` cannot run on ``device`` here, or None if it can."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}; choose from auto, {', '.join(RUNTIMES)}"
    if is_cuda(device) and not torch.cuda.is_available():
        return "CUDA is not available"
    if runtime in ("cudagraph", "compile") and not is_cuda(device):
        return f"{runtime} needs a CUDA device"
    if runtime == "openvino":
        if is_cuda(device):
            return "openvino runs on the CPU only here"
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed"
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        if is_cuda(device) and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def available_runtimes(device: str = "cpu") -> list[str]:
    return [r for r in RUNTIMES if unavailable_reason(r, device) is None]


def resolve_runtime(runtime: str, device: str = "cpu") -> str:
    """``auto`` → the fastest runtime available for the device; any other name is checked (``InputError``) and
    returned."""
    if runtime == "auto":
        for candidate in _auto_order(device):
            if unavailable_reason(candidate, device) is None:
                return candidate
        raise RuntimeError(f"no runtime available for {device}")
    reason = unavailable_reason(runtime, device)
    if reason:
        raise InputError(f"runtime {runtime!r:.20} cannot run on {device}: {reason}")
    return runtime
