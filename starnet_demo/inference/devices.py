"""Where a detector can run: the CPU and each CUDA GPU torch sees, why there is no GPU, and falling back to the CPU.

A GPU that is out of memory or busy must not fail a request: ``run_on`` retries on the CPU and returns a notice the
UI shows.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import InputError

T = TypeVar("T")


#: The CPU features that decide which kernels the runtimes can use (``/proc/cpuinfo`` flags).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model name, which of ``ISA_FLAGS`` it has and whether it is a virtual machine (Linux; elsewhere the
    platform's name only): what decides whether a speed measured on one machine holds on another."""
    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        named = False
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not named:
                cpu, named = value.strip(), True
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"cpu": cpu, "cpu_flags": [f for f in ISA_FLAGS if f in flags], "virtual_machine": "hypervisor" in flags}


def available() -> list[str]:
    """``["cpu", "cuda:0", ...]``: every device a detector may be put on."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def label(device: str) -> str:
    """A friendly name for the UI: ``CPU (2 threads)``, ``CPU (1 thread)``, ``GPU 0: NVIDIA H100 80GB HBM3``."""
    if device == "cpu":
        n = torch.get_num_threads()
        return f"CPU ({n} thread{'' if n == 1 else 's'})"
    index = int(device.split(":")[1])
    return f"GPU {index}: {torch.cuda.get_device_name(index)}"


def why_no_gpu() -> str | None:
    """Why only the CPU is offered, or None when a GPU is."""
    if len(available()) > 1:
        return None
    if torch.version.cuda is None:
        return "Only the CPU is offered: this PyTorch build has no CUDA support (a CPU-only wheel)."
    return (f"Only the CPU is offered: PyTorch has CUDA {torch.version.cuda} support but sees no GPU "
            "(no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them).")


def normalise(device: object) -> str:
    """The one device rule: ``0``, ``cuda`` and ``CUDA:0`` → ``cuda:0``; ``cpu`` → ``cpu``; a device this machine
    does not have is an ``InputError`` naming the ones it has."""
    name = str(device).strip().lower()
    name = f"cuda:{name}" if name.isdigit() else "cuda:0" if name == "cuda" else name
    if name not in available():
        raise InputError(f"device {str(device)!r:.20} is not available here; choose one of {', '.join(available())}")
    return name


def gpu_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the GPU could not take the work (out of memory, busy, lost), not a bad input."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("out of memory", "cuda error", "busy or unavailable", "cudnn_status", "cublas_status"))


def run_on(device: str, fn: Callable[[str], T]) -> tuple[T, str | None]:
    """``fn(device)``; if a GPU cannot take it, ``fn("cpu")`` instead. Returns the result and a notice (or None)."""
    try:
        return fn(device), None
    except Exception as e:
        if device == "cpu" or not gpu_unavailable(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        reason = str(e).splitlines()[0][:160]
        return fn("cpu"), f"{device} could not run this ({reason}); it ran on the CPU instead."
