"""Which precisions a runtime offers on a device, the default first.

OpenVINO's bf16 (where the CPU runs it natively) is the default there: it passed the accuracy guard for every shipped
weights file and runs about 1.7x faster than fp32 (``docs/benchmarks.md``). ``int8`` is offered where NNCF is
installed, and leads only where the weights' own record says it earned that on a CPU like this one (``int8.leads``).
"""

from __future__ import annotations

from ..errors import InputError
from . import runtimes
from .int8 import int8_unavailable_reason
from .runtimes import is_cuda


def precisions(runtime: str, device: str = "cpu", int8_leads: bool = False) -> tuple[str, ...]:
    """Precisions ``runtime`` supports on ``device``, the default first; ``int8_leads``: int8 first where offered."""
    if is_cuda(device):
        return ("fp16", "fp32") if runtime != "onnxruntime" else ("fp32",)
    if runtime != "openvino":
        return ("fp32",)
    floats = ("bf16", "fp32") if runtimes.openvino_cpu_bf16() else ("fp32",)
    if int8_unavailable_reason() is not None:
        return floats
    return ("int8", *floats) if int8_leads else (*floats, "int8")


def check_precision(runtime: str, device: str, precision: str | None, int8_leads: bool = False) -> str:
    """``precision``, checked, or the default for this runtime and device."""
    supported = precisions(runtime, device, int8_leads)
    if precision is None:
        return supported[0]
    if precision not in supported:
        why = int8_unavailable_reason() if precision == "int8" and runtime == "openvino" else None
        raise InputError(f"{runtime} on {device} supports precision {', '.join(supported)}, not {precision}"
                         + (f" ({why})" if why else ""))
    return precision
