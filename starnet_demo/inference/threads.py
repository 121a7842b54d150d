"""How many intra-op threads the runtimes compute on.

Each runtime otherwise picks its own count (and ultralytics resets PyTorch's, see ``models.yolo.keep_torch_threads``),
so a comparison between runtimes would compare thread counts too. The count for ONNX Runtime and OpenVINO is a
context variable, so one thread's (or task's) ``use_threads`` block never changes another's; PyTorch's count is
process-wide, as torch keeps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_threads: ContextVar[int | None] = ContextVar("starnet_threads", default=None)


def current_threads() -> int | None:
    """The count asked for by the innermost ``use_threads`` of this context, or None (each runtime's own choice)."""
    return _threads.get()


@contextlib.contextmanager
def use_threads(threads: int | None) -> Iterator[None]:
    """Run PyTorch on ``threads`` threads, and build ONNX Runtime and OpenVINO backends for as many, for the block.
    ``None`` changes nothing."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    token = _threads.set(threads)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _threads.reset(token)
