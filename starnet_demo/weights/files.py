"""The project's weights format: ``<variant>.safetensors`` plus ``<variant>.json``.

The JSON says what the tensors are (variant, class names, image size), how they were made (data, recipe), how good
they are (metrics) and their sha256. Loading builds the model from the package's YAML and loads tensors only, so a
weights file can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from ultralytics.nn.tasks import DetectionModel

from ..models.backbone import VARIANTS
from ..models.yolo import BASELINE, build_model, variant_of
from .compact import describe, pack, unpack

FORMAT = "starnet-demo-weights/1"
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "weights"


def local_dir() -> Path:
    """The embedded weights folder (``weights/`` of this checkout), or ``$STARNET_WEIGHTS_DIR``."""
    return Path(os.environ.get("STARNET_WEIGHTS_DIR") or EMBEDDED_DIR)


class WeightsError(RuntimeError):
    """Weights that are missing, corrupt or do not match their config; the message says which and where."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_files(variant: str, directory: str | Path | None = None) -> tuple[Path, Path]:
    """(tensors, config) paths of a variant in a directory (default: ``local_dir()``)."""
    directory = Path(directory) if directory else local_dir()
    return directory / f"{variant}.safetensors", directory / f"{variant}.json"


def save_weights(model: DetectionModel, directory: str | Path, meta: Mapping[str, Any] | None = None,
                 dtype: torch.dtype = torch.float16, int8: bool | str = False) -> Path:
    """Write tensors and config for ``model``; returns the config's path. ``meta`` adds or overrides config keys.
    ``int8`` stores the large conv weights as int8 (``compact``), as the committed weights are; a string packs only
    those whose key matches it (``int8_scope`` in the config: retrained weights are stored as their start was)."""
    variant = variant_of(model)
    tensors_path, config_path = weight_files(variant, directory)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    scope = int8 if isinstance(int8, str) else ""
    state = pack(model.state_dict(), dtype, scope) if int8 is not False else {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes metadata in hash order, so with two keys identical weights could
    # save to different bytes (and sha256). The variant is in the config.
    save_file(state, str(tensors_path), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "variant": variant,
        "nc": len(model.names),
        "names": {str(k): v for k, v in model.names.items()},
        "imgsz": 640,
        "dtype": str(dtype).removeprefix("torch."),
        **({"int8": describe(scope), "int8_scope": scope} if int8 is not False else {}),
        **(meta or {}),
        "file": tensors_path.name,
        "sha256": sha256_file(tensors_path),
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return config_path


def read_config(path: str | Path) -> dict[str, Any]:
    """The config of a weights file, given either of its two paths."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        raise WeightsError(f"weights config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"weights config {config_path} is not valid JSON ({e})") from None
    if config.get("format") != FORMAT:
        raise WeightsError(f"{config_path} is not a {FORMAT} config")
    return config


def verify(path: str | Path, expected_sha256: str | None = None) -> tuple[dict[str, Any], Path, str]:
    """(config, tensors path, sha256) of a weights file, its sha256 checked against ``expected_sha256`` (a trusted
    one, e.g. a pinned release's), else against its config's."""
    config = read_config(path)
    tensors_path = Path(path).with_name(config.get("file", f"{config['variant']}.safetensors"))
    if not tensors_path.is_file():
        raise WeightsError(f"weights file not found: {tensors_path}")
    want = expected_sha256 or config.get("sha256")
    got = sha256_file(tensors_path)
    if want and got != want:
        raise WeightsError(f"checksum mismatch for {tensors_path}: expected sha256 {want[:12]}…, got {got[:12]}…")
    return config, tensors_path, got


def build(config: Mapping[str, Any], tensors_path: str | Path, device: str | torch.device = "cpu") -> DetectionModel:
    """The model ``config`` describes with the tensors of ``tensors_path`` (already verified: ``verify``)."""
    try:
        state = unpack(load_file(str(tensors_path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{tensors_path} is not a readable safetensors file ({e})") from None
    names = {int(k): v for k, v in config["names"].items()}
    model = build_model(config["variant"], nc=config["nc"], names=names)
    own = model.state_dict()
    try:
        model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()})
    except RuntimeError as e:
        first_line = str(e).splitlines()[0]
        raise WeightsError(f"{tensors_path} does not fit variant {config['variant']}: {first_line}") from None
    return model.to(device).eval()


def load_weights(path: str | Path, device: str | torch.device = "cpu",
                 expected_sha256: str | None = None) -> tuple[DetectionModel, dict[str, Any]]:
    """Build the model a config describes and load its tensors, checking the sha256 first (``verify``, ``build``).

    ``expected_sha256`` overrides the config's hash, for callers that hold a trusted one (e.g. a pinned release).
    """
    config, tensors_path, _ = verify(path, expected_sha256)
    return build(config, tensors_path, device), config


def record_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Store evaluation figures in a weights config (the tensors, and so the sha256, are untouched)."""
    config_path = Path(path).with_suffix(".json")
    config = read_config(config_path)
    config["metrics"] = dict(metrics)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return config_path


def available_variants(weights_dir: str | Path | None = None) -> list[str]:
    """Models that have a config in ``weights_dir`` (default ``local_dir()``): StarNets in ``VARIANTS`` order, then
    the YOLOv8n reference."""
    folder = Path(weights_dir) if weights_dir else local_dir()
    return [v for v in (*VARIANTS, BASELINE) if (folder / f"{v}.json").is_file()]
