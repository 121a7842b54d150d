"""Inference runtimes: the rewritten model run by PyTorch (eager, CUDA graph or compiled), ONNX Runtime or OpenVINO.

Each backend takes one letterboxed RGB ``uint8`` image and returns YOLO's raw predictions ``(1, 4 + nc, anchors)``;
the detector around it letterboxes and runs NMS, so every runtime sees the same pixels and the same post-processing.

ONNX and OpenVINO models are made by ultralytics' exporter from ``rewrite.optimise``'s copy (BatchNorms folded; star
pairs merged where that pays, see ``BEST_REWRITE``), and cached on disk under ``cache_root()``
(``$STARNET_EXPORT_DIR``, else ``$XDG_CACHE_HOME/starnet_demo/exports``), one folder per (variant, format, imgsz,
precision, rewrite, weights digest).
Changed weights give a new digest, hence a new export; the stale folder for the same settings is removed.

Precision names: ``fp32``, ``fp16`` (CUDA), ``bf16`` (OpenVINO's CPU inference precision hint, offered where the CPU
supports bf16 natively: AMX or AVX512-BF16), ``int8`` (OpenVINO: the fp32 IR quantized by NNCF's post-training
quantization, calibrated on training images letterboxed as the detector does it; see ``INT8``).

Thread counts: ONNX Runtime and OpenVINO pick their own unless ``use_threads`` names one, which PyTorch then gets
too; the benchmark runs every runtime inside it, so all of them compute on the same number of threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from ultralytics.nn.tasks import DetectionModel

from ..models.rewrite import optimise
from ..models.yolo import as_yolo, variant_of
from .preprocess import Shape, letterbox

#: ``progress(fraction, desc=...)``: the signature of ``gr.Progress``, so the app can pass one straight in.
Progress = Callable[..., Any]

RUNTIMES = ("pytorch", "cudagraph", "compile", "onnxruntime", "openvino", "ultralytics")
#: ``auto`` takes the first available of these; the order follows the benchmark. On the 2-core CPU, S1 at 640 px
#: (inference ms, median; ``docs/bench/cpu-2026-11-28.md`` idle, ``docs/bench/cpu-busy1.md`` one core busy): where
#: the CPU runs bf16 natively (AMX or AVX512-BF16), OpenVINO bf16 is fastest either way, 20.0 and 39.7 against ONNX
#: Runtime's 41.0 and 66.1 (video 25.8 against 18.1 FPS on the busy CPU), and passes the accuracy guard (see
#: ``precisions``). Without native bf16, OpenVINO fp32 wins only on an idle CPU (34.9 against 41.0); on the busy one
#: it loses (71.5 against 66.1, video 16.1 against 18.1 FPS), and a shared CPU (a Space, concurrent requests, video
#: decode and encode threads) is the normal case, so ONNX Runtime leads there.
AUTO_ORDER = {"cpu": ("onnxruntime", "openvino", "pytorch"), "cpu-bf16": ("openvino", "onnxruntime", "pytorch"),
              "cuda": ("cudagraph", "pytorch")}
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
#: The rewrites per runtime (``bench --rewrites none,fold,fold+merge``, ``docs/bench/cpu-rewrites.md``): one merged
#: f1/f2 convolution slows ONNX Runtime and OpenVINO (S1 53.6 -> 61.7 and 41.6 -> 49.7 ms), as their compilers fuse
#: ReLU6 and the star product into the two separate convolutions, which a merged convolution and a split prevent. On
#: eager PyTorch on the CPU it is neutral (155.0 / 155.5 ms); it stays the PyTorch default because it halves the 1x1
#: convolution launches that bound batch-1 GPU inference (not yet measured on a GPU).
BEST_REWRITE = {"onnxruntime": "fold", "openvino": "fold"}


def default_rewrite(runtime: str) -> str:
    return BEST_REWRITE.get(runtime, "fold+merge")


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def _auto_order(device: str) -> tuple[str, ...]:
    if is_cuda(device):
        return AUTO_ORDER["cuda"]
    return AUTO_ORDER["cpu-bf16" if openvino_cpu_bf16() else "cpu"]


@lru_cache(maxsize=1)
def openvino_cpu_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (its default inference precision there is then bf16)."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


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
    """``auto`` → the fastest runtime available for the device; any other name is checked and returned."""
    if runtime == "auto":
        for candidate in _auto_order(device):
            if unavailable_reason(candidate, device) is None:
                return candidate
        raise RuntimeError(f"no runtime available for {device}")
    reason = unavailable_reason(runtime, device)
    if reason:
        raise ValueError(f"runtime {runtime} on {device}: {reason}")
    return runtime


def precisions(runtime: str, device: str = "cpu", variant: str | None = None) -> tuple[str, ...]:
    """Precisions a runtime supports on a device, the default first: the fastest that passes the accuracy guard.

    OpenVINO's bf16 (where the CPU runs it natively) costs every shipped variant at most 0.5 points of mAP50-95 on
    the held-out split against fp32 (``bench --precisions all --accuracy``, ``docs/bench/cpu.md``) and runs about 1.7x
    faster (S1: 20.0 against 34.9 ms, ``docs/bench/cpu-2026-11-28.md``), so it is the default. New weights need that
    guard rerun: the first S1 weights, trained with BatchNorms in train mode on the CPU, lost 0.56 points and would
    have kept fp32. ``int8`` (``INT8``) is offered where NNCF is installed and leads only for a ``variant`` whose
    shipped weights earned it in committed runs (``int8_default``). Its guard is the same 0.5 points, though on the
    128 held-out images the paired standard error of int8's difference to fp32 is about 0.6 points (S1, bootstrap
    over the images): a recipe that gains 0.5 points on coco-mini train can lose 0.4-0.8 on the held-out split
    (``experiments/int8_recipes.py``).
    """
    if is_cuda(device):
        return ("fp16", "fp32") if runtime != "onnxruntime" else ("fp32",)
    if runtime != "openvino":
        return ("fp32",)
    floats = ("bf16", "fp32") if openvino_cpu_bf16() else ("fp32",)
    if int8_unavailable_reason() is not None:
        return floats
    return ("int8", *floats) if variant and int8_default(variant) else (*floats, "int8")


def check_precision(runtime: str, device: str, precision: str | None, variant: str | None = None) -> str:
    """``precision``, checked, or the default for this runtime, device and variant."""
    supported = precisions(runtime, device, variant)
    if precision is None:
        return supported[0]
    if precision not in supported:
        why = int8_unavailable_reason() if precision == "int8" and runtime == "openvino" else None
        raise ValueError(f"{runtime} on {device} supports precision {', '.join(supported)}, not {precision}"
                         + (f" ({why})" if why else ""))
    return precision


@contextlib.contextmanager
def use_threads(threads: int | None) -> Iterator[None]:
    """Run PyTorch on ``threads`` threads, and build ONNX Runtime and OpenVINO backends for as many, for the block.

    Each runtime otherwise picks its own count (and ultralytics resets PyTorch's, see
    ``models.yolo.keep_torch_threads``), so a comparison between runtimes would compare thread counts too. ``None``
    changes nothing.
    """
    global _threads
    if threads is None:
        yield
        return
    before, saved = torch.get_num_threads(), _threads
    torch.set_num_threads(threads)
    _threads = threads
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _threads = saved


_threads: int | None = None


# ------------------------------------------------------------------------------------------ int8 (NNCF, OpenVINO)
#: Where a checkout finds its data: ``../shared`` beside the repository (absent from a fresh clone or a Space).
SHARED = Path(__file__).resolve().parents[3] / "shared"
#: The committed benchmark runs whose accuracy and speed records decide ``int8_default``.
BENCH_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
        """What a benchmark record stores, so that ``int8_default`` counts only records of this very recipe:
        ``name/images/seed/`` and a digest of every field (a recipe changed under its old name is another)."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:6]
        return f"{self.name}/{self.images}/{self.seed}/{digest}"


#: The head's box decoding in float (anchor points minus / plus distances, times strides: the Detect module's own
#: ``aten::sub``, ``add`` and ``mul`` ops), everything else int8 with NNCF's PERFORMANCE preset, calibrated on 300
#: distill images. Quantized, that decoding puts box corners in pixels on an 8-bit grid: all-int8 lost 2.7 points of
#: S1's mAP50-95 on both coco-mini splits, and NNCF's accuracy control (validated on coco-mini train) reverted those
#: ops and nothing else. Among the recipes tried it was chosen on coco-mini train (S1: +0.5 points there against
#: fp32) and speed (the MIXED preset's asymmetric activations ran about 1.2x slower), then checked once on the held-out
#: split: S1 -0.41 and S2 -0.37 points pass the guard, S3 -0.69, S4 -0.62 and YOLOv8n -1.05 do not, so for those
#: int8 stays a choice, never the default (``docs/bench/int8-recipes.json``, ``experiments/int8_recipes.py``).
INT8 = Int8Recipe("float-decode", float_patterns=(r".*model\.\d+/aten::(mul|sub|add)/.*",))


class CalibrationError(ValueError):
    """No calibration images: int8 cannot be built here (one line for the user)."""


def calibration_dir() -> Path:
    """``$STARNET_CALIBRATION_DIR``, else the distill pool in ``../shared``: training images, never the held-out
    split that the accuracy guard measures."""
    env = os.environ.get("STARNET_CALIBRATION_DIR")
    return Path(env) if env else SHARED / "datasets" / "distill" / "images" / "train"


@lru_cache(maxsize=4)
def _images_in(folder: Path, stamp: int) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES))


def calibration_files(recipe: Int8Recipe | None = None) -> list[Path]:
    """``recipe.images`` images of ``calibration_dir()`` (all of them if fewer), drawn with ``recipe.seed``. The
    listing is read again only when the folder changes: ``int8_default`` asks on every request."""
    recipe, folder = recipe or INT8, calibration_dir()
    files = list(_images_in(folder, folder.stat().st_mtime_ns)) if folder.is_dir() else []
    if not files:
        raise CalibrationError(f"int8 needs calibration images and {folder} has none; set STARNET_CALIBRATION_DIR to "
                               "a folder of photos (training images, not the evaluation split)")
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


@lru_cache(maxsize=8)
def _bench_runs(folder: Path, stamp: tuple[tuple[str, int], ...]) -> list[list[dict[str, Any]]]:
    return [json.loads((folder / name).read_text()) for name, _ in stamp]


def bench_runs(folder: Path = BENCH_DIR) -> list[list[dict[str, Any]]]:
    """The committed CPU benchmark runs (``docs/bench/cpu*.json``), each a list of records; read once per change."""
    files = sorted(folder.glob("cpu*.json")) if folder.is_dir() else []
    return _bench_runs(folder, tuple((f.name, f.stat().st_mtime_ns) for f in files))


def shipped_sha256(variant: str) -> str | None:
    """The sha256 of the variant's weights in the weights folder (what the Hub copy is verified against), or None."""
    from ..weights.files import WeightsError, read_config, weight_files

    try:
        return read_config(weight_files(variant)[1]).get("sha256")
    except WeightsError:
        return None


def int8_verdict(sha256: str, runs: list[list[dict[str, Any]]], recipe: Int8Recipe | None = None,
                 cpu_flags: list[str] | None = None) -> bool:
    """Whether committed runs earned int8 the default for these weights: at least one accuracy record of this recipe
    on them, every one within the guard, and in every run that timed it beside OpenVINO's float precisions on the
    same variant and size, faster than each of them. Accuracy does not depend on the machine; speed does, and int8
    against bf16 turns on the ISA (AMX-bf16 makes bf16 as fast as int8 for these models), so with ``cpu_flags`` only
    runs on CPUs with the same ISA flags (``devices.cpu_info``) judge speed; there, one run where int8 lost is
    enough to keep the float default."""
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


def int8_earned(sha256: str, extra_runs: Iterable[list[dict[str, Any]]] = ()) -> bool:
    """Whether int8 leads for these weights on this machine: the committed runs (with ``extra_runs``, a benchmark
    judging its own records) earned it on a CPU with this one's ISA flags (``int8_verdict``), and calibration images
    are here to build it (a fresh clone has none)."""
    from .devices import cpu_info

    runs = [*bench_runs(), *extra_runs]
    return int8_verdict(sha256, runs, cpu_flags=cpu_info()["cpu_flags"]) and calibration_available()


def int8_default(variant: str) -> bool:
    """int8 leads for ``variant`` where its shipped weights earned it (``int8_earned``); otherwise the float default
    stays."""
    sha = shipped_sha256(variant)
    return bool(sha) and int8_earned(sha)


# ----------------------------------------------------------------------------------------------------- export cache
def cache_root() -> Path:
    """Where exported models live: ``$STARNET_EXPORT_DIR``, else ``$XDG_CACHE_HOME/starnet_demo/exports``."""
    if os.environ.get("STARNET_EXPORT_DIR"):
        return Path(os.environ["STARNET_EXPORT_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "starnet_demo" / "exports"


def weights_digest(model: DetectionModel) -> str:
    """sha256 of the model's tensors (names, dtypes, shapes and bytes): the cache key's notion of "the weights"."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def as_shape(imgsz: int | Shape) -> Shape:
    """``640`` → ``(640, 640)``; an ``(h, w)`` pair passes through."""
    return (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, np.integer)) else (int(imgsz[0]), int(imgsz[1]))


def export_key(variant: str, runtime: str, imgsz: int | Shape, precision: str, rewrite: str, digest: str) -> str:
    """One cache folder name per setting; ``precision`` is the file's (OpenVINO IRs are fp32, bf16 is a hint)."""
    h, w = as_shape(imgsz)
    size = f"{h}" if h == w else f"{h}x{w}"
    return f"{variant}-{EXPORT_FORMATS[runtime]}-{size}-{precision}-{rewrite.replace('+', '_')}-{digest[:16]}"


def _artefact(entry: Path, variant: str, runtime: str) -> Path:
    fmt = EXPORT_FORMATS[runtime]
    return entry / f"{variant}.onnx" if fmt == "onnx" else entry / f"{variant}_openvino_model" / f"{variant}.xml"


@contextlib.contextmanager
def quiet_ultralytics():
    """Silence ultralytics' INFO logging (exporter and validator chatter) for the duration."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def export(model: DetectionModel, runtime: str, imgsz: int | Shape = 640, precision: str = "fp32",
           rewrite: str | None = None, progress: Progress | None = None, recipe: Int8Recipe | None = None) -> Path:
    """The cached ONNX file / OpenVINO XML for ``model`` at these settings, exporting it first if needed.

    Export runs ultralytics' exporter on a rewritten copy of the model (static shape ``1×3×h×w``, batch 1,
    onnxslim on) inside a temporary folder, then renames the folder into place, so concurrent processes never see a
    half-written model. ``int8`` quantizes the cached fp32 IR with ``recipe``; its key holds the recipe and the
    calibration files, so other settings or another image pool give another export; ``recipe`` defaults to ``INT8``.
    """
    if runtime not in EXPORT_FORMATS:
        raise ValueError(f"{runtime} does not use an exported model")
    if precision == "int8" and runtime != "openvino":
        raise ValueError("int8 is built for OpenVINO only")
    report = progress or (lambda *a, **k: None)
    rewrite = rewrite or default_rewrite(runtime)
    variant, digest = variant_of(model), weights_digest(model)
    if precision == "int8":
        recipe = recipe or INT8
        files = calibration_files(recipe)  # first: without images, fail before any export
        fp32 = export(model, runtime, imgsz, "fp32", rewrite, progress)
        settings = {**asdict(recipe), "calibration_dir": str(calibration_dir()), "files": [f.name for f in files]}
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        file_precision = f"int8_{tag}"
    else:
        file_precision = "fp16" if precision == "fp16" else "fp32"
    key = export_key(variant, runtime, imgsz, file_precision, rewrite, digest)
    root = cache_root()
    entry = root / key
    artefact = _artefact(entry, variant, runtime)
    if artefact.is_file():
        report(1.0, desc=f"using cached {EXPORT_FORMATS[runtime]} {precision} export of {variant}")
        return artefact
    root.mkdir(parents=True, exist_ok=True)
    h, w = as_shape(imgsz)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        if precision == "int8":
            report(0.5, desc=f"quantizing {variant} to int8 on {len(files)} calibration images (once; cached)")
            _quantize(fp32, _artefact(tmp, variant, runtime), (h, w), recipe, files)
            info = {"int8_recipe": recipe.id, **settings}
        else:
            report(0.05, desc=f"exporting {variant} to {EXPORT_FORMATS[runtime]} at {h}×{w} (once; cached afterwards)")
            rewritten = optimise(model, rewrite).cpu()
            rewritten.pt_path = str(tmp / f"{variant}.pt")  # the exporter writes next to this path
            quantize = {"quantize": 16} if file_precision == "fp16" else {}
            with quiet_ultralytics():
                as_yolo(rewritten).export(format=EXPORT_FORMATS[runtime], imgsz=[h, w], device="cpu", batch=1,
                                          dynamic=False, simplify=True, verbose=False, **quantize)
            info = {}
        if not _artefact(tmp, variant, runtime).is_file():
            raise RuntimeError(f"no {EXPORT_FORMATS[runtime]} {precision} model was written for {variant}")
        (tmp / "export.json").write_text(json.dumps({
            "variant": variant, "runtime": runtime, "imgsz": [h, w], "precision": file_precision, "rewrite": rewrite,
            "weights_digest": digest, **info}, indent=2) + "\n")
        report(0.8, desc="export done")
        for stale in root.glob(f"{key[:-16]}*"):  # same settings, other weights
            if stale.is_dir() and stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process got there first; its export is as good as ours
            if not artefact.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return artefact


def calibration_blob(path: Path, shape: Shape) -> np.ndarray:
    """One calibration image as the detector feeds it: RGB, ``preprocess.letterbox`` to ``shape``, ``_blob``."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f"calibration image {path} cannot be read")
    return _blob(letterbox(np.ascontiguousarray(image[..., ::-1]), shape))


def _quantize(fp32: Path, out: Path, shape: Shape, recipe: Int8Recipe, files: list[Path]) -> None:
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


# ------------------------------------------------------------------------------------------------------- backends
class Backend(Protocol):
    """Runs a letterboxed image; ``prepare`` is timed as preprocessing, ``__call__`` as inference. ``threads``: the
    intra-op threads it computes on (None: the runtime's own choice, unknown)."""

    precision: str
    threads: int | None

    def prepare(self, letterboxed: np.ndarray) -> Any: ...

    def __call__(self, x: Any) -> torch.Tensor: ...


def _blob(letterboxed: np.ndarray) -> np.ndarray:
    """HWC uint8 → 1×3×H×W float32 in [0, 1], in one OpenCV pass (the pixels are already RGB)."""
    return cv2.dnn.blobFromImage(letterboxed, scalefactor=1 / 255)


class TorchBackend:
    """The rewritten model in PyTorch: eager, a captured CUDA graph (``cudagraph``) or ``torch.compile``.

    On CUDA it runs fp16 and channels-last by default. On CPU, channels-last is used too: oneDNN's 7×7 depthwise
    convolutions run much faster in NHWC (see the benchmark).
    """

    def __init__(self, model: DetectionModel, device: str, imgsz: int | Shape, precision: str, mode: str = "eager",
                 rewrite: str = "fold+merge", channels_last: bool = True):
        self.device, self.precision, self.mode, self.shape = torch.device(device), precision, mode, as_shape(imgsz)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
        net = optimise(model, rewrite).to(self.device, self.dtype).to(memory_format=self.memory_format)
        self.net = net
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._run = self._eager
        if mode == "compile":
            self._compiled = torch.compile(net, mode="reduce-overhead")
            self._run = self._compiled_call
        elif mode == "cudagraph":
            self._capture()
            self._run = self._replay
        elif mode != "eager":
            raise ValueError(f"unknown torch mode {mode!r}")

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def prepare(self, letterboxed: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(letterboxed).to(self.device, non_blocking=True)  # uint8 over the bus: 4× fewer bytes
        x = x.permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255)
        return x.contiguous(memory_format=self.memory_format)

    @staticmethod
    def _first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        return self._first(self.net(x))

    def _compiled_call(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self._first(self._compiled(x)).clone()

    @torch.inference_mode()
    def _capture(self) -> None:
        """Record one forward pass at the fixed input shape as a CUDA graph; replaying it skips ~300 launches."""
        self._static_in = torch.zeros(1, 3, *self.shape, device=self.device, dtype=self.dtype
                                      ).contiguous(memory_format=self.memory_format)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: cuDNN autotuning and the head's anchor cache happen outside the graph
                self._eager(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._eager(self._static_in)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(self._static_in.shape):
            raise ValueError(f"the CUDA graph was captured for {tuple(self._static_in.shape)}, got {tuple(x.shape)}")
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out  # overwritten by the next replay; the detector's lock makes NMS finish first

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class OnnxRuntimeBackend:
    def __init__(self, path: Path, device: str, precision: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.threads = threads
        # Idle intra-op threads sleep instead of spinning: spinning threads hold the cores that other requests, video
        # decode and encode, and a Space's neighbours need, and wait longest when one of those holds a core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if is_cuda(device) else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision

    def prepare(self, letterboxed: np.ndarray) -> np.ndarray:
        return _blob(letterboxed)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


class OpenVINOBackend:
    """An OpenVINO IR compiled for the CPU in latency mode, with an explicit inference precision hint.

    OpenVINO's CPU plugin defaults to bf16 on CPUs with native bf16, as ultralytics' AutoBackend leaves it; naming the
    hint makes ``fp32`` and ``bf16`` both selectable and the benchmark's precision label true. Compiled blobs are kept
    beside the IR (OpenVINO's ``CACHE_DIR``), so later loads skip compilation and stale exports take theirs along.
    ``config`` adds compile properties (``experiments/ov_profile.py`` turns on ``PERF_COUNT``). An int8 IR runs its
    quantized parts in int8 and the parts left in float in bf16 where the CPU has it (f32 otherwise), as its
    precision hint says nothing else.
    """

    def __init__(self, path: Path, precision: str, config: dict[str, Any] | None = None, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        core.set_property({"CACHE_DIR": str(path.parent / "compiled")})
        hint = {"bf16": ov.Type.bf16, "fp16": ov.Type.f16, "int8": ov.Type.bf16 if openvino_cpu_bf16() else ov.Type.f32}
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint.get(precision, ov.Type.f32),
                  **({"INFERENCE_NUM_THREADS": threads} if threads else {}), **(config or {})}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def prepare(self, letterboxed: np.ndarray) -> np.ndarray:
        return _blob(letterboxed)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        self.request.infer({0: x})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def load_backend(model: DetectionModel, runtime: str, device: str, imgsz: int | Shape, precision: str,
                 rewrite: str | None = None, progress: Progress | None = None) -> Backend:
    """A ready-to-run backend (exporting and compiling as needed; ``progress`` hears about each step)."""
    report = progress or (lambda *a, **k: None)
    rewrite = rewrite or default_rewrite(runtime)
    if runtime in ("pytorch", "cudagraph", "compile"):
        mode = {"pytorch": "eager"}.get(runtime, runtime)
        report(0.1, desc=f"preparing {variant_of(model)} for PyTorch ({mode}, {precision})")
        backend = TorchBackend(model, device, imgsz, precision, mode=mode, rewrite=rewrite)
    elif runtime in EXPORT_FORMATS:
        path = export(model, runtime, imgsz, precision, rewrite, progress)
        report(0.85, desc=f"loading {path.name} into {runtime}")
        backend = (OnnxRuntimeBackend(path, device, precision, _threads) if runtime == "onnxruntime"
                   else OpenVINOBackend(path, precision, threads=_threads))
    else:
        raise ValueError(f"{runtime} has no backend here")
    report(1.0, desc="ready")
    return backend
