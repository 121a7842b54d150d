"""The export cache: ONNX files and OpenVINO IRs made by ultralytics' exporter, on disk across restarts, bounded, and
healed when damaged.

One folder per (variant, format, input shape, precision, rewrite, weights digest) under ``cache_root()``
(``$STARNET_EXPORT_DIR``, else ``$XDG_CACHE_HOME/starnet_demo/exports``). Each export is written into a temporary
folder, given a manifest of its files' sizes and sha256 (``export.json``), then renamed into place, so no reader ever
sees half a model. A cached entry is used only if it matches its manifest; one that does not (a crash, a full disk,
a hand that cut a file) is deleted and exported again, and so is one that a runtime fails to load (``backends``).
The cache holds at most ``$STARNET_EXPORT_CACHE_MB`` (default ``DEFAULT_CAP_MB``); the entries used longest ago go
first. Changed weights give a new digest, hence a new export; the stale folder for the same settings is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from ultralytics.nn.tasks import DetectionModel

from ..models.rewrite import optimise
from ..models.yolo import as_yolo, variant_of
from ..weights.files import save_weights
from . import int8
from .int8 import Int8Recipe, calibration_dir, calibration_files, quantize
from .pool import give_back_memory
from .preprocess import Shape
from .runtimes import EXPORT_FORMATS, Progress, default_rewrite

log = logging.getLogger(__name__)

MANIFEST = "export.json"
#: The cache's size cap: about 20 S4 exports at 640 px, or every main model at a few sizes.
DEFAULT_CAP_MB = 1024


def cache_root() -> Path:
    """Where exported models live: ``$STARNET_EXPORT_DIR``, else ``$XDG_CACHE_HOME/starnet_demo/exports``."""
    if os.environ.get("STARNET_EXPORT_DIR"):
        return Path(os.environ["STARNET_EXPORT_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "starnet_demo" / "exports"


def cache_cap_bytes() -> int:
    """``$STARNET_EXPORT_CACHE_MB`` (default ``DEFAULT_CAP_MB``) in bytes."""
    return int(float(os.environ.get("STARNET_EXPORT_CACHE_MB") or DEFAULT_CAP_MB) * 2**20)


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


def artefact(entry: Path, variant: str, runtime: str) -> Path:
    """The file a runtime loads inside a cache entry."""
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


# ------------------------------------------------------------------------------------------------ manifest
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_files(entry: Path) -> list[Path]:
    """The files an entry's manifest covers: everything but the manifest."""
    return sorted(p for p in entry.rglob("*") if p.is_file() and p.name != MANIFEST)


def _write_manifest(entry: Path, info: dict) -> None:
    files = {str(p.relative_to(entry)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _model_files(entry)}
    (entry / MANIFEST).write_text(json.dumps({**info, "manifest": files}, indent=2) + "\n")


def damage(entry: Path) -> str | None:
    """What is wrong with a cache entry (missing manifest, a file missing, cut or changed), or None if it is whole."""
    try:
        files = json.loads((entry / MANIFEST).read_text())["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest"
    if not files:
        return "an empty manifest"
    for name, want in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, not {want['size']}"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


def remove(entry: Path, why: str) -> None:
    """Delete a cache entry (logged with why), so that the next use exports it again."""
    log.warning("export cache: removing %s (%s)", entry.name, why)
    shutil.rmtree(entry, ignore_errors=True)


def _entry_size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def repair(root: Path | None = None) -> list[str]:
    """Remove every damaged entry and every half-written export of a process that is gone; returns their names.
    Start-up runs it, so what a crash or a full disk left behind is exported afresh instead of failing."""
    root, removed = root or cache_root(), []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith("."):  # .<key>.<pid>.<random>: an export in progress, or one whose process died
            pid = path.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                remove(path, "left by a process that is gone")
                removed.append(path.name)
        elif why := damage(path):
            remove(path, why)
            removed.append(path.name)
    return removed


def trim(keep: Path | None = None, root: Path | None = None) -> list[str]:
    """Delete the entries used longest ago until the cache fits its cap (``keep`` stays); returns their names."""
    root, cap = root or cache_root(), cache_cap_bytes()
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    sizes = {p: _entry_size(p) for p in entries}
    total, removed = sum(sizes.values()), []

    def last_used(p: Path) -> float:
        with contextlib.suppress(OSError):
            return (p / MANIFEST).stat().st_mtime
        return 0.0

    for entry in sorted(entries, key=last_used):
        if total <= cap:
            break
        if keep is not None and entry == keep:
            continue
        remove(entry, f"the export cache is over its {cap // 2**20} MB cap")
        total -= sizes[entry]
        removed.append(entry.name)
    return removed


def cache_bytes(root: Path | None = None) -> int:
    """The export cache's size on disk."""
    root = root or cache_root()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


# -------------------------------------------------------------------------------------------------- export
def run_exporter(source: str, rewrite: str, fmt: str, h: str, w: str, half: str, folder: str) -> None:
    """ultralytics' exporter on the weights file ``source`` rewritten by ``rewrite``, into ``folder``. ``export`` runs
    it in a child process (``_CHILD``): in the server's own process, tracing and conversion left 91 MB of heap behind
    over four S1 exports (``docs/operations.md``), which it would keep; a child's goes back when it exits."""
    from ..weights.files import load_weights

    model, _ = load_weights(source)
    rewritten = optimise(model, rewrite).cpu()
    rewritten.pt_path = str(Path(folder) / f"{variant_of(model)}.pt")  # the exporter writes next to this path
    with quiet_ultralytics():
        as_yolo(rewritten).export(format=fmt, imgsz=[int(h), int(w)], device="cpu", batch=1, dynamic=False,
                                  simplify=True, verbose=False, **({"quantize": 16} if half == "True" else {}))


_CHILD = "import sys; from starnet_demo.inference.exports import run_exporter; run_exporter(*sys.argv[1:])"
_EXPORTING = threading.Lock()


@contextlib.contextmanager
def _one_export_at_a_time(report: Progress) -> Iterator[None]:
    """Exports and quantizations in this process run one at a time: an export's child process peaks at about 1.1 GB
    (S1 and S4 at 640 px), and on a few cores two at once take as long as two in turn."""
    if not _EXPORTING.acquire(blocking=False):
        report(0.02, desc="waiting for another model's export to finish")
        _EXPORTING.acquire()
    try:
        yield
    finally:
        _EXPORTING.release()


def _child_env() -> dict[str, str]:
    """This environment, with this package importable whatever the child's working directory."""
    here = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def export(model: DetectionModel, runtime: str, imgsz: int | Shape = 640, precision: str = "fp32",
           rewrite: str | None = None, progress: Progress | None = None, recipe: Int8Recipe | None = None) -> Path:
    """The cached ONNX file / OpenVINO XML for ``model`` at these settings, exporting it first if needed.

    Export runs ultralytics' exporter on a rewritten copy of the model (static shape ``1×3×h×w``, batch 1, onnxslim
    on). ``int8`` quantizes the cached fp32 IR with ``recipe`` (default ``int8.INT8``); its key holds the recipe and the
    calibration files, so other settings or another image pool give another export. A cached entry that does not
    match its manifest is exported again.
    """
    if runtime not in EXPORT_FORMATS:
        raise ValueError(f"{runtime} does not use an exported model")
    if precision == "int8" and runtime != "openvino":
        raise ValueError("int8 is built for OpenVINO only")
    report = progress or (lambda *a, **k: None)
    rewrite = rewrite or default_rewrite(runtime)
    variant, digest = variant_of(model), weights_digest(model)
    if precision == "int8":
        recipe = recipe or int8.INT8
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
    if entry.is_dir():
        why = damage(entry)
        if why is None:
            with contextlib.suppress(OSError):
                os.utime(entry / MANIFEST)  # last used: what the cap evicts by
            report(1.0, desc=f"using cached {EXPORT_FORMATS[runtime]} {precision} export of {variant}")
            return artefact(entry, variant, runtime)
        remove(entry, why)
    root.mkdir(parents=True, exist_ok=True)
    with _one_export_at_a_time(report):
        if entry.is_dir() and damage(entry) is None:  # another request exported it while this one waited
            return artefact(entry, variant, runtime)
        h, w = as_shape(imgsz)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{os.getpid()}.", dir=root))
        try:
            if precision == "int8":
                report(0.5, desc=f"quantizing {variant} to int8 on {len(files)} calibration images (once; cached)")
                quantize(fp32, artefact(tmp, variant, runtime), (h, w), recipe, files)
                info = {"int8_recipe": recipe.id, **settings}
            else:
                report(0.05, desc=f"exporting {variant} to {EXPORT_FORMATS[runtime]} at {h}×{w} (once; cached "
                                  "afterwards)")
                source = save_weights(model, tmp / "source", dtype=torch.float32)
                done = subprocess.run([sys.executable, "-c", _CHILD, str(source), rewrite, EXPORT_FORMATS[runtime],
                                       str(h), str(w), str(file_precision == "fp16"), str(tmp)],
                                      capture_output=True, text=True, env=_child_env())
                shutil.rmtree(tmp / "source", ignore_errors=True)
                if done.returncode != 0:
                    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    raise RuntimeError(f"exporting {variant} to {EXPORT_FORMATS[runtime]} failed: {tail}")
                info = {}
            if not artefact(tmp, variant, runtime).is_file():
                raise RuntimeError(f"no {EXPORT_FORMATS[runtime]} {precision} model was written for {variant}")
            _write_manifest(tmp, {"variant": variant, "runtime": runtime, "imgsz": [h, w],
                                  "precision": file_precision, "rewrite": rewrite, "weights_digest": digest, **info})
            report(0.8, desc="export done")
            for stale in root.glob(f"{key[:-16]}*"):  # same settings, other weights
                if stale.is_dir() and stale.name != key:
                    shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, entry)
            except OSError:  # another process got there first; its export is as good as ours
                if damage(entry) is not None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            give_back_memory()  # the exporter's tracing and conversion leave much freed heap behind
    trim(keep=entry, root=root)
    return artefact(entry, variant, runtime)
