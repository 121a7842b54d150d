"""OpenVINO int8: NNCF post-training quantization, its calibration images, and whether it leads for some weights.

Whether int8 is the default is decided once, by ``bench``: ``record_verdicts`` writes into each weights file's JSON
record, per CPU instruction-set flag set (``devices.cpu_info``), whether committed runs earned it (``int8_verdict``).
At serving time ``leads`` reads that one field, so an installed wheel decides as the checkout does. Why the recipe is
what it is: ``docs/benchmarks.md``, "int8".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .preprocess import Shape, blob, letterbox

log = logging.getLogger(__name__)

#: Where a checkout finds its data: ``../shared`` beside the repository (absent from a fresh clone or a Space).
SHARED = Path(__file__).resolve().parents[3] / "shared"
#: The committed benchmark runs whose accuracy and speed records decide the verdicts (``bench`` reads them).
BENCH_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: The weights JSON field that ``record_verdicts`` writes and ``leads`` reads.
FIELD = "int8_default"


@dataclass(frozen=True)
class Int8Recipe:
    """How NNCF quantizes a model: its preset, what stays in float (node types and name patterns), and the
    calibration images (how many, drawn with which seed). Every field is part of the export's cache key."""

    name: str
    preset: str = "performance"
    float_types: tuple[str, ...] = ()
    float_patterns: tuple[str, ...] = ()
    images: int = 300
    seed: int = 0

    @property
    def id(self) -> str:
        """What a benchmark record stores, so that a verdict counts only records of this very recipe:
        ``name/images/seed/`` and a digest of every field (a recipe changed under its old name is another)."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:6]
        return f"{self.name}/{self.images}/{self.seed}/{digest}"


#: The head's box decoding in float, everything else int8 with NNCF's PERFORMANCE preset, calibrated on 300 training
#: images (``docs/benchmarks.md``, "int8"; ``docs/bench/int8-recipes.json``).
INT8 = Int8Recipe("float-decode", float_patterns=(r".*model\.\d+/aten::(mul|sub|add)/.*",))


class CalibrationError(InputError):
    """No calibration images: int8 cannot be built here (one line for the user, naming no server path)."""


def calibration_dir() -> Path:
    """``$STARNET_CALIBRATION_DIR``, else the distill pool in ``../shared``: training images, never the held-out
    split that the accuracy guard measures."""
    env = os.environ.get("STARNET_CALIBRATION_DIR")
    return Path(env) if env else SHARED / "datasets" / "distill" / "images" / "train"


@lru_cache(maxsize=4)
def _images_in(folder: Path, stamp: int) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES))


def calibration_files(recipe: Int8Recipe | None = None) -> list[Path]:
    """``recipe.images`` images of ``calibration_dir()`` (all of them if fewer), drawn with ``recipe.seed``; the
    folder is listed again only when it changes."""
    recipe, folder = recipe or INT8, calibration_dir()
    files = list(_images_in(folder, folder.stat().st_mtime_ns)) if folder.is_dir() else []
    if not files:
        raise CalibrationError("int8 needs calibration images and none were found; set STARNET_CALIBRATION_DIR to a "
                               "folder of photos (training images, not the evaluation split)")
    if len(files) <= recipe.images:
        return files
    picked = np.random.default_rng(recipe.seed).choice(len(files), recipe.images, replace=False)
    return [files[i] for i in sorted(picked)]


def calibration_available(recipe: Int8Recipe | None = None) -> bool:
    try:
        return bool(calibration_files(recipe))
    except CalibrationError:
        return False


@lru_cache(maxsize=1)
def int8_unavailable_reason() -> str | None:
    """Why int8 is not offered on this machine's CPU, or None."""
    try:
        import nncf  # noqa: F401
        import openvino as ov
    except ImportError:
        return "int8 needs nncf and openvino: pip install nncf openvino"
    if "INT8" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "OpenVINO has no int8 kernels for this CPU"
    return None


# ------------------------------------------------------------------------------------------------ the verdict
def leads(config: Mapping[str, Any], cpu_flags: list[str]) -> bool:
    """Whether the weights record ``config`` says int8 earned the default for these very weights and this recipe on
    a CPU with these ISA flags (the field ``record_verdicts`` writes)."""
    verdict = config.get(FIELD) or {}
    return (verdict.get("sha256") == config.get("sha256") is not None and verdict.get("recipe") == INT8.id
            and list(cpu_flags) in [list(f) for f in verdict.get("cpu_flags", [])])


def bench_runs(folder: Path = BENCH_DIR) -> list[list[dict[str, Any]]]:
    """The committed CPU benchmark runs (``docs/bench/cpu*.json``), each a list of records."""
    return [json.loads(f.read_text()) for f in sorted(folder.glob("cpu*.json"))] if folder.is_dir() else []


def int8_verdict(sha256: str, runs: list[list[dict[str, Any]]], recipe: Int8Recipe | None = None,
                 cpu_flags: list[str] | None = None) -> bool:
    """Whether committed runs earned int8 the default for these weights: at least one accuracy record of this recipe
    on them, every one within the guard, and in every run that timed it beside OpenVINO's float precisions on the
    same variant and size, faster than each of them. Accuracy does not depend on the machine; speed does, and int8
    against bf16 turns on the ISA (AMX-bf16 makes bf16 as fast as int8 for these models), so with ``cpu_flags`` only
    runs on CPUs with the same ISA flags judge speed; there, one run where int8 lost is enough to keep the float
    default."""
    recipe, judged, faster = recipe or INT8, False, False
    for run in runs:
        mine = [r for r in run if r.get("runtime") == "openvino" and r.get("precision") == "int8"
                and r.get("weights_sha256") == sha256 and r.get("int8_recipe") == recipe.id and "error" not in r]
        for r in mine:
            if "accuracy_ok" in r:
                if not r["accuracy_ok"]:
                    return False
                judged = True
            if cpu_flags is not None and r.get("machine", {}).get("cpu_flags") != list(cpu_flags):
                continue
            floats = [f for f in run if f.get("runtime") == "openvino" and f.get("precision") in ("bf16", "fp32")
                      and f.get("variant") == r["variant"] and f.get("imgsz") == r["imgsz"] and "inference_ms" in f]
            if floats and "inference_ms" in r:
                if any(f["inference_ms"] <= r["inference_ms"] for f in floats):
                    return False
                faster = True
    return judged and faster


def earned_on(sha256: str, runs: list[list[dict[str, Any]]]) -> list[list[str]]:
    """The ISA flag sets of the CPUs on which ``runs`` earned int8 the default for these weights."""
    flag_sets = {tuple(r["machine"]["cpu_flags"]) for run in runs for r in run
                 if r.get("weights_sha256") == sha256 and "cpu_flags" in r.get("machine", {})}
    return [list(f) for f in sorted(flag_sets) if int8_verdict(sha256, runs, cpu_flags=list(f))]


def record_verdicts(weights_dir: Path, runs: Iterable[list[dict[str, Any]]] | None = None) -> dict[str, list]:
    """Write each weights record's int8 verdict (``FIELD``) from the committed runs (``bench_runs``); returns the
    flag sets per variant. Rerun after new weights or a new benchmark run; the tensors, hence sha256, are untouched."""
    runs, out = list(bench_runs() if runs is None else runs), {}
    for path in sorted(Path(weights_dir).glob("*.json")):
        config = json.loads(path.read_text())
        if "sha256" not in config:
            continue
        flags = earned_on(config["sha256"], runs)
        config[FIELD] = {"sha256": config["sha256"], "recipe": INT8.id, "cpu_flags": flags}
        path.write_text(json.dumps(config, indent=2) + "\n")
        out[config.get("variant", path.stem)] = flags
    return out


# ---------------------------------------------------------------------------------------------- quantizing
def calibration_blob(path: Path, shape: Shape) -> np.ndarray:
    """One calibration image as the detector feeds it: RGB, ``preprocess.letterbox`` to ``shape``, ``blob``."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f"calibration image {path.name} cannot be read")
    return blob(letterbox(np.ascontiguousarray(image[..., ::-1]), shape))


def quantize(fp32: Path, out: Path, shape: Shape, recipe: Int8Recipe, files: list[Path]) -> None:
    """NNCF post-training quantization of the fp32 IR ``fp32`` into ``out`` (weights and activations int8)."""
    import nncf
    import openvino as ov
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars: the CLIs print results on stdout
            quantized = nncf.quantize(
                ov.Core().read_model(str(fp32)), nncf.Dataset(files, lambda p: calibration_blob(p, shape)),
                preset=nncf.QuantizationPreset(recipe.preset), subset_size=len(files),
                ignored_scope=nncf.IgnoredScope(types=list(recipe.float_types), patterns=list(recipe.float_patterns),
                                                validate=False))
    finally:
        nncf_logger.setLevel(level)
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
