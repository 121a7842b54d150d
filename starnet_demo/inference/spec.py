"""A request's model choice, resolved once into one frozen ``ModelSpec`` that flows down: detector, backends, exports.

``resolve_spec`` is the only place where a variant, device, runtime, precision, rewrite and thread count are checked
and defaulted: the device by ``devices.normalise``, ``auto`` by the runtime registry, the precision by what the
runtime offers on the device and by the weights' own int8 verdict (``int8.leads``), the weights by ``hub.locate``
(found, verified and read once per process). Nothing below it chooses again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..weights.files import WeightsError
from ..weights.hub import Located, locate
from . import devices, int8
from .precision import check_precision
from .preprocess import check_imgsz
from .runtimes import default_rewrite, resolve_runtime, unavailable_reason
from .settings import check_variant
from .threads import current_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a detector is: ``weights`` None means untrained (the benchmark's timing of a variant without weights)."""

    variant: str
    device: str
    runtime: str
    precision: str
    rewrite: str
    imgsz: int
    threads: int | None
    weights: Located | None

    def on(self, device: str) -> ModelSpec:
        """This choice on another device (the CPU, when a GPU cannot take the work): a runtime the device cannot run
        becomes ``auto``'s, the precision that device's default."""
        runtime = self.runtime if unavailable_reason(self.runtime, device) is None else "auto"
        return resolve_spec(self.variant, device, runtime, self.imgsz, rewrite=None, threads=self.threads,
                            allow_untrained=self.weights is None)


@lru_cache(maxsize=8)
def _no_calibration(folder: Path) -> None:
    log.warning("int8 earned the default for this CPU, but there are no calibration images in %s to build it; "
                "using the float default", folder)


def _int8_leads(weights: Located | None, runtime: str) -> bool:
    if weights is None or runtime != "openvino" or not int8.leads(weights.config, devices.cpu_info()["cpu_flags"]):
        return False
    if not int8.calibration_available():
        _no_calibration(int8.calibration_dir())
        return False
    return True


def resolve_spec(variant: str, device: object = "cpu", runtime: str | None = "auto", imgsz: int = 640,
                 precision: str | None = None, rewrite: str | None = None, threads: int | None = None,
                 allow_untrained: bool = False) -> ModelSpec:
    """Check and default every part of a model choice; a bad one is a ``ValueError`` naming it, missing weights a
    ``WeightsError`` (``allow_untrained``: an untrained model instead, for timing). ``threads`` defaults to the
    enclosing ``threads.use_threads``."""
    variant = check_variant(variant)
    device = devices.normalise(device)
    runtime = resolve_runtime(str(runtime or "auto"), device)
    imgsz = check_imgsz(imgsz)
    try:
        weights = locate(variant)
    except WeightsError:
        if not allow_untrained:
            raise
        weights = None
    precision = check_precision(runtime, device, precision, _int8_leads(weights, runtime))
    return ModelSpec(variant, device, runtime, precision, rewrite or default_rewrite(runtime), imgsz,
                     current_threads() if threads is None else threads, weights)

